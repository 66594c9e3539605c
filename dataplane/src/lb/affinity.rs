//! `sessionAffinity: ClientIP`: a client's new connections to a frontend go to the backend its
//! previous one went to, while that backend still takes new connections and the client was seen
//! within the service's timeout (kube-proxy refreshes the timer on every new connection, with
//! iptables' `recent` match; so does this).
//!
//! Per worker and fixed in size: a set-associative table of `SETS` x `WAYS` entries keyed by
//! (client, frontend address, port, protocol). A full set forgets its least recently used entry;
//! nothing else needs collecting, since an entry past its timeout is ignored and overwritten.
//!
//! Workers do not share the table. They still agree, because a service with affinity picks a
//! client's first backend by hashing the client address alone (not its port): every worker, and
//! every appliance with the same seed, maps a client to the same backend while the Maglev table
//! stays the same. They can disagree only after the table changed, for a client whose connections
//! land on several workers; then each worker keeps the client on the backend it chose itself.

use super::conntrack::{Addr, Endpoint};

/// 4 ways: a few entries compared per probe, one or two cache lines for IPv4 keys.
const WAYS: usize = 4;
/// At most 4096 sets x 4 ways = 16,384 clients per worker and family (about 0.5 MB for IPv4,
/// 1 MB for IPv6 per worker); beyond that, clients seen least recently lose their stickiness
/// first.
pub const MAX_SETS: usize = 4096;

/// Whose affinity: a client toward one frontend.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Key<A> {
    pub client: A,
    pub frontend: Endpoint<A>,
    pub proto: u8,
}

#[derive(Clone, Copy, Default, Debug)]
struct Entry<A> {
    key: Key<A>,
    backend: Endpoint<A>,
    /// The backend's index in the service's backend list when it was chosen: a hint that saves
    /// the search while the service has not been recompiled.
    index: u16,
    /// Worker clock (seconds) of the client's last new connection; `None`: a free way.
    last_used: Option<u32>,
}

/// One worker's affinity table for one address family.
pub struct Affinity<A> {
    ways: Box<[Entry<A>]>,
    sets: usize,
}

impl<A: Addr> Default for Affinity<A> {
    fn default() -> Self {
        Affinity::new(MAX_SETS)
    }
}

impl<A: Addr> Affinity<A> {
    /// A table of `sets` sets (at least 1, at most `MAX_SETS`).
    pub fn new(sets: usize) -> Self {
        let sets = sets.clamp(1, MAX_SETS);
        Affinity {
            ways: vec![Entry::default(); sets * WAYS].into_boxed_slice(),
            sets,
        }
    }
}

impl<A: Addr> Affinity<A> {
    /// The first way of the set a hash of the key selects.
    fn set(&self, hash: u64) -> usize {
        (hash as usize % self.sets) * WAYS
    }

    /// The backend this client was sent to through this frontend within `timeout` seconds:
    /// (endpoint, index hint). `hash`: any hash of the key (the caller has one already).
    #[inline]
    pub fn get(
        &self,
        key: &Key<A>,
        hash: u64,
        now: u32,
        timeout: u32,
    ) -> Option<(Endpoint<A>, u16)> {
        let at = self.set(hash);
        self.ways[at..at + WAYS]
            .iter()
            .find_map(|e| match e.last_used {
                Some(t) if e.key == *key && now.wrapping_sub(t) <= timeout => {
                    Some((e.backend, e.index))
                }
                _ => None,
            })
    }

    /// Records that the client's new connection went to `backend` (refreshing its timer).
    #[inline]
    pub fn put(&mut self, key: Key<A>, hash: u64, now: u32, backend: Endpoint<A>, index: u16) {
        let at = self.set(hash);
        let set = &mut self.ways[at..at + WAYS];
        // the client's own way, else a free one, else the least recently used
        let w = set
            .iter()
            .position(|e| e.last_used.is_some() && e.key == key)
            .or_else(|| set.iter().position(|e| e.last_used.is_none()))
            .unwrap_or_else(|| {
                let age = |e: &Entry<A>| now.wrapping_sub(e.last_used.unwrap_or(now));
                (0..WAYS).max_by_key(|&i| age(&set[i])).unwrap_or(0)
            });
        set[w] = Entry {
            key,
            backend,
            index,
            last_used: Some(now),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: u32, port: u16) -> Endpoint<u32> {
        Endpoint { addr, port }
    }
    fn key(client: u32, frontend: Endpoint<u32>, proto: u8) -> Key<u32> {
        Key {
            client,
            frontend,
            proto,
        }
    }

    #[test]
    fn remembers_within_the_timeout_and_forgets_after() {
        let mut a = Affinity::<u32>::default();
        let fe = ep(100, 80);
        assert_eq!(a.get(&key(1, fe, 6), 7, 0, 10), None);
        a.put(key(1, fe, 6), 7, 5, ep(200, 8080), 2);
        assert_eq!(a.get(&key(1, fe, 6), 7, 15, 10), Some((ep(200, 8080), 2)));
        assert_eq!(a.get(&key(1, fe, 6), 7, 16, 10), None, "past the timeout");
        // another frontend, protocol or client is another entry
        assert_eq!(a.get(&key(1, ep(100, 81), 6), 7, 6, 10), None);
        assert_eq!(a.get(&key(1, fe, 17), 7, 6, 10), None);
        assert_eq!(a.get(&key(2, fe, 6), 7, 6, 10), None);
        // a new connection refreshes the timer and may move the client
        a.put(key(1, fe, 6), 7, 14, ep(201, 8080), 3);
        assert_eq!(a.get(&key(1, fe, 6), 7, 24, 10), Some((ep(201, 8080), 3)));
    }

    #[test]
    fn a_full_set_forgets_its_least_recently_used_client() {
        let mut a = Affinity::<u32>::default();
        let fe = ep(100, 80);
        // same hash: same set
        for c in 0..WAYS as u32 {
            a.put(key(c, fe, 6), 42, c, ep(200 + c, 80), 0);
        }
        a.put(key(0, fe, 6), 42, 10, ep(200, 80), 0); // client 0 comes back: now the newest
        a.put(key(99, fe, 6), 42, 11, ep(299, 80), 0); // evicts client 1, the oldest
        assert!(a.get(&key(1, fe, 6), 42, 11, 100).is_none());
        for c in [0, 2, 3, 99] {
            assert!(a.get(&key(c, fe, 6), 42, 11, 100).is_some(), "client {c}");
        }
    }
}
