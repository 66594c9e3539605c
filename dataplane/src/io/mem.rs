//! In-memory backend: a heap region, a free list, an rx queue fed by `inject`, and a tx sink.
//! Used by pipeline tests, the pcap backend and criterion benchmarks.

use super::PacketIo;
use crate::packet::{Batch, Frame, Port, Verdict};
use crate::region::Region;
use crate::stats::WorkerStats;
use std::collections::VecDeque;

/// What the mem backend does with transmitted frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxSink {
    /// Copy the bytes out (tests, pcap writing): `take_sent` returns them.
    Capture,
    /// Count and recycle at once (benchmarks: no allocation).
    Discard,
}

pub struct MemIo {
    region: Region,
    free: Vec<u64>,
    rx: VecDeque<Frame>,
    sink: TxSink,
    sent: Vec<(Port, Vec<u8>)>,
    pub sent_count: u64,
}

/// Headroom of the mem backend's chunks, like the kernel's XDP_PACKET_HEADROOM (256) so the
/// pipeline sees the same room for encapsulation as on AF_XDP.
pub const MEM_HEADROOM: u32 = 256;

impl MemIo {
    /// `frames` chunks of `frame_size` bytes.
    pub fn new(frames: u32, frame_size: u32, sink: TxSink) -> Self {
        let region = Region::alloc(frames, frame_size, MEM_HEADROOM);
        let free = (0..u64::from(frames))
            .rev()
            .map(|i| i * u64::from(frame_size))
            .collect();
        MemIo {
            region,
            free,
            rx: VecDeque::with_capacity(frames as usize),
            sink,
            sent: Vec::new(),
            sent_count: 0,
        }
    }

    /// Queues a packet as if received on `port`; false if no buffer is free or it is too big.
    pub fn inject(&mut self, port: Port, bytes: &[u8]) -> bool {
        match self.adopt(port, bytes) {
            Some(f) => {
                self.rx.push_back(f);
                true
            }
            None => false,
        }
    }

    /// The chunk the last successful `inject` used.
    pub fn last_injected_chunk(&self) -> u64 {
        self.rx
            .back()
            .map(|f| self.region.chunk_of(f.addr))
            .unwrap_or(0)
    }

    /// Transmitted packets so far (Capture sink), oldest first.
    pub fn take_sent(&mut self) -> Vec<(Port, Vec<u8>)> {
        std::mem::take(&mut self.sent)
    }

    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }
}

impl PacketIo for MemIo {
    fn rx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        let mut n = 0;
        while batch.room() > 0 {
            let Some(f) = self.rx.pop_front() else { break };
            stats.rx_bytes.add(u64::from(f.len));
            batch.push(f);
            n += 1;
        }
        stats.rx_packets.add(n as u64);
        n
    }

    fn tx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        let mut sent = 0;
        let sink = self.sink;
        let (region, out, free) = (&self.region, &mut self.sent, &mut self.free);
        batch.retain(|f, v| {
            let Verdict::Tx(port) = v else { return true };
            if sink == TxSink::Capture {
                out.push((
                    port,
                    region.data(&f).map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
            stats.tx_bytes.add(u64::from(f.len));
            free.push(region.chunk_of(f.addr));
            sent += 1;
            false
        });
        stats.tx_packets.add(sent as u64);
        self.sent_count += sent as u64;
        sent
    }

    fn recycle(&mut self, batch: &mut Batch) {
        for f in batch.drain() {
            self.free.push(self.region.chunk_of(f.addr));
        }
    }

    fn service(&mut self, _stats: &WorkerStats) {}

    fn region_mut(&mut self) -> &mut Region {
        &mut self.region
    }

    fn adopt(&mut self, port: Port, bytes: &[u8]) -> Option<Frame> {
        let chunk = self.free.pop()?;
        let f = self.region.write_packet(chunk, port, bytes);
        if f.is_none() {
            self.free.push(chunk);
        }
        f
    }
}
