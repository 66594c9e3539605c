//! The whole pipeline in memory at the scale of issue 8's scenario 1: 1,000,000 tracked
//! connections, 10,000 services × 10 backends, 1,000 identities and 10,000 policy rules, from
//! cluster objects compiled by the control plane's store as sluiced does it.
//! - established: packets of tracked connections, client -> service VIP (conntrack hit, the
//!   backend's ingress policy, DNAT + SNAT rewrite, route); target at most 100 ns/packet
//!   (10 Mpps per core);
//! - new: every packet a SYN of a new connection to one of the 10,000 services.
//!
//! Each batch is copied into the `mem` backend's buffers first, as AF_XDP copy mode does; the
//! time is `process_batch` (receive, every stage, transmit, recycle).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use sluice_bench::MemWorker;
use sluice_control::store::Store;
use sluice_dataplane::fixtures::service_snapshot;
use sluice_dataplane::lb::{CtLimits, LbSettings, LbState};
use sluice_dataplane::pipeline::Pipeline;
use sluice_dataplane::state::Snapshot;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::MAX_BATCH;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
/// Backend pods, on the lab's server segment (10.20.0.0/24).
const SERVERS: u32 = 250;
/// Client pods (10.10.0.0/22 as sources): with the servers, 1,000 pods of one identity each.
const CLIENTS: u32 = 750;
/// Source ports per client: 750 × 1,334 = 1,000,500 connections.
const PORTS_PER_CLIENT: u32 = 1334;
/// Ingress rules per pod's policy: 1,000 × 10 = 10,000 rules.
const RULES: u32 = 10;

fn server_ip(j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 20, 0, 2)) + j)
}
fn client_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 0, 2)) + i)
}
fn vip(s: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (s / 250) as u8, (s % 250 + 1) as u8)
}

/// Pods (app=app{i}, role client or server, in namespaces ns0..ns9), a policy per pod (9 rules
/// admitting other apps on their port ranges, as in the policy bench, and one admitting the
/// clients on 8080), and the services with their endpoint slices.
fn cluster_objects() -> Vec<Value> {
    let mut items = Vec::new();
    let pods = (0..SERVERS)
        .map(|j| (format!("server{j}"), "server", server_ip(j)))
        .chain((0..CLIENTS).map(|i| (format!("client{i}"), "client", client_ip(i))));
    for (k, (name, role, ip)) in pods.enumerate() {
        let ns = format!("ns{}", k % 10);
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app{k}"), "role": role}},
            "spec": {"nodeName": "appliance"}, "status": {"podIPs": [{"ip": ip.to_string()}]}}));
        let mut ingress: Vec<Value> = (1..RULES)
            .map(|r| {
                let peer = (k as u32 + 10 * r) % (SERVERS + CLIENTS);
                json!({"fromEndpoints": [{"matchLabels": {"app": format!("app{peer}")}}],
                       "toPorts": [{"ports": [{"port": format!("{}", 8000 + r * 10), "endPort": 8005 + r * 10, "protocol": "TCP"}]}]})
            })
            .collect();
        // (a namespaced policy's selectors select in its namespace)
        ingress.push(
            json!({"fromEndpoints": [{"matchLabels": {"role": "client"}}],
                            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}),
        );
        items.push(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": format!("p{k}"), "namespace": ns},
            "spec": {"endpointSelector": {"matchLabels": {"app": format!("app{k}")}}, "ingress": ingress}}));
    }
    for s in 0..SERVICES {
        // the service's namespace is its backends' (a client of the same namespace is admitted)
        let ns = format!("ns{}", s % 10);
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc{s}"), "namespace": ns},
            "spec": {"clusterIP": vip(s).to_string(), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
        // servers whose pod index is the service's namespace mod 10, spread over the services
        let endpoints: Vec<Value> = (0..ENDPOINTS)
            .map(|e| {
                let j = ((s / 10 * ENDPOINTS + e) * 10 + s % 10) % SERVERS;
                json!({"addresses": [server_ip(j).to_string()], "conditions": {"ready": true}})
            })
            .collect();
        items.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc{s}-x"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": format!("svc{s}")}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        );
    }
    items
}

