//! Overlay stages, as Cilium's tunnel and native-routing modes: decapsulation of VXLAN/Geneve
//! from known nodes, encapsulation of traffic to remote nodes' pod CIDRs, and the MTU check.
//!
//! Decap precedence (first that applies), for UDP to our tunnel port addressed to our underlay IP:
//!   1. tunnel header malformed                      -> Drop(Malformed)
//!   2. sender not a known node address              -> Drop(UnknownSender)
//!   3. VNI 0 (no identity)                          -> Drop(InvalidVni)
//!   4. Geneve option marked critical and unknown    -> Drop(InvalidGeneveOption)
//!   5. otherwise: outer headers stripped, the VNI becomes the packet's source identity
//!
//! Encap precedence, for packets whose destination is in a remote node's pod CIDR:
//!   1. TTL/hop limit <= 1                           -> Drop(TtlExceeded)
//!   2. no node address in the underlay's family      -> Drop(NoTunnelEndpoint)
//!   3. too big for the underlay once encapsulated    -> ICMP frag-needed / packet-too-big sent back
//!      out the ingress port, counted FragNeeded
//!   4. no route / neighbour to the node              -> Drop(NoRoute) / Drop(NoNeighbor)
//!   5. otherwise: TTL-1, outer Ethernet/IP/UDP/VXLAN|Geneve pushed, Tx toward the node

use crate::drop::DropReason;
use crate::packet::{Batch, Meta, Port, Verdict};
use crate::pipeline::{next_hop_mac, NeighborRequests};
use crate::region::Region;
use crate::state::{OverlayMode, Snapshot};
use crate::stats::WorkerStats;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::geneve::{
    GenevePacket, GeneveRepr, OPT_CLASS_SLUICE, OPT_TYPE_CRITICAL, PROTO_ETHERNET,
};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::parse::{parse, plain_ipv4, plain_ipv4_tcp_udp, Parsed, TunnelKind, TunnelPorts};
use crate::wire::vxlan::VxlanRepr;
use crate::wire::{be16, be32, checksum, icmp, set_be16, udp};
use std::net::IpAddr;

/// Outer headers: Ethernet 14 + IPv4 20 / IPv6 40 + UDP 8 (+ the tunnel header).
const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
const UDP: usize = 8;
/// Outer TTL / hop limit of encapsulated packets (the kernel vxlan default is 64 too).
const OUTER_TTL: u8 = 64;
/// Source ports for tunnel traffic: the ephemeral range (RFC 7348 section 5), picked by flow hash.
const SPORT_BASE: u16 = 49152;
const SPORT_SPAN: u32 = 16384;
/// How much of the offending packet an ICMP error quotes: RFC 1812 (576-byte datagram) for IPv4,
/// the IPv6 minimum MTU (1280) for ICMPv6.
const ICMP4_MAX: usize = 576;
const ICMP6_MAX: usize = 1280;

fn ports(o: &crate::state::Overlay) -> TunnelPorts {
    match o.mode {
        OverlayMode::Vxlan => TunnelPorts {
            vxlan: Some(o.port),
            geneve: None,
        },
        OverlayMode::Geneve => TunnelPorts {
            vxlan: None,
            geneve: Some(o.port),
        },
        _ => TunnelPorts::NONE,
    }
}

/// A tunnel packet addressed to us, as the decapsulation needs it.
#[derive(Debug, PartialEq)]
struct Outer {
    src: IpAddr,
    kind: TunnelKind,
    vni: u32,
    /// Offset of the tunnel header (Geneve options are checked from there).
    tunnel_at: usize,
    /// Offset of the inner Ethernet frame.
    inner: usize,
}

/// What a frame is to the decapsulation.
#[derive(Debug, PartialEq)]
enum Classified {
    /// Not tunnel traffic to us: the later stages' business.
    NotOurs,
    Tunnel(Outer),
    /// Addressed to our tunnel port but the tunnel header is broken: it must not be routed on.
    Malformed,
}

