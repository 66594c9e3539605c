//! `sluice`: the operator CLI.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sluice_cli::client::{Client, Endpoint};
use sluice_cli::resources::{
    apply_or_delete, read_manifests, render, render_status, resource_paths,
};
use sluice_cli::{replay, stats_table};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Operate a sluice appliance")]
struct Cli {
    /// The daemon's API: unix:/path/to/api.sock or http://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SERVER",
        default_value = "unix:/run/sluice/api.sock"
    )]
    server: String,
    /// File holding the bearer token for changes (apply, delete).
    #[arg(
        long,
        global = true,
        env = "SLUICE_TOKEN_FILE",
        default_value = "/etc/sluice/token"
    )]
    token_file: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

// parsed once per run: the size of the Observe variant (its filters) costs nothing
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// The daemon's state: snapshot generation, workers, objects, counters.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List objects: services, endpoints, pods, nodes, namespaces, policies, identities.
    Get {
        resource: String,
        /// Only this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Create or update the objects in FILE, DIR or - (stdin): Kubernetes YAML or JSON.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Delete the objects named in FILE, DIR or -.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Show what the appliance counted, from its stats file (works with the API down).
    Stats {
        /// The daemon's stats file.
        #[arg(long, default_value = "/run/sluice/stats.json")]
        file: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show flows (Hubble's observe): drops with their reason and policy, new and ended
    /// connections, service translations, HTTP requests on L7-inspected connections.
    Observe {
        /// Keep printing flows as they happen.
        #[arg(short, long)]
        follow: bool,
        /// The last N flows (default 20 without --follow, 0 with it).
        #[arg(long)]
        last: Option<usize>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// FORWARDED, DROPPED or TRANSLATED.
        #[arg(long)]
        verdict: Option<String>,
        /// A drop reason by name (POLICY_DENIED, ...).
        #[arg(long)]
        drop_reason: Option<String>,
        /// Either end in this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Either end this pod ([namespace/]name).
        #[arg(long)]
        pod: Option<String>,
        #[arg(long)]
        from_pod: Option<String>,
        #[arg(long)]
        to_pod: Option<String>,
        /// Either end with this security identity.
        #[arg(long)]
        identity: Option<u32>,
        /// Either end in this address or CIDR.
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        from_ip: Option<String>,
        #[arg(long)]
        to_ip: Option<String>,
        /// Either port.
        #[arg(long)]
        port: Option<u16>,
        /// tcp, udp, icmpv4, icmpv6, sctp.
        #[arg(long)]
        protocol: Option<String>,
        #[arg(long)]
        http_method: Option<String>,
        /// A regular expression the request path matches.
        #[arg(long)]
        http_path: Option<String>,
        /// A code (403) or class (4+).
        #[arg(long)]
        http_status: Option<String>,
        /// Only replies (true) or only original-direction packets (false).
        #[arg(long)]
        reply: Option<bool>,
        /// Since a time (RFC 3339) or for a duration back (30s, 5m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Decided by this policy (namespace/name).
        #[arg(long)]
        policy: Option<String>,
    },
    /// Capture what the workers see (tcpdump cannot: AF_XDP takes the packets from the
    /// kernel): each packet as received and as transmitted after rewriting, marked inbound /
    /// outbound. With -w, a pcapng file for tcpdump, tshark or Wireshark; else one line each.
    Capture {
        /// Interface name, or any.
        #[arg(short, long, default_value = "any")]
        interface: String,
        /// Write the packets to this file (pcapng; - for stdout).
        #[arg(short = 'w', long)]
        write: Option<PathBuf>,
        /// Stop after this many packets.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(short = 'G', long)]
        seconds: Option<f64>,
        /// Filter: host/src host/dst host A, net CIDR, port/src port/dst port N, tcp, udp,
        /// icmp, icmp6, ip, ip6; joined by "and", each may be negated with "not".
        filter: Vec<String>,
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

fn client(cli: &Cli, need_token: bool) -> Result<Client> {
    let endpoint = Endpoint::parse(&cli.server)?;
    let token = match std::fs::read_to_string(&cli.token_file) {
        Ok(t) => Some(t.trim().to_string()),
        Err(e) if need_token => bail!(
            "reading the token file {} ({e}): changes need the daemon's api.token_file (--token-file)",
            cli.token_file.display()
        ),
        Err(_) => None,
    };
    Ok(Client { endpoint, token })
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Observe {
            follow,
            last,
            output,
            verdict,
            drop_reason,
            namespace,
            pod,
            from_pod,
            to_pod,
            identity,
            ip,
            from_ip,
            to_ip,
            port,
            protocol,
            http_method,
            http_path,
            http_status,
            reply,
            since,
            policy,
        } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            let mut put = |k: &'static str, v: Option<String>| {
                if let Some(v) = v {
                    q.push((k, v));
                }
            };
            put("verdict", verdict.clone());
            put("drop_reason", drop_reason.clone());
            put("namespace", namespace.clone());
            put("pod", pod.clone());
            put("from_pod", from_pod.clone());
            put("to_pod", to_pod.clone());
            put("identity", identity.map(|i| i.to_string()));
            put("ip", ip.clone());
            put("from_ip", from_ip.clone());
            put("to_ip", to_ip.clone());
            put("port", port.map(|p| p.to_string()));
            put("protocol", protocol.clone());
            put("http_method", http_method.clone());
            put("http_path", http_path.clone());
            put("http_status", http_status.clone());
            put("reply", reply.map(|r| r.to_string()));
            put("since", since.clone());
            put("policy", policy.clone());
            let last = last.unwrap_or(if *follow { 0 } else { 20 });
            put("last", Some(last.to_string()));
            if *follow {
                put("follow", Some("true".into()));
            }
            let query: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{k}={}", sluice_cli::percent_encode(v)))
                .collect();
            let path = format!("/v1/flows?{}", query.join("&"));
            let json = *output == Output::Json;
            let out = std::io::stdout();
            client(&cli, false)?.get_lines(&path, |l| {
                use std::io::Write;
                let mut o = out.lock();
                let text = if json {
                    String::from_utf8_lossy(l).into_owned()
                } else {
                    let v: serde_json::Value =
                        serde_json::from_slice(l).context("a flow that is not JSON")?;
                    sluice_cli::observe::line(&v)
                };
                // a closed pipe (| head) ends the command quietly
                Ok(writeln!(o, "{text}").and_then(|_| o.flush()).is_ok())
            })?;
        }
        Cmd::Capture {
            interface,
            write,
            count,
            seconds,
            filter,
        } => {
            let mut q = vec![format!(
                "interface={}",
                sluice_cli::percent_encode(interface)
            )];
            if let Some(c) = count {
                q.push(format!("count={c}"));
            }
            if let Some(s) = seconds {
                q.push(format!("seconds={s}"));
            }
            if !filter.is_empty() {
                q.push(format!(
                    "filter={}",
                    sluice_cli::percent_encode(&filter.join(" "))
                ));
            }
            let path = format!("/v1/capture?{}", q.join("&"));
            let c = client(&cli, false)?;
            match write {
                Some(file) => {
                    use std::io::Write;
                    let mut out: Box<dyn Write> = if file.as_os_str() == "-" {
                        Box::new(std::io::stdout())
                    } else {
                        Box::new(
                            std::fs::File::create(file)
                                .with_context(|| format!("creating {}", file.display()))?,
                        )
                    };
                    let mut packets = 0u64;
                    let mut reader = sluice_cli::capture::Blocks::default();
                    c.get_chunks(&path, |data| {
                        out.write_all(data)?;
                        out.flush()?;
                        reader.feed(data, |_| packets += 1);
                        Ok(true)
                    })?;
                    eprintln!("{packets} packets captured");
                }
                None => {
                    let mut reader = sluice_cli::capture::Blocks::default();
                    c.get_chunks(&path, |data| {
                        reader.feed(data, |p| println!("{}", sluice_cli::capture::summary(&p)));
                        Ok(true)
                    })?;
                }
            }
        }
        Cmd::Status { output } => {
            let v = client(&cli, false)?.get("/v1/status")?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => print!("{}", render_status(&v)),
            }
        }
        Cmd::Get {
            resource,
            namespace,
            output,
        } => {
            let c = client(&cli, false)?;
            let mut all = Vec::new();
            let paths = resource_paths(resource)?;
            if namespace.is_some() && paths == ["identities"] {
                bail!("identities are cluster-wide: drop --namespace");
            }
            for plural in paths {
                let path = match namespace {
                    Some(ns) => format!("/v1/{plural}/{ns}"),
                    None => format!("/v1/{plural}"),
                };
                let list = c.get(&path)?;
                let items = list
                    .get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default();
                if *output == Output::Table {
                    print!("{}", render(plural, &items));
                }
                all.extend(items);
            }
            if *output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": all})
                    )?
                );
            }
        }
        Cmd::Apply { files } | Cmd::Delete { files } => {
            let mut objects = Vec::new();
            for f in files {
                objects.extend(read_manifests(f)?);
            }
            apply_or_delete(
                &client(&cli, true)?,
                &objects,
                matches!(cli.cmd, Cmd::Delete { .. }),
            )?;
        }
        Cmd::Stats { file, output } => {
            let text = std::fs::read_to_string(file).with_context(|| {
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
            let cfg = sluice_control::Config::load(config)
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
            let r = replay(&cfg, port, input, output)?;
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
