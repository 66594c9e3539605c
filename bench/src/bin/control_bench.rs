//! Control-plane benchmark against a running sluiced: a full-state apply of N Services with E
//! endpoints each (HTTP, validation, compile, publish), the same state applied again (a resync),
//! then single-Service changes, each timed until every worker runs the new snapshot
//! (`?wait=true`). With `--pods`, the state also holds that many Pods as a syncer sends them
//! (whole spec and status), and single-Pod status updates and relabels (a new identity each)
//! are timed too. Prints
//! a JSON result.

use clap::Parser;
use serde_json::{json, Value};
use sluice_cli::client::{Client, Endpoint};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "sluice-control-bench")]
struct Args {
    #[arg(long, default_value = "unix:/run/sluice/api.sock")]
    server: String,
    #[arg(long, default_value = "/run/sluice/token")]
    token_file: String,
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    #[arg(long, default_value_t = 10)]
    endpoints: u32,
    /// Single-service changes to time (and single-Pod changes, with --pods).
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// Pods in the state, each backing one of the endpoints.
    #[arg(long, default_value_t = 0)]
    pods: u32,
}

/// A Pod as the syncer sends it (managedFields dropped): ~2 KB of JSON with its spec and
/// status, the address of endpoint `n` (as `slice` numbers them) and a label set per service.
fn pod(n: u32, services: u32, endpoints: u32, version: u32, restarts: u32) -> Value {
    let svc = (n / endpoints.max(1)) % services.max(1);
    let ip = format!(
        "10.{}.{}.{}",
        ((n + 1) >> 16) & 255,
        ((n + 1) >> 8) & 255,
        (n + 1) & 255
    );
    let at = "2026-12-07T10:00:00Z";
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": at});
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{n}"), "namespace": format!("ns-{}", svc % 100),
            "uid": format!("6f1c2a4e-0000-4000-8000-{n:012}"), "resourceVersion": format!("{}", 100_000 + n),
            "creationTimestamp": at, "generateName": format!("svc-{svc}-"),
            "labels": {"app": format!("svc-{svc}"), "tier": "web", "version": format!("v{version}"),
                       "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("svc-{svc}-7d9f8c6b5"),
                "uid": "0b5e7f3a-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": "node-1", "serviceAccountName": "default", "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "containers": [{"name": "app", "image": "registry.example/app:1.4.2", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": "Running", "qosClass": "Burstable", "hostIP": "192.168.0.11", "startTime": at,
            "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": restarts,
                "image": "registry.example/app:1.4.2", "imageID": "registry.example/app@sha256:3b1f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c",
                "containerID": format!("containerd://{n:064x}"), "lastState": {},
                "state": {"running": {"startedAt": at}}}]}})
}

fn service(i: u32, port: u32) -> Value {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
}

fn slice(i: u32, endpoints: u32) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            // distinct pod addresses: 10.x.y.z from the endpoint's global index
            let n = i * endpoints + e + 1;
            let addr = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            json!({"addresses": [addr], "conditions": {"ready": true}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}-x"), "namespace": format!("ns-{}", i % 100),
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("sluice-control-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    let token = std::fs::read_to_string(&a.token_file)
        .ok()
        .map(|t| t.trim().to_string());
    let client = Client {
        endpoint: Endpoint::parse(&a.server).map_err(|e| e.to_string())?,
        token,
    };
    let mut items = Vec::with_capacity(2 * a.services as usize + a.pods as usize);
    for i in 0..a.services {
        items.push(service(i, 80));
        items.push(slice(i, a.endpoints));
    }
    for n in 0..a.pods {
        items.push(pod(n, a.services, a.endpoints, 0, 0));
    }
    let doc = json!({"kind": "List", "items": items});
    let bytes = serde_json::to_vec(&doc).map_err(|e| e.to_string())?.len();

    let t = Instant::now();
    let r = client
        .request("PUT", "/v1/state?wait=true", Some(&doc))
        .map_err(|e| format!("full apply: {e:#}"))?;
    let full_s = t.elapsed().as_secs_f64();
    if !r.ok() {
        return Err(format!("full apply failed: {}", r.error_text()));
    }
    let body = r.json().map_err(|e| e.to_string())?;
    if body["converged"] != true {
        return Err(format!("workers did not converge: {body}"));
    }

    // the same state again, as a syncer's resync or restart sends it: every object validated
    // and compiled again, the Maglev tables of unchanged backends kept
    let t = Instant::now();
    let r = client
        .request("PUT", "/v1/state?wait=true", Some(&doc))
        .map_err(|e| format!("full re-apply: {e:#}"))?;
    let reapply_s = t.elapsed().as_secs_f64();
    if !r.ok() || r.json().map_err(|e| e.to_string())?["converged"] != true {
        return Err(format!(
            "full re-apply failed or did not converge: {}",
            r.error_text()
        ));
    }

    // one object PUT with ?wait=true: µs until every worker runs it
    let timed_put = |path: String, v: &Value, what: &str| -> Result<f64, String> {
        let t = Instant::now();
        let r = client
            .request("PUT", &format!("{path}?wait=true"), Some(v))
            .map_err(|e| format!("{what}: {e:#}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if !r.ok() || r.json().map_err(|e| e.to_string())?["converged"] != true {
            return Err(format!(
                "{what} failed or did not converge: {}",
                r.error_text()
            ));
        }
        Ok(us)
    };
    let namespace = |v: &Value| {
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut lat = Vec::new();
    for k in 0..a.changes {
        let i = (k * 7919) % a.services;
        let v = service(i, 81 + k % 2);
        let path = format!("/v1/services/{}/svc-{i}", namespace(&v));
        lat.push(timed_put(path, &v, "change")?);
    }
    // a Pod's status updated (a container restarted), as most of a cluster's Pod updates are
    let mut status_lat = Vec::new();
    for k in 0..a.changes.min(a.pods) {
        let n = (k * 7919) % a.pods;
        let v = pod(n, a.services, a.endpoints, 0, k + 1);
        let path = format!("/v1/pods/{}/pod-{n}", namespace(&v));
        status_lat.push(timed_put(path, &v, "pod status change")?);
    }
    // a Pod relabelled: its label set gets an identity of its own, and every worker the new
    // ipcache and policy
    let mut pod_lat = Vec::new();
    for k in 0..a.changes.min(a.pods) {
        let n = (k * 7919) % a.pods;
        let v = pod(n, a.services, a.endpoints, k + 1, k + 1);
        let path = format!("/v1/pods/{}/pod-{n}", namespace(&v));
        pod_lat.push(timed_put(path, &v, "pod change")?);
    }
    let percentiles = |mut lat: Vec<f64>| -> Value {
        if lat.is_empty() {
            return Value::Null;
        }
        lat.sort_by(|x, y| x.total_cmp(y));
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        json!({"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0), "n": lat.len()})
    };
    let status = client
        .get("/v1/status")
        .map_err(|e| format!("status: {e:#}"))?;
    println!(
        "{}",
        json!({
            "services": a.services, "endpoints_per_service": a.endpoints, "pods": a.pods, "request_bytes": bytes,
            "full_apply_s": full_s, "full_reapply_s": reapply_s,
            "single_change_us": percentiles(lat),
            "single_pod_change_us": percentiles(pod_lat),
            "single_pod_status_change_us": percentiles(status_lat),
            "frontends": status["frontends"], "backends": status["backends"], "workers": status["workers"],
        })
    );
    Ok(())
}
