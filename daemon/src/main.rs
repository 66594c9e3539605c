//! `sluiced`: the appliance daemon. Glues the XDP steering program, the AF_XDP workers and the
//! control plane's config together.

mod datapath;
mod flows;
mod metrics;
mod neighbors;
mod netdev;
mod netlink;
mod notify;
mod status;

use anyhow::{Context, Result};
use clap::Parser;
use neighbors::Neighbors;
use sluice_control::api::Api;
use sluice_control::config::{Config, PollModeCfg};
use sluice_control::persist::{self, Persister};
use sluice_control::server::{load_token, Server};
use sluice_control::store::Store;
use sluice_dataplane::state::{RouteTable, Snapshot, StateHub};
use std::path::{Path, PathBuf};
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
/// The control loop's sleep between turns, cut short by a published snapshot.
#[derive(Default)]
struct Tick {
    woken: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Tick {
    /// Sleeps up to `most`, or until a wake since the last wait.
    fn wait(&self, most: Duration) {
        let woken = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        let (mut woken, _) = self
            .cv
            .wait_timeout_while(woken, most, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        *woken = false;
    }
}

impl sluice_dataplane::state::Wake for Tick {
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_one();
    }
}

/// How often the restart hold is renewed: a second is a small part of the hold (5 s by
/// default), so a crash is held for nearly the whole hold, and one map write a second is free.
const HOLD_RENEWAL: Duration = Duration::from_secs(1);

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
    // journald-friendly: colours only on a terminal, and no timestamp of our own when the
    // journal (which stamps every line) is the output
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
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
    if let Err(e) = run(cfg, path, args.stats_file) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(mut cfg: Config, config_path: &Path, stats_file: Option<PathBuf>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;
    let notifier = notify::Notifier::from_env();
    let api_only = cfg.interfaces.is_empty();
    if api_only {
        tracing::warn!("no [[interface]] configured: serving the control API only, no datapath");
    }
    let token = match &cfg.api.token_file {
        Some(path) => Some(load_token(path)?),
        None => {
            tracing::warn!("no api.token_file: the control API is read-only");
            None
        }
    };

    // before any thread starts: they all inherit it
    let worker_cores = if api_only {
        Vec::new()
    } else {
        datapath::confine_housekeeping(&cfg)
    };
    // A full apply (10,000 Maglev tables) may also compile on the workers' cores while they
    // sleep, at idle priority; not when they busy-poll: their cores are never idle.
    let spare_cores = match cfg.dataplane.poll_mode {
        PollModeCfg::Adaptive => worker_cores,
        PollModeCfg::Busy => Vec::new(),
    };
    let (ports, ifindex_to_port) = if api_only {
        Default::default()
    } else {
        datapath::probe_interfaces(&cfg)?
    };
    let routes = RouteTable::new(cfg.checked_routes()?);
    let steer = cfg.checked_steer()?;
    let mut neighbors =
        (!api_only).then(|| Neighbors::start(ifindex_to_port.clone(), &routes, &steer));
    let hub = Arc::new(StateHub::new(Snapshot {
        ports: Arc::new(ports),
        routes: Arc::new(routes),
        overlay: Arc::new(cfg.overlay()?),
        lb: Arc::new(cfg.lb_settings()?),
        ..Snapshot::default()
    }));
    if let Some(n) = &neighbors {
        hub.set_neighbors(n.table());
    }
    // a publish wakes the control loop, so the steering map follows a change at once rather
    // than at the next tick (an API change with ?wait=true waits for it)
    let tick = Arc::new(Tick::default());
    hub.add_waker(tick.clone());
    // The last applied cluster state, before any packet or syncer arrives.
    let store = restore_state(&cfg, spare_cores)?;
    hub.set_cluster(store.tables());

    let tap = Arc::new(sluice_dataplane::capture::CaptureTap::default());
    let mut dp = match neighbors.as_mut() {
        Some(n) => Some(datapath::start(&cfg, &steer, &hub, n, &stop, &tap)?),
        None => None,
    };
    let worker_stats = dp.as_ref().map(|d| d.stats.clone()).unwrap_or_default();
    sluice_dataplane::flow::ENABLED.store(cfg.observe.flows, Ordering::Relaxed);
    let flows = Arc::new(sluice_control::flows::FlowLog::new(
        cfg.observe.flows_kept,
        export_of(&cfg),
        &cfg.appliance.name,
    ));
    let mut status = status::DaemonStatus::new(worker_stats.clone());
    status.rings = dp
        .as_ref()
        .map(|d| d.flow_rings.clone())
        .unwrap_or_default();
    status.hub = Some(hub.clone());
    status.appliance = cfg.appliance.name.clone();
    let status = Arc::new(status);
    let api = Arc::new(Api {
        store: std::sync::Mutex::new(store),
        hub: hub.clone(),
        persister: Persister::start(cfg.api.state_dir.clone()),
        token,
        status: status.clone(),
        max_body: cfg.api.max_body_bytes,
        appliance: cfg.appliance.name.clone(),
        flows,
        capture: tap.clone(),
    });
    let server = Server::start(api.clone(), &cfg.api.listen, &cfg.api.socket)?;
    let collector_done = Arc::new(AtomicBool::new(false));
    let collector = flows::start_collector(
        api.clone(),
        dp.as_ref()
            .map(|d| d.flow_rings.clone())
            .unwrap_or_default(),
        collector_done.clone(),
    )?;

    let stats_path = stats_file.unwrap_or_else(|| cfg.appliance.runtime_dir.join("stats.json"));
    if let Some(dir) = stats_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let reporter = status::Reporter {
        appliance: cfg.appliance.name.clone(),
        started: Instant::now(),
        zero_copy: dp.as_ref().map(|d| d.zero_copy.clone()).unwrap_or_default(),
    };
    let report = |dp: &Option<datapath::Datapath>| -> Result<()> {
        let doc = reporter.document(&hub, dp.as_ref().map(|d| &d.steering), &worker_stats)?;
        reporter.write(&stats_path, &doc)?;
        status.set(doc);
        Ok(())
    };
    report(&dp)?;
    tracing::info!(
        appliance = %cfg.appliance.name,
        stats = %stats_path.display(),
        api = ?server.tcp_addr,
        socket = %cfg.api.socket.display(),
        "sluiced ready: {} interface(s), {} worker(s)",
        cfg.interfaces.len(),
        if api_only { 0 } else { cfg.dataplane.queues }
    );

    notifier.send(&format!(
        "READY=1\nSTATUS=forwarding on {} interface(s) with {} worker(s)",
        cfg.interfaces.len(),
        if api_only { 0 } else { cfg.dataplane.queues }
    ));

    // Control loop: interfaces still there, neighbours, counters, reloads, the watchdog.
    let stats_every = Duration::from_millis(cfg.appliance.stats_interval_ms);
    let mut last_stats = Instant::now();
    let mut last_watchdog = Instant::now();
    let mut last_hold = Instant::now();
    let mut exit_error = None;
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            notifier.send("RELOADING=1");
            reload_config(&mut cfg, config_path, &hub, &api);
            notifier.send("READY=1");
        }
        if let Some(every) = notifier.watchdog_every {
            // alive = this loop turns and every worker thread still runs
            let workers_alive = dp
                .as_ref()
                .is_none_or(|d| d.workers.iter().all(|h| !h.is_finished()));
            if workers_alive && last_watchdog.elapsed() >= every {
                notifier.send("WATCHDOG=1");
                last_watchdog = Instant::now();
            }
        }
        // An interface that vanished (deleted, or its namespace torn down) cannot come back
        // under us: stop and exit non-zero so a supervisor restarts us on the new state.
        if let Some(name) = ifindex_to_port.iter().find_map(|(idx, p)| {
            let name = &cfg.interfaces[usize::from(*p)].name;
            (sluice_xdp::ifindex_of(name).ok() != Some(*idx)).then(|| name.clone())
        }) {
            exit_error = Some(anyhow::anyhow!("interface {name:?} disappeared; stopping"));
            break;
        }
        if let Some(n) = neighbors.as_mut() {
            n.tick(&hub);
        }
        let snap = hub.current();
        if let Some(d) = dp.as_mut() {
            d.sync_cluster(&snap.cluster);
        }
        status.set_steered(snap.generation);
        if last_hold.elapsed() >= HOLD_RENEWAL {
            last_hold = Instant::now();
            if let Some(d) = dp.as_ref() {
                d.renew_hold();
            }
        }
        if last_stats.elapsed() >= stats_every {
            last_stats = Instant::now();
            if let Err(e) = report(&dp) {
                tracing::warn!("counters: {e:#}");
            }
        }
        tick.wait(CONTROL_TICK);
    }

    notifier.send("STOPPING=1");
    tracing::info!("stopping: API, workers, then XDP");
    stop.store(true, Ordering::Relaxed);
    server.stop();
    api.persister.finish();
    if let Some(d) = dp.as_mut() {
        for h in d.workers.drain(..) {
            let _ = h.join();
        }
    }
    // the workers' last events are drained (and exported) before exit
    collector_done.store(true, Ordering::Release);
    let _ = collector.join();
    report(&dp)?;
    if let Some(d) = dp.as_mut() {
        d.stop();
    }
    match exit_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// SIGHUP: reads the config file again. A file that does not load, or that changes what only
