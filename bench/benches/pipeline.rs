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
    // The route case must measure forwarding, not a drop path.
    let dropped: u64 = sluice_dataplane::DropReason::ALL
        .iter()
        .map(|r| stats.drops(*r))
        .sum();
    assert_eq!(dropped, 0, "benchmark packets were dropped");
    assert!(stats.tx_packets.get() > 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
