//! Typed views of the fields the datapath uses, one function per kind, each checking every field
//! it reads and naming it on error.

use super::{At, ObjectKey, VResult};
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

fn proto(at: &At, v: &Value, path: &str) -> VResult<Proto> {
    match at.opt_str(v, path)? {
        None | Some("TCP") => Ok(Proto::Tcp),
        Some("UDP") => Ok(Proto::Udp),
        Some("SCTP") => Ok(Proto::Sctp),
        Some(p) => Err(at.bad(
            path,
            format!("{p:?} is not one of \"TCP\", \"UDP\", \"SCTP\""),
        )),
    }
}

/// name, protocol and port of a port entry (Service or EndpointSlice), errors under `prefix`.
fn port_fields(at: &At, p: &Value, prefix: &str) -> VResult<(String, Proto, u16)> {
    let f = |k: &str| format!("{prefix}.{k}");
    let port = at
        .opt_int(p, "port", 1..=65535)
        .map_err(|e| at.bad(f("port"), e.reason))?
        .ok_or_else(|| at.bad(f("port"), "is required"))? as u16;
    let proto = proto(at, p, "protocol").map_err(|e| at.bad(f("protocol"), e.reason))?;
    let name = at
        .opt_str(p, "name")
        .map_err(|e| at.bad(f("name"), e.reason))?
        .unwrap_or("")
        .to_string();
    Ok((name, proto, port))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub lb_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub type_: String,
    pub affinity_timeout_s: Option<u32>,
    pub local_only: bool,
    /// `service.cilium.io/lb-algorithm` (or `sluice.io/lb-algorithm`): None = the appliance's.
    pub algorithm: Option<Algorithm>,
    /// `sluice.io/maglev-table-size`: None = the appliance's.
    pub maglev_table_size: Option<u32>,
    /// `sluice.io/backend-weights`: "ADDR=WEIGHT,..."; backends not named weigh 1.
    pub weights: Vec<(IpAddr, u16)>,
}

pub use sluice_dataplane::state::Algorithm;

pub const LB_ALGORITHM_ANNOTATIONS: [&str; 2] =
    ["service.cilium.io/lb-algorithm", "sluice.io/lb-algorithm"];
pub const MAGLEV_SIZE_ANNOTATION: &str = "sluice.io/maglev-table-size";
pub const WEIGHTS_ANNOTATION: &str = "sluice.io/backend-weights";

/// An annotation's string value; an annotation that is not a string is an error naming it.
pub(crate) fn annotation<'v>(at: &At, v: &'v Value, name: &str) -> VResult<Option<&'v str>> {
    // by key, not by JSON pointer: a pointer to a name with '/' is built per lookup, and the
    // service view reads four of them (a few percent of a full apply)
    let found = v
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(name));
    match found {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(at.bad(format!("metadata.annotations[{name}]"), "must be a string")),
    }
}

/// Backend address -> weight.
type Weights = Vec<(IpAddr, u16)>;

fn lb_annotations(at: &At, v: &Value) -> VResult<(Option<Algorithm>, Option<u32>, Weights)> {
    let mut algorithm = None;
    for name in LB_ALGORITHM_ANNOTATIONS {
        if let Some(a) = annotation(at, v, name)? {
            algorithm = Some(match a {
                "maglev" => Algorithm::Maglev,
                "random" => Algorithm::Random,
                o => {
                    return Err(at.bad(
                        format!("metadata.annotations[{name}]"),
                        format!("{o:?} is not \"maglev\" or \"random\""),
                    ))
                }
            });
        }
    }
    let field = || format!("metadata.annotations[{MAGLEV_SIZE_ANNOTATION}]");
    let size = match annotation(at, v, MAGLEV_SIZE_ANNOTATION)? {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .ok()
                .filter(|m| sluice_dataplane::lb::maglev::TABLE_SIZES.contains(m))
                .ok_or_else(|| {
                    at.bad(
                        field(),
                        format!(
                            "{s:?} is not one of the Maglev table sizes {:?}",
                            sluice_dataplane::lb::maglev::TABLE_SIZES
                        ),
                    )
                })?,
        ),
    };
    let mut weights = Vec::new();
    if let Some(w) = annotation(at, v, WEIGHTS_ANNOTATION)? {
        let field = format!("metadata.annotations[{WEIGHTS_ANNOTATION}]");
        for item in w.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parsed = item.split_once('=').and_then(|(a, n)| {
                Some((
                    a.trim().parse::<IpAddr>().ok()?,
                    n.trim().parse::<u16>().ok()?,
                ))
            });
            match parsed {
                Some(p) => weights.push(p),
                None => {
                    return Err(at.bad(
                        field,
                        format!("{item:?} is not ADDRESS=WEIGHT (weight 0-65535)"),
                    ))
                }
            }
        }
    }
    Ok((algorithm, size, weights))
}

