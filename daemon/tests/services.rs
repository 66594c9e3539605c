//! Service load balancing in the lab with real clients and servers: `configs/lab-cluster.yaml`
//! (service `lab/web`, backends be1/be2/be3 with weights 1:1:2, and the UDP service `lab/dns`)
//! applied through the API, then fresh HTTP connections through the NodePort, the ClusterIP and
//! the LoadBalancer VIP, IPv4 and IPv6, split by weight (python and `wrk`); UDP requests answered
//! by every backend; the backends see the appliance's SNAT address; replies come back translated.
//! DSR and hybrid modes with backends that strip the tunnels (`sluice-decap`) and answer the
//! client themselves. A backend's ICMP port unreachable reaches the client translated.

mod common;

use common::{api, lab_config, repo_file, EchoServers, Lab, SERIAL};
use std::collections::HashMap;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `count` fresh connections from the client to `url`: answers per backend.
fn split(lab: &Lab, url: &str, count: usize) -> HashMap<String, usize> {
    let out = lab.exec(
        "cli",
        &[
            "python3",
            &repo_file("tools/lab/http_split.py"),
            url,
            &count.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("split JSON")
}

/// Asserts that `got` (answers per backend out of `n`) follows `want` (backend, share) within
/// `slack`, with no failed request.
fn assert_split(
    what: &str,
    got: &HashMap<String, usize>,
    n: usize,
    want: &[(&str, f64)],
    slack: f64,
) {
    assert_eq!(got.get("error"), None, "{what}: failed requests: {got:?}");
    for (be, w) in want {
        let share = *got.get(*be).unwrap_or(&0) as f64 / n as f64;
        assert!(
            (share - w).abs() <= slack,
            "{what}: {be} got {share:.3} of new connections, weight says {w}"
        );
    }
}

const WEIGHTS: [(&str, f64); 3] = [("be1", 0.25), ("be2", 0.25), ("be3", 0.5)];

fn apply_lab_cluster(lab: &Lab) {
    common::apply(lab, "lab-cluster.yaml");
}

#[test]
fn every_frontend_splits_new_connections_by_weight() {
    let _g = lock();
    let Some(lab) = Lab::up("svc", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    apply_lab_cluster(&lab);

    for url in [
        "http://10.10.0.1:30080/",    // NodePort, IPv4 node address
        "http://[fd00:10::1]:30080/", // NodePort, IPv6 node address
        "http://10.96.0.80/",         // ClusterIP
        "http://[fd00:96::80]/",      // ClusterIP, IPv6
        "http://192.0.2.80/",         // LoadBalancer ingress VIP
    ] {
        let n = 400;
        let got = split(&lab, url, n);
        eprintln!("{url}: {got:?}");
        if got.contains_key("error") {
            eprintln!("{}", d.log_text());
        }
        // the weights within 5%, +4% for the sampling error of n = 400 (about 2 sigma)
        assert_split(url, &got, n, &WEIGHTS, 0.05 + 0.04);
    }

    // sessionAffinity ClientIP: every connection of the one client lands on one backend
    let got = split(&lab, "http://10.96.0.81/", 50);
    eprintln!("http://10.96.0.81/ (ClientIP affinity): {got:?}");
    assert!(
        got.len() == 1 && got.values().sum::<usize>() == 50 && !got.contains_key("error"),
        "affinity: {got:?}"
    );

    // UDP request/response, each request a new flow: every backend answers, equal weights
    let n = 300;
    let got = common::udp_ask(&lab, "10.96.0.53", 53, n);
    eprintln!("udp 10.96.0.53:53: {got:?}");
    let third = 1.0 / 3.0;
    assert_split(
        "udp",
        &got,
        n,
        &[("be1", third), ("be2", third), ("be3", third)],
        0.05 + 0.05,
    );
    // the backends saw the appliance's SNAT address, not the client
    let log = std::fs::read_to_string(format!("/run/sluice-lab/{}/http-be3.log", lab.prefix))
        .unwrap_or_default();
    assert!(log.contains("10.20.0.1 "), "be3 log: {log}");
    assert!(
        !log.contains("10.10.0.2 "),
        "the client address leaked to the backend: {log}"
    );
    let st = api(&lab).get("/v1/status").expect("status");
    eprintln!("status: {st}");
    let stats = d.stats();
    let new = common::worker_sum(&stats, "lb_new_connections");
    // every request a new connection, except the few UDP requests whose random source port
    // repeats an earlier one's within the 60 s UDP timeout (same flow, same backend)
    let requests = 5 * 400 + 50 + 300;
    assert!(
        new <= requests && new >= requests * 98 / 100,
        "lb_new_connections {new} for {requests} requests; status {st}; stats {stats}"
    );
}

/// Requests each backend logged so far (python's http.server logs one line per request).
fn requests_logged(lab: &Lab) -> [usize; 3] {
    [1, 2, 3].map(|i| {
        std::fs::read_to_string(format!("/run/sluice-lab/{}/http-be{i}.log", lab.prefix))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET "))
            .count()
    })
}

#[test]
fn wrk_through_the_loadbalancer_vip_splits_by_weight() {
    let _g = lock();
    let Some(lab) = Lab::up("wrk", 1) else { return };
    if std::process::Command::new("wrk")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIP: wrk is not installed (make test installs it)");
        return;
    }
    let d = lab.start_sluiced(&lab_config(1, ""));
    apply_lab_cluster(&lab);
    let before = requests_logged(&lab);
    // a new connection per request, so that every request is a load-balancing decision
    let out = lab.exec(
        "cli",
        &[
            "wrk",
            "-t1",
            "-c4",
            "-d3s",
            "-H",
            "Connection: close",
            "http://192.0.2.80/",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Socket errors") && !text.contains("Non-2xx"),
        "wrk saw errors: {text}; {}",
        d.log_text()
    );
    std::thread::sleep(std::time::Duration::from_millis(300)); // the servers flush their logs
    let after = requests_logged(&lab);
    let per: Vec<usize> = (0..3).map(|i| after[i] - before[i]).collect();
    let n: usize = per.iter().sum();
    eprintln!("wrk requests per backend: {per:?}");
    assert!(n >= 200, "too few requests for a split: {per:?}");
    let got: HashMap<String, usize> = (0..3).map(|i| (format!("be{}", i + 1), per[i])).collect();
    // the weights within 5%, +3% sampling error (n is in the thousands on this machine)
    assert_split("wrk", &got, n, &WEIGHTS, 0.05 + 0.03);
}

fn echo_slice(backends: &[&str]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-lab", "namespace": "lab", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": backends.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "echo", "port": 7000, "protocol": "TCP"}]})
}

