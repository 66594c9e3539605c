//! Internet checksum (RFC 1071) and its incremental update (RFC 1624, eqn. 3).

use std::net::IpAddr;

/// One's-complement sum of `data` folded to 16 bits (not inverted).
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    fold(acc)
}

/// The checksum field value for `data` (whose checksum field reads zero).
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

#[inline]
fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data went from `old` to
/// `new`: HC' = ~(~HC + ~m + m').
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// RFC 1624 eqn. 3 for several changed words at once: `delta` is the sum of ~m + m' over them
/// (unfolded; any u32 that does not overflow).
#[inline]
pub fn apply_delta(csum: u16, delta: u32) -> u16 {
    !fold(u32::from(!csum) + delta)
}

/// One's-complement sum (not inverted) of the pseudo-header (RFC 768/793 for IPv4, RFC 8200
/// section 8.1 for IPv6) and the L4 segment.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc: u32 = u32::from(sum(segment));
    let add_addr = |acc: &mut u32, a: IpAddr| match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            *acc += u32::from(u16::from_be_bytes([o[0], o[1]]))
                + u32::from(u16::from_be_bytes([o[2], o[3]]));
        }
        IpAddr::V6(v) => {
            for w in v.segments() {
                *acc += u32::from(w);
            }
        }
    };
    add_addr(&mut acc, src);
    add_addr(&mut acc, dst);
    let len = segment.len() as u32;
    acc += (len >> 16) + (len & 0xffff) + u32::from(proto);
    fold(acc)
}

/// RFC 1624 update for a changed address (NAT): covers both the IP header checksum (IPv4) and the
/// L4 checksum, whose pseudo-header holds the address.
pub fn update_addr(csum: u16, old: IpAddr, new: IpAddr) -> u16 {
    let words = |a: IpAddr| -> [u16; 8] {
        match a {
            IpAddr::V4(v) => {
                let o = v.octets();
                [
                    u16::from_be_bytes([o[0], o[1]]),
                    u16::from_be_bytes([o[2], o[3]]),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]
            }
            IpAddr::V6(v) => v.segments(),
        }
    };
    let (o, n) = (words(old), words(new));
    let mut acc = u32::from(!csum);
    for i in 0..8 {
        acc += u32::from(!o[i]) + u32::from(n[i]);
    }
    // the words an IPv4 address does not have cancel out: !0 + 0 = 0xffff = -0
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // A captured IPv4 header with checksum 0xb861 (zeroed here).
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
    }

    fn ones_eq(a: u16, b: u16) -> bool {
        a == b || (a == 0xffff && b == 0) || (a == 0 && b == 0xffff)
    }

    proptest! {
        #[test]
        fn address_update_equals_recompute_v4(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (a, b, c) = (IpAddr::from(a), IpAddr::from(b), IpAddr::from(c));
            let before = !pseudo_header_sum(a, b, 17, &payload);
            let after = !pseudo_header_sum(c, b, 17, &payload);
            prop_assert!(ones_eq(update_addr(before, a, c), after));
        }

        #[test]
        fn address_update_equals_recompute_v6(a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), c in any::<[u8; 16]>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (a, b, c) = (IpAddr::from(a), IpAddr::from(b), IpAddr::from(c));
            let before = !pseudo_header_sum(a, b, 6, &payload);
            let after = !pseudo_header_sum(a, c, 6, &payload);
            prop_assert!(ones_eq(update_addr(before, b, c), after));
        }

        #[test]
        fn incremental_equals_full(mut data in proptest::collection::vec(any::<u8>(), 20..64),
                                   word in 0usize..10, new in any::<u16>()) {
            // bytes 10..12 hold the checksum, as in an IPv4 header
            data[10] = 0; data[11] = 0;
            let c = checksum(&data);
            let w = if word == 5 { 4 } else { word };
            let at = w * 2;
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(c, old, new);
            let full = checksum(&data);
            // 0x0000 and 0xffff are the same value in one's complement
            prop_assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff));
        }
    }
}
