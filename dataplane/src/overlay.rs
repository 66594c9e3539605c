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
use crate::wire::parse::{parse, parse_fast, Parsed, TunnelKind, TunnelPorts};
use crate::wire::vxlan::VxlanRepr;
use crate::wire::{checksum, icmp, set_be16, udp};
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

/// Decapsulation of tunnel traffic addressed to this node.
pub fn decap(snap: &Snapshot, region: &mut Region, batch: &mut Batch, stats: &WorkerStats) {
    let ov = &*snap.overlay;
    if !matches!(ov.mode, OverlayMode::Vxlan | OverlayMode::Geneve) {
        return;
    }
    let Some(local) = ov.local_ip else { return };
    let tp = ports(ov);
    let mut done = 0;
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue {
            continue;
        }
        let mut f = batch.frame(i);
        let Some(pkt) = region.data(&f) else { continue };
        let tunnel_port = tp.vxlan.or(tp.geneve);
        let p = match parse(pkt, tp) {
            Ok(p)
                if p.dst == local
                    && p.protocol == udp::PROTOCOL
                    && Some(p.dst_port) == tunnel_port =>
            {
                p
            }
            // not tunnel traffic to us: the later stages' business
            Ok(_) => continue,
            Err(_) => {
                // rare: a frame that does not parse; if it is addressed to our tunnel port, its
                // tunnel header is what is wrong, and it must not be routed on
                let ours = matches!(parse(pkt, TunnelPorts::NONE), Ok(p) if p.dst == local && p.protocol == udp::PROTOCOL && Some(p.dst_port) == tunnel_port);
                if ours {
                    batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
                }
                continue;
            }
        };
        let Some(t) = p.tunnel else {
            batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
            continue;
        };
        let verdict = if !snap.cluster.node_ips.contains(&p.src) {
            Some(DropReason::UnknownSender)
        } else if t.vni == 0 {
            Some(DropReason::InvalidVni)
        } else if t.kind == TunnelKind::Geneve
            && has_unknown_critical_option(&pkt[p.l4.unwrap_or(0) + UDP..])
        {
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

/// A flow hash of the inner packet for the outer source port (ECMP/RSS entropy, RFC 7348): the
/// same flow always gets the same port. A multiply-xorshift mix of the 5-tuple words.
#[inline]
fn flow_hash(p: &Parsed) -> u32 {
    let fold = |a: IpAddr| -> u64 {
        match a {
            IpAddr::V4(v) => u64::from(u32::from(v)),
            IpAddr::V6(v) => {
                let x = u128::from(v);
                (x as u64) ^ ((x >> 64) as u64)
            }
        }
    };
    let mut h = fold(p.src).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fold(p.dst);
    h = (h ^ (u64::from(p.src_port) << 32 | u64::from(p.dst_port) << 16 | u64::from(p.protocol)))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    (h ^ (h >> 32)) as u32
}

/// The egress toward one node, resolved once and reused for the rest of the batch (a batch
/// usually carries many packets to the same few nodes).
#[derive(Clone, Copy)]
struct Egress {
    node: IpAddr,
    port: Port,
    dmac: MacAddr,
    smac: MacAddr,
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
        let v = match region.data(&f).map(|b| parse_fast(b, TunnelPorts::NONE)) {
            Some(Ok(p)) => match snap.cluster.pod_cidrs.lookup(p.dst) {
                Some(node) => encap_one(
                    snap, region, &mut f, &p, node, meta, stats, neigh, &mut cache,
                ),
                None => continue,
            },
            // not parseable: the route stage drops it with its reason
            _ => continue,
        };
        if matches!(v, Verdict::Tx(_)) && snap.overlay.mode != OverlayMode::Native {
            encapsulated += 1;
        }
        *batch.frame_mut(i) = f;
        batch.set_verdict(i, v);
    }
    stats.encapsulated.add(encapsulated);
}

#[allow(clippy::too_many_arguments)]
fn encap_one(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    p: &Parsed,
    remote: &crate::state::RemoteNode,
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
        (OverlayMode::Native, _) => p.dst.is_ipv6(),
        (_, Some(l)) => l.is_ipv6(),
        (_, None) => return Verdict::Drop(DropReason::NoTunnelEndpoint),
    };
    let Some(node) = remote
        .addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv6() == underlay_v6)
    else {
        return Verdict::Drop(DropReason::NoTunnelEndpoint);
    };
    let eg = match *cache {
        Some(e) if e.node == node => e,
        _ => {
            let Some(route) = snap.routes.lookup(node) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            let dmac = match next_hop_mac(snap, route, node, neigh) {
                Ok(m) => m,
                Err(r) => return Verdict::Drop(r),
            };
            let Some(smac) = snap.port_mac(route.port).copied() else {
                return Verdict::Drop(DropReason::NoEgressPort);
            };
            let e = Egress {
                node,
                port: route.port,
                dmac,
                smac,
            };
            *cache = Some(e);
            e
        }
    };
    let (dmac, smac) = (eg.dmac, eg.smac);
    let Some(pkt) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    if ov.mode == OverlayMode::Native {
        // the inner packet is forwarded: one hop less
        decrement_ttl(pkt, p);
        pkt[0..6].copy_from_slice(&dmac);
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
    let tunnel_hdr = match ov.mode {
        OverlayMode::Geneve => GeneveRepr {
            vni: identity,
            protocol: PROTO_ETHERNET,
            identity: ov.geneve_identity_option.then_some(identity),
        }
        .header_len(),
        _ => VxlanRepr::header_len(),
    };
    let ip_hdr = if underlay_v6 { IPV6 } else { IPV4 };
    let outer_ip_len = ip_hdr + UDP + tunnel_hdr + inner_len;
    if outer_ip_len > usize::from(ov.mtu) {
        let room = usize::from(ov.mtu).saturating_sub(ip_hdr + UDP + tunnel_hdr + ETH) as u32;
        return too_big(snap, region, f, p, room, stats);
    }
    // forwarded into the tunnel: one hop less (after the MTU check, as Linux does, so an ICMP
    // error quotes the packet as it arrived)
    let Some(pkt) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    decrement_ttl(pkt, p);
    if tags == 0 {
        // a kernel tunnel device delivers the inner frame to its stack only if addressed to it
        if let Some(vtep) = remote.vtep_mac {
            pkt[0..6].copy_from_slice(&vtep);
            pkt[6..12].copy_from_slice(&smac);
        }
    } else {
        // VLAN tags do not cross the overlay: move the inner Ethernet header up to the IP header
        let et = if p.ethertype == ethertype::IPV6 {
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
    let push = (ETH + ip_hdr + UDP + tunnel_hdr) as u32;
    if !region.push_head(f, push) {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let Some(out) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Some(local) = ov.local_ip else {
        return Verdict::Drop(DropReason::NoTunnelEndpoint);
    };
    write_outer(
        out,
        &OuterSpec {
            dmac,
            smac,
            src: local,
            dst: node,
            sport: SPORT_BASE + (flow_hash(p) % SPORT_SPAN) as u16,
            dport: ov.port,
            kind: ov.mode,
            vni: identity,
            geneve_identity: ov.geneve_identity_option,
        },
    );
    Verdict::Tx(eg.port)
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

/// Writes Ethernet, IP, UDP and the tunnel header in front of the inner frame already in `out`.
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
            set_be16(h, 2, (IPV4 + udp_len) as u16);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum::checksum(h);
            set_be16(h, 10, c);
            // UDP checksum 0 over IPv4: allowed for tunnels (RFC 7348), what the kernel sends too
        }
        (s, d) => {
            let h = &mut out[ETH..ETH + IPV6];
            h.fill(0);
            h[0] = 0x60;
            set_be16(h, 4, udp_len as u16);
            h[6] = udp::PROTOCOL;
            h[7] = OUTER_TTL;
            let o6 = |a: IpAddr| match a {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            h[8..24].copy_from_slice(&o6(s));
            h[24..40].copy_from_slice(&o6(d));
            // IPv6 requires the UDP checksum (a receiver may accept zero only by configuration)
            let c = !checksum::pseudo_header_sum(s, d, udp::PROTOCOL, &out[udp_at..]);
            set_be16(out, udp_at + 6, if c == 0 { 0xffff } else { c });
        }
    }
}

/// TTL/hop limit - 1 on a header `parse` already checked (ttl > 1 was checked by the caller).
#[inline]
fn decrement_ttl(pkt: &mut [u8], p: &Parsed) {
    if p.ethertype == ethertype::IPV4 {
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
    p: &Parsed,
    mtu: u32,
    stats: &WorkerStats,
) -> Verdict {
    // The drops below are counted by the worker from their verdict; only the path that sends the
    // ICMP error (verdict Tx) counts FRAG_NEEDED here.
    let port: Port = f.port;
    let Some(our_mac) = snap.port_mac(port).copied() else {
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
