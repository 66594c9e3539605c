//! Overlay interop with the Linux kernel: node n2 of the lab runs a kernel vxlan or geneve device
//! with a pod address (10.244.2.5) on it. sluice encapsulates client traffic to that pod, the
//! kernel device decapsulates and delivers it to real sockets; the kernel encapsulates the
//! replies and sluice decapsulates them to the client. Both directions, UDP and HTTP, IPv4 and
//! IPv6 underlays; a capture on n2 is decoded independently by scapy.

mod common;

use common::{api, lab_config, u, Lab, SERIAL};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VTEP_MAC: &str = "02:00:00:00:ee:02";
const POD: &str = "10.244.2.5";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A background process killed when the guard drops (namespaces outlive nothing we start).
struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(lab: &Lab, host: &str, cmd: &str) {
    let o = lab.exec(host, &["sh", "-c", cmd]);
    assert!(
        o.status.success(),
        "{host}: {cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The lab config with its [overlay] set to `kind` from `local`.
fn overlay_config(kind: &str, local: &str) -> String {
    let cfg = lab_config(1, "");
    assert!(
        cfg.contains("mode = \"vxlan\"\nlocal_ip = \"10.20.0.1\""),
        "configs/lab.toml's [overlay] changed"
    );
    cfg.replace(
        "mode = \"vxlan\"\nlocal_ip = \"10.20.0.1\"",
        &format!("mode = \"{kind}\"\nlocal_ip = \"{local}\""),
    )
}

/// Whether this kernel can create a geneve device (it may be neither built in nor loadable).
fn kernel_has_geneve(lab: &Lab) -> bool {
    let o = lab.exec(
        "n2",
        &[
            "ip",
            "link",
            "add",
            "probe0",
            "type",
            "geneve",
            "id",
            "1",
            "remote",
            "192.0.2.1",
        ],
    );
    let _ = lab.exec("n2", &["ip", "link", "del", "probe0"]);
    o.status.success()
}

fn interop(kind: &str, v6: bool) {
    let _g = lock();
    let tag = format!("{}{}", &kind[..2], if v6 { "6" } else { "4" });
    let Some(lab) = Lab::up(&tag, 1) else { return };
    let (local, node) = if v6 {
        ("fd00:20::1", "fd00:20::21")
    } else {
        ("10.20.0.1", "10.20.0.21")
    };
    let port = if kind == "vxlan" { 8472 } else { 6081 };

    if kind == "geneve" && !kernel_has_geneve(&lab) {
        eprintln!(
            "this kernel has no geneve device: Geneve interop runs against scapy as the peer"
        );
        drop(lab);
        return geneve_with_scapy_peer(v6);
    }
    // the remote node: a kernel tunnel device (VNI 2, the identity sluice sends for outside
    // traffic) with the pod address on it
    let dev = if kind == "vxlan" {
        format!("ip link add tun0 type vxlan id 2 local {node} dstport {port} dev eth0 nolearning && bridge fdb append 00:00:00:00:00:00 dev tun0 dst {local}")
    } else {
        format!("ip link add tun0 type geneve id 2 remote {local} dstport {port}")
    };
    sh(&lab, "n2", &dev);
    sh(&lab, "n2", &format!("ip link set tun0 address {VTEP_MAC} && ip link set tun0 up && ip addr add {POD}/24 dev tun0"));
    sh(&lab, "n2", "ip route add 10.10.0.0/24 dev tun0 && ip neigh add 10.10.0.2 lladdr 02:00:00:00:00:01 dev tun0 nud permanent");

    let d = lab.start_sluiced(&overlay_config(kind, local));
    let n2 = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n2", "annotations": {"sluice.io/vtep-mac": VTEP_MAC}},
        "spec": {"podCIDR": "10.244.2.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": node}]}});
    let a = api(&lab)
        .request("PUT", "/v1/nodes/n2?wait=true", Some(&n2))
        .expect("API");
    assert!(a.ok(), "{}", a.error_text());

    // the pod CIDR is steered on the control loop's next tick; a first packet also has the
    // node's neighbour entry resolved
    std::thread::sleep(Duration::from_millis(300));
    let _ = lab.udp_burst("n2", format!("{POD}:9099").parse().unwrap(), 5, 1, None);

    let pcap = lab.dir.join("n2.pcap");
    let mut cap = Bg(Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("n2"),
            "tcpdump",
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .arg(format!("udp port {port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump"));
    // capture only once tcpdump says it listens (a fixed sleep lost the race on a loaded host)
    let mut err = std::io::BufReader::new(cap.0.stderr.take().expect("tcpdump stderr"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
        if line.contains("listening on") {
            break;
        }
        line.clear();
    }
    assert!(
        line.contains("listening on"),
        "tcpdump did not start: {line}"
    );
    // keep draining its stderr so it never blocks on a full pipe
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    // client -> pod through sluice's encapsulation, into a socket behind the kernel device
    let sent = 500;
    let got = lab.udp_burst("n2", format!("{POD}:9100").parse().unwrap(), sent, 8, None);
    assert!(
        got >= sent * 95 / 100,
        "{kind}/{}: {got} of {sent} datagrams reached the pod; {}",
        if v6 { "v6" } else { "v4" },
        d.log_text()
    );

    // HTTP both ways: the kernel encapsulates the server's answers, sluice decapsulates them
    let www = lab.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("index.html"),
        "hello from a pod behind a kernel tunnel\n",
    )
    .unwrap();
    let _http = Bg(Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("n2"),
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            POD,
            "--directory",
        ])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server"));
    let mut body = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while body.is_none() && Instant::now() < deadline {
        body = lab.curl(&format!("http://{POD}:8080/"));
        if body.is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        body.as_deref(),
        Some("hello from a pod behind a kernel tunnel\n"),
        "{}",
        d.log_text()
    );
    drop(cap);

    let s = d.stats();
    let w = &s["workers"][0];
    assert!(u(w, &["encapsulated"]) >= got as u64, "{s}");
    assert!(
        u(w, &["decapsulated"]) > 0,
        "no reply came back through the tunnel: {s}"
    );

    // an independent decoder agrees with what sluice put on the wire
    let check = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tools/lab/check_tunnel.py"
        ))
        .arg(&pcap)
        .args([
            "--kind",
            kind,
            "--port",
            &port.to_string(),
            "--outer-src",
            local,
            "--vni",
            "2",
            "--inner-dst",
            POD,
        ])
        .output()
        .expect("check_tunnel.py (scapy: make deps installs it)");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "scapy check failed: {out}{} (capture: {} bytes)",
        String::from_utf8_lossy(&check.stderr),
        std::fs::metadata(&pcap).map_or(0, |m| m.len())
    );
    eprintln!(
        "{kind} over IPv{}: {got}/{sent} UDP, HTTP ok, scapy: {out}",
        if v6 { 6 } else { 4 }
    );
}

