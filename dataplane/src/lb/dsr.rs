//! Direct server return dispatch, as Katran and Cilium's DSR modes: the client's packet travels
//! to the backend unchanged (destination still the frontend) inside an outer IP header (IPIP /
//! IPv6-in-IPv6) or Geneve from the appliance to the backend. The backend strips the tunnel
//! (`sluice decap` attaches an XDP program that does, for hosts without a kernel tunnel device),
//! holds the frontend address on a local interface, and answers the client directly.
//!
//! Outcomes for a packet of a DSR connection:
//!   1. no appliance address of the packet's family (`lb.snat_ipv4/6`) -> Drop(NAT_NO_MAPPING)
//!   2. too big for `lb.dsr_mtu` once encapsulated -> ICMP frag-needed / packet-too-big back to
//!      the client (counted FRAG_NEEDED), as for the overlay
//!   3. no headroom in front of the frame -> Drop(NO_HEADROOM)
//!   4. otherwise the outer headers are pushed; the route stage forwards toward the backend

use super::{Dispatch, LbSettings};
use crate::drop::DropReason;
use crate::overlay::{too_big, write_ip_header, IPV4, IPV6, UDP};
use crate::packet::{Frame, Verdict};
use crate::region::Region;
use crate::state::Snapshot;
use crate::stats::WorkerStats;
use crate::wire::ethernet::ethertype;
use crate::wire::parse::Parsed;
use crate::wire::{checksum, geneve, set_be16, udp};
use std::net::IpAddr;

/// IANA protocol numbers of the IP-in-IP encapsulations.
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// Outer UDP source ports for Geneve: the dynamic range, by flow hash (ECMP/RSS entropy, RFC 8926).
const SPORT_BASE: u16 = 49152;
const SPORT_SPAN: u64 = 16384;

/// Bytes DSR dispatch puts in front of an IP packet of this family.
pub fn overhead(dispatch: Dispatch, v6: bool) -> usize {
    let ip = if v6 { IPV6 } else { IPV4 };
    match dispatch {
        Dispatch::Ipip => ip,
        Dispatch::Geneve { .. } => ip + UDP + geneve::field::HEADER_LEN,
    }
}

/// Encapsulates the frame toward `backend`. `Verdict::Continue` leaves it to the route stage.
pub fn dispatch(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut Frame,
    p: &Parsed,
    backend: IpAddr,
    hash: u64,
    stats: &WorkerStats,
) -> Verdict {
    let s: &LbSettings = &snap.lb;
    let v6 = backend.is_ipv6();
    let source = match (s.snat_v4, s.snat_v6, v6) {
        (Some(a), _, false) => IpAddr::V4(a),
        (_, Some(a), true) => IpAddr::V6(a),
        _ => return Verdict::Drop(DropReason::NatNoMapping),
    };
    let extra = overhead(s.dispatch, v6);
    if p.ip_len + extra > usize::from(s.dsr_mtu) {
        let room = usize::from(s.dsr_mtu).saturating_sub(extra) as u32;
        return too_big(snap, region, f, room, stats);
    }
    // the packet ends where its IP packet does (Ethernet padding is left behind)
    let l2 = p.l3;
    f.len = (l2 + p.ip_len) as u32;
    if !region.push_head(f, extra as u32) {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let Some(out) = region.data_mut(f) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // the Ethernet header (and any VLAN tags) moves to the new front; the route stage rewrites
    // the MACs. Outer and inner family are the same (a frontend's backends share its family).
    out.copy_within(extra..extra + l2, 0);
    let ip_hdr = if v6 { IPV6 } else { IPV4 };
    let inner_len = p.ip_len;
    let (proto, payload) = match s.dispatch {
        Dispatch::Ipip => (if v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }, inner_len),
        Dispatch::Geneve { .. } => (udp::PROTOCOL, extra - ip_hdr + inner_len),
    };
    write_ip_header(
        &mut out[l2..l2 + ip_hdr],
        proto,
        source,
        backend,
        payload,
        true,
    );
    if let Dispatch::Geneve { port } = s.dispatch {
        let u = l2 + ip_hdr;
        set_be16(out, u, SPORT_BASE + (hash % SPORT_SPAN) as u16);
        set_be16(out, u + 2, port);
        set_be16(out, u + 4, payload as u16);
        set_be16(out, u + 6, 0);
        let g = u + UDP;
        out[g..g + geneve::field::HEADER_LEN].fill(0);
        let inner_type = if v6 { ethertype::IPV6 } else { ethertype::IPV4 };
        set_be16(out, g + geneve::field::PROTOCOL, inner_type);
        let vni = snap.overlay.world_identity & geneve::MAX_VNI;
        out[g + 4..g + 7].copy_from_slice(&vni.to_be_bytes()[1..4]);
        if v6 {
            // IPv6 UDP needs a checksum (RFC 8200); IPv4 may leave it zero, as tunnels do
            let c = !checksum::pseudo_header_sum(source, backend, udp::PROTOCOL, &out[u..]);
            set_be16(out, u + 6, if c == 0 { 0xffff } else { c });
        }
    }
    debug_assert_eq!(out.len(), l2 + ip_hdr + payload);
    Verdict::Continue
}
