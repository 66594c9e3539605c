//! The load-balancing stage over a batch (the precedence is in mod.rs): frontend and conntrack
//! lookups in passes whose cache misses overlap, then each packet's outcome, its flow event and
//! its L7 judgement.

use super::conntrack::{self, Addr, Dir, Endpoint, InsertError, Nat, Tuple};
use super::nat::rewrite;
use super::{affinity, dsr, maglev, Ctx, Family, LbMode, LbState};
use crate::drop::DropReason;
use crate::flow::{EventKind, FlowEvent};
use crate::l7::inspect::{inspect, Judged, Step};
use crate::l7::{Ends, Outbox};
use crate::packet::{Batch, Verdict, MAX_BATCH};
use crate::policy;
use crate::region::Region;
use crate::state::{Algorithm, Frontend, Snapshot};
use crate::stats::WorkerStats;
use crate::wire::parse::{parse_fast, Parsed, TunnelPorts};
use crate::wire::{icmp, tcp, udp};
use arrayvec::ArrayVec;
use std::net::IpAddr;

/// How many SNAT ports a new connection tries before giving up (from a hashed start).
const PORT_PROBES: u32 = 64;
/// The ports are tried in groups of this many, their conntrack buckets prefetched together:
/// each try is a lookup at a random place (a cache and TLB miss), and in a SYN flood every port
/// toward a backend is taken within a second, so all 64 were tried for every SYN (until
/// `SCARCE_AFTER`). One at a time they cost `lb_new` 428 ns per new flow; in groups, 307.
const PORT_PROBE_GROUP: u32 = 8;
/// After this many new connections in a row toward a backend found none of their ports free,
/// its ports count as scarce: a search then takes the first group of ports that holds one to
/// reclaim, instead of trying all `PORT_PROBES` for a free one that is not there. In a SYN flood
/// every port toward the backend is held by a half-open connection within a second, and each
/// SYN made 64 conntrack lookups (a third of the worker's time). A free port found ends it.
/// With ports merely busy (a share f held by live connections) a search finds none free with
/// chance f^64: 8 in a row have a chance of 3e-5 at f = 0.98 and 4e-12 at 0.95. Established
/// connections never give up their ports either way.
const SCARCE_AFTER: u8 = 8;

/// What the passes before the last learned about a packet the stage may act on: parse and
/// frontend hash (1), service and conntrack hash (2), candidate connection (3).
struct Pending<'s> {
    i: usize,
    p: Parsed,
    tuple: FamilyTuple,
    svc: Option<&'s std::sync::Arc<crate::state::ServiceEntry>>,
    /// The hash of the packet's frontend in the services map (pass 1, for pass 2).
    frontend: u64,
    /// The tuple's conntrack hash, when the packet may belong to a tracked connection.
    hash: Option<u64>,
    /// The conntrack slot found in pass 3 (checked again before use: an insert or
    /// removal earlier in the batch may have changed it).
    hit: Option<(u32, Dir)>,
}

fn frontend_of(p: &Parsed) -> Frontend {
    Frontend {
        addr: p.dst,
        proto: p.protocol,
        port: p.dst_port,
    }
}

enum FamilyTuple {
    V4(Tuple<u32>),
    V6(Tuple<[u8; 16]>),
}

