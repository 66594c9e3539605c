//! Rules compiled against the identities: per subject identity and direction, whether policy
//! applies (then default deny) and the policy map of what is allowed and denied.
//!
//! A CIDR in a rule gets a local CIDR identity (Cilium's scope: bit 24 set, never on the wire)
//! that the ipcache maps the prefix to; a rule's CIDR matches every CIDR identity inside it and
//! outside its `except`s. `0.0.0.0/0` and `::/0` also match the world identity.

use super::map::{PolicyMap, PolicyTables, ANY_PEER, ANY_PROTO};
use super::rules::{Cidr, Direction, Entity, Peer, Rule};
use super::selector::{split_key, Op, Selector};
use crate::identity::Labels;
use sluice_dataplane::identity as reserved;
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Cilium's local identity scope: CIDR identities live above it and never leave the node.
pub const LOCAL_SCOPE: u32 = 1 << 24;

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// What the datapath enforces.
    pub tables: PolicyTables,
    /// CIDR identities: (prefix, length) -> identity, for the ipcache.
    pub cidr_identities: BTreeMap<(IpAddr, u8), u32>,
}

fn contains(net: IpAddr, len: u8, a: IpAddr, alen: u8) -> bool {
    if alen < len {
        return false;
    }
    match (net, a) {
        (IpAddr::V4(n), IpAddr::V4(x)) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & m == u32::from(x) & m
        }
        (IpAddr::V6(n), IpAddr::V6(x)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & m == u128::from(x) & m
        }
        _ => false,
    }
}

/// The identities by label (`key=value`, whatever the source), so a selector with a positive
/// requirement looks at the identities that carry one of its values instead of all of them.
struct ByLabel<'a> {
    ids: &'a BTreeMap<u32, Labels>,
    by_kv: HashMap<&'a str, Vec<u32>>,
}

impl<'a> ByLabel<'a> {
    fn new(ids: &'a BTreeMap<u32, Labels>) -> Self {
        let mut by_kv: HashMap<&str, Vec<u32>> = HashMap::new();
        for (id, labels) in ids {
            for l in labels {
                let kv = l.split_once(':').map_or(l.as_str(), |(_, kv)| kv);
                by_kv.entry(kv).or_default().push(*id);
            }
        }
        ByLabel { ids, by_kv }
    }

    /// The identities `s` selects, in identity order.
    fn select(&self, s: &Selector) -> Vec<u32> {
        let candidates: Option<BTreeSet<u32>> = s.reqs.iter().find_map(|r| match &r.op {
            Op::In(vals) => {
                let (_, key) = split_key(&r.key);
                Some(
                    vals.iter()
                        .flat_map(|v| self.by_kv.get(format!("{key}={v}").as_str()))
                        .flatten()
                        .copied()
                        .collect(),
                )
            }
            _ => None,
        });
        let check = |id: &u32| self.ids.get(id).is_some_and(|l| s.matches(l));
        match candidates {
            Some(c) => c.into_iter().filter(check).collect(),
            None => self.ids.keys().copied().filter(check).collect(),
        }
    }
}

