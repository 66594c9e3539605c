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

mod decap;
mod encap;
mod too_big;

pub use decap::decap;
pub use encap::{encap, EncapState};
pub(crate) use too_big::{time_exceeded, too_big};

use crate::state::OverlayMode;
use crate::wire::parse::TunnelPorts;
use crate::wire::{checksum, set_be16};
use std::net::IpAddr;

/// Outer headers: Ethernet 14 + IPv4 20 / IPv6 40 + UDP 8 (+ the tunnel header).
pub(crate) const ETH: usize = 14;
pub(crate) const IPV4: usize = 20;
pub(crate) const IPV6: usize = 40;
pub(crate) const UDP: usize = 8;
/// Outer TTL / hop limit of encapsulated packets (the kernel vxlan default is 64 too).
const OUTER_TTL: u8 = 64;

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

/// Writes an IPv4 (20 bytes, checksum filled in, DF when `df`) or IPv6 (40 bytes; an IPv4 address
/// is written mapped) header in `ip`, whose length says which, with TTL / hop limit `OUTER_TTL`.
pub(crate) fn write_ip_header(
    ip: &mut [u8],
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    payload: usize,
    df: bool,
) {
    if let (IPV4, IpAddr::V4(s), IpAddr::V4(d)) = (ip.len(), src, dst) {
        ip.fill(0);
        ip[0] = 0x45;
        set_be16(ip, 2, (IPV4 + payload) as u16);
        if df {
            ip[6] = 0x40;
        }
        ip[8] = OUTER_TTL;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&s.octets());
        ip[16..20].copy_from_slice(&d.octets());
        let c = checksum::checksum(ip);
        set_be16(ip, 10, c);
    } else {
        let o6 = |a: IpAddr| match a {
            IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            IpAddr::V6(v) => v.octets(),
        };
        let ip = &mut ip[..IPV6];
        ip.fill(0);
        ip[0] = 0x60;
        set_be16(ip, 4, payload as u16);
        ip[6] = proto;
        ip[7] = OUTER_TTL;
        ip[8..24].copy_from_slice(&o6(src));
        ip[24..40].copy_from_slice(&o6(dst));
    }
}

#[cfg(test)]
mod tests {
    use super::decap::{classify, classify_plain_vxlan};
    use super::encap::Inner;
    use crate::wire::build::PacketSpec;
    use crate::wire::parse::{parse, TunnelPorts};
    use proptest::prelude::*;
    use std::net::IpAddr;

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
