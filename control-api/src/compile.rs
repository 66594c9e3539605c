//! Compiling one Service and its EndpointSlices into datapath frontends: backends per port
//! with their conditions and weights, and the Maglev table each port's frontends share.

use crate::model::{EndpointSliceView, ServiceView};
use sluice_dataplane::lb::maglev::{self, Member, Table};
use sluice_dataplane::state::{Backend, Frontend, FrontendKind, ServiceEntry};
use std::net::IpAddr;
use std::sync::Arc;

/// A service's compiled frontends.
pub type Compiled = Vec<(Frontend, Arc<ServiceEntry>)>;

/// The appliance's load-balancing defaults (config `[lb]`); services may override the algorithm
/// and table size by annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbDefaults {
    pub algorithm: sluice_dataplane::state::Algorithm,
    pub maglev_table_size: u32,
    /// Maglev hash seed: appliances with the same seed and backends build identical tables.
    pub seed: u64,
}

impl Default for LbDefaults {
    fn default() -> Self {
        LbDefaults {
            algorithm: Default::default(),
            maglev_table_size: sluice_dataplane::lb::maglev::DEFAULT_TABLE_SIZE,
            seed: 0,
        }
    }
}

/// What a service compiles against besides its own objects.
pub struct Context<'a> {
    /// Addresses NodePorts listen on.
    pub node_addresses: &'a [IpAddr],
    /// This appliance's node: externalTrafficPolicy Local keeps only backends on it.
    pub local_node: Option<&'a str>,
    pub lb: LbDefaults,
    /// The service's entries as last compiled under the same `lb` and local node: a Maglev
    /// table of the same backends and size is taken from them instead of built again.
    pub previous: &'a [Arc<ServiceEntry>],
}

/// One Service with its EndpointSlices -> its frontends, each with the backends of its port.
/// Backends match a service port by port name and protocol, as kube-proxy matches them.
pub fn compile_service(
    name: &str,
    svc: &ServiceView,
    slices: &[&EndpointSliceView],
    ctx: &Context,
) -> Compiled {
    let name: Arc<str> = name.into();
    let mut out = Vec::new();
    if svc.type_ == "ExternalName" {
        return out;
    }
    // A NodePort listens in the service's IP families only (those of its cluster IPs; a
    // headless service has none and takes every family).
    let node_addrs: Vec<IpAddr> = ctx
        .node_addresses
        .iter()
        .filter(|a| {
            svc.cluster_ips.is_empty() || svc.cluster_ips.iter().any(|c| c.is_ipv6() == a.is_ipv6())
        })
        .copied()
        .collect();
    let algorithm = svc.algorithm.unwrap_or(ctx.lb.algorithm);
    let table_size = svc.maglev_table_size.unwrap_or(ctx.lb.maglev_table_size);
    for p in &svc.ports {
        let mut backends = Vec::new();
        for s in slices {
            for sp in s
                .ports
                .iter()
                .filter(|sp| sp.name == p.name && sp.proto == p.proto)
            {
                for ep in &s.endpoints {
                    for addr in &ep.addrs {
                        let weight = svc
                            .weights
                            .iter()
                            .find(|(a, _)| a == addr)
                            .map_or(1, |(_, w)| *w);
                        backends.push(Backend {
                            addr: *addr,
                            port: sp.port,
                            weight,
                            ready: ep.ready,
                            serving: ep.serving,
                            terminating: ep.terminating,
                            node: ep.node.as_deref().map(Into::into),
                        });
                    }
                }
            }
        }
        // A frontend balances over the backends of its own IP family (a dual-stack service has
        // an IPv4 and an IPv6 EndpointSlice; an IPv4 client cannot be DNATed to an IPv6 pod).
        for v6 in [false, true] {
            let family: Vec<Backend> = backends
                .iter()
                .filter(|b| b.addr.is_ipv6() == v6)
                .cloned()
                .collect();
            let of_family = |addrs: &[IpAddr]| -> Vec<IpAddr> {
                addrs
                    .iter()
                    .filter(|a| a.is_ipv6() == v6)
                    .copied()
                    .collect()
            };
            let mut frontends = vec![
                (of_family(&svc.cluster_ips), p.port, FrontendKind::ClusterIp),
                (
                    of_family(&svc.external_ips),
                    p.port,
                    FrontendKind::ExternalIp,
                ),
                (of_family(&svc.lb_ips), p.port, FrontendKind::LoadBalancer),
            ];
            if let (Some(np), true) = (
                p.node_port,
                svc.type_ == "NodePort" || svc.type_ == "LoadBalancer",
            ) {
                frontends.push((of_family(&node_addrs), np, FrontendKind::NodePort));
            }
            frontends.retain(|(addrs, _, _)| !addrs.is_empty());
            if frontends.is_empty() {
                continue;
            }
            let tables = Tables::build(&family, svc.local_only, table_size, ctx);
            for (addrs, port, kind) in frontends {
                let local_only = svc.local_only && kind != FrontendKind::ClusterIp;
                let built = if local_only {
                    &tables.local
                } else {
                    &tables.cluster
                };
                let e = Arc::new(ServiceEntry {
                    name: name.clone(),
                    kind,
                    takes_new: built.takes_new.clone(),
                    backends: family.clone(),
                    algorithm,
                    table: built.table.clone(),
                    affinity_timeout_s: svc.affinity_timeout_s,
                    local_only,
                });
                for a in addrs {
                    out.push((
                        Frontend {
                            addr: a,
                            proto: p.proto.number(),
                            port,
                        },
                        e.clone(),
                    ));
                }
            }
        }
    }
    out
}

