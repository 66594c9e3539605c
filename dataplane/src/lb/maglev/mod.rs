//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with backend weights.
//!
//! Each backend gets a permutation of the M slots from two hashes of its identity (address and
//! port) under a seed: `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, slot j of the permutation is
//! `(offset + j * skip) % M`; M prime makes every permutation visit every slot. Unlike the
//! paper, the slots are claimed in lockstep against exact quotas (see [`build`]): slot counts
//! are M split by weight, to the slot (equal weights differ by at most one), and removing a
//! backend moves about half as many of the others' slots.
//!
//! Everything here is deterministic: the same seed and backends give the same table in every
//! process (the hash is our own, not std's randomly keyed one), so appliances behind ECMP agree.

use std::net::IpAddr;
use tail::Tail;

mod equal;
mod table;
mod tail;

pub use table::Table;

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
///
/// Each member is given its quota of slots up front (M split by weight, exactly: floor(M·w/W)
/// each, the remainder one slot each to the largest fractions). Then the members walk their
/// permutations in lockstep: in every round each member with slots still to claim looks at its
/// next slot and takes it if it is free. Members take their turns in the order of a hash of
/// their identity, so the list's order does not matter.
///
/// Weights set the pace of the walk on an exponential clock: a member's k-th look comes at
/// `log(M / (M - k)) / w`. Then the first look at a slot comes from each member with a chance
/// proportional to its weight (the times are exponential with rate w), as the quotas expect.
/// On a linear clock (k / w) light members would find fewer free slots than their share and
/// heavy ones more, and the quotas would settle the difference late in the fill, where a
/// removal moves it. Rounds follow the lightest member's clock; a heavier one makes every look
/// that falls due in the round. Equal weights look once per round each.
///
/// Why not classic Maglev (each member claims its next free slot every round, however far down
/// its permutation that is): when a member goes, the others' claims shift in time and displace
/// each other all through the fill. Here a member's slots are the free ones among its first
/// preferences, and only the last claims of the fill, deep in the permutations, move. Measured:
/// about half of classic Maglev's disruption (see the tests and decision 007).
pub fn build(members: &[Member], m: u32, seed: u64) -> Vec<u16> {
    fill(members, m, seed, How::Computed)
}

/// The end of the fill is the slow part of the walk: with a share f of the slots still free a
/// look finds one with chance f (N=10, M=16381: 83,000 looks in all, 42,000 of them after 5%
/// is left). [`Tail::finish`] gives those slots out by arithmetic instead, at about
/// `TAIL_COST` looks' worth of work for each (free slot, member) pair, and `TAIL_SLOT` pairs'
/// worth for each free slot (its turns through the heap); the walk hands over when that is
/// the cheaper way on. The values are the best measured on builds of 2 to 1,000 members: 6
/// looks for equal weights, 8 with weights (their pairs read the clock); 8 pairs a slot (below
/// that, builds of 2 or 3 members got slower than the walk). 1.3-1.6x faster builds.
const TAIL_COST: [usize; 2] = [6, 8];
const TAIL_SLOT: usize = 8;

/// Equal-weight fills of up to this many members are computed from each slot's first choice
/// ([`equal::fill`]): a pass over the slots per 4 members, against a walk whose cost hardly
/// depends on the members. Measured at M=16381 against the walk with its end computed, in one
/// binary (with a pass per member, before the passes took 4): N=3 0.25–0.33 of the time, N=10
/// 0.33–0.40, N=20 0.53–0.55, N=30 0.63–0.77, N=40 0.85–0.91, N=50 0.99–1.1, N=64 1.26–1.54.
const EQUAL_MAX: usize = 40;

/// A member as the fill sees it: where its permutation is, how far it has walked, the slots it
/// still claims (together, one cache line per few members).
struct Turn {
    pos: u32,
    skip: u32,
    /// Looks made (kept with weights only: with equal weights it is the round).
    looks: u32,
    weight: u64,
    need: u32,
    index: u16,
    /// The order of turns within a round, and of the remainder's slots.
    rank: u64,
    /// `M·w mod W`: who gets the remainder's slots (largest first).
    fraction: u64,
}

