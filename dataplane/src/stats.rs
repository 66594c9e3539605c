//! Per-worker counters. Each worker writes its own; readers (status, stats file) sum them.
//!
//! Single writer: `add` is a relaxed load and store, not a locked read-modify-write, so counting
//! costs a plain memory write on the fast path.

use crate::drop::DropReason;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counters of one worker.
#[derive(Debug)]
pub struct WorkerStats {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub batches: Counter,
    /// Wakeup syscalls made (fill ring or tx kick), a slow event worth counting.
    pub wakeups: Counter,
    /// Times the worker went to sleep on socket readiness (adaptive poll mode).
    pub sleeps: Counter,
    /// Fill ring could not be refilled completely (frames all in flight).
    pub fill_starved: Counter,
    /// The snapshot generation this worker last ran.
    pub generation: Counter,
    /// Overlay: packets decapsulated, encapsulated, ICMP too-big errors sent back.
    pub decapsulated: Counter,
    pub encapsulated: Counter,
    pub icmp_errors: Counter,
    /// HTTP requests judged on L7-inspected connections, and those refused (403).
    pub l7_requests: Counter,
    pub l7_refused: Counter,
    /// Load-balanced connections started.
    pub lb_new_connections: Counter,
    /// ICMP errors about load-balanced connections, translated along them (or tunnelled to a
    /// DSR backend).
    pub lb_icmp_translated: Counter,
    /// Tracked connections now (a gauge).
    pub ct_entries: Counter,
    /// Packets passed to / taken from other workers (replies of their connections).
    pub handoff_out: Counter,
    pub handoff_in: Counter,
    /// Kernel-side AF_XDP drops (copied from the sockets now and then, see worker.rs).
    pub xsk_rx_dropped: Counter,
    pub xsk_rx_ring_full: Counter,
    pub xsk_fill_ring_empty: Counter,
    /// Times the receive rings backed up past half full (new TCP connections were shed at XDP
    /// until they drained).
    pub overloads: Counter,
    drops: Vec<Counter>,
    /// Drops per policy (slot: `PolicyTables::slots`).
    pub policy_drops: Box<[Counter]>,
    /// Load-balanced connections holding a SNAT source port, and the source ports this worker
    /// may use toward one backend (its share of `lb.snat_ports`): a connection needs a free port
    /// toward its backend, so usage per backend is what runs out.
    pub snat_connections: Counter,
    pub snat_ports_per_backend: Counter,
    /// The worker's conntrack bound (set once) and the entries its GC freed.
    pub ct_capacity: Counter,
    pub ct_gc_freed: Counter,
    /// Embryonic entries evicted to admit new connections when the tables were full.
    pub ct_evicted: Counter,
    /// New connections that policy allowed (while any policy exists).
    pub policy_allowed: Counter,
    /// POLICY_DENIED [0] and POLICY_DENY [1] drops the sender's egress policy decided (the rest
    /// of them: the receiver's ingress policy).
    pub policy_drops_egress: [Counter; 2],
    /// Batch processing time (receive to transmit): `batch_ns[i]` counts batches that took at
    /// most `BATCH_NS_FIRST << i` ns; the last bucket is everything longer.
    pub batch_ns: [Counter; BATCH_BUCKETS],
}

/// Buckets of the batch time histogram: 256 ns, 512 ns, ... 16.8 ms, then the rest. Powers of
/// two: one `leading_zeros` per batch, no search.
pub const BATCH_BUCKETS: usize = 18;
pub const BATCH_NS_FIRST: u64 = 256;

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            rx_packets: Counter::default(),
            rx_bytes: Counter::default(),
            tx_packets: Counter::default(),
            tx_bytes: Counter::default(),
            batches: Counter::default(),
            wakeups: Counter::default(),
            sleeps: Counter::default(),
            fill_starved: Counter::default(),
            generation: Counter::default(),
            decapsulated: Counter::default(),
            encapsulated: Counter::default(),
            icmp_errors: Counter::default(),
            l7_requests: Counter::default(),
            l7_refused: Counter::default(),
            lb_new_connections: Counter::default(),
            lb_icmp_translated: Counter::default(),
            ct_entries: Counter::default(),
            handoff_out: Counter::default(),
            handoff_in: Counter::default(),
            xsk_rx_dropped: Counter::default(),
            xsk_rx_ring_full: Counter::default(),
            xsk_fill_ring_empty: Counter::default(),
            overloads: Counter::default(),
            drops: DropReason::ALL.iter().map(|_| Counter::default()).collect(),
            policy_drops: (0..crate::policy::POLICY_SLOTS)
                .map(|_| Counter::default())
                .collect(),
            snat_connections: Counter::default(),
            snat_ports_per_backend: Counter::default(),
            ct_capacity: Counter::default(),
            ct_gc_freed: Counter::default(),
            ct_evicted: Counter::default(),
            policy_allowed: Counter::default(),
            policy_drops_egress: Default::default(),
            batch_ns: Default::default(),
        }
    }
}