/// a restart can (see `Config::reloadable`), is refused with a log line and nothing changes;
/// otherwise the load-balancing mode and flow event settings take effect at once.
fn reload_config(cfg: &mut Config, path: &Path, hub: &StateHub, api: &Api) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(path = %path.display(), "config reload refused: {e}; the running config stays");
            return;
        }
    };
    if let Err(sections) = cfg.reloadable(&new) {
        tracing::error!(
            path = %path.display(),
            "config reload refused: {} changed, which needs a restart; the running config stays",
            sections.join(", ")
        );
        return;
    }
    let lb = match new.lb_settings() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("config reload refused: {e}; the running config stays");
            return;
        }
    };
    hub.update(|s| s.lb = Arc::new(lb));
    sluice_dataplane::flow::ENABLED.store(new.observe.flows, Ordering::Relaxed);
    api.flows.set_export(export_of(&new));
    tracing::info!(
        path = %path.display(),
        lb_mode = %new.lb.mode,
        flows = new.observe.flows,
        "config reloaded"
    );
    *cfg = new;
}

/// The flow export the config asks for.
fn export_of(cfg: &Config) -> Option<sluice_control::flows::Export> {
    cfg.observe
        .export_file
        .clone()
        .map(|path| sluice_control::flows::Export {
            path,
            max_bytes: cfg.observe.export_max_bytes,
            keep: cfg.observe.export_keep,
        })
}

