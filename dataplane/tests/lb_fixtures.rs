//! Service load balancing on the `mem` backend: DNAT+SNAT of new connections, reverse NAT of
//! replies, checksums, the weighted split, connections staying on their backend across backend
//! changes, UDP, IPv6, and the drop reasons.

mod common;

use common::{ip, tcp, Lb};
use sluice_dataplane::fixtures::{service_snapshot, MAC_BACKEND, MAC_CLIENT, MAC_CLI_PORT};
use sluice_dataplane::handoff::Handoff;
use sluice_dataplane::lb::maglev::flow_hash;
use sluice_dataplane::lb::{Dispatch, LbMode, LbSettings};
use sluice_dataplane::state::Snapshot;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::parse::{parse, Parsed, TunnelPorts};
use sluice_dataplane::wire::tcp::flags::{ACK, FIN, SYN};
use sluice_dataplane::wire::{checksum, tcp::TcpPacket, udp::UdpPacket};
use sluice_dataplane::DropReason;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Parses and checks every checksum of a frame sluice emitted.
fn checked(out: &[u8]) -> Parsed {
    let p = parse(out, TunnelPorts::NONE).unwrap();
    let l4 = &out[p.l4.unwrap()..p.l3 + p.ip_len];
    if p.src.is_ipv4() {
        assert_eq!(
            checksum::sum(&out[p.l3..p.l3 + 20]),
            0xffff,
            "IPv4 checksum"
        );
    }
    if p.protocol == 6 {
        assert!(
            TcpPacket::new_checked(l4)
                .unwrap()
                .verify_checksum(p.src, p.dst),
            "TCP checksum"
        );
    } else {
        let u = UdpPacket::new_checked(l4).unwrap();
        assert!(
            u.checksum() == 0 || u.verify_checksum(p.src, p.dst),
            "UDP checksum"
        );
    }
    p
}

#[test]
fn new_connection_is_translated_both_ways() {
    for (client, vip, snat) in [
        ("10.10.0.2", "10.96.0.80", "10.20.0.1"),
        ("fd00:10::2", "fd00:96::80", "fd00:20::1"),
    ] {
        let mut lb = Lb::new(service_snapshot([1, 1, 2]));
        let (port, out) = lb
            .send(0, &tcp(client, vip, 40000, 80, SYN))
            .expect("forwarded");
        assert_eq!(port, 1, "toward the backends");
        assert_eq!(&out[0..6], &MAC_BACKEND);
        let p = checked(&out);
        assert_eq!(p.src, ip(snat), "SNAT to the appliance");
        assert!(
            (61000..=65535).contains(&p.src_port),
            "SNAT port {}",
            p.src_port
        );
        assert_eq!(p.dst_port, 8080, "backend port");
        let backend = p.dst;
        assert_eq!(lb.stats.lb_new_connections.get(), 1);

        // the backend's reply goes back to the client as if from the VIP
        let reply = tcp(&backend.to_string(), snat, 8080, p.src_port, SYN | ACK);
        let (port, back) = lb.send(1, &reply).expect("reply forwarded");
        assert_eq!(port, 0);
        let r = checked(&back);
        assert_eq!(
            (r.src, r.src_port, r.dst, r.dst_port),
            (ip(vip), 80, ip(client), 40000)
        );

        // later segments of the same connection: same backend, same SNAT port
        let (_, again) = lb.send(0, &tcp(client, vip, 40000, 80, ACK)).unwrap();
        let a = checked(&again);
        assert_eq!((a.dst, a.src_port), (backend, p.src_port));
        assert_eq!(lb.stats.lb_new_connections.get(), 1);
        assert_eq!(lb.stats.ct_entries.get(), 1);
    }
}

#[test]
fn new_connections_split_by_weight() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let mut per: HashMap<IpAddr, usize> = HashMap::new();
    let n = 4000;
    for i in 0..n {
        let frame = tcp(
            &format!("10.10.{}.{}", 1 + i / 250, 1 + i % 250),
            "10.96.0.80",
            40000 + i as u16,
            80,
            SYN,
        );
        let (_, out) = lb.send(0, &frame).unwrap();
        *per.entry(parse(&out, TunnelPorts::NONE).unwrap().dst)
            .or_default() += 1;
    }
    for (b, want) in [
        ("10.20.0.11", 0.25),
        ("10.20.0.12", 0.25),
        ("10.20.0.13", 0.5),
    ] {
        let got = per[&ip(b)] as f64 / n as f64;
        assert!(
            (got - want).abs() < 0.05,
            "{b}: {got:.3} of new connections, want {want}"
        );
    }
}

