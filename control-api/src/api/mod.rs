//! The REST API (axum; see docs/decisions/005-control-api-axum.md).
//!
//! Routes:
//!   GET  /healthz /readyz /openapi.json
//!   GET  /v1/status                      generation, per-worker generation, counters
//!   GET  /v1/state   PUT /v1/state       every object, as a Kubernetes List; full replace
//!   GET  /v1/capture                     a live packet capture as pcapng (interface, count,
//!                                        seconds, filter); one capture at a time
//!   GET  /metrics                        the counters in Prometheus' text format
//!   GET  /v1/flows                       flows (NDJSON), Hubble-like filters, follow=true streams
//!   GET  /v1/{kind}                      objects of a kind (plural, as kubectl: services, nodes, ...)
//!   GET  /v1/{kind}/{ns}                 namespaced kinds: objects of one namespace
//!   GET|PUT|DELETE /v1/{kind}/{name}     cluster-scoped kinds (namespaces, nodes)
//!   GET|PUT|DELETE /v1/{kind}/{ns}/{name}
//! Bodies are JSON, or YAML with a YAML content type. Mutations need `Authorization: Bearer`.
//! A mutation answers once the change is published; `?wait=true` answers once every worker runs it.

use crate::model::{Invalid, Kind, ObjectKey};
use crate::persist::Persister;
use crate::store::{Item, Outcome, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use body::{body_format, body_or_error, parse_body, state_items, StateItems};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_dataplane::state::StateHub;

mod body;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the daemon tells the API about the running datapath.
pub trait StatusSource: Send + Sync {
    /// Counters and interfaces (the stats document).
    fn counters(&self) -> Value;
    /// The snapshot generation each worker last ran.
    fn worker_generations(&self) -> Vec<u64>;
    /// The generation whose frontends and prefixes the XDP steering map follows (a change is
    /// live only once its traffic is steered too). Without XDP steering: always current.
    fn steered_generation(&self) -> u64 {
        u64::MAX
    }
    /// The counters in Prometheus' text format (`GET /metrics`).
    fn metrics(&self) -> String {
        String::new()
    }
}

/// Longest `?wait=true` before answering anyway (with `"converged": false`).
const WAIT_LIMIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for the workers: they report within one batch or one wakeup.
const WAIT_POLL: Duration = Duration::from_micros(200);

pub struct Api {
    pub store: Mutex<Store>,
    pub hub: Arc<StateHub>,
    pub persister: Persister,
    pub token: Option<String>,
    pub status: Arc<dyn StatusSource>,
    pub max_body: usize,
    pub appliance: String,
    /// The flows the workers reported (issue 7).
    pub flows: Arc<crate::flows::FlowLog>,
    /// Where the workers copy packets while a capture runs (`GET /v1/capture`).
    pub capture: Arc<sluice_dataplane::capture::CaptureTap>,
}

#[derive(Clone)]
struct Ctx {
    api: Arc<Api>,
    /// Reads need no token on this listener (loopback TCP, or the unix socket).
    open_reads: bool,
}

/// The router for one listener.
pub fn router(api: Arc<Api>, open_reads: bool) -> Router {
    let max_body = api.max_body;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // The server starts only after the saved state is restored and the datapath is up, so
        // answering at all means ready.
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/state", get(get_state).put(put_state))
        .route("/v1/identities", get(list_identities))
        .route("/v1/flows", get(flows))
        .route("/metrics", get(metrics))
        .route("/v1/capture", get(capture))
        .route("/v1/{kind}", get(list_kind))
        .route(
            "/v1/{kind}/{a}",
            get(get_one_or_ns).put(put_cluster).delete(delete_cluster),
        )
        .route(
            "/v1/{kind}/{ns}/{name}",
            get(get_namespaced)
                .put(put_namespaced)
                .delete(delete_namespaced),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Ctx { api, open_reads })
}

/// An error answer: JSON naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({"error": msg.into()}),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({"error": e.to_string(), "object": e.object, "field": e.field, "reason": e.reason}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn bearer_ok(expected: &str, headers: &HeaderMap) -> bool {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(got) = got.strip_prefix("Bearer ") else {
        return false;
    };
    // constant time in the token's length: no early exit on the first differing byte
    got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authorize(ctx: &Ctx, headers: &HeaderMap, mutating: bool) -> Result<(), ApiError> {
    if !mutating && ctx.open_reads {
        return Ok(());
    }
    match &ctx.api.token {
        None if mutating => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this API is read-only: sluiced has no api.token_file configured",
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "reads on this listener need a token, and none is configured",
        )),
        Some(t) if bearer_ok(t, headers) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <contents of api.token_file>)",
        )),
    }
}

fn kind_of(s: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown kind {s:?}; one of {}",
                Kind::ALL.map(|k| k.plural()).join(", ")
            ),
        )
    })
}

