//! The policy stage: network policy for the traffic the load-balancing stage did not handle
//! (routed pod and client traffic; service traffic is checked there, against the backend).
//!
//! Precedence, for packets whose verdict is still Continue, when any policy exists:
//!   1. handled by the LB stage (checked there)   -> skipped
//!   2. reply of an allowed flow (per-worker table) -> passes
//!   3. not parseable                              -> left to the route stage's drop
//!   4. denied by an explicit deny rule            -> Drop(POLICY_DENY)
//!   5. no rule allows it where policy applies     -> Drop(POLICY_DENIED)
//!   6. allowed, flow table full, nothing to evict -> Drop(CT_MAP_INSERTION_FAILED)
//!   7. allowed                                    -> passes; the flow is tracked, so its
//!      replies pass too
//!
//! A TCP flow that HTTP rules apply to when it opens is inspected at L7 (`l7`), after the
//! checks above: a refused request is dropped (POLICY_L7_DENIED) and answered 403; a segment
//! beyond a hole in the client's stream is dropped (L7_SEGMENT_OUT_OF_ORDER); no room to
//! inspect one more connection drops its SYN (CT_MAP_INSERTION_FAILED): fail closed.
//!
//! The original direction is checked on every packet, so a policy change applies to flows in
//! progress; replies pass while the flow is tracked (Cilium's semantics).

use crate::drop::DropReason;
use crate::flow::{EventKind, FlowEvent};
use crate::l7::inspect::{inspect, Conns, Judged, Step};
use crate::l7::{Ends, Outbox};
use crate::lb::conntrack::{Addr, Dir, Endpoint, Nat, Table, Timeouts, Tuple};
use crate::lb::slots::{clock_secs, Adoption, PersistAt};
use crate::packet::{Batch, Port, Verdict};
use crate::policy::{self, PolicyDrop};
use crate::region::Region;
use crate::state::Snapshot;
use crate::stats::WorkerStats;
use crate::wire::parse::{parse_fast, Parsed, TunnelPorts};
use crate::wire::tcp;
use std::net::IpAddr;
use std::path::Path;

/// How many flow-table slots one GC step examines per batch (as the LB stage's GC).
const GC_BUDGET: usize = 32;

/// A worker's table of allowed flows.
pub struct PolicyState {
    v4: Table<u32>,
    v6: Table<[u8; 16]>,
    l7_v4: Conns<u32>,
    l7_v6: Conns<[u8; 16]>,
    /// CLOCK_MONOTONIC seconds, as the LB stage's clock.
    now: u32,
}

impl Default for PolicyState {
    /// Small tables for tests, replay and benches.
    fn default() -> Self {
        PolicyState::new(4096, Timeouts::default())
    }
}

impl PolicyState {
    /// Room for `max` allowed flows per family.
    pub fn new(max: usize, timeouts: Timeouts) -> Self {
        let max = max.max(1);
        Self::of(Table::new(max, timeouts), Table::new(max, timeouts))
    }

    fn of(v4: Table<u32>, v6: Table<[u8; 16]>) -> Self {
        PolicyState {
            l7_v4: Conns::new(v4.capacity()),
            l7_v6: Conns::new(v6.capacity()),
            v4,
            v6,
            now: clock_secs(),
        }
    }

    /// As `new`, with the flow tables in files under `dir` that outlive the process (see
    /// `LbState::persistent`): worker `worker` of `workers`.
    pub fn persistent(
        max: usize,
        timeouts: Timeouts,
        dir: &Path,
        (worker, workers): (u16, u16),
    ) -> std::io::Result<(Self, Vec<Adoption>)> {
        let max = max.max(1);
        let now = clock_secs();
        let at = |name: &str| PersistAt {
            path: dir.join(format!("policy-{name}-w{worker}.ct")),
            worker,
            workers,
        };
        let (v4, r4) = Table::persistent(max, timeouts, &at("v4"), now)?;
        let (v6, r6) = Table::persistent(max, timeouts, &at("v6"), now)?;
        let mut st = Self::of(v4, v6);
        st.l7_v4.mark_adopted(&st.v4);
        st.l7_v6.mark_adopted(&st.v6);
        Ok((st, vec![r4, r6]))
    }

