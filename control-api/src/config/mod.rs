//! The appliance config file (`sluiced --config FILE.toml`).
//!
//! Parsing is strict about what it understands (unknown keys are errors: a typo in a config must
//! not silently fall back to a default) and every error names the field and the fix.

use serde::Deserialize;
use sluice_dataplane::state::Route;
use sluice_dataplane::wire::ethernet::parse_mac;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod api;
mod lb;
mod observe;
mod overlay;

pub use api::ApiCfg;
pub use lb::LbCfg;
pub use observe::ObserveCfg;
pub use overlay::{OverlayCfg, OverlayModeCfg};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub appliance: Appliance,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<Interface>,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteCfg>,
    #[serde(rename = "steer", default)]
    pub steer: Vec<SteerCfg>,
    #[serde(default)]
    pub api: ApiCfg,
    #[serde(default)]
    pub overlay: OverlayCfg,
    #[serde(default)]
    pub lb: LbCfg,
    #[serde(default)]
    pub observe: ObserveCfg,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Shown in logs and status.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where the daemon writes its stats file (and, later, its API socket).
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// How often the stats file is rewritten, in milliseconds.
    #[serde(default = "default_stats_interval")]
    pub stats_interval_ms: u64,
    /// This appliance's own node addresses: NodePort services are exposed on them.
    #[serde(default)]
    pub node_addresses: Vec<String>,
}

fn default_name() -> String {
    "sluice".into()
}
fn default_runtime_dir() -> PathBuf {
    "/run/sluice".into()
}
fn default_stats_interval() -> u64 {
    1000
}

