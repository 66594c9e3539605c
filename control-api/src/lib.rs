//! `sluice-control`: the control plane's model. For now the appliance config file; the REST API,
//! the Kubernetes object model and persistence join it (issue: control API). It never touches
//! packets.

pub mod config;

pub use config::{Config, ConfigError};
