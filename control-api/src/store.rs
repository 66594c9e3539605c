//! Desired state: the validated objects, and their compiled form for the datapath.
//!
//! Every change is validated and compiled before anything is modified, so a rejected change leaves
//! the store exactly as it was. Compilation is incremental: a change to a Service or one of its
//! EndpointSlices recompiles that Service only (10,000 services stay cheap to change one by one).

pub use crate::compile::LbDefaults;
use crate::compile::{compile_service, Compiled, Context};
use crate::identity::{self, Allocator, IdentityView, Labels};
use crate::model::{
    self, Checked, EndpointSliceView, Invalid, Kind, Object, ObjectKey, ServiceView,
};
use serde_json::Value;
use sluice_dataplane::state::{ClusterTables, Frontend, HashMap, NodeEntry, ServiceEntry};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

type SvcId = (String, String); // (namespace, name)
/// What a change recompiles: each affected service and its new frontends.
type Plan = Vec<(SvcId, Compiled)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

pub struct Store {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    /// What a change of a kind rebuilt whole reads again of every object of that kind (see
    /// `Facts`), taken when each is put.
    facts: BTreeMap<ObjectKey, Facts>,
    /// (namespace, service name) -> names of its EndpointSlices
    slices_of: HashMap<SvcId, BTreeSet<String>>,
    /// frontends each service currently contributes
    frontends_of: HashMap<SvcId, Vec<Frontend>>,
    tables: ClusterTables,
    /// Addresses NodePort services are exposed on (the appliance's own node addresses).
    node_addresses: Vec<IpAddr>,
    /// This appliance's own Node name: its pod CIDR is local, not an overlay destination.
    local_node: Option<String>,
    lb: LbDefaults,
    /// Security identities of the pods' label sets.
    identities: Allocator,
    /// Pods ("namespace/name") per identity, for `GET /v1/identities`.
    endpoints_of: BTreeMap<u32, Vec<String>>,
    /// Pod ("namespace/name") per pod address, for flow events.
    pod_of_ip: HashMap<IpAddr, String>,
    /// Identity rebuilds since the store was made (each a pass over every Pod).
    identity_rebuilds: u64,
    /// Each policy's drop counter slot in the workers: given once, never reused by another
    /// policy while the process runs (so a counter never mixes two policies).
    policy_slots: BTreeMap<String, u16>,
    next_policy_slot: u16,
    /// Cores a full apply may also compile on, at idle priority (the workers' cores when they
    /// sleep while idle; see `with_spare_cores`).
    spare_cores: Arc<[usize]>,
}

impl Store {
    pub fn new(node_addresses: Vec<IpAddr>) -> Self {
        Store {
            objects: BTreeMap::new(),
            facts: BTreeMap::new(),
            slices_of: HashMap::new(),
            frontends_of: HashMap::new(),
            tables: ClusterTables::default(),
            node_addresses,
            local_node: None,
            lb: LbDefaults::default(),
            identities: Allocator::default(),
            endpoints_of: BTreeMap::new(),
            pod_of_ip: HashMap::new(),
            identity_rebuilds: 0,
            policy_slots: BTreeMap::new(),
            // slot 0 counts the policies beyond the counters' capacity
            next_policy_slot: 1,
            spare_cores: Arc::new([]),
        }
    }

    /// Lets a full apply compile on these cores too, in threads of the idle scheduling class:
    /// they run only when nothing else on the core wants to, and a waking worker preempts them
    /// at once. For the cores of workers that sleep when idle (adaptive polling); a busy-polling
    /// worker never leaves its core idle.
    pub fn with_spare_cores(mut self, cores: Vec<usize>) -> Self {
        self.spare_cores = cores.into();
        self
    }

    /// Sets the load-balancing defaults.
    pub fn with_lb(mut self, lb: LbDefaults) -> Self {
        self.lb = lb;
        self
    }

