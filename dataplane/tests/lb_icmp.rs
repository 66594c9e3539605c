//! ICMP errors about load-balanced connections, on the `mem` backend: an error from the backend's
//! side reaches the client as if about the client's own packet, from the frontend; one from the
//! client's side reaches the backend as if about its reply, from the SNAT address. Every
//! checksum verifies; errors about nothing tracked are left alone.

mod common;

use common::{icmp_of, ip, tcp, Lb};
use sluice_dataplane::fixtures::{service_snapshot, MAC_BACKEND, MAC_CLIENT, MAC_CLI_PORT};
use sluice_dataplane::handoff::Handoff;
use sluice_dataplane::lb::{Dispatch, LbMode, LbSettings};
use sluice_dataplane::wire::parse::{parse, TunnelPorts};
use sluice_dataplane::wire::tcp::flags::{ACK, SYN};
use sluice_dataplane::wire::{checksum, tcp::TcpPacket};
use std::net::IpAddr;
use std::sync::Arc;

/// An ICMP error (`kind`: type, code) from `from` to `to` quoting the first `quote` bytes of the
/// IP packet in `about` (a frame), between the MACs given.
fn error(
    from: &str,
    to: &str,
    kind: (u8, u8),
    about: &[u8],
    quote: usize,
    macs: [[u8; 6]; 2],
) -> Vec<u8> {
    let (src, dst) = (ip(from), ip(to));
    let quoted = &about[14..14 + quote.min(about.len() - 14)];
    let mut msg = vec![kind.0, kind.1, 0, 0, 0, 0, 0, 0];
    if kind == (3, 4) {
        msg[6..8].copy_from_slice(&1400u16.to_be_bytes()); // the next-hop MTU
    }
    msg.extend_from_slice(quoted);
    let mut f = Vec::new();
    f.extend_from_slice(&macs[0]);
    f.extend_from_slice(&macs[1]);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = checksum::checksum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + msg.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let c = !checksum::pseudo_header_sum(src, dst, 58, &msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend_from_slice(&msg);
    f
}

/// An error from the client's side (`client` to `vip`) about `about`, the whole of it quoted.
fn from_client(client: &str, vip: &str, kind: (u8, u8), about: &[u8]) -> Vec<u8> {
    error(client, vip, kind, about, 1500, [MAC_CLI_PORT, MAC_CLIENT])
}

/// The error `out`: its outer ends, and its quote's ends (address, port); every checksum
/// checked, the quoted TCP one when the whole segment is quoted.
fn ends(out: &[u8]) -> ((IpAddr, IpAddr), (IpAddr, u16), (IpAddr, u16)) {
    let (p, icmp) = icmp_of(out);
    let v6 = p.src.is_ipv6();
    let q = icmp.payload();
    let (qs, qd, header, total) = if v6 {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&q[at..at + 16]).unwrap());
        (
            a(8),
            a(24),
            40,
            40 + usize::from(u16::from_be_bytes([q[4], q[5]])),
        )
    } else {
        assert_eq!(checksum::sum(&q[..20]), 0xffff, "quoted IPv4 checksum");
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&q[at..at + 4]).unwrap());
        (
            a(12),
            a(16),
            20,
            usize::from(u16::from_be_bytes([q[2], q[3]])),
        )
    };
    let l4 = &q[header..];
    if q.len() >= total {
        let seg = TcpPacket::new_checked(&q[header..total]).unwrap();
        assert!(seg.verify_checksum(qs, qd), "quoted TCP checksum");
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    ((p.src, p.dst), (qs, port(0)), (qd, port(2)))
}

#[test]
fn errors_follow_the_connection_both_ways() {
    for (client, vip, snat, router, unreachable, too_big) in [
        (
            "10.10.0.2",
            "10.96.0.80",
            "10.20.0.1",
            "10.20.0.254",
            (3, 3),
            (3, 4),
        ),
        (
            "fd00:10::2",
            "fd00:96::80",
            "fd00:20::1",
            "fd00:20::fe",
            (1, 4),
            (2, 0),
        ),
    ] {
        let mut lb = Lb::new(service_snapshot([1, 1, 2]));
        let (_, sent) = lb.send(0, &tcp(client, vip, 40000, 80, SYN)).unwrap();
        let s = parse(&sent, TunnelPorts::NONE).unwrap();
        let (backend, sport) = (s.dst, s.src_port);
        let to_us = [MAC_CLI_PORT, MAC_BACKEND];

        // the backend's side: from the backend itself (port unreachable), whole packet quoted,
        // and from a router (too big), 8 bytes of TCP quoted
        for (from, kind, quote) in [
            (backend.to_string(), unreachable, 1500),
            (router.into(), too_big, 48),
        ] {
            let e = error(&from, snat, kind, &sent, quote, to_us);
            let (port, out) = lb.send(1, &e).expect("error forwarded");
            assert_eq!(port, 0, "toward the client");
            assert_eq!(&out[0..6], &MAC_CLIENT);
            assert_eq!(
                ends(&out),
                ((ip(vip), ip(client)), (ip(client), 40000), (ip(vip), 80)),
                "{from} {kind:?}"
            );
        }

        // the client's side, about the reply it got: to the backend, from the SNAT address
        let reply = tcp(&backend.to_string(), snat, 8080, sport, SYN | ACK);
        let (_, got) = lb.send(1, &reply).unwrap();
        let e = from_client(client, vip, unreachable, &got);
        let (port, out) = lb.send(0, &e).expect("error forwarded");
        assert_eq!(port, 1, "toward the backend");
        assert_eq!(&out[0..6], &MAC_BACKEND);
        assert_eq!(
            ends(&out),
            ((ip(snat), backend), (backend, 8080), (ip(snat), sport))
        );
        assert_eq!(lb.stats.lb_icmp_translated.get(), 3);
    }
}

