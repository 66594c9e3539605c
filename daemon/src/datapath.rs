//! The datapath side of sluiced: interfaces, XDP steering, one AF_XDP worker per queue.

use crate::neighbors::Neighbors;
use anyhow::{Context, Result};
use sluice_control::config::{CheckedSteer, Config, PollModeCfg, XdpModeCfg, ZeroCopyCfg};
use sluice_dataplane::bandwidth::BandwidthState;
use sluice_dataplane::capture::CaptureTap;
use sluice_dataplane::flow::{EventSink, FlowRing};
use sluice_dataplane::handoff::Handoff;
use sluice_dataplane::io::afxdp::{AfXdpConfig, AfXdpIo, ZeroCopy};
use sluice_dataplane::lb::LbState;
use sluice_dataplane::pipeline::Pipeline;
use sluice_dataplane::policy_stage::PolicyState;
use sluice_dataplane::state::{ClusterTables, Frontend, HashMap, OverlayMode, PortInfo, StateHub};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::{tcp, udp};
use sluice_dataplane::worker::{PollMode, Worker};
use sluice_xdp::{OwnedKey, Steering, XdpMode};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The interfaces as the snapshot sees them, and ifindex -> port.
pub fn probe_interfaces(cfg: &Config) -> Result<(Vec<PortInfo>, HashMap<u32, u16>)> {
    let mut ports = Vec::new();
    let mut ifindex_to_port = HashMap::new();
    for (p, itf) in cfg.interfaces.iter().enumerate() {
        let name = &itf.name;
        let idx = sluice_xdp::ifindex_of(name).with_context(|| format!("interface {name:?}"))?;
        let mac =
            crate::netdev::mac_of(name).with_context(|| format!("reading the MAC of {name:?}"))?;
        ifindex_to_port.insert(idx, p as u16);
        ports.push(PortInfo {
            name: name.clone(),
            mac,
        });
    }
    Ok((ports, ifindex_to_port))
}

pub struct Datapath {
    pub steering: Steering,
    pub workers: Vec<std::thread::JoinHandle<()>>,
    pub stats: Vec<Arc<WorkerStats>>,
    /// Each worker's flow event ring, drained by the flow collector.
    pub flow_rings: Vec<Arc<FlowRing>>,
    pub zero_copy: Vec<bool>,
    /// The cluster tables the steering below was derived from.
    cluster_seen: Option<Arc<ClusterTables>>,
    /// Remote pod CIDRs currently steered (the XDP prefix map).
    pod_cidrs: HashSet<(IpAddr, u8)>,
    overlay_on: bool,
    /// Service frontends currently steered.
    frontends: hashbrown::HashSet<Frontend>,
    /// Queues served (held while sluiced restarts).
    pub queues: u32,
    /// The restart hold (zero: none; the programs go with the process).
    pub hold: Duration,
    /// Locks the conntrack directory: one sluiced adopts and writes those tables at a time.
    _ct_lock: Option<std::fs::File>,
}