/// Default ClientIP affinity timeout (Kubernetes' default: 3 hours).
const DEFAULT_AFFINITY_S: i64 = 10800;

pub fn service(key: &ObjectKey, v: &Value) -> VResult<ServiceView> {
    let at = At { object: key };
    let type_ = at
        .opt_str(v, "spec.type")?
        .unwrap_or("ClusterIP")
        .to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&type_.as_str()) {
        return Err(at.bad(
            "spec.type",
            format!("{type_:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
        ));
    }
    let mut cluster_ips = Vec::new();
    let mut seen = Vec::new();
    if let Some(ip) = at.opt_str(v, "spec.clusterIP")? {
        seen.push(("spec.clusterIP".to_string(), ip.to_string()));
    }
    for (i, ip) in at.opt_array(v, "spec.clusterIPs")?.iter().enumerate() {
        let f = format!("spec.clusterIPs[{i}]");
        let s = ip.as_str().ok_or_else(|| at.bad(&f, "must be a string"))?;
        seen.push((f, s.to_string()));
    }
    for (f, s) in seen {
        if s.is_empty() || s == "None" {
            continue; // unallocated, or headless: no frontend
        }
        let ip = at.ip(&s, &f)?;
        if !cluster_ips.contains(&ip) {
            cluster_ips.push(ip);
        }
    }
    let mut external_ips = Vec::new();
    for (i, ip) in at.opt_array(v, "spec.externalIPs")?.iter().enumerate() {
        let f = format!("spec.externalIPs[{i}]");
        external_ips.push(at.ip(
            ip.as_str().ok_or_else(|| at.bad(&f, "must be a string"))?,
            &f,
        )?);
    }
    let mut lb_ips = Vec::new();
    for (i, ing) in at
        .opt_array(v, "status.loadBalancer.ingress")?
        .iter()
        .enumerate()
    {
        if let Some(ip) = at.opt_str(ing, "ip")? {
            lb_ips.push(at.ip(ip, &format!("status.loadBalancer.ingress[{i}].ip"))?);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in at.opt_array(v, "spec.ports")?.iter().enumerate() {
        let f = |k: &str| format!("spec.ports[{i}].{k}");
        let (name, proto, port) = port_fields(&at, p, &format!("spec.ports[{i}]"))?;
        let node_port = at
            .opt_int(p, "nodePort", 0..=65535)
            .map_err(|e| at.bad(f("nodePort"), e.reason))?
            .filter(|n| *n > 0)
            .map(|n| n as u16);
        if ports
            .iter()
            .any(|q: &ServicePort| q.port == port && q.proto == proto)
        {
            return Err(at.bad(f("port"), format!("{port}/{proto:?} is listed twice")));
        }
        ports.push(ServicePort {
            name,
            proto,
            port,
            node_port,
        });
    }
    let affinity = match at.opt_str(v, "spec.sessionAffinity")? {
        None | Some("None") => None,
        Some("ClientIP") => Some(
            at.opt_int(
                v,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                1..=86400,
            )?
            .unwrap_or(DEFAULT_AFFINITY_S) as u32,
        ),
        Some(o) => {
            return Err(at.bad(
                "spec.sessionAffinity",
                format!("{o:?} is not \"None\" or \"ClientIP\""),
            ))
        }
    };
    let local_only = match at.opt_str(v, "spec.externalTrafficPolicy")? {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(o) => {
            return Err(at.bad(
                "spec.externalTrafficPolicy",
                format!("{o:?} is not \"Cluster\" or \"Local\""),
            ))
        }
    };
    let (algorithm, maglev_table_size, weights) = lb_annotations(&at, v)?;
    Ok(ServiceView {
        cluster_ips,
        external_ips,
        lb_ips,
        ports,
        type_,
        affinity_timeout_s: affinity,
        local_only,
        algorithm,
        maglev_table_size,
        weights,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addrs: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceView {
    /// The service it belongs to (label kubernetes.io/service-name), in the slice's namespace.
    pub service: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub fn endpoint_slice(key: &ObjectKey, v: &Value) -> VResult<EndpointSliceView> {
    let at = At { object: key };
    let service = v
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            at.bad(
                format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                "is required: it names the Service this slice serves",
            )
        })?
        .to_string();
    let family = match at.opt_str(v, "addressType")? {
        Some("IPv4") => Some(false),
        Some("IPv6") => Some(true),
        Some("FQDN") => None,
        Some(o) => return Err(at.bad("addressType", format!("{o:?} is not IPv4, IPv6 or FQDN"))),
        None => return Err(at.bad("addressType", "is required")),
    };
    let mut endpoints = Vec::new();
    for (i, e) in at.opt_array(v, "endpoints")?.iter().enumerate() {
        let mut addrs = Vec::new();
        for (j, a) in at.opt_array(e, "addresses")?.iter().enumerate() {
            // the path only for an error: a slice has many addresses, and 10,000 of them are
            // read at each full apply
            let f = || format!("endpoints[{i}].addresses[{j}]");
            let s = a.as_str().ok_or_else(|| at.bad(f(), "must be a string"))?;
            let Some(v6) = family else { continue };
            let ip = s
                .parse::<IpAddr>()
                .map_err(|_| at.bad(f(), format!("{s:?} is not a valid IP address")))?;
            if ip.is_ipv6() != v6 {
                return Err(at.bad(
                    f(),
                    format!(
                        "{s} is not an address of addressType {}",
                        if v6 { "IPv6" } else { "IPv4" }
                    ),
                ));
            }
            addrs.push(ip);
        }
        let conditions = e.get("conditions").unwrap_or(&Value::Null);
        let c = |k: &str| {
            at.opt_bool(conditions, k)
                .map_err(|x| at.bad(format!("endpoints[{i}].conditions.{k}"), x.reason))
        };
        // Kubernetes: a missing `ready` is unknown and read as ready; `serving` defaults to ready.
        let ready = c("ready")?.unwrap_or(true);
        let serving = c("serving")?.unwrap_or(ready);
        let terminating = c("terminating")?.unwrap_or(false);
        let node = at.opt_str(e, "nodeName")?.map(str::to_string);
        endpoints.push(SliceEndpoint {
            addrs,
            ready,
            serving,
            terminating,
            node,
        });
    }
    let mut ports = Vec::new();
    for (i, p) in at.opt_array(v, "ports")?.iter().enumerate() {
        let (name, proto, port) = port_fields(&at, p, &format!("ports[{i}]"))?;
        ports.push(SlicePort { name, proto, port });
    }
    Ok(EndpointSliceView {
        service,
        endpoints,
        ports,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub addrs: Vec<IpAddr>,
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    pub vtep_mac: Option<[u8; 6]>,
}

/// Node annotation with the MAC of the node's tunnel device (like flannel's VtepMAC).
pub const VTEP_MAC_ANNOTATION: &str = "sluice.io/vtep-mac";

pub fn node(key: &ObjectKey, v: &Value) -> VResult<NodeView> {
    let at = At { object: key };
    let mut addrs = Vec::new();
    for (i, a) in at.opt_array(v, "status.addresses")?.iter().enumerate() {
        let t = at.opt_str(a, "type")?.unwrap_or("");
        if t == "InternalIP" || t == "ExternalIP" {
            let f = format!("status.addresses[{i}].address");
            let s = at
                .opt_str(a, "address")?
                .ok_or_else(|| at.bad(&f, "is required"))?;
            addrs.push(at.ip(s, &f)?);
        }
    }
    let mut pod_cidrs = Vec::new();
    if let Some(c) = at.opt_str(v, "spec.podCIDR")? {
        pod_cidrs.push(at.cidr(c, "spec.podCIDR")?);
    }
    for (i, c) in at.opt_array(v, "spec.podCIDRs")?.iter().enumerate() {
        let f = format!("spec.podCIDRs[{i}]");
        let c = at.cidr(
            c.as_str().ok_or_else(|| at.bad(&f, "must be a string"))?,
            &f,
        )?;
        if !pod_cidrs.contains(&c) {
            pod_cidrs.push(c);
        }
    }
    let vtep_mac = match annotation(&at, v, VTEP_MAC_ANNOTATION)? {
        None => None,
        Some(m) => Some(
            sluice_dataplane::wire::ethernet::parse_mac(m).ok_or_else(|| {
                at.bad(
                    format!("metadata.annotations[{VTEP_MAC_ANNOTATION}]"),
                    format!("{m:?} is not a MAC address like 02:00:00:00:00:01"),
                )
            })?,
        ),
    };
    Ok(NodeView {
        addrs,
        pod_cidrs,
        vtep_mac,
    })
}

pub fn pod(key: &ObjectKey, v: &Value) -> VResult<Vec<IpAddr>> {
    let at = At { object: key };
    let mut ips = Vec::new();
    if let Some(ip) = at.opt_str(v, "status.podIP")? {
        ips.push(at.ip(ip, "status.podIP")?);
    }
    for (i, p) in at.opt_array(v, "status.podIPs")?.iter().enumerate() {
        let f = format!("status.podIPs[{i}].ip");
        let ip = at.ip(
            at.opt_str(p, "ip")?
                .ok_or_else(|| at.bad(&f, "is required"))?,
            &f,
        )?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The annotation Cilium's bandwidth manager reads.
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// A pod's egress rate limit in bits/s (`kubernetes.io/egress-bandwidth`, a Kubernetes
/// quantity: "10M" is 10 Mbit/s; k M G T decimal, Ki Mi Gi Ti binary), if it has one.
pub fn pod_egress_bandwidth(key: &ObjectKey, v: &Value) -> VResult<Option<u64>> {
    let at = At { object: key };
    let field = format!("metadata.annotations[{EGRESS_BANDWIDTH}]");
    let Some(q) = v
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(EGRESS_BANDWIDTH))
    else {
        return Ok(None);
    };
    let s = q
        .as_str()
        .ok_or_else(|| at.bad(&field, "must be a string such as \"10M\""))?;
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => {
            return Err(at.bad(
                &field,
                format!("{s:?}: unknown unit {unit:?} (k, M, G, T, Ki, Mi, Gi, Ti)"),
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| at.bad(&field, format!("{s:?} is not a quantity such as \"10M\"")))?;
    let bps = n * mult;
    // Cilium's bounds: at least 1 kbit/s, at most 100 Gbit/s
    if !(1e3..=1e11).contains(&bps) {
        return Err(at.bad(&field, format!("{s:?} is outside 1k..100G bits/s")));
    }
    Ok(Some(bps as u64))
}

/// Policies: read in full into the policy engine's rules (every error names its field).
pub fn policy(key: &ObjectKey, v: &Value) -> VResult<Vec<crate::policy::rules::Rule>> {
    let at = At { object: key };
    for f in ["spec", "specs"] {
        if let Some(s) = v.get(f) {
            let ok = match f {
                "spec" => s.is_object() || s.is_null(),
                _ => s.is_array() || s.is_null(),
            };
            if !ok {
                return Err(at.bad(
                    f,
                    if f == "spec" {
                        "must be a mapping"
                    } else {
                        "must be a list"
                    },
                ));
            }
        }
    }
    let rules = match key.kind {
        super::Kind::NetworkPolicy => {
            crate::policy::rules::network_policy(&key.name, &key.namespace, v)
        }
        _ => crate::policy::rules::cilium_policy(&key.name, &key.namespace, v),
    };
    rules.map_err(|e| at.bad(&e.field, e.reason))
}
