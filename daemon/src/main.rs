//! `sluiced`: the appliance daemon. Glues the XDP steering program, the AF_XDP workers and the
//! control plane's config together.

mod netdev;
mod netlink;
mod status;

use anyhow::{bail, Context, Result};
use clap::Parser;
use crossbeam_queue::ArrayQueue;
use sluice_control::config::{CheckedSteer, Config, PollModeCfg, XdpModeCfg, ZeroCopyCfg};
use sluice_dataplane::io::afxdp::{AfXdpConfig, AfXdpIo, ZeroCopy};
use sluice_dataplane::pipeline::{NeighborRequests, Pipeline};
use sluice_dataplane::state::HashMap;
use sluice_dataplane::state::{PortInfo, Publisher, Route, RouteTable, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::worker::{PollMode, Worker};
use sluice_xdp::{OwnedKey, Steering, XdpMode};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "sluiced",
    version,
    about = "sluice AF_XDP datapath appliance daemon"
)]
struct Args {
    /// Appliance config (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE and exit: 0 if good, 2 with the bad field named if not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Where to write the counters as JSON (default: <runtime_dir>/stats.json).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
}

/// How often the control loop reconciles neighbours and drains resolution requests: short enough
/// that a first packet to a new next hop is retried successfully within a TCP SYN retransmit.
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// Pending next-hop resolution requests per worker; more in one tick are dropped (and retried by
/// the next packet to the same next hop).
const NEIGH_QUEUE: usize = 256;
/// How long start-up waits for the known next hops to resolve before serving anyway: ARP/ND on
/// a LAN answers in well under a millisecond; a host that is down must not block the appliance.
const STARTUP_RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// Unresolved known next hops are asked for again this often (the kernel gives up on a managed
/// entry after its probes fail, until asked again).
const RERESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Worker side of neighbour resolution: a bounded lock-free queue to the control loop.
struct NeighQueue(Arc<ArrayQueue<(u16, IpAddr)>>);

impl NeighborRequests for NeighQueue {
    fn request(&mut self, port: u16, ip: IpAddr) {
        // full: the control loop is behind; the next miss asks again
        let _ = self.0.push((port, ip));
    }
}

