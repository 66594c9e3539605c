//! What a change of a Pod, Node, Namespace or policy rebuilds (identities, the ipcache, the
//! policy, the node table), from the facts the store took of each object when it was put.

use super::Store;
use crate::identity::{self, IdentityView, Labels};
use crate::model::{self, Kind, ObjectKey};
use sluice_dataplane::state::{HashMap, NodeEntry};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// What the store reads again of an object whose kind it rebuilds whole on a change: the
/// identities from every Pod and Namespace, the node table from every Node, the policy from
/// every policy. Taken when the object is put, so that those rebuilds parse nothing (the
/// objects are kept as text, `model::Object`).
#[derive(Debug, PartialEq)]
pub(super) enum Facts {
    Namespace {
        labels: BTreeMap<String, String>,
    },
    Pod {
        labels: BTreeMap<String, String>,
        ips: Vec<IpAddr>,
        egress_bps: Option<u64>,
    },
    Node(model::NodeView),
    Policy(Vec<crate::policy::rules::Rule>),
}

impl Store {
    /// Rebuilds what objects of `kind` feed (called when the facts of one changed).
    pub(super) fn after_change(&mut self, kind: Kind) {
        if kind == Kind::Node {
            self.rebuild_nodes();
        }
        if matches!(
            kind,
            Kind::Node
                | Kind::Pod
                | Kind::Namespace
                | Kind::NetworkPolicy
                | Kind::CiliumNetworkPolicy
        ) {
            self.rebuild_identities();
        }
    }

    pub(super) fn set_facts(&mut self, key: &ObjectKey, facts: Option<Facts>) {
        match facts {
            Some(f) => self.facts.insert(key.clone(), f),
            None => self.facts.remove(key),
        };
    }

