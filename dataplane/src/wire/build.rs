//! Building whole test and generator packets: Ethernet (+ optional 802.1Q) / IPv4 or IPv6 /
//! UDP or TCP, with every checksum filled in. Used by fixture tests, benchmarks and the packet
//! generator's templates; allocation is fine here, it is never on the fast path.

use super::checksum;
use super::ethernet::{ethertype, MacAddr};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp,
    /// TCP with the given flags byte (0x02 SYN, 0x10 ACK, ...).
    Tcp(u8),
    /// TCP with flags, sequence and acknowledgement numbers.
    TcpSeq {
        flags: u8,
        seq: u32,
        ack: u32,
    },
}

#[derive(Debug, Clone)]
pub struct PacketSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

impl PacketSpec {
    /// A UDP packet between two addresses of the same family with default MACs and TTL 64.
    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> PacketSpec {
        PacketSpec {
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            dst_mac: [0x02, 0, 0, 0, 0, 0xbb],
            vlan: None,
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            ttl: 64,
            l4: L4::Udp,
            sport,
            dport,
            payload: payload.to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let (proto, l4) = self.l4_bytes();
        let mut p = Vec::with_capacity(18 + 40 + l4.len());
        p.extend_from_slice(&self.dst_mac);
        p.extend_from_slice(&self.src_mac);
        if let Some(vid) = self.vlan {
            p.extend_from_slice(&ethertype::VLAN.to_be_bytes());
            p.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p.extend_from_slice(&ethertype::IPV4.to_be_bytes());
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                h[6] = 0x40; // DF
                h[8] = self.ttl;
                h[9] = proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum::checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                p.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p.extend_from_slice(&ethertype::IPV6.to_be_bytes());
                let mut h = [0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                h[6] = proto;
                h[7] = self.ttl;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                p.extend_from_slice(&h);
            }
            _ => panic!("PacketSpec: source and destination of different families"),
        }
        p.extend_from_slice(&l4);
        p
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let (proto, mut b) = match self.l4 {
            L4::Udp => {
                let mut b = vec![0u8; 8];
                b[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                (17u8, b)
            }
            L4::Tcp(flags) | L4::TcpSeq { flags, .. } => {
                let mut b = vec![0u8; 20];
                if let L4::TcpSeq { seq, ack, .. } = self.l4 {
                    b[4..8].copy_from_slice(&seq.to_be_bytes());
                    b[8..12].copy_from_slice(&ack.to_be_bytes());
                }
                b[12] = 5 << 4;
                b[13] = flags;
                b[14..16].copy_from_slice(&65535u16.to_be_bytes());
                (6u8, b)
            }
        };
        b[0..2].copy_from_slice(&self.sport.to_be_bytes());
        b[2..4].copy_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&self.payload);
        let csum_at = if proto == 17 { 6 } else { 16 };
        let c = !checksum::pseudo_header_sum(self.src, self.dst, proto, &b);
        // UDP transmits a computed 0 as 0xffff (RFC 768)
        let c = if proto == 17 && c == 0 { 0xffff } else { c };
        b[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        (proto, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Packet;

    #[test]
    fn udp4_checksums_verify() {
        let p = PacketSpec::udp("10.0.0.1", "10.0.0.2", 1000, 2000, b"hi").build();
        assert_eq!(p.len(), 14 + 20 + 8 + 2);
        let ip = Ipv4Packet::new_checked(&p[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            checksum::pseudo_header_sum(ip.src().into(), ip.dst().into(), 17, &p[34..]),
            0xffff
        );
    }

    #[test]
    fn tcp6_checksum_verifies() {
        let mut s = PacketSpec::udp("fd00::1", "fd00::2", 1, 2, b"x");
        s.l4 = L4::Tcp(0x02);
        let p = s.build();
        assert_eq!(
            checksum::pseudo_header_sum(s.src, s.dst, 6, &p[54..]),
            0xffff
        );
    }
}