/// The lab's two ports and SNAT settings, the cluster from the store, every server resolved.
fn snapshot() -> Snapshot {
    let mut store = Store::new(vec!["10.10.0.1".parse().expect("ip")]);
    store
        .replace_all(cluster_objects())
        .expect("the cluster objects are valid");
    let tables = store.tables();
    assert_eq!(tables.services.len() as u32, SERVICES, "services");
    let mut snap = service_snapshot([1, 1, 1]);
    let mut neighbors = (*snap.neighbors).clone();
    for j in 0..SERVERS {
        neighbors.insert((1, IpAddr::V4(server_ip(j))), [2, 0, 0, 0, 2, j as u8]);
    }
    snap.neighbors = Arc::new(neighbors);
    snap.cluster = tables;
    // a SNAT port is unique per backend: 4,000 connections each need more than the default range
    snap.lb = Arc::new(LbSettings {
        snat_ports: (1024, 65535),
        ..(*snap.lb).clone()
    });
    snap
}

/// Client pod `i`'s packet from source port `port` to the service its flow picks.
fn packet(i: u32, port: u32, flags: u8) -> Vec<u8> {
    let s = (i.wrapping_mul(2_654_435_761) ^ port.wrapping_mul(40_503)) % SERVICES;
    // only clients of the service's namespace are admitted: move the service to it
    let s = s - s % 10 + (i + SERVERS) % 10;
    let mut p = PacketSpec::udp(
        &client_ip(i).to_string(),
        &vip(s).to_string(),
        (1024 + port) as u16,
        80,
        &[0u8; 10],
    );
    p.l4 = L4::Tcp(flags);
    p.build()
}

/// A worker with conntrack tables for 2M TCP connections.
fn worker(snap: Snapshot) -> MemWorker {
    let limits = CtLimits {
        tcp_max: 1 << 21,
        ..CtLimits::default()
    };
    let pipeline = Pipeline {
        lb: LbState::new(&limits, 0, 1),
        ..Pipeline::new()
    };
    MemWorker::new(snap, pipeline)
}

/// Runs `frames` through `w` in batches of 64: the time in `process_batch`.
fn run(w: &mut MemWorker, frames: &mut dyn Iterator<Item = Vec<u8>>) -> Duration {
    let mut total = Duration::ZERO;
    loop {
        let mut n = 0;
        for f in (&mut *frames).take(MAX_BATCH) {
            w.io.inject(0, &f);
            n += 1;
        }
        if n == 0 {
            return total;
        }
        let t = Instant::now();
        w.step();
        total += t.elapsed();
    }
}

fn scale(c: &mut Criterion) {
    let mut w = worker(snapshot());
    // a million connections, opened by their SYNs
    let opened = run(
        &mut w,
        &mut (0..CLIENTS).flat_map(|i| (0..PORTS_PER_CLIENT).map(move |p| packet(i, p, 0x02))),
    );
    let tracked = w.pipeline.lb.connections();
    assert_eq!(
        tracked as u32,
        CLIENTS * PORTS_PER_CLIENT,
        "every SYN opened a connection (drops: {:?})",
        w.stats.snapshot(0).drops
    );
    eprintln!(
        "scale: {tracked} connections opened in {:.2} s",
        opened.as_secs_f64()
    );
    let established: Vec<Vec<u8>> = (0..8192u32)
        .map(|k| {
            let i = k.wrapping_mul(2_654_435_761) % CLIENTS;
            packet(i, k % PORTS_PER_CLIENT, 0x10)
        })
        .collect();
    let sent = w.stats.tx_packets.get();
    let mut g = c.benchmark_group("pipeline_scale");
    g.throughput(Throughput::Elements(MAX_BATCH as u64));
    let mut k = 0usize;
    g.bench_function(
        "established, 1M connections, 10k services x 10, 1k identities, 10k rules",
        |b| {
            b.iter_custom(|iters| {
                let mut it = (0..iters as usize * MAX_BATCH).map(|_| {
                    k += 1;
                    established[k % established.len()].clone()
                });
                run(&mut w, &mut it)
            })
        },
    );
    let forwarded = w.stats.tx_packets.get() - sent;
    assert_eq!(
        forwarded as usize,
        k,
        "every established packet was allowed and sent (drops: {:?})",
        w.stats.snapshot(0).drops
    );
    // new connections: fresh source ports of the same clients (the tables hold 2M)
    let mut next = 0u32;
    g.bench_function("new connections (SYNs), same scale", |b| {
        b.iter_custom(|iters| {
            let mut it = (0..iters as u32 * MAX_BATCH as u32).map(|_| {
                next += 1;
                let i = next % CLIENTS;
                packet(i, PORTS_PER_CLIENT + (next / CLIENTS) % 30_000, 0x02)
            });
            run(&mut w, &mut it)
        })
    });
    g.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
