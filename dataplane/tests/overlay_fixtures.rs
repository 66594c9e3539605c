//! Overlay fixtures on the `mem` backend: what encapsulation emits (read back with the wire
//! parser), decapsulation of frames as a kernel vxlan/geneve device sends them, each decap drop
//! reason, native routing, and the MTU path answering ICMP.

use sluice_dataplane::fixtures::{
    overlay_snapshot, MAC_CLIENT, MAC_CLI_PORT, MAC_NODE2, MAC_UNDERLAY_PORT,
};
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::pipeline::{NeighborRequests, Pipeline};
use sluice_dataplane::state::{
    OverlayMode, PrefixTable, Publisher, RemoteNode, Route, RouteTable, Snapshot,
};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::PacketSpec;
use sluice_dataplane::wire::icmp::IcmpPacket;
use sluice_dataplane::wire::parse::{parse, TunnelKind, TunnelPorts};
use sluice_dataplane::wire::{checksum, udp::UdpPacket};
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, DropReason};
use std::net::IpAddr;
use std::sync::Arc;

const VTEP2: [u8; 6] = [2, 0, 0, 0, 0xee, 0x02];

struct NoReq;
impl NeighborRequests for NoReq {
    fn request(&mut self, _: u16, _: IpAddr) {}
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn snapshot(
    mode: OverlayMode,
    local: &str,
    mtu: u16,
    node_addrs: &[&str],
    vtep: Option<[u8; 6]>,
) -> Snapshot {
    overlay_snapshot(mode, local, mtu, node_addrs, vtep)
}

/// Runs one packet through the pipeline: (sent packets, stats).
fn run(snap: Snapshot, port: u16, pkt: &[u8]) -> (Vec<(u16, Vec<u8>)>, WorkerStats) {
    run_batch(snap, port, &[pkt.to_vec()])
}

/// Runs packets through the pipeline as one batch: (sent packets, stats).
fn run_batch(snap: Snapshot, port: u16, pkts: &[Vec<u8>]) -> (Vec<(u16, Vec<u8>)>, WorkerStats) {
    let publisher = Publisher::new(snap);
    let mut io = MemIo::new(8, 4096, TxSink::Capture);
    let stats = WorkerStats::default();
    for pkt in pkts {
        assert!(io.inject(port, pkt));
    }
    let mut batch = Batch::new(64);
    process_batch(
        &mut io,
        &mut Pipeline::new(),
        &publisher,
        &mut batch,
        &stats,
        &mut NoReq,
    );
    assert_eq!(io.free_frames(), 8, "frame leaked");
    (io.take_sent(), stats)
}

fn client_to_pod(size: usize) -> Vec<u8> {
    let mut s = PacketSpec::udp("10.10.0.2", "10.244.2.5", 40000, 9000, &vec![7u8; size]);
    s.src_mac = MAC_CLIENT;
    s.dst_mac = MAC_CLI_PORT;
    s.build()
}

#[test]
fn vxlan_encap_over_ipv4_is_what_a_kernel_peer_expects() {
    let input = client_to_pod(100);
    let (sent, stats) = run(
        snapshot(
            OverlayMode::Vxlan,
            "10.20.0.1",
            1500,
            &["10.20.0.21"],
            Some(VTEP2),
        ),
        0,
        &input,
    );
    assert_eq!(sent.len(), 1, "{:?}", stats.snapshot(0));
    let (port, out) = &sent[0];
    assert_eq!(*port, 1);
    let p = parse(out, TunnelPorts::DEFAULT).unwrap();
    assert_eq!(
        (p.src, p.dst, p.ttl, p.dst_port),
        (ip("10.20.0.1"), ip("10.20.0.21"), 64, 8472)
    );
    assert!((49152..=65535).contains(&p.src_port));
    assert_eq!(&out[0..6], &MAC_NODE2);
    assert_eq!(&out[6..12], &MAC_UNDERLAY_PORT);
    assert_eq!(checksum::sum(&out[14..34]), 0xffff, "outer IPv4 checksum");
    assert_eq!(out[14 + 6] & 0x40, 0x40, "DF set on the outer header");
    let t = p.tunnel.unwrap();
    assert_eq!(
        (t.kind, t.vni),
        (TunnelKind::Vxlan, 2),
        "VNI carries the world identity"
    );
    let inner = &out[t.inner..];
    assert_eq!(
        &inner[0..6],
        &VTEP2,
        "inner destination MAC is the peer's VTEP"
    );
    assert_eq!(inner.len(), input.len());
    let ip_in = parse(inner, TunnelPorts::NONE).unwrap();
    assert_eq!(
        (ip_in.src, ip_in.dst, ip_in.ttl),
        (ip("10.10.0.2"), ip("10.244.2.5"), 63)
    );
    assert_eq!(
        checksum::sum(&inner[14..34]),
        0xffff,
        "inner checksum after TTL-1"
    );
    assert_eq!(&inner[34..], &input[34..], "inner payload untouched");
    assert_eq!(stats.encapsulated.get(), 1);
}

#[test]
fn geneve_encap_over_ipv6_with_identity_option_and_checksum() {
    let (sent, _) = run(
        snapshot(
            OverlayMode::Geneve,
            "fd00:20::1",
            1500,
            &["10.20.0.21", "fd00:20::21"],
            None,
        ),
        0,
        &client_to_pod(64),
    );
    let (_, out) = &sent[0];
    let p = parse(out, TunnelPorts::DEFAULT).unwrap();
    assert_eq!(
        (p.src, p.dst, p.dst_port),
        (ip("fd00:20::1"), ip("fd00:20::21"), 6081)
    );
    let t = p.tunnel.unwrap();
    assert_eq!(
        (t.kind, t.vni, t.identity),
        (TunnelKind::Geneve, 2, Some(2))
    );
    let u = UdpPacket::new_checked(&out[p.l4.unwrap()..]).unwrap();
    assert!(
        u.checksum() != 0 && u.verify_checksum(p.src, p.dst),
        "IPv6 UDP checksum must be valid"
    );
    assert_eq!(
        &out[t.inner..t.inner + 6],
        &MAC_CLI_PORT,
        "without a VTEP MAC the inner MACs are kept"
    );
}

/// The outer headers are prebuilt once per node and batch: every packet of a batch still gets its
/// own lengths, checksums and source port.
#[test]
fn one_batch_of_mixed_sizes_gets_per_packet_lengths_and_checksums() {
    let sizes = [0usize, 1, 100, 555, 1200];
    let input: Vec<Vec<u8>> = sizes.iter().map(|n| client_to_pod(*n)).collect();
    for (mode, local) in [
        (OverlayMode::Vxlan, "10.20.0.1"),
        (OverlayMode::Geneve, "fd00:20::1"),
    ] {
        let snap = snapshot(mode, local, 1500, &["10.20.0.21", "fd00:20::21"], None);
        let (sent, stats) = run_batch(snap, 0, &input);
        assert_eq!(sent.len(), sizes.len(), "{:?}", stats.snapshot(0));
        for ((_, out), inp) in sent.iter().zip(&input) {
            let p = parse(out, TunnelPorts::DEFAULT).unwrap();
            let t = p.tunnel.unwrap();
            assert_eq!(&out[t.inner + 34..], &inp[34..], "inner payload kept");
            assert_eq!(p.ip_len, out.len() - 14, "outer IP length");
            let u = UdpPacket::new_checked(&out[p.l4.unwrap()..]).unwrap();
            assert_eq!(
                usize::from(u.length()),
                out.len() - p.l4.unwrap(),
                "UDP length"
            );
            if p.src.is_ipv4() {
                assert_eq!(checksum::sum(&out[14..34]), 0xffff, "outer IPv4 checksum");
            } else {
                assert!(u.verify_checksum(p.src, p.dst), "IPv6 UDP checksum");
                assert_eq!(t.identity, Some(2));
            }
        }
    }
}

/// A frame as the remote node's kernel vxlan device sends it back: pod -> client.
fn from_node(src: &str, vni: u32, tunnel_port: u16, geneve_opt: Option<[u8; 8]>) -> Vec<u8> {
    let mut inner = PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 40000, b"reply");
    inner.src_mac = VTEP2;
    inner.dst_mac = [2, 0, 0, 0, 0, 9];
    let inner = inner.build();
    let mut payload = if tunnel_port == 6081 {
        let extra = geneve_opt.map(|_| 2u8).unwrap_or(0);
        let mut g = vec![
            extra,
            0,
            0x65,
            0x58,
            (vni >> 16) as u8,
            (vni >> 8) as u8,
            vni as u8,
            0,
        ];
        if let Some(o) = geneve_opt {
            g.extend_from_slice(&o);
        }
        g
    } else {
        vec![
            0x08,
            0,
            0,
            0,
            (vni >> 16) as u8,
            (vni >> 8) as u8,
            vni as u8,
            0,
        ]
    };
    payload.extend_from_slice(&inner);
    let mut outer = PacketSpec::udp(src, "10.20.0.1", 51234, tunnel_port, &payload);
    outer.dst_mac = MAC_UNDERLAY_PORT;
    outer.build()
}

