//! Next-hop resolution: what the datapath needs from the kernel's neighbour table, kept current
//! in the snapshot (see docs/decisions/003-neighbours-from-the-kernel.md).

use crate::netlink;
use crossbeam_queue::ArrayQueue;
use sluice_control::config::CheckedSteer;
use sluice_dataplane::pipeline::NeighborRequests;
use sluice_dataplane::state::{HashMap, NeighborTable, RouteTable, StateHub};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pending next-hop resolution requests per worker; more in one tick are dropped (and retried by
/// the next packet to the same next hop).
pub const NEIGH_QUEUE: usize = 256;
/// How long start-up waits for the known next hops to resolve before serving anyway: ARP/ND on
/// a LAN answers in well under a millisecond; a host that is down must not block the appliance.
const STARTUP_RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// Unresolved known next hops are asked for again this often (the kernel gives up on a managed
/// entry after its probes fail, until asked again).
const RERESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Worker side of neighbour resolution: a bounded lock-free queue to the control loop.
pub struct NeighQueue(pub Arc<ArrayQueue<(u16, IpAddr)>>);

impl NeighborRequests for NeighQueue {
    fn request(&mut self, port: u16, ip: IpAddr) {
        // full: the control loop is behind; the next miss asks again
        let _ = self.0.push((port, ip));
    }
}

pub struct Neighbors {
    ifindex_to_port: HashMap<u32, u16>,
    port_ifindex: HashMap<u16, u32>,
    wanted: Vec<(u16, IpAddr)>,
    current: NeighborTable,
    queues: Vec<Arc<ArrayQueue<(u16, IpAddr)>>>,
    last_rerequest: Instant,
}

impl Neighbors {
    /// Requests the predictable next hops and waits (bounded) for them to resolve.
    pub fn start(
        ifindex_to_port: HashMap<u32, u16>,
        routes: &RouteTable,
        steer: &[CheckedSteer],
    ) -> Neighbors {
        let port_ifindex = ifindex_to_port.iter().map(|(i, p)| (*p, *i)).collect();
        let mut n = Neighbors {
            ifindex_to_port,
            port_ifindex,
            wanted: wanted_next_hops(routes, steer),
            current: NeighborTable::new(),
            queues: Vec::new(),
            last_rerequest: Instant::now(),
        };
        for (port, ip) in n.wanted.clone() {
            n.request(port, ip);
        }
        n.current = n.read();
        let deadline = Instant::now() + STARTUP_RESOLVE_WAIT;
        while n.missing().next().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            n.current = n.read();
        }
        for k in n.missing() {
            tracing::warn!(next_hop = %k.1, port = k.0, "next hop not resolved yet; packets to it drop as NEIGHBOR_UNRESOLVED until it is");
        }
        n
    }

    pub fn table(&self) -> NeighborTable {
        self.current.clone()
    }

    /// A request queue for one more worker.
    pub fn worker_queue(&mut self) -> NeighQueue {
        let q = Arc::new(ArrayQueue::new(NEIGH_QUEUE));
        self.queues.push(q.clone());
        NeighQueue(q)
    }

    fn missing(&self) -> impl Iterator<Item = &(u16, IpAddr)> {
        self.wanted
            .iter()
            .filter(|k| !self.current.contains_key(*k))
    }

    /// One control-loop tick: serve worker requests, re-ask for missing next hops, publish a
    /// change of the table.
    pub fn tick(&mut self, hub: &StateHub) {
        for qi in 0..self.queues.len() {
            while let Some((port, ip)) = self.queues[qi].pop() {
                self.request(port, ip);
            }
        }
        if self.last_rerequest.elapsed() >= RERESOLVE_EVERY {
            self.last_rerequest = Instant::now();
            let missing: Vec<_> = self.missing().copied().collect();
            for (port, ip) in missing {
                self.request(port, ip);
            }
        }
        let fresh = self.read();
        if fresh != self.current {
            self.current = fresh;
            let g = hub.set_neighbors(self.current.clone());
            tracing::debug!(
                generation = g,
                neighbors = self.current.len(),
                "neighbour table changed"
            );
        }
    }

    fn request(&self, port: u16, ip: IpAddr) {
        if let Some(ifindex) = self.port_ifindex.get(&port) {
            if let Err(e) = netlink::request_resolution(*ifindex, ip) {
                tracing::warn!(%ip, port, "neighbour resolution request failed: {e}");
            }
        }
    }

    fn read(&self) -> NeighborTable {
        match netlink::dump_neighbors() {
            Ok(list) => list
                .into_iter()
                .filter_map(|n| {
                    self.ifindex_to_port
                        .get(&n.ifindex)
                        .map(|p| ((*p, n.ip), n.mac))
                })
                .collect(),
            Err(e) => {
                tracing::warn!("reading the neighbour table: {e}");
                self.current.clone()
            }
        }
    }
}

/// Next hops the appliance will need: every route gateway, and for each owned address the next
/// hop its route gives (the address itself on a connected route).
fn wanted_next_hops(routes: &RouteTable, steer: &[CheckedSteer]) -> Vec<(u16, IpAddr)> {
    let mut out: Vec<(u16, IpAddr)> = routes
        .routes()
        .iter()
        .filter_map(|r| r.via.filter(|_| r.mac.is_none()).map(|v| (r.port, v)))
        .collect();
    for s in steer.iter().filter(|s| s.prefix_len.is_none()) {
        if let Some(r) = routes.lookup(s.ip) {
            if r.mac.is_none() {
                out.push((r.port, r.via.unwrap_or(s.ip)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