#[test]
fn a_connection_keeps_its_backend_when_the_backends_change() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let (_, out) = lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 40001, 80, SYN))
        .unwrap();
    let first = parse(&out, TunnelPorts::NONE).unwrap();
    // reweighted so the connection's backend takes no new connections at all
    let mut w = [1u16, 1, 1];
    let idx = [ip("10.20.0.11"), ip("10.20.0.12"), ip("10.20.0.13")]
        .iter()
        .position(|a| *a == first.dst)
        .unwrap();
    w[idx] = 0;
    lb.publisher.publish(service_snapshot(w));
    let (_, out) = lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 40001, 80, ACK))
        .unwrap();
    assert_eq!(
        parse(&out, TunnelPorts::NONE).unwrap().dst,
        first.dst,
        "established stays"
    );
    // a new connection does not land there
    for sport in 50000..50050 {
        let (_, out) = lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
            .unwrap();
        assert_ne!(parse(&out, TunnelPorts::NONE).unwrap().dst, first.dst);
    }
    // once closed and past the closing timeout, the entry is gone
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40001, 80, FIN | ACK))
        .unwrap();
    let before = lb.pipeline.lb.connections();
    lb.pipeline.lb.advance_clock(11);
    for _ in 0..200 {
        // GC steps run per batch; any traffic drives them
        lb.send(0, &tcp("10.10.0.9", "10.10.0.2", 1, 2, ACK));
    }
    assert_eq!(lb.pipeline.lb.connections(), before - 1);
}

#[test]
fn a_syn_reusing_a_closed_connections_tuple_is_a_new_connection() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let syn = tcp("10.10.0.2", "10.96.0.80", 40002, 80, SYN);
    let (_, out) = lb.send(0, &syn).unwrap();
    let first = parse(&out, TunnelPorts::NONE).unwrap();
    // while the connection is open, a stray SYN belongs to it
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40002, 80, ACK))
        .unwrap();
    lb.send(0, &syn).unwrap();
    assert_eq!(lb.stats.lb_new_connections.get(), 1);
    // closed; the client reuses its port (the server closed first, so the client has no
    // TIME_WAIT): the SYN is balanced afresh onto a table where the old backend takes nothing
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40002, 80, FIN | ACK))
        .unwrap();
    let mut w = [1u16, 1, 1];
    let idx = [ip("10.20.0.11"), ip("10.20.0.12"), ip("10.20.0.13")]
        .iter()
        .position(|a| *a == first.dst)
        .unwrap();
    w[idx] = 0;
    lb.publisher.publish(service_snapshot(w));
    let (_, out) = lb.send(0, &syn).unwrap();
    let second = checked(&out);
    assert_ne!(second.dst, first.dst, "rebalanced");
    assert_eq!(lb.stats.lb_new_connections.get(), 2);
    assert_eq!(
        lb.stats.ct_entries.get(),
        1,
        "the closed entry was replaced"
    );
    // and it is a live connection again: the reply is translated back
    let reply = tcp(
        &second.dst.to_string(),
        "10.20.0.1",
        8080,
        second.src_port,
        SYN | ACK,
    );
    let (port, back) = lb.send(1, &reply).expect("reply forwarded");
    assert_eq!(port, 0);
    assert_eq!(checked(&back).src, ip("10.96.0.80"));
}

/// The fixture services with sessionAffinity ClientIP and this timeout.
fn with_affinity(mut snap: Snapshot, timeout: u32) -> Snapshot {
    let mut cluster = (*snap.cluster).clone();
    for e in cluster.services.values_mut() {
        let mut s = (**e).clone();
        s.affinity_timeout_s = Some(timeout);
        *e = Arc::new(s);
    }
    snap.cluster = Arc::new(cluster);
    snap
}

