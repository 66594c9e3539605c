//! CiliumNetworkPolicy (cilium.io/v2) and Kubernetes NetworkPolicy read into one rule model,
//! with Cilium's semantics for namespaces: a namespaced policy selects endpoints of its own
//! namespace, and its peer selectors do too unless they name a namespace themselves.

use super::selector::{Selector, SelectorError};
use crate::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use serde_json::Value;
use sluice_dataplane::l7::rules::{HeaderRule, HttpRule, Pattern};
use sluice_dataplane::policy::HttpRules;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Cilium's entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    World,
    Host,
    RemoteNode,
    Cluster,
    All,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub len: u8,
    pub except: Vec<(IpAddr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Endpoints(Selector),
    Cidr(Cidr),
    Entity(Entity),
}

/// Protocol 0 = any; ports inclusive; the HTTP rules of their `toPorts` entry, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub proto: u8,
    pub lo: u16,
    pub hi: u16,
    pub http: Option<HttpRules>,
}

impl Ports {
    pub const ALL: Ports = Ports {
        proto: 0,
        lo: 0,
        hi: u16::MAX,
        http: None,
    };
}

/// One allow or deny rule: `subject` endpoints, in `dir`, with any of `peers` (None: every
/// peer), on any of `ports` (empty: every port and protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// "namespace/name" of the policy.
    pub policy: Arc<str>,
    pub subject: Selector,
    pub dir: Direction,
    pub deny: bool,
    pub peers: Option<Vec<Peer>>,
    pub ports: Vec<Ports>,
}

impl Rule {
    /// A rule that allows nothing but puts `subject` under policy in `dir` (default deny).
    fn enforce_only(policy: &Arc<str>, subject: &Selector, dir: Direction) -> Rule {
        Rule {
            policy: policy.clone(),
            subject: subject.clone(),
            dir,
            deny: false,
            peers: Some(Vec::new()),
            ports: Vec::new(),
        }
    }
}

/// A policy that could not be read: the field (from the object's root) and why.
pub type RuleError = SelectorError;

fn err(field: impl Into<String>, reason: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn list<'v>(v: &'v Value, key: &str, field: &str) -> Result<&'v [Value], RuleError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(err(format!("{field}.{key}"), "must be a list")),
    }
}

fn parse_cidr(s: &str, field: &str) -> Result<(IpAddr, u8), RuleError> {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = a
        .parse()
        .map_err(|_| err(field, format!("{s:?} is not a CIDR")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if l.is_empty() {
        max
    } else {
        l.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| err(field, format!("{s:?} has a bad prefix length")))?
    };
    Ok((addr, len))
}

/// `{cidr, except: [...]}`: Cilium's CIDRSet and Kubernetes' ipBlock have the same shape.
fn cidr_set(v: &Value, field: &str) -> Result<Cidr, RuleError> {
    let s = v
        .get("cidr")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{field}.cidr"), "is required"))?;
    let (net, len) = parse_cidr(s, &format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (k, e) in list(v, "except", field)?.iter().enumerate() {
        let ef = format!("{field}.except[{k}]");
        let e = e.as_str().ok_or_else(|| err(&ef, "must be a string"))?;
        except.push(parse_cidr(e, &ef)?);
    }
    Ok(Cidr { net, len, except })
}

fn entity(s: &str, field: &str) -> Result<Entity, RuleError> {
    Ok(match s {
        "world" => Entity::World,
        "host" => Entity::Host,
        "remote-node" => Entity::RemoteNode,
        "cluster" => Entity::Cluster,
        "all" => Entity::All,
        "kube-apiserver" => Entity::KubeApiserver,
        "health" => Entity::Health,
        "init" => Entity::Init,
        "unmanaged" => Entity::Unmanaged,
        o => return Err(err(field, format!("{o:?} is not a known entity"))),
    })
}

fn proto(s: Option<&str>, field: &str, default: u8) -> Result<u8, RuleError> {
    Ok(match s {
        None => default,
        Some("TCP") => 6,
        Some("UDP") => 17,
        Some("SCTP") => 132,
        Some("ANY") => 0,
        Some(o) => return Err(err(field, format!("{o:?} is not TCP, UDP, SCTP or ANY"))),
    })
}

/// A port given as a number or a numeric string (Cilium writes "80"); named ports are refused.
fn port(v: Option<&Value>, field: &str) -> Result<Option<u16>, RuleError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        // a name (not a number) is refused below with its own reason
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n <= 65535 => Ok(Some(n as u16)),
        _ if matches!(v, Some(Value::String(_))) => {
            Err(err(field, "named ports are not supported: give the number"))
        }
        _ => Err(err(field, "must be a port number 0-65535")),
    }
}

