//! The control API of the real sluiced, over its unix socket: apply, change, delete; bad input
//! changes nothing; restart restores the state from disk; tokens are enforced. sluiced runs in
//! API-only mode (no interfaces), so these tests need no root.

mod apid;

use apid::Daemon;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn service(port: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "shop", "uid": "keep-me", "annotations": {"a": "b"}},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port, "nodePort": 30080}],
                    "someFutureField": {"x": 1}}})
}

fn slice() -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.1.5"]}, {"addresses": ["10.0.1.6"]}],
           "ports": [{"name": "http", "port": 8080}]})
}

#[test]
fn apply_change_delete_and_bad_input_changes_nothing() {
    let d = Daemon::start(true);
    let a = d.req("PUT", "/v1/services/shop/web", Some(&service(80)));
    assert_eq!(a.status, 201, "{}", a.error_text());
    assert_eq!(a.json().unwrap()["result"], "created");
    assert_eq!(
        d.req("PUT", "/v1/endpointslices/shop/web-1", Some(&slice()))
            .status,
        201
    );

    // unknown fields are kept
    let got = d.client(false).get("/v1/services/shop/web").unwrap();
    assert_eq!(got["spec"]["someFutureField"]["x"], 1);
    assert_eq!(got["metadata"]["uid"], "keep-me");
    let st = d.client(false).get("/v1/status").unwrap();
    assert_eq!(
        (st["frontends"].as_u64(), st["backends"].as_u64()),
        (Some(2), Some(4)),
        "{st}"
    );

    // change
    let a = d.req("PUT", "/v1/services/shop/web", Some(&service(81)));
    assert_eq!(
        (a.status, a.json().unwrap()["result"].clone()),
        (200, json!("configured"))
    );
    assert_eq!(
        d.req("PUT", "/v1/services/shop/web", Some(&service(81)))
            .json()
            .unwrap()["result"],
        "unchanged"
    );
    let before = d.state();

    // bad input of every kind: a clear 4xx, and nothing changes
    let bad: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "PUT",
            "/v1/services/shop/web",
            Some(service(0)),
            422,
            "spec.ports[0].port",
        ),
        (
            "PUT",
            "/v1/services/shop/other",
            Some(service(80)),
            422,
            "does not match the URL",
        ),
        (
            "PUT",
            "/v1/gadgets/shop/web",
            Some(service(80)),
            404,
            "unknown kind",
        ),
        (
            "PUT",
            "/v1/nodes/shop/web",
            Some(service(80)),
            404,
            "cluster-scoped",
        ),
        (
            "PUT",
            "/v1/services/web",
            Some(service(80)),
            404,
            "namespaced",
        ),
        (
            "PUT",
            "/v1/state",
            Some(
                json!({"items": [service(80), {"kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "nope"}}]}),
            ),
            422,
            "items[1].status.podIP",
        ),
        ("PUT", "/v1/state", Some(json!({"items": 5})), 422, "items"),
        (
            "PUT",
            "/v1/services/shop/api",
            Some(
                json!({"kind": "Service", "metadata": {"name": "api"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 81, "name": "http"}]}}),
            ),
            422,
            "already served by Service shop/web",
        ),
        (
            "DELETE",
            "/v1/services/shop/nothere",
            None,
            404,
            "not found",
        ),
    ];
    for (m, path, body, code, needle) in bad {
        let a = d.req(m, path, body.as_ref());
        assert_eq!(a.status, code, "{m} {path}: {}", a.error_text());
        assert!(
            a.error_text().contains(needle),
            "{m} {path}: {:?} lacks {needle:?}",
            a.error_text()
        );
    }
    // raw bodies the typed client cannot send: malformed JSON, YAML, oversize, wrong token
    let raw = |ct: &str, body: &[u8], token: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(d.dir.join("api.sock")).unwrap();
        write!(s, "PUT /v1/services/shop/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        let _ = s.write_all(body);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (
            out.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            out,
        )
    };
    let tok = "test-token-0123456789";
    assert_eq!(raw("application/json", b"{not json", tok).0, 400);
    assert_eq!(raw("application/yaml", b"kind: [unclosed", tok).0, 400);
    assert_eq!(raw("text/plain", b"{}", tok).0, 415);
    assert_eq!(raw("application/json", &vec![b' '; 70_000], tok).0, 413);
    assert_eq!(
        raw("application/json", b"{}", "wrong-token-0123456789").0,
        401
    );
    assert_eq!(
        d.client(false)
            .request("PUT", "/v1/services/shop/web", Some(&service(80)))
            .unwrap()
            .status,
        401
    );
    assert_eq!(d.state(), before, "a rejected request changed the state");

    // YAML is accepted like kubectl's
    let yaml = b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {team: a}\n";
    let (code, out) = {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(d.dir.join("api.sock")).unwrap();
        write!(s, "PUT /v1/namespaces/shop HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {tok}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n", yaml.len()).unwrap();
        s.write_all(yaml).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        (
            out.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0),
            out,
        )
    };
    assert_eq!(code, 201, "{out}");

    // delete
    assert_eq!(d.req("DELETE", "/v1/services/shop/web", None).status, 200);
    assert_eq!(
        d.client(false)
            .request("GET", "/v1/services/shop/web", None)
            .unwrap()
            .status,
        404
    );
    let st = d.client(false).get("/v1/status").unwrap();
    assert_eq!(st["frontends"], 0, "{st}");
    assert_eq!(st["objects"]["endpointslices"], 1);

    // full replace
    let a = d.req(
        "PUT",
        "/v1/state",
        Some(&json!({"kind": "List", "items": [service(80), slice()]})),
    );
    assert_eq!(a.status, 200, "{}", a.error_text());
    let items = d.state()["items"].as_array().unwrap().len();
    assert_eq!(items, 2);
}

