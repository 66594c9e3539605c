//! Any bytes through the full parser (outer and, for tunnel packets, inner), and through the
//! whole pipeline (decap, load balancing in SNAT and DSR mode, policy, encap, route) on the mem
//! backend: nothing may panic, every frame must come back to the pool.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::{
    ClusterTables, HashMap, Overlay, OverlayMode, PortInfo, PrefixTable, Publisher, RemoteNode, Route, RouteTable, Snapshot,
};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::parse::{parse, parse_fast, TunnelPorts};
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::Batch;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn publisher(mode: OverlayMode) -> Publisher {
    let mut cluster = ClusterTables::default();
    let mut pods = PrefixTable::default();
    pods.insert(ip("10.244.2.0"), 24, Arc::new(RemoteNode { addrs: vec![ip("10.20.0.21"), ip("fd00:20::21")], vtep_mac: None }));
    cluster.pod_cidrs = pods;
    cluster.node_ips.insert(ip("10.20.0.21"));
    cluster.node_ips.insert(ip("fd00:20::21"));
    let mut neighbors = HashMap::new();
    neighbors.insert((1u16, ip("10.20.0.21")), [2, 0, 0, 0, 0x20, 0x21]);
    let route = |p: &str, len, port| Route { prefix: ip(p), prefix_len: len, port, via: None, mac: Some([2, 0, 0, 0, 9, 9]) };
    Publisher::new(Snapshot {
        generation: 1,
        ports: Arc::new(vec![PortInfo { name: "a".into(), mac: [2, 0, 0, 0, 1, 0] }, PortInfo { name: "b".into(), mac: [2, 0, 0, 0, 1, 1] }]),
        routes: Arc::new(RouteTable::new(vec![route("0.0.0.0", 0, 0), route("10.20.0.0", 24, 1), route("::", 0, 1)])),
        neighbors: Arc::new(neighbors),
        cluster: Arc::new(cluster),
        overlay: Arc::new(Overlay {
            mode,
            port: if mode == OverlayMode::Geneve { 6081 } else { 8472 },
            local_ip: Some(ip("10.20.0.1")),
            mtu: 1500,
            world_identity: 2,
            geneve_identity_option: true,
        }),
        lb: Default::default(),
    })
}

/// The service fixture (VIPs 10.96.0.80 / fd00:96::80) with a policy on one backend, in `mode`:
/// HTTP rules for the client on the service's backend ports and for anyone on port 80 (the L7
/// inspector reads whatever the input carries).
fn services(mode: sluice_dataplane::lb::LbMode) -> Publisher {
    use sluice_dataplane::l7::rules::{HttpRule, Pattern};
    use sluice_dataplane::policy::{EndpointPolicy, HttpRules, PolicyMap, PolicyTables};
    let mut s = sluice_dataplane::fixtures::service_snapshot([1, 1, 2]);
    let mut c = (*s.cluster).clone();
    c.ipcache.insert(ip("10.10.0.2"), 32, 300);
    c.ipcache.insert(ip("10.20.0.11"), 32, 301);
    let name: Arc<str> = "fuzz/p".into();
    let rules: HttpRules = vec![HttpRule {
        method: Some(Pattern::new("GET|POST").expect("pattern")),
        path: Some(Pattern::new("/api/.*").expect("pattern")),
        ..Default::default()
    }]
    .into();
    let mut m = PolicyMap::default();
    m.add(300, 6, 8000, 8100, false, Some(&rules), &name);
    m.add(0, 6, 80, 80, false, Some(&rules), &name);
    m.add(0, 17, 53, 53, true, None, &name);
    let mut t = PolicyTables::default();
    t.endpoints.insert(301, EndpointPolicy { ingress: Some(m), egress: None });
    t.slots.insert(name, 1);
    c.policy = Arc::new(t);
    // the client and a backend paced by the bandwidth manager
    c.egress_bandwidth = Arc::new([(ip("10.10.0.2"), 1_000_000u64), (ip("10.20.0.11"), 10_000_000)].into_iter().collect());
    s.cluster = Arc::new(c);
    s.lb = Arc::new(sluice_dataplane::lb::LbSettings { mode, ..(*s.lb).clone() });
    Publisher::new(s)
}

static RING: std::sync::LazyLock<Arc<sluice_dataplane::flow::FlowRing>> =
    std::sync::LazyLock::new(|| Arc::new(sluice_dataplane::flow::FlowRing::new(1024)));

fuzz_target!(|data: &[u8]| {
    for ports in [TunnelPorts::DEFAULT, TunnelPorts::NONE] {
        assert_eq!(parse_fast(data, ports), parse(data, ports), "the fast path disagrees");
    }
    if let Ok(p) = parse(data, TunnelPorts::DEFAULT) {
        if let Some(t) = p.tunnel {
            let _ = parse(&data[t.inner..], TunnelPorts::DEFAULT);
        }
    }
    static PUBS: OnceLock<[Publisher; 5]> = OnceLock::new();
    let pubs = PUBS.get_or_init(|| {
        [
            publisher(OverlayMode::Vxlan),
            publisher(OverlayMode::Geneve),
            publisher(OverlayMode::Native),
            services(sluice_dataplane::lb::LbMode::Snat),
            services(sluice_dataplane::lb::LbMode::Dsr),
        ]
    });
    let which = data.first().copied().unwrap_or(0) as usize % pubs.len();
    let mut io = MemIo::new(4, 4096, TxSink::Discard);
    if !io.inject((data.len() % 2) as u16, data) {
        return; // larger than a buffer: the NIC would not deliver it
    }
    let stats = WorkerStats::default();
    let mut batch = Batch::new(8);
    // one pipeline per snapshot, kept across inputs as a worker keeps it (making one costs a
    // millisecond of table setup; kept, earlier inputs also leave connections for later ones)
    thread_local! {
        static PIPES: std::cell::RefCell<Vec<Pipeline>> = std::cell::RefCell::new(Vec::new());
    }
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        while p.len() < pubs.len() {
            // with a flow event ring: every drop and new flow is turned into an event too
            let mut pipe = Pipeline::new();
            pipe.outbox.events = sluice_dataplane::flow::EventSink::new(RING.clone());
            p.push(pipe);
        }
        process_batch(&mut io, &mut p[which], &pubs[which], &mut batch, &stats, &mut NoNeighborRequests);
        let mut drained = Vec::new();
        RING.drain_into(&mut drained, 1 << 16);
    });
    assert_eq!(io.free_frames(), 4, "a frame was lost");
});
