//! Flows as Hubble shows them (issue 7): the workers' flow events, enriched with what the
//! control plane knows (pods, namespaces, labels, identities, policy and service names),
//! kept in a bounded in-memory store, exported as JSON lines with size-based rotation, and
//! served by `GET /v1/flows` with Hubble-like filters and `follow=true` streaming.
//!
//! Field names follow Hubble's Flow (api/v1/flow/flow.proto, in its JSON form).

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

/// RFC 3339 UTC with nanoseconds, from ns since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// ns since the epoch from RFC 3339 (`2026-12-01T10:00:00Z`, fraction and offset allowed).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i.min(start + 9))?;
        frac_ns = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o.get(1..3)?.parse::<i64>().ok()? * 3600
                + o.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // days from civil
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| s * 1_000_000_000 + frac_ns as u64)
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

/// Filters of `GET /v1/flows`, as query parameters (Hubble's flags by the same names).
#[derive(Debug, Default, Clone)]
pub struct FlowFilter {
    /// Either end in this namespace.
    namespace: Option<String>,
    /// Either end this pod ("name" or "namespace/name"); `from_pod` / `to_pod` for one end.
    pod: Option<String>,
    from_pod: Option<String>,
    to_pod: Option<String>,
    identity: Option<u64>,
    /// Either end inside this address or CIDR; `from_ip` / `to_ip` for one end.
    ip: Option<(IpAddr, u8)>,
    from_ip: Option<(IpAddr, u8)>,
    to_ip: Option<(IpAddr, u8)>,
    port: Option<u64>,
    protocol: Option<String>,
    verdict: Option<String>,
    drop_reason: Option<String>,
    http_method: Option<String>,
    /// A regular expression the request path must match (unanchored, as Hubble's).
    http_path: Option<regex::Regex>,
    /// An exact code ("403") or a class ("4+").
    http_status: Option<String>,
    reply: Option<bool>,
    /// Only flows at or after this time (ns since the epoch).
    since: Option<u64>,
    policy: Option<String>,
}

/// An address (a host prefix) or a CIDR, as filters take them.
pub(crate) fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let a: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IP or CIDR"))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    Ok((a, len))
}

/// Whether `a` is inside `net/len` (families must match).
pub(crate) fn in_cidr(a: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// "30s", "5m", "2h" -> seconds.
fn duration_s(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    })
}