/// The fill's clock: when the k-th look of a member of weight 1 is due.
#[derive(Clone, Copy)]
struct Clock {
    m: u32,
    log_m: u64,
}

impl Clock {
    fn new(m: u32) -> Clock {
        Clock {
            m,
            log_m: log2_q32(m),
        }
    }
    #[inline]
    fn due(self, k: u32) -> u64 {
        self.log_m - log2_q32(self.m - k)
    }
}

/// How [`fill`] goes about it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Look by look: the reference the tests hold the others to.
    Walked,
    /// Equal weights from each slot's first choice, the end of other fills computed.
    Computed,
    /// As `Computed`, with no guess at where an equal fill's rest begins (its fallback).
    #[cfg(test)]
    Unguessed,
}

/// [`build`], the fill computed or walked.
fn fill(members: &[Member], m: u32, seed: u64, how: How) -> Vec<u16> {
    let mut computed = how != How::Walked;
    let m = m as usize;
    debug_assert!(m > 1 && members.len() <= usize::from(u16::MAX));
    let live: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].weight > 0)
        .collect();
    if live.is_empty() || m < 2 {
        return Vec::new();
    }
    let min_w = live.iter().map(|&i| members[i].weight).min().unwrap_or(1) as u64;
    let total_w: u64 = live.iter().map(|&i| u64::from(members[i].weight)).sum();
    let uniform = live.iter().all(|&i| u64::from(members[i].weight) == min_w);
    let m32 = m as u32;
    let clock_of = Clock::new(m32);
    let mut turns: Vec<Turn> = live
        .iter()
        .map(|&i| {
            let (h1, h2) = hashes(&members[i], seed);
            let share = m as u64 * u64::from(members[i].weight);
            Turn {
                pos: (h1 % u64::from(m32)) as u32,
                skip: (h2 % u64::from(m32 - 1) + 1) as u32,
                looks: 0,
                weight: u64::from(members[i].weight),
                need: (share / total_w) as u32,
                index: i as u16,
                rank: h1 ^ h2.rotate_left(32),
                fraction: share % total_w,
            }
        })
        .collect();
    // ties (the same backend listed twice) keep the list's order
    turns.sort_by(|a, b| b.fraction.cmp(&a.fraction).then(a.rank.cmp(&b.rank)));
    let given: usize = turns.iter().map(|t| t.need as usize).sum();
    for t in turns.iter_mut().take(m - given) {
        t.need += 1;
    }
    turns.sort_by_key(|t| t.rank);
    let mut table = vec![0u16; m];
    // occupancy as a bitmap: a look reads 1 bit (8 KiB for M=65521, in L1)
    let mut taken = vec![0u64; m.div_ceil(64)];
    turns.retain(|t| t.need > 0);
    let mut clock: Vec<u64> = Vec::new();
    let tail_cost = TAIL_COST[usize::from(!uniform)];
    // the free slots: every member's quota still to claim (the quotas add up to M)
    let mut free = m;
    let sigmas = match how {
        #[cfg(test)]
        How::Unguessed => 0.0,
        _ => equal::SIGMAS,
    };
    if computed
        && uniform
        && turns.len() <= EQUAL_MAX
        && equal::fill(&turns, m32, &mut table, sigmas)
    {
        return table;
    }
    // Every member looks at least once a round, and has seen all M slots by round M-1: a member
    // that still claims a slot then would have passed a free one, which cannot be.
    for round in 0..m32 {
        if turns.is_empty() {
            break;
        }
        if computed && free * (turns.len() + TAIL_SLOT) * tail_cost <= m {
            let end = Tail {
                turns: &turns,
                m: m32,
                round,
                clock: clock_of,
                min_w,
                uniform,
            };
            if end.finish(&mut table, &taken) {
                return table;
            }
            computed = false;
        }
        let mut claimed = 0;
        if uniform {
            // equal weights: one look each a round, no clock to read
            let mut finished = false;
            for t in turns.iter_mut() {
                claimed += look(t, &mut table, &mut taken, m32);
                finished |= t.need == 0;
            }
            if !finished {
                free -= claimed;
                continue;
            }
        } else {
            let now = clock_of.due(round);
            claimed = looks_due(
                &mut turns, now, min_w, &mut clock, clock_of, &mut table, &mut taken,
            );
        }
        // A round of a few members is a few ns of looks: sweeping out the finished members
        // only after a round that claimed took a third off the build at N=10, and with equal
        // weights only after a round in which one finished (`continue` above) another ~10% at
        // N=10 and N=100.
        if claimed > 0 {
            free -= claimed;
            turns.retain(|t| t.need > 0);
        }
    }
    debug_assert!(turns.is_empty(), "Maglev fill left claims");
    table
}

