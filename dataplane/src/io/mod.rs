//! Packet I/O backends behind one trait: `afxdp` (the real thing), `mem` (in-process rings for
//! tests and benchmarks) and `pcap` (offline replay).

pub mod afxdp;
pub mod mem;
pub mod pcap;

use crate::packet::Batch;
use crate::region::Region;
use crate::stats::WorkerStats;
use std::os::fd::RawFd;

pub trait PacketIo {
    /// Fills an empty batch with received frames; returns how many.
    fn rx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize;
    /// Transmits every frame whose verdict is `Tx`, removing it from the batch. Frames that could
    /// not be queued (ring full) stay in the batch with their verdict; returns how many were sent.
    fn tx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize;
    /// Returns every frame left in the batch to the backend's free pool; leaves the batch empty.
    fn recycle(&mut self, batch: &mut Batch);
    /// Ring housekeeping between batches: reap completions, refill receive buffers.
    fn service(&mut self, stats: &WorkerStats);
    /// The packet memory frames point into.
    fn region_mut(&mut self) -> &mut Region;
    /// Copies a packet (handed over by another worker) into a free buffer of this backend, as if
    /// received on `port`; None when no buffer is free or the packet does not fit.
    fn adopt(&mut self, port: crate::packet::Port, bytes: &[u8]) -> Option<crate::packet::Frame>;
    /// File descriptors that become readable when packets arrive (for the adaptive poll mode);
    /// empty when the backend cannot block.
    fn readiness_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Drops the kernel counted on this backend's sockets (costs a syscall per socket: call it
    /// rarely, not per batch).
    fn kernel_drops(&self) -> Option<KernelDrops> {
        None
    }
}

/// What the kernel dropped before the packets reached the rings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// Dropped for other reasons (e.g. frame too large for the chunk).
    pub rx_dropped: u64,
    /// The rx ring was full: the worker did not keep up.
    pub rx_ring_full: u64,
    /// No buffer in the fill ring: frames were all in flight.
    pub fill_ring_empty: u64,
}
