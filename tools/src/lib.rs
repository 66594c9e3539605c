//! Library side of the `sluice` CLI (kept testable without a terminal).

pub mod capture;
pub mod client;
pub mod observe;
pub mod resources;
pub mod sync;

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_control::Config;
use sluice_dataplane::io::pcap::{PcapIo, PcapReader, PcapWriter};
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::{PortInfo, Publisher, RouteTable, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, DropReason, MAX_BATCH};
use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

/// Offline snapshots carry no kernel state: routes must have a static next-hop MAC, and the
/// interfaces' own MACs are unknown, so they read as 02:00:00:00:00:<port> (locally administered).
pub fn offline_snapshot(cfg: &Config) -> Result<Snapshot> {
    let ports: Vec<PortInfo> = cfg
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, itf)| PortInfo {
            name: itf.name.clone(),
            mac: [0x02, 0, 0, 0, 0, i as u8],
        })
        .collect();
    let routes = cfg
        .checked_routes()
        .map_err(|e| anyhow::anyhow!("config error: {e}"))?;
    Ok(Snapshot {
        generation: 0,
        ports: Arc::new(ports),
        routes: Arc::new(RouteTable::new(routes)),
        overlay: Arc::new(
            cfg.overlay()
                .map_err(|e| anyhow::anyhow!("config error: {e}"))?,
        ),
        ..Snapshot::default()
    })
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub received: u64,
    pub transmitted: u64,
    pub dropped: u64,
    pub oversized: u64,
    pub drops: Vec<(&'static str, u64)>,
}

/// Reads `input`, runs the pipeline as if every packet arrived on `port`, writes `output`.
pub fn replay(cfg: &Config, port: u16, input: &Path, output: &Path) -> Result<ReplayReport> {
    let snap = offline_snapshot(cfg)?;
    let publisher = Publisher::new(snap);
    let rd = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let reader = PcapReader::new(BufReader::new(rd))
        .with_context(|| format!("reading {}", input.display()))?;
    let wr =
        std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let writer = PcapWriter::new(BufWriter::new(wr))?;
    let mut io = PcapIo::new(reader, writer, port);
    let mut pipeline = Pipeline::new();
    let mut batch = Batch::new(MAX_BATCH);
    let stats = WorkerStats::default();
    while !io.done() {
        process_batch(
            &mut io,
            &mut pipeline,
            &publisher,
            &mut batch,
            &stats,
            &mut NoNeighborRequests,
        );
    }
    if let Some(e) = io.error.take() {
        return Err(e).with_context(|| format!("replaying {}", input.display()));
    }
    let oversized = io.oversized;
    io.into_writer()
        .flush()
        .with_context(|| format!("writing {}", output.display()))?;
    let drops: Vec<_> = DropReason::ALL
        .iter()
        .filter(|r| stats.drops(**r) > 0)
        .map(|r| (r.name(), stats.drops(*r)))
        .collect();
    Ok(ReplayReport {
        received: stats.rx_packets.get(),
        transmitted: stats.tx_packets.get(),
        dropped: drops.iter().map(|d| d.1).sum(),
        oversized,
        drops,
    })
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Renders the daemon's stats document as the tables `sluice stats` prints.
pub fn stats_table(v: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "appliance {}  pid {}  up {:.0}s  generation {}",
        v["appliance"].as_str().unwrap_or("?"),
        u(v, "pid"),
        v["uptime_s"].as_f64().unwrap_or(0.0),
        u(v, "generation")
    );
    let _ = writeln!(
        s,
        "\nINTERFACE     XDP       STEERED      PASSED   NO-SOCKET    SYN-SHED  MAC"
    );
    for i in v["interfaces"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{:<12}  {:<7} {:>9} {:>11} {:>11} {:>11}  {}",
            i["name"].as_str().unwrap_or("?"),
            i["xdp_mode"].as_str().unwrap_or("?"),
            u(i, "xdp_steered"),
            u(i, "xdp_passed"),
            u(i, "xdp_no_socket"),
            u(i, "xdp_syn_shed"),
            i["mac"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "\nWORKER   RX PKTS    TX PKTS     RX BYTES     TX BYTES  WAKEUPS  SLEEPS  GEN  RXRING-FULL  FILL-EMPTY"
    );
    for w in v["workers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{:<6} {:>9} {:>10} {:>12} {:>12} {:>8} {:>7} {:>4} {:>12} {:>11}",
            u(w, "worker"),
            u(w, "rx_packets"),
            u(w, "tx_packets"),
            u(w, "rx_bytes"),
            u(w, "tx_bytes"),
            u(w, "wakeups"),
            u(w, "sleeps"),
            u(w, "generation"),
            u(w, "xsk_rx_ring_full"),
            u(w, "xsk_fill_ring_empty")
        );
    }
    let t = &v["totals"];
    let _ = writeln!(
        s,
        "\nTOTAL rx {} tx {} dropped {}",
        u(t, "rx_packets"),
        u(t, "tx_packets"),
        u(t, "dropped")
    );
    if let Some(d) = t["drops"].as_object() {
        for (reason, n) in d {
            let _ = writeln!(s, "  dropped {:>10}  {}", n.as_u64().unwrap_or(0), reason);
        }
    }
    if let Some(d) = t["policy_drops"].as_object().filter(|d| !d.is_empty()) {
        let _ = writeln!(s, "POLICY DROPS (by the policy that decided)");
        for (policy, n) in d {
            let _ = writeln!(s, "  dropped {:>10}  {}", n.as_u64().unwrap_or(0), policy);
        }
    }
    s
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_table_shows_interfaces_workers_and_drops() {
        let v: Value = serde_json::from_str(
            r#"{"appliance":"lab","pid":7,"uptime_s":3.2,"generation":4,
                "interfaces":[{"name":"eth-cli","xdp_mode":"native","xdp_steered":10,"xdp_passed":2,"xdp_no_socket":1,"xdp_syn_shed":77,"mac":"02:00:00:00:00:01"}],
                "workers":[{"worker":0,"rx_packets":10,"tx_packets":9,"rx_bytes":640,"tx_bytes":576,"wakeups":3,"sleeps":1,"generation":4,"xsk_rx_ring_full":5,"xsk_fill_ring_empty":0}],
                "totals":{"rx_packets":10,"tx_packets":9,"dropped":1,"drops":{"TTL_EXCEEDED":1},
                          "policy_drops":{"lab/web-from-client":4}}}"#,
        )
        .unwrap();
        let t = stats_table(&v);
        assert!(
            t.contains("appliance lab  pid 7  up 3s  generation 4"),
            "{t}"
        );
        assert!(
            t.lines().any(|l| l.starts_with("eth-cli")
                && l.contains("native")
                && l.contains(" 10 ")
                && l.contains(" 77  02:00")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with('0') && l.trim_end().ends_with("5           0")),
            "{t}"
        );
        assert!(t.contains("dropped          1  TTL_EXCEEDED"), "{t}");
        assert!(t.contains("dropped          4  lab/web-from-client"), "{t}");
        // a document missing fields renders zeros, not a panic
        assert!(stats_table(&serde_json::json!({})).contains("TOTAL rx 0 tx 0 dropped 0"));
    }
}
