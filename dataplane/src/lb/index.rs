//! The conntrack index: connection tuple hash -> slot, as an open-addressing table with linear
//! probing and backward-shift deletion (no tombstones), in huge pages.
//!
//! Instead of a general hash map, so that the stage can split a lookup in steps over a batch:
//! hash and prefetch the bucket for every packet first, then probe (the lines are arriving
//! meanwhile), then prefetch the entries, then act. A bucket is 8 bytes: the low 32 bits of the
//! hash (the home bucket and a filter) and the value; the key itself is compared in the entry,
//! which the caller reads anyway. At most half full, so probe sequences stay short.
//!
//! The hash is keyed with a per-table random seed: nobody outside can choose tuples that collide.

use super::conntrack::{Addr, Tuple};
use crate::hugepages::HugePages;

type Buckets = allocator_api2::vec::Vec<u64, HugePages>;

pub struct Index {
    buckets: Buckets,
    mask: usize,
    seed: u64,
}

/// An empty bucket (stored values are `value + 1`).
const EMPTY: u64 = 0;

#[inline]
fn mix(mut z: u64) -> u64 {
    // splitmix64's finalizer
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Index {
    /// Room for `keys` keys at most half full.
    pub fn new(keys: usize) -> Index {
        let n = (2 * keys.max(1)).next_power_of_two();
        let mut buckets = Buckets::with_capacity_in(n, HugePages);
        buckets.resize(n, EMPTY);
        // a per-table seed from the clock and the table's own address: not secret-grade, but
        // not predictable from outside the process
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = mix(t ^ (buckets.as_ptr() as u64).rotate_left(32));
        Index {
            buckets,
            mask: n - 1,
            seed,
        }
    }

    /// Buckets allocated.
    pub fn capacity(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    pub fn hash<A: Addr>(&self, t: &Tuple<A>) -> u64 {
        let ports = u64::from(t.sport) << 24 | u64::from(t.dport) << 8 | u64::from(t.proto);
        let h = mix(self.seed ^ t.src.fold64().wrapping_mul(0x9e37_79b9_7f4a_7c15));
        mix(h ^ t.dst.fold64() ^ ports.rotate_left(40))
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        (h as usize) & self.mask
    }

    /// Asks the CPU for the home bucket of hash `h` (a hint).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        crate::prefetch::read(&self.buckets[self.home(h)]);
    }

    /// The value stored under hash `h` for which `is` says the key matches.
    #[inline]
    pub fn find(&self, h: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = h as u32;
        let mut i = self.home(h);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if (b >> 32) as u32 == tag {
                let v = (b as u32).wrapping_sub(1);
                if is(v) {
                    return Some(v);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Stores `value` under hash `h` (the caller made sure the key is not there and that the
    /// table holds at most the keys it was made for).
    pub fn insert(&mut self, h: u64, value: u32) {
        let mut i = self.home(h);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = (h & 0xffff_ffff) << 32 | u64::from(value.wrapping_add(1));
    }

    /// Removes `value` stored under hash `h`; false if it is not there.
    pub fn remove(&mut self, h: u64, value: u32) -> bool {
        let want = (h & 0xffff_ffff) << 32 | u64::from(value.wrapping_add(1));
        let mut i = self.home(h);
        loop {
            match self.buckets[i] {
                EMPTY => return false,
                b if b == want => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        // backward shift: pull later members of the probe run into the hole when that keeps them
        // at or after their home bucket
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let home = ((b >> 32) as usize) & self.mask;
            // distance from home to j, and from home to the hole, cyclically
            let d_j = j.wrapping_sub(home) & self.mask;
            let d_hole = hole.wrapping_sub(home) & self.mask;
            if d_hole <= d_j {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Inserts and removes in any order behave like a set of (hash, value) pairs, with
        /// deliberately colliding hashes (few home buckets).
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..6, 0u32..40), 0..300)) {
            let mut idx = Index::new(64);
            let mut model: std::collections::HashSet<(u64, u32)> = Default::default();
            for (insert, h, v) in ops {
                // hashes that share home buckets: low bits from a small set
                let h = h * 0x1_0000_0001 + (h << 40);
                let present = model.contains(&(h, v));
                if insert && !present && model.len() < 64 {
                    idx.insert(h, v);
                    model.insert((h, v));
                } else if !insert {
                    prop_assert_eq!(idx.remove(h, v), present);
                    model.remove(&(h, v));
                }
                for &(mh, mv) in &model {
                    prop_assert_eq!(idx.find(mh, |x| x == mv), Some(mv));
                }
            }
        }
    }
}