impl Datapath {
    /// Makes the XDP steering follow the cluster state: remote nodes' pod CIDRs and service
    /// frontends. Cheap when nothing changed (a pointer compare).
    pub fn sync_cluster(&mut self, cluster: &Arc<ClusterTables>) {
        if self
            .cluster_seen
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, cluster))
        {
            return;
        }
        self.cluster_seen = Some(cluster.clone());
        if self.overlay_on {
            self.sync_pod_cidrs(cluster);
        }
        self.sync_frontends(cluster);
    }

    /// Steers the pod CIDRs of remote nodes (traffic to them is encapsulated or natively routed),
    /// following the cluster's Node objects.
    fn sync_pod_cidrs(&mut self, cluster: &ClusterTables) {
        let wanted: HashSet<(IpAddr, u8)> = cluster
            .nodes
            .iter()
            .filter(|n| !n.addrs.is_empty())
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .filter(|(a, _)| cluster.pod_cidrs.lookup(*a).is_some())
            .collect();
        for (a, l) in self.pod_cidrs.difference(&wanted) {
            if let Err(e) = self.steering.disown_prefix(*a, *l) {
                tracing::warn!("unsteering pod CIDR {a}/{l}: {e}");
            }
        }
        for (a, l) in wanted.difference(&self.pod_cidrs) {
            if let Err(e) = self.steering.own_prefix(*a, *l) {
                tracing::warn!("steering pod CIDR {a}/{l}: {e}");
            }
        }
        tracing::info!(pod_cidrs = wanted.len(), "remote pod CIDRs steered");
        self.pod_cidrs = wanted;
    }

    /// Steers exactly the service frontends (address, protocol, port) into the workers, following
    /// the cluster's Services: other traffic to those addresses stays with the kernel.
    fn sync_frontends(&mut self, cluster: &ClusterTables) {
        // A lookup per frontend each way, against the map the snapshot already has: with 10,000
        // services, building and comparing a set of the wanted frontends took ~1-2 ms of every
        // change and delayed its ?wait=true answer.
        let gone: Vec<Frontend> = self
            .frontends
            .iter()
            .filter(|f| !cluster.services.contains_key(*f))
            .copied()
            .collect();
        for f in &gone {
            self.frontends.remove(f);
            if let Err(e) = self
                .steering
                .disown(&OwnedKey::service(f.addr, f.proto, f.port))
            {
                tracing::warn!("unsteering frontend {}:{}/{}: {e}", f.addr, f.port, f.proto);
            }
        }
        let mut came = 0;
        for f in cluster.services.keys() {
            if self.frontends.contains(f) {
                continue;
            }
            match self
                .steering
                .own(&OwnedKey::service(f.addr, f.proto, f.port))
            {
                Ok(()) => {
                    self.frontends.insert(*f);
                    came += 1;
                }
                // a full steering map: the frontend is served by the kernel path (counted in
                // the log; the next change retries)
                Err(e) => {
                    tracing::warn!("steering frontend {}:{}/{}: {e}", f.addr, f.port, f.proto)
                }
            }
        }
        if came + gone.len() > 0 {
            tracing::info!(
                frontends = self.frontends.len(),
                "service frontends steered"
            );
        }
    }

    /// Renews the restart hold (a heartbeat: should sluiced die, its programs hold the queues
    /// for `hold` after the last renewal, then the kernel takes over).
    pub fn renew_hold(&self) {
        if self.hold.is_zero() {
            return;
        }
        if let Err(e) = self.steering.hold(self.queues, self.hold) {
            tracing::warn!("renewing the restart hold: {e}");
        }
    }

    /// At stop, the workers joined: with a restart hold, the programs stay attached and hold
    /// the owned traffic for the next sluiced; without, they are detached now.
    pub fn stop(&mut self) {
        if self.hold.is_zero() {
            self.steering.detach_all();
            tracing::info!("XDP detached: the kernel path takes over");
            return;
        }
        self.renew_hold();
        self.steering.release();
        tracing::info!(
            hold_ms = self.hold.as_millis() as u64,
            "XDP left attached, holding owned traffic for a restart; after the hold the kernel path takes over"
        );
    }
}

/// Takes the conntrack directory for this process (created if missing): an exclusive lock, so
/// two sluiced never adopt and write the same tables.
fn lock_conntrack_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lock");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on an fd we own; LOCK_NB makes it fail instead of waiting.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        anyhow::bail!(
            "{} is locked: another sluiced uses this runtime directory ({})",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// Logs what adopting the conntrack table files found; the connections taken over.
fn log_adoption(reports: &[sluice_dataplane::lb::slots::Adoption]) -> usize {
    let mut total = 0;
    for r in reports {
        if let Some(why) = &r.discarded {
            tracing::warn!(file = %r.path.display(), "conntrack table set aside, its connections are not taken over: {why}");
        }
        if r.adopted + r.expired + r.invalid + r.dropped > 0 {
            tracing::info!(
                file = %r.path.display(),
                adopted = r.adopted,
                expired = r.expired,
                invalid = r.invalid,
                no_room = r.dropped,
                unclean = r.unclean,
                "conntrack table adopted"
            );
        }
        total += r.adopted;
    }
    total
}

/// The cores this process could run on when it started: before `confine_housekeeping` narrowed
/// it, so that a datapath started again later (a reload) pins its workers as the first did.
fn all_cores() -> &'static [core_affinity::CoreId] {
    static ALL: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Worker q's core: `dataplane.cores[q]` if this process may run there, else the q-th of its
/// cores (round robin); none when the cores are unknown.
fn worker_core(cfg: &Config, q: u32) -> Option<core_affinity::CoreId> {
    let cores = all_cores();
    match cfg.dataplane.cores.get(q as usize) {
        Some(c) => cores.iter().find(|id| id.id == *c).copied(),
        None if cores.is_empty() => None,
        None => Some(cores[q as usize % cores.len()]),
    }
}