fn port_range(p: &Value, field: &str, default_proto: u8) -> Result<Ports, RuleError> {
    let proto = proto(
        p.get("protocol").and_then(Value::as_str),
        &format!("{field}.protocol"),
        default_proto,
    )?;
    let lo = port(p.get("port"), &format!("{field}.port"))?;
    let end = port(p.get("endPort"), &format!("{field}.endPort"))?;
    Ok(match (lo, end) {
        (None | Some(0), None) => Ports {
            proto,
            ..Ports::ALL
        },
        (Some(lo), None) => Ports {
            proto,
            lo,
            hi: lo,
            http: None,
        },
        (Some(lo), Some(hi)) if hi >= lo => Ports {
            proto,
            lo,
            hi,
            http: None,
        },
        (Some(_), Some(_)) => {
            return Err(err(format!("{field}.endPort"), "must not be below port"))
        }
        (None, Some(_)) => return Err(err(format!("{field}.port"), "endPort needs a port")),
    })
}

/// Reads `toPorts[].rules`: HTTP rules (`method`, `path`, `host`, `headers`); every other kind
/// of L7 rule is refused rather than ignored (ignoring one would allow what it restricts).
fn http_rules(v: &Value, field: &str) -> Result<HttpRules, RuleError> {
    let obj = v
        .as_object()
        .ok_or_else(|| err(field, "must be an object"))?;
    if let Some(k) = obj.keys().find(|k| *k != "http") {
        return Err(err(
            format!("{field}.{k}"),
            "only HTTP rules are supported (no kafka, dns or l7proto rules)",
        ));
    }
    let mut out = Vec::new();
    for (i, r) in list(v, "http", field)?.iter().enumerate() {
        let rf = format!("{field}.http[{i}]");
        let o = r.as_object().ok_or_else(|| err(&rf, "must be an object"))?;
        let mut rule = HttpRule::default();
        for (k, val) in o {
            let kf = format!("{rf}.{k}");
            let text = || val.as_str().ok_or_else(|| err(&kf, "must be a string"));
            let pattern = |s: &str| Pattern::new(s).map(Some).map_err(|e| err(&kf, e));
            match k.as_str() {
                "method" => rule.method = pattern(text()?)?,
                "path" => rule.path = pattern(text()?)?,
                "host" => rule.host = pattern(text()?)?,
                "headers" => {
                    for (j, h) in list(r, "headers", &rf)?.iter().enumerate() {
                        let hf = format!("{kf}[{j}]");
                        let s = h.as_str().ok_or_else(|| err(&hf, "must be a string"))?;
                        rule.headers
                            .push(HeaderRule::parse(s).map_err(|e| err(&hf, e))?);
                    }
                }
                _ => {
                    return Err(err(
                        kf,
                        "not supported (method, path, host and headers are)",
                    ))
                }
            }
        }
        out.push(rule);
    }
    Ok(out.into())
}

/// Restricts a namespaced policy's selector to its namespace unless it names one itself.
fn in_namespace(s: Selector, ns: &str) -> Selector {
    let names_ns = s.reqs.iter().any(|r| {
        let k = r.key.split_once(':').map_or(r.key.as_str(), |(_, k)| k);
        k == NAMESPACE_LABEL || k.starts_with(NAMESPACE_LABELS_PREFIX)
    });
    if names_ns || ns.is_empty() {
        s
    } else {
        s.and(NAMESPACE_LABEL, ns)
    }
}

