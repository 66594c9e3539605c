//! IPv4 headers (RFC 791). Options are tolerated: the header length field is honoured.

use super::{be16, checksum, set_be16, WireError, WireResult};
use std::net::Ipv4Addr;

pub mod field {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_HEADER_LEN: usize = 20;
}

#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view over bytes a `new_checked` of the same buffer already accepted (a later stage
    /// rewriting what an earlier one parsed); accessors may panic on anything else.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }
    /// Checks version, header length and total length against the buffer.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        let b = buffer.as_ref();
        if b.len() < field::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Ipv4Packet { buffer };
        if p.version() != 4 || p.header_len() < field::MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total = usize::from(p.total_len());
        if total < p.header_len() {
            return Err(WireError::Malformed);
        }
        if p.buffer.as_ref().len() < total {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TOTAL_LEN)
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// True for every fragment but an unfragmented datagram.
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FRAG) & 0x3fff != 0
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(
            b[field::SRC],
            b[field::SRC + 1],
            b[field::SRC + 2],
            b[field::SRC + 3],
        )
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(
            b[field::DST],
            b[field::DST + 1],
            b[field::DST + 2],
            b[field::DST + 3],
        )
    }
    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Decrements the TTL, updating the header checksum incrementally (RFC 1624): TTL and protocol
    /// share one 16-bit word.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        let old = be16(b, field::TTL);
        b[field::TTL] = b[field::TTL].wrapping_sub(1);
        let new = be16(b, field::TTL);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        set_be16(b, field::CHECKSUM, c);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        set_be16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        set_be16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 1, 2, 10, 0, 2, 3,
        ];
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.fill_checksum();
        h
    }

    #[test]
    fn parse_fields() {
        let h = header();
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.src(), Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!((p.ttl(), p.protocol(), p.header_len()), (64, 17, 20));
        assert!(p.verify_checksum());
        assert!(!p.is_fragment());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut h = header();
        for expect in (1..64).rev() {
            let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
            p.decrement_ttl();
            assert_eq!(p.ttl(), expect);
            assert!(p.verify_checksum(), "ttl {expect}");
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut h = header();
        assert_eq!(
            Ipv4Packet::new_checked(&h[..19]).err(),
            Some(WireError::Truncated)
        );
        h[0] = 0x44; // ihl 4 words < 5
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).err(),
            Some(WireError::Malformed)
        );
        h[0] = 0x65; // version 6
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).err(),
            Some(WireError::Malformed)
        );
        let mut h = header();
        h[3] = 40; // total length beyond the buffer
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).err(),
            Some(WireError::Truncated)
        );
        h[3] = 10; // total length below the header
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).err(),
            Some(WireError::Malformed)
        );
    }
}