/// Moves the calling thread, and with it every thread it starts from now on (the control API,
/// flow export, neighbour and persistence threads), to the cores no worker is pinned to, when
/// there are any. A worker then has its core to itself: the scheduler no longer time-slices it
/// with those threads, or places them on its core when a worker's transmit wakes them, which
/// stalled packets for milliseconds in busy-poll mode. With a worker on every core, nothing
/// changes. Returns the workers' cores it kept the threads off (none if it changed nothing).
pub fn confine_housekeeping(cfg: &Config) -> Vec<usize> {
    let workers: HashSet<usize> = (0..cfg.dataplane.queues)
        .filter_map(|q| worker_core(cfg, q))
        .map(|c| c.id)
        .collect();
    let rest: Vec<usize> = all_cores()
        .iter()
        .map(|c| c.id)
        .filter(|id| !workers.contains(id))
        .collect();
    if workers.is_empty() || rest.is_empty() {
        tracing::info!("no core without a worker: the other threads share the workers' cores");
        return Vec::new();
    }
    match sluice_control::cores::pin(&rest) {
        Ok(()) => {
            tracing::info!(cores = ?rest, "threads other than the workers run on the cores without one");
            let mut workers: Vec<usize> = workers.into_iter().collect();
            workers.sort_unstable();
            workers
        }
        Err(error) => {
            tracing::warn!(%error, "could not keep the other threads off the workers' cores");
            Vec::new()
        }
    }
}

