//! Zero-copy packet views, in the style of smoltcp's `wire`: a `XxxPacket<T: AsRef<[u8]>>` view with
//! field offsets in `mod field`, a `new_checked` constructor after which no accessor panics, and
//! setters only where `T: AsMut<[u8]>`.

pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// A packet too short or inconsistent for the view asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the header (or the length the header claims).
    Truncated,
    /// A field has a value this view cannot represent (bad version, header length below minimum).
    Malformed,
}

pub type WireResult<T> = Result<T, WireError>;

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
