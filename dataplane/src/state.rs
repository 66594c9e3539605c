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
use std::sync::{Arc, Mutex};

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

/// A service frontend: what clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    /// IP protocol number: 6 TCP, 17 UDP, 132 SCTP.
    pub proto: u8,
    pub port: u16,
}

/// How a frontend was exposed (Kubernetes service types and their addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// One backend of a service port, with the EndpointSlice conditions the load balancer honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<Arc<str>>,
}

/// How a service picks the backend of a new connection (Cilium's `lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Consistent hashing of the 5-tuple through the service's Maglev table.
    #[default]
    Maglev,
    /// A random slot of the same (weighted) table.
    Random,
}

/// A compiled service frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// "namespace/name", for flows and metrics.
    pub name: Arc<str>,
    pub kind: FrontendKind,
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    /// Maglev lookup table: slot -> index into `backends`. Only backends that may take new
    /// connections (ready, not terminating, local when the policy says so) have slots; empty when
    /// there is none.
    pub table: crate::lb::maglev::Table,
    /// `takes_new[i]`: `backends[i]` holds slots in `table` (see [`ServiceEntry::slot_holders`]).
    pub takes_new: Arc<[bool]>,
    /// sessionAffinity ClientIP timeout in seconds, if set.
    pub affinity_timeout_s: Option<u32>,
    /// externalTrafficPolicy: Local.
    pub local_only: bool,
}

impl ServiceEntry {
    /// Which of `backends` backends hold slots in a table: those that take new connections.
    /// `holding`: how many can (those the table was built with a weight for); the scan stops
    /// once it has seen that many, after ~N·ln N slots for N of them rather than all M (a full
    /// scan of every table was 15% of a full apply's CPU).
    pub fn slot_holders(
        table: &crate::lb::maglev::Table,
        backends: usize,
        holding: usize,
    ) -> Arc<[bool]> {
        let mut holds = vec![false; backends];
        let mut seen = 0;
        for i in table.iter() {
            if seen >= holding {
                break;
            }
            if let Some(h) = holds.get_mut(i) {
                seen += usize::from(!*h);
                *h = true;
            }
        }
        holds.into()
    }
}

/// A cluster node (for the overlay and for externalTrafficPolicy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: Arc<str>,
    pub addrs: Vec<IpAddr>,
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    pub vtep_mac: Option<MacAddr>,
}

/// Longest-prefix match by exact lookups per prefix length, longest first: the cost grows with
/// the number of distinct lengths (one or two for pod CIDRs), not with the number of prefixes.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        PrefixTable {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<V> PrefixTable<V> {
    pub fn insert(&mut self, addr: IpAddr, len: u8, v: V) {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let key = u32::from(a) & mask32(len);
                insert_len(&mut self.v4, len, key, v);
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let key = u128::from(a) & mask(len);
                insert_len(&mut self.v6, len, key, v);
            }
        }
    }
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(u32::from(a)),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&(a & mask(*len))))
            }
        }
    }
    /// IPv4 lookup that also says the network and mask that matched, and whether that match is
    /// final for the whole network: true when no longer prefix exists in the table, so every
    /// address inside the network gets the same answer (a caller may then reuse it without a
    /// lookup for the following packets to that network).
    #[inline]
    pub fn lookup_v4_net(&self, a: u32) -> Option<(u32, u32, bool, &V)> {
        let longest = self.v4.first().map(|(l, _)| *l);
        self.v4.iter().find_map(|(len, m)| {
            let mask = mask32(*len);
            m.get(&(a & mask))
                .map(|v| (a & mask, mask, Some(*len) == longest, v))
        })
    }
    /// IPv4 lookup by the address as a host-order integer.
    #[inline]
    pub fn lookup_v4(&self, a: u32) -> Option<&V> {
        self.v4
            .iter()
            .find_map(|(len, m)| m.get(&(a & mask32(*len))))
    }
    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn insert_len<K: std::hash::Hash + Eq, V>(
    levels: &mut Vec<(u8, HashMap<K, V>)>,
    len: u8,
    key: K,
    v: V,
) {
    match levels.iter_mut().find(|(l, _)| *l == len) {
        Some((_, m)) => {
            m.insert(key, v);
        }
        None => {
            let mut m = HashMap::new();
            m.insert(key, v);
            levels.push((len, m));
            levels.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
        }
    }
}

/// A remote node as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub addrs: Vec<IpAddr>,
    /// The MAC of the node's tunnel device, for peers that deliver decapsulated frames by L2 (a
    /// kernel vxlan/geneve device): the inner destination MAC. None: inner MACs are kept.
    pub vtep_mac: Option<MacAddr>,
}

/// Cluster state compiled by the control plane for the datapath.
#[derive(Debug, Clone, Default)]
pub struct ClusterTables {
    /// Frontends -> services; a [`FlatMap`](crate::flatmap::FlatMap) so that the LB stage can
    /// prefetch a batch's lookups.
    pub services: crate::flatmap::FlatMap<Frontend, Arc<ServiceEntry>>,
    pub nodes: Vec<NodeEntry>,
    /// Pod CIDR of every node but this one -> that node (overlay destination).
    pub pod_cidrs: PrefixTable<Arc<RemoteNode>>,
    /// Addresses of every node: the only senders whose tunnel traffic is accepted.
    pub node_ips: hashbrown::HashSet<IpAddr>,
    /// IP / CIDR -> security identity (longest prefix); addresses it does not know are
    /// `identity::WORLD`.
    pub ipcache: PrefixTable<u32>,
    /// Network policy per identity.
    pub policy: Arc<crate::policy::PolicyTables>,
    /// Egress rate limits of pods (`kubernetes.io/egress-bandwidth`), bits/s, by pod address.
    pub egress_bandwidth: Arc<HashMap<IpAddr, u64>>,
}

