//! `sluice-control`: the control plane. The appliance config file, the Kubernetes object model and
//! its validation, the desired-state store compiled into the datapath's tables, persistence, and
//! the REST API. It never touches packets.

pub mod api;
pub mod capture;
pub mod compile;
pub mod config;
pub mod cores;
pub mod flows;
pub mod identity;
pub mod model;
pub mod persist;
pub mod policy;
pub mod server;
pub mod store;

pub use config::{Config, ConfigError};
