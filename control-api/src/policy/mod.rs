//! Network policy: CiliumNetworkPolicy and Kubernetes NetworkPolicy read into one rule model
//! (rules.rs), label selectors with Cilium's key rules (selector.rs), compiled against the
//! security identities (compile.rs) into per-endpoint policy maps keyed like Cilium's (peer
//! identity, protocol, port prefix; map.rs). Enforcement in the datapath and L7 come next.

pub mod compile;
pub mod map;
pub mod rules;
pub mod selector;
