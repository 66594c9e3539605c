//! The worker loop: receive a batch, run the pipeline on one snapshot, transmit, recycle.

use crate::capture::CaptureTap;
use crate::drop::DropReason;
use crate::flow::{EventKind, FlowEvent};
use crate::io::PacketIo;
use crate::packet::{Batch, Meta, Verdict};
use crate::pipeline::{NeighborRequests, Pipeline};
use crate::state::Publisher;
use crate::stats::WorkerStats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Spin on the rings: lowest latency, one core at 100% even when idle.
    Busy,
    /// Spin while traffic flows; after `IDLE_SPINS` empty polls sleep on socket readiness, so an
    /// idle appliance burns no CPU.
    Adaptive,
}

/// Empty polls before an adaptive worker sleeps. Each empty poll costs ~100 ns of ring checks,
/// so this is ~50 us of spinning: long enough to ride out gaps inside a burst.
pub const IDLE_SPINS: u32 = 512;
/// Kernel socket counters are copied into the worker's stats every this many loop iterations
/// (a getsockopt per socket: about once per 4096 batches under load, once per sleep when idle).
const KERNEL_STATS_EVERY: u32 = 4096;
/// A worker reports trouble on its fast path (rings overflowing, packets it could not send) in
/// the log at most this often, with the counts since its last report: never a line per packet.
pub const TROUBLE_LOG_EVERY: Duration = Duration::from_secs(10);

