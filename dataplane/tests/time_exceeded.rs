//! A packet whose TTL / hop limit runs out at the appliance is answered with ICMP time exceeded,
//! from the appliance's address, back to the previous hop (traceroute sees the hop): routed and
//! service traffic alike, the latter untranslated; never about an ICMP error.

mod common;

use common::{icmp_of, ip, Lb};
use sluice_dataplane::fixtures::{service_snapshot, MAC_CLIENT, MAC_CLI_PORT};
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::checksum;
use sluice_dataplane::DropReason;

fn packet(src: &str, dst: &str, ttl: u8, tcp: bool) -> Vec<u8> {
    let mut s = PacketSpec::udp(src, dst, 40000, 80, b"probe");
    if tcp {
        s.l4 = L4::Tcp(0x02);
    }
    s.ttl = ttl;
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    s.build()
}

#[test]
fn an_expiring_packet_is_answered_with_time_exceeded() {
    for (client, to, from, kind, tcp) in [
        ("10.10.0.2", "10.20.0.11", "10.20.0.1", 11, false), // routed; the node address
        ("fd00:10::2", "fd00:20::11", "fd00:20::1", 3, false), // the SNAT address (no v6 node one)
        ("10.10.0.2", "10.96.0.80", "10.20.0.1", 11, true),  // to a service: not translated
    ] {
        let mut lb = Lb::new(service_snapshot([1, 1, 2]));
        let sent = packet(client, to, 1, tcp);
        let (port, out) = lb.send(0, &sent).expect("an error back");
        assert_eq!(port, 0, "back out the way it came");
        assert_eq!(&out[0..6], &MAC_CLIENT, "to the previous hop");
        let (p, msg) = icmp_of(&out);
        assert_eq!((p.src, p.dst), (ip(from), ip(client)));
        assert_eq!((msg.msg_type(), msg.code()), (kind, 0));
        assert_eq!(
            msg.payload(),
            &sent[14..],
            "the packet quoted as it arrived"
        );
        assert_eq!(lb.stats.drops(DropReason::TtlExceeded), 1);
        assert_eq!(lb.stats.icmp_errors.get(), 1);
        assert_eq!(
            lb.stats.lb_new_connections.get(),
            0,
            "{to}: nothing tracked"
        );
    }
}

#[test]
fn an_icmp_error_is_not_answered_with_one() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    // port unreachable from the client with TTL 1 (a 20-byte quote of some packet after it)
    let mut s = PacketSpec::udp("10.10.0.2", "10.20.0.11", 0, 0, &[0u8; 28]);
    s.ttl = 1;
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    let mut f = s.build();
    f[14 + 9] = 1; // protocol ICMP; the UDP header's first bytes become type 3, code 3
    f[14 + 20] = 3;
    f[14 + 21] = 3;
    let c = checksum::checksum(&{
        let mut h = f[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(lb.send(0, &f), None, "dropped, not answered");
    assert_eq!(lb.stats.drops(DropReason::TtlExceeded), 1);
    assert_eq!(lb.stats.icmp_errors.get(), 0);
}

#[test]
fn a_vlan_tagged_packet_is_not_answered_untagged() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let mut s = PacketSpec::udp("10.10.0.2", "10.20.0.11", 40000, 33434, b"probe");
    s.ttl = 1;
    s.vlan = Some(100);
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    assert_eq!(lb.send(0, &s.build()), None, "dropped");
    assert_eq!(lb.stats.drops(DropReason::TtlExceeded), 1);
    assert_eq!(lb.stats.icmp_errors.get(), 0);
}