fn backend_of(lb: &mut Lb, client: &str, sport: u16) -> IpAddr {
    let vip = if client.contains(':') {
        "fd00:96::80"
    } else {
        "10.96.0.80"
    };
    let (_, out) = lb.send(0, &tcp(client, vip, sport, 80, SYN)).unwrap();
    checked(&out).dst
}

#[test]
fn client_ip_affinity_keeps_a_client_on_its_backend_until_the_timeout() {
    for client in ["10.10.0.2", "fd00:10::2"] {
        let mut lb = Lb::new(with_affinity(service_snapshot([1, 1, 2]), 30));
        let first = backend_of(&mut lb, client, 40000);
        // every new connection of the client, whatever its port, goes to the same backend
        for sport in 40001..40100 {
            assert_eq!(
                backend_of(&mut lb, client, sport),
                first,
                "{client}:{sport}"
            );
        }
        // a backend added (reweighted here) moves Maglev slots, not the client
        lb.publisher
            .publish(with_affinity(service_snapshot([3, 3, 1]), 30));
        for sport in 41000..41050 {
            assert_eq!(backend_of(&mut lb, client, sport), first);
        }
        // the client's backend stops taking new connections: the client moves, and stays
        let mut w = [1u16, 1, 1];
        let family = if client.contains(':') {
            "fd00:20::"
        } else {
            "10.20.0."
        };
        let idx = (11..14)
            .position(|i| ip(&format!("{family}{i}")) == first)
            .unwrap();
        w[idx] = 0;
        lb.publisher.publish(with_affinity(service_snapshot(w), 30));
        let moved = backend_of(&mut lb, client, 42000);
        assert_ne!(moved, first);
        for sport in 42001..42050 {
            assert_eq!(backend_of(&mut lb, client, sport), moved);
        }
        // back in the table, the client stays where it is while it keeps coming within 30 s
        lb.publisher
            .publish(with_affinity(service_snapshot([1, 1, 2]), 30));
        lb.pipeline.lb.advance_clock(25);
        assert_eq!(backend_of(&mut lb, client, 43000), moved);
        lb.pipeline.lb.advance_clock(25);
        assert_eq!(backend_of(&mut lb, client, 43001), moved, "timer refreshed");
        // after 31 s of silence it is forgotten: back to the hash of its address
        lb.pipeline.lb.advance_clock(31);
        assert_eq!(backend_of(&mut lb, client, 43002), first);
        // other clients are spread as usual (not all on one backend)
        let spread: std::collections::HashSet<IpAddr> = (0..60)
            .map(|i| {
                let c = if client.contains(':') {
                    format!("fd00:10::1:{i:x}")
                } else {
                    format!("10.10.1.{}", i + 1)
                };
                backend_of(&mut lb, &c, 40000)
            })
            .collect();
        assert_eq!(spread.len(), 3, "{spread:?}");
    }
}

#[test]
fn without_affinity_a_clients_connections_spread() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let seen: std::collections::HashSet<IpAddr> = (40000..40060)
        .map(|sport| backend_of(&mut lb, "10.10.0.2", sport))
        .collect();
    assert_eq!(seen.len(), 3);
}

#[test]
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let mut q = PacketSpec::udp("10.10.0.2", "10.96.0.80", 5000, 53, b"query");
    q.dst_mac = MAC_CLI_PORT;
    let frame = q.build();
    let (_, out) = lb.send(0, &frame).unwrap();
    let p = checked(&out);
    assert_eq!((p.src, p.dst_port), (ip("10.20.0.1"), 5353));
    let mut zero = frame.clone();
    zero[40..42].copy_from_slice(&[0, 0]); // UDP checksum "none"
    let (_, out) = lb.send(0, &zero).unwrap();
    assert_eq!(&out[40..42], &[0, 0]);
    let mut r = PacketSpec::udp(&p.dst.to_string(), "10.20.0.1", 5353, p.src_port, b"answer");
    r.dst_mac = MAC_CLI_PORT;
    let (port, back) = lb.send(1, &r.build()).unwrap();
    let b = checked(&back);
    assert_eq!(
        (port, b.src, b.src_port, b.dst_port),
        (0, ip("10.96.0.80"), 53, 5000)
    );
}

