//! VXLAN (RFC 7348): an 8-byte header after UDP, flags with the I bit and a 24-bit VNI.
//! Cilium carries the sender's security identity in the VNI.

use super::{WireError, WireResult};

pub mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: core::ops::Range<usize> = 4..7;
    pub const HEADER_LEN: usize = 8;
}

/// The "VNI is valid" flag.
pub const FLAG_I: u8 = 0x08;
/// IANA port; Cilium and the Linux default use 8472.
pub const IANA_PORT: u16 = 4789;
pub const LINUX_PORT: u16 = 8472;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

#[derive(Debug)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Checks length and that the I flag is set (RFC 7348: "MUST be set to 1 for a valid VNI").
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        let b = buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::FLAGS] & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(VxlanPacket { buffer })
    }
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> VxlanRepr {
        VxlanRepr { vni: p.vni() }
    }
    pub const fn header_len() -> usize {
        field::HEADER_LEN
    }
    pub fn emit(&self, buf: &mut [u8]) -> WireResult<()> {
        if buf.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.vni > MAX_VNI {
            return Err(WireError::Malformed);
        }
        buf[..8].copy_from_slice(&[FLAG_I, 0, 0, 0, 0, 0, 0, 0]);
        buf[field::VNI].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn byte_fixture() {
        // VNI 0x0003e9 (identity 1001), flags I
        let h = [0x08, 0, 0, 0, 0x00, 0x03, 0xe9, 0x00, 0xaa];
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(p.vni(), 1001);
        assert_eq!(p.payload(), &[0xaa]);
        assert_eq!(
            VxlanPacket::new_checked(&h[..7]).err(),
            Some(WireError::Truncated)
        );
        let mut no_i = h;
        no_i[0] = 0;
        assert_eq!(
            VxlanPacket::new_checked(&no_i[..]).err(),
            Some(WireError::Malformed)
        );
        assert!(VxlanRepr { vni: MAX_VNI + 1 }.emit(&mut [0; 8]).is_err());
    }

    proptest! {
        #[test]
        fn emit_then_parse(vni in 0u32..=MAX_VNI) {
            let mut b = [0u8; 8];
            VxlanRepr { vni }.emit(&mut b).unwrap();
            prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&b[..]).unwrap()).vni, vni);
        }
    }
}
