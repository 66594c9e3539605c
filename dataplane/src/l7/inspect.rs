//! The L7 step both the policy stage (routed traffic) and the load-balancing stage (service
//! traffic, after NAT) run for TCP packets of allowed flows: which flows are inspected, their
//! per-connection state by flow-table slot, and what a refusal does to the packet in hand.

use super::{Action, Ends, HttpConn, Outbox, Segment};
use crate::drop::DropReason;
use crate::flow::{EventKind, FlowEvent, HttpEvent};
use crate::lb::conntrack::{Addr, Dir, Table, Tuple};
use crate::packet::Port;
use crate::policy::{HttpVerdict, PolicyDrop, PolicyTables};
use crate::stats::WorkerStats;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::parse::Parsed;
use crate::wire::tcp::{flags::RST, TcpPacket};
use crate::wire::{ethernet::ethertype, set_be16};
use std::net::IpAddr;

/// Connections a worker inspects at L7 at once per flow table, each with an 8 KiB head buffer
/// (32 MiB at most, allocated as connections first need them and then reused). A connection
/// needing inspection beyond this is refused at its SYN: fail closed.
pub const CONNECTIONS: usize = 4096;

/// The L7 state of the inspected flows of one flow table, by the flow's table slot.
pub struct Conns<A> {
    /// Flow table slot -> 1 + index into `conns` (0: not inspected).
    of_slot: Vec<u32>,
    /// (slot, original tuple, state): the tuple tells a reused slot from the flow it was for.
    conns: Vec<(u32, Tuple<A>, HttpConn)>,
    free: Vec<u32>,
    max: usize,
    /// Slots marked ADOPTED and not looked at since.
    marked: usize,
}

/// `of_slot` of a connection taken over from an earlier process (conntrack tables outlive it,
/// this state does not): whether its rules inspect it is decided again at its next packet, and
/// inspection then starts at that segment.
const ADOPTED: u32 = u32::MAX;

impl<A: Addr> Conns<A> {
    /// Marks the TCP connections of `tb` (just adopted) to be judged again at their next packet.
    pub fn mark_adopted(&mut self, tb: &Table<A>) {
        for (slot, o) in self.of_slot.iter_mut().enumerate() {
            if *o != ADOPTED
                && tb
                    .get(slot as u32)
                    .is_some_and(|e| e.proto == crate::wire::tcp::PROTOCOL)
            {
                *o = ADOPTED;
                self.marked += 1;
            }
        }
    }

    /// Nothing inspected and nothing adopted left to judge: every packet but a new flow's
    /// passes without a look at `of_slot`, a random access into an array as long as the flow
    /// table (~9% of the pipeline's time per established packet at a million connections).
    fn idle(&self) -> bool {
        self.marked == 0 && self.free.len() == self.conns.len()
    }

    /// Whether `slot` holds an adopted connection not looked at since (the mark is cleared).
    fn take_adopted(&mut self, slot: u32) -> bool {
        match self.of_slot.get_mut(slot as usize) {
            Some(o) if *o == ADOPTED => {
                *o = 0;
                self.marked -= 1;
                true
            }
            _ => false,
        }
    }

    /// For a flow table of `slots` slots.
    pub fn new(slots: usize) -> Self {
        Conns {
            of_slot: vec![0; slots],
            conns: Vec::new(),
            free: Vec::new(),
            max: CONNECTIONS,
            marked: 0,
        }
    }

    fn release(&mut self, i: usize) {
        let slot = self.conns[i].0 as usize;
        if self.of_slot.get(slot) == Some(&(i as u32 + 1)) {
            self.of_slot[slot] = 0;
        }
        self.free.push(i as u32);
    }

    /// The state of the flow in `slot`, if it is inspected (and still the same flow).
    fn get(&mut self, tb: &Table<A>, slot: u32) -> Option<&mut HttpConn> {
        let i = (*self.of_slot.get(slot as usize)?)
            .checked_sub(1)
            .filter(|i| *i != ADOPTED - 1)? as usize;
        if !tb.holds(slot, Dir::Original, &self.conns[i].1) {
            // the flow it was for is gone: the slot holds another one
            self.release(i);
            return None;
        }
        Some(&mut self.conns[i].2)
    }