/// Attaches XDP everywhere, owns the configured traffic, starts the workers.
pub fn start(
    cfg: &Config,
    steer: &[CheckedSteer],
    hub: &StateHub,
    neighbors: &mut Neighbors,
    stop: &Arc<AtomicBool>,
    tap: &Arc<CaptureTap>,
) -> Result<Datapath> {
    let ifnames: Vec<String> = cfg.interfaces.iter().map(|i| i.name.clone()).collect();
    let mut steering = Steering::new();
    let mode = match cfg.dataplane.xdp_mode {
        XdpModeCfg::Native => XdpMode::Native,
        XdpModeCfg::Generic => XdpMode::Generic,
    };
    // Loaded first, attached last: the maps are filled (owned traffic, the hold) before the
    // programs replace an earlier sluiced's, so no owned packet meets a program that does not
    // know it.
    for name in &ifnames {
        steering.load(name)?;
    }
    let hold = Duration::from_millis(cfg.dataplane.restart_hold_ms);
    if !hold.is_zero() {
        steering.hold(cfg.dataplane.queues, hold)?;
    }
    let overlay = cfg.overlay()?;
    if matches!(overlay.mode, OverlayMode::Vxlan | OverlayMode::Geneve) {
        steering.own(&OwnedKey::udp_port_any_ip(overlay.port))?;
        tracing::info!(port = overlay.port, mode = ?overlay.mode, "tunnel port steered");
    }
    for s in steer {
        match s.prefix_len {
            Some(len) => steering.own_prefix(s.ip, len)?,
            None => steering.own(&OwnedKey::service(s.ip, s.proto, s.port))?,
        }
    }
    // replies to SNAT'd connections: exactly the SNAT ports of the SNAT addresses
    let lb = cfg.lb_settings()?;
    let snat: Vec<IpAddr> = [lb.snat_v4.map(IpAddr::V4), lb.snat_v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .collect();
    for a in &snat {
        for port in lb.snat_ports.0..=lb.snat_ports.1 {
            for proto in [tcp::PROTOCOL, udp::PROTOCOL] {
                steering
                    .own(&OwnedKey::service(*a, proto, port))
                    .with_context(|| format!("steering SNAT port {a}:{port}"))?;
            }
        }
        tracing::info!(address = %a, ports = ?lb.snat_ports, "SNAT replies steered");
    }
    let ct = cfg.ct_limits()?;
    let ct_dir = cfg.appliance.runtime_dir.join("conntrack");
    let ct_lock = if cfg.dataplane.persist_conntrack {
        Some(lock_conntrack_dir(&ct_dir)?)
    } else {
        None
    };

    let xsk_cfg = AfXdpConfig {
        frame_size: cfg.dataplane.frame_size,
        ring_size: cfg.dataplane.ring_size,
        headroom: 0,
        zero_copy: match cfg.dataplane.zero_copy {
            ZeroCopyCfg::Auto => ZeroCopy::Auto,
            ZeroCopyCfg::On => ZeroCopy::On,
            ZeroCopyCfg::Off => ZeroCopy::Off,
        },
    };
    let mut dp = Datapath {
        steering,
        workers: Vec::new(),
        stats: Vec::new(),
        flow_rings: Vec::new(),
        zero_copy: Vec::new(),
        pod_cidrs: HashSet::new(),
        cluster_seen: None,
        overlay_on: overlay.mode != OverlayMode::Off,
        frontends: hashbrown::HashSet::new(),
        queues: cfg.dataplane.queues,
        hold,
        _ct_lock: ct_lock,
    };
    // the services of the restored cluster state are steered before the programs attach
    dp.sync_cluster(&hub.current().cluster);
    dp.steering
        .attach_loaded(mode, cfg.dataplane.xdp_fallback_generic, !hold.is_zero())?;
    for name in &ifnames {
        let m = dp.steering.mode(name).map_or("?", XdpMode::as_str);
        tracing::info!(interface = %name, mode = m, outlives_process = !hold.is_zero(), "XDP steering program attached");
    }
    let mut adopted = 0;
    // replies that arrive on another queue than their connection's go to its worker
    let handoff = (cfg.dataplane.queues > 1).then(|| {
        Handoff::new(
            cfg.dataplane.queues as usize,
            cfg.dataplane.frame_size as usize,
        )
    });
    for q in 0..cfg.dataplane.queues {
        let mut io = AfXdpIo::open(&ifnames, q, &xsk_cfg)?;
        let flag = dp.steering.pressure_flag(q)?;
        io.set_overload_signal(Box::new(move |on| {
            // a failed update leaves the flag as it was: shedding continues or does not start,
            // and the ring's own overflow counters still say what happened
            let _ = flag.set(on);
        }));
        dp.zero_copy.push(io.is_zero_copy());
        for (ifname, fd) in io.socket_fds() {
            dp.steering.register_socket(&ifname, q, fd)?;
        }
        let stats = Arc::new(WorkerStats::default());
        dp.stats.push(stats.clone());
        let core = worker_core(cfg, q);
        if core.is_none() {
            tracing::warn!(queue = q, "requested core not available; worker not pinned");
        }
        let (w, workers) = (q as u16, cfg.dataplane.queues as u16);
        let (lb, policy) = if cfg.dataplane.persist_conntrack {
            let (lb, r) = LbState::persistent(&ct, w, workers, &ct_dir)
                .with_context(|| format!("conntrack tables in {}", ct_dir.display()))?;
            adopted += log_adoption(&r);
            // allowed flows of the policy stage: sized like the non-TCP conntrack bound
            let (policy, r) = PolicyState::persistent(
                ct.other_max / usize::from(workers.max(1)),
                ct.timeouts,
                &ct_dir,
                (w, workers),
            )
            .with_context(|| format!("policy flow tables in {}", ct_dir.display()))?;
            adopted += log_adoption(&r);
            (lb, policy)
        } else {
            let policy = PolicyState::new(ct.other_max / usize::from(workers.max(1)), ct.timeouts);
            (LbState::new(&ct, w, workers), policy)
        };
        let mut pipeline = Pipeline::with_lb(lb);
        pipeline.handoff = handoff.as_ref().map(|h| h.port(q as usize));
        stats.ct_capacity.set(pipeline.lb.capacity() as u64);
        pipeline.tap = Some(tap.clone());
        pipeline.bandwidth = BandwidthState::new(cfg.dataplane.queues as u16);
        let ring = Arc::new(FlowRing::new(sluice_dataplane::flow::RING));
        pipeline.outbox.events = EventSink::new(ring.clone());
        dp.flow_rings.push(ring);
        pipeline.policy = policy;
        let mut worker = Worker {
            io,
            pipeline,
            publisher: hub.publisher(),
            stats,
            neigh: neighbors.worker_queue(),
            batch_size: cfg.dataplane.batch_size,
            poll_mode: match cfg.dataplane.poll_mode {
                PollModeCfg::Busy => PollMode::Busy,
                PollModeCfg::Adaptive => PollMode::Adaptive,
            },
            waiter: None,
        };
        if let Some(waker) = worker
            .prepare()
            .context("setting up the worker's idle wait")?
        {
            if let Some(h) = &handoff {
                h.set_waker(q as usize, waker.clone());
            }
            hub.add_waker(waker);
        }
        let stop = stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("sluice-w{q}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(c) {
                        tracing::warn!(queue = q, core = c.id, "pinning failed");
                    }
                }
                if let Err(e) = worker.run(&stop) {
                    tracing::error!(queue = q, "worker failed: {e}");
                }
            })
            .context("spawning worker thread")?;
        tracing::info!(queue = q, core = ?core.map(|c| c.id), zero_copy = dp.zero_copy[q as usize], "worker started");
        dp.workers.push(h);
    }
    if cfg.dataplane.persist_conntrack {
        tracing::info!(connections = adopted, dir = %ct_dir.display(), "conntrack tables in files that outlive the process");
    }
    Ok(dp)
}
