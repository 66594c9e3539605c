//! Service load balancing in the lab with real clients and servers: `configs/lab-cluster.yaml`
//! (service `lab/web`, backends be1/be2/be3 with weights 1:1:2) applied through the API, then
//! fresh HTTP connections through the NodePort and the ClusterIP, IPv4, split by weight; the
//! backends see the appliance's SNAT address; replies come back translated.

mod common;

use common::{api, lab_config, Lab, SERIAL};
use std::collections::HashMap;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo_file(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
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

#[test]
fn nodeport_and_clusterip_split_new_connections_by_weight() {
    let _g = lock();
    let Some(lab) = Lab::up("svc", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    let objects = sluice_cli::resources::read_manifests(&repo_file("configs/lab-cluster.yaml"))
        .expect("lab cluster manifests");
    sluice_cli::resources::apply_or_delete(&api(&lab), &objects, false).expect("apply");

    for url in ["http://10.10.0.1:30080/", "http://10.96.0.80/"] {
        let n = 600;
        let got = split(&lab, url, n);
        eprintln!("{url}: {got:?}");
        assert_eq!(
            got.get("error"),
            None,
            "{url}: failed requests; {}",
            d.log_text()
        );
        for (be, want) in [("be1", 0.25), ("be2", 0.25), ("be3", 0.5)] {
            let share = *got.get(be).unwrap_or(&0) as f64 / n as f64;
            assert!(
                (share - want).abs() <= 0.05 + 0.03, // the weights within 5%, +3% for n = 600
                "{url}: {be} got {share:.3} of new connections, weight says {want}"
            );
        }
    }
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
    let new: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| common::u(w, &["lb_new_connections"]))
        .sum();
    assert!(new >= 1200, "lb_new_connections {new}");
}

/// Echo servers in the backend namespaces for the test's lifetime.
struct EchoServers(Vec<std::process::Child>);

impl Drop for EchoServers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
    let _servers = EchoServers(
        (1..=3)
            .map(|i| {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &lab.ns(&format!("be{i}"))])
                    .args(["python3", &echo, "serve", &format!("be{i}"), "7000"])
                    .spawn()
                    .expect("echo server")
            })
            .collect(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
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
