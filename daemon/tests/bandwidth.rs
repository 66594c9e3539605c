//! The bandwidth manager in the lab (issue 9): a backend pod annotated
//! `kubernetes.io/egress-bandwidth: 20M` sends TCP through sluice (iperf3, be1 -> client) at
//! 20 Mbit/s within 10%; an unannotated pod is not held back.

mod common;

use common::{api, lab_config, Lab, SERIAL};
use serde_json::Value;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// iperf3 from backend `be` to the client for `secs`: the receiver's bits/s.
fn iperf(lab: &Lab, be: &str, secs: u32) -> f64 {
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("cli"),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = lab.exec(
        be,
        &[
            "iperf3",
            "-c",
            "10.10.0.2",
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    let mut server = server;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("iperf3: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no result: {v}"))
}

#[test]
fn an_annotated_pod_sends_at_its_egress_bandwidth() {
    let _g = lock();
    let Some(lab) = Lab::up("bw", 1) else { return };
    if std::process::Command::new("iperf3")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIP: iperf3 is not installed (make test installs it)");
        return;
    }
    let d = lab.start_sluiced(&lab_config(1, ""));
    common::apply(&lab, "lab-cluster.yaml");
    let mut be1 = api(&lab).get("/v1/pods/lab/be1").expect("be1");
    be1["metadata"]["annotations"] = serde_json::json!({"kubernetes.io/egress-bandwidth": "20M"});
    let a = api(&lab)
        .request("PUT", "/v1/pods/lab/be1?wait=true", Some(&be1))
        .expect("API");
    assert!(a.ok(), "{}", a.error_text());
    // a bad quantity is refused, naming the annotation
    be1["metadata"]["annotations"]["kubernetes.io/egress-bandwidth"] = "20 megabits".into();
    let bad = api(&lab)
        .request("PUT", "/v1/pods/lab/be1", Some(&be1))
        .expect("API");
    assert_eq!(bad.status, 422);
    assert!(
        bad.error_text().contains("egress-bandwidth"),
        "{}",
        bad.error_text()
    );

    let limited = iperf(&lab, "be1", 4);
    let free = iperf(&lab, "be2", 2);
    eprintln!(
        "be1 (20M): {:.1} Mbit/s; be2 (no limit): {:.1} Mbit/s",
        limited / 1e6,
        free / 1e6
    );
    assert!(
        (18e6..=22e6).contains(&limited),
        "be1 at {:.1} Mbit/s, not within 10% of 20; {}",
        limited / 1e6,
        d.log_text()
    );
    assert!(
        free > 2.0 * 22e6,
        "be2 was held back too: {:.1} Mbit/s",
        free / 1e6
    );
    let s = d.stats();
    assert!(
        s["totals"]["drops"]["BANDWIDTH_LIMIT_EXCEEDED"].as_u64() > Some(0),
        "{s}"
    );
}
