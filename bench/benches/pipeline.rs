//! The routing pipeline on the `mem` backend: ns/packet for a batch of 64, including the copy of
//! each packet into a buffer (what a NIC's DMA or AF_XDP copy mode does) so the number is
//! comparable with the AF_XDP path. The `copy only` case is the baseline in the same run.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_bench::{lab_like_snapshot, udp_templates, MemWorker};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::pipeline::Pipeline;
use sluice_dataplane::MAX_BATCH;

/// One worker's routing state on the `mem` backend, fed from 1,024 UDP flows.
struct Route {
    w: MemWorker,
    templates: Vec<Vec<u8>>,
    k: usize,
}

impl Route {
    fn new() -> Self {
        Route {
            w: MemWorker::new(lab_like_snapshot(250), Pipeline::new()),
            templates: udp_templates(1024, 64),
            k: 0,
        }
    }

    /// Copies the next 64 packets into the backend's receive side.
    fn inject(&mut self) {
        for _ in 0..MAX_BATCH {
            self.w
                .io
                .inject(0, &self.templates[self.k % self.templates.len()]);
            self.k += 1;
        }
    }

    /// 64 packets in, routed, out.
    fn route(&mut self) -> usize {
        self.inject();
        self.w.step()
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_mem");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let mut r = Route::new();
    g.bench_function("copy only (baseline): inject + rx + recycle, 64B", |b| {
        b.iter_batched(
            || (),
            |_| {
                r.inject();
                let w = &mut r.w;
                w.io.rx_burst(&mut w.batch, &w.stats);
                w.io.recycle(&mut w.batch);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(
        "route: inject + rx + parse + LPM + neighbour + TTL + tx, 64B",
        |b| b.iter(|| black_box(r.route())),
    );
    g.finish();
    // The route case must measure forwarding, not a drop path (when it ran: a filter may leave
    // it out).
    let dropped: u64 = sluice_dataplane::DropReason::ALL
        .iter()
        .map(|reason| r.w.stats.drops(*reason))
        .sum();
    assert_eq!(dropped, 0, "benchmark packets were dropped");
    assert!(r.w.stats.rx_packets.get() == 0 || r.w.stats.tx_packets.get() > 0);
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
                            let mut r = Route::new();
                            go.wait();
                            let t = std::time::Instant::now();
                            for _ in 0..iters {
                                black_box(r.route());
                            }
                            assert_eq!(r.w.stats.tx_packets.get(), iters * MAX_BATCH as u64);
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