/// The common case read in place: VXLAN over a plain IPv4 header (see `plain_ipv4`); a plain
/// IPv4 frame that is not UDP to our address and port is not ours either. None: ask `parse`.
#[inline]
fn classify_plain_vxlan(frame: &[u8], local: u32, port: u16) -> Option<Classified> {
    let (proto, seg) = plain_ipv4(frame)?;
    const L4: usize = ETH + IPV4;
    if proto != udp::PROTOCOL || be16(frame, L4 + 2) != port || be32(frame, ETH + 16) != local {
        return Some(Classified::NotOurs);
    }
    let ulen = usize::from(be16(frame, L4 + 4));
    let tunnel_at = L4 + UDP;
    let inner = tunnel_at + VxlanRepr::header_len();
    if !(inner - L4..=seg).contains(&ulen) || frame[tunnel_at] & 0x08 == 0 {
        return None; // the slow path names what is wrong
    }
    Some(Classified::Tunnel(Outer {
        src: IpAddr::from(be32(frame, ETH + 12).to_be_bytes()),
        kind: TunnelKind::Vxlan,
        vni: be32(frame, tunnel_at + 4) >> 8,
        tunnel_at,
        inner,
    }))
}

/// Any frame, through the full parser.
fn classify(frame: &[u8], local: IpAddr, tp: TunnelPorts) -> Classified {
    let tunnel_port = tp.vxlan.or(tp.geneve);
    let ours = |p: &Parsed| {
        p.dst == local && p.protocol == udp::PROTOCOL && Some(p.dst_port) == tunnel_port
    };
    match parse(frame, tp) {
        Ok(p) if ours(&p) => match p.tunnel {
            Some(t) => Classified::Tunnel(Outer {
                src: p.src,
                kind: t.kind,
                vni: t.vni,
                tunnel_at: p.l4.unwrap_or(0) + UDP,
                inner: t.inner,
            }),
            None => Classified::Malformed,
        },
        Ok(_) => Classified::NotOurs,
        // rare: a frame that does not parse; if it is addressed to our tunnel port, its tunnel
        // header is what is wrong
        Err(_) => match parse(frame, TunnelPorts::NONE) {
            Ok(p) if ours(&p) => Classified::Malformed,
            _ => Classified::NotOurs,
        },
    }
}

/// Decapsulation of tunnel traffic addressed to this node.
pub fn decap(snap: &Snapshot, region: &mut Region, batch: &mut Batch, stats: &WorkerStats) {
    let ov = &*snap.overlay;
    if !matches!(ov.mode, OverlayMode::Vxlan | OverlayMode::Geneve) {
        return;
    }
    let Some(local) = ov.local_ip else { return };
    let tp = ports(ov);
    // the in-place read covers VXLAN over IPv4 only
    let fast = match (local, tp.vxlan) {
        (IpAddr::V4(l), Some(port)) => Some((u32::from(l), port)),
        _ => None,
    };
    let mut done = 0;
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue {
            continue;
        }
        let mut f = batch.frame(i);
        let Some(pkt) = region.data(&f) else { continue };
        let quick = fast.and_then(|(l, port)| classify_plain_vxlan(pkt, l, port));
        let t = match quick.unwrap_or_else(|| classify(pkt, local, tp)) {
            Classified::NotOurs => continue,
            Classified::Malformed => {
                batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
                continue;
            }
            Classified::Tunnel(t) => t,
        };
        let verdict = if !snap.cluster.node_ips.contains(&t.src) {
            Some(DropReason::UnknownSender)
        } else if t.vni == 0 {
            Some(DropReason::InvalidVni)
        } else if t.kind == TunnelKind::Geneve && has_unknown_critical_option(&pkt[t.tunnel_at..]) {
            Some(DropReason::InvalidGeneveOption)
        } else {
            None
        };
        if let Some(r) = verdict {
            batch.set_verdict(i, Verdict::Drop(r));
            continue;
        }
        if !region.pull_head(&mut f, t.inner as u32) {
            batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
            continue;
        }
        *batch.frame_mut(i) = f;
        *batch.meta_mut(i) = Meta {
            src_identity: t.vni,
            decapsulated: true,
        };
        done += 1;
    }
    stats.decapsulated.add(done);
}

fn has_unknown_critical_option(geneve: &[u8]) -> bool {
    match GenevePacket::new_checked(geneve) {
        Ok(g) => g
            .options()
            .any(|o| o.type_ & OPT_TYPE_CRITICAL != 0 && o.class != OPT_CLASS_SLUICE),
        Err(_) => true,
    }
}

