//! The pipeline: concrete stages run in order over a batch. A stage skips packets whose verdict
//! is no longer `Continue` (VPP's vector idea without a runtime graph: static dispatch, inlining).

use crate::drop::DropReason;
use crate::packet::{Batch, Verdict};
use crate::region::Region;
use crate::state::Snapshot;
use crate::wire::ethernet::{ethertype, EthernetFrame};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::WireError;
use std::net::IpAddr;

/// Where the pipeline asks the control plane to resolve a next hop it has no MAC for.
pub trait NeighborRequests {
    fn request(&mut self, port: u16, ip: IpAddr);
}

/// Discards requests (offline replay, benches).
pub struct NoNeighborRequests;
impl NeighborRequests for NoNeighborRequests {
    fn request(&mut self, _: u16, _: IpAddr) {}
}

/// The MAC of the next hop toward `dst` on `route`: the route's static MAC, or the kernel's
/// neighbour entry (asking for resolution when there is none).
#[inline]
pub fn next_hop_mac(
    snap: &Snapshot,
    route: &crate::state::Route,
    dst: IpAddr,
    neigh: &mut impl NeighborRequests,
) -> Result<crate::wire::ethernet::MacAddr, DropReason> {
    if let Some(m) = route.mac {
        return Ok(m);
    }
    let next_hop = route.via.unwrap_or(dst);
    match snap.neighbors.get(&(route.port, next_hop)) {
        Some(m) => Ok(*m),
        None => {
            neigh.request(route.port, next_hop);
            Err(DropReason::NoNeighbor)
        }
    }
}

