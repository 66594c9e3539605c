//! Security identities, with Cilium's numbers: reserved identities below 256, identities of
//! label sets from 256 up, carried in the VXLAN VNI / Geneve between nodes (24 bits).

/// The local host.
pub const HOST: u32 = 1;
/// Anything outside the cluster: every address the ipcache does not know.
pub const WORLD: u32 = 2;
/// Pods not managed by the CNI.
pub const UNMANAGED: u32 = 3;
/// Cilium's health endpoints.
pub const HEALTH: u32 = 4;
/// Endpoints whose identity is not resolved yet.
pub const INIT: u32 = 5;
/// Other cluster nodes.
pub const REMOTE_NODE: u32 = 6;
/// The Kubernetes API server.
pub const KUBE_APISERVER: u32 = 7;

/// The reserved identities and their label, as `cilium identity list` prints them.
pub const RESERVED: [(u32, &str); 7] = [
    (HOST, "reserved:host"),
    (WORLD, "reserved:world"),
    (UNMANAGED, "reserved:unmanaged"),
    (HEALTH, "reserved:health"),
    (INIT, "reserved:init"),
    (REMOTE_NODE, "reserved:remote-node"),
    (KUBE_APISERVER, "reserved:kube-apiserver"),
];

/// The first identity of a label set (Cilium's minimum cluster identity).
pub const MIN_LABELS: u32 = 256;
/// Identities of label sets stay below this: they must fit the 24-bit VNI.
pub const MAX_LABELS: u32 = 1 << 24;
