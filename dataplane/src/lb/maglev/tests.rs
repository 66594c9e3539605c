//! The Maglev fill's properties: balance, weights, disruption, determinism, and every
//! computed fill against the walk.

use super::*;
use proptest::prelude::*;

fn members(n: usize, weight: impl Fn(usize) -> u16) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            addr: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
            port: 8080,
            weight: weight(i),
        })
        .collect()
}

fn counts(t: &[u16], n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for &i in t {
        c[usize::from(i)] += 1;
    }
    c
}

#[test]
fn tables_of_up_to_256_members_take_a_byte_a_slot() {
    for (n, narrow) in [
        (1, true),
        (10, true),
        (256, true),
        (257, false),
        (1000, false),
    ] {
        let built = build(&members(n, |_| 1), 4093, 7);
        let t = Table::from(built.clone());
        assert_eq!(matches!(t, Table::Narrow(_)), narrow, "{n} members");
        assert_eq!(t.len(), 4093);
        assert!(
            t.iter().eq(built.iter().map(|&i| usize::from(i))),
            "{n} members"
        );
        assert_eq!(t.get(4093), None);
        assert!(Table::ptr_eq(&t, &t.clone()));
        assert!(!Table::ptr_eq(&t, &Table::from(built)));
    }
    let none = Table::from(build(&members(3, |_| 0), 251, 0));
    assert!(none.is_empty() && none.get(0).is_none() && none == Table::default());
}

#[test]
fn equal_weights_differ_by_at_most_one_slot() {
    for &m in &TABLE_SIZES[..6] {
        for n in [1, 2, 3, 7, 10, 100] {
            let t = build(&members(n, |_| 1), m, 7);
            assert_eq!(t.len(), m as usize);
            let c = counts(&t, n);
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(hi - lo <= 1, "M={m} N={n}: {lo}..{hi}");
        }
    }
}

#[test]
fn slots_follow_the_weights() {
    let ws = [1u16, 1, 2, 5, 0];
    let t = build(&members(5, |i| ws[i]), 16381, 1);
    let c = counts(&t, 5);
    let total: u32 = ws.iter().map(|&w| u32::from(w)).sum();
    for (i, &w) in ws.iter().enumerate() {
        let want = 16381.0 * f64::from(w) / f64::from(total);
        assert!(
            (c[i] as f64 - want).abs() < 1.0,
            "backend {i} weight {w}: {} slots, want ~{want}",
            c[i]
        );
    }
    assert_eq!(c[4], 0, "weight 0 takes nothing");
    assert!(build(&members(3, |_| 0), 251, 1).is_empty());
}

/// Share (in %) of the slots of the backends that stay which move when one is removed: the
/// worst over removing the first, a middle and the last backend.
fn disruption(n: usize, m: u32, weight: impl Fn(usize) -> u16) -> f64 {
    let all = members(n, weight);
    let before = build(&all, m, 42);
    let mut worst = 0f64;
    for r in [0, n / 3, n - 1] {
        let mut rest = all.clone();
        let gone = rest.remove(r);
        let after = build(&rest, m, 42);
        let (mut kept, mut moved) = (0usize, 0usize);
        for (b, a) in before.iter().zip(&after) {
            let old = all[usize::from(*b)];
            if old != gone {
                kept += 1;
                moved += usize::from(rest[usize::from(*a)] != old);
            }
        }
        worst = worst.max(moved as f64 * 100.0 / kept as f64);
    }
    worst
}

const MIXED: [u16; 4] = [1, 1, 2, 5];

/// The bound (M > 100·N: at most 1% of the other backends' slots move) holds from
/// the default size up. Measured, the worst of 5 seeds and 4 removals at M/N 100-400 and
/// M 16381-131071: 0.27-0.86% with equal weights, 0.32-0.84% weighted 1:1:2:5 (classic
/// Maglev: 0.48-1.73% and 0.67-1.86%).
#[test]
fn removing_one_backend_moves_at_most_one_percent_of_the_others() {
    let sizes = [
        (163, 16381),
        (81, 16381),
        (40, 16381),
        (10, 16381),
        (327, 32749),
    ];
    moves_at_most(&sizes, 1.0);
}

/// `disruption` with equal and mixed weights, for each (N, M), is at most `bound` %.
fn moves_at_most(sizes: &[(usize, u32)], bound: f64) {
    for &(n, m) in sizes {
        for (kind, d) in [
            ("equal", disruption(n, m, |_| 1)),
            ("1:1:2:5", disruption(n, m, |i| MIXED[i % 4])),
        ] {
            assert!(
                d <= bound,
                "N={n} M={m} {kind}: {d:.2}% of other slots moved"
            );
        }
    }
}

/// Below the default size the bound does not hold: the removed backend's slots cannot be
/// split to the slot among the others without moving some of theirs, and with few slots
/// that is a larger share (measured as above at M 1021-8191: 0.8-3.3%; classic Maglev
/// 1.3-4.6%).
#[test]
fn small_tables_move_a_few_percent() {
    moves_at_most(
        &[(10, 1021), (5, 1021), (20, 2039), (40, 4093), (81, 8191)],
        4.0,
    );
}