/// One look: the member's next slot, taken if free; 1 if taken now. Without a branch on the bit:
/// in the middle of the fill it goes either way. (With the turns walked in place rather than
/// through a list of indices: half off the equal-weight builds.)
#[inline(always)]
fn look(t: &mut Turn, table: &mut [u16], taken: &mut [u64], m: u32) -> usize {
    let p = t.pos;
    t.pos = if p + t.skip >= m {
        p + t.skip - m
    } else {
        p + t.skip
    };
    let (word, bit) = ((p / 64) as usize, p % 64);
    let free = !(taken[word] >> bit) & 1;
    taken[word] |= 1 << bit;
    let slot = &mut table[p as usize];
    *slot = if free == 1 { t.index } else { *slot };
    t.need -= free as u32;
    free as usize
}

/// The weighted members' looks that fall due by `now` (the round's time on the lightest
/// member's clock); the slots they took. Out of line: inside the round loop the walk ran short
/// of registers, and weighted builds were a quarter slower.
#[inline(never)]
fn looks_due(
    turns: &mut [Turn],
    now: u64,
    min_w: u64,
    clock: &mut Vec<u64>,
    clock_of: Clock,
    table: &mut [u16],
    taken: &mut [u64],
) -> usize {
    let mut claimed = 0;
    for t in turns.iter_mut() {
        // due(looks) / weight <= due(round) / min_w, without the division
        while t.need > 0 && t.looks < clock_of.m {
            let k = t.looks as usize;
            // the clock's readings, computed once for all members as far as the walk has gone
            // (a quarter to a third off the weighted builds, against a log per look)
            while clock.len() <= k {
                clock.push(clock_of.due(clock.len() as u32));
            }
            if clock[k] * min_w > now * t.weight {
                break;
            }
            claimed += look(t, table, taken, clock_of.m);
            t.looks += 1;
        }
    }
    claimed
}

/// log2(x) in 32.32 fixed point, from integers only (so every machine computes the same
/// table): the exponent, plus the mantissa's log interpolated in a 257-entry table (error
/// below 3e-6; only the order of the values matters here, and it is kept).
fn log2_q32(x: u32) -> u64 {
    debug_assert!(x > 0);
    let e = 31 - x.leading_zeros();
    let m = (x as u64) << (31 - e); // the leading 1 at bit 31
    let i = ((m >> 23) & 0xff) as usize;
    let f = m & ((1 << 23) - 1);
    let (lo, hi) = (LOG2_MANTISSA[i], LOG2_MANTISSA[i + 1]);
    (u64::from(e) << 32) + lo + (((hi - lo) * f) >> 23)
}

/// `log2(1 + i/256)` in 0.32 fixed point for i in 0..=256, by repeated squaring at compile
/// time.
const LOG2_MANTISSA: [u64; 257] = {
    let mut t = [0u64; 257];
    let mut i = 0;
    while i < 256 {
        // y = 1 + i/256 in 2.32 fixed point; each squaring yields the next bit of log2(y)
        let mut y = (256 + i as u128) << 24;
        let mut bit = 32;
        while bit > 0 {
            bit -= 1;
            y = (y * y) >> 32;
            if y >= 2 << 32 {
                y >>= 1;
                t[i] |= 1 << bit;
            }
        }
        i += 1;
    }
    t[256] = 1 << 32;
    t
};

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
mod tests;
