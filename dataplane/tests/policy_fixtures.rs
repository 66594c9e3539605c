//! Network policy in the datapath (`mem` backend): routed traffic checked by the policy stage
//! with replies of allowed flows passing, service traffic checked against the backend in the
//! LB stage, the two drop reasons, and no effect at all while no policy exists.

mod common;

use common::Lb;
use sluice_dataplane::fixtures::{service_snapshot, MAC_CLIENT, MAC_CLI_PORT};
use sluice_dataplane::policy::{EndpointPolicy, PolicyMap, PolicyTables, ANY_PROTO};
use sluice_dataplane::state::Snapshot;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::tcp::flags::{ACK, SYN};
use sluice_dataplane::DropReason;
use std::sync::Arc;

const CLIENT: u32 = 300;
const BE1: u32 = 301;
const OTHERS: u32 = 302;
/// The drop counter slot of the fixture's one policy.
const POLICY_SLOT: u16 = 7;

/// The service fixture with identities: the client 10.10.0.2 is CLIENT, backend .11 is BE1,
/// .12/.13 are OTHERS. BE1 admits CLIENT on TCP 8080 only and denies OTHERS explicitly.
fn with_policy() -> Snapshot {
    let mut s = service_snapshot([1, 1, 2]);
    let mut c = (*s.cluster).clone();
    for (a, id) in [
        ("10.10.0.2", CLIENT),
        ("10.20.0.11", BE1),
        ("10.20.0.12", OTHERS),
        ("10.20.0.13", OTHERS),
    ] {
        c.ipcache.insert(a.parse().unwrap(), 32, id);
    }
    let name: Arc<str> = "lab/be1-ingress".into();
    let mut ingress = PolicyMap::default();
    ingress.add(CLIENT, 6, 8080, 8080, false, None, &name);
    ingress.add(OTHERS, ANY_PROTO, 0, u16::MAX, true, None, &name);
    c.policy = be1_ingress(ingress, &name);
    s.cluster = Arc::new(c);
    s
}

/// Policy tables in which BE1 has `ingress` (enforced by `name`, on counter POLICY_SLOT).
fn be1_ingress(mut ingress: PolicyMap, name: &Arc<str>) -> Arc<PolicyTables> {
    ingress.enforced_by = Some(name.clone());
    let mut t = PolicyTables::default();
    t.slots.insert(name.clone(), POLICY_SLOT);
    t.endpoints.insert(
        BE1,
        EndpointPolicy {
            ingress: Some(ingress),
            egress: None,
        },
    );
    Arc::new(t)
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8, from_client: bool) -> Vec<u8> {
    let mut s = PacketSpec::udp(src, dst, sport, dport, b"x");
    s.l4 = L4::Tcp(flags);
    if from_client {
        s.dst_mac = MAC_CLI_PORT;
        s.src_mac = MAC_CLIENT;
    }
    s.build()
}

#[test]
fn routed_traffic_is_checked_and_replies_of_allowed_flows_pass() {
    let mut dp = Lb::new(with_policy());
    // client -> be1:8080 directly (routed, no service): allowed
    assert!(dp
        .send(0, &tcp("10.10.0.2", "10.20.0.11", 40000, 8080, SYN, true))
        .is_some());
    // be1's reply passes (nothing polices it here; the next test has a reply that needs the flow)
    assert!(dp
        .send(
            1,
            &tcp("10.20.0.11", "10.10.0.2", 8080, 40000, SYN | ACK, false)
        )
        .is_some());
    // another port: no rule allows it
    assert!(dp
        .send(0, &tcp("10.10.0.2", "10.20.0.11", 40001, 80, SYN, true))
        .is_none());
    assert_eq!(dp.stats.drops(DropReason::PolicyDenied), 1);
    // the others are denied by an explicit rule
    assert!(dp
        .send(1, &tcp("10.20.0.12", "10.20.0.11", 5000, 8080, SYN, false))
        .is_none());
    assert_eq!(dp.stats.drops(DropReason::PolicyDeny), 1);
    // the world (an address the ipcache does not know) is not allowed either
    assert!(dp
        .send(0, &tcp("10.10.0.99", "10.20.0.11", 5000, 8080, SYN, true))
        .is_none());
    assert_eq!(dp.stats.drops(DropReason::PolicyDenied), 2);
    // every one of them on the deciding policy's counter
    assert_eq!(dp.stats.policy_drops[usize::from(POLICY_SLOT)].get(), 3);
}

