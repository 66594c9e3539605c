//! Flows in the lab (issue 7): `sluice observe -f --verdict DROPPED` shows a policy drop, with
//! its reason and the policy's name, while it happens; L7 refusals show as L7 flows with their
//! method, path and 403; `GET /v1/flows` filters and refuses bad filters.

mod common;

use common::{api, apply, lab_config, Lab, SERIAL};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `sluice` CLI next to `sluiced` (the workspace build makes both).
fn sluice_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_sluiced")).with_file_name("sluice");
    assert!(
        p.exists(),
        "{} missing: build the workspace first (make test does)",
        p.display()
    );
    p
}

/// Lines from `rx` until one contains every piece of `want` (or the deadline): that line.
fn wait_line(rx: &mpsc::Receiver<String>, want: &[&str], seen: &mut Vec<String>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(l) = rx.recv_timeout(left) else { break };
        seen.push(l.clone());
        if want.iter().all(|w| l.contains(w)) {
            return Some(l);
        }
    }
    None
}

#[test]
fn observe_shows_policy_drops_and_l7_refusals_as_they_happen() {
    let _g = lock();
    let Some(lab) = Lab::up("obs", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    apply(&lab, "lab-cluster.yaml");
    apply(&lab, "lab-policy.yaml");
    apply(&lab, "lab-policy-l7.yaml");
    let server = format!("unix:{}", lab.dir.join("api.sock").display());
    let mut observe = Command::new(sluice_bin())
        .args(["observe", "-f", "--verdict", "DROPPED"])
        .env("SLUICE_SERVER", &server)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice observe");
    let (tx, rx) = mpsc::channel();
    let out = observe.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300)); // subscribed

    let mut seen = Vec::new();
    // an L7 refusal through the service
    let o = lab.exec(
        "cli",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            "http://10.96.0.80/admin/delete",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Access denied");
    let l7 = wait_line(
        &rx,
        &[
            "lab/client:",
            "L7 DROPPED (POST /admin/delete => 403, policy lab/web-from-client",
        ],
        &mut seen,
    );
    assert!(
        l7.is_some(),
        "no L7 drop line; saw {seen:#?}; {}",
        d.log_text()
    );
    assert!(
        l7.as_deref().is_some_and(|l| l.contains("-> lab/be")),
        "the destination is the backend pod: {l7:?}"
    );
    // an L3/L4 policy drop: the client relabelled
    let relabel = serde_json::json!({"kind": "Pod",
        "metadata": {"name": "client", "namespace": "lab", "labels": {"app": "intruder"}},
        "status": {"podIP": "10.10.0.2"}});
    let a = api(&lab)
        .request("PUT", "/v1/pods/lab/client?wait=true", Some(&relabel))
        .expect("API");
    assert!(a.ok(), "{}", a.error_text());
    let o = lab.exec("cli", &["curl", "-s", "-m", "2", "http://10.20.0.11/"]);
    assert!(!o.status.success());
    let drop = wait_line(
        &rx,
        &[
            "lab/client:",
            "-> lab/be1:80 drop DROPPED (POLICY_DENIED, policy lab/web-from-client",
        ],
        &mut seen,
    );
    assert!(drop.is_some(), "no policy drop line; saw {seen:#?}");
    assert!(
        seen.iter().all(|l| l.contains(" DROPPED ")),
        "--verdict DROPPED shows drops only: {seen:#?}"
    );
    let _ = observe.kill();
    let _ = observe.wait();
    eprintln!("sluice observe -f --verdict DROPPED:\n{}", seen.join("\n"));

    // the kept flows, as Hubble JSON, filtered
    let o = Command::new(sluice_bin())
        .args([
            "observe",
            "-o",
            "json",
            "--http-status",
            "403",
            "--last",
            "5",
        ])
        .env("SLUICE_SERVER", &server)
        .output()
        .expect("sluice observe");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f = &lines[0];
    assert_eq!(f["Type"], "L7");
    assert_eq!(f["l7"]["http"]["method"], "POST");
    assert_eq!(f["l7"]["http"]["code"], 403);
    assert_eq!(f["source"]["pod_name"], "client");
    assert_eq!(f["destination_service"]["name"], "web");
    assert_eq!(f["ingress_denied_by"][0]["name"], "web-from-client");
    // new connections were seen too, and a bad filter is refused by name
    let all = api(&lab)
        .request("GET", "/v1/flows?verdict=TRANSLATED&last=100", None)
        .expect("API");
    assert!(a.ok());
    assert!(
        String::from_utf8_lossy(&all.body).contains("\"destination_service\""),
        "{}",
        String::from_utf8_lossy(&all.body)
    );
    let bad = api(&lab)
        .request("GET", "/v1/flows?verdict=MAYBE", None)
        .expect("API");
    assert_eq!(bad.status, 400);
    assert!(bad.error_text().contains("verdict"), "{}", bad.error_text());

    // /metrics parses as Prometheus text and says the same
    let m = api(&lab).request("GET", "/metrics", None).expect("API");
    assert!(m.ok());
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(
        value("sluice_drops_total", Some(("reason", "POLICY_DENIED"))) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            "sluice_policy_drops_total",
            Some(("policy", "lab/web-from-client"))
        ) >= 2.0,
        "{text}"
    );
    let ingress_denied = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "sluice_drops_total"
                && s.labels.get("reason") == Some("POLICY_DENIED")
                && s.labels.get("direction") == Some("ingress")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        });
    assert!(
        ingress_denied >= Some(1.0),
        "the web pods' ingress policy decided: {text}"
    );
    assert!(value("sluice_nat_ports_per_backend", None) > 0.0, "{text}");
    assert!(value("sluice_l7_refused_total", None) >= 1.0);
    assert!(value("sluice_worker_rx_packets_total", Some(("worker", "0"))) > 0.0);
    assert!(value("sluice_conntrack_capacity", None) > 0.0);
    assert!(value("sluice_flow_events_total", None) >= 3.0);
    assert!(
        value("sluice_xdp_packets_total", Some(("result", "steered"))) > 0.0,
        "the XDP program's counters: {text}"
    );
    assert_eq!(
        value("sluice_xdp_packets_total", Some(("result", "syn_shed"))),
        0.0
    );
    let batches = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sluice_batch_duration_seconds")
        .expect("the batch time histogram");
    match &batches.value {
        prometheus_parse::Value::Histogram(b) => {
            assert!(b.last().is_some_and(|c| c.count > 0.0), "{b:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // bounded labels: no address anywhere
    for s in &scrape.samples {
        for v in s.labels.values() {
            assert!(
                v.parse::<std::net::IpAddr>().is_err(),
                "an address label: {s:?}"
            );
        }
    }
}

#[test]
fn capture_writes_packets_before_and_after_rewriting_as_pcapng_for_tshark() {
    let _g = lock();
    let Some(lab) = Lab::up("cap", 1) else { return };
    if Command::new("tshark").arg("-v").output().is_err() {
        eprintln!("SKIP: tshark is not installed (make test installs it)");
        return;
    }
    let d = lab.start_sluiced(&lab_config(1, ""));
    apply(&lab, "lab-cluster.yaml");
    let server = format!("unix:{}", lab.dir.join("api.sock").display());
    let file = lab.dir.join("capture.pcapng");
    let mut cap = Command::new(sluice_bin())
        .args(["capture", "-i", "any", "-w"])
        .arg(&file)
        .args(["-c", "6", "-G", "20", "tcp", "and", "port", "80"])
        .env("SLUICE_SERVER", &server)
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice capture");
    std::thread::sleep(Duration::from_millis(300));
    // a second capture while one runs is refused
    let busy = api(&lab)
        .request("GET", "/v1/capture?count=1", None)
        .expect("API");
    assert_eq!(busy.status, 409, "{}", busy.error_text());
    // through the ClusterIP: the client's packets to 10.96.0.80, rewritten to a backend
    let body = lab.curl("http://10.96.0.80/");
    assert!(body.is_some_and(|b| b.starts_with("hello from backend")));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = cap.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sluice capture did not finish; {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut cap.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("6 packets captured"), "{err}");
    let o = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("tshark:\n{text}");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6, "{text}");
    // the SYN as received on eth-cli (inbound, to the ClusterIP) and as sent on eth-srv
    // (outbound, from the SNAT address to a backend)
    let inbound = |d: &str| d == "1" || d.ends_with("0001") || d.eq_ignore_ascii_case("inbound");
    let outbound = |d: &str| d == "2" || d.ends_with("0002") || d.eq_ignore_ascii_case("outbound");
    assert!(
        rows.iter().any(|r| r[0] == "eth-cli"
            && inbound(r[1])
            && r[2] == "10.10.0.2"
            && r[3] == "10.96.0.80"),
        "{text}"
    );
    assert!(
        rows.iter().any(|r| r[0] == "eth-srv"
            && outbound(r[1])
            && r[2] == "10.20.0.1"
            && r[3].starts_with("10.20.0.1")),
        "{text}"
    );
}
