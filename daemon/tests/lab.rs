//! End to end on real namespaces: XDP steering + AF_XDP workers forwarding real TCP (curl to a
//! real HTTP server) and UDP between the lab's client and backends.

mod common;

use common::{api, iface, lab_config, u, Lab, SERIAL};
use std::net::SocketAddr;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lab config without a restart hold: XDP attached through a bpf_link, gone with the
/// process.
fn no_hold() -> String {
    lab_config(1, "").replace("[dataplane]\n", "[dataplane]\nrestart_hold_ms = 0\n")
}

#[test]
fn forwards_tcp_and_udp_through_afxdp_and_stops_cleanly() {
    let _g = lock();
    let Some(lab) = Lab::up("fw", 1) else { return };
    // no restart hold: the program goes at exit (restart.rs tests the hold)
    let mut d = lab.start_sluiced(&no_hold());

    assert_eq!(
        lab.curl("http://10.20.0.11/").as_deref(),
        Some("hello from backend be1\n"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        lab.curl("http://10.20.0.12/").as_deref(),
        Some("hello from backend be2\n")
    );
    assert_eq!(
        lab.curl("http://[fd00:20::11]/").as_deref(),
        Some("hello from backend be1\n")
    );

    let sent = 2000;
    let got = lab.udp_burst("be1", "10.20.0.11:9000".parse().unwrap(), sent, 8, None);
    let got6 = lab.udp_burst(
        "be2",
        "[fd00:20::12]:9001".parse::<SocketAddr>().unwrap(),
        500,
        4,
        None,
    );
    let s = d.stats();
    eprintln!("udp4 {got}/{sent}, udp6 {got6}/500; stats: {s}");
    assert!(
        got >= sent * 95 / 100,
        "only {got} of {sent} UDP datagrams arrived"
    );
    assert!(got6 >= 475, "only {got6} of 500 IPv6 UDP datagrams arrived");

    // They went through the workers, not the kernel: steered by XDP and transmitted by sluice.
    let steered_cli = u(iface(&s, "eth-cli"), &["xdp_steered"]);
    let steered_srv = u(iface(&s, "eth-srv"), &["xdp_steered"]);
    assert!(
        steered_cli >= (got + got6) as u64,
        "eth-cli steered {steered_cli}"
    );
    assert!(
        steered_srv > 0,
        "replies from the backends were not steered"
    );
    assert!(u(&s, &["totals", "tx_packets"]) >= (got + got6) as u64);
    assert_eq!(u(iface(&s, "eth-cli"), &["xdp_no_socket"]), 0);

    // Adaptive poll: with no traffic the worker sleeps on socket readiness instead of spinning.
    let sleeps_before = u(&s["workers"][0], &["sleeps"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let idle = d.stats();
    assert!(
        u(&idle["workers"][0], &["sleeps"]) > sleeps_before,
        "idle adaptive worker did not sleep: {idle}"
    );

    // The worker has its core to itself: sluiced's other threads may run anywhere else.
    let threads = thread_cores(d.pid());
    let worker = threads
        .iter()
        .find(|(name, _)| name == "sluice-w0")
        .map(|(_, c)| c.clone())
        .expect("a thread sluice-w0");
    assert_eq!(
        worker.len(),
        1,
        "the worker is pinned to one core: {threads:?}"
    );
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        for (name, cores) in threads.iter().filter(|(n, _)| n != "sluice-w0") {
            assert!(
                !cores.contains(&worker[0]),
                "{name} may run on the worker's core {}: {threads:?}",
                worker[0]
            );
        }
    }

    // SIGTERM: exit 0, XDP detached, and the kernel path carries traffic again.
    assert_eq!(
        d.signal_and_wait(libc::SIGTERM),
        Some(0),
        "{}",
        d.log_text()
    );
    assert!(!lab.xdp_attached("eth-cli") && !lab.xdp_attached("eth-srv"));
    assert_eq!(
        lab.curl("http://10.20.0.11/").as_deref(),
        Some("hello from backend be1\n")
    );
}

#[test]
fn kill_9_leaves_no_blackhole() {
    let _g = lock();
    let Some(lab) = Lab::up("k9", 1) else { return };
    let mut d = lab.start_sluiced(&no_hold());
    assert!(lab.curl("http://10.20.0.12/").is_some(), "{}", d.log_text());
    assert!(u(iface(&d.stats(), "eth-cli"), &["xdp_steered"]) > 0);
    assert!(lab.xdp_attached("eth-cli"));

    // A crash without a restart hold: the bpf_link dies with the process, the program
    // detaches, the kernel forwards.
    assert_eq!(d.signal_and_wait(libc::SIGKILL), None);
    assert!(
        !lab.xdp_attached("eth-cli"),
        "XDP program left behind after kill -9"
    );
    assert_eq!(
        lab.curl("http://10.20.0.12/").as_deref(),
        Some("hello from backend be2\n")
    );
    let got = lab.udp_burst("be1", "10.20.0.11:9002".parse().unwrap(), 300, 4, None);
    assert!(
        got >= 285,
        "kernel path after kill -9 delivered only {got}/300"
    );
}

/// The smallest rings wrap many times in one burst. Every wrap used to cost a batch its tail:
/// xdpilone reserved against a stale copy of the kernel's consumer index, got part of the room,
/// and the rest was dropped as TX_RING_FULL although the ring had room. What the worker
/// receives it must now transmit, all of it. (What it receives can be less than was sent: a
/// 64-slot fill ring runs dry while a debug build on a loaded machine takes milliseconds over a
/// batch, and the kernel counts those as `xsk_rx_dropped`.)
#[test]
fn small_rings_wrap_without_losing_packets() {
    let _g = lock();
    let Some(lab) = Lab::up("rw", 1) else { return };
    let cfg = no_hold().replace("ring_size = 2048\n", "ring_size = 64\n");
    assert!(cfg.contains("ring_size = 64\n"), "configs/lab.toml changed");
    let d = lab.start_sluiced(&cfg);
    // 1,000 datagrams wrap each 64-slot ring about 16 times
    let sent = 1000;
    let got = lab.udp_burst("be1", "10.20.0.11:9007".parse().unwrap(), sent, 8, None);
    let s = d.stats();
    let (rx, tx) = (
        u(&s, &["totals", "rx_packets"]),
        u(&s, &["totals", "tx_packets"]),
    );
    assert_eq!(
        u(&s, &["totals", "drops", "TX_RING_FULL"]),
        0,
        "{s}\n{}",
        d.log_text()
    );
    assert!(rx >= 640, "the rings did not wrap ten times: {s}");
    assert_eq!(tx, rx, "received but not sent: {s}");
    assert!(
        got as u64 >= tx * 99 / 100,
        "{got} of the {tx} transmitted arrived: {s}"
    );
}

#[test]
fn two_queues_are_served_by_two_workers() {
    let _g = lock();
    let Some(lab) = Lab::up("mq", 2) else { return };
    let d = lab.start_sluiced(&lab_config(2, ""));
    let got = lab.udp_burst("be1", "10.20.0.11:9003".parse().unwrap(), 4000, 64, None);
    let s = d.stats();
    eprintln!("{got}/4000; stats: {s}");
    assert!(got >= 3800, "only {got}/4000 arrived");
    let workers = s["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(
            u(w, &["rx_packets"]) > 100,
            "worker idle with 64 flows over 2 queues: {w}"
        );
    }
    assert!(lab.curl("http://10.20.0.11/").is_some());

    // A change through the API is live on both workers when `?wait=true` answers.
    let svc = serde_json::json!({"kind": "Service", "metadata": {"name": "web", "namespace": "lab"},
        "spec": {"clusterIP": "10.96.0.80", "ports": [{"port": 80}]}});
    let a = api(&lab)
        .request("PUT", "/v1/services/lab/web?wait=true", Some(&svc))
        .expect("API");
    assert_eq!(a.status, 201, "{}", a.error_text());
    let body = a.json().unwrap();
    assert_eq!(body["converged"], true, "{body}");
    let g = body["generation"].as_u64().unwrap();
    let st = api(&lab).get("/v1/status").unwrap();
    for w in st["workers"].as_array().unwrap() {
        assert!(w["generation"].as_u64().unwrap() >= g, "{st}");
    }
    assert_eq!(st["frontends"], 1);
}

#[test]
fn ttl_and_no_route_drops_are_counted_with_their_reason() {
    let _g = lock();
    let Some(lab) = Lab::up("dr", 1) else { return };
    // Own an address the appliance has no route for: the client's default route sends it here.
    // busy-poll mode here, adaptive everywhere else
    // 10.98.0.0/16 is owned as a prefix (the XDP program's LPM trie)
    let cfg = lab_config(
        1,
        "\n[[steer]]\nip = \"10.99.0.1\"\n\n[[steer]]\nip = \"10.98.0.0/16\"\n",
    )
    .replace("poll_mode = \"adaptive\"", "poll_mode = \"busy\"");
    assert!(cfg.contains("poll_mode = \"busy\""));
    let d = lab.start_sluiced(&cfg);
    let got = lab.udp_burst("be1", "10.20.0.11:9004".parse().unwrap(), 200, 2, Some(1));
    assert_eq!(got, 0, "TTL-1 datagrams must not be forwarded");
    // nobody listens at 10.99.0.1; the receiver helper binds in the client's own namespace
    let none = lab.udp_burst("cli", "10.99.0.1:9005".parse().unwrap(), 100, 1, None);
    assert_eq!(none, 0);
    let none = lab.udp_burst("cli", "10.98.7.7:9006".parse().unwrap(), 50, 1, None);
    assert_eq!(none, 0);
    // as traceroute sees it: time exceeded from the appliance (the node address; the SNAT
    // address for IPv6, which has no node address here)
    let udp = common::repo_file("tools/lab/udp.py");
    for (to, from) in [
        ("10.20.0.11", "10.20.0.1 type=11"),
        ("fd00:20::11", "fd00:20::1 type=3"),
    ] {
        let out = lab.exec("cli", &["python3", &udp, "hop", to, "33434", "1"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), from, "{to}");
    }
    let s = d.stats();
    assert_eq!(u(&s, &["totals", "drops", "TTL_EXCEEDED"]), 202, "{s}");
    let errors = common::worker_sum(&s, "icmp_errors");
    assert_eq!(
        errors, 202,
        "every TTL-1 packet answered (within the budget): {s}"
    );
    let m = api(&lab).request("GET", "/metrics", None).expect("API");
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let sent: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_worker_icmp_errors_sent_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sent, 202.0, "{text}");
    assert!(
        u(&s, &["totals", "drops", "FIB_LOOKUP_FAILED"]) >= 100,
        "{s}"
    );
}

#[test]
fn exits_nonzero_when_an_interface_disappears() {
    let _g = lock();
    let Some(lab) = Lab::up("gone", 1) else {
        return;
    };
    let mut d = lab.start_sluiced(&lab_config(1, ""));
    assert!(lab
        .exec("app", &["ip", "link", "del", "eth-cli"])
        .status
        .success());
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if let Some(code) = d.try_exit_code() {
            assert_eq!(code, Some(1), "{}", d.log_text());
            assert!(
                d.log_text().contains("\"eth-cli\" disappeared"),
                "{}",
                d.log_text()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "sluiced kept running without its interface:\n{}",
        d.log_text()
    );
}

/// (name, cores it may run on) of each thread of process `pid`, from /proc.
fn thread_cores(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue;
        };
        let mut cores = Vec::new();
        for part in list.trim().split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            cores.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
        }
        out.push((name.trim().to_string(), cores));
    }
    out
}
