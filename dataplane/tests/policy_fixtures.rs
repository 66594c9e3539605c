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
    ingress.add(CLIENT, 6, 8080, 8080, false, &name);
    ingress.add(OTHERS, ANY_PROTO, 0, u16::MAX, true, &name);
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
    c.policy = Arc::new(t);
    s.cluster = Arc::new(c);
    s
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

#[test]
fn without_policy_nothing_is_checked() {
    let mut dp = Lb::new(service_snapshot([1, 1, 2]));
    assert!(dp
        .send(0, &tcp("10.10.0.2", "10.20.0.11", 40000, 80, SYN, true))
        .is_some());
    assert_eq!(dp.pipeline.policy.flows(), 0);
}
