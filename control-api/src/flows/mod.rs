//! Flows as Hubble shows them (issue 7): the workers' flow events, enriched with what the
//! control plane knows (pods, namespaces, labels, identities, policy and service names),
//! kept in a bounded in-memory store, exported as JSON lines with size-based rotation, and
//! served by `GET /v1/flows` with Hubble-like filters and `follow=true` streaming.
//!
//! Field names follow Hubble's Flow (api/v1/flow/flow.proto, in its JSON form).

mod filter;

pub(crate) use filter::{cidr, in_cidr};
pub use filter::{parse_rfc3339, rfc3339, FlowFilter};

use crate::store::Store;
use serde_json::{json, Map, Value};
use sluice_dataplane::flow::{Drained, EventKind, FlowEvent, HttpEvent};
use sluice_dataplane::state::{Frontend, Snapshot};
use sluice_dataplane::wire::tcp::flags;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Flows the store keeps by default: 16x Hubble's default 4,096 (`[observe] flows_kept`).
pub const DEFAULT_KEPT: usize = 65_536;
/// Live followers may lag this many flows before they miss some (they are told how many).
const FOLLOW_BUFFER: usize = 4096;

/// Where flows are also written as JSON lines: `path`, rotated to `path.1` .. `path.N` once it
/// reaches `max_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
}

struct Exporter {
    cfg: Export,
    file: Option<std::fs::File>,
    size: u64,
}

impl Exporter {
    /// Appends `lines`, rotating first when they would take the file past its size.
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let line = lines;
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.cfg.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size + line.len() as u64 > self.cfg.max_bytes && self.size > 0 {
            self.rotate()?;
            return self.write(line);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line)?;
            self.size += line.len() as u64;
        }
        Ok(())
    }

    /// path.(N-1) -> path.N, ..., path -> path.1; a new path is opened by the next write.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let name = |i: u32| {
            let mut p = self.cfg.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..self.cfg.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        if self.cfg.keep > 0 {
            std::fs::rename(&self.cfg.path, name(1))?;
        } else {
            std::fs::remove_file(&self.cfg.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// The flow store.
pub struct FlowLog {
    /// Each flow as its JSON line (with the newline): ~700 bytes, where a parsed `Value` tree
    /// costs several KiB in small allocations. Queries parse what they filter.
    kept: Mutex<VecDeque<Arc<[u8]>>>,
    capacity: usize,
    live: tokio::sync::broadcast::Sender<Arc<Value>>,
    export: Mutex<Option<Exporter>>,
    /// The appliance's name (Hubble's node_name).
    node: String,
}

impl FlowLog {
    pub fn new(capacity: usize, export: Option<Export>, node: &str) -> FlowLog {
        FlowLog {
            kept: Mutex::new(VecDeque::with_capacity(capacity.min(DEFAULT_KEPT))),
            capacity: capacity.max(1),
            live: tokio::sync::broadcast::channel(FOLLOW_BUFFER).0,
            export: Mutex::new(export.map(|cfg| Exporter {
                cfg,
                file: None,
                size: 0,
            })),
            node: node.to_string(),
        }
    }

    /// Enriches and keeps `events` (from the workers' rings), exports them and hands them to
    /// live followers.
    pub fn ingest(&self, store: &Mutex<Store>, snap: &Snapshot, events: &[Drained]) {
        if events.is_empty() {
            return;
        }
        let policies = snap.cluster.policy.names_by_slot();
        let flows: Vec<Arc<Value>> = {
            let store = store.lock().unwrap_or_else(|p| p.into_inner());
            let ctx = Ctx {
                store: &store,
                snap,
                policies: &policies,
                node: &self.node,
            };
            events
                .iter()
                .map(|(e, h)| Arc::new(ctx.flow(e, h.as_ref())))
                .collect()
        };
        let lines: Vec<Arc<[u8]>> = flows
            .iter()
            .map(|f| {
                let mut b = serde_json::to_vec(&**f).unwrap_or_default();
                b.push(b'\n');
                Arc::from(b)
            })
            .collect();
        if let Some(x) = self
            .export
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // one write per drain, not per flow
            if let Err(e) = x.write(&lines.concat()) {
                tracing::warn!(error = %e, path = %x.cfg.path.display(), "flow export failed");
            }
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        for (f, line) in flows.into_iter().zip(lines) {
            if kept.len() == self.capacity {
                kept.pop_front();
            }
            // no follower is not an error
            let _ = self.live.send(f);
            kept.push_back(line);
        }
    }

    /// The kept flows that match (JSON lines), oldest first; the last `last` of them when given.
    pub fn query(&self, filter: &FlowFilter, last: Option<usize>) -> Vec<Arc<[u8]>> {
        let kept: Vec<Arc<[u8]>> = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        // parsed outside the lock: the collector keeps ingesting meanwhile
        let mut out: Vec<Arc<[u8]>> = kept
            .into_iter()
            .filter(|l| serde_json::from_slice::<Value>(l).is_ok_and(|f| filter.matches(&f)))
            .collect();
        if let Some(n) = last {
            out.drain(..out.len().saturating_sub(n));
        }
        out
    }

    /// Replaces the export (a config reload): the next flows go to the new file, if any.
    pub fn set_export(&self, export: Option<Export>) {
        let mut x = self.export.lock().unwrap_or_else(|p| p.into_inner());
        if x.as_ref().map(|e| &e.cfg) != export.as_ref() {
            *x = export.map(|cfg| Exporter {
                cfg,
                file: None,
                size: 0,
            });
        }
    }

    /// Flows from now on (for `follow=true`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Value>> {
        self.live.subscribe()
    }

    pub fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What enrichment reads.
struct Ctx<'a> {
    store: &'a Store,
    snap: &'a Snapshot,
    policies: &'a HashMap<u16, &'a str>,
    node: &'a str,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        1 => "ICMPv4",
        58 => "ICMPv6",
        132 => "SCTP",
        _ => "",
    }
}