/// The store as it was last applied, from `api.state_dir`. A file that cannot be used is set
/// aside (state.json.bad) with an error in the log, and sluiced starts empty: the syncer resends.
fn restore_state(cfg: &Config, spare_cores: Vec<usize>) -> Result<Store> {
    let mut store = Store::new(cfg.node_addresses()?)
        .with_local_node(cfg.overlay.local_node.clone())
        .with_lb(cfg.lb_defaults()?)
        .with_spare_cores(spare_cores);
    let dir = &cfg.api.state_dir;
    match persist::load(dir) {
        Ok(None) => tracing::info!(dir = %dir.display(), "no saved state: starting empty"),
        Ok(Some(saved)) => match store.replace_all_items(
            &saved
                .iter()
                .map(|r| sluice_control::store::Item::Text(r.get()))
                .collect::<Vec<_>>(),
        ) {
            Ok(n) => {
                tracing::info!(objects = n, dir = %dir.display(), "restored the last applied state")
            }
            Err(e) => {
                tracing::error!("saved state rejected ({e}); setting it aside and starting empty");
                persist::set_aside(dir)
                    .with_context(|| format!("moving the state in {} aside", dir.display()))?;
            }
        },
        Err(e) => {
            tracing::error!("saved state unusable ({e}); setting it aside and starting empty");
            persist::set_aside(dir)
                .with_context(|| format!("moving the state in {} aside", dir.display()))?;
        }
    }
    Ok(store)
}