#[test]
fn drops_say_why() {
    // no backend can take a new connection
    let mut lb = Lb::new(service_snapshot([0, 0, 0]));
    assert!(lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 1, 80, SYN))
        .is_none());
    assert_eq!(lb.stats.drops(DropReason::ServiceBackendNotFound), 1);
    // no SNAT address for the family
    let mut s = service_snapshot([1, 1, 1]);
    s.lb = Arc::new(Default::default());
    let mut lb = Lb::new(s);
    assert!(lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 1, 80, SYN))
        .is_none());
    assert_eq!(lb.stats.drops(DropReason::NatNoMapping), 1);
    // traffic that is not for a frontend is routed untouched
    let mut lb = Lb::new(service_snapshot([1, 1, 1]));
    let (_, out) = lb
        .send(0, &tcp("10.10.0.2", "10.20.0.11", 1, 8080, SYN))
        .unwrap();
    let p = checked(&out);
    assert_eq!(
        (p.src, p.src_port, p.dst),
        (ip("10.10.0.2"), 1, ip("10.20.0.11"))
    );
    assert_eq!(lb.stats.ct_entries.get(), 0);
}

/// The lab service on its first backend only, SNAT over ports `lo..=hi`.
fn one_backend_snat_ports(lo: u16, hi: u16) -> Lb {
    let mut s = service_snapshot([1, 0, 0]);
    s.lb = Arc::new(sluice_dataplane::lb::LbSettings {
        snat_ports: (lo, hi),
        ..(*s.lb).clone()
    });
    Lb::new(s)
}

#[test]
fn snat_ports_run_out_with_a_named_drop() {
    let mut lb = one_backend_snat_ports(61000, 61003);
    // four connections take the four ports toward the one backend, handshakes completed
    let mut ports = Vec::new();
    for sport in 1000..1004 {
        let (_, out) = lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
            .expect("a port is free");
        let p = checked(&out);
        let reply = tcp(
            &p.dst.to_string(),
            &p.src.to_string(),
            8080,
            p.src_port,
            SYN | ACK,
        );
        assert!(lb.send(1, &reply).is_some());
        assert!(lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, ACK))
            .is_some());
        ports.push(p.src_port);
    }
    ports.sort();
    assert_eq!(ports, vec![61000, 61001, 61002, 61003]);
    // established connections keep their ports: the next ones are refused, by name
    for sport in 1004..1010 {
        assert!(lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
            .is_none());
    }
    assert_eq!(lb.stats.drops(DropReason::SnatPortsExhausted), 6);
}

#[test]
fn half_open_connections_give_up_their_snat_ports_to_new_ones() {
    let mut lb = one_backend_snat_ports(61000, 61003);
    // a SYN flood: every SYN gets a port, taken from an unanswered (embryonic) one when none
    // is free
    for sport in 1000..1010 {
        assert!(
            lb.send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
                .is_some(),
            "SYN from port {sport}"
        );
    }
    assert_eq!(lb.stats.drops(DropReason::SnatPortsExhausted), 0);
    assert_eq!(
        lb.pipeline.lb.evicted(),
        6,
        "six half-open connections evicted"
    );
    assert_eq!(lb.pipeline.lb.connections(), 4);
}

#[test]
fn a_free_snat_port_is_taken_before_a_half_open_one_is_reclaimed() {
    // eight ports: a new connection tries every one of them for a free one before it reclaims
    // a half-open connection's
    let mut lb = one_backend_snat_ports(61000, 61007);
    for sport in 1000..1008 {
        assert!(lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
            .is_some());
        assert_eq!(
            lb.pipeline.lb.evicted(),
            0,
            "SYN from {sport}: a port was free"
        );
    }
    assert!(lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 1008, 80, SYN))
        .is_some());
    assert_eq!(
        lb.pipeline.lb.evicted(),
        1,
        "none free: a half-open one gave its port"
    );
    assert_eq!(lb.pipeline.lb.connections(), 8);
}

