//! The counters as JSON: rewritten atomically every stats interval (temp file + rename) for
//! `sluice stats --file` and as a record after a crash, and served by the control API in
//! `GET /v1/status` (the `counters` member).

use anyhow::{Context, Result};
use serde::Serialize;
use sluice_control::api::StatusSource;
use sluice_dataplane::state::StateHub;
use sluice_dataplane::stats::{WorkerStats, WorkerStatsSnapshot};
use sluice_dataplane::wire::ethernet::format_mac;
use sluice_xdp::Steering;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Reporter {
    pub appliance: String,
    pub started: Instant,
    pub zero_copy: Vec<bool>,
}

#[derive(Serialize)]
struct InterfaceStatus {
    name: String,
    ifindex: u32,
    mac: String,
    xdp_mode: &'static str,
    /// Packets the XDP program redirected into AF_XDP sockets.
    xdp_steered: u64,
    /// Packets it passed to the kernel (not owned).
    xdp_passed: u64,
    /// Owned packets passed to the kernel because no socket was bound on their queue.
    xdp_no_socket: u64,
    /// Owned packets dropped because no socket was bound on their queue while it was held
    /// (sluiced starting: the sockets come after the program).
    xdp_held: u64,
    /// New TCP connections dropped at XDP while the queue's worker was overloaded.
    xdp_syn_shed: u64,
}

#[derive(Serialize)]
struct Totals {
    rx_packets: u64,
    tx_packets: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    dropped: u64,
    drops: BTreeMap<&'static str, u64>,
    /// Policy drops (POLICY_DENIED, POLICY_DENY) by the policy that decided them.
    policy_drops: BTreeMap<String, u64>,
    /// Batch processing time quantiles over all workers, in ns (bucket upper bounds).
    batch_ns: Option<BatchNs>,
}

#[derive(Serialize)]
struct BatchNs {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

#[derive(Serialize)]
struct Status {
    appliance: String,
    pid: u32,
    uptime_s: f64,
    generation: u64,
    interfaces: Vec<InterfaceStatus>,
    workers: Vec<WorkerStatsSnapshot>,
    zero_copy: Vec<bool>,
    totals: Totals,
}

/// What the API reads: the latest document and live worker generations.
pub struct DaemonStatus {
    latest: Mutex<serde_json::Value>,
    workers: Vec<Arc<WorkerStats>>,
    /// For /metrics: the workers' flow rings, the state hub, the appliance's name.
    pub rings: Vec<Arc<sluice_dataplane::flow::FlowRing>>,
    pub hub: Option<Arc<StateHub>>,
    pub appliance: String,
    /// The generation the control loop last synced the XDP steering map to.
    steered: std::sync::atomic::AtomicU64,
}

impl DaemonStatus {
    pub fn new(workers: Vec<Arc<WorkerStats>>) -> Self {
        DaemonStatus {
            latest: Mutex::new(serde_json::json!({})),
            workers,
            rings: Vec::new(),
            hub: None,
            appliance: String::new(),
            steered: std::sync::atomic::AtomicU64::new(0),
        }
    }
    pub fn set_steered(&self, generation: u64) {
        self.steered
            .store(generation, std::sync::atomic::Ordering::Release);
    }
    pub fn set(&self, doc: serde_json::Value) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = doc;
    }
}

impl StatusSource for DaemonStatus {
    fn counters(&self) -> serde_json::Value {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn worker_generations(&self) -> Vec<u64> {
        self.workers.iter().map(|w| w.generation.get()).collect()
    }
    fn steered_generation(&self) -> u64 {
        self.steered.load(std::sync::atomic::Ordering::Acquire)
    }
    fn metrics(&self) -> String {
        let snap = self.hub.as_ref().map(|h| h.current()).unwrap_or_default();
        let interfaces = self.counters()["interfaces"].clone();
        crate::metrics::render(
            &self.appliance,
            &self.workers,
            &self.rings,
            &snap,
            self.steered_generation(),
            &interfaces,
        )
    }
}

impl Reporter {
    /// Writes `doc` to `path` atomically.
    pub fn write(&self, path: &Path, doc: &serde_json::Value) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(doc)?;
        std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// The counters document.
    pub fn document(
        &self,
        hub: &StateHub,
        steering: Option<&Steering>,
        workers: &[Arc<WorkerStats>],
    ) -> Result<serde_json::Value> {
        let snap = hub.current();
        let mut interfaces = Vec::new();
        for (name, ifindex, mode) in steering.into_iter().flat_map(|s| s.interfaces()) {
            let c = steering
                .map(|s| s.counters(name))
                .transpose()?
                .unwrap_or_default();
            let mac = snap
                .ports
                .iter()
                .find(|p| p.name == name)
                .map(|p| format_mac(&p.mac))
                .unwrap_or_default();
            interfaces.push(InterfaceStatus {
                name: name.to_string(),
                ifindex,
                mac,
                xdp_mode: mode.as_str(),
                xdp_steered: c.steered,
                xdp_passed: c.passed,
                xdp_no_socket: c.no_socket,
                xdp_held: c.held,
                xdp_syn_shed: c.syn_shed,
            });
        }
        let batch_ns = crate::metrics::batch_quantiles(workers)
            .map(|[p50, p90, p99, max]| BatchNs { p50, p90, p99, max });
        let workers: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| w.snapshot(i))
            .collect();
        let mut totals = Totals {
            rx_packets: 0,
            tx_packets: 0,
            rx_bytes: 0,
            tx_bytes: 0,
            dropped: 0,
            drops: BTreeMap::new(),
            policy_drops: BTreeMap::new(),
            batch_ns,
        };
        let policy_name = snap.cluster.policy.names_by_slot();
        for w in &workers {
            totals.rx_packets += w.rx_packets;
            totals.tx_packets += w.tx_packets;
            totals.rx_bytes += w.rx_bytes;
            totals.tx_bytes += w.tx_bytes;
            for d in &w.drops {
                totals.dropped += d.packets;
                *totals.drops.entry(d.reason).or_default() += d.packets;
            }
            for (slot, n) in &w.policy_drops {
                // a slot whose policy is gone keeps its count under a name that says so
                let name = match (slot, policy_name.get(slot)) {
                    (_, Some(p)) => p.to_string(),
                    (0, None) => "(other policies)".to_string(),
                    (_, None) => "(deleted policy)".to_string(),
                };
                *totals.policy_drops.entry(name).or_default() += n;
            }
        }
        let status = Status {
            appliance: self.appliance.clone(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            generation: snap.generation,
            interfaces,
            workers,
            zero_copy: self.zero_copy.clone(),
            totals,
        };
        Ok(serde_json::to_value(&status)?)
    }
}
