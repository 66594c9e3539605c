//! Load balancing off and on the fast path:
//! - Maglev table builds (targets: under 2 ms for M=16381 with 1,000 backends and M=65521 with
//!   100 backends);
//! - the load-balancing stage alone on the `mem` backend with 1,000,000 tracked connections:
//!   packets of established connections (conntrack hit + rewrite; target under 50 ns/packet),
//!   next to a batch of packets that are no service's (the stage's floor: parse + lookup miss).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_dataplane::fixtures::service_snapshot;
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::lb::maglev::{build, Member};
use sluice_dataplane::lb::{service, CtLimits, LbSettings, LbState};
use sluice_dataplane::state::{Backend, Frontend, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::{Batch, MAX_BATCH};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            addr: IpAddr::from([10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            port: 8080,
            weight: 1,
        })
        .collect()
}

fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    // the two targets, and the default table of a typical Service (the full apply's
    // 10,000 builds)
    for (m, n) in [(16381u32, 1000usize), (65521, 100), (16381, 10)] {
        let b = members(n);
        g.bench_function(format!("M={m} N={n}"), |x| {
            x.iter(|| build(std::hint::black_box(&b), m, 0x5eed))
        });
    }
    // weighted tables read the fill's clock (lb::maglev::build); equal weights do not
    let mut b = members(100);
    for (i, m) in b.iter_mut().enumerate() {
        m.weight = [1, 1, 2, 5][i % 4];
    }
    g.bench_function("M=65521 N=100 weights 1:1:2:5", |x| {
        x.iter(|| build(std::hint::black_box(&b), 65521, 0x5eed))
    });
    g.finish();
}

const CONNECTIONS: u32 = 1_000_000;

/// Client `i`'s packet to the service's VIP (client addresses 10.64.0.0/10, one port each).
fn to_vip(i: u32, flags: u8) -> Vec<u8> {
    let a = 0x0a40_0000 + i;
    let src = IpAddr::from(a.to_be_bytes()).to_string();
    let mut s = PacketSpec::udp(&src, "10.96.0.80", 40000, 80, &[0u8; 10]);
    s.l4 = L4::Tcp(flags);
    s.build()
}

/// The lab service with 64 backends and SNAT over 1024-65535: a SNAT port is unique per backend,
/// so a million connections need more than the 3 lab backends x 4536 default ports.
fn wide_service() -> Snapshot {
    let mut snap = service_snapshot([1, 1, 2]);
    let mut cluster = (*snap.cluster).clone();
    let fe = Frontend {
        addr: "10.96.0.80".parse().expect("ip"),
        proto: 6,
        port: 80,
    };
    let mut entry = (*cluster.services[&fe]).clone();
    entry.backends = (0..64u8)
        .map(|i| Backend {
            addr: IpAddr::from([10, 20, 1, i]),
            ..entry.backends[0].clone()
        })
        .collect();
    let m: Vec<Member> = entry
        .backends
        .iter()
        .map(|b| Member {
            addr: b.addr,
            port: b.port,
            weight: 1,
        })
        .collect();
    entry.table = build(&m, 16381, 0).into();
    cluster.services.insert(fe, Arc::new(entry));
    snap.cluster = Arc::new(cluster);
    snap.lb = Arc::new(LbSettings {
        snat_ports: (1024, 65535),
        ..(*snap.lb).clone()
    });
    snap
}

