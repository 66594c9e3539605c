//! `sluice-decap`: the backend side of DSR (sluice `lb.mode = "dsr"` or `"hybrid"`), as Katran's
//! decap program. Attaches the XDP program that strips the appliance's IPIP / IPv6-in-IPv6 /
//! Geneve tunnels to the backend's interface, so the kernel delivers the client's packet to the
//! service address the backend holds on `lo`; the backend answers the client directly. Runs in
//! the foreground (a systemd service on the backend) until SIGTERM/SIGINT, which detach it.

use anyhow::{Context, Result};
use clap::Parser;
use sluice_xdp::{Decap, DecapCounters, XdpMode};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the counters file is rewritten: cheap, and fresh enough for a human or a test.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the signal flag is looked at: a stop takes at most this long.
const POLL: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The backend's interface toward the appliance.
    #[arg(long)]
    dev: String,
    /// Also strip Geneve to this UDP port (the appliance's lb.dsr_geneve_port, 6081 by default).
    #[arg(long)]
    geneve_port: Option<u16>,
    /// Accept tunnels only from these load balancer addresses (repeatable; default: any).
    #[arg(long)]
    allow: Vec<IpAddr>,
    /// Attach in generic (skb) mode instead of native.
    #[arg(long)]
    generic: bool,
    /// Rewrite the counters as JSON to this file every second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

fn json(c: &DecapCounters) -> String {
    serde_json::json!({
        "decapsulated": c.decapsulated,
        "passed": c.passed,
        "refused": c.refused,
    })
    .to_string()
}

fn write_stats(file: &Path, c: &DecapCounters) -> Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, json(c))?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

fn run(a: &Args) -> Result<()> {
    let mode = if a.generic {
        XdpMode::Generic
    } else {
        XdpMode::Native
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let d = Decap::attach(&a.dev, mode, a.geneve_port, &a.allow)
        .with_context(|| format!("attaching the DSR decapsulation program to {}", a.dev))?;
    eprintln!(
        "sluice-decap: stripping IPIP and IPv6-in-IPv6{} on {} ({} mode), tunnels from {}",
        a.geneve_port
            .map(|p| format!(" and Geneve :{p}"))
            .unwrap_or_default(),
        a.dev,
        mode.as_str(),
        if a.allow.is_empty() {
            "anywhere".to_string()
        } else {
            format!("{:?} only", a.allow)
        }
    );
    let mut last = None::<Instant>;
    while !stop.load(Ordering::Relaxed) {
        if let Some(f) = &a.stats_file {
            if last.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
                write_stats(f, &d.counters()?)?;
                last = Some(Instant::now());
            }
        }
        std::thread::sleep(POLL);
    }
    let c = d.counters()?;
    if let Some(f) = &a.stats_file {
        write_stats(f, &c)?;
    }
    println!("{}", json(&c));
    Ok(())
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("sluice-decap: {e:#}");
        std::process::exit(1);
    }
}