/// The counters a worker watches for its rate-limited trouble report, by name.
fn trouble(stats: &WorkerStats) -> [(&'static str, u64); 4] {
    [
        (
            "AF_XDP RX ring full (kernel drops)",
            stats.xsk_rx_ring_full.get(),
        ),
        ("transmit ring full", stats.drops(DropReason::TxRingFull)),
        (
            "hand-off queue full",
            stats.drops(DropReason::HandoffQueueFull),
        ),
        ("fill ring starved", stats.fill_starved.get()),
    ]
}

/// Longest sleep: the worker wakes this often to notice a stop request or a new snapshot.
pub const IDLE_SLEEP: Duration = Duration::from_millis(100);

/// Runs one batch through `pipeline`: returns the number of packets received (0 = idle).
pub fn process_batch<I: PacketIo, N: NeighborRequests>(
    io: &mut I,
    pipeline: &mut Pipeline,
    publisher: &Publisher,
    batch: &mut Batch,
    stats: &WorkerStats,
    neigh: &mut N,
) -> usize {
    io.service(stats);
    // paced packets now due go first (already routed: they skip the stages)
    let released = pipeline.bandwidth.release(io, batch);
    let mut n = released + io.rx_burst(batch, stats);
    if let Some(h) = &pipeline.handoff {
        n += h.receive(io, batch, stats);
    }
    if n == 0 {
        return 0;
    }
    let started = std::time::Instant::now();
    let snap = publisher.load();
    stats.generation.set(snap.generation);
    stats.batches.add(1);
    pipeline.outbox.events.start_batch();
    // a capture running: every packet as received, and as transmitted after the pipeline
    let tap = match &pipeline.tap {
        Some(t) if t.active() => Some((t.clone(), wall_ns())),
        _ => None,
    };
    if let Some((t, now)) = &tap {
        capture(t, *now, io, batch, false);
    }
    pipeline.run(&snap, io.region_mut(), batch, stats, neigh);
    if let Some((t, now)) = &tap {
        capture(t, *now, io, batch, true);
    }
    io.tx_burst(batch, stats);
    settle(io, pipeline, batch, stats);
    while !pipeline.outbox.is_empty() {
        // the packets the stages generated (L7 403 answers and resets): final already, routed
        // and sent in batches of their own
        while batch.room() > 0 {
            let Some((bytes, port)) = pipeline.outbox.next() else {
                break;
            };
            match io.adopt(port, bytes) {
                Some(f) => {
                    batch.push(f);
                }
                // no free buffer to send it from: lost like a packet on a full ring
                None => stats.drop(DropReason::TxRingFull, 1),
            }
        }
        Pipeline::route(&snap, io.region_mut(), batch, neigh);
        if let Some((t, now)) = &tap {
            capture(t, *now, io, batch, true);
        }
        io.tx_burst(batch, stats);
        settle(io, pipeline, batch, stats);
    }
    stats.batch_took(started.elapsed().as_nanos() as u64);
    n
}

/// Wall-clock ns since the epoch.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Offers the batch's packets to a running capture: as received (`after` false: every frame,
/// on the port it came in on), or as they leave (only those to transmit, on their egress port).
fn capture<I: PacketIo>(t: &CaptureTap, now: u64, io: &mut I, batch: &Batch, after: bool) {
    for i in 0..batch.len() {
        let f = batch.frame(i);
        let port = match (after, batch.verdict(i)) {
            (false, Verdict::Continue) => f.port,
            // paced packets released into the batch were seen on their way in already
            (false, _) => continue,
            (true, Verdict::Tx(p)) => p,
            (true, _) => continue,
        };
        if let Some(b) = io.region_mut().data(&f) {
            t.offer(now, port, after, b);
        }
    }
}

/// Accounts for what is left of a batch after transmission (dropped by a stage, found its tx
/// ring full, or goes to another worker) and recycles its buffers.
fn settle<I: PacketIo>(io: &mut I, pipeline: &Pipeline, batch: &mut Batch, stats: &WorkerStats) {
    let (mut handed, mut to_wake) = (0u64, 0u64);
    let events = &pipeline.outbox.events;
    for i in 0..batch.len() {
        let (f, v) = (batch.frame(i), batch.verdict(i));
        match v {
            Verdict::Drop(r) => {
                stats.drop(r, 1);
                if events.on() {
                    events.emit(drop_event(
                        io.region_mut().data(&f),
                        r,
                        f.port,
                        batch.meta(i),
                    ));
                }
            }
            Verdict::Tx(_) => stats.drop(DropReason::TxRingFull, 1),
            // every stage decides or passes on; a packet no stage decided has nowhere to go
            Verdict::Continue => stats.drop(DropReason::NoRoute, 1),
            // a stage kept a copy (paced): only the buffer goes back
            Verdict::Consumed => {}
            Verdict::Handoff(w) => {
                let sent = match (&pipeline.handoff, io.region_mut().data(&f)) {
                    (Some(h), Some(bytes)) => {
                        h.send(usize::from(w), bytes, f.port, batch.meta(i).hops)
                    }
                    _ => false,
                };
                if sent {
                    handed += 1;
                    to_wake |= 1u64 << (w % 64);
                } else {
                    stats.drop(DropReason::HandoffQueueFull, 1);
                }
            }
        }
    }
    if let Some(h) = &pipeline.handoff {
        stats.handoff_out.add(handed);
        for w in (0..64).filter(|w| to_wake & (1 << w) != 0) {
            h.wake(w);
        }
    }
    io.recycle(batch);
}

/// The flow event of a dropped packet (addresses and ports when it parses at all).
pub(crate) fn drop_event(bytes: Option<&[u8]>, r: DropReason, port: u16, meta: Meta) -> FlowEvent {
    use crate::wire::parse::{parse_fast, TunnelPorts};
    let mut e = match bytes.map(|b| parse_fast(b, TunnelPorts::NONE)) {
        Some(Ok(p)) => FlowEvent::of_packet(EventKind::Drop, &p),
        _ => FlowEvent::new(EventKind::Drop),
    };
    e.drop_reason = r.code();
    e.port = port;
    e.src_identity = meta.src_identity;
    if matches!(
        r,
        DropReason::PolicyDenied | DropReason::PolicyDeny | DropReason::PolicyL7Denied
    ) {
        e.policy_slot = meta.policy_slot;
    }
    e
}

/// Waits on readiness of a set of fds with epoll (through mio), plus a waker the control plane
/// pokes after publishing a snapshot.
pub struct Waiter {
    poll: mio::Poll,
    events: mio::Events,
    waker: Arc<mio::Waker>,
}

/// Token of the control plane's waker; socket tokens are 0..n.
const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);

impl crate::state::Wake for mio::Waker {
    fn wake(&self) {
        // A failed wake only delays the worker until its next timeout.
        let _ = mio::Waker::wake(self);
    }
}

