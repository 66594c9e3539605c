//! Overlay benchmark fixtures: a VXLAN appliance snapshot and the frames that cross it.

use sluice_dataplane::fixtures::overlay_snapshot;
use sluice_dataplane::state::{OverlayMode, Snapshot};
use sluice_dataplane::wire::build::PacketSpec;

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