#[derive(Deserialize, Default)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<String>,
}

impl WaitQuery {
    fn wanted(&self) -> bool {
        matches!(self.wait.as_deref(), Some("true" | "1" | ""))
    }
}

/// Publishes the store's tables after a change, schedules the state write, optionally waits for
/// the workers; builds the answer.
async fn published(ctx: &Ctx, generation: u64, wait: bool, mut body: Value) -> Response {
    let mut converged = converged_now(&ctx.api, generation);
    if wait && !converged {
        // Polled off the runtime with the thread's own sleep: tokio's timer rounds every sleep
        // up to its 1 ms tick, which was most of a single change's ~2 ms answer.
        let api = ctx.api.clone();
        converged = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            loop {
                if converged_now(&api, generation) {
                    return true;
                }
                if start.elapsed() >= WAIT_LIMIT {
                    return false;
                }
                std::thread::sleep(WAIT_POLL);
            }
        })
        .await
        .unwrap_or(false);
    }
    body["generation"] = json!(generation);
    body["converged"] = json!(converged);
    Json(body).into_response()
}

fn converged_now(api: &Api, generation: u64) -> bool {
    api.status.steered_generation() >= generation
        && api
            .status
            .worker_generations()
            .iter()
            .all(|g| *g >= generation)
}

/// Runs a store mutation off the async runtime (compiling 10,000 services takes a while) and
/// publishes its result.
async fn mutate<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&mut Store) -> Result<(T, bool), ApiError> + Send + 'static,
) -> Result<(T, u64), ApiError> {
    let api = ctx.api.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = api.store.lock().unwrap_or_else(|p| p.into_inner());
        let (out, changed) = f(&mut store)?;
        let generation = if changed {
            let g = api.hub.set_cluster(store.tables());
            // the state as it is when the writer gets to it (None once the API is gone)
            let weak = Arc::downgrade(&api);
            api.persister.schedule_from(Box::new(move || {
                let api = weak.upgrade()?;
                let store = api.store.lock().unwrap_or_else(|p| p.into_inner());
                Some(store.snapshot_objects())
            }));
            g
        } else {
            api.hub.generation()
        };
        Ok((out, generation))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("apply task failed: {e}"),
        )
    })?
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

async fn status(State(ctx): State<Ctx>, headers: HeaderMap) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    let generation = ctx.api.hub.generation();
    let workers = ctx.api.status.worker_generations();
    let (counts, services, backends) = {
        let store = ctx.api.store.lock().unwrap_or_else(|p| p.into_inner());
        let counts: serde_json::Map<String, Value> = Kind::ALL
            .iter()
            .map(|k| (k.plural().to_string(), json!(store.count(*k))))
            .collect();
        let t = ctx.api.hub.current();
        (counts, t.cluster.services.len(), t.cluster.backend_count())
    };
    Ok(Json(json!({
        "appliance": ctx.api.appliance,
        "generation": generation,
        "workers": workers.iter().enumerate().map(|(i, g)| json!({"worker": i, "generation": g})).collect::<Vec<_>>(),
        "converged": workers.iter().all(|g| *g >= generation),
        "objects": counts,
        "frontends": services,
        "backends": backends,
        "persistence": {"writes": ctx.api.persister.writes(), "last_error": ctx.api.persister.last_error()},
        "counters": ctx.api.status.counters(),
    }))
    .into_response())
}

/// A List of `items`, serialised from them as they are (no copy as a tree).
#[derive(Serialize)]
struct ListDoc<T> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    items: Vec<T>,
}

fn list_doc<T: Serialize>(items: Vec<T>) -> ListDoc<T> {
    ListDoc {
        api_version: "v1",
        kind: "List",
        items,
    }
}

async fn get_state(State(ctx): State<Ctx>, headers: HeaderMap) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    let objects = ctx
        .api
        .store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshot_objects();
    Ok(Json(list_doc(objects)).into_response())
}

async fn put_state(
    State(ctx): State<Ctx>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    authorize(&ctx, &headers, true)?;
    let body = body_or_error(body)?;
    let format = body_format(&headers, &body)?;
    let (n, generation) = mutate(&ctx, move |s| {
        // the items borrow the body, which goes with the task
        let n = match state_items(format, &body)? {
            StateItems::Json(items) => {
                let items: Vec<Item> = items.iter().map(|t| Item::Text(t.get())).collect();
                s.replace_all_items(&items)?
            }
            StateItems::Parsed(items) => s.replace_all(items)?,
        };
        Ok((n, true))
    })
    .await?;
    Ok(published(
        &ctx,
        generation,
        q.wanted(),
        json!({"result": "replaced", "objects": n}),
    )
    .await)
}