/// The load-balancing stage, in three passes over the batch: the first parses every packet,
/// looks up its frontend and prefetches its conntrack index bucket; the second probes the index
/// and prefetches the entry; the third acts. The cache misses of a batch overlap instead of each
/// packet waiting for its own in turn.
pub fn service(
    snap: &Snapshot,
    region: &mut Region,
    batch: &mut Batch,
    stats: &WorkerStats,
    lb: &mut LbState,
    outbox: &mut Outbox,
) {
    if snap.cluster.services.is_empty() && lb.connections() == 0 {
        return;
    }
    stats.ct_gc_freed.add(lb.tick() as u64);
    let settings = &*snap.lb;
    let snat4 = settings.snat_v4.map(IpAddr::V4);
    let snat6 = settings.snat_v6.map(IpAddr::V6);
    let mut pending: ArrayVec<Pending, MAX_BATCH> = ArrayVec::new();
    // ICMP packets, which may be errors about connections (handled last: they are rare). Their
    // indices only: a list of parses beside `pending` slowed the stage by ~10% at 1M entries.
    let mut errors: ArrayVec<u8, MAX_BATCH> = ArrayVec::new();
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue {
            continue;
        }
        let f = batch.frame(i);
        let Some(pkt) = region.data(&f) else {
            continue;
        };
        // not parseable: the route stage drops it with its reason
        let Ok(p) = parse_fast(pkt, TunnelPorts::NONE) else {
            continue;
        };
        // a packet that dies here is not translated: its time-exceeded error quotes it as sent
        if p.ttl <= 1 {
            continue;
        }
        if p.fragment || p.l4.is_none() || !matches!(p.protocol, tcp::PROTOCOL | udp::PROTOCOL) {
            if !p.fragment && matches!(p.protocol, icmp::PROTOCOL_V4 | icmp::PROTOCOL_V6) {
                errors.push(i as u8);
            }
            continue;
        }
        let tuple = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                FamilyTuple::V4(tuple(u32::from(s), u32::from(d), &p))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => FamilyTuple::V6(tuple(s.octets(), d.octets(), &p)),
            _ => continue,
        };
        let frontend = frontend_of(&p);
        let fh = snap.cluster.services.hash(&frontend);
        snap.cluster.services.prefetch(fh);
        pending.push(Pending {
            i,
            p,
            tuple,
            svc: None,
            frontend: fh,
            hash: None,
            hit: None,
        });
    }
    // Only packets to a frontend (original direction) or to the SNAT address (replies) can
    // belong to a tracked connection: everything else skips the conntrack probe, a likely cache
    // miss in a large table. (A connection whose frontend was deleted stops being translated.)
    // The frontend's bucket was asked for in the pass before: at 10,000 services it is a miss.
    for w in pending.iter_mut() {
        w.svc = snap
            .cluster
            .services
            .get_hashed(w.frontend, &frontend_of(&w.p));
        w.hash = match &w.tuple {
            FamilyTuple::V4(t) => {
                (w.svc.is_some() || Some(w.p.dst) == snat4).then(|| lb.v4.hash(t))
            }
            FamilyTuple::V6(t) => {
                (w.svc.is_some() || Some(w.p.dst) == snat6).then(|| lb.v6.hash(t))
            }
        };
    }
    for w in pending.iter_mut() {
        if let Some(h) = w.hash {
            w.hit = match &w.tuple {
                FamilyTuple::V4(t) => lb.v4.probe(h, t),
                FamilyTuple::V6(t) => lb.v6.probe(h, t),
            };
        }
    }
    // A packet with no candidate connection likely opens one: its service entry and then that
    // service's Maglev slot are two dependent misses at scale (10,000 services' 32 KiB tables
    // do not stay cached). Asked for here, a loop apart, they overlap across the batch.
    let opening = || pending.iter().filter(|w| w.hit.is_none());
    for svc in opening().filter_map(|w| w.svc) {
        crate::prefetch::read(&**svc);
    }
    for w in opening() {
        let Some(svc) = w.svc else { continue };
        if svc.algorithm == Algorithm::Maglev && !svc.table.is_empty() {
            let h = balance_hash(svc, &w.p, snap.lb.seed);
            svc.table.prefetch((h % svc.table.len() as u64) as usize);
        }
    }
    let mut new = 0;
    for w in &pending {
        let (i, p) = (w.i, &w.p);
        let f = batch.frame(i);
        let Some(pkt) = region.data_mut(&f) else {
            continue;
        };
        let src_identity = batch.meta(i).src_identity;
        let out = match w.tuple {
            FamilyTuple::V4(t) => one(
                snap,
                &mut lb.v4,
                &mut lb.ctx,
                snat4,
                t,
                pkt,
                p,
                w,
                src_identity,
            ),
            FamilyTuple::V6(t) => one(
                snap,
                &mut lb.v6,
                &mut lb.ctx,
                snat6,
                t,
                pkt,
                p,
                w,
                src_identity,
            ),
        };
        if !matches!(out, Outcome::Untouched) {
            batch.meta_mut(i).lb = true;
        }
        if outbox.events.on() {
            let e = match w.tuple {
                FamilyTuple::V4(t) => event(&lb.v4, &t, &out, p),
                FamilyTuple::V6(t) => event(&lb.v6, &t, &out, p),
            };
            if let Some(mut e) = e {
                e.port = f.port;
                e.src_identity = src_identity;
                outbox.events.emit(e);
            }
        }
        // L7 policy of the connections HTTP rules apply to (TCP, while any policy exists)
        if let (Some(flow), tcp::PROTOCOL, false) =
            (out.flow(), p.protocol, snap.cluster.policy.is_empty())
        {
            let step = match w.tuple {
                FamilyTuple::V4(_) => l7(
                    snap,
                    &mut lb.v4,
                    flow,
                    pkt,
                    p,
                    src_identity,
                    outbox,
                    f.port,
                    stats,
                ),
                FamilyTuple::V6(_) => l7(
                    snap,
                    &mut lb.v6,
                    flow,
                    pkt,
                    p,
                    src_identity,
                    outbox,
                    f.port,
                    stats,
                ),
            };
            match step {
                Step::Pass => {}
                Step::Reset(len) => batch.frame_mut(i).len = len,
                Step::Drop(d) => {
                    d.apply(batch, i, stats);
                    continue;
                }
            }
        }
        match out {
            Outcome::Untouched | Outcome::Tracked { .. } => {}
            Outcome::New { .. } => {
                new += 1;
                if !snap.cluster.policy.is_empty() {
                    stats.policy_allowed.add(1);
                }
            }
            Outcome::Dsr {
                backend, new: n, ..
            } => {
                new += u64::from(n);
                let h = maglev::flow_hash(p.src, p.dst, p.src_port, p.dst_port, p.protocol, 0);
                let mut f = batch.frame(i);
                let v = dsr::dispatch(snap, region, &mut f, p, backend, h, stats);
                *batch.frame_mut(i) = f;
                if v != Verdict::Continue {
                    batch.set_verdict(i, v);
                }
            }
            Outcome::Handoff(w) => batch.set_verdict(i, Verdict::Handoff(w)),
            Outcome::Drop(r) => batch.set_verdict(i, Verdict::Drop(r)),
            Outcome::PolicyDrop(d) => d.apply(batch, i, stats),
        }
    }
    for &i in &errors {
        super::icmp::related(snap, region, batch, usize::from(i), lb, stats);
    }
    stats.lb_new_connections.add(new);
    stats.ct_entries.set(lb.connections() as u64);
    stats.snat_connections.set(lb.snat_connections() as u64);
    stats.ct_evicted.set(lb.evicted());
    stats
        .snat_ports_per_backend
        .set(u64::from(lb.ctx.port_range(snap.lb.snat_ports).1));
}

