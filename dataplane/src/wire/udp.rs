//! UDP (RFC 768).

use super::{be16, checksum, set_be16, WireError, WireResult};
use std::net::IpAddr;

pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const HEADER_LEN: usize = 8;
}

pub const PROTOCOL: u8 = 17;

#[derive(Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Checks the header fits and the length field is consistent with the buffer.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        let b = buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = UdpPacket { buffer };
        let len = usize::from(p.length());
        if len < field::HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..usize::from(self.length())]
    }
    /// Whether the checksum verifies; a zero checksum (IPv4 only) means "not computed".
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if self.checksum() == 0 && src.is_ipv4() {
            return true;
        }
        let seg = &self.buffer.as_ref()[..usize::from(self.length())];
        checksum::pseudo_header_sum(src, dst, PROTOCOL, seg) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        set_be16(self.buffer.as_mut(), field::SRC_PORT, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        set_be16(self.buffer.as_mut(), field::DST_PORT, v)
    }
    pub fn set_length(&mut self, v: u16) {
        set_be16(self.buffer.as_mut(), field::LENGTH, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, v)
    }
    /// Computes the checksum over pseudo-header, header and payload (0 is sent as 0xffff).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = usize::from(self.length());
        let c = !checksum::pseudo_header_sum(src, dst, PROTOCOL, &self.buffer.as_ref()[..len]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// A UDP header's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes after the header.
    pub payload_len: u16,
}

impl UdpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> UdpRepr {
        UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.length() - field::HEADER_LEN as u16,
        }
    }
    pub const fn header_len() -> usize {
        field::HEADER_LEN
    }
    /// Writes the header with a zero checksum (fill it afterwards, or leave 0 over IPv4 as
    /// tunnels commonly do).
    pub fn emit(&self, buf: &mut [u8]) -> WireResult<()> {
        if buf.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        set_be16(buf, field::SRC_PORT, self.src_port);
        set_be16(buf, field::DST_PORT, self.dst_port);
        set_be16(
            buf,
            field::LENGTH,
            self.payload_len
                .checked_add(8)
                .ok_or(WireError::Malformed)?,
        );
        set_be16(buf, field::CHECKSUM, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A DNS query captured on the wire: 10.0.0.2:53000 -> 10.0.0.1:53, checksum 0x6d8e.
    const DNS: [u8; 12] = [
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x0c, 0x6d, 0x8e, 0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn byte_fixture() {
        let p = UdpPacket::new_checked(&DNS[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.length()), (53000, 53, 12));
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        let (s, d) = ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let mut b = DNS;
        let mut m = UdpPacket::new_checked(&mut b[..]).unwrap();
        m.fill_checksum(s, d);
        assert!(m.verify_checksum(s, d));
        assert_eq!(
            UdpPacket::new_checked(&DNS[..7]).err(),
            Some(WireError::Truncated)
        );
        let mut short = DNS;
        short[5] = 7; // length below the header
        assert_eq!(
            UdpPacket::new_checked(&short[..]).err(),
            Some(WireError::Malformed)
        );
        short[5] = 40; // length past the buffer
        assert_eq!(
            UdpPacket::new_checked(&short[..]).err(),
            Some(WireError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(src in any::<u16>(), dst in any::<u16>(), len in 0u16..1400) {
            let r = UdpRepr { src_port: src, dst_port: dst, payload_len: len };
            let mut buf = vec![0u8; 8 + usize::from(len)];
            r.emit(&mut buf).unwrap();
            prop_assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap()), r);
        }
    }
}
