//! The `[lb]` section: service load balancing (Maglev, conntrack bounds and timeouts, SNAT).

use super::{bad, Config, ConfigError};
use crate::compile::LbDefaults;
use serde::Deserialize;
use sluice_dataplane::lb::conntrack::Timeouts;
use sluice_dataplane::lb::{maglev, CtLimits, Dispatch, LbMode, LbSettings, DEFAULT_SNAT_PORTS};
use sluice_dataplane::state::Algorithm;
use std::net::IpAddr;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LbCfg {
    /// How backends are reached: "snat" (the client is masqueraded to `snat_ipv4`/`snat_ipv6`
    /// so replies return through the appliance), "dsr" (direct server return: the client's
    /// packets are tunnelled to the backend, which answers the client itself; only for service
    /// ports whose backends listen on the same port, others are masqueraded) or "hybrid" (DSR
    /// for TCP, SNAT for UDP), as Cilium's `bpf-lb-mode`.
    pub mode: String,
    /// DSR tunnel: "ipip" (IPv4-in-IPv4 / IPv6-in-IPv6) or "geneve", as Cilium's
    /// `bpf-lb-dsr-dispatch`. The outer source is `snat_ipv4`/`snat_ipv6`.
    pub dsr_dispatch: String,
    /// UDP port of the Geneve dispatch.
    pub dsr_geneve_port: u16,
    /// The largest IP packet the path to the backends carries (DSR adds 20-56 bytes; what does
    /// not fit is answered with ICMP fragmentation-needed / packet-too-big).
    pub dsr_mtu: u16,
    /// "maglev" (consistent hashing) or "random"; services may override by annotation.
    pub algorithm: String,
    /// Maglev table size: one of Cilium's primes (default 16381).
    pub maglev_table_size: u32,
    /// Seed of the Maglev and flow hashes: appliances behind the same ECMP group must share it.
    pub hash_seed: u64,
    /// SNAT source addresses; default: the first `appliance.node_addresses` entry of the family.
    pub snat_ipv4: Option<String>,
    pub snat_ipv6: Option<String>,
    /// SNAT source ports "LOW-HIGH", outside the kernel's ephemeral range by default.
    pub snat_ports: String,
    /// Conntrack bounds for the appliance (split between the workers), Cilium's defaults.
    pub ct_tcp_max: usize,
    pub ct_other_max: usize,
    /// Conntrack timeouts in seconds, Cilium's defaults.
    pub ct_syn_timeout: u32,
    pub ct_established_timeout: u32,
    pub ct_closing_timeout: u32,
    pub ct_other_timeout: u32,
}

impl Default for LbCfg {
    fn default() -> Self {
        let l = CtLimits::default();
        LbCfg {
            mode: "snat".into(),
            dsr_dispatch: "ipip".into(),
            dsr_geneve_port: sluice_dataplane::wire::geneve::PORT,
            dsr_mtu: 1500,
            algorithm: "maglev".into(),
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
            hash_seed: 0,
            snat_ipv4: None,
            snat_ipv6: None,
            snat_ports: format!("{}-{}", DEFAULT_SNAT_PORTS.0, DEFAULT_SNAT_PORTS.1),
            ct_tcp_max: l.tcp_max,
            ct_other_max: l.other_max,
            ct_syn_timeout: l.timeouts.syn,
            ct_established_timeout: l.timeouts.established,
            ct_closing_timeout: l.timeouts.closing,
            ct_other_timeout: l.timeouts.other,
        }
    }
}