#[test]
fn a_long_lived_connection_survives_backends_coming_and_going() {
    let _g = lock();
    let Some(lab) = Lab::up("ll", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    let echo = repo_file("tools/lab/echo.py");
    let _servers = EchoServers::start(&lab, 7000);
    let client = api(&lab);
    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "lab"},
        "spec": {"clusterIP": "10.96.0.70", "ports": [{"name": "echo", "port": 7000, "protocol": "TCP"}]}});
    for (path, body) in [
        ("/v1/services/lab/echo?wait=true", svc),
        (
            "/v1/endpointslices/lab/echo-lab?wait=true",
            echo_slice(&["10.20.0.11", "10.20.0.12"]),
        ),
    ] {
        let a = client.request("PUT", path, Some(&body)).expect("API");
        assert!(a.ok(), "{}", a.error_text());
    }
    // one connection talking for 4 s while the backends change under it
    let talker = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("cli")])
        .args(["python3", &echo, "talk", "10.96.0.70", "7000", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("talker");
    for set in [
        &["10.20.0.11", "10.20.0.12", "10.20.0.13"][..],
        &["10.20.0.13"][..],
        &["10.20.0.12", "10.20.0.13"][..],
        &["10.20.0.11"][..],
    ] {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let a = client
            .request(
                "PUT",
                "/v1/endpointslices/lab/echo-lab?wait=true",
                Some(&echo_slice(set)),
            )
            .expect("API");
        assert!(a.ok(), "{}", a.error_text());
    }
    let out = talker.wait_with_output().expect("talker output");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("talker JSON");
    eprintln!("long-lived connection: {r}");
    assert_eq!(r["error"], serde_json::Value::Null, "{r}; {}", d.log_text());
    assert!(r["echoed"].as_u64().unwrap() >= 40, "{r}");
    assert_eq!(
        r["backends"].as_array().unwrap().len(),
        1,
        "the connection moved: {r}"
    );
    // new connections follow the current backends (only be1 is left)
    let out = lab.exec(
        "cli",
        &["python3", &echo, "talk", "10.96.0.70", "7000", "0.2"],
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("talker JSON");
    assert_eq!(r["backends"], serde_json::json!(["be1"]), "{r}");
}

/// Packets the backends' DSR decapsulation programs stripped so far (sluice-decap writes its
/// counters every second).
fn decapsulated(lab: &Lab) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(1200));
    (1..=3)
        .map(|i| {
            let f = format!("/run/sluice-lab/{}/decap-be{i}.json", lab.prefix);
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&f).unwrap_or_default())
                    .unwrap_or_default();
            common::u(&v, &["decapsulated"])
        })
        .sum()
}

