//! Network policy in the lab with real curl: a CiliumNetworkPolicy admits the labelled client
//! to the web pods on port 80 only, directly and through the service; relabelled, the same
//! client is dropped with POLICY_DENIED. A policy published while a connection is open cuts
//! it (each connection keeps its verdict only until the next snapshot, decision 016).

mod common;

use common::{api, lab_config, repo_file, EchoServers, Lab, SERIAL};
use serde_json::{json, Value};

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// PUT `v` at `path` and wait until every worker runs the result.
fn put(lab: &Lab, path: &str, v: &Value) {
    let a = api(lab)
        .request("PUT", &format!("{path}?wait=true"), Some(v))
        .expect("API");
    assert!(a.ok(), "{path}: {}", a.error_text());
    assert_eq!(a.json().unwrap()["converged"], true);
}

/// The policy both tests publish: the web pods admit app=client on TCP port 80 only.
fn put_web_from_client(lab: &Lab) {
    let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-from-client", "namespace": "lab"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}});
    put(lab, "/v1/ciliumnetworkpolicies/lab/web-from-client", &cnp);
}

fn client_pod(app: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": "client", "namespace": "lab", "labels": {"app": app}},
           "status": {"podIP": "10.10.0.2"}})
}

#[test]
fn a_policy_admits_the_labelled_client_and_drops_it_once_relabelled() {
    let _g = lock();
    let Some(lab) = Lab::up("pol", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    common::apply(&lab, "lab-cluster.yaml");
    put(&lab, "/v1/pods/lab/client", &client_pod("client"));
    // before any policy: everything flows
    assert!(lab.curl("http://10.20.0.11/").is_some());

    put_web_from_client(&lab);
    // allowed: routed to a pod, and through the service to whichever backend
    for url in [
        "http://10.20.0.11/",
        "http://10.20.0.13/",
        "http://10.96.0.80/",
        "http://10.10.0.1:30080/",
    ] {
        let body = lab.curl(url);
        assert!(
            body.as_deref()
                .is_some_and(|b| b.starts_with("hello from backend")),
            "{url}: {body:?}; {}",
            d.log_text()
        );
    }
    // the UDP service is not port 80/TCP: the web pods refuse it
    let udp = common::udp_ask(&lab, "10.96.0.53", 53, 3);
    assert_eq!(udp.get("error"), Some(&3), "{udp:?}");

    // the same client without the label: dropped, and the counters say why
    put(&lab, "/v1/pods/lab/client", &client_pod("intruder"));
    let o = lab.exec("cli", &["curl", "-s", "-m", "2", "http://10.20.0.11/"]);
    assert!(!o.status.success(), "an unlabelled client got through");
    let s = d.stats();
    let denied = denied(&s);
    assert!(denied > 3, "POLICY_DENIED {denied}: {s}");
    // and which policy decided
    assert_eq!(
        s["totals"]["policy_drops"]["lab/web-from-client"].as_u64(),
        Some(denied),
        "{s}"
    );
}

/// A connection open before a policy exists, routed to a web pod and through the service,
/// talks until a policy that admits the client only on port 80 is published: then its next
/// line is dropped, although every earlier one passed.
#[test]
fn a_policy_published_while_connections_are_open_cuts_them() {
    let _g = lock();
    let Some(lab) = Lab::up("polopen", 1) else {
        return;
    };
    let d = lab.start_sluiced(&lab_config(1, ""));
    common::apply(&lab, "lab-cluster.yaml");
    put(&lab, "/v1/pods/lab/client", &client_pod("client"));
    let _servers = EchoServers::start(&lab, 7000);
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "lab"},
        "spec": {"clusterIP": "10.96.0.70", "ports": [{"name": "echo", "port": 7000, "protocol": "TCP"}]}});
    put(&lab, "/v1/services/lab/echo", &svc);
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-lab", "namespace": "lab", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.20.0.11"], "conditions": {"ready": true}}],
        "ports": [{"name": "echo", "port": 7000, "protocol": "TCP"}]});
    put(&lab, "/v1/endpointslices/lab/echo-lab", &slice);
    // a line every 50 ms for 6 s, on two connections: routed, and through the service
    let echo = repo_file("tools/lab/echo.py");
    let talkers: Vec<_> = ["10.20.0.11", "10.96.0.70"]
        .iter()
        .map(|to| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &lab.ns("cli")])
                .args(["python3", &echo, "talk", to, "7000", "6"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("talker")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    put_web_from_client(&lab);
    for (to, t) in ["routed", "service"].iter().zip(talkers) {
        let out = t.wait_with_output().expect("talker output");
        let r: Value = serde_json::from_slice(&out.stdout).expect("talker JSON");
        eprintln!("{to}: {r}");
        let echoed = r["echoed"].as_u64().unwrap();
        // ~1.5 s of lines at 20/s before the policy; none after it (6 s would be ~120)
        assert!(
            echoed >= 10,
            "{to}: the connection did not work before: {r}"
        );
        assert!(
            r["error"].is_string(),
            "{to}: still open after the policy: {r}; {}",
            d.log_text()
        );
        assert!(echoed < 60, "{to}: {r}");
    }
    assert!(denied(&d.stats()) >= 2, "{}", d.stats());
}

/// Packets dropped as POLICY_DENIED in stats `s`, over the workers.
fn denied(s: &Value) -> u64 {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["drops"].as_array().unwrap().iter())
        .filter(|x| x["reason"] == "POLICY_DENIED")
        .map(|x| x["packets"].as_u64().unwrap())
        .sum()
}