/// How pod traffic to other nodes leaves (Cilium's routing modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlayMode {
    /// No overlay: only the static routes.
    #[default]
    Off,
    Vxlan,
    Geneve,
    /// Native routing: forwarded to the node's address as next hop, unencapsulated.
    Native,
}

/// Overlay settings of this appliance.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub mode: OverlayMode,
    /// Tunnel UDP port.
    pub port: u16,
    /// This node's underlay address: outer source, and the destination of tunnel traffic to us.
    pub local_ip: Option<IpAddr>,
    /// Underlay MTU: the outer IP packet must fit.
    pub mtu: u16,
    /// Identity carried for traffic that enters from outside the cluster (Cilium's world = 2).
    pub world_identity: u32,
    /// Geneve: also carry the identity in sluice's TLV option.
    pub geneve_identity_option: bool,
}

impl ClusterTables {
    pub fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }
}

pub type NeighborTable = HashMap<(Port, IpAddr), MacAddr>;

/// Everything a worker needs to process a packet, immutable once published. Each part is shared
/// (`Arc`), so publishing a change to one part copies pointers, not tables.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub ports: Arc<Vec<PortInfo>>,
    pub routes: Arc<RouteTable>,
    /// Resolved neighbours: (port, next hop) -> MAC.
    pub neighbors: Arc<NeighborTable>,
    pub cluster: Arc<ClusterTables>,
    pub overlay: Arc<Overlay>,
    pub lb: Arc<crate::lb::LbSettings>,
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
    /// Swaps in `next` with the following generation; returns that generation. Callers that
    /// publish from several threads go through a [`StateHub`], which serialises them.
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

/// Something to poke after a publish so idle workers pick the new snapshot up at once.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// The one place snapshots are assembled: the neighbour loop, the config and the control API each
/// replace their part, and the hub publishes the combination with one atomic swap. The mutex is
/// control-plane only; workers never take it.
pub struct StateHub {
    publisher: Publisher,
    parts: Mutex<Snapshot>,
    wakers: Mutex<Vec<Arc<dyn Wake>>>,
}

impl StateHub {
    pub fn new(initial: Snapshot) -> Self {
        StateHub {
            publisher: Publisher::new(initial.clone()),
            parts: Mutex::new(initial),
            wakers: Mutex::new(Vec::new()),
        }
    }
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }
    pub fn add_waker(&self, w: Arc<dyn Wake>) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w);
    }
    /// Applies `f` to the parts and publishes the result; returns the new generation.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) -> u64 {
        let g = {
            let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut parts);
            let g = self.publisher.publish(parts.clone());
            parts.generation = g;
            g
        };
        for w in self.wakers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            w.wake();
        }
        g
    }
    pub fn set_neighbors(&self, n: NeighborTable) -> u64 {
        self.update(|s| s.neighbors = Arc::new(n))
    }
    pub fn set_cluster(&self, c: Arc<ClusterTables>) -> u64 {
        self.update(|s| s.cluster = c)
    }
    pub fn generation(&self) -> u64 {
        self.publisher.generation()
    }
    /// The current published snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        arc_swap::Guard::into_inner(self.publisher.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holders are those a full scan finds, however early the scan stops: weight 0 holds
    /// nothing, and a weight too light for a slot of its own (1 beside 65535 at M=251) makes
    /// the scan run to the end.
    #[test]
    fn slot_holders_are_those_in_the_table() {
        use crate::lb::maglev::{build, Member, Table};
        for weights in [vec![1, 1, 1], vec![1, 0, 2, 0], vec![65535, 1, 65535]] {
            let members: Vec<Member> = (0..weights.len())
                .map(|i| Member {
                    addr: IpAddr::from([10, 0, 0, i as u8]),
                    port: 80,
                    weight: weights[i],
                })
                .collect();
            let table = Table::from(build(&members, 251, 1));
            let mut all = vec![false; members.len()];
            for i in table.iter() {
                all[i] = true;
            }
            let holding = weights.iter().filter(|&&w| w > 0).count();
            let holders = ServiceEntry::slot_holders(&table, members.len(), holding);
            assert_eq!(&*holders, &all[..], "weights {weights:?}");
        }
    }

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
    fn hub_publishes_each_part_change_and_wakes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let hub = StateHub::new(Snapshot::default());
        let w = Arc::new(Count(AtomicUsize::new(0)));
        hub.add_waker(w.clone());
        let p = hub.publisher();
        let mut n = NeighborTable::new();
        n.insert((0, "10.0.0.1".parse().unwrap()), [2, 0, 0, 0, 0, 1]);
        assert_eq!(hub.set_neighbors(n), 1);
        let mut c = ClusterTables::default();
        c.nodes.push(NodeEntry {
            name: "n1".into(),
            addrs: vec![],
            pod_cidrs: vec![],
            vtep_mac: None,
        });
        assert_eq!(hub.set_cluster(Arc::new(c)), 2);
        // the second publish kept the first part
        let s = p.load();
        assert_eq!(
            (s.generation, s.neighbors.len(), s.cluster.nodes.len()),
            (2, 1, 1)
        );
        assert_eq!(w.0.load(Ordering::Relaxed), 2);
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