/// The Maglev tables of one port and IP family: one per traffic policy, shared by the frontends
/// that use it.
struct Tables {
    cluster: Built,
    /// externalTrafficPolicy Local (the cluster table when the service has no such policy)
    local: Built,
}

/// A table, and which backends hold slots in it.
#[derive(Clone)]
struct Built {
    table: Table,
    takes_new: Arc<[bool]>,
}

impl Tables {
    fn build(backends: &[Backend], local_only: bool, table_size: u32, ctx: &Context) -> Tables {
        // with no ready backend, serving terminating ones take new connections, as kube-proxy
        // does since ProxyTerminatingEndpoints
        let table = |local_only: bool| -> Built {
            // the table is a function of the backends (with their conditions and nodes), the
            // size, the seed and the local node: the same ones give the same table (the
            // service's other changes, a port, a type, an annotation, keep it)
            let same = ctx.previous.iter().find(|e| {
                e.local_only == local_only
                    && e.table.len() == table_size as usize
                    && e.backends == backends
            });
            if let Some(e) = same {
                return Built {
                    table: e.table.clone(),
                    takes_new: e.takes_new.clone(),
                };
            }
            let members = |fallback: bool| -> Vec<Member> {
                backends
                    .iter()
                    .map(|b| Member {
                        addr: b.addr,
                        port: b.port,
                        weight: if takes_new_connections(b, local_only, ctx.local_node, fallback) {
                            b.weight
                        } else {
                            0
                        },
                    })
                    .collect()
            };
            let mut m = members(false);
            if m.iter().all(|b| b.weight == 0) {
                m = members(true);
            }
            let table: Table = maglev::build(&m, table_size, ctx.lb.seed).into();
            let holding = m.iter().filter(|b| b.weight > 0).count();
            Built {
                takes_new: ServiceEntry::slot_holders(&table, backends.len(), holding),
                table,
            }
        };
        let cluster = table(false);
        let local = if local_only {
            table(true)
        } else {
            cluster.clone()
        };
        Tables { cluster, local }
    }
}

/// Whether a backend may be given a new connection: ready and not terminating (terminating
/// backends keep the connections they have, through conntrack), and on this node when the
/// service's externalTrafficPolicy is Local.
/// `fallback`: the serving-and-terminating ones instead.
fn takes_new_connections(
    b: &Backend,
    local_only: bool,
    local_node: Option<&str>,
    fallback: bool,
) -> bool {
    let condition = if fallback {
        b.serving && b.terminating
    } else {
        b.ready && !b.terminating
    };
    condition && (!local_only || (b.node.is_some() && b.node.as_deref() == local_node))
}
