//! Overlay benchmark fixtures: a VXLAN appliance snapshot and the frames that cross it.

use sluice_dataplane::fixtures::overlay_snapshot;
use sluice_dataplane::fixtures::MAC_NODE2;
use sluice_dataplane::state::{OverlayMode, PrefixTable, RemoteNode, Snapshot};
use sluice_dataplane::wire::build::PacketSpec;
use std::net::IpAddr;
use std::sync::Arc;

pub const NODE: &str = "10.20.0.21";
pub const LOCAL: &str = "10.20.0.1";

/// The VXLAN lab state (see `sluice_dataplane::fixtures`), with a VTEP MAC for the node.
pub fn vxlan_snapshot() -> Snapshot {
    overlay_snapshot(
        OverlayMode::Vxlan,
        LOCAL,
        1500,
        &[NODE],
        Some([2, 0, 0, 0, 0xee, 2]),
    )
}

/// `vxlan_snapshot` with `n` remote nodes: node k at 10.20.0.(21+k) owns 10.244.(2+k).0/24.
/// With `to_pods_round_robin` no two consecutive packets of a batch go to the same node, the
/// worst case for the per-batch caches of the encapsulation.
pub fn vxlan_snapshot_nodes(n: u8) -> Snapshot {
    let mut snap = vxlan_snapshot();
    let mut cluster = (*snap.cluster).clone();
    let mut neighbors = (*snap.neighbors).clone();
    let mut pods = PrefixTable::default();
    for k in 0..n {
        let addr: IpAddr = format!("10.20.0.{}", 21 + k).parse().expect("node address");
        let node = Arc::new(RemoteNode {
            addrs: vec![addr],
            vtep_mac: Some([2, 0, 0, 0, 0xee, 2 + k]),
        });
        let cidr: IpAddr = format!("10.244.{}.0", 2 + k).parse().expect("pod CIDR");
        pods.insert(cidr, 24, node);
        cluster.node_ips.insert(addr);
        neighbors.insert((1, addr), MAC_NODE2);
    }
    cluster.pod_cidrs = pods;
    snap.cluster = Arc::new(cluster);
    snap.neighbors = Arc::new(neighbors);
    snap
}

/// 64-byte client -> pod frames, packet i to a pod on node i mod `nodes`.
pub fn to_pods_round_robin(flows: u16, nodes: u8) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|f| {
            let dst = format!("10.244.{}.5", 2 + (f % u16::from(nodes)));
            PacketSpec::udp("10.10.0.2", &dst, 10000 + f, 9000, &[0u8; 22]).build()
        })
        .collect()
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
