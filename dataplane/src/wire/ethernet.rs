//! Ethernet II frames and 802.1Q / 802.1ad tags.

use super::{be16, set_be16, WireError, WireResult};

pub mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const HEADER_LEN: usize = 14;
    /// An 802.1Q tag: TCI then the inner ethertype.
    pub const VLAN_TAG_LEN: usize = 4;
}

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// Tags walked before a frame counts as malformed (QinQ = 2).
pub const MAX_VLAN_TAGS: usize = 2;

pub type MacAddr = [u8; 6];

/// A view of an Ethernet frame.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view over bytes a `new_checked` of the same buffer already accepted (a later stage
    /// rewriting what an earlier one parsed); accessors may panic on anything else.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }
    pub fn new_checked(buffer: T) -> WireResult<Self> {
        if buffer.as_ref().len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }
    pub fn dst(&self) -> MacAddr {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .unwrap_or_default()
    }
    pub fn src(&self) -> MacAddr {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .unwrap_or_default()
    }
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }
    /// Walks VLAN tags: the L3 ethertype, the offset of the L3 header and the outer VLAN id (0 if
    /// untagged).
    pub fn l3(&self) -> WireResult<(u16, usize, u16)> {
        let b = self.buffer.as_ref();
        let mut et = self.ethertype();
        let mut off = field::HEADER_LEN;
        let mut vid = 0;
        let mut tags = 0;
        while et == ethertype::VLAN || et == ethertype::QINQ {
            if tags == MAX_VLAN_TAGS {
                return Err(WireError::Malformed);
            }
            if b.len() < off + field::VLAN_TAG_LEN {
                return Err(WireError::Truncated);
            }
            if tags == 0 {
                vid = be16(b, off) & 0x0fff;
            }
            et = be16(b, off + 2);
            off += field::VLAN_TAG_LEN;
            tags += 1;
        }
        Ok((et, off, vid))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, mac: &MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(mac);
    }
    pub fn set_src(&mut self, mac: &MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(mac);
    }
    pub fn set_ethertype(&mut self, et: u16) {
        set_be16(self.buffer.as_mut(), field::ETHERTYPE, et);
    }
}

/// `aa:bb:cc:dd:ee:ff` formatting and parsing.
pub fn format_mac(m: &MacAddr) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_qinq() {
        let mut f = [0u8; 22];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().l3(),
            Ok((0x0800, 14, 0))
        );

        f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        f[14..16].copy_from_slice(&0x0064u16.to_be_bytes()); // outer vid 100
        f[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[18..20].copy_from_slice(&0x00c8u16.to_be_bytes());
        f[20..22].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().l3(),
            Ok((0x86dd, 22, 100))
        );
    }

    #[test]
    fn truncated_tag_and_too_many_tags() {
        let mut f = [0u8; 16];
        f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().l3(),
            Err(WireError::Truncated)
        );
        assert_eq!(
            EthernetFrame::new_checked(&f[..10]).err(),
            Some(WireError::Truncated)
        );

        let mut g = [0u8; 30];
        for off in [12, 16, 20] {
            g[off..off + 2].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        }
        assert_eq!(
            EthernetFrame::new_checked(&g[..]).unwrap().l3(),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:00:0a:ff:00:01").unwrap();
        assert_eq!(format_mac(&m), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_none());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_none());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_none());
    }
}