/// What the encapsulation needs of an inner packet: where its IP header is, its family, TTL /
/// hop limit and flow hash. Read straight from the frame for the common case (plain IPv4 TCP/UDP)
/// without building a full `Parsed`; everything else goes through `parse`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Inner {
    l3: usize,
    v6: bool,
    ttl: u8,
    /// Flow hash for the outer source port (ECMP/RSS entropy, RFC 7348): the same flow always
    /// gets the same port.
    hash: u32,
}

impl Inner {
    fn from_parsed(p: &Parsed) -> Self {
        let fold = |a: IpAddr| -> u64 {
            match a {
                IpAddr::V4(v) => u64::from(u32::from(v)),
                IpAddr::V6(v) => {
                    let x = u128::from(v);
                    (x as u64) ^ ((x >> 64) as u64)
                }
            }
        };
        Inner {
            l3: p.l3,
            v6: p.ethertype == ethertype::IPV6,
            ttl: p.ttl,
            hash: flow_hash(
                fold(p.src),
                fold(p.dst),
                u64::from(p.src_port) << 32 | u64::from(p.dst_port) << 16 | u64::from(p.protocol),
            ),
        }
    }

    /// A `plain_ipv4_tcp_udp` frame (the checks `parse` would make): (destination, Inner).
    /// None: use `parse`.
    #[inline]
    fn plain_ipv4(frame: &[u8]) -> Option<(u32, Inner)> {
        const L3: usize = ETH;
        const L4: usize = ETH + IPV4;
        let (proto, _) = plain_ipv4_tcp_udp(frame)?;
        let (src, dst) = (be32(frame, L3 + 12), be32(frame, L3 + 16));
        let ports = u64::from(be32(frame, L4));
        Some((
            dst,
            Inner {
                l3: L3,
                v6: false,
                ttl: frame[L3 + 8],
                hash: flow_hash(
                    u64::from(src),
                    u64::from(dst),
                    ports << 16 | u64::from(proto),
                ),
            },
        ))
    }
}

/// A multiply-xorshift mix of the 5-tuple words (addresses folded to 64 bits).
#[inline]
fn flow_hash(src: u64, dst: u64, ports_proto: u64) -> u32 {
    let mut h = src.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ dst;
    h = (h ^ ports_proto).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    (h ^ (h >> 32)) as u32
}

/// Longest outer header: Ethernet 14 + IPv6 40 + UDP 8 + Geneve 8 + identity option 8.
const MAX_OUTER: usize = ETH + IPV6 + UDP + 16;

/// The egress toward one node, resolved once and reused for the rest of the batch (a batch
/// usually carries many packets to the same few nodes), with the node's outer headers prebuilt:
/// per packet only the lengths, the IPv4 checksum, the source port and the VNI change.
struct Egress {
    /// The node this entry is for (`Arc::as_ptr` of its table entry: a pointer compare per packet).
    node: *const crate::state::RemoteNode,
    port: Port,
    smac: MacAddr,
    hdr: [u8; MAX_OUTER],
    hdr_len: usize,
    /// IPv4 underlay: one's-complement sum of the template's IP header with its total length and
    /// checksum fields zero; the checksum is then one addition and a fold per packet.
    ip_sum: u32,
}

/// Encapsulation (or native routing) of traffic to remote pods.
pub fn encap(
    snap: &Snapshot,
    region: &mut Region,
    batch: &mut Batch,
    stats: &WorkerStats,
    neigh: &mut impl NeighborRequests,
) {
    let ov = &*snap.overlay;
    if ov.mode == OverlayMode::Off || snap.cluster.pod_cidrs.is_empty() {
        return;
    }
    let mut cache: Option<Egress> = None;
    let mut encapsulated = 0;
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue {
            continue;
        }
        let mut f = batch.frame(i);
        let meta = batch.meta(i);
        let Some(frame) = region.data(&f) else {
            continue;
        };
        let (node, inner) = match Inner::plain_ipv4(frame) {
            Some((dst, inner)) => match snap.cluster.pod_cidrs.lookup_v4(dst) {
                Some(node) => (node, inner),
                None => continue,
            },
            None => match parse(frame, TunnelPorts::NONE) {
                Ok(p) => match snap.cluster.pod_cidrs.lookup(p.dst) {
                    Some(node) => (node, Inner::from_parsed(&p)),
                    None => continue,
                },
                // not parseable: the route stage drops it with its reason
                Err(_) => continue,
            },
        };
        let v = encap_one(
            snap, region, &mut f, inner, node, meta, stats, neigh, &mut cache,
        );
        if matches!(v, Verdict::Tx(_)) && snap.overlay.mode != OverlayMode::Native {
            encapsulated += 1;
        }
        *batch.frame_mut(i) = f;
        batch.set_verdict(i, v);
    }
    stats.encapsulated.add(encapsulated);
}