#[test]
fn errors_about_nothing_tracked_are_left_alone() {
    let mut lb = Lb::new(service_snapshot([1, 1, 2]));
    let (_, sent) = lb
        .send(0, &tcp("10.10.0.2", "10.96.0.80", 40000, 80, SYN))
        .unwrap();
    let s = parse(&sent, TunnelPorts::NONE).unwrap();
    let to_us = [MAC_CLI_PORT, MAC_BACKEND];
    // another SNAT port than the connection's; an error not addressed to the quoted source; a
    // quote cut inside the ports; an echo request
    let mut other = sent.clone();
    let at = s.l4.unwrap();
    other[at..at + 2].copy_from_slice(&(s.src_port ^ 1).to_be_bytes());
    let b = s.dst.to_string();
    let cases = [
        error(&b, "10.20.0.1", (3, 3), &other, 1500, to_us),
        error(&b, "10.20.0.9", (3, 3), &sent, 1500, to_us),
        error(&b, "10.20.0.1", (3, 3), &sent, 22, to_us),
        error(&b, "10.20.0.1", (8, 0), &sent, 1500, to_us),
    ];
    for e in &cases {
        if let Some((_, out)) = lb.send(1, e) {
            let p = parse(&out, TunnelPorts::NONE).unwrap();
            assert_eq!(p.src, s.dst, "not translated");
        }
    }
    assert_eq!(lb.stats.lb_icmp_translated.get(), 0);
}

/// With DSR the backend answered the client itself: an error from the client's side about that
/// reply is tunnelled to the backend unchanged, as the connection's packets are.
#[test]
fn an_error_about_a_dsr_reply_is_tunnelled_to_its_backend() {
    for (client, vip, outer_proto) in [
        ("10.10.0.2", "10.96.0.80", 4u8),
        ("fd00:10::2", "fd00:96::80", 41),
    ] {
        let mut snap = service_snapshot([1, 1, 2]);
        snap.lb = Arc::new(LbSettings {
            mode: LbMode::Dsr,
            dispatch: Dispatch::Ipip,
            ..(*snap.lb).clone()
        });
        let mut lb = Lb::new(snap);
        let (_, syn) = lb.send(0, &tcp(client, vip, 40000, 443, SYN)).unwrap();
        let v6 = client.contains(':');
        let hdr = if v6 { 40 } else { 20 };
        let backend = parse(&syn, TunnelPorts::NONE).unwrap().dst;
        // the reply as the client got it from the backend (from the VIP, port 443)
        let reply = tcp(vip, client, 443, 40000, SYN | ACK);
        let unreachable = if v6 { (1, 4) } else { (3, 3) };
        let e = from_client(client, vip, unreachable, &reply);
        let (port, out) = lb.send(0, &e).expect("tunnelled");
        assert_eq!(port, 1, "toward the backends");
        let p = parse(&out, TunnelPorts::NONE).unwrap();
        assert_eq!(
            (p.protocol, p.dst),
            (outer_proto, backend),
            "the connection's tunnel"
        );
        assert_eq!(&out[14 + hdr..], &e[14..], "the error unchanged inside");
        assert_eq!(lb.stats.lb_icmp_translated.get(), 1);
    }
}

/// Two workers: a client-side error names no owner and may reach either queue. The worker that
/// does not track the connection hands it on; the owner translates it. One about nothing tracked
/// goes round once and stops.
#[test]
fn an_error_from_the_client_side_finds_the_worker_of_its_connection() {
    let (client, vip) = ("10.10.0.2", "10.96.0.80");
    let h = Handoff::new(2, 4096);
    let mut w0 = Lb::worker(service_snapshot([1, 1, 2]), 0, 2, &h);
    let mut w1 = Lb::worker(service_snapshot([1, 1, 2]), 1, 2, &h);
    let (_, sent) = w0.send(0, &tcp(client, vip, 40000, 80, SYN)).unwrap();
    let s = parse(&sent, TunnelPorts::NONE).unwrap();
    let reply = tcp(vip, client, 80, 40000, SYN | ACK);
    let e = from_client(client, vip, (3, 3), &reply);
    assert_eq!(w1.send(0, &e), None, "worker 1 hands it on");
    assert_eq!(w1.stats.handoff_out.get(), 1);
    let (port, out) = w0.run(None).expect("the owner translates it");
    assert_eq!(port, 1);
    assert_eq!(
        ends(&out),
        (
            (ip("10.20.0.1"), s.dst),
            (s.dst, 8080),
            (ip("10.20.0.1"), s.src_port)
        )
    );
    assert_eq!(w0.stats.lb_icmp_translated.get(), 1);

    // about a connection neither tracks: worker 0 hands it to worker 1, which stops there
    let stray = tcp(vip, client, 80, 40001, SYN | ACK);
    let e = from_client(client, vip, (3, 3), &stray);
    w0.send(0, &e);
    assert_eq!(w0.stats.handoff_out.get(), 1);
    w1.run(None);
    assert_eq!(w1.stats.handoff_in.get(), 1);
    assert_eq!(w1.stats.handoff_out.get(), 1, "not handed back");
    assert_eq!(
        w0.stats.lb_icmp_translated.get() + w1.stats.lb_icmp_translated.get(),
        1
    );
}