/// Stops the capture when the answer ends (done, or the client went away).
struct CaptureGuard(Arc<sluice_dataplane::capture::CaptureTap>);
impl Drop for CaptureGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// `GET /v1/capture?interface=&count=&seconds=&filter=`: packets as the workers see them, as
/// received (inbound) and as transmitted after rewriting (outbound), streamed as pcapng. Reads
/// are allowed; a capture can only look, never change anything. 409 while another one runs.
async fn capture(
    State(ctx): State<Ctx>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    use sluice_dataplane::capture::{pcapng, ANY_PORT, SNAPLEN};
    authorize(&ctx, &headers, false)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let snap = ctx.api.hub.current();
    let names: Vec<String> = snap.ports.iter().map(|p| p.name.clone()).collect();
    if names.is_empty() {
        return Err(bad(
            "no interfaces to capture on (sluiced runs API-only)".into()
        ));
    }
    let mut port = ANY_PORT;
    let (mut count, mut seconds, mut filter) = (0u64, 0f64, crate::capture::Filter::default());
    for (k, v) in &q {
        match k.as_str() {
            "interface" if v == "any" || v.is_empty() => {}
            "interface" => {
                port = names
                    .iter()
                    .position(|n| n == v)
                    .ok_or_else(|| bad(format!("interface: {v:?} is not one of {names:?}")))?
                    as u32
            }
            "count" => count = v.parse().map_err(|_| bad(format!("count: {v:?}")))?,
            "seconds" => {
                seconds = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| bad(format!("seconds: {v:?}")))?
            }
            "filter" => {
                filter =
                    crate::capture::Filter::parse(v).map_err(|e| bad(format!("filter: {e}")))?
            }
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    let tap = ctx.api.capture.clone();
    if !tap.start(port) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a capture is already running; one at a time",
        ));
    }
    let guard = CaptureGuard(tap);
    let header = pcapng::header(
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        SNAPLEN as u32,
    );
    let deadline =
        (seconds > 0.0).then(|| tokio::time::Instant::now() + Duration::from_secs_f64(seconds));
    use futures_util::stream::{self, StreamExt};
    // state: the guard (stops the capture when dropped), packets still wanted (0: no limit)
    let packets = stream::unfold(
        (guard, filter, count, false),
        move |(guard, filter, mut left, done)| async move {
            if done {
                return None;
            }
            let mut idle = 0u32;
            loop {
                let mut out = Vec::new();
                // up to 256 packets a chunk
                for _ in 0..256 {
                    let Some(c) = guard.0.pop() else { break };
                    if !filter.matches(c.bytes()) {
                        continue;
                    }
                    pcapng::packet(
                        &mut out,
                        u32::from(c.port),
                        c.time_ns,
                        c.len,
                        c.bytes(),
                        c.outbound,
                    );
                    if left > 0 {
                        left -= 1;
                        if left == 0 {
                            return Some((
                                Ok::<Bytes, std::io::Error>(Bytes::from(out)),
                                (guard, filter, 0, true),
                            ));
                        }
                    }
                }
                if !out.is_empty() {
                    return Some((Ok(Bytes::from(out)), (guard, filter, left, false)));
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return None;
                }
                idle += 1;
                if idle.is_multiple_of(100) {
                    // a second without packets: a statistics block (lost packets so far), so a
                    // reader that left is noticed and the capture stops
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    let lost = guard.0.lost.load(std::sync::atomic::Ordering::Relaxed);
                    pcapng::statistics(&mut out, 0, now, lost);
                    return Some((Ok(Bytes::from(out)), (guard, filter, left, false)));
                }
                // the ring holds 4,096 packets: 10 ms between looks is ~400k pps per capture
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    );
    let body = stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(header))]).chain(packets);
    Ok((
        [(header::CONTENT_TYPE, "application/x-pcapng")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.api.status.metrics(),
    )
        .into_response())
}