#[test]
fn decap_from_a_known_node_routes_the_inner_packet() {
    let (sent, stats) = run(
        snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.21"], None),
        1,
        &from_node("10.20.0.21", 5001, 8472, None),
    );
    assert_eq!(sent.len(), 1, "{:?}", stats.snapshot(0));
    let (port, out) = &sent[0];
    assert_eq!(*port, 0);
    assert_eq!(&out[0..6], &MAC_CLIENT);
    let p = parse(out, TunnelPorts::DEFAULT).unwrap();
    assert_eq!(
        (p.src, p.dst, p.dst_port, p.ttl),
        (ip("10.244.2.5"), ip("10.10.0.2"), 40000, 63)
    );
    assert_eq!(stats.decapsulated.get(), 1);
}

#[test]
fn decap_drops_say_why() {
    let vx = || snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.21"], None);
    let gn = || {
        snapshot(
            OverlayMode::Geneve,
            "10.20.0.1",
            1500,
            &["10.20.0.21"],
            None,
        )
    };
    let cases: Vec<(Snapshot, Vec<u8>, DropReason)> = vec![
        (
            vx(),
            from_node("10.20.0.99", 5001, 8472, None),
            DropReason::UnknownSender,
        ),
        (
            vx(),
            from_node("10.20.0.21", 0, 8472, None),
            DropReason::InvalidVni,
        ),
        // critical option of an unknown class
        (
            gn(),
            from_node(
                "10.20.0.21",
                5001,
                6081,
                Some([0x01, 0x02, 0x80, 0x01, 0, 0, 0, 0]),
            ),
            DropReason::InvalidGeneveOption,
        ),
        // VXLAN without the I flag
        (
            vx(),
            {
                let mut f = from_node("10.20.0.21", 5001, 8472, None);
                f[42] = 0;
                f
            },
            DropReason::Malformed,
        ),
    ];
    for (snap, pkt, reason) in cases {
        let (sent, stats) = run(snap, 1, &pkt);
        assert!(sent.is_empty());
        assert_eq!(
            stats.drops(reason),
            1,
            "expected {reason:?}: {:?}",
            stats.snapshot(0)
        );
    }
    // a non-critical unknown option is skipped, the packet delivered
    let (sent, _) = run(
        gn(),
        1,
        &from_node(
            "10.20.0.21",
            5001,
            6081,
            Some([0x01, 0x02, 0x00, 0x01, 0, 0, 0, 0]),
        ),
    );
    assert_eq!(sent.len(), 1);
}