enum Outcome {
    Untouched,
    /// A packet of the tracked connection in `slot`, this way.
    Tracked {
        slot: u32,
        dir: Dir,
    },
    /// The first packet of the connection in `slot`.
    New {
        slot: u32,
    },
    /// A reply to a connection another worker tracks: to be handed over to it.
    Handoff(u16),
    /// A packet of the DSR connection in `slot` (`new`: its first): to be tunnelled to
    /// `backend`.
    Dsr {
        backend: IpAddr,
        new: bool,
        slot: u32,
    },
    Drop(DropReason),
    /// Refused by network policy.
    PolicyDrop(policy::PolicyDrop),
}

impl Outcome {
    /// The connection the packet belongs to: (slot, direction, just opened).
    fn flow(&self) -> Option<(u32, Dir, bool)> {
        match *self {
            Outcome::Tracked { slot, dir } => Some((slot, dir, false)),
            Outcome::New { slot } => Some((slot, Dir::Original, true)),
            Outcome::Dsr { slot, new, .. } => Some((slot, Dir::Original, new)),
            _ => None,
        }
    }
}

/// The flow event of a load-balanced packet, if it is one worth an event: a new connection
/// (translated to its backend), or a FIN/RST of a tracked one.
fn event<A: Addr>(fam: &Family<A>, t: &Tuple<A>, out: &Outcome, p: &Parsed) -> Option<FlowEvent> {
    let (slot, dir, new) = out.flow()?;
    let ends = t.proto == tcp::PROTOCOL && p.tcp_flags & (tcp::flags::FIN | tcp::flags::RST) != 0;
    if !new && !ends {
        return None;
    }
    let kind = if new {
        EventKind::Translated
    } else {
        EventKind::End
    };
    let mut e = FlowEvent::of_packet(kind, p);
    e.is_reply = dir == Dir::Reply;
    if let Some(entry) = fam.table_of(t).get(slot) {
        let nat = entry.nat();
        e.frontend = Some((nat.frontend.addr.ip(), nat.frontend.port));
        e.backend = Some((nat.backend.addr.ip(), nat.backend.port));
    }
    Some(e)
}