    pub fn flows(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A flow as the table keeps it: no translation (source and backend are the endpoints).
fn flow<A: Addr>(t: &Tuple<A>) -> Nat<A> {
    let (s, d) = (
        Endpoint {
            addr: t.src,
            port: t.sport,
        },
        Endpoint {
            addr: t.dst,
            port: t.dport,
        },
    );
    Nat {
        client: s,
        frontend: d,
        backend: d,
        source: s,
    }
}

/// A packet's flow: table slot, direction, whether it just opened, and the drop counter slot of
/// the policy that allowed it (u16::MAX for replies, or where no policy applies).
type Flow = (u32, Dir, bool, u16);

/// One packet: its flow, or why it is dropped (and which policy's counter says so).
#[allow(clippy::too_many_arguments)]
fn one<A: Addr>(
    snap: &Snapshot,
    tb: &mut Table<A>,
    t: Tuple<A>,
    flags: u8,
    now: u32,
    src_identity: u32,
    src: IpAddr,
    dst: IpAddr,
) -> Result<Flow, PolicyDrop> {
    let hit = tb.lookup(&t);
    if let Some((slot, Dir::Reply)) = hit {
        tb.seen(slot, Dir::Reply, flags, now);
        return Ok((slot, Dir::Reply, false, u16::MAX));
    }
    let check = || policy::check(snap, src_identity, src, dst, t.proto, t.dport);
    if let Some((slot, dir)) = hit {
        // the entry keeps the verdict until the next snapshot; a closing packet is checked
        // afresh, for the policy its flow event names
        let closing = t.proto == tcp::PROTOCOL && flags & (tcp::flags::FIN | tcp::flags::RST) != 0;
        let allowed_by = tb.policy_verdict(slot, snap.generation, src_identity, closing, check)?;
        tb.seen(slot, dir, flags, now);
        return Ok((slot, dir, false, allowed_by));
    }
    let allowed_by = check()?;
    let slot = tb
        .insert(flow(&t), t.proto, flags, now)
        .map_err(|_| PolicyDrop {
            reason: DropReason::CtMapInsertionFailed,
            // not a policy's doing: no policy's counter
            slot: u16::MAX,
            egress: false,
        })?;
    tb.set_allowed_at(slot, snap.generation, src_identity);
    Ok((slot, Dir::Original, true, allowed_by))
}

/// The policy of one packet of flow `t` (and its L7 inspection if TCP).
#[allow(clippy::too_many_arguments)]
fn step<A: Addr>(
    snap: &Snapshot,
    tb: &mut Table<A>,
    conns: &mut Conns<A>,
    outbox: &mut Outbox,
    stats: &WorkerStats,
    t: Tuple<A>,
    p: &Parsed,
    pkt: &mut [u8],
    port: Port,
    src_identity: u32,
    now: u32,
) -> Step {
    let (slot, dir, new, allowed_by) =
        match one(snap, tb, t, p.tcp_flags, now, src_identity, p.src, p.dst) {
            Ok(flow) => flow,
            Err(d) => return Step::Drop(d),
        };
    if new {
        stats.policy_allowed.add(1);
    }
    let events = &outbox.events;
    let ends =
        p.protocol == tcp::PROTOCOL && p.tcp_flags & (tcp::flags::FIN | tcp::flags::RST) != 0;
    if events.on() && (new || ends) {
        let kind = if new { EventKind::New } else { EventKind::End };
        let mut e = FlowEvent::of_packet(kind, p);
        e.is_reply = dir == Dir::Reply;
        e.port = port;
        e.policy_slot = allowed_by;
        e.src_identity = src_identity;
        events.emit(e);
    }
    if t.proto != tcp::PROTOCOL {
        return Step::Pass;
    }
    let flow = (slot, dir, new);
    let judged = || {
        let src = if src_identity != 0 {
            src_identity
        } else {
            policy::identity_of(snap, p.src)
        };
        Judged {
            policy: &snap.cluster.policy,
            ends: Ends {
                client: (p.src, t.sport),
                server: (p.dst, t.dport),
            },
            identities: (src, policy::identity_of(snap, p.dst)),
            port: t.dport,
            backend: None,
        }
    };
    inspect(conns, tb, flow, judged, pkt, p, outbox, port, stats)
}

/// The stage. Packets it generates (403 answers, resets) go to `outbox`.
pub fn enforce(
    snap: &Snapshot,
    region: &mut Region,
    batch: &mut Batch,
    stats: &WorkerStats,
    st: &mut PolicyState,
    outbox: &mut Outbox,
) {
    if snap.cluster.policy.is_empty() {
        return;
    }
    st.now = clock_secs();
    st.v4.gc_step(st.now, GC_BUDGET);
    st.v6.gc_step(st.now, GC_BUDGET);
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue || batch.meta(i).lb {
            continue;
        }
        let f = batch.frame(i);
        let Some(pkt) = region.data_mut(&f) else {
            continue;
        };
        let Ok(p) = parse_fast(pkt, TunnelPorts::NONE) else {
            continue;
        };
        // a later fragment carries no ports: it is judged on port 0
        let (sport, dport) = if p.l4.is_some() {
            (p.src_port, p.dst_port)
        } else {
            (0, 0)
        };
        let src_identity = batch.meta(i).src_identity;
        let r = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let t = Tuple {
                    src: u32::from(s),
                    dst: u32::from(d),
                    sport,
                    dport,
                    proto: p.protocol,
                };
                let (tb, conns) = (&mut st.v4, &mut st.l7_v4);
                step(
                    snap,
                    tb,
                    conns,
                    outbox,
                    stats,
                    t,
                    &p,
                    pkt,
                    f.port,
                    src_identity,
                    st.now,
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let t = Tuple {
                    src: s.octets(),
                    dst: d.octets(),
                    sport,
                    dport,
                    proto: p.protocol,
                };
                let (tb, conns) = (&mut st.v6, &mut st.l7_v6);
                step(
                    snap,
                    tb,
                    conns,
                    outbox,
                    stats,
                    t,
                    &p,
                    pkt,
                    f.port,
                    src_identity,
                    st.now,
                )
            }
            _ => continue,
        };
        match r {
            Step::Pass => {}
            Step::Reset(len) => batch.frame_mut(i).len = len,
            Step::Drop(d) => d.apply(batch, i, stats),
        }
    }
}