/// The rules of a CiliumNetworkPolicy (`spec` and/or `specs`) in namespace `ns`.
pub fn cilium_policy(name: &str, ns: &str, v: &Value) -> Result<Vec<Rule>, RuleError> {
    let policy: Arc<str> = format!("{ns}/{name}").into();
    let mut specs: Vec<(String, &Value)> = Vec::new();
    if let Some(s) = v.get("spec").filter(|s| !s.is_null()) {
        specs.push(("spec".into(), s));
    }
    for (i, s) in list(v, "specs", "")?.iter().enumerate() {
        specs.push((format!("specs[{i}]"), s));
    }
    let mut rules = Vec::new();
    for (f, spec) in specs {
        if spec.get("nodeSelector").is_some_and(|n| !n.is_null()) {
            return Err(err(
                format!("{f}.nodeSelector"),
                "host policies are not supported",
            ));
        }
        let subject = in_namespace(
            Selector::parse(
                spec.get("endpointSelector"),
                &format!("{f}.endpointSelector"),
            )?,
            ns,
        );
        for (key, dir, deny, pfx) in [
            ("ingress", Direction::Ingress, false, "from"),
            ("ingressDeny", Direction::Ingress, true, "from"),
            ("egress", Direction::Egress, false, "to"),
            ("egressDeny", Direction::Egress, true, "to"),
        ] {
            for (i, r) in list(spec, key, &f)?.iter().enumerate() {
                let rf = format!("{f}.{key}[{i}]");
                let mut peers = Vec::new();
                let mut any_peer_field = false;
                for (j, s) in list(r, &format!("{pfx}Endpoints"), &rf)?.iter().enumerate() {
                    any_peer_field = true;
                    let sel = Selector::parse(Some(s), &format!("{rf}.{pfx}Endpoints[{j}]"))?;
                    peers.push(Peer::Endpoints(in_namespace(sel, ns)));
                }
                for (j, c) in list(r, &format!("{pfx}CIDR"), &rf)?.iter().enumerate() {
                    any_peer_field = true;
                    let cf = format!("{rf}.{pfx}CIDR[{j}]");
                    let s = c.as_str().ok_or_else(|| err(&cf, "must be a string"))?;
                    let (net, len) = parse_cidr(s, &cf)?;
                    peers.push(Peer::Cidr(Cidr {
                        net,
                        len,
                        except: Vec::new(),
                    }));
                }
                for (j, c) in list(r, &format!("{pfx}CIDRSet"), &rf)?.iter().enumerate() {
                    any_peer_field = true;
                    let cf = format!("{rf}.{pfx}CIDRSet[{j}]");
                    peers.push(Peer::Cidr(cidr_set(c, &cf)?));
                }
                for (j, e) in list(r, &format!("{pfx}Entities"), &rf)?.iter().enumerate() {
                    any_peer_field = true;
                    let ef = format!("{rf}.{pfx}Entities[{j}]");
                    let s = e.as_str().ok_or_else(|| err(&ef, "must be a string"))?;
                    peers.push(Peer::Entity(entity(s, &ef)?));
                }
                let mut ports = Vec::new();
                for (j, tp) in list(r, "toPorts", &rf)?.iter().enumerate() {
                    let tf = format!("{rf}.toPorts[{j}]");
                    let l7 = tp.get("rules").filter(|x| !x.is_null());
                    if l7.is_some() && deny {
                        return Err(err(
                            format!("{tf}.rules"),
                            "deny rules cannot have L7 rules",
                        ));
                    }
                    let http = l7
                        .map(|r| http_rules(r, &format!("{tf}.rules")))
                        .transpose()?;
                    let tp_ports = list(tp, "ports", &tf)?;
                    if http.is_some() && tp_ports.is_empty() {
                        return Err(err(format!("{tf}.ports"), "L7 rules need ports"));
                    }
                    for (k, p) in tp_ports.iter().enumerate() {
                        let pf = format!("{tf}.ports[{k}]");
                        let mut range = port_range(p, &pf, 0)?;
                        if http.is_some() && !matches!(range.proto, 0 | 6) {
                            return Err(err(
                                format!("{pf}.protocol"),
                                "HTTP rules apply to TCP ports",
                            ));
                        }
                        range.http.clone_from(&http);
                        ports.push(range);
                    }
                }
                // Cilium: a rule with ports but no peer field applies to every peer on those
                // ports; an empty rule (`- {}`) allows nothing but puts the endpoint under policy
                let peers = if any_peer_field || ports.is_empty() {
                    Some(peers)
                } else {
                    None
                };
                rules.push(Rule {
                    policy: policy.clone(),
                    subject: subject.clone(),
                    dir,
                    deny,
                    peers,
                    ports,
                });
            }
            // `ingress: []` still puts the endpoint under policy in that direction
            if !deny
                && spec.get(key).is_some_and(Value::is_array)
                && list(spec, key, &f)?.is_empty()
            {
                rules.push(Rule::enforce_only(&policy, &subject, dir));
            }
        }
    }
    Ok(rules)
}