impl Config {
    /// The load-balancing settings the datapath takes.
    pub fn lb_settings(&self) -> Result<LbSettings, ConfigError> {
        let l = &self.lb;
        let mode = match l.mode.as_str() {
            "snat" => LbMode::Snat,
            "dsr" => LbMode::Dsr,
            "hybrid" => LbMode::Hybrid,
            o => {
                return Err(bad(
                    "lb.mode",
                    format!("{o:?} is not \"snat\", \"dsr\" or \"hybrid\""),
                ))
            }
        };
        let dispatch = match l.dsr_dispatch.as_str() {
            "ipip" => Dispatch::Ipip,
            "geneve" if l.dsr_geneve_port != 0 => Dispatch::Geneve {
                port: l.dsr_geneve_port,
            },
            "geneve" => return Err(bad("lb.dsr_geneve_port", "must not be 0")),
            o => {
                return Err(bad(
                    "lb.dsr_dispatch",
                    format!("{o:?} is not \"ipip\" or \"geneve\""),
                ))
            }
        };
        // IPv6 links carry at least 1280 bytes; IPv4 at least 576 (RFC 791), but below 1280 the
        // IPv6 side could not work at all
        if !(1280..=9216).contains(&l.dsr_mtu) {
            return Err(bad(
                "lb.dsr_mtu",
                format!("{} is outside 1280..=9216", l.dsr_mtu),
            ));
        }
        let family =
            |field: &str, set: &Option<String>, v6: bool| -> Result<Option<IpAddr>, ConfigError> {
                match set {
                    Some(s) => {
                        let a = s
                            .parse::<IpAddr>()
                            .map_err(|_| bad(field, format!("{s:?} is not an IP address")))?;
                        if a.is_ipv6() != v6 {
                            return Err(bad(
                                field,
                                format!("{s:?} is not an IPv{} address", if v6 { 6 } else { 4 }),
                            ));
                        }
                        Ok(Some(a))
                    }
                    None => Ok(self
                        .node_addresses()?
                        .into_iter()
                        .find(|a| a.is_ipv6() == v6)),
                }
            };
        let snat_v4 = match family("lb.snat_ipv4", &l.snat_ipv4, false)? {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        let snat_v6 = match family("lb.snat_ipv6", &l.snat_ipv6, true)? {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        };
        let ports = l
            .snat_ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| *a >= 1024 && a <= b)
            .ok_or_else(|| {
                bad(
                    "lb.snat_ports",
                    format!(
                        "{:?} is not a range LOW-HIGH within 1024-65535",
                        l.snat_ports
                    ),
                )
            })?;
        let workers = self.dataplane.queues.max(1) as usize;
        if usize::from(ports.1 - ports.0) + 1 < workers {
            return Err(bad("lb.snat_ports", "fewer ports than workers"));
        }
        Ok(LbSettings {
            snat_v4,
            snat_v6,
            snat_ports: ports,
            seed: l.hash_seed,
            mode,
            dispatch,
            dsr_mtu: l.dsr_mtu,
        })
    }

    /// The Maglev defaults the control plane compiles services with.
    pub fn lb_defaults(&self) -> Result<LbDefaults, ConfigError> {
        let l = &self.lb;
        let algorithm = match l.algorithm.as_str() {
            "maglev" => Algorithm::Maglev,
            "random" => Algorithm::Random,
            o => {
                return Err(bad(
                    "lb.algorithm",
                    format!("{o:?} is not \"maglev\" or \"random\""),
                ))
            }
        };
        if !maglev::TABLE_SIZES.contains(&l.maglev_table_size) {
            return Err(bad(
                "lb.maglev_table_size",
                format!(
                    "{} is not one of {:?}",
                    l.maglev_table_size,
                    maglev::TABLE_SIZES
                ),
            ));
        }
        Ok(LbDefaults {
            algorithm,
            maglev_table_size: l.maglev_table_size,
            seed: l.hash_seed,
        })
    }

    /// Conntrack bounds and timeouts.
    pub fn ct_limits(&self) -> Result<CtLimits, ConfigError> {
        let l = &self.lb;
        // each worker preallocates its share: bound the memory a typo could ask for
        const MAX_ENTRIES: usize = 16 << 20;
        for (field, v) in [
            ("lb.ct_tcp_max", l.ct_tcp_max),
            ("lb.ct_other_max", l.ct_other_max),
        ] {
            if !(1..=MAX_ENTRIES).contains(&v) {
                return Err(bad(field, format!("{v} is outside 1..={MAX_ENTRIES}")));
            }
        }
        for (field, v) in [
            ("lb.ct_syn_timeout", l.ct_syn_timeout),
            ("lb.ct_established_timeout", l.ct_established_timeout),
            ("lb.ct_closing_timeout", l.ct_closing_timeout),
            ("lb.ct_other_timeout", l.ct_other_timeout),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1 second"));
            }
        }
        Ok(CtLimits {
            tcp_max: l.ct_tcp_max,
            other_max: l.ct_other_max,
            timeouts: Timeouts {
                syn: l.ct_syn_timeout,
                established: l.ct_established_timeout,
                closing: l.ct_closing_timeout,
                other: l.ct_other_timeout,
            },
        })
    }
}