/// `GET /v1/flows`: the kept flows that match, as NDJSON (one Hubble-style flow per line);
/// with `follow=true`, then every new one that matches as it comes, until the client leaves.
async fn flows(
    State(ctx): State<Ctx>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    use crate::flows::FlowFilter;
    authorize(&ctx, &headers, false)?;
    let (filter, last, follow) =
        FlowFilter::from_query(&q).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let line = |f: &Value| {
        let mut b = serde_json::to_vec(f).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    // subscribe before reading what is kept: nothing falls between the two
    let live = follow.then(|| ctx.api.flows.subscribe());
    let kept: Vec<Bytes> = ctx
        .api
        .flows
        .query(&filter, last)
        .iter()
        .map(|l| Bytes::copy_from_slice(l))
        .collect();
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    let Some(rx) = live else {
        return Ok((ndjson, kept.concat()).into_response());
    };
    use futures_util::stream::{self, StreamExt};
    let history = stream::iter(kept.into_iter().map(Ok::<Bytes, std::io::Error>));
    let updates = stream::unfold((rx, filter), move |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(f) if filter.matches(&f) => return Some((Ok(line(&f)), (rx, filter))),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    // a follower too slow for the flow rate: told, not silently gapped
                    let gap = json!({"lost_events": {"num_events_lost": n}});
                    return Some((Ok(line(&gap)), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = axum::body::Body::from_stream(history.chain(updates));
    Ok((ndjson, body).into_response())
}

/// Security identities: the reserved ones and those of the pods' label sets, with their pods.
async fn list_identities(State(ctx): State<Ctx>, headers: HeaderMap) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    let store = ctx.api.store.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> = store.identities().into_iter().map(|i| json!(i)).collect();
    Ok(Json(list_doc(items)).into_response())
}

async fn list_kind(
    State(ctx): State<Ctx>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    let kind = kind_of(&kind)?;
    let store = ctx.api.store.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<_> = store
        .list(Some(kind), None)
        .map(|(_, v)| v.clone())
        .collect();
    drop(store);
    Ok(Json(list_doc(items)).into_response())
}

fn key(kind: Kind, ns: &str, name: &str) -> Result<ObjectKey, ApiError> {
    match (kind.namespaced(), ns.is_empty()) {
        (true, true) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{} is namespaced: use /v1/{}/NAMESPACE/NAME",
                kind.name(),
                kind.plural()
            ),
        )),
        (false, false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{} is cluster-scoped: use /v1/{}/NAME",
                kind.name(),
                kind.plural()
            ),
        )),
        _ => Ok(ObjectKey {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }),
    }
}

fn get_object(ctx: &Ctx, key: &ObjectKey) -> ApiResult {
    let store = ctx.api.store.lock().unwrap_or_else(|p| p.into_inner());
    match store.get(key).cloned() {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{key} not found"),
        )),
    }
}

async fn get_one_or_ns(
    State(ctx): State<Ctx>,
    Path((kind, a)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    let kind = kind_of(&kind)?;
    if kind.namespaced() {
        let store = ctx.api.store.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<_> = store
            .list(Some(kind), Some(&a))
            .map(|(_, v)| v.clone())
            .collect();
        drop(store);
        return Ok(Json(list_doc(items)).into_response());
    }
    get_object(&ctx, &key(kind, "", &a)?)
}

async fn get_namespaced(
    State(ctx): State<Ctx>,
    Path((kind, ns, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    authorize(&ctx, &headers, false)?;
    get_object(&ctx, &key(kind_of(&kind)?, &ns, &name)?)
}

async fn put_object(
    ctx: Ctx,
    key: ObjectKey,
    q: WaitQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    authorize(&ctx, &headers, true)?;
    let body = body_or_error(body)?;
    let v = parse_body(&headers, &body)?;
    let ((k, outcome), generation) = mutate(&ctx, move |s| {
        let (k, o) = s.put(v, Some(&key))?;
        Ok(((k, o), o != Outcome::Unchanged))
    })
    .await?;
    let status = if outcome == Outcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = published(
        &ctx,
        generation,
        q.wanted(),
        json!({"object": k.to_string(), "result": outcome}),
    )
    .await;
    *resp.status_mut() = status;
    Ok(resp)
}

async fn delete_object(ctx: Ctx, key: ObjectKey, q: WaitQuery, headers: HeaderMap) -> ApiResult {
    authorize(&ctx, &headers, true)?;
    let k2 = key.clone();
    let (outcome, generation) = mutate(&ctx, move |s| match s.delete(&k2) {
        Some(o) => Ok((o, true)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{k2} not found"),
        )),
    })
    .await?;
    Ok(published(
        &ctx,
        generation,
        q.wanted(),
        json!({"object": key.to_string(), "result": outcome}),
    )
    .await)
}

async fn put_cluster(
    State(ctx): State<Ctx>,
    Path((kind, name)): Path<(String, String)>,
    q: Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let key = key(kind_of(&kind)?, "", &name)?;
    put_object(ctx, key, q.0, headers, body).await
}

async fn put_namespaced(
    State(ctx): State<Ctx>,
    Path((kind, ns, name)): Path<(String, String, String)>,
    q: Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let key = key(kind_of(&kind)?, &ns, &name)?;
    put_object(ctx, key, q.0, headers, body).await
}

async fn delete_cluster(
    State(ctx): State<Ctx>,
    Path((kind, name)): Path<(String, String)>,
    q: Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = key(kind_of(&kind)?, "", &name)?;
    delete_object(ctx, key, q.0, headers).await
}

async fn delete_namespaced(
    State(ctx): State<Ctx>,
    Path((kind, ns, name)): Path<(String, String, String)>,
    q: Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let key = key(kind_of(&kind)?, &ns, &name)?;
    delete_object(ctx, key, q.0, headers).await
}
