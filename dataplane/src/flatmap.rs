//! A hash map whose lookup the fast path can split over a batch: hash and prefetch the bucket
//! for every packet in one pass, read it in a later one, so the misses of 64 lookups overlap.
//! hashbrown hides where a key's bucket is; at 10,000 services its lookups missed the cache
//! packet after packet, and were a quarter of the LB stage (BENCHMARKS, in memory).
//!
//! Open addressing with linear probing, at most half full, entries stored in the buckets: a
//! lookup reads one bucket line, mostly, where hashbrown reads a control group and then an entry.
//! Deletion shifts the later members of the probe run back (no tombstones). Built and changed by
//! the control plane; workers only read it (it is part of the published snapshot).

use hashbrown::DefaultHashBuilder;
use std::hash::{BuildHasher, Hash};

#[derive(Clone)]
pub struct FlatMap<K, V> {
    buckets: Vec<Option<(K, V)>>,
    len: usize,
    hasher: DefaultHashBuilder,
}

impl<K, V> Default for FlatMap<K, V> {
    fn default() -> Self {
        FlatMap {
            buckets: Vec::new(),
            len: 0,
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl<K: Hash + Eq, V> FlatMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash `key` is stored under (for [`prefetch`](Self::prefetch) and
    /// [`get_hashed`](Self::get_hashed)).
    #[inline]
    pub fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        // the length is a power of two (or zero, when nothing is stored)
        (h as usize) & self.buckets.len().wrapping_sub(1)
    }

    /// Asks the CPU for the home bucket of hash `h` (a hint).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if !self.buckets.is_empty() {
            crate::prefetch::read(&self.buckets[self.home(h)]);
        }
    }

    /// The bucket holding `key`, whose hash is `h`.
    #[inline]
    fn find(&self, h: u64, key: &K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut i = self.home(h);
        // at most half full: an empty bucket ends every probe run
        while let Some((k, _)) = &self.buckets[i] {
            if k == key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The value of `key`, whose hash is `h` (from [`hash`](Self::hash)).
    #[inline]
    pub fn get_hashed(&self, h: u64, key: &K) -> Option<&V> {
        let i = self.find(h, key)?;
        self.buckets[i].as_ref().map(|(_, v)| v)
    }

    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let h = self.hash(&key);
        if let Some(i) = self.find(h, &key) {
            let (_, v) = self.buckets[i].as_mut()?;
            return Some(std::mem::replace(v, value));
        }
        if 2 * (self.len + 1) > self.buckets.len() {
            self.grow();
        }
        self.place(h, key, value);
        self.len += 1;
        None
    }

    /// Into the first empty bucket of `h`'s probe run (the key is not stored, there is room).
    fn place(&mut self, h: u64, key: K, value: V) {
        let mask = self.buckets.len() - 1;
        let mut i = self.home(h);
        while self.buckets[i].is_some() {
            i = (i + 1) & mask;
        }
        self.buckets[i] = Some((key, value));
    }

    fn grow(&mut self) {
        // 8 buckets at least; double, keeping the table at most half full
        let n = (2 * self.buckets.len()).max(8);
        let old = std::mem::replace(&mut self.buckets, (0..n).map(|_| None).collect());
        for (k, v) in old.into_iter().flatten() {
            let h = self.hash(&k);
            self.place(h, k, v);
        }
    }

    /// Removes `key`; its value, if it was stored.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let mut hole = self.find(self.hash(key), key)?;
        let (_, value) = self.buckets[hole].take()?;
        self.len -= 1;
        // backward shift: pull later members of the probe run into the hole when that keeps
        // them at or after their home bucket
        let mask = self.buckets.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.buckets[j] else {
                break;
            };
            let home = self.home(self.hash(k));
            if hole.wrapping_sub(home) & mask <= j.wrapping_sub(home) & mask {
                self.buckets.swap(hole, j);
                hole = j;
            }
        }
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.buckets.iter().flatten().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.buckets.iter_mut().flatten().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq, V> std::ops::Index<&K> for FlatMap<K, V> {
    type Output = V;
    /// Panics if `key` is not stored, as `HashMap`'s does (tests and setup code).
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for the key in FlatMap")
    }
}

/// Equal when they hold the same pairs, whatever their bucket order.
impl<K: Hash + Eq, V: PartialEq> PartialEq for FlatMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for FlatMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for FlatMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = FlatMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A key whose hash the test chooses: few distinct hashes, so probe runs collide, wrap
    /// around the end of the table and are shifted back on removal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Key(u16);
    impl Hash for Key {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            (self.0 % 5).hash(state)
        }
    }

    proptest! {
        /// Inserts and removes in any order behave as std's HashMap does.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u8..3, 0u16..60, any::<u32>()), 0..400)) {
            let mut m = FlatMap::new();
            let mut model = std::collections::HashMap::new();
            for (op, k, v) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(m.insert(Key(k), v), model.insert(k, v)),
                    _ => prop_assert_eq!(m.remove(&Key(k)), model.remove(&k)),
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert!(2 * m.len() <= m.buckets.len() || m.buckets.is_empty());
                for k in 0..60 {
                    prop_assert_eq!(m.get(&Key(k)), model.get(&k));
                    let h = m.hash(&Key(k));
                    prop_assert_eq!(m.get_hashed(h, &Key(k)), model.get(&k));
                }
                prop_assert_eq!(m.iter().count(), model.len());
            }
        }
    }

    #[test]
    fn equality_ignores_the_order_of_insertion() {
        let a: FlatMap<u32, u32> = (0..100).map(|i| (i, i * 2)).collect();
        let b: FlatMap<u32, u32> = (0..100).rev().map(|i| (i, i * 2)).collect();
        assert_eq!(a, b);
        let mut c = b.clone();
        c.insert(7, 0);
        assert_ne!(a, c);
        assert_eq!(a[&10], 20);
        let empty = FlatMap::<u32, u32>::new();
        assert_eq!(empty.get(&1), None);
        empty.prefetch(empty.hash(&1));
    }
}
