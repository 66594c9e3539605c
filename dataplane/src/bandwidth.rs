//! The bandwidth manager (Cilium's, for the `kubernetes.io/egress-bandwidth` pod annotation):
//! the packets a pod sends through the appliance leave at its rate, paced the way Cilium's
//! earliest-departure-time (EDT) model does it with the fq qdisc. Each pod has a departure
//! clock. A packet departs at max(now, clock), and the clock moves on by the packet's time at
//! the rate. A packet due later is held in the worker (a copy, in buffers allocated once) and
//! sent when due. One due beyond the horizon is dropped (BANDWIDTH_LIMIT_EXCEEDED): TCP sees a
//! loss only when it overruns by the horizon, and paces itself to the rate otherwise.
//!
//! Each of `share` workers paces its own traffic to rate / share: a pod's flows spread over the
//! workers' queues by RSS.

use crate::io::PacketIo;
use crate::packet::{Batch, Port, Verdict};
use crate::region::Region;
use crate::state::Snapshot;
use crate::wire::parse::{parse_fast, TunnelPorts};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

/// How far ahead a packet may be scheduled (Cilium's EDT horizon is 2 s; a shorter one keeps
/// the held copies few: 50 ms of a 1 Gbit/s pod is ~4,000 full frames).
const HORIZON_NS: u64 = 50_000_000;
/// Packets a worker holds at most; beyond, a packet to hold is dropped.
pub const HELD_MAX: usize = 4096;
/// Room for one held packet: the largest AF_XDP chunk (4 KiB), so any packet fits.
const HELD_FRAME: usize = 4096;
/// Pods a worker keeps a clock for before it forgets idle ones.
const CLOCKS_MAX: usize = 65_536;

/// One worker's pacing state.
pub struct BandwidthState {
    /// Pod -> the time (ns since `start`) its next packet may depart.
    clocks: hashbrown::HashMap<IpAddr, u64>,
    /// Held packet copies (egress port, length, bytes), allocated as first needed, reused.
    held: Vec<(Port, usize, Box<[u8]>)>,
    free: Vec<u32>,
    /// (departure, held index): the next due first.
    due: BinaryHeap<Reverse<(u64, u32)>>,
    start: std::time::Instant,
    share: u64,
}

impl Default for BandwidthState {
    fn default() -> Self {
        BandwidthState::new(1)
    }
}

impl BandwidthState {
    /// For one of `workers` workers.
    pub fn new(workers: u16) -> Self {
        BandwidthState {
            clocks: hashbrown::HashMap::new(),
            held: Vec::new(),
            free: Vec::new(),
            due: BinaryHeap::with_capacity(HELD_MAX),
            start: std::time::Instant::now(),
            share: u64::from(workers.max(1)),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Whether packets wait to be sent (the worker must not sleep then).
    pub fn holding(&self) -> bool {
        !self.due.is_empty()
    }

    /// When a packet of `len` bytes from a pod limited to `rate_bps` (the whole pod's) departs,
    /// or None if beyond the horizon (drop).
    fn schedule(&mut self, src: IpAddr, rate_bps: u64, len: u64, now: u64) -> Option<u64> {
        let rate = (rate_bps / self.share).max(1);
        if self.clocks.len() >= CLOCKS_MAX && !self.clocks.contains_key(&src) {
            // idle pods' clocks are in the past: forgetting them changes nothing
            self.clocks.retain(|_, t| *t > now);
        }
        let clock = self.clocks.entry(src).or_insert(now);
        let depart = (*clock).max(now);
        if depart - now > HORIZON_NS {
            return None;
        }
        *clock = depart + len * 8 * 1_000_000_000 / rate;
        Some(depart)
    }

    /// Keeps a copy of `bytes` to send on `port` at `at`; false when no room is left.
    fn hold(&mut self, bytes: &[u8], port: Port, at: u64) -> bool {
        let i = match self.free.pop() {
            Some(i) => i as usize,
            None if self.held.len() < HELD_MAX => {
                // a full frame's room: the largest packet a worker handles
                let size = bytes.len().max(HELD_FRAME);
                self.held.push((0, 0, vec![0u8; size].into_boxed_slice()));
                self.held.len() - 1
            }
            None => return false,
        };
        let slot = &mut self.held[i];
        if bytes.len() > slot.2.len() {
            self.free.push(i as u32);
            return false;
        }
        slot.2[..bytes.len()].copy_from_slice(bytes);
        slot.0 = port;
        slot.1 = bytes.len();
        self.due.push(Reverse((at, i as u32)));
        true
    }

    /// Moves the held packets that are due into `batch`, ready to transmit (they were routed
    /// and rewritten before they were held). Returns how many.
    pub fn release(&mut self, io: &mut impl PacketIo, batch: &mut Batch) -> usize {
        if self.due.is_empty() {
            return 0;
        }
        let now = self.now();
        let mut n = 0;
        while batch.room() > 0 {
            match self.due.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((_, i))) = self.due.pop() else {
                break;
            };
            let (port, len, buf) = &self.held[i as usize];
            if let Some(f) = io.adopt(*port, &buf[..*len]) {
                if batch.push(f) {
                    let j = batch.len() - 1;
                    batch.set_verdict(j, Verdict::Tx(*port));
                    batch.meta_mut(j).paced = true;
                    n += 1;
                }
            }
            self.free.push(i);
        }
        n
    }
}

/// The stage: after routing, every packet about to leave from a limited pod departs now, is
/// held until its departure time (`Verdict::Consumed`), or is dropped beyond the horizon.
pub fn pace(snap: &Snapshot, region: &Region, batch: &mut Batch, st: &mut BandwidthState) {
    let limits = &snap.cluster.egress_bandwidth;
    if limits.is_empty() {
        return;
    }
    let now = st.now();
    for i in 0..batch.len() {
        let Verdict::Tx(port) = batch.verdict(i) else {
            continue;
        };
        if batch.meta(i).paced {
            continue;
        }
        let f = batch.frame(i);
        let Some(bytes) = region.data(&f) else {
            continue;
        };
        let Ok(p) = parse_fast(bytes, TunnelPorts::NONE) else {
            continue;
        };
        let Some(&rate) = limits.get(&p.src) else {
            continue;
        };
        let v = match st.schedule(p.src, rate, u64::from(f.len), now) {
            Some(at) if at <= now => continue,
            Some(at) if st.hold(bytes, port, at) => Verdict::Consumed,
            _ => Verdict::Drop(crate::DropReason::BandwidthExceeded),
        };
        batch.set_verdict(i, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_depart_at_the_rate_and_beyond_the_horizon_are_dropped() {
        let mut st = BandwidthState::new(1);
        let pod: IpAddr = "10.20.0.11".parse().unwrap();
        let rate = 8_000_000; // 1 MB/s: a 1000-byte packet every ms
        let times: Vec<Option<u64>> = (0..60).map(|_| st.schedule(pod, rate, 1000, 0)).collect();
        assert_eq!(times[0], Some(0));
        assert_eq!(times[1], Some(1_000_000));
        assert_eq!(times[50], Some(50_000_000), "at the horizon");
        assert_eq!(times[51], None, "beyond it");
        // two workers: each at half the rate
        let mut half = BandwidthState::new(2);
        half.schedule(pod, rate, 1000, 0);
        assert_eq!(half.schedule(pod, rate, 1000, 0), Some(2_000_000));
    }
}