impl Default for Appliance {
    fn default() -> Self {
        Appliance {
            name: default_name(),
            runtime_dir: default_runtime_dir(),
            stats_interval_ms: default_stats_interval(),
            node_addresses: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PollModeCfg {
    Busy,
    Adaptive,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopyCfg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// Number of queues served per interface; one worker per queue.
    #[serde(default = "one")]
    pub queues: u32,
    /// CPU core per worker (index = queue). Empty: worker q runs on core q mod #cpus.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// Packets per batch, 1..=64.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_poll")]
    pub poll_mode: PollModeCfg,
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpModeCfg,
    /// If native attach fails, attach in generic mode instead of failing.
    #[serde(default = "yes")]
    pub xdp_fallback_generic: bool,
    #[serde(default = "default_zc")]
    pub zero_copy: ZeroCopyCfg,
    /// UMEM chunk size (power of two, 2048..=65536).
    #[serde(default = "default_frame")]
    pub frame_size: u32,
    /// Descriptors per AF_XDP ring (power of two, 64..=32768).
    #[serde(default = "default_ring")]
    pub ring_size: u32,
    /// When sluiced stops or dies, its XDP program stays and holds the owned traffic (drops
    /// it; the peers retransmit) this long, so a restarted sluiced picks the connections up
    /// instead of the kernel resetting them; then the kernel path takes over. 0: the program
    /// is detached at exit and the kernel takes over at once (decision 013).
    #[serde(default = "default_hold")]
    pub restart_hold_ms: u64,
    /// Conntrack and NAT state in files under `appliance.runtime_dir`/conntrack, which the
    /// next sluiced adopts: restarts keep connections.
    #[serde(default = "yes")]
    pub persist_conntrack: bool,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_batch() -> usize {
    64
}
fn default_poll() -> PollModeCfg {
    PollModeCfg::Adaptive
}
fn default_xdp_mode() -> XdpModeCfg {
    XdpModeCfg::Native
}
fn default_zc() -> ZeroCopyCfg {
    ZeroCopyCfg::Auto
}
fn default_frame() -> u32 {
    4096
}
fn default_ring() -> u32 {
    2048
}
/// Covers a restart (stop, start, tables adopted, sockets bound: about a second here) with
/// room: TCP's retransmissions (200 ms, 400, 800, 1.6 s...) land after it. Short enough that a
/// sluiced stopped for good hands its addresses to the kernel within seconds.
fn default_hold() -> u64 {
    5000
}
/// A longer black hole is a misconfiguration: clients give up on connecting after about a
/// minute (net.ipv4.tcp_syn_retries = 6 is 127 s, but applications time out sooner).
const MAX_HOLD_MS: u64 = 60_000;

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            queues: one(),
            cores: Vec::new(),
            batch_size: default_batch(),
            poll_mode: default_poll(),
            xdp_mode: default_xdp_mode(),
            xdp_fallback_generic: yes(),
            zero_copy: default_zc(),
            frame_size: default_frame(),
            ring_size: default_ring(),
            restart_hold_ms: default_hold(),
            persist_conntrack: yes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCfg {
    /// CIDR, e.g. "10.20.0.0/24" or "fd00:20::/64".
    pub prefix: String,
    /// Egress interface: one of the `[[interface]]` names.
    pub dev: String,
    /// Gateway address; absent for a directly connected prefix.
    #[serde(default)]
    pub via: Option<String>,
    /// Static next-hop MAC; absent to use the kernel's neighbour table.
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SteerCfg {
    /// Destination address the appliance owns, or a prefix ("10.30.0.0/24": every address in it).
    pub ip: String,
    /// "tcp", "udp" or "any" (default).
    #[serde(default = "any")]
    pub proto: String,
    /// Destination port; 0 or absent for every port.
    #[serde(default)]
    pub port: u16,
}

fn any() -> String {
    "any".into()
}

/// What a reload (SIGHUP) can change in a running daemon: the load-balancing mode and DSR
/// dispatch (`lb.mode`, `lb.dsr_*`) and the flow events (`observe.flows`, `observe.export_*`).
/// Everything else is fixed by what the daemon set up at start (interfaces, sockets, tables,
/// XDP steering, the store's defaults).
impl Config {
    /// Ok when `new` differs from `self` only in what a reload can apply; otherwise the
    /// sections that differ and need a restart.
    pub fn reloadable(&self, new: &Config) -> Result<(), Vec<&'static str>> {
        let mut masked = new.clone();
        masked.lb.mode.clone_from(&self.lb.mode);
        masked.lb.dsr_dispatch.clone_from(&self.lb.dsr_dispatch);
        masked.lb.dsr_geneve_port = self.lb.dsr_geneve_port;
        masked.lb.dsr_mtu = self.lb.dsr_mtu;
        masked.observe.flows = self.observe.flows;
        masked
            .observe
            .export_file
            .clone_from(&self.observe.export_file);
        masked.observe.export_max_bytes = self.observe.export_max_bytes;
        masked.observe.export_keep = self.observe.export_keep;
        if masked == *self {
            return Ok(());
        }
        let o = self;
        let changed = [
            ("[appliance]", masked.appliance != o.appliance),
            ("[dataplane]", masked.dataplane != o.dataplane),
            ("[[interface]]", masked.interfaces != o.interfaces),
            ("[[route]]", masked.routes != o.routes),
            ("[[steer]]", masked.steer != o.steer),
            ("[api]", masked.api != o.api),
            ("[overlay]", masked.overlay != o.overlay),
            ("[lb] (other than mode and dsr_*)", masked.lb != o.lb),
            ("[observe] flows_kept", masked.observe != o.observe),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        Err(changed)
    }
}

/// A config error: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A parsed, checked steering entry: (ip, IP protocol number or 0, port or 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedSteer {
    pub ip: IpAddr,
    pub proto: u8,
    pub port: u16,
    /// Some(len) for a prefix entry.
    pub prefix_len: Option<u8>,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "config".into());
            bad(span, e.message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::from_toml(&text)
            .map_err(|e| bad(format!("{}: {}", path.display(), e.field), e.problem))
    }

    /// Checks everything that can be checked without touching the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        if d.queues == 0 || d.queues > 64 {
            return Err(bad(
                "dataplane.queues",
                format!("{} is outside 1..=64", d.queues),
            ));
        }
        if !d.cores.is_empty() && d.cores.len() != d.queues as usize {
            return Err(bad(
                "dataplane.cores",
                format!(
                    "lists {} cores for {} queues; give one core per queue or leave it empty",
                    d.cores.len(),
                    d.queues
                ),
            ));
        }
        if !(1..=64).contains(&d.batch_size) {
            return Err(bad(
                "dataplane.batch_size",
                format!("{} is outside 1..=64", d.batch_size),
            ));
        }
        if !d.frame_size.is_power_of_two() || !(2048..=65536).contains(&d.frame_size) {
            return Err(bad(
                "dataplane.frame_size",
                format!("{} must be a power of two in 2048..=65536", d.frame_size),
            ));
        }
        if d.restart_hold_ms > MAX_HOLD_MS {
            return Err(bad(
                "dataplane.restart_hold_ms",
                format!("{} is above the maximum {MAX_HOLD_MS}", d.restart_hold_ms),
            ));
        }
        if !d.ring_size.is_power_of_two() || !(64..=32768).contains(&d.ring_size) {
            return Err(bad(
                "dataplane.ring_size",
                format!("{} must be a power of two in 64..=32768", d.ring_size),
            ));
        }
        if self.appliance.stats_interval_ms < 50 {
            return Err(bad("appliance.stats_interval_ms", "must be at least 50"));
        }
        let mut seen = HashSet::new();
        for (i, itf) in self.interfaces.iter().enumerate() {
            let f = format!("interface[{i}].name");
            if itf.name.is_empty() || itf.name.len() > 15 || itf.name.contains(['/', ' ', '\0']) {
                return Err(bad(
                    f,
                    format!(
                        "{:?} is not a valid interface name (1-15 characters, no '/' or spaces)",
                        itf.name
                    ),
                ));
            }
            if !seen.insert(itf.name.as_str()) {
                return Err(bad(f, format!("{:?} is listed twice", itf.name)));
            }
        }
        if self.interfaces.len() > usize::from(u16::MAX) {
            return Err(bad("interface", "too many interfaces"));
        }
        self.checked_routes()?;
        self.checked_steer()?;
        self.node_addresses()?;
        if !self.api.listen.is_empty() && self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "api.listen",
                format!(
                    "{:?} is not an address:port like 127.0.0.1:9800 (\"\" disables TCP)",
                    self.api.listen
                ),
            ));
        }
        self.overlay()?;
        self.lb_settings()?;
        self.lb_defaults()?;
        self.ct_limits()?;
        if self.observe.flows_kept == 0 || self.observe.flows_kept > 10_000_000 {
            return Err(bad(
                "observe.flows_kept",
                "must be between 1 and 10,000,000 (each flow is about 1 KiB in memory)",
            ));
        }
        if self.observe.export_max_bytes < 4096 {
            return Err(bad("observe.export_max_bytes", "must be at least 4096"));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(bad("api.max_body_bytes", "must be at least 1024"));
        }
        Ok(())
    }

    pub fn node_addresses(&self) -> Result<Vec<IpAddr>, ConfigError> {
        self.appliance
            .node_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|_| {
                    bad(
                        format!("appliance.node_addresses[{i}]"),
                        format!("{a:?} is not an IP address"),
                    )
                })
            })
            .collect()
    }

    pub fn port_of(&self, dev: &str) -> Option<u16> {
        self.interfaces
            .iter()
            .position(|i| i.name == dev)
            .map(|p| p as u16)
    }

    /// The routes, checked, as the dataplane takes them.
    pub fn checked_routes(&self) -> Result<Vec<Route>, ConfigError> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let f = |k: &str| format!("route[{i}].{k}");
            let (prefix, prefix_len) = parse_cidr(&r.prefix).map_err(|p| bad(f("prefix"), p))?;
            let port = self.port_of(&r.dev).ok_or_else(|| {
                bad(
                    f("dev"),
                    format!("{:?} is not one of the [[interface]] names", r.dev),
                )
            })?;
            let via = match &r.via {
                None => None,
                Some(v) => {
                    let a: IpAddr = v
                        .parse()
                        .map_err(|_| bad(f("via"), format!("{v:?} is not an IP address")))?;
                    if a.is_ipv4() != prefix.is_ipv4() {
                        return Err(bad(
                            f("via"),
                            "gateway and prefix are of different IP families",
                        ));
                    }
                    Some(a)
                }
            };
            let mac = match &r.mac {
                None => None,
                Some(m) => Some(parse_mac(m).ok_or_else(|| {
                    bad(
                        f("mac"),
                        format!("{m:?} is not a MAC address like 02:00:00:00:00:01"),
                    )
                })?),
            };
            out.push(Route {
                prefix,
                prefix_len,
                port,
                via,
                mac,
            });
        }
        Ok(out)
    }

    pub fn checked_steer(&self) -> Result<Vec<CheckedSteer>, ConfigError> {
        let mut out = Vec::new();
        for (i, s) in self.steer.iter().enumerate() {
            let (ip, prefix_len) = if s.ip.contains('/') {
                let (a, l) = parse_cidr(&s.ip).map_err(|p| bad(format!("steer[{i}].ip"), p))?;
                (a, Some(l))
            } else {
                let a: IpAddr = s.ip.parse().map_err(|_| {
                    bad(
                        format!("steer[{i}].ip"),
                        format!("{:?} is not an IP address or a CIDR", s.ip),
                    )
                })?;
                (a, None)
            };
            let proto = match s.proto.as_str() {
                "any" => 0,
                "tcp" => 6,
                "udp" => 17,
                p => {
                    return Err(bad(
                        format!("steer[{i}].proto"),
                        format!("{p:?} is not one of \"tcp\", \"udp\", \"any\""),
                    ))
                }
            };
            if proto == 0 && s.port != 0 {
                return Err(bad(
                    format!("steer[{i}].port"),
                    "a port needs proto \"tcp\" or \"udp\"",
                ));
            }
            if prefix_len.is_some() && (proto != 0 || s.port != 0) {
                return Err(bad(
                    format!("steer[{i}].ip"),
                    "a prefix is owned whole: leave proto and port out",
                ));
            }
            out.push(CheckedSteer {
                ip,
                proto,
                port: s.port,
                prefix_len,
            });
        }
        Ok(out)
    }
}