/// Resolves the egress toward `remote` (route, next-hop MAC, source MAC) and prebuilds its outer
/// headers.
fn resolve_egress(
    snap: &Snapshot,
    remote: &std::sync::Arc<crate::state::RemoteNode>,
    underlay_v6: bool,
    neigh: &mut impl NeighborRequests,
) -> Result<Egress, DropReason> {
    let ov = &*snap.overlay;
    let addr = remote
        .addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv6() == underlay_v6)
        .ok_or(DropReason::NoTunnelEndpoint)?;
    let route = snap.routes.lookup(addr).ok_or(DropReason::NoRoute)?;
    let dmac = next_hop_mac(snap, route, addr, neigh)?;
    let smac = snap
        .port_mac(route.port)
        .copied()
        .ok_or(DropReason::NoEgressPort)?;
    let mut e = Egress {
        node: std::sync::Arc::as_ptr(remote),
        port: route.port,
        smac,
        hdr: [0; MAX_OUTER],
        hdr_len: 0,
        ip_sum: 0,
    };
    if ov.mode == OverlayMode::Native {
        // no outer headers: only the MACs are rewritten
        e.hdr[0..6].copy_from_slice(&dmac);
        return Ok(e);
    }
    let local = ov.local_ip.ok_or(DropReason::NoTunnelEndpoint)?;
    let tunnel_hdr = tunnel_header_len(ov);
    e.hdr_len = ETH + if underlay_v6 { IPV6 } else { IPV4 } + UDP + tunnel_hdr;
    write_outer(
        &mut e.hdr[..e.hdr_len],
        &OuterSpec {
            dmac,
            smac,
            src: local,
            dst: addr,
            sport: 0,
            dport: ov.port,
            kind: ov.mode,
            vni: 0,
            geneve_identity: ov.geneve_identity_option,
        },
    );
    if !underlay_v6 {
        let ip = &mut e.hdr[ETH..ETH + IPV4];
        ip[2..4].fill(0);
        ip[10..12].fill(0);
        e.ip_sum = u32::from(checksum::sum(ip));
    }
    Ok(e)
}

fn tunnel_header_len(ov: &crate::state::Overlay) -> usize {
    match ov.mode {
        OverlayMode::Geneve => GeneveRepr {
            vni: 0,
            protocol: PROTO_ETHERNET,
            identity: ov.geneve_identity_option.then_some(0),
        }
        .header_len(),
        _ => VxlanRepr::header_len(),
    }
}

#[allow(clippy::too_many_arguments)]
fn encap_one(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    p: Inner,
    remote: &std::sync::Arc<crate::state::RemoteNode>,
    meta: Meta,
    stats: &WorkerStats,
    neigh: &mut impl NeighborRequests,
    cache: &mut Option<Egress>,
) -> Verdict {
    let ov = &*snap.overlay;
    if p.ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let underlay_v6 = match (ov.mode, ov.local_ip) {
        (OverlayMode::Native, _) => p.v6,
        (_, Some(l)) => l.is_ipv6(),
        (_, None) => return Verdict::Drop(DropReason::NoTunnelEndpoint),
    };
    let eg = match cache {
        Some(e) if std::ptr::eq(e.node, std::sync::Arc::as_ptr(remote)) => e,
        _ => match resolve_egress(snap, remote, underlay_v6, neigh) {
            Ok(e) => cache.insert(e),
            Err(r) => return Verdict::Drop(r),
        },
    };
    let smac = eg.smac;
    let Some(pkt) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    if ov.mode == OverlayMode::Native {
        // the inner packet is forwarded: one hop less
        decrement_ttl(pkt, &p);
        pkt[0..6].copy_from_slice(&eg.hdr[0..6]);
        pkt[6..12].copy_from_slice(&smac);
        return Verdict::Tx(eg.port);
    }

    // The inner Ethernet frame travels whole; VLAN tags are not carried across the overlay.
    let tags = p.l3 - ETH;
    let inner_len = f.len as usize - tags;
    let identity = if meta.src_identity != 0 {
        meta.src_identity
    } else {
        ov.world_identity
    };
    let outer_ip_len = eg.hdr_len - ETH + inner_len;
    if outer_ip_len > usize::from(ov.mtu) {
        let room = usize::from(ov.mtu).saturating_sub(eg.hdr_len) as u32;
        return too_big(snap, region, f, room, stats);
    }
    // forwarded into the tunnel: one hop less (after the MTU check, as Linux does, so an ICMP
    // error quotes the packet as it arrived)
    decrement_ttl(pkt, &p);
    if tags == 0 {
        // a kernel tunnel device delivers the inner frame to its stack only if addressed to it
        if let Some(vtep) = remote.vtep_mac {
            pkt[0..6].copy_from_slice(&vtep);
            pkt[6..12].copy_from_slice(&smac);
        }
    } else {
        // VLAN tags do not cross the overlay: move the inner Ethernet header up to the IP header
        let et = if p.v6 {
            ethertype::IPV6
        } else {
            ethertype::IPV4
        };
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&pkt[0..12]);
        if let Some(vtep) = remote.vtep_mac {
            macs[0..6].copy_from_slice(&vtep);
            macs[6..12].copy_from_slice(&smac);
        }
        if !region.pull_head(f, tags as u32) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let Some(pkt) = region.data_mut(f) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        pkt[0..12].copy_from_slice(&macs);
        set_be16(pkt, 12, et);
    }
    if !region.push_head(f, eg.hdr_len as u32) {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let Some(out) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let sport = SPORT_BASE + (p.hash % SPORT_SPAN) as u16;
    stamp_outer(out, eg, sport, identity, underlay_v6);
    Verdict::Tx(eg.port)
}

