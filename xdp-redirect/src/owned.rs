//! The key of the `owned` steering map, laid out as `struct owned_key` in steer.bpf.c.

use std::net::{IpAddr, Ipv6Addr};

/// What the appliance owns: a destination (IP, protocol, port), with 0 as a wildcard for the
/// protocol and the port, and `::` as "any destination" (used for tunnel UDP ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnedKey {
    /// IPv6, or IPv4 as IPv4-mapped IPv6; `::` for any address.
    pub addr: Ipv6Addr,
    /// IP protocol number (6 TCP, 17 UDP), 0 for any.
    pub proto: u8,
    /// Destination port, host order; 0 for any.
    pub port: u16,
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

impl OwnedKey {
    /// Everything sent to `addr`.
    pub fn ip(addr: IpAddr) -> Self {
        OwnedKey {
            addr: mapped(addr),
            proto: 0,
            port: 0,
        }
    }

    /// `proto` traffic to `addr:port` (port 0: every port).
    pub fn service(addr: IpAddr, proto: u8, port: u16) -> Self {
        OwnedKey {
            addr: mapped(addr),
            proto,
            port,
        }
    }

    /// UDP to `port` on any address: tunnel endpoints.
    pub fn udp_port_any_ip(port: u16) -> Self {
        OwnedKey {
            addr: Ipv6Addr::UNSPECIFIED,
            proto: IPPROTO_UDP,
            port,
        }
    }

    /// The 20 bytes of `struct owned_key`: addr[16], proto, pad, port (network order).
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.addr.octets());
        b[16] = self.proto;
        b[18..20].copy_from_slice(&self.port.to_be_bytes());
        b
    }
}

/// The 20 bytes of `struct prefix_key`: prefixlen (host order, as LPM tries take it) and the
/// address; IPv4 prefixes are IPv4-mapped, so /24 becomes /120.
pub fn prefix_key(addr: IpAddr, len: u8) -> [u8; 20] {
    let bits = match addr {
        IpAddr::V4(_) => 96 + u32::from(len.min(32)),
        IpAddr::V6(_) => u32::from(len.min(128)),
    };
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&bits.to_ne_bytes());
    b[4..].copy_from_slice(&mapped(addr).octets());
    b
}

fn mapped(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_c_struct() {
        let k = OwnedKey::service("10.1.2.3".parse().unwrap(), IPPROTO_TCP, 8080);
        let b = k.to_bytes();
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[12..16], &[10, 1, 2, 3]);
        assert_eq!(b[16], 6);
        assert_eq!(b[17], 0);
        assert_eq!(&b[18..], &8080u16.to_be_bytes());
    }

    #[test]
    fn prefix_keys_map_ipv4_into_ipv6() {
        let k = prefix_key("10.20.0.0".parse().unwrap(), 24);
        assert_eq!(u32::from_ne_bytes(k[..4].try_into().unwrap()), 120);
        assert_eq!(&k[14..20], &[0xff, 0xff, 10, 20, 0, 0]);
        let k6 = prefix_key("fd00:20::".parse().unwrap(), 64);
        assert_eq!(u32::from_ne_bytes(k6[..4].try_into().unwrap()), 64);
    }

    #[test]
    fn tunnel_key_is_any_address() {
        let b = OwnedKey::udp_port_any_ip(8472).to_bytes();
        assert!(b[..16].iter().all(|&x| x == 0));
        assert_eq!(b[16], 17);
    }
}