/// `curl -s -w ' %{http_code}'` from the client with `args`: body and status.
fn curl_status(lab: &Lab, args: &[&str]) -> String {
    let mut a = vec!["curl", "-s", "-m", "5", "-w", " %{http_code}"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&lab.exec("cli", &a).stdout).into_owned()
}

#[test]
fn http_rules_pass_allowed_requests_and_answer_403_to_the_rest() {
    let _g = lock();
    let Some(lab) = Lab::up("l7", 1) else { return };
    let d = lab.start_sluiced(&lab_config(1, ""));
    common::apply(&lab, "lab-cluster.yaml");
    put(&lab, "/v1/pods/lab/client", &client_pod("client"));
    // Cilium's L7 example: the client may only GET /api/users/.* and POST /api/login
    let cnp = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-l7", "namespace": "lab"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                           "rules": {"http": [
                                               {"method": "GET", "path": "/api/users/.*"},
                                               {"method": "POST", "path": "/api/login"}]}}]}]}});
    put(&lab, "/v1/ciliumnetworkpolicies/lab/web-l7", &cnp);

    // routed to a pod, and through the ClusterIP and the NodePort (SNAT, after NAT)
    for base in [
        "http://10.20.0.11",
        "http://10.96.0.80",
        "http://10.10.0.1:30080",
    ] {
        let ok = curl_status(&lab, &[&format!("{base}/api/users/1")]);
        assert!(
            ok.contains("GET /api/users/1 (0 bytes)") && ok.ends_with(" 200"),
            "{base}: {ok}; {}",
            d.log_text()
        );
        let login = curl_status(&lab, &["-d", "user=a", &format!("{base}/api/login")]);
        assert!(
            login.contains("POST /api/login (6 bytes)") && login.ends_with(" 200"),
            "{base}: {login}"
        );
        let admin = curl_status(&lab, &["-X", "POST", &format!("{base}/admin/delete")]);
        assert_eq!(admin, "Access denied 403", "{base}");
        let other = curl_status(&lab, &[&format!("{base}/")]);
        assert_eq!(other, "Access denied 403", "{base}: GET / matches no rule");
    }
    // one keep-alive connection: a request split across segments, a second one, then a
    // refused one split too; after the 403 the connection is closed
    let pieces = |host: &str| {
        let o = lab.exec(
            "cli",
            &[
                "python3",
                &format!("{}/../tools/lab/http_pieces.py", env!("CARGO_MANIFEST_DIR")),
                host,
                "80",
                "GET /api/us|ers/7 HTT|P/1.1\\r\\nHost: x\\r\\n|\\r\\n",
                "GET /api/users/8 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
                "POST /adm|in/delete HTTP/1.1\\r\\nContent-Length: 4\\r\\n\\r|\\nbody",
                "GET /api/users/9 HTTP/1.1\\r\\n\\r\\n",
            ],
        );
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        v
    };
    for host in ["10.20.0.12", "10.96.0.80"] {
        let v = pieces(host);
        let r = v.as_array().unwrap();
        assert_eq!(r.len(), 4, "{host}: {v}");
        assert_eq!(r[0]["status"], 200, "{host}: {v}");
        assert!(r[0]["body"].as_str().unwrap().contains("GET /api/users/7"));
        assert!(r[1]["body"].as_str().unwrap().contains("GET /api/users/8"));
        assert_eq!(
            (&r[2]["status"], r[2]["body"].as_str()),
            (&json!(403), Some("Access denied")),
            "{host}: {v}"
        );
        assert!(
            r[3]["closed"] == true || r[3].get("error").is_some(),
            "{host}: the connection stays closed: {v}"
        );
    }
    // no backend ever received a refused request
    for i in 1..=3 {
        let log = std::fs::read_to_string(format!("/run/sluice-lab/{}/http-be{i}.log", lab.prefix))
            .unwrap_or_default();
        assert!(
            !log.contains("/admin"),
            "be{i} got a refused request: {log}"
        );
        assert!(!log.contains("\"GET / "), "be{i}: {log}");
    }
    // the counters: requests judged and refused, and the policy that refused them
    let s = d.stats();
    let refused = common::worker_sum(&s, "l7_refused");
    assert_eq!(refused, 3 * 2 + 2, "{s}");
    assert!(
        common::worker_sum(&s, "l7_requests") >= 3 * 4 + 2 * 3,
        "{s}"
    );
    assert!(
        s["totals"]["policy_drops"]["lab/web-l7"].as_u64() >= Some(refused),
        "{s}"
    );

    // a pod without the label is dropped at L3/L4 before any HTTP is read
    put(&lab, "/v1/pods/lab/client", &client_pod("intruder"));
    let o = lab.exec(
        "cli",
        &["curl", "-s", "-m", "2", "http://10.20.0.11/api/users/1"],
    );
    assert!(!o.status.success(), "an unlabelled client got through");
}