/// Writes the egress's prebuilt outer headers in front of the inner frame already in `out`, then
/// the per-packet fields: lengths, IPv4 checksum (from the template's partial sum) or IPv6 UDP
/// checksum, source port, VNI (and the Geneve identity option, at the same place in every
/// template that carries it).
#[inline(always)]
fn stamp_outer(out: &mut [u8], eg: &Egress, sport: u16, vni: u32, v6: bool) {
    let n = eg.hdr_len;
    const VXLAN4: usize = ETH + IPV4 + UDP + 8;
    if n == VXLAN4 {
        // the common template, as a fixed-size copy the compiler unrolls (no memcpy call)
        out[..VXLAN4].copy_from_slice(&eg.hdr[..VXLAN4]);
    } else {
        out[..n].copy_from_slice(&eg.hdr[..n]);
    }
    let ip_hdr = if v6 { IPV6 } else { IPV4 };
    let udp_at = ETH + ip_hdr;
    let tun_at = udp_at + UDP;
    let udp_len = out.len() - udp_at;
    set_be16(out, udp_at, sport);
    set_be16(out, udp_at + 4, udp_len as u16);
    out[tun_at + 4..tun_at + 7].copy_from_slice(&vni.to_be_bytes()[1..]);
    if n - tun_at > GENEVE_BASE {
        out[tun_at + 12..tun_at + 16].copy_from_slice(&vni.to_be_bytes());
    }
    if v6 {
        set_be16(out, ETH + 4, udp_len as u16);
        if let (Some(s), Some(d)) = (ip6_at(out, ETH + 8), ip6_at(out, ETH + 24)) {
            let c = !checksum::pseudo_header_sum(s, d, udp::PROTOCOL, &out[udp_at..]);
            set_be16(out, udp_at + 6, if c == 0 { 0xffff } else { c });
        }
    } else {
        let total = (IPV4 + udp_len) as u16;
        set_be16(out, ETH + 2, total);
        let mut acc = eg.ip_sum + u32::from(total);
        acc = (acc & 0xffff) + (acc >> 16);
        set_be16(out, ETH + 10, !(acc as u16));
    }
}

/// Geneve base header length: longer templates carry the identity option.
const GENEVE_BASE: usize = 8;

fn ip6_at(b: &[u8], at: usize) -> Option<IpAddr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::from(o))
}

struct OuterSpec {
    dmac: MacAddr,
    smac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    kind: OverlayMode,
    vni: u32,
    geneve_identity: bool,
}