    /// Starts inspecting the flow in `slot`; false when no state is left.
    fn attach(&mut self, tb: &Table<A>, slot: u32) -> bool {
        let Some(t) = tb.get(slot).map(|e| e.nat().original(e.proto)) else {
            return false;
        };
        if self.free.is_empty() && self.conns.len() == self.max {
            // reclaim the states of flows that ended (rare: only when all are taken)
            for i in 0..self.conns.len() {
                let (s, t, _) = &self.conns[i];
                let owned = self.of_slot.get(*s as usize) == Some(&(i as u32 + 1));
                if owned && !tb.holds(*s, Dir::Original, t) {
                    self.release(i);
                }
            }
        }
        // a flow reopened in the same slot keeps its state, started afresh
        let reuse = self
            .of_slot
            .get(slot as usize)
            .filter(|o| **o != ADOPTED)
            .and_then(|o| o.checked_sub(1));
        let i = match reuse.or_else(|| self.free.pop()) {
            Some(i) => {
                self.conns[i as usize].2.restart();
                i as usize
            }
            None if self.conns.len() < self.max => {
                self.conns.push((slot, t, HttpConn::default()));
                self.conns.len() - 1
            }
            None => return false,
        };
        let Some(o) = self.of_slot.get_mut(slot as usize) else {
            self.free.push(i as u32);
            return false;
        };
        if *o == ADOPTED {
            self.marked -= 1;
        }
        *o = i as u32 + 1;
        self.conns[i].0 = slot;
        self.conns[i].1 = t;
        true
    }
}

/// Turns the TCP segment in `pkt` into a bare RST with sequence number `seq` toward the same
/// destination (the payload cut off, lengths and checksums recomputed): the refused request's
/// segment resets the server instead of reaching it. The new frame length.
fn into_reset(pkt: &mut [u8], p: &Parsed, l4: usize, seq: u32) -> Option<u32> {
    let hl = usize::from(pkt.get(l4 + 12)? >> 4) * 4;
    let end = l4 + hl;
    let ip_len = end - p.l3;
    let (src, dst): (IpAddr, IpAddr) = if p.ethertype == ethertype::IPV4 {
        set_be16(pkt, p.l3 + 2, ip_len as u16);
        let mut ip = Ipv4Packet::new_checked(pkt.get_mut(p.l3..end)?).ok()?;
        ip.fill_checksum();
        (ip.src().into(), ip.dst().into())
    } else {
        set_be16(pkt, p.l3 + 4, (ip_len - 40) as u16);
        let ip = Ipv6Packet::new_checked(pkt.get(p.l3..end)?).ok()?;
        (ip.src().into(), ip.dst().into())
    };
    let t = pkt.get_mut(l4..end)?;
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].fill(0);
    t[13] = RST;
    set_be16(t, 14, 0);
    TcpPacket::new_checked(t).ok()?.fill_checksum(src, dst);
    Some(end as u32)
}

/// Who is inspected and judged: the connection's client and the server as the client addresses
/// it (the 403 comes from there), the identities and port the rules are looked up with.
pub struct Judged<'a> {
    pub policy: &'a PolicyTables,
    pub ends: Ends,
    /// Source and destination identity (the destination: the backend for service traffic).
    pub identities: (u32, u32),
    /// The server's real port (the backend's for service traffic).
    pub port: u16,
    /// Service traffic: the backend the connection was sent to (for its flow events).
    pub backend: Option<(IpAddr, u16)>,
}

/// What the L7 step decided for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Pass,
    /// The packet was turned into a RST to the server, this long; the refused request counted.
    Reset(u32),
    Drop(PolicyDrop),
}

