//! The errors a router sends: a packet too big for the underlay once encapsulated is answered
//! with ICMP fragmentation-needed / packet-too-big, one whose TTL ran out with time exceeded.

use super::{write_ip_header, ETH, IPV4, IPV6};
use crate::drop::DropReason;
use crate::packet::{Port, Verdict};
use crate::region::Region;
use crate::state::Snapshot;
use crate::stats::WorkerStats;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::parse::{parse, TunnelPorts};
use crate::wire::{icmp, set_be16};
use std::net::IpAddr;

/// How much of the offending packet an ICMP error quotes: RFC 1812 (576-byte datagram) for IPv4,
/// the IPv6 minimum MTU (1280) for ICMPv6.
const ICMP4_MAX: usize = 576;
const ICMP6_MAX: usize = 1280;

/// Turns the frame into an ICMP "too big" error to the sender, in place, and sends it back out
/// the port it came in on. IPv4 without DF cannot be signalled: dropped.
pub(crate) fn too_big(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    mtu: u32,
    stats: &WorkerStats,
) -> Verdict {
    // rare path: the full parse of the offending packet (it parsed before it got here)
    let Some(Ok(p)) = region.data(f).map(|b| parse(b, TunnelPorts::NONE)) else {
        return Verdict::Drop(DropReason::FragNeeded);
    };
    let v6 = p.ethertype == ethertype::IPV6;
    if !v6 && region.data(f).is_some_and(|b| b[p.l3 + 6] & 0x40 == 0) {
        return Verdict::Drop(DropReason::FragNeeded);
    }
    // the error comes from this node (the tunnel's source) when the families match
    let from = match snap.overlay.local_ip {
        Some(l) if l.is_ipv6() == v6 => l,
        _ => p.dst,
    };
    send_error(
        snap,
        region,
        f,
        &p,
        icmp::Error::TooBig(mtu),
        from,
        DropReason::FragNeeded,
        stats,
    )
}

/// Turns a packet whose TTL / hop limit ran out into ICMP time exceeded to its sender, in place,
/// back out the port it came in on, as a router does (traceroute sees this hop). It comes from
/// the appliance's own address of the family: the node's (`overlay.local_ip`), else the SNAT
/// address. Not for ICMP errors, fragments after the first, multicast, or without an address
/// to send from: dropped (TTL_EXCEEDED) as before.
pub(crate) fn time_exceeded(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    stats: &WorkerStats,
) -> Verdict {
    let expired = Verdict::Drop(DropReason::TtlExceeded);
    let Some(Ok(p)) = region.data(f).map(|b| parse(b, TunnelPorts::NONE)) else {
        return expired;
    };
    let v6 = p.ethertype == ethertype::IPV6;
    let about_error = matches!(p.protocol, icmp::PROTOCOL_V4 | icmp::PROTOCOL_V6)
        && p.l4
            .and_then(|at| region.data(f).and_then(|b| b.get(at).copied()))
            .is_none_or(|t| icmp::is_error(v6, t));
    let unicast = |a: IpAddr| match a {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    };
    if about_error || p.l4.is_none() || !unicast(p.src) || !unicast(p.dst) {
        return expired;
    }
    let snat = if v6 {
        snap.lb.snat_v6.map(IpAddr::V6)
    } else {
        snap.lb.snat_v4.map(IpAddr::V4)
    };
    let Some(from) = snap.overlay.local_ip.filter(|l| l.is_ipv6() == v6).or(snat) else {
        return expired;
    };
    send_error(
        snap,
        region,
        f,
        &p,
        icmp::Error::TimeExceeded,
        from,
        DropReason::TtlExceeded,
        stats,
    )
}

/// Rewrites the frame (parsed as `p`) into ICMP error `e` from `from` to its sender, quoting it,
/// and sends it back out its port to the previous hop. Counts the packet as dropped for
/// `reason` and the error as sent.
#[allow(clippy::too_many_arguments)]
fn send_error(
    snap: &Snapshot,
    region: &mut Region,
    f: &mut crate::packet::Frame,
    p: &crate::wire::parse::Parsed,
    e: icmp::Error,
    from: IpAddr,
    reason: DropReason,
    stats: &WorkerStats,
) -> Verdict {
    // The drops below are counted by the worker from their verdict; only the path that sends the
    // ICMP error (verdict Tx) counts the packet's drop here.
    let port: Port = f.port;
    let Some(our_mac) = snap.port_mac(port).copied() else {
        return Verdict::Drop(reason);
    };
    // the reply is built untagged: a VLAN-tagged packet is not answered (its tag would be lost)
    if p.l3 != ETH {
        return Verdict::Drop(reason);
    }
    let Some(pkt) = region.data_mut(f) else {
        return Verdict::Drop(reason);
    };
    let v6 = p.ethertype == ethertype::IPV6;
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
        return Verdict::Drop(reason);
    };
    buf.copy_within(
        quote_from..quote_from + quote,
        icmp_at + icmp::field::HEADER_LEN,
    );
    let quoted_src = p.src;
    let msg_len = icmp::field::HEADER_LEN + quote;
    {
        let (head, tail) = buf.split_at_mut(icmp_at);
        icmp::write_error_header(&mut tail[..msg_len], e, v6.then_some((from, quoted_src)));
        head[0..6].copy_from_slice(&peer_mac);
        head[6..12].copy_from_slice(&our_mac);
        set_be16(head, 12, if v6 { ethertype::IPV6 } else { ethertype::IPV4 });
        let proto = if v6 {
            icmp::PROTOCOL_V6
        } else {
            icmp::PROTOCOL_V4
        };
        write_ip_header(&mut head[ETH..], proto, from, quoted_src, msg_len, false);
    }
    stats.drop(reason, 1);
    stats.icmp_errors.add(1);
    Verdict::Tx(port)
}
