//! A fake Kubernetes API server for the syncer test: the real list/watch protocol over HTTP/1.1.
//! Lists answer `{kind: XList, metadata: {resourceVersion}, items}`; watches stream JSON events
//! (chunked) from the requested resourceVersion: first the logged events after it, then live
//! ones. The test can inject a `410 Gone` ERROR event, drop watch connections, or change a
//! resource's contents without events (what a syncer misses while disconnected).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a watch stays open without events (the real server closes after timeoutSeconds).
const WATCH_IDLE: Duration = Duration::from_secs(20);

enum Cmd {
    Event(Value),
    Gone,
    Drop,
}

#[derive(Default)]
struct Resource {
    list_kind: String,
    items: Vec<Value>,
    log: Vec<(u64, Value)>,
    watchers: Vec<mpsc::Sender<Cmd>>,
    absent: bool,
    /// History before this version was compacted: watching from an older one is `410 Gone`.
    compacted: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    resources: HashMap<String, Resource>,
}

#[derive(Clone)]
pub struct FakeKube {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

fn key_of(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().unwrap_or("").to_string(),
    )
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::default();
        let fk = FakeKube { port, state };
        let me = fk.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.serve(s));
            }
        });
        fk
    }

    /// Declares a resource path (e.g. /api/v1/services) with its list kind and initial items.
    pub fn resource(&self, path: &str, list_kind: &str, items: Vec<Value>) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let items = items
            .into_iter()
            .map(|mut v| {
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                v
            })
            .collect();
        st.resources.insert(
            path.into(),
            Resource {
                list_kind: list_kind.into(),
                items,
                ..Default::default()
            },
        );
    }

    /// A resource the cluster does not serve (404), like a CRD that is not installed.
    pub fn absent(&self, path: &str) {
        self.state.lock().unwrap().resources.insert(
            path.into(),
            Resource {
                absent: true,
                ..Default::default()
            },
        );
    }

    fn event(
        &self,
        path: &str,
        ty: &str,
        mut obj: Value,
        change: impl FnOnce(&mut Vec<Value>, &Value),
    ) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let r = st.resources.get_mut(path).expect("declared resource");
        change(&mut r.items, &obj);
        let ev = json!({"type": ty, "object": obj});
        r.log.push((rv, ev.clone()));
        r.watchers
            .retain(|w| w.send(Cmd::Event(ev.clone())).is_ok());
    }

    /// ADDED or MODIFIED, as the object is new or not.
    pub fn apply(&self, path: &str, obj: Value) {
        let exists = {
            let st = self.state.lock().unwrap();
            st.resources[path]
                .items
                .iter()
                .any(|i| key_of(i) == key_of(&obj))
        };
        self.event(
            path,
            if exists { "MODIFIED" } else { "ADDED" },
            obj,
            |items, o| {
                items.retain(|i| key_of(i) != key_of(o));
                items.push(o.clone());
            },
        );
    }

    pub fn delete(&self, path: &str, obj: Value) {
        self.event(path, "DELETED", obj, |items, o| {
            items.retain(|i| key_of(i) != key_of(o))
        });
    }

    pub fn bookmark(&self, path: &str, kind: &str, api_version: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let ev = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": st.rv.to_string()}}});
        let rv = st.rv;
        let r = st.resources.get_mut(path).unwrap();
        r.log.push((rv, ev.clone()));
        r.watchers
            .retain(|w| w.send(Cmd::Event(ev.clone())).is_ok());
    }

    /// Changes the contents with no events, then tells every watcher `410 Gone`: the client must
    /// relist to see what changed.
    pub fn replace_and_expire(&self, path: &str, items: Vec<Value>) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let r = st.resources.get_mut(path).unwrap();
        r.items = items
            .into_iter()
            .map(|mut v| {
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                v
            })
            .collect();
        r.log.clear(); // history before now is compacted away: old versions are gone
        r.compacted = rv;
        for w in r.watchers.drain(..) {
            let _ = w.send(Cmd::Gone);
        }
    }

    /// Cuts every open watch connection of `path` without a clean end.
    pub fn drop_watches(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        for w in st.resources.get_mut(path).unwrap().watchers.drain(..) {
            let _ = w.send(Cmd::Drop);
        }
    }

    pub fn watcher_count(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .resources
            .get(path)
            .map(|r| r.watchers.len())
            .unwrap_or(0)
    }

    fn serve(&self, s: TcpStream) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let mut s = s;
        let known = self
            .state
            .lock()
            .unwrap()
            .resources
            .get(path)
            .map(|r| r.absent);
        match known {
            None | Some(true) => {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404}).to_string();
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
            Some(false)
                if params
                    .get("watch")
                    .is_some_and(|w| *w == "true" || *w == "1") =>
            {
                let since: u64 = params
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watch(s, path, since);
            }
            Some(false) => {
                let st = self.state.lock().unwrap();
                let r = &st.resources[path];
                let body = json!({"kind": r.list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": r.items}).to_string();
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        }
    }

    fn watch(&self, mut s: TcpStream, path: &str, since: u64) {
        let chunk = |s: &mut TcpStream, v: &Value| -> std::io::Result<()> {
            let line = format!("{v}\n");
            write!(s, "{:x}\r\n{line}\r\n", line.len())?;
            s.flush()
        };
        let (tx, rx) = mpsc::channel();
        {
            let mut st = self.state.lock().unwrap();
            let r = st.resources.get_mut(path).unwrap();
            if write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
                return;
            }
            if since > 0 && since < r.compacted {
                let _ = chunk(&mut s, &gone());
                let _ = write!(s, "0\r\n\r\n");
                return;
            }
            for (rv, ev) in &r.log {
                if *rv > since && chunk(&mut s, ev).is_err() {
                    return;
                }
            }
            r.watchers.push(tx);
        }
        loop {
            match rx.recv_timeout(WATCH_IDLE) {
                Ok(Cmd::Event(ev)) => {
                    if chunk(&mut s, &ev).is_err() {
                        return;
                    }
                }
                Ok(Cmd::Gone) => {
                    let _ = chunk(&mut s, &gone());
                    let _ = write!(s, "0\r\n\r\n");
                    return;
                }
                Ok(Cmd::Drop) => {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    return;
                }
                Err(_) => {
                    let _ = write!(s, "0\r\n\r\n");
                    return;
                }
            }
        }
    }

    /// A kubeconfig pointing at this server, written to `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                self.port
            ),
        )
        .unwrap();
        p
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}})
}
