//! Service load balancing, as Cilium's kube-proxy replacement and Katran do it: a packet to a
//! service frontend (ClusterIP, NodePort, LoadBalancer, externalIP) starts a tracked connection
//! to a backend picked from the service's Maglev table; the connection is translated both ways
//! (DNAT to the backend, SNAT to the appliance so replies come back through it) until it closes,
//! whatever happens to the service's backends meanwhile.
//!
//! Precedence, for TCP/UDP packets that are not fragments, addressed to a frontend or to the SNAT
//! address (everything else is untouched):
//!   1. tracked connection, original direction -> source/destination rewritten to (SNAT, backend),
//!      or, in DSR mode, tunnelled to the backend unchanged (dsr.rs)
//!   2. tracked connection, reply direction    -> rewritten back to (frontend, client)
//!   3. untracked reply to another worker's SNAT ports -> Handoff(that worker): it runs the
//!      packet through its own pipeline (conntrack is per worker; see handoff.rs)
//!   4. not a frontend                         -> untouched (routed as is)
//!   5. frontend without a backend for new connections -> Drop(SERVICE_BACKEND_NOT_FOUND)
//!   6. no SNAT address of the packet's family -> Drop(NAT_NO_MAPPING)
//!   7. no free SNAT port toward the backend   -> Drop(SNAT_PORTS_EXHAUSTED)
//!   8. conntrack full, nothing evictable      -> Drop(CT_MAP_INSERTION_FAILED)
//!   9. otherwise a new connection: tracked, translated (DSR: tracked, tunnelled)
//!
//! For a frontend without backends sluice drops (with Cilium's reason) rather than answering a
//! TCP RST: the drop is what Cilium does by default, and it is visible in the counters and flows.

pub mod affinity;
pub mod conntrack;
pub mod dsr;
mod icmp;
mod index;
pub mod maglev;
mod nat;
pub mod slots;
mod stage;

pub use stage::service;

use crate::l7::inspect::Conns;
use crate::wire::tcp;
use affinity::Affinity;
use conntrack::{Addr, Dir, Table, Timeouts, Tuple};
use slots::{clock_secs, Adoption, PersistAt, PlainBits};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The appliance's load-balancing settings (config `[lb]`), part of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// Source address connections to backends get (SNAT mode), per family.
    pub snat_v4: Option<Ipv4Addr>,
    pub snat_v6: Option<Ipv6Addr>,
    /// SNAT source ports, inclusive; split evenly between the workers.
    pub snat_ports: (u16, u16),
    /// Flow hash seed (the same as the Maglev seed: appliances behind ECMP must agree).
    pub seed: u64,
    /// How new connections reach their backend.
    pub mode: LbMode,
    /// How DSR packets are carried to the backend.
    pub dispatch: Dispatch,
    /// The largest IP packet the path to the backends carries: a DSR packet that would exceed
    /// it once encapsulated is answered with ICMP fragmentation-needed / packet-too-big.
    pub dsr_mtu: u16,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            snat_v4: None,
            snat_v6: None,
            snat_ports: DEFAULT_SNAT_PORTS,
            seed: 0,
            mode: LbMode::Snat,
            dispatch: Dispatch::Ipip,
            dsr_mtu: 1500,
        }
    }
}

/// Forwarding modes, as Cilium's `--bpf-lb-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbMode {
    /// The client is masqueraded to the appliance: replies come back through it.
    #[default]
    Snat,
    /// Direct server return: the client's packets are tunnelled to the backend unchanged and the
    /// backend answers the client from the frontend address itself.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

/// DSR dispatch, as Cilium's `--bpf-lb-dsr-dispatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// IPv4-in-IPv4 (protocol 4) / IPv6-in-IPv6 (next header 41).
    Ipip,
    /// Geneve over UDP to this port, the inner IP packet without Ethernet (protocol type
    /// 0x0800/0x86DD), VNI the world identity.
    Geneve { port: u16 },
}

/// Above the kernel's default ephemeral range (32768-60999), so the appliance's own outgoing
/// connections from the same address never collide with SNAT ports.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);

/// Conntrack bounds for the whole appliance; each worker gets its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtLimits {
    pub tcp_max: usize,
    pub other_max: usize,
    pub timeouts: Timeouts,
}

impl Default for CtLimits {
    /// Cilium's defaults (bpf-ct-global-tcp-max, bpf-ct-global-any-max).
    fn default() -> Self {
        CtLimits {
            tcp_max: 524_288,
            other_max: 262_144,
            timeouts: Timeouts::default(),
        }
    }
}

