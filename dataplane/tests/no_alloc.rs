//! The fast path allocates nothing: a counting global allocator around the overlay stages and
//! the whole batch (rx, decap, encap, route, tx, recycle) on the `mem` backend.

use sluice_dataplane::fixtures::overlay_snapshot;
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::{OverlayMode, Publisher, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::PacketSpec;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, DropReason, MAX_BATCH};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
thread_local! {
    /// Counting is per thread: the test harness's own thread (printing the other test's
    /// result) allocates meanwhile, and is not the fast path.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// The counter is process-wide: the tests take turns, or one counts the other's allocations.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> Snapshot {
    overlay_snapshot(
        OverlayMode::Vxlan,
        "10.20.0.1",
        1500,
        &["10.20.0.21"],
        Some([2, 0, 0, 0, 0xee, 2]),
    )
}

#[test]
fn encap_decap_and_the_whole_batch_allocate_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let publisher = Publisher::new(snapshot());
    let to_pod: Vec<Vec<u8>> = (0..16)
        .map(|f| PacketSpec::udp("10.10.0.2", "10.244.2.5", 1000 + f, 9000, &[0u8; 22]).build())
        .collect();
    let from_node: Vec<Vec<u8>> = (0..16)
        .map(|f| {
            let inner =
                PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 1000 + f, &[0u8; 22]).build();
            let mut payload = vec![0x08, 0, 0, 0, 0, 0x13, 0x89, 0];
            payload.extend_from_slice(&inner);
            PacketSpec::udp("10.20.0.21", "10.20.0.1", 50000, 8472, &payload).build()
        })
        .collect();
    let mut io = MemIo::new(512, 2048, TxSink::Discard);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let mut pipeline = Pipeline::new();
    let mut round = |count: bool| {
        for i in 0..MAX_BATCH {
            let (port, f) = if i % 2 == 0 {
                (0, &to_pod[i % 16])
            } else {
                (1, &from_node[i % 16])
            };
            assert!(io.inject(port, f));
        }
        COUNTING.set(count);
        let n = process_batch(
            &mut io,
            &mut pipeline,
            &publisher,
            &mut batch,
            &stats,
            &mut NoNeighborRequests,
        );
        COUNTING.set(false);
        assert_eq!(n, MAX_BATCH);
    };
    round(false); // warm-up: lazily initialised state is not the fast path
    ALLOCS.store(0, Ordering::SeqCst);
    for _ in 0..100 {
        round(true);
    }
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "the fast path allocated");
    assert_eq!(stats.encapsulated.get(), 101 * 32);
    assert_eq!(stats.decapsulated.get(), 101 * 32);
    assert_eq!(stats.tx_packets.get(), 101 * 64);
    let _ = io.region_mut();
}

#[test]
fn flow_events_allocate_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    use sluice_dataplane::flow::{EventSink, FlowRing, RING};
    use std::sync::Arc;
    let publisher = Publisher::new(snapshot());
    // TTL 1: every packet is dropped (TTL_EXCEEDED), every drop an event
    let frames: Vec<Vec<u8>> = (0..16)
        .map(|f| {
            let mut s = PacketSpec::udp("10.10.0.2", "10.244.2.5", 1000 + f, 9000, &[0u8; 22]);
            s.ttl = 1;
            s.build()
        })
        .collect();
    let mut io = MemIo::new(512, 2048, TxSink::Discard);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let mut pipeline = Pipeline::new();
    let ring = Arc::new(FlowRing::new(RING));
    pipeline.outbox.events = EventSink::new(ring.clone());
    let mut drained = Vec::with_capacity(MAX_BATCH);
    let mut round = |count: bool| {
        for i in 0..MAX_BATCH {
            assert!(io.inject(0, &frames[i % 16]));
        }
        COUNTING.set(count);
        process_batch(
            &mut io,
            &mut pipeline,
            &publisher,
            &mut batch,
            &stats,
            &mut NoNeighborRequests,
        );
        drained.clear();
        ring.drain_into(&mut drained, MAX_BATCH);
        COUNTING.set(false);
        assert_eq!(drained.len(), MAX_BATCH, "one event per drop");
    };
    round(false);
    ALLOCS.store(0, Ordering::SeqCst);
    for _ in 0..100 {
        round(true);
    }
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "emitting flow events allocated"
    );
    pipeline.outbox.events.start_batch(); // publishes the counts of the last batch
    assert_eq!(ring.emitted.load(Ordering::Relaxed), 101 * MAX_BATCH as u64);
    assert_eq!(drained[0].0.drop_reason, DropReason::TtlExceeded.code());
    assert_eq!(drained[0].0.dport, 9000);
}