/// The L7 step of a TCP packet of a load-balanced connection (already translated): judged
/// between the client and the backend, answered from the frontend.
#[allow(clippy::too_many_arguments)]
fn l7<A: Addr>(
    snap: &Snapshot,
    fam: &mut Family<A>,
    flow: (u32, Dir, bool),
    pkt: &mut [u8],
    p: &Parsed,
    src_identity: u32,
    outbox: &mut Outbox,
    port: crate::packet::Port,
    stats: &WorkerStats,
) -> Step {
    let tcp = &fam.tcp;
    // asked only for new connections and inspected ones: the entry is in cache by then
    let judged = || {
        let nat = tcp.get(flow.0).map(|e| e.nat()).unwrap_or_default();
        let client = nat.client.addr.ip();
        let src = if src_identity != 0 {
            src_identity
        } else {
            policy::identity_of(snap, client)
        };
        Judged {
            policy: &snap.cluster.policy,
            ends: Ends {
                client: (client, nat.client.port),
                server: (nat.frontend.addr.ip(), nat.frontend.port),
            },
            identities: (src, policy::identity_of(snap, nat.backend.addr.ip())),
            port: nat.backend.port,
            backend: Some((nat.backend.addr.ip(), nat.backend.port)),
        }
    };
    inspect(&mut fam.l7, tcp, flow, judged, pkt, p, outbox, port, stats)
}

pub(super) fn tuple<A>(src: A, dst: A, p: &Parsed) -> Tuple<A> {
    Tuple {
        src,
        dst,
        sport: p.src_port,
        dport: p.dst_port,
        proto: p.protocol,
    }
}

