//! Frames written by scapy (an independent encoder; they are also the fuzz seed corpus in
//! fuzz/seeds/parse) must parse with sluice's wire layer into the values scapy put there.

use sluice_dataplane::wire::parse::{parse, TunnelKind, TunnelPorts};
use std::net::IpAddr;

fn frame(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../fuzz/seeds/parse/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_seed_parses_as_scapy_built_it() {
    let p = parse(&frame("udp4"), TunnelPorts::DEFAULT).unwrap();
    assert_eq!(
        (p.src, p.dst, p.protocol, p.src_port, p.dst_port),
        (ip("10.10.0.2"), ip("10.20.0.11"), 17, 1000, 53)
    );
    let p = parse(&frame("tcp4_syn"), TunnelPorts::DEFAULT).unwrap();
    assert_eq!((p.protocol, p.dst_port, p.tcp_flags), (6, 80, 0x02));
    assert_eq!(
        parse(&frame("vlan_udp4"), TunnelPorts::DEFAULT)
            .unwrap()
            .vlan,
        100
    );
    let p = parse(&frame("udp6_ext"), TunnelPorts::DEFAULT).unwrap();
    assert_eq!(
        (p.protocol, p.l4),
        (17, Some(14 + 40 + 8 + 8)),
        "two extension headers walked"
    );
    let p = parse(&frame("frag6"), TunnelPorts::DEFAULT).unwrap();
    assert!(
        p.fragment && p.l4.is_none(),
        "a later fragment has no L4 header"
    );
    let p = parse(&frame("frag4"), TunnelPorts::DEFAULT).unwrap();
    assert!(p.fragment && p.l4.is_none());
    let p = parse(&frame("ip4_options"), TunnelPorts::DEFAULT).unwrap();
    assert_eq!(p.l4, Some(14 + 24), "IPv4 options tolerated");
    assert_eq!(
        parse(&frame("icmp4"), TunnelPorts::DEFAULT)
            .unwrap()
            .protocol,
        1
    );
    assert_eq!(
        parse(&frame("icmp6"), TunnelPorts::DEFAULT)
            .unwrap()
            .protocol,
        58
    );
    for (name, kind, vni, identity) in [
        ("vxlan4", TunnelKind::Vxlan, 5001, None),
        ("vxlan6", TunnelKind::Vxlan, 2, None),
        ("geneve4_opt", TunnelKind::Geneve, 5001, Some(5001)),
    ] {
        let f = frame(name);
        let t = parse(&f, TunnelPorts::DEFAULT)
            .unwrap()
            .tunnel
            .unwrap_or_else(|| panic!("{name}: no tunnel"));
        assert_eq!((t.kind, t.vni, t.identity), (kind, vni, identity), "{name}");
        let inner = parse(&f[t.inner..], TunnelPorts::DEFAULT).unwrap();
        assert_eq!(
            (inner.src, inner.dst),
            (ip("10.244.2.5"), ip("10.10.0.2")),
            "{name}"
        );
    }
}
