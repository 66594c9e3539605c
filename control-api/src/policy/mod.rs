//! Network policy (CiliumNetworkPolicy and Kubernetes NetworkPolicy) building blocks: label
//! selectors with Cilium's key rules, and the per-endpoint policy map keyed like Cilium's
//! (peer identity, protocol, port prefix). Compilation of whole policies into these maps and
//! enforcement in the datapath come next (issue 6).

pub mod map;
pub mod selector;