/// Route stage: parse L2/L3, look the destination up, rewrite MACs, decrement TTL/hop limit.
///
/// Precedence of outcomes, first that applies:
///   1. L2/L3 headers truncated or inconsistent -> Drop(Malformed)
///   2. not IPv4/IPv6                          -> Drop(UnsupportedL3)
///   3. TTL/hop limit <= 1                      -> Drop(TtlExceeded) (then answered with ICMP
///      time exceeded by `Pipeline::run`, within the budget)
///   4. no route                               -> Drop(NoRoute)
///   5. next hop MAC unknown                   -> Drop(NoNeighbor), resolution requested
///   6. otherwise                              -> Tx(route port), TTL-1, MACs rewritten
#[inline]
fn route_one(snap: &Snapshot, pkt: &mut [u8], neigh: &mut impl NeighborRequests) -> Verdict {
    let (et, l3) = match EthernetFrame::new_checked(&*pkt).and_then(|e| e.l3()) {
        Ok((et, off, _vid)) => (et, off),
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    let ip = &mut pkt[l3..];
    let dst: IpAddr = match et {
        ethertype::IPV4 => match Ipv4Packet::new_checked(&*ip) {
            Ok(p) if p.ttl() <= 1 => return Verdict::Drop(DropReason::TtlExceeded),
            Ok(p) => p.dst().into(),
            Err(WireError::Truncated | WireError::Malformed) => {
                return Verdict::Drop(DropReason::Malformed)
            }
        },
        ethertype::IPV6 => match Ipv6Packet::new_checked(&*ip) {
            Ok(p) if p.hop_limit() <= 1 => return Verdict::Drop(DropReason::TtlExceeded),
            Ok(p) => p.dst().into(),
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        },
        _ => return Verdict::Drop(DropReason::UnsupportedL3),
    };
    let Some(route) = snap.routes.lookup(dst) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let dmac = match next_hop_mac(snap, route, dst, neigh) {
        Ok(m) => m,
        Err(r) => return Verdict::Drop(r),
    };
    let Some(smac) = snap.port_mac(route.port) else {
        return Verdict::Drop(DropReason::NoEgressPort);
    };
    // The headers were checked above: rewrite them in place without checking again.
    match et {
        ethertype::IPV4 => Ipv4Packet::new_unchecked(&mut pkt[l3..]).decrement_ttl(),
        _ => Ipv6Packet::new_unchecked(&mut pkt[l3..]).decrement_hop_limit(),
    }
    let mut e = EthernetFrame::new_unchecked(&mut *pkt);
    e.set_dst(&dmac);
    e.set_src(smac);
    Verdict::Tx(route.port)
}

/// The stages of this build of sluice, in order.
/// The stages' per-worker state.
#[derive(Default)]
pub struct Pipeline {
    pub lb: crate::lb::LbState,
    pub encap: crate::overlay::EncapState,
    /// Allowed flows of the policy stage (their replies pass).
    pub policy: crate::policy_stage::PolicyState,
    /// This worker's end of the hand-off to the other workers (none with one worker).
    pub handoff: Option<crate::handoff::HandoffPort>,
    /// Packets the stages generated in this batch (L7 403 answers and resets).
    pub outbox: crate::l7::Outbox,
    /// The appliance's capture point (`sluice capture`), shared by the workers.
    pub tap: Option<std::sync::Arc<crate::capture::CaptureTap>>,
    /// Egress rate limits of pods (bandwidth manager).
    pub bandwidth: crate::bandwidth::BandwidthState,
    /// Time-exceeded errors sent in the current second.
    pub icmp: IcmpBudget,
}

/// Time-exceeded errors a worker sends a second at most, as Linux's `icmp_msgs_per_sec`
/// (1000): traceroute needs a few, and a flood of TTL-1 packets must not become a flood of
/// errors. Beyond it the packets are dropped (TTL_EXCEEDED) as they were before.
pub const ICMP_PER_SECOND: u32 = 1000;

/// The per-worker budget of generated ICMP errors: a count per CLOCK_MONOTONIC second.
#[derive(Debug, Default)]
pub struct IcmpBudget {
    second: u32,
    sent: u32,
}

impl IcmpBudget {
    /// Takes one error from this second's budget (reads the clock: call only for an error).
    fn take(&mut self) -> bool {
        self.take_at(crate::lb::slots::clock_secs())
    }

    fn take_at(&mut self, now: u32) -> bool {
        if now != self.second {
            (self.second, self.sent) = (now, 0);
        }
        self.sent += 1;
        self.sent <= ICMP_PER_SECOND
    }
}

impl Pipeline {
    /// With small conntrack tables (tests, replay, benches).
    pub fn new() -> Self {
        Pipeline::default()
    }

    /// With the worker's share of the appliance's conntrack.
    pub fn with_lb(lb: crate::lb::LbState) -> Self {
        Pipeline {
            lb,
            encap: Default::default(),
            policy: Default::default(),
            handoff: None,
            outbox: Default::default(),
            tap: None,
            bandwidth: Default::default(),
            icmp: Default::default(),
        }
    }

    /// Runs every stage over the batch: decapsulation, service load balancing (with the policy
    /// of service traffic), network policy for the rest, encapsulation (or native routing)
    /// toward remote pods, then routing. Frames whose bytes are not addressable in `region` (a corrupt
    /// descriptor) are dropped as malformed.
    pub fn run(
        &mut self,
        snap: &Snapshot,
        region: &mut Region,
        batch: &mut Batch,
        stats: &crate::stats::WorkerStats,
        neigh: &mut impl NeighborRequests,
    ) {
        crate::overlay::decap(snap, region, batch, stats);
        crate::lb::service(snap, region, batch, stats, &mut self.lb, &mut self.outbox);
        crate::policy_stage::enforce(
            snap,
            region,
            batch,
            stats,
            &mut self.policy,
            &mut self.outbox,
        );
        crate::overlay::encap(snap, region, batch, stats, neigh, &mut self.encap);
        Self::route(snap, region, batch, neigh);
        self.time_exceeded(snap, region, batch, stats);
        crate::bandwidth::pace(snap, region, batch, &mut self.bandwidth);
    }

    /// The packets whose TTL ran out (route or encapsulation) answered with ICMP time exceeded,
    /// within the budget.
    fn time_exceeded(
        &mut self,
        snap: &Snapshot,
        region: &mut Region,
        batch: &mut Batch,
        stats: &crate::stats::WorkerStats,
    ) {
        for i in 0..batch.len() {
            if batch.verdict(i) != Verdict::Drop(DropReason::TtlExceeded) || !self.icmp.take() {
                continue;
            }
            let mut f = batch.frame(i);
            // still a drop, with its flow event, though answered
            let event = self.outbox.events.on().then(|| {
                crate::worker::drop_event(
                    region.data(&f),
                    DropReason::TtlExceeded,
                    f.port,
                    batch.meta(i),
                )
            });
            let v = crate::overlay::time_exceeded(snap, region, &mut f, stats);
            *batch.frame_mut(i) = f;
            batch.set_verdict(i, v);
            if let (Verdict::Tx(_), Some(e)) = (v, event) {
                self.outbox.events.emit(e);
            }
        }
    }

    /// The route stage alone: for the packets the stages generated, which are final already.
    pub fn route(
        snap: &Snapshot,
        region: &mut Region,
        batch: &mut Batch,
        neigh: &mut impl NeighborRequests,
    ) {
        for i in 0..batch.len() {
            if batch.verdict(i) != Verdict::Continue {
                continue;
            }
            let f = batch.frame(i);
            let v = match region.data_mut(&f) {
                Some(pkt) => route_one(snap, pkt, neigh),
                None => Verdict::Drop(DropReason::Malformed),
            };
            batch.set_verdict(i, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_icmp_budget_is_per_second() {
        let mut b = IcmpBudget::default();
        let sent = (0..ICMP_PER_SECOND + 5).filter(|_| b.take_at(7)).count();
        assert_eq!(sent, ICMP_PER_SECOND as usize);
        assert!(b.take_at(8), "a new second, a new budget");
    }
}
