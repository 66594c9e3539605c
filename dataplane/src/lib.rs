//! `sluice-dataplane`: the fast path.
//!
//! - [`wire`]: zero-copy packet views and checksums
//! - [`io`]: `PacketIo` backends (AF_XDP, memory, pcap)
//! - [`state`]: the immutable [`state::Snapshot`] workers run on and its [`state::Publisher`]
//! - [`pipeline`]: the stages
//! - [`worker`]: the per-queue loop; [`handoff`]: packets passed between workers
//!
//! No async runtime, no HTTP, no Kubernetes here: the fast path stays small.

pub mod bandwidth;
pub mod capture;
pub mod drop;
pub mod fixtures;
pub mod flatmap;
pub mod flow;
pub mod handoff;
pub mod hugepages;
pub mod identity;
pub mod io;
pub mod l7;
pub mod lb;
pub mod overlay;
pub mod packet;
pub mod pipeline;
pub mod policy;
pub mod policy_stage;
pub mod prefetch;
pub mod region;
pub mod state;
pub mod stats;
pub mod wire;
pub mod worker;

pub use drop::DropReason;
pub use packet::{Batch, Frame, Meta, Port, Verdict, MAX_BATCH};