/// "10.0.0.0/8" -> (10.0.0.0, 8); host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 10.0.0.0/24"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = l
        .parse()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("prefix length {l:?} is not in 0..={max}"))?;
    let bits = match addr {
        IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
        IpAddr::V6(v) => u128::from(v),
    };
    let host_mask = if len == 0 {
        u128::MAX
    } else {
        !(u128::MAX << (128 - u32::from(len)))
    };
    let host_mask = if addr.is_ipv4() {
        host_mask & (u128::MAX << 96)
    } else {
        host_mask
    };
    if bits & host_mask != 0 {
        return Err(format!("{s:?} has host bits set"));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[appliance]
name = "lab"
[dataplane]
queues = 2
cores = [0, 1]
[[interface]]
name = "eth-cli"
[[interface]]
name = "eth-srv"
[[route]]
prefix = "10.10.0.0/24"
dev = "eth-cli"
[[route]]
prefix = "0.0.0.0/0"
dev = "eth-srv"
via = "10.20.0.1"
mac = "02:00:00:00:00:01"
[[steer]]
ip = "10.20.0.11"
[[steer]]
ip = "10.20.0.12"
proto = "tcp"
port = 80
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.dataplane.queues, 2);
        let r = c.checked_routes().unwrap();
        assert_eq!(r[1].port, 1);
        assert_eq!(r[1].mac, Some([2, 0, 0, 0, 0, 1]));
        let s = c.checked_steer().unwrap();
        assert_eq!((s[1].proto, s[1].port), (6, 80));
    }

    fn err_of(text: &str) -> ConfigError {
        Config::from_toml(text).unwrap_err()
    }

    #[test]
    fn lb_modes_and_dsr_dispatch() {
        let lb = |extra: &str| format!("{GOOD}\n[lb]\nsnat_ipv4 = \"10.20.0.1\"\n{extra}\n");
        assert_eq!(err_of(&lb("mode = \"tunnel\"")).field, "lb.mode");
        assert_eq!(
            err_of(&lb("mode = \"dsr\"\ndsr_dispatch = \"gre\"")).field,
            "lb.dsr_dispatch"
        );
        assert_eq!(err_of(&lb("dsr_mtu = 1000")).field, "lb.dsr_mtu");
        let ok = Config::from_toml(&lb(
            "mode = \"hybrid\"\ndsr_dispatch = \"geneve\"\ndsr_mtu = 9000",
        ))
        .unwrap()
        .lb_settings()
        .unwrap();
        assert_eq!(
            (ok.mode, ok.dispatch, ok.dsr_mtu),
            (
                sluice_dataplane::lb::LbMode::Hybrid,
                sluice_dataplane::lb::Dispatch::Geneve { port: 6081 },
                9000
            )
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of(&GOOD.replace("dev = \"eth-cli\"", "dev = \"eth9\""));
        assert_eq!(e.field, "route[0].dev");
        let e = err_of(&GOOD.replace("10.10.0.0/24", "10.10.0.1/24"));
        assert_eq!(e.field, "route[0].prefix");
        assert!(e.problem.contains("host bits"));
        let e = err_of(&GOOD.replace("cores = [0, 1]", "cores = [0]"));
        assert_eq!(e.field, "dataplane.cores");
        let e = err_of(&GOOD.replace(
            "ip = \"10.20.0.11\"",
            "ip = \"10.20.0.0/16\"\nport = 5\nproto = \"udp\"",
        ));
        assert_eq!(e.field, "steer[0].ip");
        let ok = Config::from_toml(&GOOD.replace("ip = \"10.20.0.11\"", "ip = \"10.20.0.0/16\""))
            .unwrap();
        assert_eq!(ok.checked_steer().unwrap()[0].prefix_len, Some(16));
        let e = err_of(&GOOD.replace("proto = \"tcp\"", "proto = \"sctp\""));
        assert_eq!(e.field, "steer[1].proto");
        let e = err_of(&GOOD.replace("02:00:00:00:00:01", "02:00:00:00:01"));
        assert_eq!(e.field, "route[1].mac");
        let e = err_of(&format!("{GOOD}\n[[interface]]\nname = \"eth-cli\"\n"));
        assert_eq!(e.field, "interface[2].name");
        let e = err_of(&format!("{GOOD}\n[overlay]\nmode = \"vxlan\"\n"));
        assert_eq!(e.field, "overlay.local_ip");
        let ok = Config::from_toml(&format!(
            "{GOOD}\n[overlay]\nmode = \"geneve\"\nlocal_ip = \"192.168.50.1\"\n"
        ))
        .unwrap();
        assert_eq!(ok.overlay().unwrap().port, 6081);
        let e = err_of(&GOOD.replace("[dataplane]", "[dataplane]\nring_size = 1000"));
        assert_eq!(e.field, "dataplane.ring_size");
        let e = err_of(&GOOD.replace("[dataplane]", "[dataplane]\nrestart_hold_ms = 600000"));
        assert_eq!(e.field, "dataplane.restart_hold_ms");
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_refused_with_a_line() {
        let e = err_of(&GOOD.replace("queues = 2", "queues = 2\nqueus = 3"));
        assert!(e.field.starts_with("line "), "{e}");
        assert!(e.problem.contains("queus"), "{e}");
        let e = err_of("[dataplane\n");
        assert!(e.field.starts_with("line "), "{e}");
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("fd00:20::/64").unwrap().1, 64);
        assert!(parse_cidr("fd00:20::1/64").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    #[test]
    fn a_reload_may_change_lb_mode_and_flow_events_only() {
        let base = "[appliance]\nname = \"a\"\n";
        let old = Config::from_toml(base).unwrap();
        let live = Config::from_toml(&format!(
            "{base}[lb]\nmode = \"dsr\"\ndsr_mtu = 1400\n[observe]\nflows = false\nexport_file = \"/tmp/f.jsonl\"\n"
        ))
        .unwrap();
        assert_eq!(old.reloadable(&live), Ok(()));
        let restart = Config::from_toml(&format!(
            "{base}[lb]\nhash_seed = 7\n[api]\nlisten = \"127.0.0.1:9900\"\n"
        ))
        .unwrap();
        assert_eq!(
            old.reloadable(&restart),
            Err(vec!["[api]", "[lb] (other than mode and dsr_*)"])
        );
    }
}