/// Writes Ethernet, IP, UDP and the tunnel header of a template (lengths and checksums are
/// stamped per packet by `stamp_outer`).
fn write_outer(out: &mut [u8], o: &OuterSpec) {
    let v6 = o.src.is_ipv6();
    let ip_hdr = if v6 { IPV6 } else { IPV4 };
    let udp_at = ETH + ip_hdr;
    let tun_at = udp_at + UDP;
    out[0..6].copy_from_slice(&o.dmac);
    out[6..12].copy_from_slice(&o.smac);
    set_be16(out, 12, if v6 { ethertype::IPV6 } else { ethertype::IPV4 });
    let udp_len = out.len() - udp_at;
    match o.kind {
        OverlayMode::Geneve => {
            let r = GeneveRepr {
                vni: o.vni,
                protocol: PROTO_ETHERNET,
                identity: o.geneve_identity.then_some(o.vni),
            };
            let _ = r.emit(&mut out[tun_at..]);
        }
        _ => {
            let _ = VxlanRepr { vni: o.vni }.emit(&mut out[tun_at..]);
        }
    }
    let _ = udp::UdpRepr {
        src_port: o.sport,
        dst_port: o.dport,
        payload_len: (udp_len - UDP) as u16,
    }
    .emit(&mut out[udp_at..]);
    match (o.src, o.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = &mut out[ETH..ETH + IPV4];
            h.copy_from_slice(&[
                0x45,
                0,
                0,
                0,
                0,
                0,
                0x40,
                0,
                OUTER_TTL,
                udp::PROTOCOL,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            // UDP checksum 0 over IPv4: allowed for tunnels (RFC 7348), what the kernel sends too
        }
        (s, d) => {
            let h = &mut out[ETH..ETH + IPV6];
            h.fill(0);
            h[0] = 0x60;
            h[6] = udp::PROTOCOL;
            h[7] = OUTER_TTL;
            let o6 = |a: IpAddr| match a {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            h[8..24].copy_from_slice(&o6(s));
            h[24..40].copy_from_slice(&o6(d));
            // IPv6 requires the UDP checksum (a receiver may accept zero only by configuration)
        }
    }
}

/// TTL/hop limit - 1 on a header `parse` already checked (ttl > 1 was checked by the caller).
#[inline(always)]
fn decrement_ttl(pkt: &mut [u8], p: &Inner) {
    if !p.v6 {
        Ipv4Packet::new_unchecked(&mut pkt[p.l3..]).decrement_ttl();
    } else {
        Ipv6Packet::new_unchecked(&mut pkt[p.l3..]).decrement_hop_limit();
    }
}

/// Turns the frame into an ICMP "too big" error to the sender, in place, and sends it back out
/// the port it came in on. IPv4 without DF cannot be signalled: dropped.
fn too_big(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    mtu: u32,
    stats: &WorkerStats,
) -> Verdict {
    // The drops below are counted by the worker from their verdict; only the path that sends the
    // ICMP error (verdict Tx) counts FRAG_NEEDED here.
    let port: Port = f.port;
    let Some(our_mac) = snap.port_mac(port).copied() else {
        return Verdict::Drop(DropReason::FragNeeded);
    };
    // rare path: the full parse of the offending packet (it parsed before it got here)
    let Some(Ok(p)) = region.data(f).map(|b| parse(b, TunnelPorts::NONE)) else {
        return Verdict::Drop(DropReason::FragNeeded);
    };
    let Some(pkt) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::FragNeeded);
    };
    let v6 = p.ethertype == ethertype::IPV6;
    if !v6 && pkt[p.l3 + 6] & 0x40 == 0 {
        return Verdict::Drop(DropReason::FragNeeded);
    }
    // the error comes from this node (the tunnel's source) when the families match
    let from = match snap.overlay.local_ip {
        Some(l) if l.is_ipv6() == v6 => l,
        _ => p.dst,
    };
    let peer_mac: MacAddr = pkt[6..12].try_into().unwrap_or_default();
    let ip_hdr = if v6 { IPV6 } else { IPV4 };
    let max = if v6 { ICMP6_MAX } else { ICMP4_MAX };
    let quote = (p.ip_len).min(max - ip_hdr - icmp::field::HEADER_LEN);
    let quote_from = p.l3;
    let icmp_at = ETH + ip_hdr;
    let total = icmp_at + icmp::field::HEADER_LEN + quote;
    // grow or shrink the frame to the reply's size (the chunk has room: the quote is capped)
    let grow = total as i64 - f.len as i64;
    let new_len = (i64::from(f.len) + grow) as u32;
    let old = *f;
    f.len = new_len;
    let Some(buf) = region.data_mut(f) else {
        *f = old;
        return Verdict::Drop(DropReason::FragNeeded);
    };
    buf.copy_within(
        quote_from..quote_from + quote,
        icmp_at + icmp::field::HEADER_LEN,
    );
    let quoted_src = p.src;
    let msg_len = icmp::field::HEADER_LEN + quote;
    {
        let (head, tail) = buf.split_at_mut(icmp_at);
        icmp::write_too_big_header(&mut tail[..msg_len], mtu, v6.then_some((from, quoted_src)));
        head[0..6].copy_from_slice(&peer_mac);
        head[6..12].copy_from_slice(&our_mac);
        set_be16(head, 12, if v6 { ethertype::IPV6 } else { ethertype::IPV4 });
        let ip = &mut head[ETH..];
        match (from, quoted_src) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip.copy_from_slice(&[
                    0x45,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    OUTER_TTL,
                    icmp::PROTOCOL_V4,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]);
                set_be16(ip, 2, (IPV4 + msg_len) as u16);
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum::checksum(ip);
                set_be16(ip, 10, c);
            }
            (s, d) => {
                ip.fill(0);
                ip[0] = 0x60;
                set_be16(ip, 4, msg_len as u16);
                ip[6] = icmp::PROTOCOL_V6;
                ip[7] = OUTER_TTL;
                if let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) {
                    ip[8..24].copy_from_slice(&s.octets());
                    ip[24..40].copy_from_slice(&d.octets());
                }
            }
        }
    }
    stats.drop(DropReason::FragNeeded, 1);
    stats.icmp_errors.add(1);
    Verdict::Tx(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::PacketSpec;
    use proptest::prelude::*;

    /// Frames near the fast paths' shape: a valid frame with a few bytes overwritten.
    fn mutated(base: Vec<u8>, edits: Vec<(usize, u8)>, cut: usize) -> Vec<u8> {
        let mut b = base;
        for (at, v) in edits {
            let n = b.len();
            b[at % n] = v;
        }
        b.truncate(b.len().saturating_sub(cut % 8));
        b
    }

    fn vxlan_frame(vni: u32) -> Vec<u8> {
        let inner = PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 10000, b"hello").build();
        let mut payload = vec![0x08, 0, 0, 0];
        payload.extend_from_slice(&(vni << 8).to_be_bytes());
        payload.extend_from_slice(&inner);
        PacketSpec::udp("10.20.0.21", "10.20.0.1", 50000, 8472, &payload).build()
    }

    proptest! {
        // cheap cases, and most mutations leave the fast path's shape: many of them
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The in-place VXLAN read gives the full parser's answer whenever it answers.
        #[test]
        fn plain_vxlan_read_agrees_with_parse(
            vni in 0u32..1 << 24,
            edits in proptest::collection::vec((0usize..60, any::<u8>()), 0..3),
            cut in any::<usize>(),
        ) {
            let frame = mutated(vxlan_frame(vni), edits, cut);
            let local = IpAddr::from([10, 20, 0, 1]);
            let tp = TunnelPorts { vxlan: Some(8472), geneve: None };
            if let Some(quick) = classify_plain_vxlan(&frame, u32::from_be_bytes([10, 20, 0, 1]), 8472) {
                prop_assert_eq!(quick, classify(&frame, local, tp));
            }
        }

        /// The in-place read of a plain IPv4 inner packet gives what `parse` gives.
        #[test]
        fn plain_ipv4_read_agrees_with_parse(
            tcp in any::<bool>(),
            edits in proptest::collection::vec((0usize..60, any::<u8>()), 0..3),
            cut in any::<usize>(),
        ) {
            let mut s = PacketSpec::udp("10.10.0.2", "10.244.2.5", 40000, 9000, &[7u8; 30]);
            if tcp {
                s.l4 = crate::wire::build::L4::Tcp(0x18);
            }
            let frame = mutated(s.build(), edits, cut);
            if let Some((dst, quick)) = Inner::plain_ipv4(&frame) {
                let p = parse(&frame, TunnelPorts::NONE);
                prop_assert!(p.is_ok(), "fast path took a frame parse rejects: {:?}", p);
                let p = p.unwrap();
                prop_assert_eq!(IpAddr::from(dst.to_be_bytes()), p.dst);
                prop_assert_eq!(quick, Inner::from_parsed(&p));
            }
        }
    }
}
