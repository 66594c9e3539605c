//! A full apply: every item parsed and checked on its own, in parallel, then inserted in item
//! order; every service compiled from the views its objects gave, in parallel, then committed
//! in item order.

use super::{check, Facts, Store, SvcId, View};
use crate::model::{self, EndpointSliceView, Invalid, Object, ObjectKey, ServiceView};
use serde_json::Value;
use sluice_dataplane::state::HashMap;
use std::sync::Arc;

impl Store {
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