#[test]
fn scarce_snat_ports_are_reclaimed_from_the_first_group_until_one_is_free() {
    // sixteen ports toward the one backend: two groups of eight probes
    let (lo, n) = (61000u16, 16u16);
    let mut lb = one_backend_snat_ports(lo, lo + n - 1);
    let seed = service_snapshot([1, 0, 0]).lb.seed;
    let (client, backend) = (ip("10.10.0.2"), ip("10.20.0.11"));
    // where `port` comes in the order a SYN from `sport` tries the ports (0: first)
    let position = |sport: u16, port: u16| {
        let first = (flow_hash(client, backend, sport, 8080, 6, !seed) % u64::from(n)) as u16;
        (port - lo + n - first) % n
    };
    let syn = |lb: &mut Lb, sport: u16| -> u16 {
        let (_, out) = lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN))
            .unwrap_or_else(|| panic!("SYN from {sport} dropped"));
        checked(&out).src_port
    };
    // batches of other traffic: each runs a GC step, these cover the whole table
    let gc = |lb: &mut Lb| {
        for i in 0..200 {
            lb.send(0, &tcp("10.10.0.2", "10.20.0.11", 30000 + i, 8080, ACK));
        }
    };
    let evicted = |lb: &Lb| lb.pipeline.lb.evicted();
    // half-open connections of three ages fill the ports: a at 0 s, b at 10 s, 14 more at 40 s
    let a = syn(&mut lb, 1000);
    lb.pipeline.lb.advance_clock(10);
    let b = syn(&mut lb, 1001);
    lb.pipeline.lb.advance_clock(30);
    for sport in 1002..1016 {
        syn(&mut lb, sport);
    }
    assert_eq!(evicted(&lb), 0);
    // at 61 s a's SYN timed out (60 s) and its port is free again
    lb.pipeline.lb.advance_clock(21);
    gc(&mut lb);
    assert_eq!(lb.pipeline.lb.connections(), 15);
    // ports not scarce: a SYN tries every port, and finds a's in its second group
    let far_a = (2000..).find(|&s| position(s, a) >= 8).unwrap();
    assert_eq!(syn(&mut lb, far_a), a);
    assert_eq!(evicted(&lb), 0, "a free port was taken, nothing evicted");
    // eight SYNs find every port taken and reclaim one (never b's: it is tried later)
    let mut sport = 3000;
    for _ in 0..8 {
        while position(sport, b) == 0 {
            sport += 1;
        }
        assert_ne!(syn(&mut lb, sport), b);
        sport += 1;
    }
    assert_eq!(evicted(&lb), 8);
    // at 71 s b's SYN timed out: its port is the one free
    lb.pipeline.lb.advance_clock(10);
    gc(&mut lb);
    assert_eq!(lb.pipeline.lb.connections(), 15);
    // the ports are scarce now: a SYN that would find b's port only in its second group
    // reclaims one in its first
    let far_b = (4000..).find(|&s| position(s, b) >= 8).unwrap();
    assert_ne!(syn(&mut lb, far_b), b);
    assert_eq!(evicted(&lb), 9, "scarce: reclaimed from the first group");
    // one that finds it in its first group takes it, and the ports are not scarce any more
    let near_b = (5000..).find(|&s| position(s, b) < 8).unwrap();
    assert_eq!(syn(&mut lb, near_b), b);
    assert_eq!(evicted(&lb), 9);
}

fn with_mode(mode: LbMode, dispatch: Dispatch) -> Snapshot {
    let mut s = service_snapshot([1, 1, 2]);
    s.lb = Arc::new(LbSettings {
        mode,
        dispatch,
        ..(*s.lb).clone()
    });
    s
}

/// The outer IP header of a DSR frame: (protocol, source, destination, header length).
fn outer(out: &[u8]) -> (u8, IpAddr, IpAddr, usize) {
    let ip = &out[14..];
    if ip[0] >> 4 == 4 {
        assert_eq!(checksum::sum(&ip[..20]), 0xffff, "outer IPv4 checksum");
        assert_eq!(ip[6] & 0x40, 0x40, "DF");
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[at..at + 4]).unwrap());
        (ip[9], a(12), a(16), 20)
    } else {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
        (ip[6], a(8), a(24), 40)
    }
}