/// How many slots one GC step examines per table per batch: a few hundred ns of work, and at
/// ~10k batches/s a 256k-entry table is swept in a few seconds.
const GC_BUDGET: usize = 32;

/// One family's tables.
struct Family<A> {
    tcp: Table<A>,
    other: Table<A>,
    affinity: Affinity<A>,
    /// L7 state of the TCP connections HTTP rules apply to.
    l7: Conns<A>,
}

/// A family's table sizes for one worker: (TCP, other).
fn shares(l: &CtLimits, share: usize) -> (usize, usize) {
    ((l.tcp_max / share).max(1), (l.other_max / share).max(1))
}

impl<A: Addr> Family<A> {
    fn new(l: &CtLimits, share: usize) -> Self {
        let (tcp, other) = shares(l, share);
        Self::of(
            Table::new(tcp, l.timeouts),
            Table::new(other, l.timeouts),
            l,
            share,
        )
    }

    /// With tables in files under `dir` (`name`: the family), adopting what they hold.
    fn persistent(
        l: &CtLimits,
        share: usize,
        at: (&Path, &str, u16),
        now: u32,
        report: &mut Vec<Adoption>,
    ) -> std::io::Result<Self>
    where
        A: PlainBits,
    {
        let (dir, name, worker) = at;
        let (tcp_max, other_max) = shares(l, share);
        let mut table = |kind: &str, max: usize| {
            let at = PersistAt {
                path: dir.join(format!("lb-{name}-{kind}-w{worker}.ct")),
                worker,
                workers: share as u16,
            };
            let (t, r) = Table::persistent(max, l.timeouts, &at, now)?;
            report.push(r);
            Ok::<_, std::io::Error>(t)
        };
        let tcp = table("tcp", tcp_max)?;
        let other = table("other", other_max)?;
        let mut f = Self::of(tcp, other, l, share);
        // adopted TCP connections are looked at again by the L7 step (rules may apply to them)
        f.l7.mark_adopted(&f.tcp);
        Ok(f)
    }

    fn of(tcp: Table<A>, other: Table<A>, l: &CtLimits, share: usize) -> Self {
        Family {
            l7: Conns::new(tcp.capacity()),
            tcp,
            other,
            // room for one client with affinity per 32 tracked TCP connections: 32 sets for the
            // small test tables, the maximum (4,096) with Cilium's default bound
            affinity: Affinity::new(l.tcp_max / share / 32 / 4),
        }
    }

    fn table_of(&self, t: &Tuple<A>) -> &Table<A> {
        if t.proto == tcp::PROTOCOL {
            &self.tcp
        } else {
            &self.other
        }
    }

    /// `t`'s hash, its index bucket prefetched (second pass of the stage).
    #[inline]
    fn hash(&self, t: &Tuple<A>) -> u64 {
        let tb = self.table_of(t);
        let h = tb.hash(t);
        tb.prefetch_bucket(h);
        h
    }

    /// The likely connection of `t`, its entry prefetched (third pass): the index's first
    /// match of the hash, not yet compared with the tuple (that would wait for the entry here,
    /// packet after packet); the last pass compares it (`Table::holds`).
    #[inline]
    fn probe(&self, h: u64, t: &Tuple<A>) -> Option<(u32, Dir)> {
        let tb = self.table_of(t);
        let hit = tb.candidate(h);
        if let Some((slot, _)) = hit {
            tb.prefetch(slot);
        }
        hit
    }
}

/// A worker's load-balancing state: its conntrack tables, its share of the SNAT ports, its clock.
pub struct LbState {
    v4: Family<u32>,
    v6: Family<[u8; 16]>,
    ctx: Ctx,
}

/// Everything of the worker's LB state but the tables.
struct Ctx {
    worker: u16,
    workers: u16,
    /// Added to the clock (tests: expiry without waiting).
    skew: u32,
    /// CLOCK_MONOTONIC seconds (slots.rs): system-wide, so adopted tables keep their expiry.
    now: u32,
    rng: u64,
    /// Per backend (by a hash of its address and port, 64 ways): the new connections in a row
    /// that found no free SNAT port toward it (stage.rs, `SCARCE_AFTER`).
    pressure: [u8; PRESSURE_WAYS],
}

/// Backends whose SNAT port pressure is followed apart; two sharing a way share the count
/// (64 bytes: one cache line per worker).
const PRESSURE_WAYS: usize = 64;

impl Ctx {
    fn new(worker: u16, workers: u16) -> Self {
        Ctx {
            worker,
            workers: workers.max(1),
            skew: 0,
            now: clock_secs(),
            rng: 0x853c_49e6_748f_ea9b ^ u64::from(worker),
            pressure: [0; PRESSURE_WAYS],
        }
    }

