//! TCP (RFC 9293) header view: ports, sequence numbers, flags, window, options length.

use super::{be16, be32, checksum, set_be16, WireError, WireResult};
use std::net::IpAddr;

pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const MIN_HEADER_LEN: usize = 20;
}

pub const PROTOCOL: u8 = 6;

pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

#[derive(Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks the fixed header and that the data offset (options included) fits.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        if buffer.as_ref().len() < field::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = TcpPacket { buffer };
        if p.header_len() < field::MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if p.header_len() > p.buffer.as_ref().len() {
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
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Verifies over the whole buffer as the segment.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        checksum::pseudo_header_sum(src, dst, PROTOCOL, self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Rewrites a port and updates the checksum incrementally.
    pub fn set_src_port(&mut self, v: u16) {
        self.set_word(field::SRC_PORT, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_word(field::DST_PORT, v)
    }
    fn set_word(&mut self, at: usize, v: u16) {
        let b = self.buffer.as_mut();
        let old = be16(b, at);
        set_be16(b, at, v);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, v);
        set_be16(b, field::CHECKSUM, c);
    }
    /// Updates the checksum for an address change in the pseudo-header (NAT).
    pub fn update_checksum_for_addr(&mut self, old: IpAddr, new: IpAddr) {
        let b = self.buffer.as_mut();
        let c = checksum::update_addr(be16(b, field::CHECKSUM), old, new);
        set_be16(b, field::CHECKSUM, c);
    }
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = !checksum::pseudo_header_sum(src, dst, PROTOCOL, self.buffer.as_ref());
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{PacketSpec, L4};

    fn syn() -> (Vec<u8>, IpAddr, IpAddr) {
        let mut s = PacketSpec::udp("10.0.0.1", "10.0.0.2", 40000, 80, b"");
        s.l4 = L4::Tcp(flags::SYN);
        let p = s.build();
        (p[34..].to_vec(), s.src, s.dst)
    }

    #[test]
    fn fields_and_incremental_port_rewrite() {
        let (mut seg, src, dst) = syn();
        let p = TcpPacket::new_checked(&seg[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.flags(), p.header_len()),
            (40000, 80, flags::SYN, 20)
        );
        assert!(p.verify_checksum(src, dst));
        let mut m = TcpPacket::new_checked(&mut seg[..]).unwrap();
        m.set_dst_port(8080);
        assert!(m.verify_checksum(src, dst));
        let new: IpAddr = "10.1.2.3".parse().unwrap();
        m.update_checksum_for_addr(dst, new);
        assert!(
            m.verify_checksum(src, new),
            "NAT of the destination keeps the checksum valid"
        );
    }

    #[test]
    fn rejects_bad_offsets() {
        let (mut seg, _, _) = syn();
        seg[12] = 4 << 4; // data offset below 5 words
        assert_eq!(
            TcpPacket::new_checked(&seg[..]).err(),
            Some(WireError::Malformed)
        );
        seg[12] = 15 << 4; // 60 bytes of header in a 20-byte segment
        assert_eq!(
            TcpPacket::new_checked(&seg[..]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            TcpPacket::new_checked(&seg[..19]).err(),
            Some(WireError::Truncated)
        );
    }
}
