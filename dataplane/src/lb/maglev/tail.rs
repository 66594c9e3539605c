//! The end of a Maglev fill, computed rather than walked (see `TAIL_COST` in the parent): the
//! same table, without the looks that mostly miss once few slots are free.

use super::{Clock, Turn};

/// The rest of the fill from the start of a round, computed rather than walked, to the same
/// table. Every free slot goes to the member whose walk reaches it first among those still
/// claiming then, in the walk's own order: by round, then turn, then look. A member's look at
/// a slot is known without walking: slot `pos + d·skip` is `d` looks ahead, so
/// `d = (slot - pos) · skip⁻¹ mod M`. Each free slot waits in a heap under its earliest such
/// event; when it comes up for a member that has meanwhile claimed its last slot, the slot
/// goes back under its earliest event among the members still claiming (always a later one).
pub(super) struct Tail<'a> {
    pub(super) turns: &'a [Turn],
    pub(super) m: u32,
    pub(super) round: u32,
    pub(super) clock: Clock,
    pub(super) min_w: u64,
    pub(super) uniform: bool,
}

impl Tail<'_> {
    /// Fills the free slots of `table`; false (nothing done) when M is not prime.
    pub(super) fn finish(&self, table: &mut [u16], taken: &[u64]) -> bool {
        let (m, a) = (self.m, self.turns.len());
        let Some(inverses) = inverses(self.turns, m) else {
            return false;
        };
        let modulus = Modulus::new(m);
        let mut slots = Vec::new();
        for (w, &word) in taken.iter().enumerate() {
            let mut z = !word;
            while z != 0 {
                let s = w as u32 * 64 + z.trailing_zeros();
                if s >= m {
                    break;
                }
                slots.push(s);
                z &= z - 1;
            }
        }
        // looks[slot * a + turn]: the number of the look with which the turn's member reaches
        // the slot
        let mut looks = Vec::with_capacity(slots.len() * a);
        for &s in &slots {
            for (t, &inv) in self.turns.iter().zip(&inverses) {
                // with equal weights the walk counts rounds, not each member's looks
                let done = if self.uniform { self.round } else { t.looks };
                looks.push(done + modulus.looks(t.pos, s, inv));
            }
        }
        let mut need: Vec<u32> = self.turns.iter().map(|t| t.need).collect();
        let mut heap = std::collections::BinaryHeap::with_capacity(slots.len());
        for i in 0..slots.len() {
            heap.push(std::cmp::Reverse((
                self.first(&looks[i * a..(i + 1) * a], &need),
                i,
            )));
        }
        while let Some(std::cmp::Reverse((event, i))) = heap.pop() {
            // the claims still open are the free slots, so some member claims each
            debug_assert!(event != u64::MAX, "a free slot with no member claiming");
            let turn = (event >> 20) as usize & 0xffff;
            if turn >= a {
                continue;
            }
            if need[turn] == 0 {
                heap.push(std::cmp::Reverse((
                    self.first(&looks[i * a..(i + 1) * a], &need),
                    i,
                )));
                continue;
            }
            need[turn] -= 1;
            table[slots[i] as usize] = self.turns[turn].index;
        }
        true
    }

    /// The earliest event at a slot among the turns that still claim: `round << 40 | turn << 20
    /// | look` (M < 2^20 and at most 2^16 turns), so events order as the walk does them.
    fn first(&self, looks: &[u32], need: &[u32]) -> u64 {
        let event = |round: u32, turn: usize, look: u32| {
            u64::from(round) << 40 | (turn as u64) << 20 | u64::from(look)
        };
        let claiming = || looks.iter().enumerate().filter(|&(t, _)| need[t] > 0);
        if self.uniform {
            // every member makes look k in round k
            return claiming()
                .map(|(t, &k)| event(k, t, k))
                .min()
                .unwrap_or(u64::MAX);
        }
        // The look due first by the clock (least due(k) / w) is in the earliest round; others
        // due by the end of that round come in it too, by turn order.
        let weight = |t: usize| self.turns[t].weight;
        let Some((t0, k0)) =
            claiming()
                .map(|(t, &k)| (t, self.clock.due(k)))
                .min_by(|&(t, x), &(u, y)| {
                    (u128::from(x) * u128::from(weight(u)))
                        .cmp(&(u128::from(y) * u128::from(weight(t))))
                        .then(t.cmp(&u))
                })
        else {
            return u64::MAX;
        };
        // the walk's round for it: the first with due(round) · w >= due(k) · min_w
        let want = k0 * self.min_w;
        let (mut lo, mut hi) = (self.round, self.m - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.clock.due(mid) * weight(t0) >= want {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let end = self.clock.due(lo);
        claiming()
            .find(|&(t, &k)| self.clock.due(k) * self.min_w <= end * weight(t))
            .map_or(u64::MAX, |(t, &k)| event(lo, t, k))
    }
}

/// `x · y mod m` by Barrett reduction (a multiply where `%` would divide): the quotient from
/// `x·y · ⌊2^64/m⌋ >> 64` is short by at most one for products below 2^64.
pub(super) struct Modulus {
    m: u64,
    reciprocal: u64,
}

impl Modulus {
    pub(super) fn new(m: u32) -> Modulus {
        Modulus {
            m: u64::from(m),
            reciprocal: u64::MAX / u64::from(m),
        }
    }
    #[inline]
    pub(super) fn mul(&self, x: u32, y: u32) -> u32 {
        let p = u64::from(x) * u64::from(y);
        let q = ((u128::from(p) * u128::from(self.reciprocal)) >> 64) as u64;
        let r = p - q * self.m;
        (if r >= self.m { r - self.m } else { r }) as u32
    }
}

impl Modulus {
    /// How many looks ahead of `pos` a member's walk reaches `slot`, given its `skip⁻¹`: slot
    /// `pos + d·skip` is `d` looks ahead, so `d = (slot - pos)·skip⁻¹ mod M`.
    #[inline]
    pub(super) fn looks(&self, pos: u32, slot: u32, inv: u32) -> u32 {
        let ahead = if slot >= pos {
            slot - pos
        } else {
            slot + self.m as u32 - pos
        };
        self.mul(ahead, inv)
    }
}

/// Each turn's `skip⁻¹ mod m`; None unless m is prime to every skip (M prime: always).
pub(super) fn inverses(turns: &[Turn], m: u32) -> Option<Vec<u32>> {
    turns.iter().map(|t| inverse(t.skip, m)).collect()
}

/// `a⁻¹ mod m` by the extended Euclidean algorithm; None unless gcd(a, m) = 1.
fn inverse(a: u32, m: u32) -> Option<u32> {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    (r0 == 1).then(|| t0.rem_euclid(i64::from(m)) as u32)
}
