//! Control-plane benchmark against a running sluiced: a full-state apply of N Services with E
//! endpoints each (HTTP, validation, compile, publish), the same state applied again (a resync),
//! then single-Service changes, each timed until every worker runs the new snapshot
//! (`?wait=true`). Prints a JSON result.

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
    /// Single-service changes to time.
    #[arg(long, default_value_t = 50)]
    changes: u32,
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
    let mut items = Vec::with_capacity(2 * a.services as usize);
    for i in 0..a.services {
        items.push(service(i, 80));
        items.push(slice(i, a.endpoints));
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

    let mut lat = Vec::new();
    for k in 0..a.changes {
        let i = (k * 7919) % a.services;
        let v = service(i, 81 + k % 2);
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let t = Instant::now();
        let r = client
            .request(
                "PUT",
                &format!("/v1/services/{ns}/svc-{i}?wait=true"),
                Some(&v),
            )
            .map_err(|e| format!("change: {e:#}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if !r.ok() || r.json().map_err(|e| e.to_string())?["converged"] != true {
            return Err(format!(
                "change failed or did not converge: {}",
                r.error_text()
            ));
        }
        lat.push(us);
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    let status = client
        .get("/v1/status")
        .map_err(|e| format!("status: {e:#}"))?;
    println!(
        "{}",
        json!({
            "services": a.services, "endpoints_per_service": a.endpoints, "request_bytes": bytes,
            "full_apply_s": full_s, "full_reapply_s": reapply_s,
            "single_change_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0), "n": lat.len()},
            "frontends": status["frontends"], "backends": status["backends"], "workers": status["workers"],
        })
    );
    Ok(())
}