#[test]
fn native_routing_forwards_unencapsulated_to_the_node() {
    let input = client_to_pod(10);
    let (sent, _) = run(
        snapshot(
            OverlayMode::Native,
            "10.20.0.1",
            1500,
            &["10.20.0.21"],
            None,
        ),
        0,
        &input,
    );
    let (port, out) = &sent[0];
    assert_eq!((*port, out.len()), (1, input.len()));
    assert_eq!(&out[0..6], &MAC_NODE2);
    assert_eq!(parse(out, TunnelPorts::DEFAULT).unwrap().ttl, 63);
}

#[test]
fn too_big_for_the_underlay_answers_icmp_frag_needed() {
    // 1460 bytes of IP + 50 of VXLAN over IPv4 > 1500
    let input = client_to_pod(1460 - 28);
    let (sent, stats) = run(
        snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.21"], None),
        0,
        &input,
    );
    assert_eq!(stats.drops(DropReason::FragNeeded), 1);
    assert_eq!(stats.icmp_errors.get(), 1);
    let (port, out) = &sent[0];
    assert_eq!(*port, 0, "the error goes back the way the packet came");
    assert_eq!(&out[0..6], &MAC_CLIENT);
    let p = parse(out, TunnelPorts::NONE).unwrap();
    assert_eq!(
        (p.src, p.dst, p.protocol),
        (ip("10.20.0.1"), ip("10.10.0.2"), 1)
    );
    let icmp = IcmpPacket::new_checked(&out[p.l4.unwrap()..]).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.code(), icmp.mtu()),
        (3, 4, 1500 - 50)
    );
    assert!(icmp.verify_checksum(None));
    assert_eq!(
        &icmp.payload()[..20],
        &input[14..34],
        "quotes the offending IP header"
    );

    // IPv6 inner: packet too big, MTU minus the 70 bytes of VXLAN over IPv6
    let mut s = PacketSpec::udp("fd00:10::2", "fd00:244:2::5", 1, 2, &vec![0u8; 1400]);
    s.src_mac = MAC_CLIENT;
    let mut snap = snapshot(
        OverlayMode::Vxlan,
        "fd00:20::1",
        1480,
        &["fd00:20::21"],
        None,
    );
    let mut pods = PrefixTable::default();
    pods.insert(
        ip("fd00:244:2::"),
        64,
        Arc::new(RemoteNode {
            addrs: vec![ip("fd00:20::21")],
            vtep_mac: None,
        }),
    );
    Arc::make_mut(&mut snap.cluster).pod_cidrs = pods;
    let mut routes = snap.routes.routes().to_vec();
    routes.push(Route {
        prefix: ip("fd00:10::"),
        prefix_len: 64,
        port: 0,
        via: None,
        mac: Some(MAC_CLIENT),
    });
    snap.routes = Arc::new(RouteTable::new(routes));
    let (sent, stats) = run(snap, 0, &s.build());
    assert_eq!(stats.icmp_errors.get(), 1, "{:?}", stats.snapshot(0));
    let out = &sent[0].1;
    let p = parse(out, TunnelPorts::NONE).unwrap();
    let icmp = IcmpPacket::new_checked(&out[p.l4.unwrap()..p.l3 + p.ip_len]).unwrap();
    assert_eq!((icmp.msg_type(), icmp.mtu()), (2, 1480 - 70));
    assert!(icmp.verify_checksum(Some((p.src, p.dst))));
    assert!(
        out.len() <= 14 + 1280,
        "ICMPv6 errors stay within the minimum MTU"
    );
}

