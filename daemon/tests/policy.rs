//! Network policy in the lab with real curl: a CiliumNetworkPolicy admits the labelled client
//! to the web pods on port 80 only, directly and through the service; relabelled, the same
//! client is dropped with POLICY_DENIED.

mod common;

use common::{api, lab_config, Lab, SERIAL};
use serde_json::{json, Value};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// PUT `v` at `path` and wait until every worker runs the result.
fn put(lab: &Lab, path: &str, v: &Value) {
    let a = api(lab)
        .request("PUT", &format!("{path}?wait=true"), Some(v))
        .expect("API");
    assert!(a.ok(), "{path}: {}", a.error_text());
    assert_eq!(a.json().unwrap()["converged"], true);
}

fn client_pod(app: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": "client", "namespace": "lab", "labels": {"app": app}},
           "status": {"podIP": "10.10.0.2"}})
}

#[test]
fn a_policy_admits_the_labelled_client_and_drops_it_once_relabelled() {
    let _g = lock();
    let Some(lab) = Lab::up("pol", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    let objects = sluice_cli::resources::read_manifests(&format!(
        "{}/../configs/lab-cluster.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("lab cluster");
    sluice_cli::resources::apply_or_delete(&api(&lab), &objects, false).expect("apply");
    put(&lab, "/v1/pods/lab/client", &client_pod("client"));
    // before any policy: everything flows
    assert!(lab.curl("http://10.20.0.11/").is_some());

    let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-from-client", "namespace": "lab"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}});
    put(&lab, "/v1/ciliumnetworkpolicies/lab/web-from-client", &cnp);
    // allowed: routed to a pod, and through the service to whichever backend
    for url in [
        "http://10.20.0.11/",
        "http://10.20.0.13/",
        "http://10.96.0.80/",
        "http://10.10.0.1:30080/",
    ] {
        let body = lab.curl(url);
        assert!(
            body.as_deref()
                .is_some_and(|b| b.starts_with("hello from backend")),
            "{url}: {body:?}; {}",
            d.log_text()
        );
    }
    // the UDP service is not port 80/TCP: the web pods refuse it
    let udp = common::udp_ask(&lab, "10.96.0.53", 53, 3);
    assert_eq!(udp.get("error"), Some(&3), "{udp:?}");

    // the same client without the label: dropped, and the counters say why
    put(&lab, "/v1/pods/lab/client", &client_pod("intruder"));
    let o = lab.exec("cli", &["curl", "-s", "-m", "2", "http://10.20.0.11/"]);
    assert!(!o.status.success(), "an unlabelled client got through");
    let s = d.stats();
    let denied: u64 = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["drops"].as_array().unwrap().iter())
        .filter(|x| x["reason"] == "POLICY_DENIED")
        .map(|x| x["packets"].as_u64().unwrap())
        .sum();
    assert!(denied > 3, "POLICY_DENIED {denied}: {s}");
    // and which policy decided
    assert_eq!(
        s["totals"]["policy_drops"]["lab/web-from-client"].as_u64(),
        Some(denied),
        "{s}"
    );
}
