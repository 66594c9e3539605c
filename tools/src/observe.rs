//! `sluice observe`: flows as one line each, in the shape Hubble users read,
//! `TIMESTAMP SOURCE -> DESTINATION TYPE VERDICT (details)`, or as JSON (Hubble's field names).

use serde_json::Value;

/// "namespace/pod:port" for a pod, "address:port" otherwise.
fn end(f: &Value, side: &str, ip_key: &str, port_key: &str) -> String {
    let ep = &f[side];
    let ip = f["IP"][ip_key].as_str().unwrap_or("?");
    let name = match (ep["namespace"].as_str(), ep["pod_name"].as_str()) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ if ip.contains(':') => format!("[{ip}]"),
        _ => ip.to_string(),
    };
    let port = f["l4"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|v| v[port_key].as_u64());
    match port {
        Some(p) if p != 0 => format!("{name}:{p}"),
        _ => name,
    }
}

/// One flow as a line.
pub fn line(f: &Value) -> String {
    if let Some(n) = f.pointer("/lost_events/num_events_lost") {
        return format!("EVENTS LOST: {n} flows (this client fell behind)");
    }
    let time = f["time"].as_str().unwrap_or("");
    // 2026-12-01T16:40:00.123456789Z -> 2026-12-01T16:40:00.123Z
    let time = match (time.get(..23), time.ends_with('Z')) {
        (Some(t), true) => format!("{t}Z"),
        _ => time.to_string(),
    };
    let (src, dst) = (
        end(f, "source", "source", "source_port"),
        end(f, "destination", "destination", "destination_port"),
    );
    let verdict = f["verdict"].as_str().unwrap_or("?");
    let kind = match f["event"].as_str() {
        Some("http") => "L7",
        Some("drop") => "drop",
        Some("new") => "new",
        Some("translated") => "lb",
        Some("end") => "end",
        _ => "?",
    };
    let mut details: Vec<String> = Vec::new();
    if let Some(h) = f.pointer("/l7/http") {
        let path = h["url"]
            .as_str()
            .and_then(|u| u.split_once("://"))
            .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_string()))
            .unwrap_or_default();
        let mut s = format!("{} {path}", h["method"].as_str().unwrap_or("?"));
        if let Some(c) = h["code"].as_u64() {
            s.push_str(&format!(" => {c}"));
        }
        details.push(s);
    } else if let Some(r) = f["drop_reason_desc"].as_str() {
        details.push(r.to_string());
    }
    if let Some(p) = f["policy"].as_str() {
        details.push(format!("policy {p}"));
    }
    if let Some(svc) = f.get("destination_service") {
        details.push(format!(
            "service {}/{}",
            svc["namespace"].as_str().unwrap_or(""),
            svc["name"].as_str().unwrap_or("")
        ));
    }
    if let Some(b) = f.pointer("/translated/backend").and_then(Value::as_str) {
        details.push(format!("to {b}"));
    }
    if f.get("l7").is_none() {
        if let Some(s) = f["Summary"].as_str() {
            let s = s.split(" (").next().unwrap_or(s);
            if !s.is_empty() {
                details.push(s.to_string());
            }
        }
    }
    if f["is_reply"].as_bool() == Some(true) {
        details.push("reply".into());
    }
    format!(
        "{time} {src} -> {dst} {kind} {verdict} ({})",
        details.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flows_read_like_hubble() {
        let l7 = json!({
            "time": "2026-12-01T16:40:00.123456789Z", "verdict": "DROPPED", "event": "http",
            "IP": {"source": "10.10.0.2", "destination": "10.20.0.11"},
            "l4": {"TCP": {"source_port": 34521, "destination_port": 80}},
            "source": {"namespace": "app", "pod_name": "frontend-1"},
            "destination": {"namespace": "app", "pod_name": "api-2"},
            "l7": {"http": {"method": "POST", "url": "http://api/admin/delete", "code": 403}},
            "policy": "app/api-l7",
        });
        assert_eq!(
            line(&l7),
            "2026-12-01T16:40:00.123Z app/frontend-1:34521 -> app/api-2:80 L7 DROPPED (POST /admin/delete => 403, policy app/api-l7)"
        );
        let drop = json!({
            "time": "2026-12-01T16:40:01.000000000Z", "verdict": "DROPPED", "event": "drop",
            "IP": {"source": "fd00::9", "destination": "10.20.0.11"},
            "l4": {"TCP": {"source_port": 5000, "destination_port": 8080}},
            "source": {}, "destination": {"namespace": "lab", "pod_name": "be1"},
            "drop_reason_desc": "POLICY_DENIED", "policy": "lab/web", "Summary": "TCP Flags: SYN (POLICY_DENIED)",
        });
        assert_eq!(
            line(&drop),
            "2026-12-01T16:40:01.000Z [fd00::9]:5000 -> lab/be1:8080 drop DROPPED (POLICY_DENIED, policy lab/web, TCP Flags: SYN)"
        );
        assert!(line(&json!({"lost_events": {"num_events_lost": 7}})).contains("7"));
    }
}
