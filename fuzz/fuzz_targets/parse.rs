//! Any bytes through the full parser (outer and, for tunnel packets, inner), and through the
//! whole pipeline (decap, encap, route) on the mem backend: nothing may panic, every frame must
//! come back to the pool.
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

fuzz_target!(|data: &[u8]| {
    for ports in [TunnelPorts::DEFAULT, TunnelPorts::NONE] {
        assert_eq!(parse_fast(data, ports), parse(data, ports), "the fast path disagrees");
    }
    if let Ok(p) = parse(data, TunnelPorts::DEFAULT) {
        if let Some(t) = p.tunnel {
            let _ = parse(&data[t.inner..], TunnelPorts::DEFAULT);
        }
    }
    static PUBS: OnceLock<[Publisher; 3]> = OnceLock::new();
    let pubs = PUBS.get_or_init(|| [publisher(OverlayMode::Vxlan), publisher(OverlayMode::Geneve), publisher(OverlayMode::Native)]);
    let which = data.first().copied().unwrap_or(0) as usize % 3;
    let mut io = MemIo::new(4, 4096, TxSink::Discard);
    if !io.inject((data.len() % 2) as u16, data) {
        return; // larger than a buffer: the NIC would not deliver it
    }
    let stats = WorkerStats::default();
    let mut batch = Batch::new(8);
    process_batch(&mut io, &mut Pipeline::new(), &pubs[which], &mut batch, &stats, &mut NoNeighborRequests);
    assert_eq!(io.free_frames(), 4, "a frame was lost");
});