#[test]
fn the_order_of_the_members_does_not_matter() {
    let b = members(50, |i| MIXED[i % 4]);
    let mut r = b.clone();
    r.reverse();
    let (t, u) = (build(&b, 4093, 3), build(&r, 4093, 3));
    assert!(t
        .iter()
        .zip(&u)
        .all(|(&x, &y)| b[usize::from(x)] == r[usize::from(y)]));
}

/// One member of weight 1 beside one of weight 65535: the rounds without a look are
/// skipped, and each still gets its exact share.
#[test]
fn extreme_weights_fill_quickly_and_exactly() {
    let t = build(&members(2, |i| [1, u16::MAX][i]), 65521, 9);
    let c = counts(&t, 2);
    assert_eq!(c, vec![1, 65520]);
}

#[test]
fn same_seed_same_table_other_seed_other_table() {
    let b = members(10, |i| 1 + (i % 3) as u16);
    assert_eq!(build(&b, 4093, 5), build(&b, 4093, 5));
    assert_ne!(build(&b, 4093, 5), build(&b, 4093, 6));
}

/// Fixed fingerprints, of an equal-weight table and a weighted one (the two ways the fill
/// runs): a change to the hash, the clock or the fill order (which would make appliances
/// of different versions disagree) fails here, not in production.
#[test]
fn table_is_stable_across_builds_and_processes() {
    let fingerprint = |t: &[u16]| {
        t.iter()
            .fold(0u64, |h, &i| fmix(h ^ u64::from(i)).wrapping_add(1))
    };
    let equal = build(&members(5, |_| 1), 251, 0x5eed);
    let weighted = build(&members(3, |i| [1, 1, 2][i]), 251, 0x5eed);
    assert_eq!(
        [fingerprint(&equal), fingerprint(&weighted)],
        FINGERPRINTS,
        "Maglev table changed: {:?} / {:?}",
        &equal[..16],
        &weighted[..16]
    );
}
const FINGERPRINTS: [u64; 2] = [17618397272754447223, 2536259057434503413];

/// The clock's logarithm: integers only, within 3e-6 of the true one, and rising with
/// every step of x up to the largest table (the fill's order rests on it).
#[test]
fn the_fixed_point_log_is_close_and_rising() {
    let mut last = 0;
    for x in 1..=(1u32 << 17) {
        let l = log2_q32(x);
        assert!(x == 1 || l > last, "log2({x}) did not rise");
        last = l;
        let err = (l as f64 / 4294967296.0 - f64::from(x).log2()).abs();
        assert!(err < 3e-6, "log2({x}) off by {err}");
    }
    assert_eq!(log2_q32(1), 0);
    assert_eq!(log2_q32(1 << 16), 16 << 32);
}

/// The computed fill gives the very table the walk does: equal weights (computed from the
/// first choices, up to `EQUAL_MAX` members), mixed (the end computed), extreme, one
/// member, many; every table size.
#[test]
fn the_computed_fill_is_the_walked_one() {
    let cases: [(usize, &dyn Fn(usize) -> u16); 9] = [
        (10, &|_| 1),
        (2, &|_| 1),
        (EQUAL_MAX, &|_| 7),
        (EQUAL_MAX + 1, &|_| 1),
        (3, &|i| [1, 1, 2][i]),
        (40, &|i| MIXED[i % 4]),
        (2, &|i| [1, u16::MAX][i]),
        (1, &|_| 3),
        (300, &|i| 1 + (i % 7) as u16),
    ];
    for &m in &TABLE_SIZES[..9] {
        for (n, w) in cases {
            let b = members(n, w);
            for seed in [1, 0x5eed] {
                let walked = fill(&b, m, seed, How::Walked);
                for how in [How::Computed, How::Unguessed] {
                    assert!(fill(&b, m, seed, how) == walked, "M={m} N={n} seed {seed}");
                }
            }
        }
    }
}

proptest! {
    /// Equal weights, computed from the first choices up to `EQUAL_MAX` members.
    #[test]
    fn equal_weights_fill_as_the_walk_does(n in 1usize..80, size in 0usize..8, seed in any::<u64>()) {
        let (b, m) = (members(n, |_| 1), TABLE_SIZES[size]);
        prop_assert_eq!(build(&b, m, seed), fill(&b, m, seed, How::Walked));
    }

    #[test]
    fn any_members_fill_the_table(ws in proptest::collection::vec(0u16..20, 1..40), seed in any::<u64>()) {
        let b = members(ws.len(), |i| ws[i]);
        let t = build(&b, 509, seed);
        prop_assert_eq!(&t, &fill(&b, 509, seed, How::Walked));
        if ws.iter().all(|&w| w == 0) {
            prop_assert!(t.is_empty());
        } else {
            prop_assert_eq!(t.len(), 509);
            prop_assert!(t.iter().all(|&i| ws[usize::from(i)] > 0));
        }
    }
}