impl FlowFilter {
    /// Reads the query parameters; an unknown or malformed one is an error naming it. Returns
    /// the filter, `last` and `follow`.
    pub fn from_query(
        q: &HashMap<String, String>,
    ) -> Result<(FlowFilter, Option<usize>, bool), String> {
        let mut f = FlowFilter::default();
        let (mut last, mut follow) = (None, false);
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: {v:?} is not a number"))
        };
        let boolean = |k: &str, v: &str| match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{k}: {v:?} is not true or false")),
        };
        for (k, v) in q {
            let v = v.trim();
            match k.as_str() {
                "namespace" => f.namespace = Some(v.into()),
                "pod" => f.pod = Some(v.into()),
                "from_pod" => f.from_pod = Some(v.into()),
                "to_pod" => f.to_pod = Some(v.into()),
                "identity" => f.identity = Some(num(k, v)?),
                "ip" => f.ip = Some(cidr(v)?),
                "from_ip" => f.from_ip = Some(cidr(v)?),
                "to_ip" => f.to_ip = Some(cidr(v)?),
                "port" => f.port = Some(num(k, v)?),
                "protocol" => f.protocol = Some(v.to_ascii_uppercase()),
                "verdict" => {
                    let v = v.to_ascii_uppercase();
                    if !["FORWARDED", "DROPPED", "TRANSLATED", "ERROR"].contains(&v.as_str()) {
                        return Err(format!(
                            "verdict: {v:?} is not FORWARDED, DROPPED, TRANSLATED or ERROR"
                        ));
                    }
                    f.verdict = Some(v);
                }
                "drop_reason" => f.drop_reason = Some(v.to_ascii_uppercase()),
                "http_method" => f.http_method = Some(v.to_ascii_uppercase()),
                "http_path" => {
                    f.http_path = Some(regex::Regex::new(v).map_err(|e| format!("http_path: {e}"))?)
                }
                "http_status" => {
                    let ok = v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit())
                        || v.len() == 2 && v.as_bytes()[0].is_ascii_digit() && v.ends_with('+');
                    if !ok {
                        return Err(format!(
                            "http_status: {v:?} is not a code (403) or class (4+)"
                        ));
                    }
                    f.http_status = Some(v.into());
                }
                "reply" => f.reply = Some(boolean(k, v)?),
                "since" => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    f.since = Some(match duration_s(v) {
                        Some(s) => now.saturating_sub(s * 1_000_000_000),
                        None => parse_rfc3339(v).ok_or_else(|| {
                            format!("since: {v:?} is not a duration (30s, 5m, 2h) or RFC 3339 time")
                        })?,
                    });
                }
                "policy" => f.policy = Some(v.into()),
                "last" => last = Some(num(k, v)? as usize),
                "follow" => follow = boolean(k, v)?,
                other => return Err(format!("unknown filter {other:?}")),
            }
        }
        Ok((f, last, follow))
    }

    /// Whether flow `f` passes every filter given.
    pub fn matches(&self, f: &Value) -> bool {
        let s = |p: &str| f.pointer(p).and_then(Value::as_str);
        let ep_pod = |side: &str, want: &str| {
            let ns = s(&format!("/{side}/namespace")).unwrap_or("");
            let name = s(&format!("/{side}/pod_name")).unwrap_or("");
            !name.is_empty()
                && match want.split_once('/') {
                    Some((wn, wp)) => wn == ns && wp == name,
                    None => want == name,
                }
        };
        let ip_of = |p: &str| s(p).and_then(|a| a.parse::<IpAddr>().ok());
        let ip_in = |p: &str, c: (IpAddr, u8)| ip_of(p).is_some_and(|a| in_cidr(a, c));
        let l4 = f.get("l4").and_then(Value::as_object);
        let proto = l4.and_then(|m| m.keys().next()).map(String::as_str);
        let port_of = |k: &str| {
            l4.and_then(|m| m.values().next())
                .and_then(|v| v.get(k))
                .and_then(Value::as_u64)
        };
        self.namespace.as_ref().is_none_or(|n| {
            s("/source/namespace") == Some(n) || s("/destination/namespace") == Some(n)
        }) && self
            .pod
            .as_ref()
            .is_none_or(|p| ep_pod("source", p) || ep_pod("destination", p))
            && self.from_pod.as_ref().is_none_or(|p| ep_pod("source", p))
            && self
                .to_pod
                .as_ref()
                .is_none_or(|p| ep_pod("destination", p))
            && self.identity.is_none_or(|id| {
                f.pointer("/source/identity").and_then(Value::as_u64) == Some(id)
                    || f.pointer("/destination/identity").and_then(Value::as_u64) == Some(id)
            })
            && self
                .ip
                .is_none_or(|c| ip_in("/IP/source", c) || ip_in("/IP/destination", c))
            && self.from_ip.is_none_or(|c| ip_in("/IP/source", c))
            && self.to_ip.is_none_or(|c| ip_in("/IP/destination", c))
            && self.port.is_none_or(|p| {
                port_of("source_port") == Some(p) || port_of("destination_port") == Some(p)
            })
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| proto.is_some_and(|x| x.eq_ignore_ascii_case(p)))
            && self
                .verdict
                .as_ref()
                .is_none_or(|v| s("/verdict") == Some(v))
            && self
                .drop_reason
                .as_ref()
                .is_none_or(|r| s("/drop_reason_desc") == Some(r))
            && self
                .http_method
                .as_ref()
                .is_none_or(|m| s("/l7/http/method") == Some(m))
            && self.http_path.as_ref().is_none_or(|re| {
                s("/l7/http/url")
                    .map(|u| u.split_once("://").map_or(u, |(_, r)| r))
                    .map(|r| r.find('/').map_or("/", |i| &r[i..]))
                    .is_some_and(|p| re.is_match(p))
            })
            && self.http_status.as_ref().is_none_or(|want| {
                let code = f.pointer("/l7/http/code").and_then(Value::as_u64);
                match (want.strip_suffix('+'), code) {
                    (Some(class), Some(c)) => (c / 100).to_string() == class,
                    (None, Some(c)) => c.to_string() == *want,
                    (_, None) => false,
                }
            })
            && self
                .reply
                .is_none_or(|r| f.get("is_reply").and_then(Value::as_bool) == Some(r))
            && self
                .since
                .is_none_or(|t| s("/time").and_then(parse_rfc3339).is_some_and(|ft| ft >= t))
            && self.policy.as_ref().is_none_or(|p| s("/policy") == Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        for ns in [0u64, 1_764_590_400_123_456_789, 951_782_400_000_000_001] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(
            rfc3339(1_764_590_400_000_000_000),
            "2025-12-01T12:00:00.000000000Z"
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00+01:00"),
            Some(951_778_800_000_000_000)
        );
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    fn q(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_match_hubble_fields_and_bad_ones_are_named() {
        let flow = json!({
            "time": "2026-12-01T10:00:00.000000000Z",
            "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED", "is_reply": false,
            "IP": {"source": "10.10.0.2", "destination": "10.20.0.11"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
            "source": {"identity": 300, "namespace": "lab", "pod_name": "client"},
            "destination": {"identity": 301, "namespace": "lab", "pod_name": "be1"},
            "l7": {"http": {"method": "POST", "url": "http://10.20.0.11/admin/delete", "code": 403}},
            "policy": "lab/web-l7",
        });
        let yes = [
            vec![("verdict", "dropped"), ("drop_reason", "policy_denied")],
            vec![
                ("namespace", "lab"),
                ("pod", "lab/be1"),
                ("from_pod", "client"),
            ],
            vec![
                ("ip", "10.20.0.0/24"),
                ("to_ip", "10.20.0.11"),
                ("port", "80"),
            ],
            vec![("protocol", "tcp"), ("identity", "300"), ("reply", "false")],
            vec![
                ("http_method", "post"),
                ("http_path", "^/admin/"),
                ("http_status", "4+"),
            ],
            vec![("since", "2026-12-01T09:59:59Z"), ("policy", "lab/web-l7")],
        ];
        for kv in yes {
            let (f, _, _) = FlowFilter::from_query(&q(&kv)).unwrap();
            assert!(f.matches(&flow), "{kv:?}");
        }
        let no = [
            vec![("verdict", "FORWARDED")],
            vec![("to_pod", "client")],
            vec![("from_ip", "10.20.0.0/24")],
            vec![("port", "81")],
            vec![("protocol", "udp")],
            vec![("http_status", "200")],
            vec![("http_path", "^/api")],
            vec![("since", "1m")],
            vec![("reply", "true")],
        ];
        for kv in no {
            let (f, _, _) = FlowFilter::from_query(&q(&kv)).unwrap();
            assert!(!f.matches(&flow), "{kv:?}");
        }
        for (k, v) in [
            ("verdict", "MAYBE"),
            ("ip", "10.0.0.0/33"),
            ("port", "x"),
            ("http_status", "4xx"),
            ("since", "soon"),
            ("colour", "red"),
        ] {
            let e = FlowFilter::from_query(&q(&[(k, v)])).unwrap_err();
            assert!(e.contains(k) || e.contains(v), "{k}={v}: {e}");
        }
        let (_, last, follow) =
            FlowFilter::from_query(&q(&[("last", "5"), ("follow", "true")])).unwrap();
        assert_eq!((last, follow), (Some(5), true));
    }

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
