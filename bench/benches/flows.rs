//! The cost of flow events (issue 7 target: under 10% of the pipeline's throughput; Cilium
//! documents 1-15% for Hubble). The same pipeline and packets with a worker's event ring
//! attached and without, in one run:
//! - routed traffic of established flows, the common case: no event per packet, only the
//!   per-batch check and timestamp;
//! - every packet dropped (TTL 1): one event per packet, the worst case.
//!
//! The ring is drained between iterations, outside the timing (the collector thread does it).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_bench::{lab_like_snapshot, udp_templates};
use sluice_dataplane::flow::{EventSink, FlowRing, RING};
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::Publisher;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, MAX_BATCH};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let publisher = Publisher::new(lab_like_snapshot(250));
    let forwarded = udp_templates(1024, 64);
    let dropped: Vec<Vec<u8>> = forwarded
        .iter()
        .map(|t| {
            let mut t = t.clone();
            // TTL 1 (IPv4 header at 14, TTL at +8), header checksum left stale: the TTL check
            // comes first either way
            t[14 + 8] = 1;
            t
        })
        .collect();
    let mut g = c.benchmark_group("flow_events");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (case, frames) in [
        ("routed, established", &forwarded),
        ("every packet dropped", &dropped),
    ] {
        for events in [false, true] {
            let mut io = MemIo::new(1024, 2048, TxSink::Discard);
            let stats = WorkerStats::default();
            let mut batch = Batch::new(MAX_BATCH);
            let mut pipeline = Pipeline::new();
            let ring = Arc::new(FlowRing::new(RING));
            if events {
                pipeline.outbox.events = EventSink::new(ring.clone());
            }
            let mut drained = Vec::with_capacity(RING);
            let mut k = 0usize;
            let name = format!("{case}, events {}", if events { "on" } else { "off" });
            g.bench_function(&name, |b| {
                b.iter_batched(
                    || {
                        drained.clear();
                        ring.drain_into(&mut drained, RING);
                    },
                    |_| {
                        for _ in 0..MAX_BATCH {
                            io.inject(0, &frames[k % frames.len()]);
                            k += 1;
                        }
                        black_box(process_batch(
                            &mut io,
                            &mut pipeline,
                            &publisher,
                            &mut batch,
                            &stats,
                            &mut NoNeighborRequests,
                        ))
                    },
                    BatchSize::SmallInput,
                )
            });
            if events {
                assert_eq!(
                    ring.lost.load(std::sync::atomic::Ordering::Relaxed),
                    0,
                    "{name}: events lost"
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
