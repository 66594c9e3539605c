//! Desired state: the validated objects, and their compiled form for the datapath.
//!
//! Every change is validated and compiled before anything is modified, so a rejected change leaves
//! the store exactly as it was. Compilation is incremental: a change to a Service or one of its
//! EndpointSlices recompiles that Service only (10,000 services stay cheap to change one by one).

pub use crate::compile::LbDefaults;
use crate::compile::{compile_service, Compiled, Context};
use crate::identity::Allocator;
use crate::model::{
    self, Checked, EndpointSliceView, Invalid, Kind, Object, ObjectKey, ServiceView,
};
use serde_json::Value;
use sluice_dataplane::state::{ClusterTables, Frontend, HashMap, ServiceEntry};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

mod load;
mod rebuild;

use rebuild::Facts;

pub use load::Item;

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
}

enum View {
    Service(ServiceView),
    Slice(EndpointSliceView),
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

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests;