#[test]
fn a_reply_into_a_policed_endpoint_passes_only_for_a_flow_it_started() {
    // BE1 under ingress policy; BE1 opens a flow to OTHERS' .12 (BE1's egress: default allow)
    let mut dp = Lb::new(with_policy());
    assert!(dp
        .send(1, &tcp("10.20.0.11", "10.20.0.12", 41000, 9000, SYN, false))
        .is_some());
    // .12's reply enters BE1, which denies OTHERS: it passes as the reply of an allowed flow
    assert!(dp
        .send(
            1,
            &tcp("10.20.0.12", "10.20.0.11", 9000, 41000, SYN | ACK, false)
        )
        .is_some());
    // the same packet without the flow is denied
    assert!(dp
        .send(
            1,
            &tcp("10.20.0.12", "10.20.0.11", 9000, 41001, SYN | ACK, false)
        )
        .is_none());
    assert_eq!(dp.stats.drops(DropReason::PolicyDeny), 1);
    assert_eq!(dp.pipeline.policy.flows(), 1);
}

#[test]
fn service_traffic_is_checked_against_the_backend_it_is_sent_to() {
    // the service's backends listen on 8080; be1 admits the client there, the others have no
    // policy (default allow)
    let mut dp = Lb::new(with_policy());
    for sport in 20000..20100u16 {
        assert!(dp
            .send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN, true))
            .is_some());
    }
    assert_eq!(dp.stats.lb_new_connections.get(), 100);
    // a client the ipcache does not know (world): be1 refuses it, the others take it
    let (mut passed, mut denied) = (0u64, 0u64);
    for sport in 20000..20200u16 {
        match dp.send(0, &tcp("10.10.0.99", "10.96.0.80", sport, 80, SYN, true)) {
            Some((_, out)) => {
                assert_ne!(&out[30..34], &[10, 20, 0, 11], "be1 admits only the client");
                passed += 1;
            }
            None => denied += 1,
        }
    }
    // be1 holds a quarter of the Maglev slots
    assert!(denied > 20 && passed > 100, "{passed} / {denied}");
    assert_eq!(dp.stats.drops(DropReason::PolicyDenied), denied);
    assert_eq!(
        dp.stats.lb_new_connections.get(),
        100 + passed,
        "denied: nothing tracked"
    );
}

/// A connection's entry keeps the policy's verdict between snapshots (the fast path skips the
/// lookup), so this is what must hold: a change published while connections are open applies
/// to their next packet, for routed flows (policy stage) and service connections (LB stage)
/// alike, and a revert lets them through again.
#[test]
fn a_published_policy_change_applies_to_open_connections() {
    let mut dp = Lb::new(with_policy());
    let routed = |flags| tcp("10.10.0.2", "10.20.0.11", 40000, 8080, flags, true);
    let to_be1 = |out: &[u8]| out[30..34] == [10, 20, 0, 11];
    // a service connection the Maglev table sends to be1
    let sport = (20000..20100u16)
        .find(|&sport| {
            dp.send(0, &tcp("10.10.0.2", "10.96.0.80", sport, 80, SYN, true))
                .is_some_and(|(_, out)| to_be1(&out))
        })
        .expect("be1 holds a quarter of the slots");
    let service = |flags| tcp("10.10.0.2", "10.96.0.80", sport, 80, flags, true);
    assert!(dp.send(0, &routed(SYN)).is_some());
    for _ in 0..3 {
        assert!(dp.send(0, &routed(ACK)).is_some());
        assert!(dp.send(0, &service(ACK)).is_some_and(|(_, o)| to_be1(&o)));
    }
    // be1 stops admitting anyone
    let name: Arc<str> = "lab/be1-ingress".into();
    let mut deny_all = (*dp.publisher.load()).as_ref().clone();
    let mut c = (*deny_all.cluster).clone();
    c.policy = be1_ingress(PolicyMap::default(), &name);
    deny_all.cluster = Arc::new(c);
    dp.publisher.publish(deny_all);
    assert!(dp.send(0, &routed(ACK)).is_none(), "routed flow");
    assert!(dp.send(0, &service(ACK)).is_none(), "service connection");
    assert_eq!(dp.stats.drops(DropReason::PolicyDenied), 2);
    // and admits the client again: both connections carry on
    dp.publisher.publish(with_policy());
    assert!(dp.send(0, &routed(ACK)).is_some());
    assert!(dp.send(0, &service(ACK)).is_some_and(|(_, o)| to_be1(&o)));
    assert_eq!(dp.stats.drops(DropReason::PolicyDenied), 2);
}

