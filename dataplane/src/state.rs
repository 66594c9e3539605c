//! Compiled state shared with the workers: one immutable `Snapshot`, swapped in atomically.
//!
//! The control plane builds a new snapshot off the fast path and publishes it with one pointer
//! swap (arc-swap). Workers load it once per batch and record the generation they ran, so the
//! control plane can tell when a change is live everywhere.

use crate::packet::Port;
use crate::wire::ethernet::MacAddr;
use arc_swap::ArcSwap;
pub use hashbrown::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// An egress/ingress interface as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub mac: MacAddr,
}

/// One static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpAddr,
    pub prefix_len: u8,
    pub port: Port,
    /// Gateway; None for a directly connected prefix (next hop = destination).
    pub via: Option<IpAddr>,
    /// A static next-hop MAC; None to use the kernel's neighbour table.
    pub mac: Option<MacAddr>,
}

fn to_u128(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v) => (false, u128::from(u32::from(v)) << 96),
        IpAddr::V6(v) => (true, u128::from(v)),
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Route {
    fn matches(&self, dst: IpAddr) -> bool {
        let (v6a, a) = to_u128(self.prefix);
        let (v6b, b) = to_u128(dst);
        v6a == v6b && (a ^ b) & mask(self.prefix_len) == 0
    }
}

/// Longest-prefix-match route table. Routes are kept sorted longest prefix first, so the first
/// match wins; a linear scan is right for the handful of routes of an edge appliance (the
/// ipcache of the policy work brings a real LPM trie).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix_len));
        RouteTable { routes }
    }
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(dst))
    }
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Everything a worker needs to process a packet, immutable once published.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub ports: Vec<PortInfo>,
    pub routes: RouteTable,
    /// Resolved neighbours: (port, next hop) -> MAC.
    pub neighbors: HashMap<(Port, IpAddr), MacAddr>,
}

impl Snapshot {
    #[inline]
    pub fn port_mac(&self, p: Port) -> Option<&MacAddr> {
        self.ports.get(usize::from(p)).map(|p| &p.mac)
    }
}

/// Publishes snapshots to the workers.
#[derive(Clone)]
pub struct Publisher {
    current: Arc<ArcSwap<Snapshot>>,
}

impl Publisher {
    pub fn new(initial: Snapshot) -> Self {
        Publisher {
            current: Arc::new(ArcSwap::from_pointee(initial)),
        }
    }
    /// Swaps in `next` with the following generation; returns that generation.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let generation = self.current.load().generation + 1;
        next.generation = generation;
        self.current.store(Arc::new(next));
        generation
    }
    /// The current snapshot (for workers: once per batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str, len: u8, port: Port) -> Route {
        Route {
            prefix: p.parse().unwrap(),
            prefix_len: len,
            port,
            via: None,
            mac: None,
        }
    }

    #[test]
    fn longest_prefix_wins_and_families_do_not_mix() {
        let t = RouteTable::new(vec![
            r("0.0.0.0", 0, 9),
            r("10.0.0.0", 8, 1),
            r("10.1.2.0", 24, 2),
            r("fd00::", 8, 3),
        ]);
        let port = |a: &str| t.lookup(a.parse().unwrap()).map(|r| r.port);
        assert_eq!(port("10.1.2.3"), Some(2));
        assert_eq!(port("10.1.3.3"), Some(1));
        assert_eq!(port("192.168.0.1"), Some(9));
        assert_eq!(port("fd00::1"), Some(3));
        assert_eq!(port("2001:db8::1"), None);
    }

    #[test]
    fn publish_bumps_generation() {
        let p = Publisher::new(Snapshot::default());
        assert_eq!(p.generation(), 0);
        assert_eq!(p.publish(Snapshot::default()), 1);
        assert_eq!(p.publish(Snapshot::default()), 2);
        assert_eq!(p.load().generation, 2);
    }
}
