//! A small appliance state for tests, benchmarks and fuzzing (never used at run time): client
//! segment 10.10.0.0/24 on port 0, server segment / underlay 10.20.0.0/24 (+ fd00:20::/64) on
//! port 1, and one remote node owning the pod CIDR 10.244.2.0/24.

use crate::state::{
    ClusterTables, HashMap, Overlay, OverlayMode, PortInfo, PrefixTable, RemoteNode, Route,
    RouteTable, Snapshot,
};
use crate::wire::ethernet::MacAddr;
use std::net::IpAddr;
use std::sync::Arc;

pub const MAC_CLI_PORT: MacAddr = [2, 0, 0, 0, 1, 0];
pub const MAC_UNDERLAY_PORT: MacAddr = [2, 0, 0, 0, 1, 1];
pub const MAC_NODE2: MacAddr = [2, 0, 0, 0, 0x20, 0x21];
pub const MAC_CLIENT: MacAddr = [2, 0, 0, 0, 0x10, 0x02];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The overlay lab state: `mode` from `local`, underlay `mtu`, the remote node at `node_addrs`
/// (its tunnel device MAC `vtep`), neighbours resolved for the node and the client 10.10.0.2.
pub fn overlay_snapshot(
    mode: OverlayMode,
    local: &str,
    mtu: u16,
    node_addrs: &[&str],
    vtep: Option<MacAddr>,
) -> Snapshot {
    let mut cluster = ClusterTables::default();
    let mut pods = PrefixTable::default();
    let remote = Arc::new(RemoteNode {
        addrs: node_addrs.iter().map(|a| ip(a)).collect(),
        vtep_mac: vtep,
    });
    pods.insert(ip("10.244.2.0"), 24, remote);
    cluster.pod_cidrs = pods;
    cluster.node_ips = node_addrs.iter().map(|a| ip(a)).collect();
    let mut neighbors = HashMap::new();
    for a in node_addrs {
        neighbors.insert((1u16, ip(a)), MAC_NODE2);
    }
    neighbors.insert((0u16, ip("10.10.0.2")), MAC_CLIENT);
    let route = |p: &str, len, port| Route {
        prefix: ip(p),
        prefix_len: len,
        port,
        via: None,
        mac: None,
    };
    Snapshot {
        generation: 1,
        ports: Arc::new(vec![
            PortInfo {
                name: "eth-cli".into(),
                mac: MAC_CLI_PORT,
            },
            PortInfo {
                name: "eth-srv".into(),
                mac: MAC_UNDERLAY_PORT,
            },
        ]),
        routes: Arc::new(RouteTable::new(vec![
            route("10.10.0.0", 24, 0),
            route("10.20.0.0", 24, 1),
            route("fd00:20::", 64, 1),
        ])),
        neighbors: Arc::new(neighbors),
        cluster: Arc::new(cluster),
        overlay: Arc::new(Overlay {
            mode,
            port: if mode == OverlayMode::Geneve {
                6081
            } else {
                8472
            },
            local_ip: Some(ip(local)),
            mtu,
            world_identity: 2,
            geneve_identity_option: mode == OverlayMode::Geneve,
        }),
        lb: Default::default(),
    }
}

/// The service lab state: the overlay state (VXLAN off) plus service `lab/web` on
/// 10.96.0.80 and fd00:96::80, TCP 80 -> 8080 and UDP 53 -> 5353, and TCP 443 and UDP 5353 on
/// the same port (DSR-capable), backends .11/.12/.13 on the server segment with weights 1:1:2,
/// SNAT to 10.20.0.1 / fd00:20::1.
pub fn service_snapshot(weights: [u16; 3]) -> Snapshot {
    use crate::lb::maglev::{self, Member};
    use crate::state::{Algorithm, Backend, Frontend, FrontendKind, ServiceEntry};
    let mut s = overlay_snapshot(OverlayMode::Off, "10.20.0.1", 1500, &[], None);
    let mut cluster = (*s.cluster).clone();
    let mut neighbors = (*s.neighbors).clone();
    for (fe, family) in [("10.96.0.80", "10.20.0."), ("fd00:96::80", "fd00:20::")] {
        for (proto, port, bport) in [
            (6u8, 80u16, 8080u16),
            (17, 53, 5353),
            (6, 443, 443),
            (17, 5353, 5353),
        ] {
            let backends: Vec<Backend> = (0..3)
                .map(|i| Backend {
                    addr: ip(&format!("{family}{}", 11 + i)),
                    port: bport,
                    weight: weights[i],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: None,
                })
                .collect();
            let members: Vec<Member> = backends
                .iter()
                .map(|b| Member {
                    addr: b.addr,
                    port: b.port,
                    weight: b.weight,
                })
                .collect();
            for b in &backends {
                neighbors.insert((1u16, b.addr), MAC_BACKEND);
            }
            cluster.services.insert(
                Frontend {
                    addr: ip(fe),
                    proto,
                    port,
                },
                Arc::new({
                    let table: maglev::Table = maglev::build(&members, 1021, 0).into();
                    ServiceEntry {
                        name: "lab/web".into(),
                        kind: FrontendKind::ClusterIp,
                        takes_new: ServiceEntry::slot_holders(
                            &table,
                            backends.len(),
                            members.iter().filter(|m| m.weight > 0).count(),
                        ),
                        table,
                        backends,
                        algorithm: Algorithm::Maglev,
                        affinity_timeout_s: None,
                        local_only: false,
                    }
                }),
            );
        }
    }
    neighbors.insert((0u16, ip("fd00:10::2")), MAC_CLIENT);
    let mut routes = s.routes.routes().to_vec();
    routes.push(Route {
        prefix: ip("fd00:10::"),
        prefix_len: 64,
        port: 0,
        via: None,
        mac: None,
    });
    s.routes = Arc::new(RouteTable::new(routes));
    s.cluster = Arc::new(cluster);
    s.neighbors = Arc::new(neighbors);
    s.lb = Arc::new(crate::lb::LbSettings {
        snat_v4: Some(
            "10.20.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        snat_v6: Some(
            "fd00:20::1"
                .parse()
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
        ),
        ..Default::default()
    });
    s
}

pub const MAC_BACKEND: MacAddr = [2, 0, 0, 0, 0x20, 0x11];
