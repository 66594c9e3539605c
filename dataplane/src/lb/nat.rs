//! The NAT rewrite of a packet in place, with incremental checksum updates.

use super::conntrack::{Addr, Endpoint, Tuple};
use crate::wire::parse::Parsed;
use crate::wire::{be16, checksum, set_be16, tcp, udp};

/// Rewrites source and destination address and port in place (from the tuple `old` the packet
/// carries), with incremental updates (RFC 1624, eqn. 3, all changed words at once) of the IPv4
/// header checksum and the TCP/UDP checksum, pseudo-header included; a zero IPv4 UDP checksum
/// means "none" and stays zero.
#[inline]
pub(super) fn rewrite<A: Addr>(
    pkt: &mut [u8],
    p: &Parsed,
    old: &Tuple<A>,
    src: Endpoint<A>,
    dst: Endpoint<A>,
) {
    let Some(l4) = p.l4 else { return };
    rewrite_at(pkt, (p.l3, l4, p.l3 + p.ip_len), old, src, dst);
}

/// [`rewrite`] of the IP packet whose header is at `l3`, its TCP/UDP header at `l4`, ending at
/// `end` (of `old.proto`); the TCP/UDP checksum is updated only if it lies before `end` (an ICMP
/// error's quote may stop after the ports).
#[inline]
pub(super) fn rewrite_at<A: Addr>(
    pkt: &mut [u8],
    (l3, l4, end): (usize, usize, usize),
    old: &Tuple<A>,
    src: Endpoint<A>,
    dst: Endpoint<A>,
) {
    let v4 = A::WORDS == 2;
    let addr_delta = rewrite_addresses(pkt, l3, (old.src, old.dst), src.addr, dst.addr);
    let port_delta = 2 * 0xffff - u32::from(old.sport) - u32::from(old.dport)
        + u32::from(src.port)
        + u32::from(dst.port);
    set_be16(pkt, l4, src.port);
    set_be16(pkt, l4 + 2, dst.port);
    let csum_at = l4 + if old.proto == tcp::PROTOCOL { 16 } else { 6 };
    if csum_at + 2 > end {
        return;
    }
    let l4c = be16(pkt, csum_at);
    if old.proto == udp::PROTOCOL && v4 && l4c == 0 {
        return;
    }
    let mut c = checksum::apply_delta(l4c, addr_delta + port_delta);
    if old.proto == udp::PROTOCOL && c == 0 {
        c = 0xffff;
    }
    set_be16(pkt, csum_at, c);
}

/// Rewrites the addresses of the IP header at `l3` from `old` (source, destination) to `src` →
/// `dst`, and updates its IPv4 checksum; the checksum delta of the change (for the TCP/UDP
/// pseudo-header, or nothing).
#[inline]
pub(super) fn rewrite_addresses<A: Addr>(
    pkt: &mut [u8],
    l3: usize,
    old: (A, A),
    src: A,
    dst: A,
) -> u32 {
    let v4 = A::WORDS == 2;
    let (src_at, dst_at) = if v4 {
        (l3 + 12, l3 + 16)
    } else {
        (l3 + 8, l3 + 24)
    };
    // sum of ~m + m' over the changed words: ~m = 0xffff - m for each old word
    let ones = 0xffff * A::WORDS;
    let delta = 2 * ones - old.0.word_sum() - old.1.word_sum() + src.word_sum() + dst.word_sum();
    src.write_be(&mut pkt[src_at..]);
    dst.write_be(&mut pkt[dst_at..]);
    if v4 {
        let c = checksum::apply_delta(be16(pkt, l3 + 10), delta);
        set_be16(pkt, l3 + 10, c);
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::super::stage::tuple;
    use super::*;
    use crate::wire::build::{PacketSpec, L4};
    use crate::wire::parse::{parse, TunnelPorts};
    use crate::wire::{tcp::TcpPacket, udp::UdpPacket};
    use proptest::prelude::*;

    /// Every checksum of `pkt` verifies from scratch.
    fn checksums_ok(pkt: &[u8]) -> bool {
        let p = parse(pkt, TunnelPorts::NONE).unwrap();
        let l4 = &pkt[p.l4.unwrap()..p.l3 + p.ip_len];
        let ip_ok = p.src.is_ipv6() || checksum::sum(&pkt[p.l3..p.l3 + 20]) == 0xffff;
        let l4_ok = if p.protocol == tcp::PROTOCOL {
            TcpPacket::new_checked(l4)
                .unwrap()
                .verify_checksum(p.src, p.dst)
        } else {
            let u = UdpPacket::new_checked(l4).unwrap();
            (u.checksum() == 0 && p.src.is_ipv4()) || u.verify_checksum(p.src, p.dst)
        };
        ip_ok && l4_ok
    }

    proptest! {
        #[test]
        fn rewrite_keeps_every_checksum_valid(
            v6 in any::<bool>(),
            udp in any::<bool>(),
            a in any::<[u8; 16]>(),
            b in any::<[u8; 16]>(),
            c in any::<[u8; 16]>(),
            d in any::<[u8; 16]>(),
            ports in any::<[u16; 4]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let ip = |x: [u8; 16]| -> String {
                if v6 {
                    std::net::Ipv6Addr::from(x).to_string()
                } else {
                    std::net::Ipv4Addr::new(x[0], x[1], x[2], x[3]).to_string()
                }
            };
            let mut s = PacketSpec::udp(&ip(a), &ip(b), ports[0], ports[1], &payload);
            if !udp {
                s.l4 = L4::Tcp(0x10);
            }
            let mut pkt = s.build();
            prop_assume!(checksums_ok(&pkt));
            let p = parse(&pkt, TunnelPorts::NONE).unwrap();
            if v6 {
                let t = tuple(a, b, &p);
                rewrite(&mut pkt, &p, &t, Endpoint { addr: c, port: ports[2] }, Endpoint { addr: d, port: ports[3] });
            } else {
                let v4 = |x: [u8; 16]| u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
                let t = tuple(v4(a), v4(b), &p);
                rewrite(&mut pkt, &p, &t, Endpoint { addr: v4(c), port: ports[2] }, Endpoint { addr: v4(d), port: ports[3] });
            }
            prop_assert!(checksums_ok(&pkt));
            let q = parse(&pkt, TunnelPorts::NONE).unwrap();
            prop_assert_eq!((q.src_port, q.dst_port), (ports[2], ports[3]));
        }
    }
}
