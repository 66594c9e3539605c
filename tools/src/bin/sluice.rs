//! `sluice`: the operator CLI.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sluice_cli::{replay, stats_table};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Operate a sluice appliance")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show what the appliance counted: XDP steering per interface, worker rx/tx, drops by reason.
    Stats {
        /// The daemon's stats file.
        #[arg(long, default_value = "/run/sluice/stats.json")]
        file: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run the pipeline offline over a pcap and write what it would transmit as a pcap.
    Replay {
        /// Input pcap (Ethernet).
        input: PathBuf,
        /// Output pcap: the transmitted packets, rewritten.
        output: PathBuf,
        /// Appliance config: interfaces and routes (routes need a static `mac` offline).
        #[arg(long, short)]
        config: PathBuf,
        /// Interface the packets arrive on (default: the first [[interface]]).
        #[arg(long)]
        interface: Option<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("sluice: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Stats { file, output } => {
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "reading {} (is sluiced running? its stats file is <runtime_dir>/stats.json)",
                    file.display()
                )
            })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => print!("{}", stats_table(&v)),
            }
        }
        Cmd::Replay {
            input,
            output,
            config,
            interface,
        } => {
            let cfg = sluice_control::Config::load(&config)
                .map_err(|e| anyhow::anyhow!("config error: {e}"))?;
            let port = match &interface {
                None => 0,
                Some(name) => match cfg.port_of(name) {
                    Some(p) => p,
                    None => {
                        bail!("--interface {name:?} is not one of the config's [[interface]] names")
                    }
                },
            };
            let r = replay(&cfg, port, &input, &output)?;
            println!(
                "replayed {} packets: {} transmitted, {} dropped, {} oversized",
                r.received, r.transmitted, r.dropped, r.oversized
            );
            for (reason, n) in &r.drops {
                println!("  dropped {n:>8}  {reason}");
            }
        }
    }
    Ok(())
}