#[test]
fn without_policy_nothing_is_checked() {
    let mut dp = Lb::new(service_snapshot([1, 1, 2]));
    assert!(dp
        .send(0, &tcp("10.10.0.2", "10.20.0.11", 40000, 80, SYN, true))
        .is_some());
    assert_eq!(dp.pipeline.policy.flows(), 0);
}

/// `with_policy`, plus HTTP rules on BE1's port 80 for CLIENT: only `GET /api/users/.*` and
/// `POST /api/login` (Cilium's L7 example).
fn with_l7() -> Snapshot {
    use sluice_dataplane::l7::rules::{HttpRule, Pattern};
    let mut s = with_policy();
    let mut c = (*s.cluster).clone();
    let mut t = (*c.policy).clone();
    let name: Arc<str> = "lab/be1-l7".into();
    let rule = |m: &str, p: &str| HttpRule {
        method: Some(Pattern::new(m).unwrap()),
        path: Some(Pattern::new(p).unwrap()),
        ..Default::default()
    };
    let rules: sluice_dataplane::policy::HttpRules =
        vec![rule("GET", "/api/users/.*"), rule("POST", "/api/login")].into();
    t.slots.insert(name.clone(), POLICY_SLOT + 1);
    let ep = t.endpoints.get_mut(&BE1).unwrap();
    ep.ingress
        .as_mut()
        .unwrap()
        .add(CLIENT, 6, 80, 80, false, Some(&rules), &name);
    c.policy = Arc::new(t);
    s.cluster = Arc::new(c);
    s
}

/// A TCP segment between the client (port 0 side) and BE1 (port 1 side).
fn seg(from_client: bool, sport: u16, flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let (src, dst, dport) = if from_client {
        ("10.10.0.2", "10.20.0.11", 80)
    } else {
        ("10.20.0.11", "10.10.0.2", sport)
    };
    let sp = if from_client { sport } else { 80 };
    let mut s = PacketSpec::udp(src, dst, sp, dport, data);
    s.l4 = L4::TcpSeq { flags, seq, ack };
    if from_client {
        s.dst_mac = MAC_CLI_PORT;
        s.src_mac = MAC_CLIENT;
    }
    s.build()
}

/// (seq, ack, flags, payload) of a TCP frame.
fn tcp_of(frame: &[u8]) -> (u32, u32, u8, Vec<u8>) {
    use sluice_dataplane::wire::parse::{parse, TunnelPorts};
    use sluice_dataplane::wire::tcp::TcpPacket;
    let p = parse(frame, TunnelPorts::NONE).expect("parses");
    let t = TcpPacket::new_checked(&frame[p.l4.unwrap()..p.l3 + p.ip_len]).unwrap();
    assert!(t.verify_checksum(p.src, p.dst), "checksum");
    (t.seq(), t.ack(), t.flags(), t.payload().to_vec())
}

