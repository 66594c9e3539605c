//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with backend weights.
//!
//! Each backend gets a permutation of the M slots from two hashes of its identity (address and
//! port) under a seed: `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, slot j of the permutation is
//! `(offset + j * skip) % M`; M prime makes every permutation visit every slot. Backends take
//! turns claiming their next free slot until the table is full. Weights: in every round each
//! backend earns its weight in credit and claims one slot per `max_weight` of credit, so slot
//! counts follow the weights and equal weights claim one slot per round each (the counts differ
//! by at most one).
//!
//! Everything here is deterministic: the same seed and backends give the same table in every
//! process (the hash is our own, not std's randomly keyed one), so appliances behind ECMP agree.

use std::net::IpAddr;

/// Cilium's table sizes (primes); the default is 16381.
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// A backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub addr: IpAddr,
    pub port: u16,
    /// 0: the backend takes no slot.
    pub weight: u16,
}

/// The lookup table: slot -> index into the member list. Empty if no member has weight.
pub fn build(members: &[Member], m: u32, seed: u64) -> Vec<u16> {
    let m = m as usize;
    debug_assert!(m > 1 && members.len() <= usize::from(u16::MAX));
    let live: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].weight > 0)
        .collect();
    if live.is_empty() || m < 2 {
        return Vec::new();
    }
    let max_w = live.iter().map(|&i| members[i].weight).max().unwrap_or(1) as u32;
    let m32 = m as u32;
    // per live member, together (one cache line per few members): where its permutation is,
    // its step, its credit
    struct Turn {
        pos: u32,
        /// The step, and 2, 3 and 4 steps, mod M (see the probe loop).
        skip: [u32; 4],
        credit: u32,
        weight: u32,
        index: u16,
    }
    let mut turns: Vec<Turn> = live
        .iter()
        .map(|&i| {
            let (h1, h2) = hashes(&members[i], seed);
            let skip = h2 % u64::from(m32 - 1) + 1;
            let steps = |k: u64| ((skip * k) % u64::from(m32)) as u32;
            Turn {
                pos: (h1 % u64::from(m32)) as u32,
                skip: [steps(1), steps(2), steps(3), steps(4)],
                credit: 0,
                weight: u32::from(members[i].weight),
                index: i as u16,
            }
        })
        .collect();
    let mut table = vec![0u16; m];
    // occupancy as a bitmap: the probe loop reads 1 bit per slot (8 KiB for M=65521, in L1)
    let mut taken = vec![0u64; m.div_ceil(64)];
    let next = |p: u32, step: u32| {
        // a select, not a branch: it goes either way about half the time
        let q = p + step;
        if q >= m32 {
            q - m32
        } else {
            q
        }
    };
    let mut filled = 0;
    'rounds: loop {
        for t in turns.iter_mut() {
            t.credit += t.weight;
            while t.credit >= max_w {
                t.credit -= max_w;
                // The member's next free slot in its own permutation. Late in the fill most
                // slots are taken and the walk is long; it computes 4 slots ahead at a time, so
                // the chain of dependent steps is a quarter as long, and takes the first free
                // one in permutation order. (Measured: 15-25% off the builds of the lb bench;
                // picking from a mask of the 4 without a branch each was slower.)
                let free = |p: u32| taken[(p / 64) as usize] & (1 << (p % 64)) == 0;
                let [s1, s2, s3, s4] = t.skip;
                let mut p = t.pos;
                let p = loop {
                    let (q1, q2, q3) = (next(p, s1), next(p, s2), next(p, s3));
                    if free(p) {
                        break p;
                    }
                    if free(q1) {
                        break q1;
                    }
                    if free(q2) {
                        break q2;
                    }
                    if free(q3) {
                        break q3;
                    }
                    p = next(p, s4);
                };
                taken[(p / 64) as usize] |= 1 << (p % 64);
                table[p as usize] = t.index;
                t.pos = next(p, t.skip[0]);
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
    }
    table
}

