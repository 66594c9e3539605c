//! Overlay benchmark fixtures: a VXLAN appliance snapshot and the frames that cross it.

use sluice_dataplane::state::{
    ClusterTables, HashMap, Overlay, OverlayMode, PortInfo, PrefixTable, RemoteNode, Route,
    RouteTable, Snapshot,
};
use sluice_dataplane::wire::build::PacketSpec;
use std::net::IpAddr;
use std::sync::Arc;

pub const NODE: &str = "10.20.0.21";
pub const LOCAL: &str = "10.20.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Client segment on port 0, underlay on port 1, one remote node owning 10.244.2.0/24.
pub fn vxlan_snapshot() -> Snapshot {
    let mut cluster = ClusterTables::default();
    let mut pods = PrefixTable::default();
    pods.insert(
        ip("10.244.2.0"),
        24,
        Arc::new(RemoteNode {
            addrs: vec![ip(NODE)],
            vtep_mac: Some([2, 0, 0, 0, 0xee, 2]),
        }),
    );
    cluster.pod_cidrs = pods;
    cluster.node_ips.insert(ip(NODE));
    let mut neighbors = HashMap::new();
    neighbors.insert((1u16, ip(NODE)), [2, 0, 0, 0, 0x20, 0x21]);
    neighbors.insert((0u16, ip("10.10.0.2")), [2, 0, 0, 0, 0x10, 2]);
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
                mac: [2, 0, 0, 0, 1, 0],
            },
            PortInfo {
                name: "eth-srv".into(),
                mac: [2, 0, 0, 0, 1, 1],
            },
        ]),
        routes: Arc::new(RouteTable::new(vec![
            route("10.10.0.0", 24, 0),
            route("10.20.0.0", 24, 1),
        ])),
        neighbors: Arc::new(neighbors),
        cluster: Arc::new(cluster),
        overlay: Arc::new(Overlay {
            mode: OverlayMode::Vxlan,
            port: 8472,
            local_ip: Some(ip(LOCAL)),
            mtu: 1500,
            world_identity: 2,
            geneve_identity_option: false,
        }),
    }
}

/// 64-byte client -> pod frames over `flows` source ports (encapsulated by sluice).
pub fn to_pod(flows: u16) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|f| PacketSpec::udp("10.10.0.2", "10.244.2.5", 10000 + f, 9000, &[0u8; 22]).build())
        .collect()
}

/// VXLAN frames from the node, pod -> client (decapsulated by sluice), inner 64 bytes.
pub fn from_node(flows: u16) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|f| {
            let inner =
                PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 10000 + f, &[0u8; 22]).build();
            let mut payload = vec![0x08, 0, 0, 0, 0, 0x13, 0x89, 0]; // VNI 5001
            payload.extend_from_slice(&inner);
            PacketSpec::udp(NODE, LOCAL, 50000 + f, 8472, &payload).build()
        })
        .collect()
}