/// Compiles `rules` for the label identities `identities` (id -> labels).
pub fn compile(rules: &[Rule], identities: &BTreeMap<u32, Labels>) -> Compiled {
    let by_label = ByLabel::new(identities);
    let mut out = Compiled::default();
    // CIDR identities for every prefix the rules name (including excepts), in prefix order
    let mut prefixes: BTreeSet<(IpAddr, u8)> = BTreeSet::new();
    for r in rules {
        for p in r.peers.iter().flatten() {
            if let Peer::Cidr(c) = p {
                prefixes.insert((c.net, c.len));
                prefixes.extend(c.except.iter().copied());
            }
        }
    }
    for (i, p) in prefixes.into_iter().enumerate() {
        out.cidr_identities.insert(p, LOCAL_SCOPE + 1 + i as u32);
    }
    let cluster: Vec<u32> = identities
        .keys()
        .copied()
        .chain([
            reserved::HOST,
            reserved::REMOTE_NODE,
            reserved::HEALTH,
            reserved::INIT,
            reserved::UNMANAGED,
            reserved::KUBE_APISERVER,
        ])
        .collect();
    let peers_of = |p: &Peer| -> Vec<u32> {
        match p {
            Peer::Endpoints(s) => by_label.select(s),
            Peer::Cidr(Cidr { net, len, except }) => {
                let mut ids: Vec<u32> = out
                    .cidr_identities
                    .iter()
                    .filter(|((a, l), _)| {
                        contains(*net, *len, *a, *l)
                            && !except.iter().any(|(e, el)| contains(*e, *el, *a, *l))
                    })
                    .map(|(_, id)| *id)
                    .collect();
                if *len == 0 {
                    ids.push(reserved::WORLD);
                }
                ids
            }
            Peer::Entity(e) => match e {
                Entity::All => vec![ANY_PEER],
                Entity::World => {
                    let mut ids = vec![reserved::WORLD];
                    ids.extend(out.cidr_identities.values());
                    ids
                }
                Entity::Host => vec![reserved::HOST],
                Entity::RemoteNode => vec![reserved::REMOTE_NODE],
                Entity::Cluster => cluster.clone(),
                Entity::KubeApiserver => vec![reserved::KUBE_APISERVER],
                Entity::Health => vec![reserved::HEALTH],
                Entity::Init => vec![reserved::INIT],
                Entity::Unmanaged => vec![reserved::UNMANAGED],
            },
        }
    };
    // rules in policy-name order, so the policy named for an entry is the same on every rebuild
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by(|a, b| a.policy.cmp(&b.policy));
    for r in sorted {
        let peers: Vec<u32> = match &r.peers {
            None => vec![ANY_PEER],
            Some(ps) => ps.iter().flat_map(&peers_of).collect(),
        };
        for id in by_label.select(&r.subject) {
            let ep = out.tables.endpoints.entry(id).or_default();
            let map = match r.dir {
                Direction::Ingress => ep.ingress.get_or_insert_with(PolicyMap::default),
                Direction::Egress => ep.egress.get_or_insert_with(PolicyMap::default),
            };
            // rules come in policy-name order: the first one names the default deny
            map.enforced_by.get_or_insert_with(|| r.policy.clone());
            for &peer in &peers {
                if r.ports.is_empty() {
                    map.add(peer, ANY_PROTO, 0, u16::MAX, r.deny, None, &r.policy);
                }
                for p in &r.ports {
                    map.add(
                        peer,
                        p.proto,
                        p.lo,
                        p.hi,
                        r.deny,
                        p.http.as_ref(),
                        &r.policy,
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::rules::{cilium_policy, network_policy};
    use super::*;
    use crate::identity::endpoint_labels;
    use serde_json::json;
    use sluice_dataplane::l7::rules::Request;
    use sluice_dataplane::policy::{Decision, HttpVerdict};

    fn id_of(ns: &str, app: &str, ns_team: &str, ids: &mut BTreeMap<u32, Labels>) -> u32 {
        let l = endpoint_labels(
            &[("app".to_string(), app.to_string())].into(),
            ns,
            &[("team".to_string(), ns_team.to_string())].into(),
        );
        let id = 256 + ids.len() as u32;
        ids.insert(id, l);
        id
    }

    /// The truth table of issue 6: allow, deny, CIDR with except, entities, port ranges,
    /// namespace selectors, and Cilium's own example (frontend may reach api only on 8080).
    #[test]
    fn truth_table() {
        let mut ids = BTreeMap::new();
        let fe = id_of("shop", "frontend", "web", &mut ids);
        let api = id_of("shop", "api", "web", &mut ids);
        let other = id_of("shop", "other", "web", &mut ids);
        let db = id_of("shop", "db", "web", &mut ids);
        let tool = id_of("admin", "tool", "ops", &mut ids);
        let api_in_other_ns = id_of("dev", "api", "web", &mut ids);
        let mut rules = Vec::new();
        let cnp = |name: &str, spec: serde_json::Value| {
            cilium_policy(name, "shop", &json!({"spec": spec})).unwrap()
        };
        rules.extend(cnp(
            "api-allow-frontend",
            json!({"endpointSelector": {"matchLabels": {"app": "api"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}),
        ));
        rules.extend(cnp(
            "api-deny-other",
            json!({"endpointSelector": {"matchLabels": {"app": "api"}},
                   "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}]}]}),
        ));
        rules.extend(cnp(
            "frontend-egress",
            json!({"endpointSelector": {"matchLabels": {"app": "frontend"}},
                   "egress": [
                       {"toEndpoints": [{"matchLabels": {"app": "api"}}],
                        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
                       {"toEndpoints": [{"matchLabels": {"app": "api"}}],
                        "toPorts": [{"ports": [{"port": "80", "endPort": 81, "protocol": "TCP"}]}]},
                       {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}],
                        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}),
        ));
        rules.extend(cnp(
            "other-from-world",
            json!({"endpointSelector": {"matchLabels": {"app": "other"}},
                   "ingress": [{"fromEntities": ["world"],
                                "toPorts": [{"ports": [{"port": "8000", "endPort": 8100, "protocol": "TCP"}]}]}]}),
        ));
        rules.extend(
            network_policy(
                "db-from-ops",
                "shop",
                &json!({"spec": {"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                                 "ports": [{"port": 5432}]}]}}),
            )
            .unwrap(),
        );
        // Cilium's L7 example: frontend may only GET /api/users/.* and POST /api/login on 80;
        // db may use port 80 at L4; on 81 an L4-only rule for frontend too (it wins the merge)
        rules.extend(cnp(
            "api-l7",
            json!({"endpointSelector": {"matchLabels": {"app": "api"}},
                   "ingress": [
                       {"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                        "toPorts": [{"ports": [{"port": "80", "endPort": 81, "protocol": "TCP"}],
                                     "rules": {"http": [{"method": "GET", "path": "/api/users/.*"},
                                                        {"method": "POST", "path": "/api/login"}]}}]},
                       {"fromEndpoints": [{"matchLabels": {"app": "db"}}],
                        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}),
        ));
        rules.extend(cnp(
            "api-l4-81",
            json!({"endpointSelector": {"matchLabels": {"app": "api"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                "toPorts": [{"ports": [{"port": "81", "protocol": "TCP"}]}]}]}),
        ));
        let c = compile(&rules, &ids);
        let cidr = |p: &str, l: u8| c.cidr_identities[&(p.parse().unwrap(), l)];
        let (ten, svc_range) = (cidr("10.0.0.0", 8), cidr("10.96.0.0", 12));
        let allow = Decision::Allow;
        let deny = Decision::Deny;
        let open = Decision::Allow("");
        let d = Decision::DefaultDeny;
        let grid = [
            (fe, api, 6, 8080, allow("shop/api-allow-frontend")),
            (fe, api, 6, 82, d("shop/frontend-egress")),
            (fe, api, 6, 80, allow("shop/api-l7")),
            (db, api, 6, 80, allow("shop/api-l7")),
            (fe, api, 17, 8080, d("shop/frontend-egress")),
            (other, api, 6, 8080, deny("shop/api-deny-other")),
            (tool, api, 6, 8080, d("shop/api-allow-frontend")),
            // the namespaced selector: frontend's egress names shop's api only
            (fe, api_in_other_ns, 6, 8080, d("shop/frontend-egress")),
            (tool, db, 6, 5432, allow("shop/db-from-ops")),
            (other, db, 6, 5432, d("shop/db-from-ops")),
            (tool, db, 6, 5433, d("shop/db-from-ops")),
            (tool, db, 17, 5432, d("shop/db-from-ops")),
            (fe, ten, 6, 443, allow("shop/frontend-egress")),
            (fe, svc_range, 6, 443, d("shop/frontend-egress")),
            (fe, reserved::WORLD, 6, 443, d("shop/frontend-egress")),
            (
                reserved::WORLD,
                other,
                6,
                8000,
                allow("shop/other-from-world"),
            ),
            (
                reserved::WORLD,
                other,
                6,
                8100,
                allow("shop/other-from-world"),
            ),
            (reserved::WORLD, other, 6, 8101, d("shop/other-from-world")),
            (ten, other, 6, 8050, allow("shop/other-from-world")),
            (fe, other, 6, 8050, d("shop/frontend-egress")),
            (api, fe, 6, 80, open),
            (tool, api_in_other_ns, 6, 8080, open),
        ];
        for (src, dst, proto, port, want) in grid {
            assert_eq!(
                c.tables.verdict(src, dst, proto, port),
                want,
                "{src} -> {dst} {proto}/{port}"
            );
        }
        // L7: requests of connections allowed at L4
        let l7 = HttpVerdict::Allow("shop/api-l7");
        let l7_deny = HttpVerdict::Deny("shop/api-l7");
        let requests = [
            (fe, 80, "GET", "/api/users/42", l7),
            (fe, 80, "POST", "/api/login", l7),
            (fe, 80, "POST", "/admin/delete", l7_deny),
            (fe, 80, "GET", "/api/login", l7_deny),
            (fe, 80, "GET", "/api/users", l7_deny),
            (fe, 80, "GET", "/v1/api/users/1", l7_deny),
            (db, 80, "POST", "/admin/delete", HttpVerdict::NotInspected),
            (fe, 81, "POST", "/admin/delete", HttpVerdict::NotInspected),
            (fe, 8080, "DELETE", "/", HttpVerdict::NotInspected),
        ];
        for (src, port, method, path, want) in requests {
            let req = Request {
                method: method.as_bytes(),
                path: path.as_bytes(),
                headers: &[],
            };
            assert_eq!(
                c.tables.http(src, api, port, &req),
                want,
                "{src} -> api:{port} {method} {path}"
            );
            let inspected = want != HttpVerdict::NotInspected;
            assert_eq!(c.tables.inspected_by(src, api, port).is_some(), inspected);
        }
    }

    #[test]
    fn an_empty_ingress_rule_denies_all_and_a_ports_only_rule_allows_every_peer() {
        let mut ids = BTreeMap::new();
        let a = id_of("shop", "a", "web", &mut ids);
        let b = id_of("shop", "b", "web", &mut ids);
        let rules = cilium_policy(
            "lockdown",
            "shop",
            &json!({"specs": [
                {"endpointSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]},
                {"endpointSelector": {"matchLabels": {"app": "b"}},
                 "ingress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]}]}]}),
        )
        .unwrap();
        let c = compile(&rules, &ids);
        assert_eq!(
            c.tables.verdict(b, a, 6, 80),
            Decision::DefaultDeny("shop/lockdown")
        );
        assert!(matches!(
            c.tables.verdict(reserved::WORLD, b, 17, 53),
            Decision::Allow(_)
        ));
        assert_eq!(
            c.tables.verdict(a, b, 6, 80),
            Decision::DefaultDeny("shop/lockdown")
        );
    }

    #[test]
    fn a_network_policy_ip_block_honours_its_except() {
        let mut ids = BTreeMap::new();
        let web = id_of("shop", "web", "web", &mut ids);
        let rules = network_policy(
            "web-egress",
            "shop",
            &json!({"spec": {"podSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}),
        )
        .unwrap();
        let c = compile(&rules, &ids);
        let id = |p: &str, l: u8| c.cidr_identities[&(p.parse().unwrap(), l)];
        assert_eq!(
            c.tables.verdict(web, id("10.0.0.0", 8), 6, 443),
            Decision::Allow("shop/web-egress")
        );
        assert_eq!(
            c.tables.verdict(web, id("10.1.0.0", 16), 6, 443),
            Decision::DefaultDeny("shop/web-egress")
        );
        // policyTypes defaulted to Ingress too: nothing may come in
        assert_eq!(
            c.tables.verdict(reserved::WORLD, web, 6, 80),
            Decision::DefaultDeny("shop/web-egress")
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (spec, field) in [
            (
                json!({"endpointSelector": {}, "ingress": [{"fromEntities": ["moon"]}]}),
                "spec.ingress[0].fromEntities[0]",
            ),
            (
                json!({"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.0/33"]}]}),
                "spec.egress[0].toCIDR[0]",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "http"}]}]}]}),
                "spec.ingress[0].toPorts[0].ports[0].port",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "90", "endPort": 80}]}]}]}),
                "spec.ingress[0].toPorts[0].ports[0].endPort",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "ICMP"}]}]}]}),
                "spec.ingress[0].toPorts[0].ports[0].protocol",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                    "rules": {"http": [{"path": "/a", "method": "(GET"}]}}]}]}),
                "spec.ingress[0].toPorts[0].rules.http[0].method",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                    "rules": {"http": [{"headerMatches": [{"name": "x"}]}]}}]}]}),
                "spec.ingress[0].toPorts[0].rules.http[0].headerMatches",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                    "rules": {"kafka": [{"topic": "x"}]}}]}]}),
                "spec.ingress[0].toPorts[0].rules.kafka",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                    "rules": {"http": [{}]}}]}]}),
                "spec.ingress[0].toPorts[0].ports[0].protocol",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"rules": {"http": [{}]}}]}]}),
                "spec.ingress[0].toPorts[0].ports",
            ),
            (
                json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                    "rules": {"http": [{"headers": ["bad header"]}]}}]}]}),
                "spec.ingress[0].toPorts[0].rules.http[0].headers[0]",
            ),
        ] {
            let e = cilium_policy("p", "shop", &json!({"spec": spec})).unwrap_err();
            assert_eq!(e.field, field, "{spec}");
        }
    }
}
