//! The `[api]` section: where the control API listens, its token and its state directory.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiCfg {
    /// TCP listen address; "" disables TCP. Reads are open when it is a loopback address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Unix socket (reachable from the host even when sluiced runs in a namespace); "" disables.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Bearer token for mutating requests, in a file readable by its owner only (0600). Without
    /// it the API is read-only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the last applied state is kept across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:9800".into()
}
fn default_socket() -> PathBuf {
    "/run/sluice/api.sock".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/sluice".into()
}
/// 256 MiB: a full state of 10,000 Services with 10 endpoints each is ~10 MiB of JSON, and
/// Pods as the syncer sends them add ~2.7 KiB each (20,000 Pods: ~55 MiB, over the 64 MiB this
/// was). Applying holds the body while its items are parsed one at a time, and the stored
/// objects take about as much again.
fn default_max_body() -> usize {
    256 << 20
}

impl Default for ApiCfg {
    fn default() -> Self {
        ApiCfg {
            listen: default_listen(),
            socket: default_socket(),
            token_file: None,
            state_dir: default_state_dir(),
            max_body_bytes: default_max_body(),
        }
    }
}