#[test]
fn dsr_tunnels_the_clients_packets_unchanged_to_the_backend() {
    for (client, vip, source, proto) in [
        ("10.10.0.2", "10.96.0.80", "10.20.0.1", 4u8),
        ("fd00:10::2", "fd00:96::80", "fd00:20::1", 41),
    ] {
        let mut lb = Lb::new(with_mode(LbMode::Dsr, Dispatch::Ipip));
        let syn = tcp(client, vip, 40000, 443, SYN);
        let (port, out) = lb.send(0, &syn).expect("forwarded");
        assert_eq!(port, 1, "toward the backends");
        assert_eq!(&out[0..6], &MAC_BACKEND);
        let (p, src, backend, hdr) = outer(&out);
        assert_eq!((p, src), (proto, ip(source)));
        let family = if client.contains(':') {
            "fd00:20::"
        } else {
            "10.20.0."
        };
        assert!(
            (11..14).any(|i| ip(&format!("{family}{i}")) == backend),
            "outer destination {backend}"
        );
        // the inner packet is the client's, byte for byte (TTL included: one tunnel hop)
        assert_eq!(&out[14 + hdr..], &syn[14..]);
        assert_eq!(out[12..14], syn[12..14], "ethertype");
        assert_eq!(lb.stats.lb_new_connections.get(), 1);
        // the rest of the connection follows to the same backend, still one connection
        for flags in [ACK, ACK, FIN | ACK] {
            let (_, out) = lb.send(0, &tcp(client, vip, 40000, 443, flags)).unwrap();
            assert_eq!(outer(&out).2, backend);
        }
        assert_eq!(lb.stats.lb_new_connections.get(), 1);
        // a service whose backends listen on another port cannot be DSR: masqueraded instead
        let (_, out) = lb.send(0, &tcp(client, vip, 40001, 80, SYN)).unwrap();
        let p = checked(&out);
        assert_eq!((p.src, p.dst_port), (ip(source), 8080));
    }
}

#[test]
fn dsr_spreads_by_weight_and_hybrid_masquerades_udp() {
    let mut lb = Lb::new(with_mode(LbMode::Hybrid, Dispatch::Ipip));
    let mut per: HashMap<IpAddr, usize> = HashMap::new();
    for sport in 0..2000u16 {
        let (_, out) = lb
            .send(0, &tcp("10.10.0.2", "10.96.0.80", 20000 + sport, 443, SYN))
            .unwrap();
        *per.entry(outer(&out).2).or_default() += 1;
    }
    let be3 = per[&ip("10.20.0.13")] as f64 / 2000.0;
    assert!((be3 - 0.5).abs() < 0.05, "{per:?}");
    // UDP in hybrid mode: SNAT, the reply comes back through the appliance
    let mut s = PacketSpec::udp("10.10.0.2", "10.96.0.80", 5000, 5353, b"q");
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    let (_, out) = lb.send(0, &s.build()).unwrap();
    let p = checked(&out);
    assert_eq!((p.protocol, p.src), (17, ip("10.20.0.1")));
}

#[test]
fn dsr_over_geneve_carries_the_inner_ip_packet() {
    for (client, vip, inner_type) in [
        ("10.10.0.2", "10.96.0.80", 0x0800u16),
        ("fd00:10::2", "fd00:96::80", 0x86dd),
    ] {
        let mut lb = Lb::new(with_mode(LbMode::Dsr, Dispatch::Geneve { port: 6081 }));
        let syn = tcp(client, vip, 40000, 443, SYN);
        let (_, out) = lb.send(0, &syn).unwrap();
        let (proto, src, dst, hdr) = outer(&out);
        assert_eq!(proto, 17);
        let u = 14 + hdr;
        let udp = UdpPacket::new_checked(&out[u..]).unwrap();
        assert_eq!(udp.dst_port(), 6081);
        assert!(udp.src_port() >= 49152, "entropy port {}", udp.src_port());
        assert_eq!(usize::from(udp.length()), out.len() - u);
        assert!(
            udp.checksum() == 0 || udp.verify_checksum(src, dst),
            "outer UDP checksum"
        );
        let g = &out[u + 8..u + 16];
        assert_eq!(g[0], 0, "version 0, no options");
        assert_eq!(u16::from_be_bytes([g[2], g[3]]), inner_type);
        assert_eq!(&out[u + 16..], &syn[14..]);
    }
}