/// Kubernetes namespace selectors name namespace labels; as Cilium labels they are
/// `io.cilium.k8s.namespace.labels.KEY`.
fn namespace_selector(mut s: Selector) -> Selector {
    for r in &mut s.reqs {
        r.key = format!("{NAMESPACE_LABELS_PREFIX}{}", r.key);
    }
    s
}

/// The rules of a Kubernetes NetworkPolicy in namespace `ns`.
pub fn network_policy(name: &str, ns: &str, v: &Value) -> Result<Vec<Rule>, RuleError> {
    let policy: Arc<str> = format!("{ns}/{name}").into();
    let spec = v.get("spec").ok_or_else(|| err("spec", "is required"))?;
    let subject =
        Selector::parse(spec.get("podSelector"), "spec.podSelector")?.and(NAMESPACE_LABEL, ns);
    let has = |k: &str| spec.get(k).is_some_and(|x| !x.is_null());
    let types: Vec<Direction> = match spec.get("policyTypes").and_then(Value::as_array) {
        Some(t) => t
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_str() {
                Some("Ingress") => Ok(Direction::Ingress),
                Some("Egress") => Ok(Direction::Egress),
                _ => Err(err(
                    format!("spec.policyTypes[{i}]"),
                    "must be Ingress or Egress",
                )),
            })
            .collect::<Result<_, _>>()?,
        // Kubernetes' default: Ingress always, Egress when egress rules are given
        None if has("egress") => vec![Direction::Ingress, Direction::Egress],
        None => vec![Direction::Ingress],
    };
    let mut rules = Vec::new();
    for dir in types {
        let (key, pfx) = match dir {
            Direction::Ingress => ("ingress", "from"),
            Direction::Egress => ("egress", "to"),
        };
        // under policy in this direction even with no rule: default deny
        rules.push(Rule::enforce_only(&policy, &subject, dir));
        for (i, r) in list(spec, key, "spec")?.iter().enumerate() {
            let rf = format!("spec.{key}[{i}]");
            let from = list(r, pfx, &rf)?;
            let peers = if from.is_empty() {
                None // every peer
            } else {
                let mut peers = Vec::new();
                for (j, p) in from.iter().enumerate() {
                    let pf = format!("{rf}.{pfx}[{j}]");
                    if let Some(b) = p.get("ipBlock").filter(|b| !b.is_null()) {
                        peers.push(Peer::Cidr(cidr_set(b, &format!("{pf}.ipBlock"))?));
                        continue;
                    }
                    let pods = p.get("podSelector").filter(|x| !x.is_null());
                    let nss = p.get("namespaceSelector").filter(|x| !x.is_null());
                    let sel = match (pods, nss) {
                        (None, None) => {
                            return Err(err(&pf, "needs podSelector, namespaceSelector or ipBlock"))
                        }
                        (Some(ps), None) => {
                            Selector::parse(Some(ps), &format!("{pf}.podSelector"))?
                                .and(NAMESPACE_LABEL, ns)
                        }
                        (ps, Some(n)) => {
                            let mut s = namespace_selector(Selector::parse(
                                Some(n),
                                &format!("{pf}.namespaceSelector"),
                            )?);
                            if ps.is_some() {
                                let p = Selector::parse(ps, &format!("{pf}.podSelector"))?;
                                s.reqs.extend(p.reqs);
                            }
                            // a namespace selector matches pods only (not the world)
                            s.reqs.push(super::selector::Requirement {
                                key: NAMESPACE_LABEL.into(),
                                op: super::selector::Op::Exists,
                            });
                            s
                        }
                    };
                    peers.push(Peer::Endpoints(sel));
                }
                Some(peers)
            };
            let mut ports = Vec::new();
            for (j, p) in list(r, "ports", &rf)?.iter().enumerate() {
                ports.push(port_range(p, &format!("{rf}.ports[{j}]"), 6)?);
            }
            rules.push(Rule {
                policy: policy.clone(),
                subject: subject.clone(),
                dir,
                deny: false,
                peers,
                ports,
            });
        }
    }
    Ok(rules)
}