#[test]
fn http_requests_are_judged_one_by_one_and_a_refused_one_is_answered_403() {
    use sluice_dataplane::l7::FORBIDDEN;
    use sluice_dataplane::wire::tcp::flags::{FIN, PSH, RST};
    let mut dp = Lb::new(with_l7());
    let (c0, s0) = (1000u32, 5000u32);
    assert!(dp.send(0, &seg(true, 40000, SYN, c0, 0, b"")).is_some());
    assert!(dp
        .send(1, &seg(false, 40000, SYN | ACK, s0, c0 + 1, b""))
        .is_some());
    // an allowed request split across two segments: both pass
    let (a, b) = (
        &b"GET /api/us"[..],
        &b"ers/1 HTTP/1.1\r\nHost: be1\r\n\r\n"[..],
    );
    let mut c = c0 + 1;
    for part in [a, b] {
        let out = dp.send(0, &seg(true, 40000, ACK | PSH, c, s0 + 1, part));
        assert_eq!(
            out.map(|(port, f)| (port, tcp_of(&f).3)),
            Some((1, part.to_vec()))
        );
        c += part.len() as u32;
    }
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    assert!(dp
        .send(1, &seg(false, 40000, ACK | PSH, s0 + 1, c, answer))
        .is_some());
    let s = s0 + 1 + answer.len() as u32;
    // the next request on the keep-alive connection is refused: nothing reaches BE1, the client
    // gets the 403 with FIN from BE1's address, BE1 a RST from the client's
    let bad = b"POST /admin/delete HTTP/1.1\r\nHost: be1\r\ncontent-length: 0\r\n\r\n";
    let out = dp.batch(&[(0, &seg(true, 40000, ACK | PSH, c, s, bad))]);
    assert_eq!(out.len(), 2, "the reset and the 403, not the request");
    // the refused segment itself became the reset; the 403 follows from the outbox
    let (to_server, to_client) = (&out[0], &out[1]);
    assert_eq!(to_client.0, 0, "403 toward the client");
    let (seq, ack, flags, payload) = tcp_of(&to_client.1);
    assert_eq!((seq, ack), (s, c + bad.len() as u32));
    assert_eq!(flags, ACK | PSH | FIN);
    assert_eq!(payload, FORBIDDEN);
    assert_eq!(to_server.0, 1, "reset toward BE1");
    let (seq, _, flags, payload) = tcp_of(&to_server.1);
    assert_eq!((seq, flags), (c, RST), "at the byte BE1 expects next");
    assert!(payload.is_empty(), "none of the refused request");
    // the client's FIN is answered; nothing more reaches BE1
    let fin_seq = c + bad.len() as u32;
    let out = dp.send(
        0,
        &seg(
            true,
            40000,
            FIN | ACK,
            fin_seq,
            s + FORBIDDEN.len() as u32 + 1,
            b"",
        ),
    );
    let (port, f) = out.expect("the FIN's ACK");
    assert_eq!(port, 0);
    assert_eq!(tcp_of(&f).1, fin_seq + 1);
    assert!(dp
        .send(1, &seg(false, 40000, ACK | PSH, s, c, b"late"))
        .is_none());
    assert_eq!(dp.stats.l7_requests.get(), 2);
    assert_eq!(dp.stats.l7_refused.get(), 1);
    assert_eq!(dp.stats.drops(DropReason::PolicyL7Denied), 3);
    assert_eq!(
        dp.stats.policy_drops[usize::from(POLICY_SLOT + 1)].get(),
        1,
        "the refused request on its policy's counter"
    );
}

