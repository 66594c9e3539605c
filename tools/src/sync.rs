//! `sluice-k8s-sync`: relays cluster state from the Kubernetes API to sluiced.
//!
//! One kube-rs watcher per kind, all as `DynamicObject` (CiliumNetworkPolicy needs no CRD types,
//! and fields sluice does not read pass through untouched). The syncer keeps its own copy of
//! every object:
//! - after each (re)list of a kind (start, `410 Gone`, a failed watch) it sends the whole state
//!   with `PUT /v1/state`: whatever was missed while not watching is corrected at once;
//! - ordinary events are coalesced per object for a short window and sent as single PUT/DELETEs,
//!   or as one full replace when a burst is large.
//!
//! If sluiced is unreachable the syncer keeps watching and resends everything once it is back.

use crate::client::{Client, Endpoint};
use anyhow::{Context, Result};
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events arriving within this window are sent together (a rollout touches many objects at once).
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// A burst larger than this is sent as one full replace instead of object by object.
const FULL_REPLACE_OVER: usize = 200;
/// Retry interval while sluiced cannot be reached.
const RETRY: Duration = Duration::from_secs(1);
/// Events buffered between the watchers and the relay.
const CHANNEL: usize = 4096;

/// A kind the syncer watches: its Kubernetes resource and sluice's URL segment.
pub struct Watched {
    pub resource: ApiResource,
    pub namespaced: bool,
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Every kind sluice takes, in the order they are applied in a full replace.
pub fn watched() -> Vec<Watched> {
    vec![
        Watched {
            resource: ar("", "v1", "Namespace", "namespaces"),
            namespaced: false,
        },
        Watched {
            resource: ar("", "v1", "Node", "nodes"),
            namespaced: false,
        },
        Watched {
            resource: ar("", "v1", "Pod", "pods"),
            namespaced: true,
        },
        Watched {
            resource: ar("", "v1", "Service", "services"),
            namespaced: true,
        },
        Watched {
            resource: ar("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            namespaced: true,
        },
        Watched {
            resource: ar(
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
            namespaced: true,
        },
        Watched {
            resource: ar(
                "cilium.io",
                "v2",
                "CiliumNetworkPolicy",
                "ciliumnetworkpolicies",
            ),
            namespaced: true,
        },
    ]
}

pub struct Options {
    /// Kubeconfig file; None: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub server: Endpoint,
    pub token: Option<String>,
}

/// (kind index, namespace, name)
type Key = (usize, String, String);

enum Msg {
    Event(usize, Box<Event<DynamicObject>>),
    /// A kind cannot be listed (e.g. the CiliumNetworkPolicy CRD is not installed): count it as
    /// listed with no objects so the others are not held back.
    Absent(usize),
}

/// The object as sluice gets it: apiVersion/kind set, managedFields dropped (large, unused).
fn to_value(w: &Watched, o: &DynamicObject) -> Option<(String, String, Value)> {
    let mut v = serde_json::to_value(o).ok()?;
    let name = o.metadata.name.clone()?;
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("apiVersion".into(), w.resource.api_version.clone().into());
        obj.insert("kind".into(), w.resource.kind.clone().into());
    }
    Some((ns, name, v))
}

/// Runs until the process is stopped.
pub async fn run(opts: Options) -> Result<()> {
    let client = match &opts.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Client::try_from(cfg).context("building the Kubernetes client")?
        }
        None => kube::Client::try_default()
            .await
            .context("no kubeconfig found and not in a cluster")?,
    };
    let kinds = watched();
    let (tx, rx) = mpsc::channel(CHANNEL);
    for (i, w) in kinds.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &w.resource);
        let tx = tx.clone();
        let kind = w.resource.kind.clone();
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut absent_reported = false;
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(e) => Msg::Event(i, Box::new(e)),
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(e)))
                        if e.code == 404 =>
                    {
                        if absent_reported {
                            continue;
                        }
                        absent_reported = true;
                        tracing::warn!(kind, "the cluster does not serve {kind} (CRD not installed?); treating it as empty");
                        Msg::Absent(i)
                    }
                    Err(e) => {
                        // the watcher retries with backoff and relists; the relist triggers a full resync
                        tracing::warn!(kind, "watch: {e}");
                        continue;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let sluice = Client {
        endpoint: opts.server,
        token: opts.token,
    };
    relay(kinds, rx, sluice).await
}

struct Relay {
    kinds: Vec<Watched>,
    cache: BTreeMap<Key, Value>,
    listing: HashMap<usize, BTreeMap<Key, Value>>,
    listed: Vec<bool>,
    pending: BTreeMap<Key, Option<Value>>,
    need_full: bool,
}

async fn relay(kinds: Vec<Watched>, mut rx: mpsc::Receiver<Msg>, sluice: Client) -> Result<()> {
    let n = kinds.len();
    let mut r = Relay {
        kinds,
        cache: BTreeMap::new(),
        listing: HashMap::new(),
        listed: vec![false; n],
        pending: BTreeMap::new(),
        need_full: false,
    };
    let sluice = std::sync::Arc::new(sluice);
    loop {
        // wait for the next message; once something is pending, only for the batch window
        let msg = if r.pending.is_empty() && !r.need_full {
            rx.recv().await
        } else {
            match tokio::time::timeout(BATCH_WINDOW, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    r.flush(&sluice).await;
                    continue;
                }
            }
        };
        let Some(msg) = msg else { return Ok(()) };
        r.handle(msg);
        if r.pending.len() >= FULL_REPLACE_OVER {
            r.flush(&sluice).await;
        }
    }
}