#[test]
fn restart_restores_the_state_from_disk() {
    let mut d = Daemon::start(true);
    assert!(d
        .req("PUT", "/v1/services/shop/web", Some(&service(80)))
        .ok());
    assert!(d
        .req("PUT", "/v1/endpointslices/shop/web-1", Some(&slice()))
        .ok());
    let before = d.state();
    assert_eq!(d.stop(), Some(0), "{}", d.log());

    let dir = d.dir.clone();
    std::mem::forget(d); // keep the directory: the next daemon starts from it
    let d2 = Daemon::start_in(dir.clone(), true);
    assert_eq!(d2.state(), before);
    let st = d2.client(false).get("/v1/status").unwrap();
    assert_eq!(st["frontends"], 2, "{st}");
    drop(d2);

    // a state file of another layout is set aside, never misread
    let dir = Daemon::dir();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/state.json"),
        br#"{"kind":"List","metadata":{"sluiceStateVersion":99},"items":[]}"#,
    )
    .unwrap();
    let d3 = Daemon::start_in(dir.clone(), true);
    assert_eq!(d3.state()["items"], json!([]));
    assert!(dir.join("state/state.json.bad").exists());
    assert!(d3.log().contains("layout version"), "{}", d3.log());
}

#[test]
fn without_a_token_file_the_api_is_read_only() {
    let d = Daemon::start(false);
    let a = d
        .client(true)
        .request("PUT", "/v1/services/shop/web", Some(&service(80)))
        .unwrap();
    assert_eq!(a.status, 403);
    assert!(a.error_text().contains("read-only"));
    assert_eq!(
        d.client(false)
            .request("GET", "/v1/state", None)
            .unwrap()
            .status,
        200
    );
    let spec = d.client(false).get("/openapi.json").unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
}

#[test]
fn a_token_file_others_can_read_is_refused_at_start() {
    let dir = Daemon::dir();
    let cfg = Daemon::config(&dir, true, "");
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sluiced"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(err.contains("chmod 600"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn identities_of_pods_are_listed_with_their_labels_and_pods() {
    let d = Daemon::start(true);
    for (name, app, ip) in [
        ("fe-1", "frontend", "10.0.1.5"),
        ("fe-2", "frontend", "10.0.1.6"),
        ("api-1", "api", "10.0.1.7"),
    ] {
        let pod = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                         "status": {"podIP": ip}});
        let r = d.req("PUT", &format!("/v1/pods/shop/{name}"), Some(&pod));
        assert_eq!(r.status, 201, "{}", r.error_text());
    }
    let list = d.client(false).get("/v1/identities").unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items[0]["labels"], json!(["reserved:host"]));
    assert_eq!(items[1]["id"], 2, "reserved:world");
    let fe: Vec<&Value> = items
        .iter()
        .filter(|i| {
            i["labels"]
                .as_array()
                .unwrap()
                .contains(&json!("k8s:app=frontend"))
        })
        .collect();
    assert_eq!(fe.len(), 1, "{list}");
    assert_eq!(fe[0]["endpoints"], json!(["shop/fe-1", "shop/fe-2"]));
    assert!(fe[0]["id"].as_u64().unwrap() >= 256);
    assert_eq!(items.len(), 7 + 2, "7 reserved, frontend and api: {list}");
}