#[test]
fn too_big_ipv4_without_df_is_dropped_and_counted_once() {
    let mut input = client_to_pod(1460 - 28);
    input[14 + 6] &= !0x40; // clear DF
    let ip_sum = sluice_dataplane::wire::checksum::checksum(&{
        let mut h = [0u8; 20];
        h.copy_from_slice(&input[14..34]);
        h[10] = 0;
        h[11] = 0;
        h
    });
    input[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let (sent, stats) = run(
        snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.21"], None),
        0,
        &input,
    );
    assert!(sent.is_empty());
    assert_eq!(stats.drops(DropReason::FragNeeded), 1);
    assert_eq!(stats.icmp_errors.get(), 0);
}

/// The worker keeps egresses resolved across batches: when the next hop's MAC or the node's
/// address changes (a new snapshot), the next batch follows; and a batch to more nodes than the
/// cache has ways still sends each packet to its own node.
#[test]
fn encap_follows_snapshot_changes_and_many_nodes() {
    let mut pipeline = Pipeline::new();
    let mut io = MemIo::new(64, 4096, TxSink::Capture);
    let stats = WorkerStats::default();
    let mut batch = Batch::new(64);
    let mut send = |snap: &Snapshot, pkts: &[Vec<u8>]| {
        let publisher = Publisher::new(snap.clone());
        for p in pkts {
            assert!(io.inject(0, p));
        }
        process_batch(
            &mut io,
            &mut pipeline,
            &publisher,
            &mut batch,
            &stats,
            &mut NoReq,
        );
        io.take_sent()
            .into_iter()
            .map(|(_, out)| {
                let mac: [u8; 6] = out[0..6].try_into().unwrap();
                (parse(&out, TunnelPorts::DEFAULT).unwrap().dst, mac)
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.21"], None);
    let node = ip("10.20.0.21");
    assert_eq!(send(&before, &[client_to_pod(10)]), vec![(node, MAC_NODE2)]);
    // the node's next hop moved to another MAC; the node table itself is unchanged
    let mut moved = before.clone();
    let new_mac = [2, 0, 0, 0, 0x20, 0x99];
    let mut neighbors = (*moved.neighbors).clone();
    neighbors.insert((1, node), new_mac);
    moved.neighbors = Arc::new(neighbors);
    assert_eq!(send(&moved, &[client_to_pod(10)]), vec![(node, new_mac)]);
    let after = snapshot(OverlayMode::Vxlan, "10.20.0.1", 1500, &["10.20.0.22"], None);
    assert_eq!(
        send(&after, &[client_to_pod(10)]),
        vec![(ip("10.20.0.22"), MAC_NODE2)]
    );

    // 12 nodes, node k at 10.20.0.(30+k) owning 10.244.(10+k).0/24; packets interleaved
    let mut many = after.clone();
    let mut cluster = (*many.cluster).clone();
    let mut neighbors = (*many.neighbors).clone();
    let mut pods = PrefixTable::default();
    for k in 0..12u8 {
        let addr = ip(&format!("10.20.0.{}", 30 + k));
        let node = Arc::new(RemoteNode {
            addrs: vec![addr],
            vtep_mac: None,
        });
        pods.insert(ip(&format!("10.244.{}.0", 10 + k)), 24, node);
        neighbors.insert((1, addr), MAC_NODE2);
    }
    cluster.pod_cidrs = pods;
    many.cluster = Arc::new(cluster);
    many.neighbors = Arc::new(neighbors);
    let pkts: Vec<Vec<u8>> = (0..36u16)
        .map(|i| {
            let dst = format!("10.244.{}.7", 10 + i % 12);
            PacketSpec::udp("10.10.0.2", &dst, 40000 + i, 9000, &[1u8; 10]).build()
        })
        .collect();
    let want: Vec<(IpAddr, [u8; 6])> = (0..36u16)
        .map(|i| (ip(&format!("10.20.0.{}", 30 + i % 12)), MAC_NODE2))
        .collect();
    assert_eq!(send(&many, &pkts), want);
    assert_eq!(stats.encapsulated.get(), 39);
}
