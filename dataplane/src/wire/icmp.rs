//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) headers, and the two errors the overlay sends back:
//! fragmentation needed (type 3 code 4, with the next-hop MTU, RFC 1191) and packet too big
//! (ICMPv6 type 2, RFC 8201).

use super::{be16, checksum, set_be16, WireError, WireResult};
use std::net::IpAddr;

pub mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// "Rest of header": identifier/sequence, or the MTU of the size errors.
    pub const REST: usize = 4;
    pub const HEADER_LEN: usize = 8;
}

pub const PROTOCOL_V4: u8 = 1;
pub const PROTOCOL_V6: u8 = 58;
pub const V4_DEST_UNREACHABLE: u8 = 3;
pub const V4_CODE_FRAG_NEEDED: u8 = 4;
pub const V4_TIME_EXCEEDED: u8 = 11;
pub const V6_PACKET_TOO_BIG: u8 = 2;
pub const V6_TIME_EXCEEDED: u8 = 3;

#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        if buffer.as_ref().len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// The MTU field of fragmentation-needed (low 16 bits) / packet-too-big (32 bits).
    pub fn mtu(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST..field::REST + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..]
    }
    /// ICMPv4 checks the message alone; ICMPv6 includes the pseudo-header.
    pub fn verify_checksum(&self, v6: Option<(IpAddr, IpAddr)>) -> bool {
        match v6 {
            None => checksum::sum(self.buffer.as_ref()) == 0xffff,
            Some((s, d)) => {
                checksum::pseudo_header_sum(s, d, PROTOCOL_V6, self.buffer.as_ref()) == 0xffff
            }
        }
    }
}

/// Writes a "too big" error into `buf`: header + as much of the offending packet (from its IP
/// header) as fits in `buf`. `v6` gives the ICMPv6 pseudo-header addresses (src = this hop).
/// Returns the message length.
pub fn emit_too_big(
    buf: &mut [u8],
    mtu: u32,
    offending: &[u8],
    v6: Option<(IpAddr, IpAddr)>,
) -> WireResult<usize> {
    if buf.len() < field::HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let quote = offending.len().min(buf.len() - field::HEADER_LEN);
    buf[field::HEADER_LEN..field::HEADER_LEN + quote].copy_from_slice(&offending[..quote]);
    let len = field::HEADER_LEN + quote;
    write_error_header(&mut buf[..len], Error::TooBig(mtu), v6);
    Ok(len)
}

/// The errors sluice sends as a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fragmentation needed / packet too big, with the next-hop MTU.
    TooBig(u32),
    /// Time (hop limit) exceeded in transit.
    TimeExceeded,
}

/// Whether an ICMP message of this type is an error (never answered with another error,
/// RFC 1812 4.3.2.7 / RFC 4443 2.4).
pub fn is_error(v6: bool, msg_type: u8) -> bool {
    if v6 {
        msg_type < 128
    } else {
        matches!(msg_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// Fills the ICMP header of error `e` whose quote already sits at `buf[8..]`; the message is all
/// of `buf` (at least the 8-byte header). `v6` gives the ICMPv6 pseudo-header addresses.
pub fn write_error_header(buf: &mut [u8], e: Error, v6: Option<(IpAddr, IpAddr)>) {
    let len = buf.len();
    let (t, code) = match (e, v6.is_some()) {
        (Error::TooBig(_), false) => (V4_DEST_UNREACHABLE, V4_CODE_FRAG_NEEDED),
        (Error::TooBig(_), true) => (V6_PACKET_TOO_BIG, 0),
        (Error::TimeExceeded, false) => (V4_TIME_EXCEEDED, 0),
        (Error::TimeExceeded, true) => (V6_TIME_EXCEEDED, 0),
    };
    buf[field::TYPE] = t;
    buf[field::CODE] = code;
    let rest = match (e, v6.is_some()) {
        // IPv4: the low 16 bits carry the MTU (RFC 1191), the high ones are unused
        (Error::TooBig(mtu), false) => mtu.min(0xffff),
        (Error::TooBig(mtu), true) => mtu,
        (Error::TimeExceeded, _) => 0,
    };
    buf[field::REST..field::REST + 4].copy_from_slice(&rest.to_be_bytes());
    set_be16(buf, field::CHECKSUM, 0);
    let c = match v6 {
        None => checksum::checksum(&buf[..len]),
        Some((s, d)) => !checksum::pseudo_header_sum(s, d, PROTOCOL_V6, &buf[..len]),
    };
    set_be16(buf, field::CHECKSUM, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_needed_and_packet_too_big() {
        let offending = [0x45u8; 28];
        let mut b = [0u8; 64];
        let n = emit_too_big(&mut b, 1450, &offending, None).unwrap();
        let p = IcmpPacket::new_checked(&b[..n]).unwrap();
        assert_eq!(
            (p.msg_type(), p.code(), p.mtu(), p.payload().len()),
            (3, 4, 1450, 28)
        );
        assert!(p.verify_checksum(None));

        let (s, d): (IpAddr, IpAddr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let mut b = [0u8; 20]; // room for 12 bytes of quote only
        let n = emit_too_big(&mut b, 1430, &offending, Some((s, d))).unwrap();
        let p = IcmpPacket::new_checked(&b[..n]).unwrap();
        assert_eq!((p.msg_type(), p.mtu(), p.payload().len()), (2, 1430, 12));
        assert!(p.verify_checksum(Some((s, d))));
        assert!(IcmpPacket::new_checked(&b[..7]).is_err());
    }
}