impl Waiter {
    fn new(fds: &[std::os::fd::RawFd]) -> std::io::Result<Waiter> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE_TOKEN)?);
        for (i, fd) in fds.iter().enumerate() {
            poll.registry().register(
                &mut mio::unix::SourceFd(fd),
                mio::Token(i),
                mio::Interest::READABLE,
            )?;
        }
        Ok(Waiter {
            poll,
            // one event per socket (and the waker) is all a wakeup needs
            events: mio::Events::with_capacity(fds.len() + 1),
            waker,
        })
    }
    fn wait(&mut self, timeout: Duration) {
        // EINTR or another error: the loop simply polls the rings again.
        let _ = self.poll.poll(&mut self.events, Some(timeout));
    }
}

/// A worker: owns its I/O backend, its pipeline and its counters.
pub struct Worker<I: PacketIo, N: NeighborRequests> {
    pub io: I,
    pub pipeline: Pipeline,
    pub publisher: Publisher,
    pub stats: Arc<WorkerStats>,
    pub neigh: N,
    pub batch_size: usize,
    pub poll_mode: PollMode,
    /// Created by `prepare` (adaptive mode only).
    pub waiter: Option<Waiter>,
}

impl<I: PacketIo, N: NeighborRequests> Worker<I, N> {
    /// Sets up the idle wait (adaptive mode on a backend that can block) and returns the waker
    /// that interrupts it, for the control plane to call after each publish.
    pub fn prepare(&mut self) -> std::io::Result<Option<Arc<mio::Waker>>> {
        let fds = self.io.readiness_fds();
        if self.poll_mode == PollMode::Busy || fds.is_empty() {
            return Ok(None);
        }
        let w = Waiter::new(&fds)?;
        let waker = w.waker.clone();
        self.waiter = Some(w);
        Ok(Some(waker))
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<()> {
        let mut batch = Batch::new(self.batch_size);
        if self.waiter.is_none() {
            self.prepare()?;
        }
        let mut waiter = self.waiter.take();
        let mut idle = 0u32;
        let mut loops = 0u32;
        let mut reported = trouble(&self.stats).map(|(_, v)| v);
        let mut last_report = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            loops = loops.wrapping_add(1);
            if loops.is_multiple_of(KERNEL_STATS_EVERY) {
                self.copy_kernel_drops();
                if last_report.elapsed() >= TROUBLE_LOG_EVERY {
                    self.report_trouble(&mut reported);
                    last_report = std::time::Instant::now();
                }
            }
            let n = process_batch(
                &mut self.io,
                &mut self.pipeline,
                &self.publisher,
                &mut batch,
                &self.stats,
                &mut self.neigh,
            );
            if n > 0 {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            match &mut waiter {
                // paced packets wait: keep turning to send them when due
                Some(w) if idle >= IDLE_SPINS && !self.pipeline.bandwidth.holding() => {
                    // another worker may hand packets over: it wakes us when it sees us asleep
                    let handoff = self.pipeline.handoff.as_ref();
                    if handoff.is_none_or(|h| h.sleep()) {
                        // report the generation even while idle, so status shows changes as live
                        self.stats.generation.set(self.publisher.generation());
                        self.stats.sleeps.add(1);
                        self.copy_kernel_drops();
                        w.wait(IDLE_SLEEP);
                        self.stats.generation.set(self.publisher.generation());
                        if let Some(h) = handoff {
                            h.awake();
                        }
                    }
                    idle = 0;
                }
                _ => {
                    if idle.is_multiple_of(1024) {
                        self.stats.generation.set(self.publisher.generation());
                    }
                    std::hint::spin_loop();
                }
            }
        }
        self.copy_kernel_drops();
        Ok(())
    }

    /// Logs (one warning line) the trouble counters that grew since the last report.
    fn report_trouble(&self, reported: &mut [u64; 4]) {
        let now = trouble(&self.stats);
        let grew: Vec<String> = now
            .iter()
            .zip(reported.iter())
            .filter(|((_, v), before)| v > before)
            .map(|((name, v), before)| format!("{name}: {}", v - before))
            .collect();
        if !grew.is_empty() {
            tracing::warn!(
                "worker overloaded in the last {} s: {}",
                TROUBLE_LOG_EVERY.as_secs(),
                grew.join(", ")
            );
        }
        *reported = now.map(|(_, v)| v);
    }

    fn copy_kernel_drops(&self) {
        if let Some(k) = self.io.kernel_drops() {
            self.stats.xsk_rx_dropped.set(k.rx_dropped);
            self.stats.xsk_rx_ring_full.set(k.rx_ring_full);
            self.stats.xsk_fill_ring_empty.set(k.fill_ring_empty);
        }
    }
}
