//! Load balancing off and on the fast path: Maglev table builds (issue targets: under 2 ms for
//! M=16381 with 1,000 backends and M=65521 with 100 backends).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_dataplane::lb::maglev::{build, Member};
use std::net::IpAddr;

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
    for (m, n) in [(16381u32, 1000usize), (65521, 100)] {
        let b = members(n);
        g.bench_function(format!("M={m} N={n}"), |x| {
            x.iter(|| build(std::hint::black_box(&b), m, 0x5eed))
        });
    }
    g.finish();
}

criterion_group!(benches, maglev);
criterion_main!(benches);
