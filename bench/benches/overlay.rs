//! Encapsulation and decapsulation on the `mem` backend: ns/packet of each stage alone, timed
//! around the stage call only (frames are injected and received outside the timed region), for a
//! batch of 64 packets of 64 bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_bench::overlay::{
    from_node, to_pod, to_pods_round_robin, vxlan_snapshot, vxlan_snapshot_nodes,
};
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::overlay::{decap, encap, EncapState};
use sluice_dataplane::pipeline::NoNeighborRequests;
use sluice_dataplane::state::Snapshot;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::{Batch, MAX_BATCH};
use std::time::{Duration, Instant};

fn stage(
    c: &mut Criterion,
    name: &str,
    snap: Snapshot,
    frames: Vec<Vec<u8>>,
    port: u16,
    decapsulate: bool,
) {
    let mut io = MemIo::new(256, 2048, TxSink::Discard);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let mut state = EncapState::default();
    let mut k = 0usize;
    let mut g = c.benchmark_group("overlay_mem");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..MAX_BATCH {
                    io.inject(port, &frames[k % frames.len()]);
                    k += 1;
                }
                io.rx_burst(&mut batch, &stats);
                let t = Instant::now();
                if decapsulate {
                    decap(&snap, io.region_mut(), &mut batch, &stats);
                } else {
                    encap(
                        &snap,
                        io.region_mut(),
                        &mut batch,
                        &stats,
                        &mut NoNeighborRequests,
                        &mut state,
                    );
                }
                total += t.elapsed();
                io.recycle(&mut batch);
            }
            total
        })
    });
    g.finish();
    // the stage did its work on every packet: nothing dropped, everything (de)capsulated
    let done = if decapsulate {
        stats.decapsulated.get()
    } else {
        stats.encapsulated.get()
    };
    let dropped: u64 = sluice_dataplane::DropReason::ALL
        .iter()
        .map(|r| stats.drops(*r))
        .sum();
    assert_eq!(dropped, 0);
    assert!(done > 0);
}

fn bench(c: &mut Criterion) {
    let one = vxlan_snapshot;
    stage(
        c,
        "encap vxlan/ipv4, 64B inner",
        one(),
        to_pod(64),
        0,
        false,
    );
    // every packet to another node than the one before: no per-batch cache hit
    stage(
        c,
        "encap vxlan/ipv4, 64B inner, 8 nodes interleaved",
        vxlan_snapshot_nodes(8),
        to_pods_round_robin(64, 8),
        0,
        false,
    );
    stage(
        c,
        "decap vxlan/ipv4, 64B inner",
        one(),
        from_node(64),
        1,
        true,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