/// Geneve against an independent userspace peer (scapy on node n2): it receives and decodes
/// sluice's encapsulation toward the pod, and sends Geneve from the pod's node that sluice must
/// decapsulate to a socket on the client.
fn geneve_with_scapy_peer(v6: bool) {
    let Some(lab) = Lab::up(if v6 { "gs6" } else { "gs4" }, 1) else {
        return;
    };
    let (local, node) = if v6 {
        ("fd00:20::1", "fd00:20::21")
    } else {
        ("10.20.0.1", "10.20.0.21")
    };
    let d = lab.start_sluiced(&overlay_config("geneve", local));
    let n2 = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": node}]}});
    assert!(api(&lab)
        .request("PUT", "/v1/nodes/n2?wait=true", Some(&n2))
        .unwrap()
        .ok());
    std::thread::sleep(Duration::from_millis(300));
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/lab/geneve_peer.py");

    // 1. client -> pod: sluice encapsulates, scapy on n2 decodes and counts
    let _ = lab.udp_burst("cli", format!("{POD}:9099").parse().unwrap(), 5, 1, None); // resolves n2
    let ready = lab.dir.join("sniffer-ready");
    let sent = 300;
    let sent_s = sent.to_string();
    let rx = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("n2"),
            "python3",
            peer,
            "receive",
            "--iface",
            "eth0",
            "--outer-src",
            local,
            "--vni",
            "2",
            "--pod",
            POD,
            "--ready",
            ready.to_str().unwrap(),
            "--count",
            &sent_s,
            "--seconds",
            "25",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("geneve_peer.py receive");
    // scapy starts slowly: send once its sniffer is capturing
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the scapy sniffer did not start");
    // paced at ~500/s: a Python sniffer decodes slowly, and this checks bytes, not speed
    common::in_netns(&lab.ns("cli"), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..sent {
            let _ = s.send_to(&[0x5a; 64], (POD, 9100));
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .join()
    .unwrap();
    let out = rx.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "scapy receiver: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(r["wrong"], 0, "{r}");
    assert!(
        u(&d.stats()["workers"][0], &["encapsulated"]) >= sent as u64,
        "sluice did not encapsulate every datagram"
    );
    assert!(
        r["received"].as_u64().unwrap_or(0) >= (sent * 95 / 100) as u64,
        "scapy decoded {r} of {sent}; {}",
        d.log_text()
    );

    // 2. pod -> client: scapy sends Geneve as n2's tunnel device would, sluice decapsulates
    let app_mac = String::from_utf8_lossy(
        &lab.exec("app", &["cat", "/sys/class/net/eth-srv/address"])
            .stdout,
    )
    .trim()
    .to_string();
    let receiver = common::in_netns(&lab.ns("cli"), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:9200").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut n = 0;
        let mut buf = [0u8; 512];
        // scapy takes a while to start: wait up to 20 s for the first datagram, then stop after
        // 1.5 s without one
        let start = Instant::now();
        let mut last = None::<Instant>;
        while start.elapsed() < Duration::from_secs(20)
            && last.is_none_or(|l| l.elapsed() < Duration::from_millis(1500))
        {
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                if &buf[..len] == b"geneve-reply" && from.ip().to_string() == POD {
                    n += 1;
                    last = Some(Instant::now());
                }
            }
        }
        n
    });
    std::thread::sleep(Duration::from_millis(200));
    let o = lab.exec(
        "n2",
        &[
            "python3",
            peer,
            "send",
            "--iface",
            "eth0",
            "--dst-mac",
            &app_mac,
            "--src",
            node,
            "--dst",
            local,
            "--vni",
            "2",
            "--inner-src",
            POD,
            "--inner-dst",
            "10.10.0.2",
            "--dport",
            "9200",
            "--count",
            "200",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = receiver.join().unwrap();
    assert!(
        got >= 190,
        "only {got}/200 Geneve datagrams were decapsulated to the client; {}",
        d.log_text()
    );
    let s = d.stats();
    assert!(u(&s["workers"][0], &["decapsulated"]) >= 190, "{s}");
    eprintln!(
        "geneve over IPv{} with scapy as the peer: {} decoded by scapy, {got}/200 decapsulated",
        if v6 { 6 } else { 4 },
        r["received"]
    );
}

#[test]
fn vxlan_with_a_kernel_peer_over_ipv4() {
    interop("vxlan", false);
}

#[test]
fn geneve_with_a_kernel_or_scapy_peer_over_ipv4() {
    interop("geneve", false);
}

#[test]
fn vxlan_with_a_kernel_peer_over_ipv6() {
    interop("vxlan", true);
}

#[test]
fn geneve_with_a_kernel_or_scapy_peer_over_ipv6() {
    interop("geneve", true);
}
