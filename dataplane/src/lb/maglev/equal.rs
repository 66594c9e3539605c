//! An equal-weight Maglev fill computed from each slot's first choice (see `EQUAL_MAX` in the
//! parent): the walk's table, from a few vector passes instead of ~80,000 looks.
//!
//! With equal weights every member makes look `d` in round `d`, and member t's look `d` is at
//! slot `pos + d·skip`, so it reaches slot s in round `d_t(s) = (s - pos)·skip⁻¹ mod M`. Until the
//! first member has claimed its whole quota, every member still claims, and each slot goes to
//! the member whose walk reaches it first: the least `(d_t(s), turn)`, its first choice. Those
//! come from a pass over the slots per 4 members (`d_t(s + 1) = d_t(s) + skip⁻¹`: adds, no
//! multiplies, in vector lanes). A count of each member's first choices by round tells when the
//! first member can have filled its quota, and every slot whose first choice comes earlier is
//! that member's (N=10, M=16381: ~97% of the slots). The rest are handed out in the walk's
//! order of their first choices; a slot whose first choice has filled its quota by then waits
//! for its next look from a member still claiming (always a later one: a member still claiming
//! that looked at it earlier would have taken it).

use super::tail::{inverses, Modulus};
use super::Turn;
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

thread_local! {
    /// A fill's first choices and candidates, kept for the thread's next fill (2 × 64 KiB at
    /// the default size).
    static SCRATCH: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Lanes of the first-choice pass: 8 u32 are one AVX2 register, two SSE2 ones.
const LANES: usize = 8;

/// Members a first-choice pass takes: one load and store of a slot's choice for 4 members,
/// their lanes in 8 of AVX2's 16 registers.
const GROUP: usize = 4;

/// Where the rest is looked for: among the slots whose first choice comes late enough that
/// each member has ~5 standard deviations of its count of first choices there (the expected
/// share of such slots is 5·sqrt(N/M)). A member fills its quota, and the rest starts, before
/// that only if its count came out ~5 deviations high (for normal counts, ~3·10⁻⁷ of the
/// members; none in the tests' builds); then every slot is looked at. Scanning every slot for
/// the rest after the count was a fifth of the build; taking candidates during the count costs
/// a store a slot.
pub(super) const SIGMAS: f64 = 5.0;

/// Fills `table` as the walk would from round 0, for `turns` in their walk order, each still to
/// claim, the rest looked for as [`SIGMAS`] says with `sigmas` deviations. False (the table
/// perhaps half written, for the walk to fill) when M is not prime or a (round, turn) pair does
/// not fit a u32.
pub(super) fn fill(turns: &[Turn], m: u32, table: &mut [u16], sigmas: f64) -> bool {
    let n = turns.len();
    if n == 0 {
        return false;
    }
    // a first choice as one u32: `round << bits | turn`, so the least is the walk's first (and
    // a lane's step, below 2·M << bits, must not overflow)
    let bits = usize::BITS - (n - 1).leading_zeros();
    if u64::from(m) << (bits + 1) > u64::from(u32::MAX) {
        return false;
    }
    let Some(inverses) = inverses(turns, m) else {
        return false;
    };
    let modulus = Modulus::new(m);
    let mask = (1u32 << bits) - 1;
    let len = m as usize;
    // the buffers of the last fill on this thread: no allocation, and no page to fault in,
    // for each of a full apply's 10,000 builds (their contents are all written before read)
    let (mut first, mut candidates) = SCRATCH.take();
    first.resize(len.div_ceil(LANES) * LANES, 0);
    candidates.resize(len, 0);
    // the members' lanes, GROUP members a pass (a short last group repeats its last member)
    let lanes_of = |i: usize| {
        let (pos, inv) = (turns[i].pos, inverses[i]);
        // the round in which this member reaches each lane's first slot
        let key = std::array::from_fn(|l| modulus.looks(pos, l as u32, inv) << bits | i as u32);
        (key, modulus.mul(LANES as u32, inv) << bits)
    };
    for g in (0..n).step_by(GROUP) {
        let group = std::array::from_fn(|j| lanes_of((g + j).min(n - 1)));
        lanes(&mut first, group, m << bits, g == 0);
    }
    let keys = &first[..len];
    // Each member's first choices counted by round, in at most 256 spans of rounds: the span
    // in which its count reaches its quota is the earliest it can finish in. On the way, every
    // slot's table entry is its first choice's member (the rest are written again when they
    // are claimed). A member looks once a round, so a span's count fits a u16.
    let shift = (u32::BITS - (m - 1).leading_zeros()).saturating_sub(8);
    let spans = ((m - 1) >> shift) as usize + 1;
    let stride = mask as usize + 1;
    let mut count = vec![0u16; spans * stride];
    let mut index = vec![0u16; stride];
    for (i, t) in turns.iter().enumerate() {
        index[i] = t.index;
    }
    // candidates for the rest, taken on the way
    let share = (sigmas * (n as f64 / f64::from(m)).sqrt()).min(1.0);
    let guess = (f64::from(m) * (1.0 - share.powf(1.0 / n as f64))) as u32;
    let candidates_len = tally(
        keys,
        table,
        &mut count,
        &index,
        (bits, bits + shift),
        (guess << bits, &mut candidates),
    );
    let mut until = m;
    for (i, t) in turns.iter().enumerate() {
        let mut sum = 0;
        for span in 0..spans {
            sum += u32::from(count[span * stride + i]);
            if sum >= t.need {
                until = until.min((span as u32) << shift);
                break;
            }
        }
    }
    // what each member still claims after its first choices in the spans before `until`
    let spans_before = (until >> shift) as usize;
    let mut need: Vec<u32> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let claimed: u32 = (0..spans_before)
                .map(|span| u32::from(count[span * stride + i]))
                .sum();
            t.need - claimed
        })
        .collect();
    // the rest, by first choice in the walk's order: `choice << 32 | slot`
    let limit = until << bits;
    let mut candidates_len = candidates_len;
    if until < guess {
        // the rest began before the guess: every slot is a candidate
        for (c, s) in candidates.iter_mut().zip(0u32..) {
            *c = s;
        }
        candidates_len = len;
    }
    let mut rest: Vec<u64> = candidates[..candidates_len]
        .iter()
        .map(|&s| (keys[s as usize], s))
        .filter(|&(k, _)| k >= limit)
        .map(|(k, s)| u64::from(k) << 32 | u64::from(s))
        .collect();
    SCRATCH.set((first, candidates));
    rest.sort_unstable();
    let mut rest = rest.into_iter().peekable();
    let mut later = BinaryHeap::new();
    loop {
        let event = match (rest.peek(), later.peek()) {
            (Some(&a), Some(&Reverse(b))) if b < a => later.pop().map(|Reverse(e)| e),
            (Some(_), _) => rest.next(),
            (None, _) => later.pop().map(|Reverse(e)| e),
        };
        let Some(event) = event else { break };
        let (choice, slot) = ((event >> 32) as u32, event as u32);
        let turn = (choice & mask) as usize;
        if need[turn] > 0 {
            need[turn] -= 1;
            table[slot as usize] = index[turn];
            continue;
        }
        // the next look at the slot from a member still claiming
        let next = turns
            .iter()
            .zip(&inverses)
            .zip(0u32..)
            .filter(|&(_, i)| need[i as usize] > 0)
            .map(|((t, &inv), i)| modulus.looks(t.pos, slot, inv) << bits | i)
            .min();
        // the quotas add up to M, so a free slot has a member still claiming it
        let Some(next) = next else { return false };
        debug_assert!(next > choice, "a look at a free slot went back in time");
        later.push(Reverse(u64::from(next) << 32 | u64::from(slot)));
    }
    debug_assert!(need.iter().all(|&c| c == 0), "an equal fill left claims");
    true
}