impl Relay {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Absent(i) => {
                self.cache.retain(|k, _| k.0 != i);
                self.listed[i] = true;
                self.need_full = true;
            }
            Msg::Event(i, ev) => match *ev {
                Event::Init => {
                    self.listing.insert(i, BTreeMap::new());
                }
                Event::InitApply(o) => {
                    if let Some((ns, name, v)) = to_value(&self.kinds[i], &o) {
                        self.listing.entry(i).or_default().insert((i, ns, name), v);
                    }
                }
                Event::InitDone => {
                    let fresh = self.listing.remove(&i).unwrap_or_default();
                    self.cache.retain(|k, _| k.0 != i);
                    self.cache.extend(fresh);
                    self.pending.retain(|k, _| k.0 != i);
                    self.listed[i] = true;
                    self.need_full = true;
                    tracing::info!(kind = %self.kinds[i].resource.kind, "listed; full resync");
                }
                Event::Apply(o) => {
                    if let Some((ns, name, v)) = to_value(&self.kinds[i], &o) {
                        self.cache.insert((i, ns.clone(), name.clone()), v.clone());
                        self.pending.insert((i, ns, name), Some(v));
                    }
                }
                Event::Delete(o) => {
                    if let Some((ns, name, _)) = to_value(&self.kinds[i], &o) {
                        self.cache.remove(&(i, ns.clone(), name.clone()));
                        self.pending.insert((i, ns, name), None);
                    }
                }
            },
        }
    }

    fn path(&self, k: &Key) -> String {
        let w = &self.kinds[k.0];
        if w.namespaced {
            format!("/v1/{}/{}/{}", w.resource.plural, k.1, k.2)
        } else {
            format!("/v1/{}/{}", w.resource.plural, k.2)
        }
    }

    /// Sends what is pending; on failure keeps it (as a full resync) for the next try.
    async fn flush(&mut self, sluice: &std::sync::Arc<Client>) {
        if !self.listed.iter().all(|l| *l) {
            return; // not every kind listed yet: a partial state would delete the rest
        }
        if self.need_full || self.pending.len() >= FULL_REPLACE_OVER {
            let items: Vec<Value> = self.cache.values().cloned().collect();
            let n = items.len();
            let s = sluice.clone();
            match tokio::task::spawn_blocking(move || full_replace(&s, items)).await {
                Ok(Ok(skipped)) => {
                    tracing::info!(objects = n - skipped, skipped, "full state sent to sluiced");
                    self.need_full = false;
                    self.pending.clear();
                }
                Ok(Err(e)) => self.retry_later(e).await,
                Err(e) => self.retry_later(anyhow::anyhow!("{e}")).await,
            }
            return;
        }
        let batch: Vec<(String, Option<Value>)> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(k, v)| (self.path(&k), v))
            .collect();
        let s = sluice.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<()> {
            for (path, v) in batch {
                let a = match &v {
                    Some(v) => s.request("PUT", &path, Some(v))?,
                    None => s.request("DELETE", &path, None)?,
                };
                let deleting = v.is_none();
                match a.status {
                    200..=299 => {}
                    404 if deleting => {} // already gone
                    401 | 403 => anyhow::bail!("sluiced refused the token: {}", a.error_text()),
                    422 => tracing::error!(path, "sluiced rejected the object: {}", a.error_text()),
                    s => tracing::error!(path, status = s, "sluiced: {}", a.error_text()),
                }
            }
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.retry_later(e).await,
            Err(e) => self.retry_later(anyhow::anyhow!("{e}")).await,
        }
    }

    async fn retry_later(&mut self, e: anyhow::Error) {
        tracing::warn!(
            "sending to sluiced failed ({e:#}); full resync in {}s",
            RETRY.as_secs()
        );
        self.need_full = true;
        self.pending.clear();
        tokio::time::sleep(RETRY).await;
    }
}

/// PUT /v1/state with `items`; an object sluice rejects (422 naming `items[i]`) is logged and
/// left out, so one bad object cannot hold the whole cluster state back. Returns how many were
/// left out.
fn full_replace(sluice: &Client, mut items: Vec<Value>) -> Result<usize> {
    let mut skipped = 0;
    loop {
        let doc = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let a = sluice.request("PUT", "/v1/state", Some(&doc))?;
        if a.ok() {
            return Ok(skipped);
        }
        if a.status == 422 {
            let field = a
                .json()
                .ok()
                .and_then(|j| j.get("field").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            let idx = field
                .strip_prefix("items[")
                .and_then(|r| r.split(']').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(i) = idx.filter(|i| *i < items.len()) {
                tracing::error!("sluiced rejected {}: leaving it out", a.error_text());
                items.remove(i);
                skipped += 1;
                continue;
            }
        }
        anyhow::bail!("{}", crate::client::explain(&a));
    }
}