/// The L7 step for a TCP packet `pkt` (parsed as `p`, addressed as it leaves if it passes) of
/// the allowed flow in `slot` of `tb`, direction `dir`, `new` if it just opened. `judged` is
/// asked only for packets that need it (new flows, inspected connections).
#[allow(clippy::too_many_arguments)]
pub fn inspect<'a, A: Addr>(
    conns: &mut Conns<A>,
    tb: &Table<A>,
    (slot, dir, new): (u32, Dir, bool),
    judged: impl Fn() -> Judged<'a>,
    pkt: &mut [u8],
    p: &Parsed,
    outbox: &mut Outbox,
    port: Port,
    stats: &WorkerStats,
) -> Step {
    let no_slot = |reason| {
        Step::Drop(PolicyDrop {
            reason,
            // not one policy's doing: no policy's counter
            slot: u16::MAX,
            egress: false,
        })
    };
    if !new && conns.idle() {
        return Step::Pass;
    }
    let mut j = None;
    // a connection taken over from an earlier process is judged as if it had just opened:
    // when its rules inspect it, inspection starts at this segment (l7/mod.rs: picked up
    // mid-connection), so its next request is read and judged
    if new || conns.take_adopted(slot) {
        let jj = judged();
        let (s, d) = jj.identities;
        if jj.policy.inspected_by(s, d, jj.port).is_some() && !conns.attach(tb, slot) {
            return no_slot(DropReason::CtMapInsertionFailed);
        }
        j = Some(jj);
    }
    let Some(conn) = conns.get(tb, slot) else {
        return Step::Pass;
    };
    // an inspected connection's segment that cannot be read whole (or an IP fragment of one)
    // is not let through unread
    let Some(l4) = p.l4.filter(|_| !p.fragment) else {
        return no_slot(DropReason::Malformed);
    };
    let Some(seg) = pkt
        .get(l4..p.l3 + p.ip_len)
        .and_then(|b| TcpPacket::new_checked(b).ok())
    else {
        return no_slot(DropReason::Malformed);
    };
    let s = Segment {
        seq: seg.seq(),
        ack: seg.ack(),
        flags: seg.flags(),
        payload: seg.payload(),
    };
    if dir == Dir::Reply {
        return match conn.from_server(&s) {
            Action::Pass => Step::Pass,
            _ => no_slot(DropReason::PolicyL7Denied),
        };
    }
    let j = j.unwrap_or_else(&judged);
    let (src, dst) = j.identities;
    let mut decided_by: Option<&str> = None;
    let judged_before = conn.stream.requests;
    let events = &outbox.events;
    let (action, refused) = conn.from_client(&s, |req| {
        let verdict = j.policy.http(src, dst, j.port, req);
        if events.on() {
            let mut e = FlowEvent::of_packet(EventKind::Http, p);
            e.port = port;
            e.src_identity = src;
            e.frontend = j.backend.map(|_| j.ends.server);
            e.backend = j.backend;
            let (code, by) = match verdict {
                HttpVerdict::Deny(n) => (403, n),
                HttpVerdict::Allow(n) => (0, n),
                HttpVerdict::NotInspected => (0, ""),
            };
            e.policy_slot = j.policy.slots.get(by).copied().unwrap_or(u16::MAX);
            let host = req.header("host").unwrap_or_default();
            events.emit_http(e, HttpEvent::new(req.method, req.path, host, code));
        }
        match verdict {
            HttpVerdict::Deny(name) => {
                decided_by = Some(name);
                false
            }
            _ => true,
        }
    });
    stats
        .l7_requests
        .add(u64::from(conn.stream.requests.wrapping_sub(judged_before)));
    match action {
        Action::Pass => Step::Pass,
        Action::OutOfOrder => no_slot(DropReason::L7OutOfOrder),
        Action::Closed => {
            if let Some((seq, ack)) = conn.fin_answer(&s) {
                outbox.fin_ack(port, &j.ends, seq, ack);
            }
            no_slot(DropReason::PolicyL7Denied)
        }
        Action::Refuse(_) => {
            let Some(r) = refused else {
                return no_slot(DropReason::PolicyL7Denied);
            };
            outbox.forbidden(port, &j.ends, &r);
            stats.l7_refused.add(1);
            // the request is dropped: counted so, on the policy that refused it (a malformed
            // one on the policy whose rules it was held to)
            let name = decided_by
                .or_else(|| j.policy.inspected_by(src, dst, j.port))
                .unwrap_or("");
            let slot = j.policy.slots.get(name).copied().unwrap_or(0);
            PolicyDrop {
                reason: DropReason::PolicyL7Denied,
                slot,
                egress: false,
            }
            .count(stats);
            stats.drop(DropReason::PolicyL7Denied, 1);
            match into_reset(pkt, p, l4, r.reset_seq) {
                Some(len) => Step::Reset(len),
                None => no_slot(DropReason::PolicyL7Denied),
            }
        }
    }
}