/// Requests the backends logged from `client` (http.server logs the peer first).
fn requests_from(lab: &Lab, client: &str) -> usize {
    (1..=3)
        .map(|i| {
            std::fs::read_to_string(format!("/run/sluice-lab/{}/http-be{i}.log", lab.prefix))
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.trim_start_matches("::ffff:")
                        .starts_with(&format!("{client} "))
                })
                .count()
        })
        .sum()
}

#[test]
fn dsr_and_hybrid_reach_backends_that_answer_the_client_directly() {
    let _g = lock();
    let Some(lab) = Lab::up("dsr", 1) else { return };
    // the backends hold the service addresses on lo and strip IPIP/IPv6-in-IPv6/Geneve in XDP
    let out = std::process::Command::new("bash")
        .arg(repo_file("tools/lab/dsr-backends.sh"))
        .args([lab.prefix.as_str(), "6081"])
        .env("SLUICE_DECAP", env!("CARGO_BIN_EXE_sluice-decap"))
        .output()
        .expect("dsr-backends.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let big_header = format!("X-Big: {}", "a".repeat(3000));
    for (mode, dispatch) in [("dsr", "ipip"), ("hybrid", "geneve")] {
        let config = lab_config(1, "").replace(
            "mode = \"snat\"",
            &format!("mode = \"{mode}\"\ndsr_dispatch = \"{dispatch}\""),
        );
        assert!(config.contains("dsr_dispatch"), "configs/lab.toml changed");
        let d = lab.start_sluiced(&config);
        apply_lab_cluster(&lab);
        let (stripped, direct4, direct6) = (
            decapsulated(&lab),
            requests_from(&lab, "10.10.0.2"),
            requests_from(&lab, "fd00:10::2"),
        );

        // the LB VIP and the IPv6 ClusterIP: port 80 = targetPort 80, so DSR
        let n = 200;
        let got = split(&lab, "http://192.0.2.80/", n);
        eprintln!("{mode}/{dispatch} http://192.0.2.80/: {got:?}");
        assert_split(mode, &got, n, &WEIGHTS, 0.05 + 0.06);
        let got6 = split(&lab, "http://[fd00:96::80]/", 60);
        assert!(!got6.contains_key("error"), "{mode} IPv6: {got6:?}");
        // a request larger than the tunnel's MTU: sluice's ICMP frag-needed teaches the client
        // the path MTU and the retransmission fits
        let body = lab.exec(
            "cli",
            &[
                "curl",
                "-s",
                "-m",
                "10",
                "-H",
                &big_header,
                "http://192.0.2.80/",
            ],
        );
        assert!(
            String::from_utf8_lossy(&body.stdout).starts_with("hello from backend"),
            "{mode}: a 3 KB request through the tunnel failed: {:?}",
            body
        );
        // the backends saw the client itself, and the tunnels were theirs to strip
        std::thread::sleep(std::time::Duration::from_millis(300)); // logs flushed
        assert!(
            requests_from(&lab, "10.10.0.2") > direct4 + n,
            "{mode}: the backends did not see the client's own address"
        );
        assert!(requests_from(&lab, "fd00:10::2") >= direct6 + 60);
        let now = decapsulated(&lab);
        assert!(
            now >= stripped + 3 * (n as u64 + 60),
            "{mode}/{dispatch}: the backends stripped only {} tunnelled packets",
            now - stripped
        );
        // NodePort 30080 -> 80 cannot be DSR (the backend does not listen on 30080): masqueraded
        assert_eq!(
            lab.curl("http://10.10.0.1:30080/")
                .map(|b| b.starts_with("hello from backend")),
            Some(true),
            "{mode}: NodePort"
        );
        // UDP 53 -> 5353 is masqueraded in both modes (hybrid: UDP always)
        let udp = common::udp_ask(&lab, "10.96.0.53", 53, 30);
        assert_eq!(udp.get("error"), None, "{mode}: UDP {udp:?}");
        let s = d.stats();
        let icmp = common::worker_sum(&s, "icmp_errors");
        assert!(icmp >= 1, "{mode}: no ICMP frag-needed was sent");
        eprintln!(
            "{mode}/{dispatch}: {} packets decapsulated by the backends, {icmp} ICMP frag-needed",
            now - stripped
        );
        drop(d);
    }
}

#[test]
fn two_workers_translate_replies_that_arrive_on_the_other_queue() {
    let _g = lock();
    let Some(lab) = Lab::up("two", 2) else { return };
    let d = lab.start_sluiced(&lab_config(2, ""));
    apply_lab_cluster(&lab);
    // each connection's SYN lands on the queue the client's kernel picks, its replies on the
    // queue the backend side picks: about half of the connections cross
    for url in ["http://10.10.0.1:30080/", "http://[fd00:96::80]/"] {
        let n = 300;
        let got = split(&lab, url, n);
        eprintln!("two workers, {url}: {got:?}");
        assert_split(url, &got, n, &WEIGHTS, 0.05 + 0.05);
    }
    let s = d.stats();
    let workers = s["workers"].as_array().unwrap();
    let sum = |k: &str| common::worker_sum(&s, k);
    eprintln!(
        "new connections per worker: {:?}; handed over {} / taken over {}",
        workers
            .iter()
            .map(|w| common::u(w, &["lb_new_connections"]))
            .collect::<Vec<_>>(),
        sum("handoff_out"),
        sum("handoff_in")
    );
    assert!(
        workers
            .iter()
            .all(|w| common::u(w, &["lb_new_connections"]) > 0),
        "both workers should start connections: {s}"
    );
    assert!(sum("handoff_out") > 0, "no reply crossed queues: {s}");
    assert_eq!(sum("handoff_out"), sum("handoff_in"), "{s}");
}

/// UDP requests, IPv4 and IPv6, to a service whose backend port nobody listens on: the
/// backend's kernel answers each with port unreachable, to the SNAT address and about the
/// appliance's packet. Steered by the quoted SNAT port and translated along the connection, it
/// reaches the client as if about its own packet, and the client's connected socket reports
/// ECONNREFUSED.
#[test]
fn a_backends_port_unreachable_reaches_the_client() {
    let _g = lock();
    let Some(lab) = Lab::up("icmp", 1) else {
        return;
    };
    let d = lab.start_sluiced(&lab_config(1, ""));
    let client = api(&lab);
    let udp = repo_file("tools/lab/udp.py");
    for (family, vip, backend) in [
        ("IPv4", "10.96.0.54", "10.20.0.11"),
        ("IPv6", "fd00:96::54", "fd00:20::11"),
    ] {
        let name = format!("closed{}", &family[3..]);
        let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "lab"},
            "spec": {"clusterIP": vip,
                     "ports": [{"name": "q", "port": 53, "protocol": "UDP", "targetPort": 5399}]}});
        let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-lab"), "namespace": "lab",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "endpoints": [{"addresses": [backend], "conditions": {"ready": true}}],
            "ports": [{"name": "q", "port": 5399, "protocol": "UDP"}]});
        for (path, body) in [
            (format!("/v1/services/lab/{name}?wait=true"), svc),
            (
                format!("/v1/endpointslices/lab/{name}-lab?wait=true"),
                slice,
            ),
        ] {
            let a = client.request("PUT", &path, Some(&body)).expect("API");
            assert!(a.ok(), "{}", a.error_text());
        }
        // three new flows (the backend's kernel rate-limits its errors per peer after a burst
        // of 6)
        let out = lab.exec("cli", &["python3", &udp, "probe", vip, "53", "3"]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            got,
            "answered=0 refused=3 timeout=0",
            "{family}: {}; stats {}",
            String::from_utf8_lossy(&out.stderr),
            d.stats()
        );
    }
    let stats = d.stats();
    let translated = common::worker_sum(&stats, "lb_icmp_translated");
    assert_eq!(translated, 6, "stats {stats}");
}