/// The hash a new connection of `p` to `svc` is balanced by (its Maglev slot, its affinity
/// bucket). With ClientIP affinity the client's port stays out of it: all of a client's
/// connections hash alike, on every worker and every appliance (see affinity.rs).
#[inline]
fn balance_hash(svc: &crate::state::ServiceEntry, p: &Parsed, seed: u64) -> u64 {
    let sport = if svc.affinity_timeout_s.is_some() {
        0
    } else {
        p.src_port
    };
    maglev::flow_hash(p.src, p.dst, sport, p.dst_port, p.protocol, seed)
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn one<A: Addr>(
    snap: &Snapshot,
    fam: &mut Family<A>,
    ctx: &mut Ctx,
    snat: Option<IpAddr>,
    t: Tuple<A>,
    pkt: &mut [u8],
    p: &Parsed,
    w: &Pending,
    src_identity: u32,
) -> Outcome {
    let now = ctx.now;
    let Family {
        tcp: tcp_table,
        other,
        affinity,
        ..
    } = fam;
    let tb = if t.proto == tcp::PROTOCOL {
        tcp_table
    } else {
        other
    };
    let svc = w.svc;
    if svc.is_some() || Some(p.dst) == snat {
        // what the probe pass found, if still what it was; a miss is looked up again (an
        // earlier packet of the batch may have started the connection)
        let hit = match w.hit {
            Some((slot, dir)) if tb.holds(slot, dir, &t) => Some((slot, dir)),
            _ => match w.hash {
                Some(h) => tb.lookup_hashed(h, &t),
                None => tb.lookup(&t),
            },
        };
        if let Some((slot, dir)) = hit {
            if tb.reopens(slot, dir, p.tcp_flags, now) {
                tb.remove(slot);
            } else if let Some(e) = tb.seen(slot, dir, p.tcp_flags, now) {
                let (nat, dsr) = (e.nat(), e.dsr());
                // policy applies to every packet the client sends (client -> backend); replies
                // of an allowed connection pass. The entry keeps the verdict until the next
                // snapshot.
                if dir == Dir::Original {
                    let (b, port) = (nat.backend.addr.ip(), nat.backend.port);
                    let check = || policy::check(snap, src_identity, p.src, b, t.proto, port);
                    let generation = snap.generation;
                    if let Err(d) = tb.policy_verdict(slot, generation, src_identity, false, check)
                    {
                        return Outcome::PolicyDrop(d);
                    }
                }
                if dsr {
                    return Outcome::Dsr {
                        backend: nat.backend.addr.ip(),
                        new: false,
                        slot,
                    };
                }
                match dir {
                    Dir::Original => rewrite(pkt, p, &t, nat.source, nat.backend),
                    Dir::Reply => rewrite(pkt, p, &t, nat.frontend, nat.client),
                }
                return Outcome::Tracked { slot, dir };
            }
        }
        // a reply to an SNAT port of another worker: that worker has the connection
        if svc.is_none() {
            if let Some(w) = ctx.other_owner(snap.lb.snat_ports, p.dst_port) {
                return Outcome::Handoff(w);
            }
        }
    }
    let Some(svc) = svc else {
        return Outcome::Untouched;
    };
    if svc.table.is_empty() {
        return Outcome::Drop(DropReason::ServiceBackendNotFound);
    }
    let frontend = Endpoint {
        addr: t.dst,
        port: t.dport,
    };
    let h = balance_hash(svc, p, snap.lb.seed);
    let affinity_key = affinity::Key {
        client: t.src,
        frontend,
        proto: t.proto,
    };
    let sticky = svc.affinity_timeout_s.and_then(|timeout| {
        let (to, hint) = affinity.get(&affinity_key, h, now, timeout)?;
        let is = |b: &crate::state::Backend| b.addr == to.addr.ip() && b.port == to.port;
        let i = match svc.backends.get(usize::from(hint)) {
            Some(b) if is(b) => usize::from(hint),
            _ => svc.backends.iter().position(is)?,
        };
        // only while the backend still takes new connections
        svc.takes_new.get(i).copied().unwrap_or(false).then_some(i)
    });
    let index = sticky.unwrap_or_else(|| {
        let slot = match svc.algorithm {
            Algorithm::Maglev => (h % svc.table.len() as u64) as usize,
            Algorithm::Random => (ctx.next_random() % svc.table.len() as u64) as usize,
        };
        // in range: the slot is taken modulo the length
        svc.table.get(slot).unwrap_or(usize::MAX)
    });
    let Some(b) = svc.backends.get(index) else {
        return Outcome::Drop(DropReason::ServiceBackendNotFound);
    };
    // a frontend of one family with a backend of the other would need NAT46/64
    let Some(backend_addr) = A::from_ip(b.addr) else {
        return Outcome::Drop(DropReason::ServiceBackendNotFound);
    };
    // the backend's ingress policy (and the client's egress) decide before anything is tracked
    if let Err(d) = policy::check(snap, src_identity, p.src, b.addr, t.proto, b.port) {
        return Outcome::PolicyDrop(d);
    }
    let Some(source_addr) = snat.and_then(A::from_ip) else {
        return Outcome::Drop(DropReason::NatNoMapping);
    };
    let client = Endpoint {
        addr: t.src,
        port: t.sport,
    };
    let backend = Endpoint {
        addr: backend_addr,
        port: b.port,
    };
    // DSR needs the backend to answer on the frontend's port: the packet reaches it unchanged
    let dsr = match snap.lb.mode {
        LbMode::Snat => false,
        LbMode::Dsr => true,
        LbMode::Hybrid => t.proto == tcp::PROTOCOL,
    } && b.port == t.dport;
    if dsr {
        let nat = Nat {
            client,
            frontend,
            backend,
            source: client,
        };
        return match tb.insert_dsr(nat, t.proto, p.tcp_flags, now) {
            Ok(slot) => {
                tb.set_allowed_at(slot, snap.generation, src_identity);
                if svc.affinity_timeout_s.is_some() {
                    affinity.put(affinity_key, h, now, backend, index as u16);
                }
                Outcome::Dsr {
                    backend: b.addr,
                    new: true,
                    slot,
                }
            }
            Err(_) => Outcome::Drop(DropReason::CtMapInsertionFailed),
        };
    }
    let (lo, span) = ctx.port_range(snap.lb.snat_ports);
    let first = (maglev::flow_hash(p.src, b.addr, p.src_port, b.port, p.protocol, !snap.lb.seed)
        % u64::from(span)) as u32;
    let mut nat = Nat {
        client,
        frontend,
        backend,
        source: Endpoint {
            addr: source_addr,
            port: 0,
        },
    };
    // the first SNAT port toward this backend that no tracked connection uses; failing that,
    // one held by an embryonic or expired connection, which gives it up: a SYN flood fills the
    // ports with half-open connections, and, as for a full table, those go first (established
    // connections never lose theirs)
    let mut reclaim = None;
    let mut free = None;
    let probes = PORT_PROBES.min(span);
    let mut hashes = [0u64; PORT_PROBE_GROUP as usize];
    let pressure = ctx.port_pressure(backend_addr.fold64(), b.port);
    let scarce = *pressure >= SCARCE_AFTER;
    'groups: for g in (0..probes).step_by(PORT_PROBE_GROUP as usize) {
        if scarce && reclaim.is_some() {
            break;
        }
        let group = g..(g + PORT_PROBE_GROUP).min(probes);
        for (k, h) in group.clone().zip(hashes.iter_mut()) {
            nat.source.port = (lo + (first + k) % span) as u16;
            *h = tb.hash(&nat.reply(t.proto));
            tb.prefetch_bucket(*h);
        }
        for (k, h) in group.zip(hashes) {
            nat.source.port = (lo + (first + k) % span) as u16;
            match tb.lookup_hashed(h, &nat.reply(t.proto)) {
                None => {
                    free = Some(nat);
                    break 'groups;
                }
                Some((slot, _)) => {
                    if reclaim.is_none()
                        && tb.get(slot).is_some_and(|e| conntrack::evictable(e, now))
                    {
                        reclaim = Some((slot, nat));
                    }
                }
            }
        }
    }
    *pressure = match free {
        Some(_) => 0,
        None => pressure.saturating_add(1),
    };
    let nat = match (free, reclaim) {
        (Some(nat), _) => nat,
        (None, Some((slot, nat))) => {
            tb.remove(slot);
            tb.evicted += 1;
            nat
        }
        (None, None) => return Outcome::Drop(DropReason::SnatPortsExhausted),
    };
    match tb.insert(nat, t.proto, p.tcp_flags, now) {
        Ok(slot) => {
            tb.set_allowed_at(slot, snap.generation, src_identity);
            rewrite(pkt, p, &t, nat.source, nat.backend);
            if svc.affinity_timeout_s.is_some() {
                affinity.put(affinity_key, h, now, nat.backend, index as u16);
            }
            Outcome::New { slot }
        }
        Err(InsertError::Full | InsertError::Exists) => {
            Outcome::Drop(DropReason::CtMapInsertionFailed)
        }
    }
}
