//! `sluiced`: the appliance daemon. Glues the XDP steering program, the AF_XDP workers and the
//! control plane's config together.

mod datapath;
mod neighbors;
mod netdev;
mod netlink;
mod status;

use anyhow::{bail, Context, Result};
use clap::Parser;
use neighbors::Neighbors;
use sluice_control::config::Config;
use sluice_dataplane::state::{RouteTable, Snapshot, StateHub};
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

    let (ports, ifindex_to_port) = datapath::probe_interfaces(&cfg)?;
    let routes = RouteTable::new(cfg.checked_routes()?);
    let steer = cfg.checked_steer()?;
    let mut neighbors = Neighbors::start(ifindex_to_port.clone(), &routes, &steer);
    let hub = StateHub::new(Snapshot {
        ports: Arc::new(ports),
        routes: Arc::new(routes),
        ..Snapshot::default()
    });
    hub.set_neighbors(neighbors.table());

    let mut dp = datapath::start(&cfg, &steer, &hub, &mut neighbors, &stop)?;

    let stats_path = stats_file.unwrap_or_else(|| cfg.appliance.runtime_dir.join("stats.json"));
    if let Some(dir) = stats_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let reporter = status::Reporter {
        appliance: cfg.appliance.name.clone(),
        started: Instant::now(),
        zero_copy: dp.zero_copy.clone(),
    };
    tracing::info!(
        appliance = %cfg.appliance.name,
        stats = %stats_path.display(),
        "sluiced ready: {} interface(s), {} worker(s)",
        cfg.interfaces.len(),
        cfg.dataplane.queues
    );

    // Control loop: interfaces still there, neighbours, the stats file.
    let stats_every = Duration::from_millis(cfg.appliance.stats_interval_ms);
    let mut last_stats = Instant::now() - stats_every;
    let mut exit_error = None;
    while !stop.load(Ordering::Relaxed) {
        // An interface that vanished (deleted, or its namespace torn down) cannot come back
        // under us: stop and exit non-zero so a supervisor restarts us on the new state.
        if let Some(name) = ifindex_to_port.iter().find_map(|(idx, p)| {
            let name = &cfg.interfaces[usize::from(*p)].name;
            (sluice_xdp::ifindex_of(name).ok() != Some(*idx)).then(|| name.clone())
        }) {
            exit_error = Some(anyhow::anyhow!("interface {name:?} disappeared; stopping"));
            break;
        }
        neighbors.tick(&hub);
        if last_stats.elapsed() >= stats_every {
            last_stats = Instant::now();
            if let Err(e) = reporter.write(&stats_path, &hub, &dp.steering, &dp.stats) {
                tracing::warn!("writing {}: {e:#}", stats_path.display());
            }
        }
        std::thread::sleep(CONTROL_TICK);
    }

    tracing::info!("stopping: workers first, then XDP (the kernel path takes over)");
    stop.store(true, Ordering::Relaxed);
    for h in dp.workers.drain(..) {
        let _ = h.join();
    }
    reporter.write(&stats_path, &hub, &dp.steering, &dp.stats)?;
    dp.steering.detach_all();
    match exit_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