#[test]
fn dsr_answers_a_packet_too_big_for_the_tunnel_with_icmp() {
    let mut lb = Lb::new(with_mode(LbMode::Dsr, Dispatch::Ipip));
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40000, 443, SYN))
        .unwrap();
    // 1500 bytes of IP: fits the link, not the tunnel (+20)
    let mut s = PacketSpec::udp("10.10.0.2", "10.96.0.80", 40000, 443, &[7u8; 1460]);
    s.l4 = L4::Tcp(ACK);
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    let big = s.build();
    assert_eq!(big.len(), 14 + 1500);
    let (port, out) = lb.send(0, &big).expect("ICMP back");
    assert_eq!(port, 0, "back to the client");
    let p = parse(&out, TunnelPorts::NONE).unwrap();
    assert_eq!((p.protocol, p.dst), (1, ip("10.10.0.2")));
    let icmp = &out[p.l4.unwrap()..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1480, "next-hop MTU");
    assert_eq!(lb.stats.icmp_errors.get(), 1);
}

#[test]
fn a_reply_on_another_workers_queue_is_handed_to_the_connections_worker() {
    for (client, vip, snat) in [
        ("10.10.0.2", "10.96.0.80", "10.20.0.1"),
        ("fd00:10::2", "fd00:96::80", "fd00:20::1"),
    ] {
        let h = Handoff::new(2, 4096);
        let mut w0 = Lb::worker(service_snapshot([1, 1, 2]), 0, 2, &h);
        let mut w1 = Lb::worker(service_snapshot([1, 1, 2]), 1, 2, &h);
        // the connection starts on worker 0, which masquerades it from its half of the ports
        let (_, out) = w0.send(0, &tcp(client, vip, 40000, 80, SYN)).unwrap();
        let p = checked(&out);
        assert!(
            (61000..61000 + 2268).contains(&p.src_port),
            "worker 0's share: {}",
            p.src_port
        );
        // the backend's reply arrives on worker 1's queue: nothing goes out there...
        let reply = tcp(&p.dst.to_string(), snat, 8080, p.src_port, SYN | ACK);
        assert_eq!(w1.send(1, &reply), None);
        assert_eq!(w1.stats.handoff_out.get(), 1);
        assert_eq!(w1.stats.drops(DropReason::HandoffQueueFull), 0);
        // ...worker 0 takes it over on its next batch and translates it back to the client
        let (port, back) = w0.run(None).expect("reply forwarded by the owner");
        assert_eq!(port, 0);
        let r = checked(&back);
        assert_eq!(
            (r.src, r.src_port, r.dst, r.dst_port),
            (ip(vip), 80, ip(client), 40000)
        );
        assert_eq!(w0.stats.handoff_in.get(), 1);
        // a reply to worker 1's own share of the ports stays with worker 1
        let stray = tcp(&p.dst.to_string(), snat, 8080, 65535, ACK);
        w1.send(1, &stray);
        assert_eq!(w1.stats.handoff_out.get(), 1);
    }
}

#[test]
fn packets_of_one_batch_see_the_connections_earlier_ones_started_or_replaced() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    // a new UDP flow's first datagrams in one batch: one connection, all translated alike
    let mut s = PacketSpec::udp("10.10.0.2", "10.96.0.80", 5000, 53, b"q");
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    let d = s.build();
    let out = lb.batch(&[(0, &d), (0, &d), (0, &d)]);
    assert_eq!(out.len(), 3, "none dropped");
    let first = checked(&out[0].1);
    for (_, o) in &out {
        let p = checked(o);
        assert_eq!((p.dst, p.src_port), (first.dst, first.src_port));
    }
    assert_eq!(lb.stats.lb_new_connections.get(), 1);
    // a closed TCP connection reopened by a SYN, and its ACK, in one batch: the ACK follows the
    // new connection, not the replaced one
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40003, 80, SYN))
        .unwrap();
    lb.send(0, &tcp("10.10.0.2", "10.96.0.80", 40003, 80, FIN | ACK))
        .unwrap();
    let syn = tcp("10.10.0.2", "10.96.0.80", 40003, 80, SYN);
    let ack = tcp("10.10.0.2", "10.96.0.80", 40003, 80, ACK);
    let out = lb.batch(&[(0, &syn), (0, &ack)]);
    assert_eq!(out.len(), 2);
    let (a, b) = (checked(&out[0].1), checked(&out[1].1));
    assert_eq!((a.dst, a.src_port), (b.dst, b.src_port));
    assert_eq!(lb.stats.lb_new_connections.get(), 3);
    assert_eq!(lb.stats.ct_entries.get(), 2);
}
