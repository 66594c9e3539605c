//! `sluice capture` (issue 7): tcpdump cannot see what AF_XDP takes from the kernel, so the
//! workers copy what they see into a shared ring while a capture runs: each packet as received
//! (inbound) and as transmitted after the pipeline rewrote it (outbound). The control plane
//! drains the ring, filters and writes pcapng, where the direction flag marks before/after.
//!
//! Off (no capture running), a worker pays one relaxed load per batch.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Bytes kept of each packet: every header sluice reads (Ethernet, VLAN, IPv6 with extension
/// headers, an outer tunnel and the inner headers) and the start of the payload.
pub const SNAPLEN: usize = 256;
/// Packets the ring holds between two drains of the API (every 10 ms): 4,096 x 280 bytes.
pub const RING: usize = 4096;
/// `port` value: every interface.
pub const ANY_PORT: u32 = u32::MAX;

/// One captured packet.
#[derive(Clone, Copy)]
pub struct Captured {
    pub time_ns: u64,
    /// Interface (config order): the one received on, or transmitted on.
    pub port: u16,
    /// As transmitted, after the pipeline (false: as received).
    pub outbound: bool,
    /// The packet's full length, and how much of it `data` holds.
    pub len: u32,
    pub caplen: u16,
    pub data: [u8; SNAPLEN],
}

impl Captured {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.caplen)]
    }
}

/// The appliance's capture point, shared by the workers and the API.
pub struct CaptureTap {
    active: AtomicBool,
    port: AtomicU32,
    ring: ArrayQueue<Captured>,
    /// Packets lost to a full ring while capturing.
    pub lost: AtomicU64,
}

impl Default for CaptureTap {
    fn default() -> Self {
        CaptureTap {
            active: AtomicBool::new(false),
            port: AtomicU32::new(ANY_PORT),
            ring: ArrayQueue::new(RING),
            lost: AtomicU64::new(0),
        }
    }
}

impl CaptureTap {
    /// Starts capturing on interface `port` (`ANY_PORT`: all); false if a capture runs already.
    pub fn start(&self, port: u32) -> bool {
        if self
            .active
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        while self.ring.pop().is_some() {}
        self.port.store(port, Ordering::Release);
        self.lost.store(0, Ordering::Relaxed);
        true
    }

    pub fn stop(&self) {
        self.active.store(false, Ordering::Release);
    }

    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Offers a packet seen on `port` (the workers call this only while `active`).
    #[inline]
    pub fn offer(&self, time_ns: u64, port: u16, outbound: bool, bytes: &[u8]) {
        let want = self.port.load(Ordering::Relaxed);
        if want != ANY_PORT && want != u32::from(port) {
            return;
        }
        let caplen = bytes.len().min(SNAPLEN);
        let mut c = Captured {
            time_ns,
            port,
            outbound,
            len: bytes.len() as u32,
            caplen: caplen as u16,
            data: [0; SNAPLEN],
        };
        c.data[..caplen].copy_from_slice(&bytes[..caplen]);
        if self.ring.push(c).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next captured packet.
    pub fn pop(&self) -> Option<Captured> {
        self.ring.pop()
    }
}

/// pcapng (draft-ietf-opsawg-pcapng), little-endian: what tcpdump, tshark and Wireshark read.
pub mod pcapng {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let len = (12 + body.len()) as u32;
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&len.to_le_bytes());
    }

    fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
        body.extend_from_slice(&code.to_le_bytes());
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }

    /// The section header and one interface description per interface name (in port order),
    /// with nanosecond timestamps.
    pub fn header(interfaces: &[&str], snaplen: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        option(&mut shb, 4, b"sluice capture"); // shb_userappl
        option(&mut shb, 0, &[]);
        block(&mut out, 0x0A0D_0D0A, &shb);
        for name in interfaces {
            let mut idb = Vec::new();
            idb.extend_from_slice(&1u16.to_le_bytes()); // LINKTYPE_ETHERNET
            idb.extend_from_slice(&0u16.to_le_bytes());
            idb.extend_from_slice(&snaplen.to_le_bytes());
            option(&mut idb, 2, name.as_bytes()); // if_name
            option(&mut idb, 9, &[9]); // if_tsresol: 10^-9 s
            option(&mut idb, 0, &[]);
            block(&mut out, 1, &idb);
        }
        out
    }

    /// An interface statistics block: packets lost so far (isb_ifdrop). Sent while a capture is
    /// idle, it also tells the server whether the reader is still there.
    pub fn statistics(out: &mut Vec<u8>, interface: u32, time_ns: u64, dropped: u64) {
        let mut isb = Vec::new();
        isb.extend_from_slice(&interface.to_le_bytes());
        isb.extend_from_slice(&((time_ns >> 32) as u32).to_le_bytes());
        isb.extend_from_slice(&(time_ns as u32).to_le_bytes());
        option(&mut isb, 5, &dropped.to_le_bytes()); // isb_ifdrop
        option(&mut isb, 0, &[]);
        block(out, 5, &isb);
    }

    /// One enhanced packet block; `outbound` sets the direction flag (epb_flags).
    pub fn packet(
        out: &mut Vec<u8>,
        interface: u32,
        time_ns: u64,
        len: u32,
        data: &[u8],
        outbound: bool,
    ) {
        let mut epb = Vec::with_capacity(32 + data.len());
        epb.extend_from_slice(&interface.to_le_bytes());
        epb.extend_from_slice(&((time_ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(time_ns as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(data);
        epb.resize(epb.len().next_multiple_of(4), 0);
        // epb_flags bits 0-1: 1 inbound, 2 outbound
        let flags: u32 = if outbound { 2 } else { 1 };
        option(&mut epb, 2, &flags.to_le_bytes());
        option(&mut epb, 0, &[]);
        block(out, 6, &epb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_capture_at_a_time_and_only_its_interface() {
        let t = CaptureTap::default();
        assert!(t.start(1));
        assert!(!t.start(ANY_PORT), "a capture runs already");
        t.offer(5, 0, false, b"other interface");
        t.offer(6, 1, true, &[7u8; 1000]);
        let c = t.pop().expect("captured");
        assert_eq!(
            (c.port, c.outbound, c.len, c.bytes().len()),
            (1, true, 1000, SNAPLEN)
        );
        assert!(t.pop().is_none());
        t.stop();
        assert!(t.start(ANY_PORT), "again once stopped");
    }

    #[test]
    fn pcapng_blocks_are_aligned_and_sized() {
        let mut f = pcapng::header(&["eth-cli", "eth-srv"], SNAPLEN as u32);
        pcapng::packet(&mut f, 1, 1_764_590_400_000_000_001, 60, &[1, 2, 3], true);
        pcapng::statistics(&mut f, 0, 1, 3);
        // walk the blocks: each length is a multiple of 4 and repeated at its end
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < f.len() {
            let kind = u32::from_le_bytes(f[at..at + 4].try_into().unwrap());
            let len = u32::from_le_bytes(f[at + 4..at + 8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            assert_eq!(&f[at + len - 4..at + len], &(len as u32).to_le_bytes());
            kinds.push(kind);
            at += len;
        }
        assert_eq!(kinds, vec![0x0A0D_0D0A, 1, 1, 6, 5]);
    }
}