    /// Names this appliance's own Node object (its pod CIDR is not encapsulated to).
    pub fn with_local_node(mut self, name: Option<String>) -> Self {
        self.local_node = name;
        self
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    /// Objects of `kind` (all kinds if None), in `namespace` if given, in key order.
    pub fn list<'a>(
        &'a self,
        kind: Option<Kind>,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Object>)> + 'a {
        self.objects.iter().filter(move |(k, _)| {
            kind.is_none_or(|kd| k.kind == kd) && namespace.is_none_or(|ns| k.namespace == ns)
        })
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.objects.keys().filter(|k| k.kind == kind).count()
    }

    /// A shared copy of every object (cheap: pointers), for persistence and `GET /v1/state`.
    pub fn snapshot_objects(&self) -> Vec<Arc<Object>> {
        self.objects.values().cloned().collect()
    }

    /// The compiled tables to publish.
    pub fn tables(&self) -> Arc<ClusterTables> {
        Arc::new(self.tables.clone())
    }

    /// Creates or replaces one object. `expect` is the identity the URL gave, if any.
    pub fn put(
        &mut self,
        v: Value,
        expect: Option<&ObjectKey>,
    ) -> Result<(ObjectKey, Outcome), Invalid> {
        let key = model::identify(&v, expect)?;
        let (_, facts) = check(&key, &v)?;
        let v = model::normalise(v, &key);
        let object = Object::new(&v);
        let previous = self.objects.get(&key).cloned();
        if previous.as_deref() == Some(&object) {
            return Ok((key, Outcome::Unchanged));
        }
        let before = previous.as_deref().and_then(|p| compiled_from(&key, p));
        // Compile with the object in place, check, and only then commit.
        let affected = self.affected_services(&key, before.as_deref(), Some(&v));
        let plan = self.plan(&affected, Some((&key, Some(&v))))?;
        self.index(&key, before.as_deref(), Some(&v));
        // most updates of a Pod or a Node are of its status: what the rebuilds read stays
        let rebuild = self.facts.get(&key) != facts.as_ref();
        self.set_facts(&key, facts);
        self.objects.insert(key.clone(), Arc::new(object));
        self.commit(plan);
        if rebuild {
            self.after_change(key.kind);
        }
        Ok((
            key,
            if previous.is_some() {
                Outcome::Configured
            } else {
                Outcome::Created
            },
        ))
    }

    /// Deletes one object; None if it did not exist.
    pub fn delete(&mut self, key: &ObjectKey) -> Option<Outcome> {
        let previous = self.objects.get(key).cloned()?;
        let before = compiled_from(key, &previous);
        let affected = self.affected_services(key, before.as_deref(), None);
        // Removing objects cannot create conflicts: planning cannot fail here.
        let plan = self.plan(&affected, Some((key, None))).unwrap_or_default();
        self.index(key, before.as_deref(), None);
        self.facts.remove(key);
        self.objects.remove(key);
        self.commit(plan);
        self.after_change(key.kind);
        Some(Outcome::Deleted)
    }

    /// Replaces everything with `items`, atomically: on any error nothing changes.
    pub fn replace_all(&mut self, items: Vec<Value>) -> Result<usize, Invalid> {
        let items: Vec<Item> = items.into_iter().map(Item::Parsed).collect();
        self.replace_all_items(&items)
    }

    /// `replace_all` of items as they came. They are parsed and checked each on its own, on as
    /// many threads as compiling uses (`in_parallel`): their parsed trees never exist all at
    /// once (~400 MB at 10,000 Services), and a thread's next item reuses the last one's memory.
    pub fn replace_all_items(&mut self, items: &[Item]) -> Result<usize, Invalid> {
        let started = std::time::Instant::now();
        let mut fresh = Store::new(self.node_addresses.clone())
            .with_local_node(self.local_node.clone())
            .with_lb(self.lb);
        fresh.spare_cores = self.spare_cores.clone();
        // identities of the label sets that already had one stay the same
        fresh.identities = self.identities.clone();
        fresh.policy_slots = self.policy_slots.clone();
        fresh.next_policy_slot = self.next_policy_slot;
        let at_item = |i: usize, mut e: Invalid| {
            e.field = if e.field.is_empty() {
                format!("items[{i}]")
            } else {
                format!("items[{i}].{}", e.field)
            };
            e
        };
        // the services in the order of their items: the first to claim a frontend keeps it
        let mut services = Vec::new();
        let mut bundles: HashMap<SvcId, Bundle> = HashMap::new();
        for (i, l) in in_parallel(&self.spare_cores, items, load_item)
            .into_iter()
            .enumerate()
        {
            let l = l.map_err(|e| at_item(i, e))?;
            if fresh.objects.contains_key(&l.key) {
                return Err(Invalid {
                    object: l.key.to_string(),
                    field: format!("items[{i}]"),
                    reason: "the same object appears twice in the list".into(),
                });
            }
            let ns = &l.key.namespace;
            match l.view {
                Some(View::Service(v)) => {
                    let id = (ns.clone(), l.key.name.clone());
                    bundles.entry(id.clone()).or_default().service = Some(v);
                    services.push((i, id));
                }
                Some(View::Slice(v)) => {
                    let id = (ns.clone(), v.service.clone());
                    let name = l.key.name.clone();
                    fresh
                        .slices_of
                        .entry(id.clone())
                        .or_default()
                        .insert(name.clone());
                    bundles.entry(id).or_default().slices.push((name, v));
                }
                None => {}
            }
            fresh.set_facts(&l.key, l.facts);
            fresh.objects.insert(l.key, Arc::new(l.object));
        }
        // in the order `compile` reads them
        for b in bundles.values_mut() {
            b.slices.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let loaded = started.elapsed();
        fresh.rebuild_nodes();
        fresh
            .compile_loaded(&services, &bundles, self)
            .map_err(|(i, e)| at_item(i, e))?;
        let compiled = started.elapsed();
        fresh.rebuild_identities();
        let n = fresh.len();
        *self = fresh;
        tracing::info!(
            objects = n,
            services = services.len(),
            load_ms = loaded.as_millis() as u64,
            compile_ms = (compiled - loaded).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "full state applied"
        );
        Ok(n)
    }

    /// Services whose compiled form depends on `key` before or after the change.
    fn affected_services(
        &self,
        key: &ObjectKey,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Vec<SvcId> {
        let mut out = Vec::new();
        match key.kind {
            Kind::Service => out.push((key.namespace.clone(), key.name.clone())),
            Kind::EndpointSlice => {
                for v in [before, after].into_iter().flatten() {
                    if let Ok(s) = model::endpoint_slice(key, v) {
                        let id = (key.namespace.clone(), s.service);
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// Compiles the affected services as they would be with `change` applied (an object's key
    /// and its new value, None: deleted), and checks that no frontend is claimed by two services.
    fn plan(
        &self,
        affected: &[SvcId],
        change: Option<(&ObjectKey, Option<&Value>)>,
    ) -> Result<Plan, Invalid> {
        let mut plan = Vec::new();
        for id in affected {
            let compiled = self.compile(id, change, self)?;
            self.check_frontends(id, &compiled)?;
            plan.push((id.clone(), compiled));
        }
        Ok(plan)
    }

    /// One service's frontends and tables from its objects, with `change` applied; none if it
    /// has no Service object.
    /// `before`: the store whose compiled entries of the service may lend it their Maglev
    /// tables (this one for a change, the one being replaced for a full apply).
    fn compile(
        &self,
        id: &SvcId,
        change: Option<(&ObjectKey, Option<&Value>)>,
        before: &Store,
    ) -> Result<Compiled, Invalid> {
        let svc_key = ObjectKey {
            kind: Kind::Service,
            namespace: id.0.clone(),
            name: id.1.clone(),
        };
        // an object as it is with the change
        let value = |k: &ObjectKey| -> Option<Cow<Value>> {
            match change {
                Some((key, after)) if key == k => after.map(Cow::Borrowed),
                _ => self.objects.get(k).map(|o| o.value()),
            }
        };
        let Some(svc_val) = value(&svc_key) else {
            return Ok(Vec::new());
        };
        let view = model::service(&svc_key, &svc_val)?;
        let mut names: BTreeSet<String> = self.slices_of.get(id).cloned().unwrap_or_default();
        if let Some((key, after)) = change {
            if key.kind == Kind::EndpointSlice && key.namespace == id.0 {
                names.remove(&key.name);
                if let Some(v) = after {
                    if model::endpoint_slice(key, v).is_ok_and(|s| s.service == id.1) {
                        names.insert(key.name.clone());
                    }
                }
            }
        }
        let mut slices: Vec<EndpointSliceView> = Vec::new();
        for n in &names {
            let sk = ObjectKey {
                kind: Kind::EndpointSlice,
                namespace: id.0.clone(),
                name: n.clone(),
            };
            if let Some(v) = value(&sk) {
                slices.push(model::endpoint_slice(&sk, &v)?);
            }
        }
        Ok(self.compile_views(id, &view, &slices.iter().collect::<Vec<_>>(), before))
    }

    /// `compile` of a service's views (its slices in the order of their names).
    fn compile_views(
        &self,
        id: &SvcId,
        svc: &ServiceView,
        slices: &[&EndpointSliceView],
        before: &Store,
    ) -> Compiled {
        compile_service(
            &format!("{}/{}", id.0, id.1),
            svc,
            slices,
            &Context {
                node_addresses: &self.node_addresses,
                local_node: self.local_node.as_deref(),
                lb: self.lb,
                previous: &self.entries_before(id, before),
            },
        )
    }

    /// The service's compiled entries in `before`, if they were built as this store builds them
    /// (same LB defaults and local node), each once.
    fn entries_before(&self, id: &SvcId, before: &Store) -> Vec<Arc<ServiceEntry>> {
        if before.lb != self.lb || before.local_node != self.local_node {
            return Vec::new();
        }
        let mut out: Vec<Arc<ServiceEntry>> = Vec::new();
        for fe in before.frontends_of.get(id).into_iter().flatten() {
            if let Some(e) = before.tables.services.get(fe) {
                if !out.iter().any(|o| Arc::ptr_eq(o, e)) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Err if another service already serves one of `compiled`'s frontends.
    fn check_frontends(&self, id: &SvcId, compiled: &Compiled) -> Result<(), Invalid> {
        let name = format!("{}/{}", id.0, id.1);
        for (fe, _) in compiled {
            if let Some(owner) = self.tables.services.get(fe) {
                if *owner.name != *name {
                    let key = ObjectKey {
                        kind: Kind::Service,
                        namespace: id.0.clone(),
                        name: id.1.clone(),
                    };
                    return Err(Invalid {
                        object: key.to_string(),
                        field: "spec".into(),
                        reason: format!(
                            "frontend {}:{}/{} is already served by Service {}",
                            fe.addr,
                            fe.port,
                            proto_name(fe.proto),
                            owner.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Compiles every service `replace_all` loaded (item index, service) in parallel (their
    /// Maglev tables are most of a full apply: 10,000 of them), then commits them in item order,
    /// so the first item to claim a frontend keeps it.
    /// `bundles`: the views of the services and their slices, as loaded.
    /// `before`: the store being replaced, whose Maglev tables the same backends reuse.
    fn compile_loaded(
        &mut self,
        services: &[(usize, SvcId)],
        bundles: &HashMap<SvcId, Bundle>,
        before: &Store,
    ) -> Result<(), (usize, Invalid)> {
        let store = &*self;
        let compiled = in_parallel(&self.spare_cores, services, |(_, id)| {
            match bundles.get(id) {
                Some(Bundle {
                    service: Some(svc),
                    slices,
                }) => {
                    let slices: Vec<&EndpointSliceView> = slices.iter().map(|(_, s)| s).collect();
                    Ok(store.compile_views(id, svc, &slices, before))
                }
                // every loaded service has its bundle; from its objects otherwise
                _ => store.compile(id, None, before),
            }
        });
        for ((i, id), c) in services.iter().zip(compiled) {
            let c = c.map_err(|e| (*i, e))?;
            self.check_frontends(id, &c).map_err(|e| (*i, e))?;
            self.commit(vec![(id.clone(), c)]);
        }
        Ok(())
    }

    fn commit(&mut self, plan: Plan) {
        for (id, compiled) in plan {
            for fe in self.frontends_of.remove(&id).unwrap_or_default() {
                self.tables.services.remove(&fe);
            }
            if compiled.is_empty() {
                continue;
            }
            let fes = compiled.iter().map(|(f, _)| *f).collect();
            for (fe, entry) in compiled {
                self.tables.services.insert(fe, entry);
            }
            self.frontends_of.insert(id, fes);
        }
    }

    fn index(&mut self, key: &ObjectKey, before: Option<&Value>, after: Option<&Value>) {
        if key.kind != Kind::EndpointSlice {
            return;
        }
        if let Some(s) = before.and_then(|v| model::endpoint_slice(key, v).ok()) {
            let id = (key.namespace.clone(), s.service);
            if let Some(set) = self.slices_of.get_mut(&id) {
                set.remove(&key.name);
                if set.is_empty() {
                    self.slices_of.remove(&id);
                }
            }
        }
        if let Some(s) = after.and_then(|v| model::endpoint_slice(key, v).ok()) {
            self.slices_of
                .entry((key.namespace.clone(), s.service))
                .or_default()
                .insert(key.name.clone());
        }
    }

    /// Rebuilds what objects of `kind` feed (called when the facts of one changed).
    fn after_change(&mut self, kind: Kind) {
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

    fn set_facts(&mut self, key: &ObjectKey, facts: Option<Facts>) {
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
    fn rebuild_identities(&mut self) {
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

    fn rebuild_nodes(&mut self) {
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

/// An item of a full state as it came.
pub enum Item<'a> {
    /// JSON text, parsed when it is loaded.
    Text(&'a str),
    Parsed(Value),
}

/// An item of a full state, checked on its own.
struct Loaded {
    key: ObjectKey,
    object: Object,
    /// A Service's or an EndpointSlice's view, computed as it was checked: compiling takes it
    /// instead of parsing the object again.
    view: Option<View>,
    facts: Option<Facts>,
}

enum View {
    Service(ServiceView),
    Slice(EndpointSliceView),
}

/// What the store reads again of an object whose kind it rebuilds whole on a change: the
/// identities from every Pod and Namespace, the node table from every Node, the policy from
/// every policy. Taken when the object is put, so that those rebuilds parse nothing (the
/// objects are kept as text, `model::Object`).
#[derive(Debug, PartialEq)]
enum Facts {
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

/// An object's full validation (`model::check`), with what the store keeps of it besides its
/// text: the view of a Service or an EndpointSlice (a full apply compiles from it), the facts of
/// the other kinds. Views read no identity field, so they are the same before and after
/// `model::normalise`.
fn check(key: &ObjectKey, v: &Value) -> Result<(Option<View>, Option<Facts>), Invalid> {
    let labels = || -> BTreeMap<String, String> {
        v.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    };
    Ok(match model::check(key, v)? {
        Checked::Service(s) => (Some(View::Service(s)), None),
        Checked::EndpointSlice(s) => (Some(View::Slice(s)), None),
        Checked::Namespace => (None, Some(Facts::Namespace { labels: labels() })),
        Checked::Pod { ips, egress_bps } => (
            None,
            Some(Facts::Pod {
                labels: labels(),
                ips,
                egress_bps,
            }),
        ),
        Checked::Node(n) => (None, Some(Facts::Node(n))),
        Checked::Policy(r) => (None, Some(Facts::Policy(r))),
    })
}

/// A stored object as compiling services reads it: Services and EndpointSlices (the only kinds
/// `affected_services` and `index` look at), parsed; None for the others.
fn compiled_from<'a>(key: &ObjectKey, o: &'a Object) -> Option<Cow<'a, Value>> {
    matches!(key.kind, Kind::Service | Kind::EndpointSlice).then(|| o.value())
}

/// What a full apply compiles a service from: its view and its slices' (name, view).
#[derive(Default)]
struct Bundle {
    service: Option<ServiceView>,
    slices: Vec<(String, EndpointSliceView)>,
}

fn load_item(item: &Item) -> Result<Loaded, Invalid> {
    let v = match item {
        Item::Text(t) => serde_json::from_str(t).map_err(|e| Invalid {
            object: "object".into(),
            field: String::new(),
            reason: format!("malformed JSON: {e}"),
        })?,
        Item::Parsed(v) => v.clone(),
    };
    let key = model::identify(&v, None)?;
    let (view, facts) = check(&key, &v)?;
    let object = Object::new(&model::normalise(v, &key));
    Ok(Loaded {
        key,
        object,
        view,
        facts,
    })
}

/// `f` of every item, in their order, on as many threads as there are cores and on the
/// `spare` cores too, in threads of the idle scheduling class (see `Store::with_spare_cores`).
/// Items are handed out in chunks as threads ask (a thread on a spare core may get little
/// time); below 64 items a thread costs more than it saves.
fn in_parallel<T: Sync, R: Send>(
    spare: &[usize],
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    // a chunk is 16 services to compile (~3 ms) or 16 objects to load (~0.3 ms): asking for
    // the next costs one atomic add
    const CHUNK: usize = 16;
    let own = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (own + spare.len()).min(items.len().div_ceil(64)).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (f, next) = (&f, &next);
    let mut done: Vec<(usize, R)> = Vec::with_capacity(items.len());
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..threads)
            .map(|n| {
                let core = n.checked_sub(own).map(|i| spare[i]);
                s.spawn(move || {
                    if let Some(core) = core {
                        // best effort: otherwise it runs beside the others
                        let _ = crate::cores::idle_on(core);
                    }
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if start >= items.len() {
                            break done;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(CHUNK) {
                            done.push((i, f(item)));
                        }
                    }
                })
            })
            .collect();
        for h in parts {
            done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
    });
    // each item once, by one of the threads; back in order
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_dataplane::lb::maglev::Table;
    use sluice_dataplane::state::FrontendKind;

    fn svc(name: &str, ip: &str) -> Value {
        json!({"kind": "Service", "metadata": {"name": name, "namespace": "shop"},
               "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}})
    }
    fn slice(name: &str, svc: &str, addrs: &[&str]) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4", "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
               "ports": [{"name": "http", "port": 8080}]})
    }
    fn fe(ip: &str, port: u16) -> Frontend {
        Frontend {
            addr: ip.parse().unwrap(),
            proto: 6,
            port,
        }
    }

    /// A full apply compiles from the views it loaded; one object at a time compiles from the
    /// stored objects. Both give the same tables, whatever the order of the items.
    #[test]
    fn a_full_apply_compiles_as_changes_one_by_one_do() {
        let mut db = svc("db", "10.96.0.20");
        db["spec"]["ports"][0]["nodePort"] = json!(30081);
        db["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.2.6=3"});
        let items = vec![
            slice("web-b", "web", &["10.0.1.7", "10.0.1.8"]),
            svc("web", "10.96.0.10"),
            slice("db-1", "db", &["10.0.2.5", "10.0.2.6"]),
            slice("web-a", "web", &["10.0.1.5", "10.0.1.6"]),
            db,
            slice("orphan", "gone", &["10.0.3.1"]),
        ];
        let node = vec!["192.0.2.1".parse().unwrap()];
        let mut whole = Store::new(node.clone());
        whole.replace_all(items.clone()).unwrap();
        let mut one_by_one = Store::new(node.clone());
        for v in items.iter().rev() {
            one_by_one.put(v.clone(), None).unwrap();
        }
        assert_eq!(whole.tables.services, one_by_one.tables.services);
        assert_eq!(
            whole.tables.services.len(),
            4,
            "ClusterIP and NodePort of both"
        );
        let web = &whole.tables.services[&fe("10.96.0.10", 80)];
        let addrs: Vec<String> = web.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8"]);
        let db = &whole.tables.services[&fe("10.96.0.20", 80)];
        assert_eq!(db.backends[1].weight, 3);
    }

    #[test]
    fn slices_before_or_after_their_service_compile_the_same() {
        let mut a = Store::new(vec!["192.0.2.1".parse().unwrap()]);
        a.put(svc("web", "10.96.0.10"), None).unwrap();
        a.put(slice("web-1", "web", &["10.0.1.5", "10.0.1.6"]), None)
            .unwrap();
        let mut b = Store::new(vec!["192.0.2.1".parse().unwrap()]);
        b.put(slice("web-1", "web", &["10.0.1.5", "10.0.1.6"]), None)
            .unwrap();
        b.put(svc("web", "10.96.0.10"), None).unwrap();
        for s in [&a, &b] {
            let e = &s.tables.services[&fe("10.96.0.10", 80)];
            assert_eq!(e.backends.len(), 2);
            assert_eq!(e.backends[0].port, 8080);
            assert_eq!(
                s.tables.services[&fe("192.0.2.1", 30080)].kind,
                FrontendKind::NodePort
            );
        }
    }

    /// Slots of each backend address in a frontend's Maglev table.
    fn slots(s: &Store, f: &Frontend) -> Vec<(String, usize)> {
        let e = &s.tables.services[f];
        e.backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = e.table.iter().filter(|&t| t == i).count();
                (b.addr.to_string(), n)
            })
            .collect()
    }

    #[test]
    fn weights_conditions_and_traffic_policy_shape_the_maglev_table() {
        let mut s = Store::new(vec!["192.0.2.1".parse().unwrap()])
            .with_local_node(Some("me".into()))
            .with_lb(LbDefaults {
                maglev_table_size: 1021,
                ..Default::default()
            });
        let mut v = svc("web", "10.96.0.10");
        v["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.1.7=2"});
        v["spec"]["externalTrafficPolicy"] = json!("Local");
        s.put(v, None).unwrap();
        let mut sl = slice(
            "web-1",
            "web",
            &["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8"],
        );
        sl["endpoints"][0]["nodeName"] = json!("me");
        sl["endpoints"][3]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
        s.put(sl, None).unwrap();
        // cluster-wide: 1:1:2 over the ready backends, the terminating one gets nothing new
        let c = slots(&s, &fe("10.96.0.10", 80));
        assert_eq!(c[3], ("10.0.1.8".into(), 0));
        let total: usize = c.iter().map(|x| x.1).sum();
        assert_eq!(total, 1021);
        assert!((c[2].1 as f64 / total as f64 - 0.5).abs() < 0.01, "{c:?}");
        assert!((c[0].1 as f64 / total as f64 - 0.25).abs() < 0.01, "{c:?}");
        // NodePort with externalTrafficPolicy Local: only the backend on this node
        let l = slots(&s, &fe("192.0.2.1", 30080));
        assert_eq!(
            l.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![1021, 0, 0, 0]
        );
        // nothing ready: the serving terminating backend takes new connections
        s.put(slice("web-1", "web", &[]), None).unwrap();
        let mut sl = slice("web-1", "web", &["10.0.1.8"]);
        sl["endpoints"][0]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
        s.put(sl, None).unwrap();
        assert_eq!(
            slots(&s, &fe("10.96.0.10", 80)),
            vec![("10.0.1.8".into(), 1021)]
        );
        // a bad weight annotation is refused, naming it
        let mut bad = svc("web", "10.96.0.10");
        bad["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.1.7:2"});
        let e = s.put(bad, None).unwrap_err();
        assert!(e.field.contains("sluice.io/backend-weights"), "{e:?}");
    }

    #[test]
    fn node_ports_follow_the_service_ip_families() {
        let mut s = Store::new(vec![
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]);
        s.put(svc("web", "10.96.0.10"), None).unwrap();
        assert!(s.tables.services.contains_key(&fe("192.0.2.1", 30080)));
        assert!(!s.tables.services.contains_key(&fe("2001:db8::1", 30080)));
        let mut dual = svc("dual", "10.96.0.11");
        dual["spec"]["clusterIPs"] = json!(["10.96.0.11", "fd00::11"]);
        dual["spec"]["ports"][0]["nodePort"] = json!(30081);
        s.put(dual, None).unwrap();
        assert!(s.tables.services.contains_key(&fe("2001:db8::1", 30081)));
    }

    #[test]
    fn a_dual_stack_frontend_balances_over_its_own_family_only() {
        let mut s = Store::new(vec![
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]);
        let mut dual = svc("web", "10.96.0.10");
        dual["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00::10"]);
        s.put(dual, None).unwrap();
        s.put(slice("web-4", "web", &["10.0.1.5", "10.0.1.6"]), None)
            .unwrap();
        let mut v6 = slice("web-6", "web", &["fd00:1::5", "fd00:1::6", "fd00:1::7"]);
        v6["addressType"] = json!("IPv6");
        s.put(v6, None).unwrap();
        for (addr, port, v6, n) in [
            ("10.96.0.10", 80, false, 2),
            ("192.0.2.1", 30080, false, 2),
            ("fd00::10", 80, true, 3),
            ("2001:db8::1", 30080, true, 3),
        ] {
            let e = &s.tables.services[&fe(addr, port)];
            assert_eq!(e.backends.len(), n, "{addr}");
            assert!(e.backends.iter().all(|b| b.addr.is_ipv6() == v6), "{addr}");
            // every slot names a backend of the frontend's family
            assert!(e.table.iter().all(|i| i < n), "{addr}");
        }
    }

    #[test]
    fn changes_and_deletes_recompile_only_what_they_touch() {
        let mut s = Store::new(vec![]);
        s.put(svc("web", "10.96.0.10"), None).unwrap();
        s.put(slice("web-1", "web", &["10.0.1.5"]), None).unwrap();
        s.put(slice("web-2", "web", &["10.0.1.7"]), None).unwrap();
        assert_eq!(s.tables.services[&fe("10.96.0.10", 80)].backends.len(), 2);
        assert_eq!(
            s.put(slice("web-2", "web", &["10.0.1.7"]), None).unwrap().1,
            Outcome::Unchanged
        );
        // a slice moving to another service leaves this one
        s.put(slice("web-2", "other", &["10.0.1.7"]), None).unwrap();
        assert_eq!(s.tables.services[&fe("10.96.0.10", 80)].backends.len(), 1);
        let k = ObjectKey {
            kind: Kind::EndpointSlice,
            namespace: "shop".into(),
            name: "web-1".into(),
        };
        assert_eq!(s.delete(&k), Some(Outcome::Deleted));
        assert!(s.tables.services[&fe("10.96.0.10", 80)].backends.is_empty());
        let sk = ObjectKey {
            kind: Kind::Service,
            namespace: "shop".into(),
            name: "web".into(),
        };
        s.delete(&sk);
        assert!(s.tables.services.is_empty());
        assert_eq!(s.delete(&sk), None);
    }

    #[test]
    fn a_conflicting_frontend_is_refused_and_nothing_changes() {
        let mut s = Store::new(vec![]);
        s.put(svc("web", "10.96.0.10"), None).unwrap();
        let before = s.tables.services.clone();
        let e = s.put(svc("api", "10.96.0.10"), None).unwrap_err();
        assert_eq!(e.object, "Service shop/api");
        assert!(
            e.reason.contains("already served by Service shop/web"),
            "{e}"
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.tables.services, before);
    }

    /// A full apply compiles every service once at the end, on several threads: the same
    /// tables as putting the objects one by one, slices before or after their service, and a
    /// frontend claimed twice is refused at the later item.
    #[test]
    fn a_full_apply_compiles_as_puts_do() {
        let mut items = Vec::new();
        for i in 0..300u32 {
            let name = format!("svc-{i}");
            let ip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
            let mut v = svc(&name, &ip);
            v["spec"]["type"] = json!("ClusterIP");
            let addrs = [
                format!("10.1.{}.{}", i / 200, i % 200 + 1),
                format!("10.2.0.{}", i % 250 + 1),
            ];
            let sl = slice(&format!("{name}-x"), &name, &[&addrs[0], &addrs[1]]);
            if i % 2 == 0 {
                items.extend([v, sl]);
            } else {
                items.extend([sl, v]);
            }
        }
        let mut one_by_one = Store::new(vec![]);
        for v in items.clone() {
            one_by_one.put(v, None).unwrap();
        }
        let mut full = Store::new(vec![]);
        assert_eq!(full.replace_all(items.clone()).unwrap(), 600);
        assert_eq!(full.tables.services.len(), 300);
        assert_eq!(full.tables.services, one_by_one.tables.services);
        // with threads on spare cores too (idle class), and a replace that keeps them
        let mut spare = Store::new(vec![]).with_spare_cores(vec![0, 0]);
        spare.replace_all(vec![]).unwrap();
        assert_eq!(spare.replace_all(items.clone()).unwrap(), 600);
        assert_eq!(spare.tables.services, one_by_one.tables.services);

        // item 600 takes svc-7's address and port: refused there, and nothing changes
        let mut clash = svc("late", "10.96.0.8");
        clash["spec"]["type"] = json!("ClusterIP");
        items.push(clash);
        let e = full.replace_all(items).unwrap_err();
        assert_eq!(e.field, "items[600].spec");
        assert!(
            e.reason.contains("already served by Service shop/svc-7"),
            "{e}"
        );
        assert_eq!(full.tables.services, one_by_one.tables.services);
    }

    /// A Maglev table is a function of the backends, the size, the seed and the node: a
    /// service recompiled with the same ones takes its table as it was, in a change and in a
    /// full apply, and one whose backends changed gets the table a fresh store builds.
    #[test]
    fn unchanged_backends_keep_their_maglev_table() {
        let items = |port: u16, addrs: &[&str]| {
            let mut web = svc("web", "10.96.0.10");
            web["spec"]["ports"][0]["port"] = json!(port);
            let mut db = svc("db", "10.96.0.20");
            db["spec"]["type"] = json!("ClusterIP");
            vec![
                web,
                slice("web-1", "web", addrs),
                db,
                slice("db-1", "db", &["10.0.2.5"]),
            ]
        };
        let table = |s: &Store, ip: &str, port: u16| s.tables.services[&fe(ip, port)].table.clone();
        let mut s = Store::new(vec!["192.0.2.1".parse().unwrap()]);
        s.replace_all(items(80, &["10.0.1.5", "10.0.1.6"])).unwrap();
        let (web, db) = (table(&s, "10.96.0.10", 80), table(&s, "10.96.0.20", 80));
        // the same state again: no table built
        s.replace_all(items(80, &["10.0.1.5", "10.0.1.6"])).unwrap();
        assert!(Table::ptr_eq(&table(&s, "10.96.0.10", 80), &web));
        assert!(Table::ptr_eq(&table(&s, "10.96.0.20", 80), &db));
        // another service port, the same backends: the table stays, under the new frontend
        let mut moved = svc("web", "10.96.0.10");
        moved["spec"]["ports"][0]["port"] = json!(81);
        s.put(moved, None).unwrap();
        assert!(Table::ptr_eq(&table(&s, "10.96.0.10", 81), &web));
        // a backend more: built again, as a store that never saw the old one builds it
        s.replace_all(items(81, &["10.0.1.5", "10.0.1.6", "10.0.1.7"]))
            .unwrap();
        let mut fresh = Store::new(vec!["192.0.2.1".parse().unwrap()]);
        fresh
            .replace_all(items(81, &["10.0.1.5", "10.0.1.6", "10.0.1.7"]))
            .unwrap();
        assert!(!Table::ptr_eq(&table(&s, "10.96.0.10", 81), &web));
        assert_eq!(s.tables.services, fresh.tables.services);
        assert!(Table::ptr_eq(&table(&s, "10.96.0.20", 80), &db));
        // a backend no longer ready: its slots go (the conditions are part of the backends)
        let mut notready = slice("web-1", "web", &["10.0.1.5", "10.0.1.6", "10.0.1.7"]);
        notready["endpoints"][2]["conditions"] = json!({"ready": false});
        s.put(notready.clone(), None).unwrap();
        let mut fresh = Store::new(vec!["192.0.2.1".parse().unwrap()]);
        let mut fresh_items = items(81, &[]);
        fresh_items[1] = notready;
        fresh.replace_all(fresh_items).unwrap();
        assert_eq!(s.tables.services, fresh.tables.services);
        assert_eq!(slots(&s, &fe("10.96.0.10", 81))[2], ("10.0.1.7".into(), 0));
    }

    #[test]
    fn replace_all_is_all_or_nothing() {
        let mut s = Store::new(vec![]);
        s.put(svc("web", "10.96.0.10"), None).unwrap();
        let bad = vec![
            svc("a", "10.96.0.1"),
            json!({"kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": 0}]}}),
        ];
        let e = s.replace_all(bad).unwrap_err();
        assert_eq!(e.field, "items[1].spec.ports[0].port");
        assert_eq!(s.len(), 1);
        assert!(s.tables.services.contains_key(&fe("10.96.0.10", 80)));
        let dup = vec![svc("a", "10.96.0.1"), svc("a", "10.96.0.1")];
        assert!(s.replace_all(dup).unwrap_err().reason.contains("twice"));
        assert_eq!(s.replace_all(vec![svc("a", "10.96.0.1")]).unwrap(), 1);
        assert!(!s.tables.services.contains_key(&fe("10.96.0.10", 80)));
    }

    #[test]
    fn remote_pod_cidrs_lead_to_their_node_and_the_local_node_is_left_out() {
        let node = |name: &str, ip: &str, cidr: &str| {
            json!({"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        };
        let mut s = Store::new(vec![]).with_local_node(Some("me".into()));
        s.put(node("me", "192.168.1.1", "10.0.1.0/24"), None)
            .unwrap();
        s.put(node("n2", "192.168.1.2", "10.0.2.0/24"), None)
            .unwrap();
        let t = &s.tables;
        assert_eq!(
            t.pod_cidrs
                .lookup("10.0.2.77".parse().unwrap())
                .map(|n| n.addrs[0]),
            Some("192.168.1.2".parse().unwrap())
        );
        assert!(t.pod_cidrs.lookup("10.0.1.5".parse().unwrap()).is_none());
        assert!(
            t.node_ips
                .contains(&"192.168.1.1".parse::<IpAddr>().unwrap())
                && t.node_ips
                    .contains(&"192.168.1.2".parse::<IpAddr>().unwrap())
        );
        s.replace_all(vec![node("n3", "192.168.1.3", "10.0.3.0/24")])
            .unwrap();
        assert!(s
            .tables
            .pod_cidrs
            .lookup("10.0.2.77".parse().unwrap())
            .is_none());
        assert!(s
            .tables
            .pod_cidrs
            .lookup("10.0.3.1".parse().unwrap())
            .is_some());
    }

    #[test]
    fn nodes_compile_into_the_node_table() {
        let mut s = Store::new(vec![]);
        s.put(
            json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.1.0/24"},
                     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}}),
            None,
        )
        .unwrap();
        assert_eq!(s.tables.nodes.len(), 1);
        assert_eq!(&*s.tables.nodes[0].name, "n1");
        s.delete(&ObjectKey {
            kind: Kind::Node,
            namespace: String::new(),
            name: "n1".into(),
        });
        assert!(s.tables.nodes.is_empty());
    }

    /// A status update of a Pod or a Node (most of a cluster's churn) changes nothing the
    /// identities are built from: no rebuild. A label or an address does.
    #[test]
    fn only_what_identities_read_rebuilds_them() {
        let pod = |app: &str, ip: &str, phase: &str| {
            json!({"kind": "Pod", "metadata": {"name": "fe-1", "namespace": "shop", "labels": {"app": app}},
                   "status": {"phase": phase, "podIPs": [{"ip": ip}]}})
        };
        let id_of = |s: &Store, a: &str| s.tables.ipcache.lookup(a.parse().unwrap()).copied();
        let mut s = Store::new(vec![]);
        s.put(pod("fe", "10.0.1.5", "Pending"), None).unwrap();
        let (id, n) = (id_of(&s, "10.0.1.5"), s.identity_rebuilds);
        assert!(id.is_some());
        let (_, o) = s.put(pod("fe", "10.0.1.5", "Running"), None).unwrap();
        assert_eq!((o, s.identity_rebuilds), (Outcome::Configured, n));
        s.put(pod("fe", "10.0.1.6", "Running"), None).unwrap();
        assert_eq!(s.identity_rebuilds, n + 1);
        assert_eq!((id_of(&s, "10.0.1.6"), id_of(&s, "10.0.1.5")), (id, None));
        s.put(pod("checkout", "10.0.1.6", "Running"), None).unwrap();
        assert_eq!(s.identity_rebuilds, n + 2);
        assert_ne!(id_of(&s, "10.0.1.6"), id);
        let node = |ready: &str| {
            json!({"kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.12"}],
                              "conditions": [{"type": "Ready", "status": ready}]}})
        };
        s.put(node("True"), None).unwrap();
        assert_eq!((s.identity_rebuilds, s.tables.nodes.len()), (n + 3, 1));
        s.put(node("False"), None).unwrap();
        assert_eq!(s.identity_rebuilds, n + 3);
    }

    #[test]
    fn pods_get_identities_by_labels_and_the_ipcache_maps_their_addresses() {
        use sluice_dataplane::identity::{HOST, REMOTE_NODE};
        let pod = |ns: &str, name: &str, app: &str, ip: &str| {
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
                   "status": {"podIPs": [{"ip": ip}]}})
        };
        let ns = |name: &str, team: &str| json!({"kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}});
        let mut s =
            Store::new(vec!["192.0.2.1".parse().unwrap()]).with_local_node(Some("me".into()));
        s.put(ns("shop", "web"), None).unwrap();
        s.put(pod("shop", "fe-1", "frontend", "10.0.1.5"), None)
            .unwrap();
        s.put(pod("shop", "fe-2", "frontend", "10.0.2.6"), None)
            .unwrap();
        s.put(pod("shop", "api-1", "api", "fd00:1::7"), None)
            .unwrap();
        s.put(
            json!({"kind": "Node", "metadata": {"name": "n2"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
            None,
        )
        .unwrap();
        fn id_of(s: &Store, a: &str) -> Option<u32> {
            s.tables.ipcache.lookup(a.parse().unwrap()).copied()
        }
        let id = |a: &str| id_of(&s, a);
        let fe = id("10.0.1.5").unwrap();
        assert_eq!(id("10.0.2.6"), Some(fe), "same labels, same identity");
        let api = id("fd00:1::7").unwrap();
        assert_ne!(api, fe);
        assert!(fe >= 256 && api >= 256);
        assert_eq!(id("192.168.0.2"), Some(REMOTE_NODE));
        assert_eq!(id("192.0.2.1"), Some(HOST));
        assert_eq!(id("10.9.9.9"), None, "unknown: world");
        let views = s.identities();
        let v = views.iter().find(|v| v.id == fe).unwrap();
        assert_eq!(v.endpoints, vec!["shop/fe-1", "shop/fe-2"]);
        assert!(v
            .labels
            .contains(&"k8s:io.cilium.k8s.namespace.labels.team=web".to_string()));
        assert_eq!(views[0].labels, vec!["reserved:host"]);
        // the namespace's labels are part of the identity
        s.put(ns("shop", "payments"), None).unwrap();
        let fe2 = id_of(&s, "10.0.1.5").unwrap();
        assert_ne!(fe2, fe);
        // a full replace keeps the numbers of the label sets that stay
        let objects: Vec<Value> = s
            .snapshot_objects()
            .iter()
            .map(|v| v.value().into_owned())
            .collect();
        s.replace_all(objects).unwrap();
        assert_eq!(
            s.tables.ipcache.lookup("10.0.1.5".parse().unwrap()),
            Some(&fe2)
        );
        // the last pod of a label set gone: its identity is free, its address unknown
        s.delete(&ObjectKey {
            kind: Kind::Pod,
            namespace: "shop".into(),
            name: "api-1".into(),
        });
        assert_eq!(s.tables.ipcache.lookup("fd00:1::7".parse().unwrap()), None);
        assert!(s.identities().iter().all(|v| v.id != api));
    }

    #[test]
    fn policies_are_validated_on_apply_and_compiled_for_the_pods() {
        use sluice_dataplane::policy::Decision;
        let mut s = Store::new(vec![]);
        for (name, app, ip) in [("fe", "frontend", "10.0.1.5"), ("api", "api", "10.0.1.6")] {
            s.put(
                json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                       "status": {"podIP": ip}}),
                None,
            )
            .unwrap();
        }
        let cnp = |port: &str| {
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                   "metadata": {"name": "api-from-frontend", "namespace": "shop"},
                   "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                         "toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}]}})
        };
        let e = s.put(cnp("http"), None).unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].toPorts[0].ports[0].port");
        assert_eq!(s.count(Kind::CiliumNetworkPolicy), 0, "nothing applied");
        s.put(cnp("8080"), None).unwrap();
        let id = |a: &str| *s.tables.ipcache.lookup(a.parse().unwrap()).unwrap();
        let (fe, api) = (id("10.0.1.5"), id("10.0.1.6"));
        let p = &s.tables.policy;
        assert_eq!(
            p.verdict(fe, api, 6, 8080),
            Decision::Allow("shop/api-from-frontend")
        );
        assert_eq!(
            p.verdict(fe, api, 6, 80),
            Decision::DefaultDeny("shop/api-from-frontend")
        );
        assert_eq!(p.verdict(api, fe, 6, 80), Decision::Allow(""));
    }
}