/// A pass of GROUP members: each slot keeps the earliest of its first choice so far and these
/// members' `(round, turn)`. Lane l of a member holds the rounds of slots l, l + LANES, ...; a
/// step of LANES slots is `step` rounds on. The lanes carry `round << bits | turn`, and step
/// and modulus (`m`) are shifted alike, so the turn's bits stay put. The first pass
/// (`overwrite`) writes over whatever the slots held.
fn lanes(first: &mut [u32], group: [Lanes; GROUP], m: u32, overwrite: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `lanes_avx2` needs nothing but AVX2, which this CPU has (std caches the
        // detection).
        unsafe { lanes_avx2(first, group, m, overwrite) };
        return;
    }
    lanes_in(first, group, m, overwrite);
}

/// A member's keys for the first LANES slots, and its step.
type Lanes = ([u32; LANES], u32);

/// [`lanes_in`] for AVX2: an unsigned min of 8 lanes is one instruction, where SSE2 takes eight
/// for 4 (the build ~1.5x faster here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(first: &mut [u32], group: [Lanes; GROUP], m: u32, overwrite: bool) {
    lanes_in(first, group, m, overwrite)
}

#[inline(always)]
fn lanes_in(first: &mut [u32], mut group: [Lanes; GROUP], m: u32, overwrite: bool) {
    let start = |chunk: &[u32]| -> [u32; LANES] {
        if overwrite {
            [u32::MAX; LANES]
        } else {
            std::array::from_fn(|l| chunk[l])
        }
    };
    for chunk in first.chunks_exact_mut(LANES) {
        let mut least = start(chunk);
        for (key, step) in group.iter_mut() {
            for (x, k) in least.iter_mut().zip(key.iter_mut()) {
                *x = (*x).min(*k);
                let n = *k + *step;
                // n mod M without a branch: below M the subtraction wraps to a larger value
                *k = n.min(n.wrapping_sub(m));
            }
        }
        chunk.copy_from_slice(&least);
    }
}

/// The count of first choices by (span, turn), each slot's first-choice member in `table`, and
/// the slots whose first choice is `from` or later in `candidates` (their number returned;
/// written without a branch, which would mispredict for one slot in ten).
#[inline(never)]
fn tally(
    first: &[u32],
    table: &mut [u16],
    count: &mut [u16],
    index: &[u16],
    (bits, span_of): (u32, u32),
    (from, candidates): (u32, &mut [u32]),
) -> usize {
    let mask = (1u32 << bits) - 1;
    let mut taken = 0;
    for ((&k, slot), s) in first.iter().zip(table.iter_mut()).zip(0u32..) {
        let turn = (k & mask) as usize;
        count[((k >> span_of) as usize) << bits | turn] += 1;
        *slot = index[turn];
        candidates[taken] = s;
        taken += usize::from(k >= from);
    }
    taken
}