impl WorkerStats {
    #[inline]
    pub fn drop(&self, r: DropReason, n: u64) {
        self.drops[r.index()].add(n);
    }
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r.index()].get()
    }
    /// Counts one batch that took `ns`.
    #[inline]
    pub fn batch_took(&self, ns: u64) {
        // bucket i holds (FIRST << (i-1), FIRST << i]
        let bits = 64 - ns.saturating_sub(1).leading_zeros() as usize;
        let i = bits.saturating_sub(BATCH_NS_FIRST.trailing_zeros() as usize);
        self.batch_ns[i.min(BATCH_BUCKETS - 1)].add(1);
    }
    pub fn snapshot(&self, worker: usize) -> WorkerStatsSnapshot {
        WorkerStatsSnapshot {
            worker,
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            batches: self.batches.get(),
            wakeups: self.wakeups.get(),
            sleeps: self.sleeps.get(),
            fill_starved: self.fill_starved.get(),
            generation: self.generation.get(),
            decapsulated: self.decapsulated.get(),
            encapsulated: self.encapsulated.get(),
            icmp_errors: self.icmp_errors.get(),
            l7_requests: self.l7_requests.get(),
            l7_refused: self.l7_refused.get(),
            lb_new_connections: self.lb_new_connections.get(),
            lb_icmp_translated: self.lb_icmp_translated.get(),
            ct_entries: self.ct_entries.get(),
            handoff_out: self.handoff_out.get(),
            handoff_in: self.handoff_in.get(),
            xsk_rx_dropped: self.xsk_rx_dropped.get(),
            xsk_rx_ring_full: self.xsk_rx_ring_full.get(),
            xsk_fill_ring_empty: self.xsk_fill_ring_empty.get(),
            overloads: self.overloads.get(),
            drops: DropReason::ALL
                .iter()
                .filter(|r| self.drops(**r) > 0)
                .map(|r| DropCount {
                    reason: r.name(),
                    code: r.code(),
                    packets: self.drops(*r),
                })
                .collect(),
            policy_drops: self
                .policy_drops
                .iter()
                .enumerate()
                .filter(|(_, c)| c.get() > 0)
                .map(|(slot, c)| (slot as u16, c.get()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DropCount {
    pub reason: &'static str,
    pub code: u16,
    pub packets: u64,
}

/// A point-in-time copy of one worker's counters.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatsSnapshot {
    pub worker: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub batches: u64,
    pub wakeups: u64,
    pub sleeps: u64,
    pub fill_starved: u64,
    pub generation: u64,
    pub decapsulated: u64,
    pub encapsulated: u64,
    pub icmp_errors: u64,
    pub l7_requests: u64,
    pub l7_refused: u64,
    pub lb_new_connections: u64,
    pub lb_icmp_translated: u64,
    pub ct_entries: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub xsk_rx_dropped: u64,
    pub xsk_rx_ring_full: u64,
    pub xsk_fill_ring_empty: u64,
    pub overloads: u64,
    pub drops: Vec<DropCount>,
    /// (policy drop slot, packets), non-zero only; the stats document names them.
    pub policy_drops: Vec<(u16, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_times_land_in_power_of_two_buckets() {
        let s = WorkerStats::default();
        for ns in [0, 1, 256, 257, 512, 513, 1 << 30] {
            s.batch_took(ns);
        }
        let got: Vec<u64> = s.batch_ns.iter().map(Counter::get).collect();
        assert_eq!(
            &got[..3],
            &[3, 2, 1],
            "<=256: 0,1,256; <=512: 257,512; <=1024: 513"
        );
        assert_eq!(got[BATCH_BUCKETS - 1], 1, "the rest");
    }
}
