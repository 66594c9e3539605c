//! The whole header stack of a frame in one pass, with checked lengths: Ethernet, 802.1Q/QinQ,
//! IPv4 (options tolerated) or IPv6 (extension headers walked), TCP/UDP/ICMP, and a VXLAN or
//! Geneve header when the UDP destination port is a tunnel port. No accessor of a result can
//! panic; every malformed input is an error. This is what the fuzz target runs.

use super::ethernet::{ethertype, EthernetFrame};
use super::geneve::{self, GenevePacket};
use super::ipv4::Ipv4Packet;
use super::ipv6::{walk_extensions, Ipv6Packet};
use super::tcp::TcpPacket;
use super::udp::UdpPacket;
use super::vxlan::VxlanPacket;
use super::{icmp, tcp, udp, WireError, WireResult};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    Vxlan,
    Geneve,
}

/// The UDP ports on which a frame is a tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPorts {
    pub vxlan: Option<u16>,
    pub geneve: Option<u16>,
}

impl TunnelPorts {
    pub const NONE: TunnelPorts = TunnelPorts {
        vxlan: None,
        geneve: None,
    };
    pub const DEFAULT: TunnelPorts = TunnelPorts {
        vxlan: Some(super::vxlan::LINUX_PORT),
        geneve: Some(geneve::PORT),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub kind: TunnelKind,
    pub vni: u32,
    /// Identity from a Geneve option, if present.
    pub identity: Option<u32>,
    /// Offset of the inner Ethernet frame.
    pub inner: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub vlan: u16,
    pub ethertype: u16,
    /// Offset of the IP header.
    pub l3: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// Bytes from the IP header to the end of the IP packet.
    pub ip_len: usize,
    pub protocol: u8,
    /// Offset of the L4 header; None for non-first fragments.
    pub l4: Option<usize>,
    pub fragment: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub tunnel: Option<Tunnel>,
}

/// Parses `frame`; `ports` says which UDP destination ports carry tunnels.
pub fn parse(frame: &[u8], ports: TunnelPorts) -> WireResult<Parsed> {
    let eth = EthernetFrame::new_checked(frame)?;
    let (et, l3, vlan) = eth.l3()?;
    let ip_bytes = &frame[l3..];
    let (src, dst, ttl, ip_len, protocol, l4_rel, fragment, later) = match et {
        ethertype::IPV4 => {
            let p = Ipv4Packet::new_checked(ip_bytes)?;
            let later = p.is_fragment() && (super::be16(ip_bytes, 6) & 0x1fff) != 0;
            (
                IpAddr::from(p.src()),
                IpAddr::from(p.dst()),
                p.ttl(),
                usize::from(p.total_len()),
                p.protocol(),
                p.header_len(),
                p.is_fragment(),
                later,
            )
        }
        ethertype::IPV6 => {
            let p = Ipv6Packet::new_checked(ip_bytes)?;
            let len = 40 + usize::from(p.payload_len());
            let u = walk_extensions(&ip_bytes[..len])?;
            (
                IpAddr::from(p.src()),
                IpAddr::from(p.dst()),
                p.hop_limit(),
                len,
                u.protocol,
                u.offset,
                u.fragment,
                u.later_fragment,
            )
        }
        _ => return Err(WireError::Malformed),
    };
    let mut out = Parsed {
        vlan,
        ethertype: et,
        l3,
        src,
        dst,
        ttl,
        ip_len,
        protocol,
        l4: None,
        fragment,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        tunnel: None,
    };
    if later {
        return Ok(out);
    }
    let l4 = l3 + l4_rel;
    let seg = frame.get(l4..l3 + ip_len).ok_or(WireError::Truncated)?;
    out.l4 = Some(l4);
    match protocol {
        tcp::PROTOCOL => {
            let t = TcpPacket::new_checked(seg)?;
            (out.src_port, out.dst_port, out.tcp_flags) = (t.src_port(), t.dst_port(), t.flags());
        }
        udp::PROTOCOL => {
            let u = UdpPacket::new_checked(seg)?;
            (out.src_port, out.dst_port) = (u.src_port(), u.dst_port());
            let inner = l4 + udp::field::HEADER_LEN;
            let payload = u.payload();
            if Some(out.dst_port) == ports.vxlan && !fragment {
                let v = VxlanPacket::new_checked(payload)?;
                out.tunnel = Some(Tunnel {
                    kind: TunnelKind::Vxlan,
                    vni: v.vni(),
                    identity: None,
                    inner: inner + 8,
                });
            } else if Some(out.dst_port) == ports.geneve && !fragment {
                let g = GenevePacket::new_checked(payload)?;
                if g.protocol() != geneve::PROTO_ETHERNET {
                    return Err(WireError::Malformed);
                }
                out.tunnel = Some(Tunnel {
                    kind: TunnelKind::Geneve,
                    vni: g.vni(),
                    identity: g.identity_option(),
                    inner: inner + g.header_len(),
                });
            }
        }
        icmp::PROTOCOL_V4 | icmp::PROTOCOL_V6 => {
            icmp::IcmpPacket::new_checked(seg)?;
        }
        _ => {}
    }
    Ok(out)
}

/// An untagged IPv4 frame without options, not a fragment, whose total length fits the frame and
/// leaves room for a UDP header: (protocol, bytes after the IP header). The first check of every
/// in-place fast path.
#[inline]
pub fn plain_ipv4(frame: &[u8]) -> Option<(u8, usize)> {
    const L3: usize = 14;
    if frame.len() < L3 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[L3] != 0x45 {
        return None;
    }
    let total = usize::from(super::be16(frame, L3 + 2));
    if super::be16(frame, L3 + 6) & 0x3fff != 0 || total < 20 || L3 + total > frame.len() {
        return None;
    }
    Some((frame[L3 + 9], total - 20))
}

/// A `plain_ipv4` frame carrying TCP or UDP whose L4 header lengths are what `parse` accepts:
/// (protocol, TCP flags or 0 for UDP).
#[inline]
pub fn plain_ipv4_tcp_udp(frame: &[u8]) -> Option<(u8, u8)> {
    const L4: usize = 14 + 20;
    let (proto, seg) = plain_ipv4(frame)?;
    match proto {
        udp::PROTOCOL => {
            let ulen = usize::from(super::be16(frame, L4 + 4));
            (seg >= 8 && ulen >= 8 && ulen <= seg).then_some((proto, 0))
        }
        tcp::PROTOCOL if seg >= 20 => {
            let hl = usize::from(frame[L4 + 12] >> 4) * 4;
            (hl >= 20 && hl <= seg).then_some((proto, frame[L4 + 13]))
        }
        _ => None,
    }
}

/// `parse`, with the dominant case read in place: an untagged IPv4 frame without options, not a
/// fragment, carrying TCP or UDP to a port that is not a tunnel port. Every other frame goes to
/// `parse`. The result is always exactly `parse`'s (property-tested and fuzzed).
#[inline]
pub fn parse_fast(frame: &[u8], ports: TunnelPorts) -> WireResult<Parsed> {
    const L3: usize = 14;
    const L4: usize = L3 + 20;
    if let Some((proto, tcp_flags)) = plain_ipv4_tcp_udp(frame) {
        let src_port = super::be16(frame, L4);
        let dst_port = super::be16(frame, L4 + 2);
        let tunnel = Some(dst_port) == ports.vxlan || Some(dst_port) == ports.geneve;
        if !(proto == udp::PROTOCOL && tunnel) {
            let a = |at: usize| IpAddr::from(super::be32(frame, at).to_be_bytes());
            return Ok(Parsed {
                vlan: 0,
                ethertype: ethertype::IPV4,
                l3: L3,
                src: a(L3 + 12),
                dst: a(L3 + 16),
                ttl: frame[L3 + 8],
                ip_len: usize::from(super::be16(frame, L3 + 2)),
                protocol: proto,
                l4: Some(L4),
                fragment: false,
                src_port,
                dst_port,
                tcp_flags,
                tunnel: None,
            });
        }
    }
    parse(frame, ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{PacketSpec, L4};

    #[test]
    fn plain_tcp_and_udp() {
        let mut s = PacketSpec::udp("10.0.0.1", "10.0.0.2", 1234, 80, b"x");
        s.l4 = L4::Tcp(0x12);
        let p = parse(&s.build(), TunnelPorts::DEFAULT).unwrap();
        assert_eq!(
            (p.protocol, p.src_port, p.dst_port, p.tcp_flags, p.l4),
            (6, 1234, 80, 0x12, Some(34))
        );
        let u = parse(
            &PacketSpec::udp("fd00::1", "fd00::2", 5, 53, b"q").build(),
            TunnelPorts::DEFAULT,
        )
        .unwrap();
        assert_eq!((u.protocol, u.dst_port, u.l4), (17, 53, Some(54)));
    }

    #[test]
    fn vxlan_inside_udp() {
        let inner = PacketSpec::udp("10.1.0.1", "10.1.0.2", 1, 2, b"in").build();
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 7, 0];
        payload.extend_from_slice(&inner);
        let outer = PacketSpec::udp("192.168.0.1", "192.168.0.2", 50000, 8472, &payload).build();
        let p = parse(&outer, TunnelPorts::DEFAULT).unwrap();
        let t = p.tunnel.unwrap();
        assert_eq!(
            (t.kind, t.vni, t.inner),
            (TunnelKind::Vxlan, 7, 14 + 20 + 8 + 8)
        );
        assert_eq!(&outer[t.inner..], &inner[..]);
        // the same bytes on a non-tunnel port are plain UDP
        assert!(parse(&outer, TunnelPorts::NONE).unwrap().tunnel.is_none());
        // a tunnel header without the I flag is malformed
        let mut bad = outer.clone();
        bad[42] = 0;
        assert_eq!(parse(&bad, TunnelPorts::DEFAULT), Err(WireError::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn fast_path_agrees_with_the_full_parser(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), tcp in proptest::prelude::any::<bool>(), ihl5 in proptest::prelude::any::<bool>()) {
            // steer most inputs into the fast path's shape so both branches are exercised
            if bytes.len() > 40 {
                bytes[12] = 0x08;
                bytes[13] = 0x00;
                if ihl5 {
                    bytes[14] = 0x45;
                }
                bytes[23] = if tcp { 6 } else { 17 };
                bytes[20] &= 0x80;
                bytes[21] = 0;
                let total = (bytes.len() - 14 - usize::from(bytes[15] % 3)) as u16;
                bytes[16..18].copy_from_slice(&total.to_be_bytes());
            }
            for ports in [TunnelPorts::DEFAULT, TunnelPorts::NONE] {
                proptest::prop_assert_eq!(parse_fast(&bytes, ports), parse(&bytes, ports));
            }
        }
    }

    #[test]
    fn never_panics_on_prefixes() {
        let inner = PacketSpec::udp("10.1.0.1", "10.1.0.2", 1, 2, b"in").build();
        let mut payload = vec![
            0x02, 0, 0x65, 0x58, 0, 0, 9, 0, 0xff, 0x01, 0x01, 0x01, 0, 0, 0, 5,
        ];
        payload.extend_from_slice(&inner);
        let outer = PacketSpec::udp("fd00::1", "fd00::2", 50000, 6081, &payload).build();
        let t = parse(&outer, TunnelPorts::DEFAULT).unwrap().tunnel.unwrap();
        assert_eq!(
            (t.kind, t.vni, t.identity),
            (TunnelKind::Geneve, 9, Some(5))
        );
        for n in 0..outer.len() {
            let _ = parse(&outer[..n], TunnelPorts::DEFAULT);
        }
    }
}
