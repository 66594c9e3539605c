//! Network policy: CiliumNetworkPolicy and Kubernetes NetworkPolicy read into one rule model
//! (rules.rs), label selectors with Cilium's key rules (selector.rs), compiled against the
//! security identities (compile.rs) into per-endpoint policy maps keyed like Cilium's (peer
//! identity, protocol, port prefix; map.rs). Enforcement in the datapath and L7 come next.

pub mod compile;
pub mod rules;
/// The policy map lives with the datapath, which looks packets up in it.
pub use sluice_dataplane::policy as map;
pub mod selector;
