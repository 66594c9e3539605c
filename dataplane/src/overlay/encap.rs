//! Encapsulation (or native routing) of traffic to remote pods (precedence in the module doc).

use super::too_big::too_big;
use super::{write_ip_header, ETH, IPV4, IPV6, UDP};
use crate::drop::DropReason;
use crate::packet::{Batch, Meta, Port, Verdict};
use crate::pipeline::{next_hop_mac, NeighborRequests};
use crate::region::Region;
use crate::state::{OverlayMode, Snapshot};
use crate::stats::WorkerStats;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::geneve::{GeneveRepr, PROTO_ETHERNET};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::parse::{parse, plain_ipv4_tcp_udp, Parsed, TunnelPorts};
use crate::wire::vxlan::VxlanRepr;
use crate::wire::{be32, checksum, set_be16, udp};
use std::net::IpAddr;

/// Source ports for tunnel traffic: the ephemeral range (RFC 7348 section 5), picked by flow hash.
const SPORT_BASE: u16 = 49152;
const SPORT_SPAN: u32 = 16384;

/// What the encapsulation needs of an inner packet: where its IP header is, its family, TTL /
/// hop limit and flow hash. Read straight from the frame for the common case (plain IPv4 TCP/UDP)
/// without building a full `Parsed`; everything else goes through `parse`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Inner {
    l3: usize,
    v6: bool,
    ttl: u8,
    /// Flow hash for the outer source port (ECMP/RSS entropy, RFC 7348): the same flow always
    /// gets the same port.
    hash: u32,
}

impl Inner {
    pub(super) fn from_parsed(p: &Parsed) -> Self {
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
    pub(super) fn plain_ipv4(frame: &[u8]) -> Option<(u32, Inner)> {
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
    /// The node this entry is for (`Arc::as_ptr` of its table entry: a compare per packet; the
    /// entry lives no longer than the table that holds the node, see `EncapState`).
    node: usize,
    port: Port,
    smac: MacAddr,
    hdr: [u8; MAX_OUTER],
    hdr_len: usize,
    /// IPv4 underlay: one's-complement sum of the template's IP header with its total length and
    /// checksum fields zero; the checksum is then one addition and a fold per packet.
    ip_sum: u32,
}

/// Nodes whose egress a worker keeps resolved: a linear scan of 8 pointers costs less than one
/// more resolution (route, neighbour and template, ~60 ns), and a gateway's batches mostly go to
/// a few nodes at a time.
const EGRESS_WAYS: usize = 8;

/// The tables an egress is resolved from, held (not just compared by address) so that a freed
/// table's address cannot come back as another table's and make a stale entry look current.
struct Resolved {
    ports: std::sync::Arc<Vec<crate::state::PortInfo>>,
    routes: std::sync::Arc<crate::state::RouteTable>,
    neighbors: std::sync::Arc<crate::state::NeighborTable>,
    cluster: std::sync::Arc<crate::state::ClusterTables>,
    overlay: std::sync::Arc<crate::state::Overlay>,
}

impl Resolved {
    fn of(s: &Snapshot) -> Self {
        Resolved {
            ports: s.ports.clone(),
            routes: s.routes.clone(),
            neighbors: s.neighbors.clone(),
            cluster: s.cluster.clone(),
            overlay: s.overlay.clone(),
        }
    }
    fn current(&self, s: &Snapshot) -> bool {
        use std::sync::Arc;
        Arc::ptr_eq(&self.ports, &s.ports)
            && Arc::ptr_eq(&self.routes, &s.routes)
            && Arc::ptr_eq(&self.neighbors, &s.neighbors)
            && Arc::ptr_eq(&self.cluster, &s.cluster)
            && Arc::ptr_eq(&self.overlay, &s.overlay)
    }
}

/// The encapsulation's per-worker state: egresses resolved from the current snapshot's tables,
/// replaced round-robin once all ways are in use, forgotten when any of those tables changes.
#[derive(Default)]
pub struct EncapState {
    from: Option<Resolved>,
    ways: [Option<Egress>; EGRESS_WAYS],
    next: usize,
}

impl EncapState {
    /// Once per batch: forgets every egress if the snapshot's tables are not those they were
    /// resolved from.
    fn refresh(&mut self, snap: &Snapshot) {
        if !matches!(&self.from, Some(r) if r.current(snap)) {
            self.from = Some(Resolved::of(snap));
            self.ways = Default::default();
            self.next = 0;
        }
    }

    #[inline]
    fn get_or_resolve(
        &mut self,
        remote: &std::sync::Arc<crate::state::RemoteNode>,
        resolve: impl FnOnce() -> Result<Egress, DropReason>,
    ) -> Result<&Egress, DropReason> {
        let node = std::sync::Arc::as_ptr(remote) as usize;
        let hit = self
            .ways
            .iter()
            .position(|w| matches!(w, Some(e) if e.node == node));
        let i = match hit {
            Some(i) => i,
            None => {
                let i = self.next;
                self.ways[i] = Some(resolve()?);
                self.next = (i + 1) % EGRESS_WAYS;
                i
            }
        };
        self.ways[i].as_ref().ok_or(DropReason::NoTunnelEndpoint)
    }
}

/// Encapsulation (or native routing) of traffic to remote pods.
pub fn encap(
    snap: &Snapshot,
    region: &mut Region,
    batch: &mut Batch,
    stats: &WorkerStats,
    neigh: &mut impl NeighborRequests,
    cache: &mut EncapState,
) {
    let ov = &*snap.overlay;
    if ov.mode == OverlayMode::Off || snap.cluster.pod_cidrs.is_empty() {
        return;
    }
    cache.refresh(snap);
    let mut last_net = None;
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
            Some((dst, inner)) => match last_net {
                // the previous packet's pod CIDR, when no longer prefix can split it
                Some((net, mask, node)) if dst & mask == net => (node, inner),
                _ => match snap.cluster.pod_cidrs.lookup_v4_net(dst) {
                    Some((net, mask, whole, node)) => {
                        last_net = whole.then_some((net, mask, node));
                        (node, inner)
                    }
                    None => continue,
                },
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
        let v = encap_one(snap, region, &mut f, inner, node, meta, stats, neigh, cache);
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
        node: std::sync::Arc::as_ptr(remote) as usize,
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
            dport: ov.port,
            kind: ov.mode,
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
    cache: &mut EncapState,
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
    let eg = match cache.get_or_resolve(remote, || resolve_egress(snap, remote, underlay_v6, neigh))
    {
        Ok(e) => e,
        Err(r) => return Verdict::Drop(r),
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
    dport: u16,
    kind: OverlayMode,
    geneve_identity: bool,
}

/// Writes Ethernet, IP, UDP and the tunnel header of a template: ports, VNI, lengths and
/// checksums are stamped per packet by `stamp_outer`.
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
                vni: 0,
                protocol: PROTO_ETHERNET,
                identity: o.geneve_identity.then_some(0),
            };
            let _ = r.emit(&mut out[tun_at..]);
        }
        _ => {
            let _ = VxlanRepr { vni: 0 }.emit(&mut out[tun_at..]);
        }
    }
    let _ = udp::UdpRepr {
        src_port: 0,
        dst_port: o.dport,
        payload_len: (udp_len - UDP) as u16,
    }
    .emit(&mut out[udp_at..]);
    write_ip_header(
        &mut out[ETH..udp_at],
        udp::PROTOCOL,
        o.src,
        o.dst,
        udp_len,
        true,
    );
    // UDP checksum: 0 over IPv4 is allowed for tunnels (RFC 7348) and what the kernel sends;
    // IPv6 requires it (stamped per packet)
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