#[test]
fn an_inspected_connection_waits_for_holes_and_others_are_not_inspected() {
    let mut dp = Lb::new(with_l7());
    assert!(dp.send(0, &seg(true, 40100, SYN, 0, 0, b"")).is_some());
    // bytes 1..11 missing: the segment after them waits for the client to resend in order
    let tail = b"ers/1 HTTP/1.1\r\n\r\n";
    assert!(dp.send(0, &seg(true, 40100, ACK, 12, 1, tail)).is_none());
    assert_eq!(dp.stats.drops(DropReason::L7OutOfOrder), 1);
    assert!(dp
        .send(0, &seg(true, 40100, ACK, 1, 1, b"GET /api/us"))
        .is_some());
    assert!(dp.send(0, &seg(true, 40100, ACK, 12, 1, tail)).is_some());
    assert_eq!(dp.stats.l7_requests.get(), 1);
    // port 8080 has no HTTP rules: anything passes at L7
    let mut s = PacketSpec::udp(
        "10.10.0.2",
        "10.20.0.11",
        40200,
        8080,
        b"DELETE / HTTP/1.1\r\n\r\n",
    );
    s.l4 = L4::TcpSeq {
        flags: ACK,
        seq: 1,
        ack: 1,
    };
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    assert!(dp.send(0, &s.build()).is_some());
    assert_eq!(dp.stats.l7_requests.get(), 1);
}

#[test]
fn http_rules_apply_through_a_service_and_the_403_comes_from_the_frontend() {
    use sluice_dataplane::l7::rules::{HttpRule, Pattern};
    use sluice_dataplane::l7::FORBIDDEN;
    use sluice_dataplane::wire::parse::{parse, TunnelPorts};
    use sluice_dataplane::wire::tcp::flags::{FIN, PSH, RST};
    // every backend of lab/web (8080) admits only the client, only GET /api/users/.*
    let mut s = service_snapshot([1, 1, 2]);
    let mut c = (*s.cluster).clone();
    c.ipcache.insert("10.10.0.2".parse().unwrap(), 32, CLIENT);
    for b in ["10.20.0.11", "10.20.0.12", "10.20.0.13"] {
        c.ipcache.insert(b.parse().unwrap(), 32, BE1);
    }
    let name: Arc<str> = "lab/web-l7".into();
    let rules: sluice_dataplane::policy::HttpRules = vec![HttpRule {
        method: Some(Pattern::new("GET").unwrap()),
        path: Some(Pattern::new("/api/users/.*").unwrap()),
        ..Default::default()
    }]
    .into();
    let mut ingress = PolicyMap::default();
    ingress.add(CLIENT, 6, 8080, 8080, false, Some(&rules), &name);
    c.policy = be1_ingress(ingress, &name);
    s.cluster = Arc::new(c);
    let mut dp = Lb::new(s);
    let client = |flags, seq, ack, data: &[u8]| {
        let mut p = PacketSpec::udp("10.10.0.2", "10.96.0.80", 41000, 80, data);
        p.l4 = L4::TcpSeq { flags, seq, ack };
        p.dst_mac = MAC_CLI_PORT;
        p.src_mac = MAC_CLIENT;
        p.build()
    };
    let (port, syn) = dp.send(0, &client(SYN, 100, 0, b"")).expect("balanced");
    assert_eq!(port, 1);
    let p = parse(&syn, TunnelPorts::NONE).unwrap();
    let (backend, snat_port) = (p.dst, p.src_port);
    let mut reply = PacketSpec::udp(&backend.to_string(), "10.20.0.1", 8080, snat_port, b"");
    reply.l4 = L4::TcpSeq {
        flags: SYN | ACK,
        seq: 7000,
        ack: 101,
    };
    let (port, _) = dp.send(1, &reply.build()).expect("reverse NAT");
    assert_eq!(port, 0);
    let get = b"GET /api/users/7 HTTP/1.1\r\n\r\n";
    assert!(dp.send(0, &client(ACK | PSH, 101, 7001, get)).is_some());
    let after = 101 + get.len() as u32;
    let bad = b"POST /admin/delete HTTP/1.1\r\n\r\n";
    let out = dp.batch(&[(0, &client(ACK | PSH, after, 7001, bad))]);
    assert_eq!(out.len(), 2, "{out:?}");
    let rst = parse(&out[0].1, TunnelPorts::NONE).unwrap();
    assert_eq!(out[0].0, 1, "the reset goes to the backend");
    assert_eq!(
        (rst.src, rst.src_port, rst.dst, rst.dst_port, rst.tcp_flags),
        ("10.20.0.1".parse().unwrap(), snat_port, backend, 8080, RST),
        "translated like the connection"
    );
    assert_eq!(rst.ip_len, 40, "no payload");
    assert_eq!(
        tcp_of(&out[0].1).0,
        after,
        "at the byte the backend expects next"
    );
    let (seq, ack, flags, payload) = tcp_of(&out[1].1);
    let answer = parse(&out[1].1, TunnelPorts::NONE).unwrap();
    assert_eq!(out[1].0, 0);
    assert_eq!(
        (answer.src, answer.src_port, answer.dst, answer.dst_port),
        (
            "10.96.0.80".parse().unwrap(),
            80,
            "10.10.0.2".parse().unwrap(),
            41000
        ),
        "from the frontend the client connected to"
    );
    assert_eq!((seq, ack), (7001, after + bad.len() as u32));
    assert_eq!((flags & FIN, payload.as_slice()), (FIN, FORBIDDEN));
    assert_eq!(dp.stats.l7_requests.get(), 2);
    assert_eq!(dp.stats.policy_drops[usize::from(POLICY_SLOT)].get(), 1);
}

