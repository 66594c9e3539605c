//! The routing pipeline on the `mem` backend: ns/packet for a batch of 64, including the copy of
//! each packet into a buffer (what a NIC's DMA or AF_XDP copy mode does) so the number is
//! comparable with the AF_XDP path. The `copy only` case is the baseline in the same run.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_bench::{lab_like_snapshot, udp_templates};
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::Publisher;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, MAX_BATCH};

fn bench(c: &mut Criterion) {
    let publisher = Publisher::new(lab_like_snapshot(250));
    let templates = udp_templates(1024, 64);
    let mut g = c.benchmark_group("pipeline_mem");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));

    let mut io = MemIo::new(1024, 2048, TxSink::Discard);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let mut pipeline = Pipeline::new();
    let mut k = 0usize;
    g.bench_function("copy only (baseline): inject + rx + recycle, 64B", |b| {
        b.iter_batched(
            || (),
            |_| {
                for _ in 0..MAX_BATCH {
                    io.inject(0, &templates[k % templates.len()]);
                    k += 1;
                }
                io.rx_burst(&mut batch, &stats);
                io.recycle(&mut batch);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(
        "route: inject + rx + parse + LPM + neighbour + TTL + tx, 64B",
        |b| {
            b.iter(|| {
                for _ in 0..MAX_BATCH {
                    io.inject(0, &templates[k % templates.len()]);
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
            })
        },
    );
    g.finish();
    // The route case must measure forwarding, not a drop path (when it ran: a filter may leave
    // it out).
    let dropped: u64 = sluice_dataplane::DropReason::ALL
        .iter()
        .map(|r| stats.drops(*r))
        .sum();
    assert_eq!(dropped, 0, "benchmark packets were dropped");
    assert!(stats.rx_packets.get() == 0 || stats.tx_packets.get() > 0);
}

/// Scaling (issue 8): the route pipeline on 1 and on 2 workers, each a thread pinned to its own
/// core with its own `mem` backend, pipeline and counters (per-worker state, nothing shared but
/// the snapshot). Throughput is all workers' packets over the wall time of the slowest: 2
/// workers on 2 cores should come close to twice 1.
fn scaling(c: &mut Criterion) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut g = c.benchmark_group("pipeline_scaling");
    for workers in [1usize, 2].into_iter().filter(|w| *w <= cores.len().max(1)) {
        g.throughput(Throughput::Elements((MAX_BATCH * workers) as u64));
        g.bench_function(format!("route, {workers} worker(s)"), |b| {
            b.iter_custom(|iters| {
                let go = std::sync::Arc::new(std::sync::Barrier::new(workers + 1));
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let go = go.clone();
                        let core = cores.get(w).copied();
                        std::thread::spawn(move || {
                            if let Some(c) = core {
                                core_affinity::set_for_current(c);
                            }
                            let publisher = Publisher::new(lab_like_snapshot(250));
                            let templates = udp_templates(1024, 64);
                            let mut io = MemIo::new(1024, 2048, TxSink::Discard);
                            let stats = WorkerStats::default();
                            let mut batch = Batch::new(MAX_BATCH);
                            let mut pipeline = Pipeline::new();
                            let mut k = 0usize;
                            go.wait();
                            let t = std::time::Instant::now();
                            for _ in 0..iters {
                                for _ in 0..MAX_BATCH {
                                    io.inject(0, &templates[k % templates.len()]);
                                    k += 1;
                                }
                                black_box(process_batch(
                                    &mut io,
                                    &mut pipeline,
                                    &publisher,
                                    &mut batch,
                                    &stats,
                                    &mut NoNeighborRequests,
                                ));
                            }
                            assert_eq!(stats.tx_packets.get(), iters * MAX_BATCH as u64);
                            t.elapsed()
                        })
                    })
                    .collect();
                go.wait();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("worker thread"))
                    .max()
                    .unwrap_or_default()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, scaling);
criterion_main!(benches);
