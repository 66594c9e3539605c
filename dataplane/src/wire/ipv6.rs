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

#[cfg(test)]
mod tests {
    use super::*;

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