    /// The facts of every object of `kind`, in key order.
    fn facts_of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ObjectKey, &Facts)> {
        let first = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.facts
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind)
    }

    /// Identities of every pod's label set, and the ipcache: pod addresses -> their identity,
    /// other nodes' addresses -> remote-node, this appliance's own -> host.
    pub(super) fn rebuild_identities(&mut self) {
        self.identity_rebuilds += 1;
        let ns_labels: BTreeMap<&str, &BTreeMap<String, String>> = self
            .facts_of_kind(Kind::Namespace)
            .filter_map(|(k, f)| match f {
                Facts::Namespace { labels } => Some((k.name.as_str(), labels)),
                _ => None,
            })
            .collect();
        let no_labels = BTreeMap::new();
        let mut bandwidth = HashMap::new();
        // Pods of one ReplicaSet share a label set: each distinct (namespace, labels) is built
        // and looked up once (at 15,000 Pods a rebuild was ~130 ms, most of it building and
        // comparing the same sets again).
        let mut set_of: HashMap<(&str, &BTreeMap<String, String>), usize> = HashMap::new();
        let mut sets: Vec<Labels> = Vec::new();
        // (pod, its label set in `sets`, its addresses)
        let mut pods: Vec<(String, usize, Vec<IpAddr>)> = Vec::new();
        for (k, f) in self.facts_of_kind(Kind::Pod) {
            let Facts::Pod {
                labels,
                ips,
                egress_bps,
            } = f
            else {
                continue;
            };
            let ns = ns_labels
                .get(k.namespace.as_str())
                .copied()
                .unwrap_or(&no_labels);
            if let Some(bps) = egress_bps {
                for a in ips {
                    bandwidth.insert(*a, *bps);
                }
            }
            let set = *set_of
                .entry((k.namespace.as_str(), labels))
                .or_insert_with(|| {
                    sets.push(identity::endpoint_labels(labels, &k.namespace, ns));
                    sets.len() - 1
                });
            pods.push((format!("{}/{}", k.namespace, k.name), set, ips.clone()));
        }
        drop(set_of);
        self.identities.resolve(&sets.iter().cloned().collect());
        let ids: Vec<Option<u32>> = sets.iter().map(|l| self.identities.get(l)).collect();
        let id_of = |set: usize| ids.get(set).copied().flatten();
        self.tables.egress_bandwidth = Arc::new(bandwidth);
        self.endpoints_of.clear();
        self.pod_of_ip.clear();
        for (name, set, ips) in &pods {
            if let Some(id) = id_of(*set) {
                self.endpoints_of.entry(id).or_default().push(name.clone());
            }
            for a in ips {
                self.pod_of_ip.insert(*a, name.clone());
            }
        }
        let compiled = self.compile_policy();
        // the ipcache: CIDRs of the rules first, then nodes and this appliance, then pods, so
        // that a more specific entry for the same prefix (a pod's /32) wins
        let mut ipcache = sluice_dataplane::state::PrefixTable::default();
        for ((a, len), id) in &compiled.cidr_identities {
            ipcache.insert(*a, *len, *id);
        }
        let host = |a: &IpAddr| if a.is_ipv4() { 32 } else { 128 };
        for n in &self.tables.nodes {
            let id = if Some(&*n.name) == self.local_node.as_deref() {
                sluice_dataplane::identity::HOST
            } else {
                sluice_dataplane::identity::REMOTE_NODE
            };
            for a in &n.addrs {
                ipcache.insert(*a, host(a), id);
            }
        }
        for a in &self.node_addresses {
            ipcache.insert(*a, host(a), sluice_dataplane::identity::HOST);
        }
        for (_, set, ips) in &pods {
            if let Some(id) = id_of(*set) {
                for a in ips {
                    ipcache.insert(*a, host(a), id);
                }
            }
        }
        self.tables.ipcache = ipcache;
        self.tables.policy = Arc::new(compiled.tables);
    }

    /// Every policy compiled against the identities in use, each with its drop counter slot.
    fn compile_policy(&mut self) -> crate::policy::compile::Compiled {
        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for (k, f) in self
            .facts_of_kind(Kind::NetworkPolicy)
            .chain(self.facts_of_kind(Kind::CiliumNetworkPolicy))
        {
            if let Facts::Policy(r) = f {
                rules.extend(r.iter().cloned());
            }
            names.insert(format!("{}/{}", k.namespace, k.name));
        }
        let in_use: BTreeMap<u32, Labels> = self
            .endpoints_of
            .keys()
            .filter_map(|id| Some((*id, self.identities.labels(*id)?.clone())))
            .collect();
        let mut compiled = crate::policy::compile::compile(&rules, &in_use);
        self.policy_slots.retain(|n, _| names.contains(n));
        for n in names {
            if !self.policy_slots.contains_key(&n) {
                let slot = if usize::from(self.next_policy_slot)
                    < sluice_dataplane::policy::POLICY_SLOTS
                {
                    self.next_policy_slot += 1;
                    self.next_policy_slot - 1
                } else {
                    0
                };
                self.policy_slots.insert(n, slot);
            }
        }
        compiled.tables.slots = self
            .policy_slots
            .iter()
            .map(|(n, s)| (Arc::from(n.as_str()), *s))
            .collect();
        compiled
    }

    /// The pod ("namespace/name") with address `a`.
    pub fn pod_at(&self, a: IpAddr) -> Option<&str> {
        self.pod_of_ip.get(&a).map(String::as_str)
    }

    /// The labels of identity `id` (a reserved identity's one label).
    pub fn identity_labels(&self, id: u32) -> Vec<String> {
        match self.identities.labels(id) {
            Some(l) => l.iter().cloned().collect(),
            None => sluice_dataplane::identity::RESERVED
                .iter()
                .filter(|(r, _)| *r == id)
                .map(|(_, l)| l.to_string())
                .collect(),
        }
    }

    /// Every identity: the reserved ones, then those of the pods' label sets.
    pub fn identities(&self) -> Vec<IdentityView> {
        let reserved = sluice_dataplane::identity::RESERVED
            .iter()
            .map(|(id, label)| IdentityView {
                id: *id,
                labels: vec![label.to_string()],
                endpoints: Vec::new(),
            });
        let allocated = self.endpoints_of.iter().map(|(id, pods)| IdentityView {
            id: *id,
            labels: self
                .identities
                .labels(*id)
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default(),
            endpoints: pods.clone(),
        });
        reserved.chain(allocated).collect()
    }

    pub(super) fn rebuild_nodes(&mut self) {
        self.tables.nodes = self
            .facts_of_kind(Kind::Node)
            .filter_map(|(k, f)| match f {
                Facts::Node(n) => Some(NodeEntry {
                    name: k.name.as_str().into(),
                    addrs: n.addrs.clone(),
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: n.vtep_mac,
                }),
                _ => None,
            })
            .collect();
        self.tables.node_ips = self
            .tables
            .nodes
            .iter()
            .flat_map(|n| n.addrs.iter().copied())
            .collect();
        let mut pods = sluice_dataplane::state::PrefixTable::default();
        for n in &self.tables.nodes {
            if Some(&*n.name) == self.local_node.as_deref() || n.addrs.is_empty() {
                continue;
            }
            let remote = Arc::new(sluice_dataplane::state::RemoteNode {
                addrs: n.addrs.clone(),
                vtep_mac: n.vtep_mac,
            });
            for (a, len) in &n.pod_cidrs {
                pods.insert(*a, *len, remote.clone());
            }
        }
        self.tables.pod_cidrs = pods;
    }
}