/// The tables in a file on tmpfs, as sluiced keeps them under /run/sluice/conntrack so restarts
/// keep connections (decision 013): /dev/shm is tmpfs like /run.
fn in_file(limits: &CtLimits) -> (LbState, std::path::PathBuf) {
    let dir = std::path::PathBuf::from(format!("/dev/shm/sluice-bench-ct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("/dev/shm");
    let (lb, _) = LbState::persistent(limits, 0, 1, &dir).expect("table files");
    (lb, dir)
}

fn conntrack(c: &mut Criterion) {
    let limits = CtLimits {
        tcp_max: 1 << 21,
        ..CtLimits::default()
    };
    conntrack_in(c, LbState::new(&limits, 0, 1), "");
    let (lb, dir) = in_file(&limits);
    conntrack_in(c, lb, ", tables in a tmpfs file");
    let _ = std::fs::remove_dir_all(dir);
}

fn conntrack_in(c: &mut Criterion, mut lb: LbState, tables: &str) {
    let snap = wide_service();
    let mut io = MemIo::new(256, 2048, TxSink::Discard);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let mut outbox = sluice_dataplane::l7::Outbox::default();
    let mut run = |io: &mut MemIo, lb: &mut LbState, frames: &mut dyn Iterator<Item = Vec<u8>>| {
        let mut total = Duration::ZERO;
        loop {
            let mut n = 0;
            for f in (&mut *frames).take(MAX_BATCH) {
                io.inject(0, &f);
                n += 1;
            }
            if n == 0 {
                return total;
            }
            io.rx_burst(&mut batch, &stats);
            let t = Instant::now();
            service(&snap, io.region_mut(), &mut batch, &stats, lb, &mut outbox);
            total += t.elapsed();
            io.recycle(&mut batch);
        }
    };
    // a million connections
    run(
        &mut io,
        &mut lb,
        &mut (0..CONNECTIONS).map(|i| to_vip(i, 0x02)),
    );
    assert_eq!(lb.connections(), CONNECTIONS as usize, "population");
    let established: Vec<Vec<u8>> = (0..4096u32)
        .map(|k| to_vip(k.wrapping_mul(2_654_435_761) % CONNECTIONS, 0x10))
        .collect();
    let other: Vec<Vec<u8>> = (0..4096u32)
        .map(|k| {
            let mut s = PacketSpec::udp("10.10.0.2", "10.20.0.11", 1000 + k as u16, 80, &[0; 10]);
            s.l4 = L4::Tcp(0x10);
            s.build()
        })
        .collect();
    let mut g = c.benchmark_group("lb_mem");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let tracked = format!("tracked flow, 1M connections{tables}");
    let floor = tables
        .is_empty()
        .then_some(("not a service (floor)", &other));
    for (name, frames) in std::iter::once((tracked.as_str(), &established)).chain(floor) {
        let mut k = 0usize;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut it = (0..iters as usize * MAX_BATCH).map(|_| {
                    k += 1;
                    frames[k % frames.len()].clone()
                });
                run(&mut io, &mut lb, &mut it)
            })
        });
    }
    g.finish();
    assert_eq!(
        lb.connections(),
        CONNECTIONS as usize,
        "no connection was added or lost"
    );
}

/// New connections (issue 8, every packet a new flow), the per-new-flow cost of the LB stage:
/// - SYNs of fresh clients into the lab's TCP conntrack bound (65,536 per worker), full after
///   the first 65,536, so every later SYN evicts an embryonic entry, as in a SYN flood;
/// - SYNs to the lab service (3 backends, the default 4,536 SNAT ports each), whose ports a
///   flood holds with half-open connections within its first 14,000 SYNs: every later SYN takes
///   a port from one of them. The service-scale flood runs this way.
fn new_connections(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_new");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let limits = CtLimits {
        tcp_max: 65_536,
        ..CtLimits::default()
    };
    let mut flood = SynFlood::new(wide_service(), LbState::new(&limits, 0, 1));
    g.bench_function("SYN of a new flow, table full (evicting)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| flood.batch()).sum())
    });
    // (criterion runs no batch when a filter leaves the bench out)
    assert!(
        flood.next == 0 || flood.stats.lb_new_connections.get() > 0,
        "the SYNs opened connections"
    );
    let mut flood = SynFlood::new(service_snapshot([1, 1, 1]), LbState::new(&limits, 0, 1));
    for _ in 0..50_000 / MAX_BATCH {
        flood.batch();
    }
    let (reclaimed, sent) = (flood.lb.evicted(), flood.next);
    g.bench_function("SYN of a new flow, SNAT ports taken (reclaiming)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| flood.batch()).sum())
    });
    assert!(
        flood.next == sent || flood.lb.evicted() > reclaimed && flood.lb.connections() < 65_536,
        "the SYNs took ports from half-open connections, the table did not fill"
    );
    g.finish();
}

/// SYNs of fresh clients (4M distinct, then again) through the LB stage, a batch at a time.
struct SynFlood {
    snap: Snapshot,
    lb: LbState,
    io: MemIo,
    stats: WorkerStats,
    batch: Batch,
    outbox: sluice_dataplane::l7::Outbox,
    next: u32,
}

impl SynFlood {
    fn new(snap: Snapshot, lb: LbState) -> Self {
        SynFlood {
            snap,
            lb,
            io: MemIo::new(256, 2048, TxSink::Discard),
            stats: WorkerStats::default(),
            batch: Batch::new(MAX_BATCH),
            outbox: Default::default(),
            next: 0,
        }
    }

    /// One batch of SYNs; the time the stage took.
    fn batch(&mut self) -> Duration {
        for _ in 0..MAX_BATCH {
            self.io.inject(0, &to_vip(self.next % 4_000_000, 0x02));
            self.next += 1;
        }
        self.io.rx_burst(&mut self.batch, &self.stats);
        let t = Instant::now();
        service(
            &self.snap,
            self.io.region_mut(),
            &mut self.batch,
            &self.stats,
            &mut self.lb,
            &mut self.outbox,
        );
        let took = t.elapsed();
        self.io.recycle(&mut self.batch);
        took
    }
}

criterion_group!(benches, maglev, conntrack, new_connections);
criterion_main!(benches);