fn main() {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        match Config::load(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("sluiced: config error: {e}");
                std::process::exit(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let Some(path) = &args.config else {
        eprintln!("sluiced: --config FILE is required (or --check-config FILE)");
        std::process::exit(2);
    };
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluiced: config error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg, args.stats_file) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(cfg: Config, stats_file: Option<PathBuf>) -> Result<()> {
    if cfg.interfaces.is_empty() {
        bail!("config has no [[interface]]: nothing to serve");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    // Interfaces: index and MAC.
    let ifnames: Vec<String> = cfg.interfaces.iter().map(|i| i.name.clone()).collect();
    let mut ports = Vec::new();
    let mut ifindex_to_port = HashMap::new();
    for (p, name) in ifnames.iter().enumerate() {
        let idx = sluice_xdp::ifindex_of(name).with_context(|| format!("interface {name:?}"))?;
        let mac = netdev::mac_of(name).with_context(|| format!("reading the MAC of {name:?}"))?;
        ifindex_to_port.insert(idx, p as u16);
        ports.push(PortInfo {
            name: name.clone(),
            mac,
        });
    }
    let routes: Vec<Route> = cfg.checked_routes()?;
    let base = Snapshot {
        generation: 0,
        ports,
        routes: RouteTable::new(routes),
        neighbors: HashMap::new(),
    };
    let publisher = Publisher::new(base.clone());
    let steer = cfg.checked_steer()?;
    let port_ifindex: HashMap<u16, u32> = ifindex_to_port.iter().map(|(i, p)| (*p, *i)).collect();

    // Resolve up front the next hops we know we will need (gateways, and the owned hosts on
    // connected routes), so the first packets of a flow do not meet an empty neighbour table.
    let wanted = wanted_next_hops(&base, &steer);
    for (port, ip) in &wanted {
        request_resolution(&port_ifindex, *port, *ip);
    }
    let mut neighbors = read_neighbors(&ifindex_to_port);
    let deadline = Instant::now() + STARTUP_RESOLVE_WAIT;
    while wanted.iter().any(|k| !neighbors.contains_key(k)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        neighbors = read_neighbors(&ifindex_to_port);
    }
    for k in wanted.iter().filter(|k| !neighbors.contains_key(*k)) {
        tracing::warn!(next_hop = %k.1, port = k.0, "next hop not resolved yet; packets to it drop as NEIGHBOR_UNRESOLVED until it is");
    }
    publisher.publish(Snapshot {
        neighbors: neighbors.clone(),
        ..base.clone()
    });

    // XDP steering on every interface.
    let mut steering = Steering::new();
    let mode = match cfg.dataplane.xdp_mode {
        XdpModeCfg::Native => XdpMode::Native,
        XdpModeCfg::Generic => XdpMode::Generic,
    };
    for name in &ifnames {
        let m = steering.attach(name, mode, cfg.dataplane.xdp_fallback_generic)?;
        tracing::info!(interface = %name, mode = m.as_str(), "XDP steering program attached");
    }
    for s in &steer {
        steering.own(&OwnedKey::service(s.ip, s.proto, s.port))?;
    }

    // One worker per queue, each with a socket on every interface.
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
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    let mut neigh_queues = Vec::new();
    let mut zero_copy = Vec::new();
    for q in 0..cfg.dataplane.queues {
        let io = AfXdpIo::open(&ifnames, q, &xsk_cfg)?;
        zero_copy.push(io.is_zero_copy());
        for (ifname, fd) in io.socket_fds() {
            steering.register_socket(&ifname, q, fd)?;
        }
        let stats = Arc::new(WorkerStats::default());
        let nq = Arc::new(ArrayQueue::new(NEIGH_QUEUE));
        neigh_queues.push(nq.clone());
        all_stats.push(stats.clone());
        let core = match cfg.dataplane.cores.get(q as usize) {
            Some(c) => cores.iter().find(|id| id.id == *c).copied(),
            None if cores.is_empty() => None,
            None => Some(cores[q as usize % cores.len()]),
        };
        if core.is_none() {
            tracing::warn!(queue = q, "requested core not available; worker not pinned");
        }
        let worker = Worker {
            io,
            pipeline: Pipeline::new(),
            publisher: publisher.clone(),
            stats,
            neigh: NeighQueue(nq),
            batch_size: cfg.dataplane.batch_size,
            poll_mode: match cfg.dataplane.poll_mode {
                PollModeCfg::Busy => PollMode::Busy,
                PollModeCfg::Adaptive => PollMode::Adaptive,
            },
        };
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
        tracing::info!(queue = q, core = ?core.map(|c| c.id), zero_copy = zero_copy[q as usize], "worker started");
        handles.push(h);
    }

    let stats_path = stats_file.unwrap_or_else(|| cfg.appliance.runtime_dir.join("stats.json"));
    if let Some(dir) = stats_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let reporter = status::Reporter {
        appliance: cfg.appliance.name.clone(),
        started: Instant::now(),
        zero_copy,
    };
    tracing::info!(
        appliance = %cfg.appliance.name,
        stats = %stats_path.display(),
        "sluiced ready: {} interface(s), {} worker(s)",
        ifnames.len(),
        cfg.dataplane.queues
    );

    // Control loop: neighbour reconciliation and the stats file.
    let stats_every = Duration::from_millis(cfg.appliance.stats_interval_ms);
    let mut last_stats = Instant::now() - stats_every;
    let mut last_rerequest = Instant::now();
    let mut exit_error = None;
    while !stop.load(Ordering::Relaxed) {
        // An interface that vanished (deleted, or its namespace torn down) cannot come back
        // under us: stop and exit non-zero so a supervisor restarts us on the new state.
        if let Some((name, _)) = ifindex_to_port.iter().find_map(|(idx, p)| {
            let name = &ifnames[usize::from(*p)];
            (sluice_xdp::ifindex_of(name).ok() != Some(*idx)).then_some((name.clone(), *idx))
        }) {
            exit_error = Some(anyhow::anyhow!("interface {name:?} disappeared; stopping"));
            break;
        }
        for nq in &neigh_queues {
            while let Some((port, ip)) = nq.pop() {
                request_resolution(&port_ifindex, port, ip);
            }
        }
        if last_rerequest.elapsed() >= RERESOLVE_EVERY {
            last_rerequest = Instant::now();
            for (port, ip) in wanted.iter().filter(|k| !neighbors.contains_key(*k)) {
                request_resolution(&port_ifindex, *port, *ip);
            }
        }
        let fresh = read_neighbors(&ifindex_to_port);
        if fresh != neighbors {
            neighbors = fresh;
            let g = publisher.publish(Snapshot {
                neighbors: neighbors.clone(),
                ..base.clone()
            });
            tracing::debug!(
                generation = g,
                neighbors = neighbors.len(),
                "neighbour table changed"
            );
        }
        if last_stats.elapsed() >= stats_every {
            last_stats = Instant::now();
            if let Err(e) = reporter.write(&stats_path, &publisher, &steering, &all_stats) {
                tracing::warn!("writing {}: {e:#}", stats_path.display());
            }
        }
        std::thread::sleep(CONTROL_TICK);
    }

    tracing::info!("stopping: workers first, then XDP (the kernel path takes over)");
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    reporter.write(&stats_path, &publisher, &steering, &all_stats)?;
    steering.detach_all();
    match exit_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Next hops the appliance will need: every route gateway, and for each owned address the next
/// hop its route gives (the address itself on a connected route).
fn wanted_next_hops(snap: &Snapshot, steer: &[CheckedSteer]) -> Vec<(u16, IpAddr)> {
    let mut out: Vec<(u16, IpAddr)> = snap
        .routes
        .routes()
        .iter()
        .filter_map(|r| r.via.filter(|_| r.mac.is_none()).map(|v| (r.port, v)))
        .collect();
    for s in steer {
        if let Some(r) = snap.routes.lookup(s.ip) {
            if r.mac.is_none() {
                out.push((r.port, r.via.unwrap_or(s.ip)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn request_resolution(port_ifindex: &HashMap<u16, u32>, port: u16, ip: IpAddr) {
    if let Some(ifindex) = port_ifindex.get(&port) {
        if let Err(e) = netlink::request_resolution(*ifindex, ip) {
            tracing::warn!(%ip, port, "neighbour resolution request failed: {e}");
        }
    }
}

fn read_neighbors(ifindex_to_port: &HashMap<u32, u16>) -> HashMap<(u16, IpAddr), [u8; 6]> {
    match netlink::dump_neighbors() {
        Ok(list) => list
            .into_iter()
            .filter_map(|n| ifindex_to_port.get(&n.ifindex).map(|p| ((*p, n.ip), n.mac)))
            .collect(),
        Err(e) => {
            tracing::warn!("reading the neighbour table: {e}");
            HashMap::new()
        }
    }
}
