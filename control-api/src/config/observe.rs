//! The `[observe]` section: flow events (issue 7).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObserveCfg {
    /// Whether the workers emit flow events at all (drops, new and ended connections, L7
    /// requests). Off, they skip every emission.
    #[serde(default = "yes")]
    pub flows: bool,
    /// Flows kept in memory for `GET /v1/flows` / `sluice observe`: Hubble keeps 4,096.
    #[serde(default = "default_kept")]
    pub flows_kept: usize,
    /// Also write every flow as a JSON line to this file (for a log shipper); none by default.
    #[serde(default)]
    pub export_file: Option<PathBuf>,
    /// The export file is rotated (file.1 .. file.N) when it reaches this size.
    #[serde(default = "default_export_max")]
    pub export_max_bytes: u64,
    /// Rotated files kept.
    #[serde(default = "default_export_keep")]
    pub export_keep: u32,
}

fn yes() -> bool {
    true
}
fn default_kept() -> usize {
    crate::flows::DEFAULT_KEPT
}
/// 64 MiB: about 100,000 flows a file.
fn default_export_max() -> u64 {
    64 << 20
}
fn default_export_keep() -> u32 {
    5
}

impl Default for ObserveCfg {
    fn default() -> Self {
        ObserveCfg {
            flows: true,
            flows_kept: default_kept(),
            export_file: None,
            export_max_bytes: default_export_max(),
            export_keep: default_export_keep(),
        }
    }
}
