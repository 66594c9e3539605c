//! The MTU path: a packet too big for the underlay once encapsulated is answered with ICMP
//! fragmentation-needed / packet-too-big, as a router would.

use super::{write_ip_header, ETH, IPV4, IPV6};
use crate::drop::DropReason;
use crate::packet::{Port, Verdict};
use crate::region::Region;
use crate::state::Snapshot;
use crate::stats::WorkerStats;
use crate::wire::ethernet::{ethertype, MacAddr};
use crate::wire::parse::{parse, TunnelPorts};
use crate::wire::{icmp, set_be16};

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
        let proto = if v6 {
            icmp::PROTOCOL_V6
        } else {
            icmp::PROTOCOL_V4
        };
        write_ip_header(&mut head[ETH..], proto, from, quoted_src, msg_len, false);
    }
    stats.drop(DropReason::FragNeeded, 1);
    stats.icmp_errors.add(1);
    Verdict::Tx(port)
}
