//! Geneve (RFC 8926): base header, 24-bit VNI, protocol type, and TLV options walked with
//! checked lengths.
//!
//! sluice can carry the sender's security identity in an option of class 0xFF01 (the
//! experimental range, RFC 8926 section 9), type 0x01, 4 bytes, besides the VNI as Cilium does.

use super::{be16, set_be16, WireError, WireResult};

pub mod field {
    pub const VER_OPTLEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: usize = 2;
    pub const VNI: core::ops::Range<usize> = 4..7;
    pub const HEADER_LEN: usize = 8;
    pub const OPTION_HEADER_LEN: usize = 4;
}

pub const PORT: u16 = 6081;
/// Protocol type of an Ethernet payload (Transparent Ethernet Bridging).
pub const PROTO_ETHERNET: u16 = 0x6558;
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// sluice's identity option.
pub const OPT_CLASS_SLUICE: u16 = 0xff01;
pub const OPT_TYPE_IDENTITY: u8 = 0x01;
/// The critical bit of an option type: a receiver that does not know it must drop the packet.
pub const OPT_TYPE_CRITICAL: u8 = 0x80;

#[derive(Debug)]
pub struct GenevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// One TLV option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    pub type_: u8,
    pub data: &'a [u8],
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    /// Checks version 0 and that the options fit.
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        let b = buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = GenevePacket { buffer };
        if p.version() != 0 {
            return Err(WireError::Malformed);
        }
        if p.buffer.as_ref().len() < p.header_len() {
            return Err(WireError::Truncated);
        }
        // the options must tile the option area exactly
        let mut it = p.options_raw();
        for o in &mut it {
            o?;
        }
        Ok(p)
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPTLEN] >> 6
    }
    /// Base header plus options.
    pub fn header_len(&self) -> usize {
        field::HEADER_LEN + usize::from(self.buffer.as_ref()[field::VER_OPTLEN] & 0x3f) * 4
    }
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & 0x80 != 0
    }
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & 0x40 != 0
    }
    pub fn protocol(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PROTOCOL)
    }
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }
    fn options_raw(&self) -> OptionIter<'_> {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        OptionIter {
            rest: &b[field::HEADER_LEN.min(end)..end],
        }
    }
    /// The options (valid after `new_checked`).
    pub fn options(&self) -> impl Iterator<Item = GeneveOption<'_>> {
        self.options_raw().filter_map(Result::ok)
    }
    /// sluice's identity option, if present.
    pub fn identity_option(&self) -> Option<u32> {
        self.options()
            .find(|o| {
                o.class == OPT_CLASS_SLUICE && o.type_ & !OPT_TYPE_CRITICAL == OPT_TYPE_IDENTITY
            })
            .and_then(|o| {
                o.data
                    .get(..4)
                    .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            })
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = WireResult<GeneveOption<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < field::OPTION_HEADER_LEN {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        }
        let class = be16(self.rest, 0);
        let type_ = self.rest[2];
        let len = usize::from(self.rest[3] & 0x1f) * 4;
        let total = field::OPTION_HEADER_LEN + len;
        if self.rest.len() < total {
            self.rest = &[];
            return Some(Err(WireError::Truncated));
        }
        let data = &self.rest[field::OPTION_HEADER_LEN..total];
        self.rest = &self.rest[total..];
        Some(Ok(GeneveOption { class, type_, data }))
    }
}

/// A Geneve header as sluice emits it: VNI, Ethernet payload, and optionally the identity option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveRepr {
    pub vni: u32,
    pub protocol: u16,
    pub identity: Option<u32>,
}

impl GeneveRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &GenevePacket<T>) -> GeneveRepr {
        GeneveRepr {
            vni: p.vni(),
            protocol: p.protocol(),
            identity: p.identity_option(),
        }
    }
    pub fn header_len(&self) -> usize {
        field::HEADER_LEN + if self.identity.is_some() { 8 } else { 0 }
    }
    pub fn emit(&self, buf: &mut [u8]) -> WireResult<()> {
        let len = self.header_len();
        if buf.len() < len {
            return Err(WireError::Truncated);
        }
        if self.vni > MAX_VNI {
            return Err(WireError::Malformed);
        }
        let opt_words = ((len - field::HEADER_LEN) / 4) as u8;
        buf[field::VER_OPTLEN] = opt_words; // version 0
        buf[field::FLAGS] = 0;
        set_be16(buf, field::PROTOCOL, self.protocol);
        buf[field::VNI].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        buf[7] = 0;
        if let Some(id) = self.identity {
            set_be16(buf, 8, OPT_CLASS_SLUICE);
            buf[10] = OPT_TYPE_IDENTITY;
            buf[11] = 1; // one 4-byte word of data
            buf[12..16].copy_from_slice(&id.to_be_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn byte_fixture_with_options() {
        // optlen 3 words: option 0x0102/0x80 (critical) with one word of data (2 words), then
        // option 0xff01/0x02 with none (1 word)
        let h = [
            0x03, 0x00, 0x65, 0x58, 0x00, 0x00, 0x2a, 0x00, // base: optlen 3, TEB, VNI 42
            0x01, 0x02, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef, // option 0x0102/0x80, 4 bytes
            0xff, 0x01, 0x02, 0x00, // option 0xff01/0x02, no data
            0xaa, // payload
        ];
        let p = GenevePacket::new_checked(&h[..]).unwrap();
        assert_eq!(
            (p.vni(), p.protocol(), p.header_len()),
            (42, PROTO_ETHERNET, 20)
        );
        let opts: Vec<_> = p.options().collect();
        assert_eq!(opts.len(), 2);
        assert_eq!(
            opts[0],
            GeneveOption {
                class: 0x0102,
                type_: 0x80,
                data: &[0xde, 0xad, 0xbe, 0xef]
            }
        );
        assert_eq!(p.payload(), &[0xaa]);
        assert_eq!(p.identity_option(), None);
    }

    #[test]
    fn rejects_bad_version_truncated_and_ragged_options() {
        let mut h = [0u8; 16];
        h[0] = 0x40; // version 1
        assert_eq!(
            GenevePacket::new_checked(&h[..]).err(),
            Some(WireError::Malformed)
        );
        h[0] = 0x03; // 3 words of options but only 8 bytes after the base header
        assert_eq!(
            GenevePacket::new_checked(&h[..]).err(),
            Some(WireError::Truncated)
        );
        // an option claiming more data than the option area holds
        let ragged = [0x01, 0, 0x65, 0x58, 0, 0, 1, 0, 0xff, 0x01, 0x01, 0x05];
        assert_eq!(
            GenevePacket::new_checked(&ragged[..]).err(),
            Some(WireError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn emit_then_parse(vni in 0u32..=MAX_VNI, id in proptest::option::of(any::<u32>())) {
            let r = GeneveRepr { vni, protocol: PROTO_ETHERNET, identity: id };
            let mut b = vec![0u8; r.header_len()];
            r.emit(&mut b).unwrap();
            prop_assert_eq!(GeneveRepr::parse(&GenevePacket::new_checked(&b[..]).unwrap()), r);
        }
    }
}
