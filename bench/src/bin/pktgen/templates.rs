//! The templates: frame sizes (one, or IMIX) and the VXLAN/Geneve wrapping.

use super::Args;
use sluice_dataplane::wire::build::PacketSpec;

/// Source ports per source address.
pub(crate) const PORTS: u32 = 60_000;
/// Outer UDP source ports of encapsulated flows (49152..=65535, as VTEPs pick them).
pub(crate) const ENCAP_PORTS: u32 = 16_384;
/// Simple IMIX, frames without FCS: 7 of 64 bytes, 4 of 576, 1 of 1500.
pub(crate) const IMIX: [usize; 12] = [64, 64, 64, 64, 64, 64, 64, 576, 576, 576, 576, 1500];

/// The frame sizes to cycle through: one, or the IMIX. With encapsulation (`encap` bytes of
/// outer headers) the outer frame must fit 1514 bytes: IMIX's largest is cut to fit.
pub(crate) fn sizes_of(size: &str, encap: usize) -> Result<Vec<usize>, String> {
    let max = 1514 - encap;
    if size == "imix" {
        return Ok(IMIX.iter().map(|s| (*s).min(max)).collect());
    }
    let n: usize = size
        .parse()
        .map_err(|_| format!("--size {size:?} is not a number of bytes or imix"))?;
    if !(60..=max).contains(&n) {
        return Err(format!("--size {n} is outside 60..={max}"));
    }
    Ok(vec![n])
}

/// A tunnel around every frame.
pub(crate) struct Encap {
    geneve: bool,
    vni: u32,
    src: String,
    dst: String,
    port: u16,
    /// Bytes of outer headers: Ethernet, IP, UDP, the tunnel header.
    pub(crate) overhead: usize,
}

pub(crate) fn encap_of(a: &Args) -> Result<Option<Encap>, String> {
    let Some(kind) = &a.encap else {
        return Ok(None);
    };
    let geneve = match kind.as_str() {
        "vxlan" => false,
        "geneve" => true,
        o => return Err(format!("--encap {o:?} is not vxlan or geneve")),
    };
    if a.vni > 0x00ff_ffff {
        return Err(format!("--vni {} does not fit 24 bits", a.vni));
    }
    let (Some(src), Some(dst)) = (&a.outer_src, &a.outer_dst) else {
        return Err("--encap needs --outer-src and --outer-dst (the VTEPs)".into());
    };
    let v6 = dst.contains(':');
    if src.parse::<std::net::IpAddr>().is_err()
        || dst.parse::<std::net::IpAddr>().is_err()
        || src.contains(':') != v6
    {
        return Err("--outer-src and --outer-dst must be addresses of one IP family".into());
    }
    Ok(Some(Encap {
        geneve,
        vni: a.vni,
        src: src.clone(),
        dst: dst.clone(),
        port: a.outer_port.unwrap_or(if geneve { 6081 } else { 8472 }),
        overhead: if v6 { 70 } else { 50 },
    }))
}

impl Encap {
    /// `inner` in the tunnel, flow `f` in the outer source port.
    pub(crate) fn wrap(&self, inner: &[u8], f: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
        let vni = self.vni.to_be_bytes();
        let mut payload = if self.geneve {
            // version 0, no options; protocol: transparent Ethernet bridging
            vec![0, 0, 0x65, 0x58, vni[1], vni[2], vni[3], 0]
        } else {
            // flags: VNI valid
            vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]
        };
        payload.extend_from_slice(inner);
        let sport = 49152 + (f % ENCAP_PORTS) as u16;
        let mut s = PacketSpec::udp(&self.src, &self.dst, sport, self.port, &payload);
        s.src_mac = src_mac;
        s.dst_mac = dst_mac;
        s.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::wire::parse::{parse, TunnelKind, TunnelPorts};

    fn encap(geneve: bool) -> Encap {
        Encap {
            geneve,
            vni: 5001,
            src: "10.20.0.21".into(),
            dst: "10.20.0.1".into(),
            port: if geneve { 6081 } else { 8472 },
            overhead: 50,
        }
    }

    #[test]
    fn encapsulated_templates_parse_as_tunnels_with_the_inner_frame_whole() {
        let inner = PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 1024, &[0; 22]).build();
        for (geneve, kind) in [(false, TunnelKind::Vxlan), (true, TunnelKind::Geneve)] {
            let f = encap(geneve).wrap(&inner, 7, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            assert_eq!(f.len(), inner.len() + 50);
            let p = parse(&f, TunnelPorts::DEFAULT).expect("outer parses");
            let t = p.tunnel.expect("a tunnel");
            assert_eq!((t.kind, t.vni), (kind, 5001));
            assert_eq!(&f[t.inner..], &inner[..]);
            assert_eq!(p.src_port, 49152 + 7, "the flow in the outer source port");
        }
    }

    #[test]
    fn imix_is_seven_four_one_and_fits_the_tunnel() {
        let s = sizes_of("imix", 0).unwrap();
        assert_eq!(s.iter().filter(|n| **n == 64).count(), 7);
        assert_eq!(s.iter().filter(|n| **n == 576).count(), 4);
        assert_eq!(s.iter().filter(|n| **n == 1500).count(), 1);
        assert_eq!(sizes_of("imix", 50).unwrap().iter().max(), Some(&1464));
        assert!(sizes_of("1500", 50).is_err());
        assert!(sizes_of("big", 0).is_err());
        assert_eq!(sizes_of("128", 0).unwrap(), vec![128]);
    }
}