/// Two independent 64-bit hashes of a member's identity under `seed`.
fn hashes(b: &Member, seed: u64) -> (u64, u64) {
    let a = match b.addr {
        IpAddr::V4(v) => u128::from(v.to_ipv6_mapped()),
        IpAddr::V6(v) => u128::from(v),
    };
    let words = [a as u64, (a >> 64) as u64, u64::from(b.port)];
    (
        mix_words(&words, seed),
        mix_words(&words, seed ^ 0x6a09_e667_f3bc_c909),
    )
}

/// splitmix64-style finaliser over words: deterministic, well distributed, cheap.
fn mix_words(words: &[u64], seed: u64) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &w in words {
        h = fmix(h ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    fmix(h)
}

#[inline]
fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A flow's hash for the table lookup: the 5-tuple's words mixed under the seed (the same
/// function on every appliance, so ECMP moving a flow keeps its backend).
#[inline]
pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, seed: u64) -> u64 {
    let fold = |a: IpAddr| match a {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => {
            let x = u128::from(v);
            (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
        }
    };
    let ports = u64::from(sport) << 24 | u64::from(dport) << 8 | u64::from(proto);
    let mut h = seed ^ fold(src).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = fmix(h ^ fold(dst));
    fmix(h ^ ports)
}

#[cfg(test)]
mod tests {
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
                (c[i] as f64 - want).abs() <= want * 0.01 + 1.0,
                "backend {i} weight {w}: {} slots, want ~{want}",
                c[i]
            );
        }
        assert_eq!(c[4], 0, "weight 0 takes nothing");
        assert!(build(&members(3, |_| 0), 251, 1).is_empty());
    }

    /// Share (in %) of the slots of the backends that stay which move when one is removed: the
    /// worst over removing the first, a middle and the last backend.
    fn disruption(n: usize, m: u32) -> f64 {
        let all = members(n, |_| 1);
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

    /// Maglev's disruption falls with M/N: measured 0.45-0.7% at M/N >= 600 and 1.1-2.1% at
    /// M/N 100-400 (classic Maglev; the NSDI paper shows the same trend).
    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        for (n, m) in [(10, 16381), (25, 16381), (100, 65521), (40, 65521)] {
            let d = disruption(n, m);
            assert!(d <= 1.0, "N={n} M={m}: {d:.2}% of other slots moved");
        }
        for (n, m) in [(40, 4093), (100, 16381), (160, 16381), (160, 65521)] {
            let d = disruption(n, m);
            assert!(d <= 2.5, "N={n} M={m}: {d:.2}% of other slots moved");
        }
    }

    #[test]
    fn same_seed_same_table_other_seed_other_table() {
        let b = members(10, |i| 1 + (i % 3) as u16);
        assert_eq!(build(&b, 4093, 5), build(&b, 4093, 5));
        assert_ne!(build(&b, 4093, 5), build(&b, 4093, 6));
    }

    /// A fixed fingerprint: a change to the hash or the fill order (which would make appliances
    /// of different versions disagree) fails here, not in production.
    #[test]
    fn table_is_stable_across_builds_and_processes() {
        let t = build(&members(3, |i| [1, 1, 2][i]), 251, 0x5eed);
        let fp = t
            .iter()
            .fold(0u64, |h, &i| fmix(h ^ u64::from(i)).wrapping_add(1));
        assert_eq!(fp, FINGERPRINT, "Maglev table changed: {:?}", &t[..16]);
    }
    const FINGERPRINT: u64 = 17501062991823058454;

    proptest! {
        #[test]
        fn any_members_fill_the_table(ws in proptest::collection::vec(0u16..20, 1..40), seed in any::<u64>()) {
            let t = build(&members(ws.len(), |i| ws[i]), 509, seed);
            if ws.iter().all(|&w| w == 0) {
                prop_assert!(t.is_empty());
            } else {
                prop_assert_eq!(t.len(), 509);
                prop_assert!(t.iter().all(|&i| ws[usize::from(i)] > 0));
            }
        }
    }
}
