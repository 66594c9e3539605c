//! IPv6 fixed headers (RFC 8200).

use super::{be16, WireError, WireResult};
use std::net::Ipv6Addr;

pub mod field {
    use core::ops::Range;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const HEADER_LEN: usize = 40;
}

#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// A view over bytes a `new_checked` of the same buffer already accepted (a later stage
    /// rewriting what an earlier one parsed); accessors may panic on anything else.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        let b = buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let p = Ipv6Packet { buffer };
        if p.buffer.as_ref().len() < field::HEADER_LEN + usize::from(p.payload_len()) {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    pub fn src(&self) -> Ipv6Addr {
        let o: [u8; 16] = self.buffer.as_ref()[field::SRC]
            .try_into()
            .unwrap_or_default();
        Ipv6Addr::from(o)
    }
    pub fn dst(&self) -> Ipv6Addr {
        let o: [u8; 16] = self.buffer.as_ref()[field::DST]
            .try_into()
            .unwrap_or_default();
        Ipv6Addr::from(o)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// IPv6 has no header checksum: the hop limit is just decremented.
    pub fn decrement_hop_limit(&mut self) {
        let b = self.buffer.as_mut();
        b[field::HOP_LIMIT] = b[field::HOP_LIMIT].wrapping_sub(1);
    }
}

/// Extension headers walked before a packet counts as malformed: RFC 8200 recommends a limit, and
/// no legitimate packet stacks more than a handful.
pub const MAX_EXTENSION_HEADERS: usize = 8;

pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// The upper-layer protocol after the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header was seen.
    pub fragment: bool,
    /// A non-first fragment: no upper-layer header is present.
    pub later_fragment: bool,
}

/// Walks the extension headers of an IPv6 packet (`packet` starts at the IPv6 header and was
/// checked by `Ipv6Packet::new_checked`).
pub fn walk_extensions(packet: &[u8]) -> WireResult<UpperLayer> {
    use next_header::*;
    let mut nh = packet
        .get(field::NEXT_HEADER)
        .copied()
        .ok_or(WireError::Truncated)?;
    let mut off = field::HEADER_LEN;
    let mut out = UpperLayer {
        protocol: nh,
        offset: off,
        fragment: false,
        later_fragment: false,
    };
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match nh {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let b = packet.get(off..off + 2).ok_or(WireError::Truncated)?;
                (usize::from(b[1]) + 1) * 8
            }
            AUTH => {
                let b = packet.get(off..off + 2).ok_or(WireError::Truncated)?;
                (usize::from(b[1]) + 2) * 4
            }
            FRAGMENT => {
                let b = packet.get(off..off + 8).ok_or(WireError::Truncated)?;
                out.fragment = true;
                out.later_fragment = be16(b, 2) & 0xfff8 != 0;
                8
            }
            upper => {
                out.protocol = upper;
                out.offset = off;
                return Ok(out);
            }
        };
        if packet.len() < off + len {
            return Err(WireError::Truncated);
        }
        nh = packet[off];
        off += len;
    }
    Err(WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ext(chain: &[(u8, Vec<u8>)], upper: u8) -> Vec<u8> {
        // chain: (this header's type, its bytes with byte 0 = next header filled in here)
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[6] = chain.first().map(|c| c.0).unwrap_or(upper);
        for (i, (_, bytes)) in chain.iter().enumerate() {
            let mut b = bytes.clone();
            b[0] = chain.get(i + 1).map(|c| c.0).unwrap_or(upper);
            h.extend_from_slice(&b);
        }
        h.extend_from_slice(&[0u8; 8]);
        let pl = (h.len() - 40) as u16;
        h[4..6].copy_from_slice(&pl.to_be_bytes());
        h
    }

    #[test]
    fn extension_headers_are_walked() {
        let hbh = vec![0u8, 0, 0, 0, 0, 0, 0, 0];
        let dst = vec![0u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let frag_first = vec![0u8, 0, 0x00, 0x01, 0, 0, 0, 1];
        let p = with_ext(&[(0, hbh.clone()), (60, dst), (44, frag_first)], 17);
        let u = walk_extensions(&p).unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.fragment, u.later_fragment),
            (17, 40 + 8 + 16 + 8, true, false)
        );
        let frag_later = vec![0u8, 0, 0x05, 0x00, 0, 0, 0, 1];
        let u = walk_extensions(&with_ext(&[(44, frag_later)], 6)).unwrap();
        assert!(u.later_fragment);
        // a chain longer than the limit, and a header running past the packet
        let many: Vec<(u8, Vec<u8>)> = (0..9).map(|_| (60u8, hbh.clone())).collect();
        assert_eq!(
            walk_extensions(&with_ext(&many, 17)),
            Err(WireError::Malformed)
        );
        let mut cut = with_ext(&[(0, hbh)], 17);
        cut[41] = 10; // hop-by-hop claims 88 bytes
        assert_eq!(walk_extensions(&cut), Err(WireError::Truncated));
    }

    #[test]
    fn parse_and_limits() {
        let mut h = [0u8; 48];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&8u16.to_be_bytes());
        h[6] = 17;
        h[7] = 2;
        h[23] = 1;
        h[39] = 2;
        let mut p = Ipv6Packet::new_checked(&mut h[..]).unwrap();
        assert_eq!(p.src(), "::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.next_header(), 17);
        p.decrement_hop_limit();
        assert_eq!(p.hop_limit(), 1);
        assert_eq!(
            Ipv6Packet::new_checked(&h[..47]).err(),
            Some(WireError::Truncated)
        );
        h[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&h[..]).err(),
            Some(WireError::Malformed)
        );
    }
}