fn tcp_flags(f: u8) -> Map<String, Value> {
    let mut m = Map::new();
    for (bit, name) in [
        (flags::SYN, "SYN"),
        (flags::ACK, "ACK"),
        (flags::FIN, "FIN"),
        (flags::RST, "RST"),
        (flags::PSH, "PSH"),
    ] {
        if f & bit != 0 {
            m.insert(name.into(), Value::Bool(true));
        }
    }
    m
}

impl Ctx<'_> {
    /// Hubble's Endpoint for an address: identity, and the pod's namespace, name and labels.
    fn endpoint(&self, a: IpAddr, identity: u32) -> Value {
        let id = if identity != 0 {
            identity
        } else {
            sluice_dataplane::policy::identity_of(self.snap, a)
        };
        let mut e = json!({"identity": id, "labels": self.store.identity_labels(id)});
        if let Some((ns, name)) = self.store.pod_at(a).and_then(|p| p.split_once('/')) {
            e["namespace"] = json!(ns);
            e["pod_name"] = json!(name);
        }
        e
    }

    fn flow(&self, e: &FlowEvent, http: Option<&HttpEvent>) -> Value {
        let dst_addr = e.backend.map_or(e.dst, |b| b.0);
        let src = self.endpoint(e.src, e.src_identity);
        let dst = self.endpoint(dst_addr, 0);
        let verdict = match e.kind {
            EventKind::Drop => "DROPPED",
            EventKind::Translated => "TRANSLATED",
            EventKind::Http if http.is_some_and(|h| h.code == 403) => "DROPPED",
            _ => "FORWARDED",
        };
        let l4_ports = json!({"source_port": e.sport, "destination_port": e.dport});
        let l4 = match e.proto {
            6 => {
                let mut t = l4_ports;
                t["flags"] = Value::Object(tcp_flags(e.tcp_flags));
                json!({"TCP": t})
            }
            17 => json!({"UDP": l4_ports}),
            132 => json!({"SCTP": l4_ports}),
            1 | 58 => json!({proto_name(e.proto): {"type": e.sport >> 8, "code": e.sport & 0xff}}),
            _ => json!({}),
        };
        // toward a pod we know: its ingress; from one: its egress
        let direction = if dst.get("pod_name").is_some() {
            "INGRESS"
        } else if src.get("pod_name").is_some() {
            "EGRESS"
        } else {
            "TRAFFIC_DIRECTION_UNKNOWN"
        };
        let mut f = json!({
            "time": rfc3339(e.time_ns),
            "verdict": verdict,
            "IP": {
                "source": e.src.to_string(),
                "destination": e.dst.to_string(),
                "ipVersion": if e.src.is_ipv4() { "IPv4" } else { "IPv6" },
            },
            "l4": l4,
            "source": src,
            "destination": dst,
            "Type": if http.is_some() { "L7" } else { "L3_L4" },
            // sluice's own: which event this is (drop, new, translated, end, http)
            "event": match e.kind {
                EventKind::Drop => "drop",
                EventKind::New => "new",
                EventKind::Translated => "translated",
                EventKind::End => "end",
                EventKind::Http => "http",
            },
            "node_name": self.node,
            "is_reply": e.is_reply,
            "traffic_direction": direction,
            "trace_observation_point": if e.kind == EventKind::Drop { "UNKNOWN_POINT" } else { "FROM_NETWORK" },
            "event_type": {"type": match e.kind {
                EventKind::Drop => 1,   // CILIUM_NOTIFY_DROP
                EventKind::Http => 129, // L7
                _ => 4,                 // CILIUM_NOTIFY_TRACE
            }},
            "interface": {
                "index": e.port,
                "name": self.snap.ports.get(usize::from(e.port)).map(|p| p.name.as_str()).unwrap_or(""),
            },
        });
        let m = f.as_object_mut().expect("an object");
        if e.kind == EventKind::Drop {
            let name = sluice_dataplane::DropReason::ALL
                .iter()
                .find(|r| r.code() == e.drop_reason)
                .map_or("UNKNOWN_REASON", |r| r.name());
            m.insert("drop_reason".into(), json!(e.drop_reason));
            m.insert("drop_reason_desc".into(), json!(name));
        }
        if let Some(policy) = self.policies.get(&e.policy_slot) {
            let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
            let side = if direction == "EGRESS" {
                "egress"
            } else {
                "ingress"
            };
            let how = if verdict == "DROPPED" {
                "denied"
            } else {
                "allowed"
            };
            m.insert(
                format!("{side}_{how}_by"),
                json!([{"name": name, "namespace": ns}]),
            );
            m.insert("policy".into(), json!(policy));
        }
        if let Some((fa, fp)) = e.frontend {
            let fe = Frontend {
                addr: fa,
                proto: e.proto,
                port: fp,
            };
            if let Some(svc) = self.snap.cluster.services.get(&fe) {
                let (ns, name) = svc.name.split_once('/').unwrap_or(("", &svc.name));
                m.insert(
                    "destination_service".into(),
                    json!({"name": name, "namespace": ns}),
                );
            }
            if let Some((ba, bp)) = e.backend {
                m.insert(
                    "translated".into(),
                    json!({"frontend": format!("{}", sock(fa, fp)), "backend": format!("{}", sock(ba, bp))}),
                );
            }
        }
        if let Some(h) = http {
            let host = String::from_utf8_lossy(h.host());
            let host = if host.is_empty() {
                e.dst.to_string()
            } else {
                host.into_owned()
            };
            let mut http = json!({
                "method": String::from_utf8_lossy(h.method()),
                "url": format!("http://{host}{}", String::from_utf8_lossy(h.path())),
                "protocol": "HTTP/1.1",
            });
            if h.code != 0 {
                http["code"] = json!(h.code);
            }
            m.insert("l7".into(), json!({"type": "REQUEST", "http": http}));
        }
        let summary = summary(e, http, verdict, m.get("drop_reason_desc"));
        m.insert("Summary".into(), json!(summary));
        f
    }
}

