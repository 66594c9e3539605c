//! sluice-k8s-sync between a fake Kubernetes API server (real list/watch protocol) and the real
//! sluiced: the initial list arrives, watch events (ADDED, MODIFIED, DELETED, BOOKMARK) follow,
//! a `410 Gone` forces a relist and a full resync, a dropped watch connection resumes, and
//! deletions empty sluiced again.

mod apid;
#[path = "fake/kube.rs"]
mod fake;

use apid::{Daemon, TOKEN};
use fake::FakeKube;
use serde_json::{json, Value};
use sluice_cli::client::Endpoint;
use std::time::{Duration, Instant};

const SVC: &str = "/api/v1/services";
const EPS: &str = "/apis/discovery.k8s.io/v1/endpointslices";

fn svc(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
}

fn slice(addrs: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// Runs the syncer library on its own runtime, from the fake cluster to the daemon.
fn start_syncer(d: &Daemon, k: &FakeKube) -> tokio::runtime::Runtime {
    let opts = sluice_cli::sync::Options {
        kubeconfig: Some(k.kubeconfig(&d.dir)),
        server: Endpoint::Unix(d.dir.join("api.sock")),
        token: Some(TOKEN.into()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        if let Err(e) = sluice_cli::sync::run(opts).await {
            eprintln!("syncer stopped: {e:#}");
        }
    });
    rt
}

/// Waits until `check` holds for sluiced's state (a List), or fails with what it had.
fn wait_for(d: &Daemon, what: &str, check: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = d.state()["items"].as_array().cloned().unwrap_or_default();
        if check(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out waiting for {what}; sluiced has: {}",
        serde_json::to_string_pretty(&last).unwrap()
    );
}

fn find<'a>(items: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    items
        .iter()
        .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
}

#[test]
fn cluster_objects_flow_to_sluiced_and_are_deleted_again() {
    let d = Daemon::start(true);
    let k = FakeKube::start();
    k.resource(
        "/api/v1/namespaces",
        "NamespaceList",
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})],
    );
    k.resource(
        "/api/v1/nodes",
        "NodeList",
        vec![
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}}),
        ],
    );
    k.resource("/api/v1/pods", "PodList", vec![json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
        "status": {"podIP": "10.0.1.5"}})]);
    k.resource(SVC, "ServiceList", vec![svc("web", "10.96.0.10", 80)]);
    k.resource(EPS, "EndpointSliceList", vec![slice(&["10.0.1.5"])]);
    k.resource(
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicyList",
        vec![],
    );
    k.resource("/apis/cilium.io/v2/ciliumnetworkpolicies", "CiliumNetworkPolicyList", vec![json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "allow-web", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"fromEntities": ["world"]}]}})]);

    // the syncer, in-process, against the fake cluster and the real daemon
    let rt = start_syncer(&d, &k);

    // 1. the initial lists, CiliumNetworkPolicy included, managedFields dropped
    wait_for(&d, "the initial state", |items| items.len() == 6);
    let s = d.state();
    let items = s["items"].as_array().unwrap();
    let web = find(items, "Service", "web").unwrap();
    assert_eq!(web["metadata"]["uid"], "uid-web");
    assert!(web["metadata"].get("managedFields").is_none());
    assert_eq!(
        find(items, "CiliumNetworkPolicy", "allow-web").unwrap()["spec"]["ingress"][0]
            ["fromEntities"][0],
        "world"
    );

    // 2. watch events: ADDED, MODIFIED, BOOKMARK
    k.apply(SVC, svc("api", "10.96.0.11", 8080));
    k.apply(SVC, svc("web", "10.96.0.10", 81));
    k.bookmark(SVC, "Service", "v1");
    wait_for(&d, "api added and web modified", |items| {
        find(items, "Service", "api").is_some()
            && find(items, "Service", "web").is_some_and(|w| w["spec"]["ports"][0]["port"] == 81)
    });

    // 3. DELETED
    k.delete(SVC, svc("api", "10.96.0.11", 8080));
    wait_for(&d, "api deleted", |items| {
        find(items, "Service", "api").is_none()
    });

    // 4. 410 Gone after changes the syncer never saw as events: the relist and full resync
    //    bring in `late` and remove `web`, which vanished meanwhile
    k.replace_and_expire(SVC, vec![svc("late", "10.96.0.12", 80)]);
    wait_for(&d, "the full resync after 410 Gone", |items| {
        find(items, "Service", "late").is_some() && find(items, "Service", "web").is_none()
    });

    // 5. a dropped watch connection: the watch resumes and later events still arrive
    let deadline = Instant::now() + Duration::from_secs(10);
    while k.watcher_count(EPS) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    k.drop_watches(EPS);
    k.apply(EPS, slice(&["10.0.1.5", "10.0.1.6", "10.0.1.7"]));
    wait_for(&d, "the slice change after a dropped connection", |items| {
        find(items, "EndpointSlice", "web-1")
            .is_some_and(|s| s["endpoints"].as_array().map(Vec::len) == Some(3))
    });

    // 6. everything deleted in the cluster is deleted in sluiced
    k.delete(SVC, svc("late", "10.96.0.12", 80));
    k.delete(EPS, slice(&[]));
    k.delete("/api/v1/pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"}}));
    k.delete("/apis/cilium.io/v2/ciliumnetworkpolicies", json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "allow-web", "namespace": "shop"}}));
    k.delete(
        "/api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
    );
    k.delete(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    wait_for(&d, "an empty state", |items| items.is_empty());
    let st = d.client(false).get("/v1/status").unwrap();
    assert_eq!(
        (st["frontends"].as_u64(), st["backends"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
    rt.shutdown_background();
}

#[test]
fn a_cluster_without_the_cilium_crd_still_syncs() {
    let d = Daemon::start(true);
    let k = FakeKube::start();
    for (p, l) in [
        ("/api/v1/namespaces", "NamespaceList"),
        ("/api/v1/nodes", "NodeList"),
        ("/api/v1/pods", "PodList"),
        (EPS, "EndpointSliceList"),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            "NetworkPolicyList",
        ),
    ] {
        k.resource(p, l, vec![]);
    }
    k.resource(SVC, "ServiceList", vec![svc("web", "10.96.0.10", 80)]);
    k.absent("/apis/cilium.io/v2/ciliumnetworkpolicies");
    let rt = start_syncer(&d, &k);
    wait_for(&d, "web without the CRD", |items| {
        find(items, "Service", "web").is_some()
    });
    rt.shutdown_background();
}