#[test]
fn an_inspected_connection_taken_over_by_a_restart_is_still_judged() {
    use sluice_dataplane::l7::FORBIDDEN;
    use sluice_dataplane::policy_stage::PolicyState;
    use sluice_dataplane::wire::tcp::flags::PSH;
    let dir = std::env::temp_dir().join(format!("sluice-l7-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let timeouts = sluice_dataplane::lb::conntrack::Timeouts::default();
    let persistent = |dp: &mut Lb| {
        let (st, reports) = PolicyState::persistent(1024, timeouts, &dir, (0, 1)).unwrap();
        dp.pipeline.policy = st;
        reports.iter().map(|r| r.adopted).sum::<usize>()
    };
    let (c0, s0) = (7000u32, 9000u32);
    let mut dp = Lb::new(with_l7());
    assert_eq!(persistent(&mut dp), 0);
    assert!(dp.send(0, &seg(true, 40001, SYN, c0, 0, b"")).is_some());
    assert!(dp
        .send(1, &seg(false, 40001, SYN | ACK, s0, c0 + 1, b""))
        .is_some());
    let ok = b"GET /api/users/1 HTTP/1.1\r\nHost: be1\r\n\r\n";
    let c = c0 + 1;
    assert!(dp
        .send(0, &seg(true, 40001, ACK | PSH, c, s0 + 1, ok))
        .is_some());
    let c = c + ok.len() as u32;
    drop(dp); // the process stops; its flow table stays in the file

    // the next process adopts the flow; its HTTP state was not kept, yet the connection is
    // inspected again from its next segment: an allowed request passes, a refused one does not
    let mut dp = Lb::new(with_l7());
    assert_eq!(persistent(&mut dp), 1, "the flow is taken over");
    let again = b"GET /api/users/2 HTTP/1.1\r\nHost: be1\r\n\r\n";
    let out = dp.send(0, &seg(true, 40001, ACK | PSH, c, s0 + 1, again));
    assert_eq!(
        out.map(|(port, _)| port),
        Some(1),
        "allowed after the restart"
    );
    let c = c + again.len() as u32;
    let bad = b"POST /admin/delete HTTP/1.1\r\nHost: be1\r\ncontent-length: 0\r\n\r\n";
    let out = dp.batch(&[(0, &seg(true, 40001, ACK | PSH, c, s0 + 1, bad))]);
    assert_eq!(out.len(), 2, "the reset and the 403: {out:?}");
    assert_eq!(tcp_of(&out[1].1).3, FORBIDDEN);
    assert_eq!(dp.stats.l7_refused.get(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