fn sock(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{p}"),
        IpAddr::V6(_) => format!("[{a}]:{p}"),
    }
}

/// Hubble's one-line summary of a flow.
fn summary(
    e: &FlowEvent,
    http: Option<&HttpEvent>,
    verdict: &str,
    reason: Option<&Value>,
) -> String {
    if let Some(h) = http {
        let what = format!(
            "{} {}",
            String::from_utf8_lossy(h.method()),
            String::from_utf8_lossy(h.path())
        );
        return if h.code != 0 {
            format!("HTTP/1.1 {what} => {}", h.code)
        } else {
            format!("HTTP/1.1 {what}")
        };
    }
    let mut s = match e.proto {
        6 => {
            let f: Vec<String> = tcp_flags(e.tcp_flags).keys().cloned().collect();
            format!("TCP Flags: {}", f.join(", "))
        }
        p => proto_name(p).to_string(),
    };
    if let Some(r) = reason.and_then(Value::as_str) {
        s = format!("{s} ({r})");
    } else if verdict == "TRANSLATED" {
        if let Some((ba, bp)) = e.backend {
            s = format!("{s} -> {}", sock(ba, bp));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_the_newest_and_export_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("sluice-flows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let log = FlowLog::new(
            3,
            Some(Export {
                path: path.clone(),
                max_bytes: 2000,
                keep: 2,
            }),
            "test",
        );
        let store = Mutex::new(Store::new(Vec::new()));
        let snap = sluice_dataplane::fixtures::service_snapshot([1, 1, 2]);
        let mut rx = log.subscribe();
        for i in 0..40u16 {
            let mut e = FlowEvent::new(EventKind::Drop);
            e.drop_reason = 169;
            e.sport = i;
            e.proto = 17;
            log.ingest(&store, &snap, &[(e, None)]);
        }
        assert_eq!(log.len(), 3, "bounded");
        let all: Vec<Value> = log
            .query(&FlowFilter::default(), None)
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(all[2]["l4"]["UDP"]["source_port"], 39, "the newest kept");
        assert_eq!(all[0]["drop_reason_desc"], "FIB_LOOKUP_FAILED");
        assert_eq!(log.query(&FlowFilter::default(), Some(1)).len(), 1);
        assert_eq!(
            rx.try_recv().unwrap()["l4"]["UDP"]["source_port"],
            0,
            "followers see all"
        );
        let sizes: Vec<u64> = ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"]
            .iter()
            .map(|n| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0))
            .collect();
        assert!(sizes.iter().all(|s| *s > 0 && *s <= 2000), "{sizes:?}");
        assert!(!dir.join("flows.jsonl.3").exists(), "keep = 2");
        let lines = std::fs::read_to_string(&path).unwrap();
        for l in lines.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["verdict"], "DROPPED");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