    /// The SNAT port pressure count of the backend at `addr` (folded) and `port`.
    fn port_pressure(&mut self, addr: u64, port: u16) -> &mut u8 {
        let h = (addr ^ (u64::from(port) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &mut self.pressure[(h >> 58) as usize]
    }

    /// This worker's SNAT ports: (first, count).
    fn port_range(&self, all: (u16, u16)) -> (u32, u32) {
        let (lo, hi) = (u32::from(all.0), u32::from(all.1.max(all.0)));
        let span = (hi - lo + 1) / u32::from(self.workers);
        let start = lo + span * u32::from(self.worker);
        (start, span.max(1))
    }

    /// The worker whose share of the SNAT ports holds `port`, when it is another one than this:
    /// a reply to a connection that worker tracks.
    fn other_owner(&self, all: (u16, u16), port: u16) -> Option<u16> {
        let (lo, hi) = (u32::from(all.0), u32::from(all.1.max(all.0)));
        let span = ((hi - lo + 1) / u32::from(self.workers)).max(1);
        let p = u32::from(port);
        if self.workers < 2 || p < lo || p > hi {
            return None;
        }
        let owner = (p - lo) / span;
        (owner < u32::from(self.workers) && owner != u32::from(self.worker)).then_some(owner as u16)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: per worker, no shared state
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Default for LbState {
    /// Small tables for tests, replay and benches (the daemon sizes from the config).
    fn default() -> Self {
        let limits = CtLimits {
            tcp_max: 4096,
            other_max: 4096,
            timeouts: Timeouts::default(),
        };
        LbState::new(&limits, 0, 1)
    }
}

impl LbState {
    /// Worker `worker` of `workers`: its share of the limits and of the SNAT port range.
    pub fn new(limits: &CtLimits, worker: u16, workers: u16) -> Self {
        let share = usize::from(workers.max(1));
        LbState {
            v4: Family::new(limits, share),
            v6: Family::new(limits, share),
            ctx: Ctx::new(worker, workers),
        }
    }

    /// As `new`, with the tables in files under `dir` that outlive the process: the
    /// connections an earlier sluiced left there (this worker's, of the same worker count and
    /// layout) are taken over, and each file's report says what was found.
    pub fn persistent(
        limits: &CtLimits,
        worker: u16,
        workers: u16,
        dir: &Path,
    ) -> std::io::Result<(Self, Vec<Adoption>)> {
        let share = usize::from(workers.max(1));
        let ctx = Ctx::new(worker, workers);
        let mut report = Vec::new();
        let v4 = Family::persistent(limits, share, (dir, "v4", worker), ctx.now, &mut report)?;
        let v6 = Family::persistent(limits, share, (dir, "v6", worker), ctx.now, &mut report)?;
        Ok((LbState { v4, v6, ctx }, report))
    }

    /// Tracked connections (all tables).
    pub fn connections(&self) -> usize {
        self.v4.tcp.len() + self.v4.other.len() + self.v6.tcp.len() + self.v6.other.len()
    }

    /// Advances the clock (seconds; once per batch) and runs a GC step on every table: the
    /// entries freed.
    pub fn tick(&mut self) -> usize {
        self.ctx.now = clock_secs().wrapping_add(self.ctx.skew);
        self.gc(GC_BUDGET)
    }

    /// Embryonic connections evicted so far to admit new ones (tables full).
    pub fn evicted(&self) -> u64 {
        self.v4.tcp.evicted + self.v4.other.evicted + self.v6.tcp.evicted + self.v6.other.evicted
    }

    /// Connections holding a SNAT source port.
    pub fn snat_connections(&self) -> usize {
        self.v4.tcp.translated_len()
            + self.v4.other.translated_len()
            + self.v6.tcp.translated_len()
            + self.v6.other.translated_len()
    }

    /// Connections the tables can hold (all of them).
    pub fn capacity(&self) -> usize {
        self.v4.tcp.capacity()
            + self.v4.other.capacity()
            + self.v6.tcp.capacity()
            + self.v6.other.capacity()
    }

    /// Moves the clock on by `secs` (tests: expiry without waiting).
    pub fn advance_clock(&mut self, secs: u32) {
        self.ctx.skew = self.ctx.skew.wrapping_add(secs);
    }

    fn gc(&mut self, budget: usize) -> usize {
        let now = self.ctx.now;
        self.v4.tcp.gc_step(now, budget)
            + self.v4.other.gc_step(now, budget)
            + self.v6.tcp.gc_step(now, budget)
            + self.v6.other.gc_step(now, budget)
    }
}
