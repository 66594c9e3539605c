//! Namespace lab harness for integration tests: brings up `tools/lab/lab.sh` under a unique
//! prefix, runs the real `sluiced` in the appliance namespace, and tears everything down in Drop,
//! also when the test fails.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lab tests run one at a time: they share two cores, and timing-sensitive forwarding checks
/// should not compete with another lab's daemon.
pub static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why lab tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, XDP, AF_XDP); CI runs as root".into());
    }
    for tool in ["ip", "ethtool", "python3", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed (make deps installs it)"));
        }
    }
    None
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
}

impl Lab {
    /// Brings up a lab named after the test; returns None (and says why) when lab tests cannot
    /// run on this machine.
    pub fn up(tag: &str, queues: u32) -> Option<Lab> {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {tag}: {why}");
            return None;
        }
        let prefix = format!("sl{tag}{}", std::process::id() % 100000);
        let dir = std::env::temp_dir().join(format!("sluice-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let lab = Lab { prefix, dir };
        let out = lab.script("up", &[&queues.to_string()]);
        assert!(
            out.status.success(),
            "lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(lab)
    }

    fn script(&self, verb: &str, extra: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo().join("tools/lab/lab.sh"))
            .arg(verb)
            .arg(&self.prefix)
            .args(extra)
            .output()
            .expect("running lab.sh")
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Runs a command in a lab host's namespace.
    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// `curl` from the client; returns the body on success.
    pub fn curl(&self, url: &str) -> Option<String> {
        let o = self.exec("cli", &["curl", "-s", "-m", "5", "--retry", "2", url]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Starts sluiced in the appliance namespace with `config` (TOML text); /run/sluice paths
    /// in it (runtime directory, API socket, token, state) are moved to this test's own
    /// directory.
    pub fn start_sluiced(&self, config: &str) -> Daemon {
        let mine = format!("{}/", self.dir.display());
        let config = config.replace("/run/sluice/", &mine).replace(
            "runtime_dir = \"/run/sluice\"",
            &format!("runtime_dir = \"{}\"", self.dir.display()),
        );
        let token = self.dir.join("token");
        if !token.exists() {
            std::fs::write(&token, "lab-test-token\n").expect("token");
            std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
        }
        let cfg_path = self.dir.join("sluiced.toml");
        let stats = self.dir.join("stats.json");
        let log = self.dir.join("sluiced.log");
        let _ = std::fs::remove_file(&stats);
        std::fs::File::create(&cfg_path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .expect("writing config");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("app")])
            .arg(env!("CARGO_BIN_EXE_sluiced"))
            .arg("--config")
            .arg(&cfg_path)
            .arg("--stats-file")
            .arg(&stats)
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            ))
            .spawn()
            .expect("spawning sluiced");
        let d = Daemon {
            child: Some(child),
            stats,
            log,
        };
        d.wait_ready();
        d
    }

    /// Whether an XDP program is attached to `dev` in the appliance namespace.
    pub fn xdp_attached(&self, dev: &str) -> bool {
        let o = self.exec("app", &["ip", "-d", "link", "show", "dev", dev]);
        String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
    }

    /// Sends `count` UDP datagrams from the client to `dst`, in paced bursts, from `flows`
    /// different source ports; returns how many `dst`'s host received within the deadline.
    pub fn udp_burst(
        &self,
        dst_host: &str,
        dst: SocketAddr,
        count: usize,
        flows: usize,
        ttl: Option<u32>,
    ) -> usize {
        let rx_ns = self.ns(dst_host);
        let receiver = in_netns(&rx_ns, move || {
            let any: std::net::IpAddr = if dst.is_ipv6() {
                "::".parse().unwrap()
            } else {
                "0.0.0.0".parse().unwrap()
            };
            let s = UdpSocket::bind(SocketAddr::new(any, dst.port())).expect("bind receiver");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut got = 0usize;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut quiet = 0;
            while Instant::now() < deadline && got < count {
                match s.recv(&mut buf) {
                    Ok(_) => {
                        got += 1;
                        quiet = 0;
                    }
                    Err(_) => {
                        quiet += 1;
                        // sender finished and nothing more for ~1.5 s
                        if quiet > 5 {
                            break;
                        }
                    }
                }
            }
            got
        });
        // let the receiver bind before sending
        std::thread::sleep(Duration::from_millis(200));
        let tx_ns = self.ns("cli");
        in_netns(&tx_ns, move || {
            let socks: Vec<UdpSocket> = (0..flows)
                .map(|_| {
                    let s = UdpSocket::bind("0.0.0.0:0".parse::<SocketAddr>().unwrap()).unwrap();
                    if let Some(t) = ttl {
                        s.set_ttl(t).unwrap();
                    }
                    s
                })
                .collect();
            let socks6: Vec<UdpSocket> = if dst.is_ipv6() {
                (0..flows)
                    .map(|_| UdpSocket::bind("[::]:0").unwrap())
                    .collect()
            } else {
                Vec::new()
            };
            let payload = [0x5au8; 64];
            for i in 0..count {
                let s = if dst.is_ipv6() {
                    &socks6[i % flows]
                } else {
                    &socks[i % flows]
                };
                let _ = s.send_to(&payload, dst);
                // pace: 50 datagrams per millisecond keeps the socket buffers from overflowing
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .join()
        .expect("sender");
        receiver.join().expect("receiver")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.script("down", &[]);
        if !out.status.success() {
            eprintln!(
                "lab down {}: {}",
                self.prefix,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // the test's files (config, logs, conntrack tables) are kept when it failed, to read
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid namespace fd; it only affects this thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

pub struct Daemon {
    child: Option<Child>,
    pub stats: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.stats.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sluiced did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The stats document, after waiting for two rewrites: the first may have gathered the
    /// counters before this call, the second began after it and includes all traffic before.
    pub fn stats(&self) -> serde_json::Value {
        let modified = || {
            std::fs::metadata(&self.stats)
                .and_then(|m| m.modified())
                .ok()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..2 {
            let before = modified();
            while Instant::now() < deadline && modified() == before {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let text = std::fs::read_to_string(&self.stats).expect("stats file");
        serde_json::from_str(&text).expect("stats JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Some(exit code) once the daemon has exited (inner None: killed by a signal).
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code())
    }

    /// Sends `sig` and waits for the exit; returns the exit code (None if killed by a signal).
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        // `ip netns exec` execs sluiced in place, so the child's pid is sluiced's.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tools/lab/udp.py ask`: `n` UDP requests to `addr:port` from the client, each from a new
/// socket; answers per backend name ("error" for the lost ones).
pub fn udp_ask(
    lab: &Lab,
    addr: &str,
    port: u16,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let script = repo().join("tools/lab/udp.py");
    let out = lab.exec(
        "cli",
        &[
            "python3",
            &script.to_string_lossy(),
            "ask",
            addr,
            &port.to_string(),
            &n.to_string(),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "udp.py ask: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// configs/lab.toml with a few substitutions.
pub fn lab_config(queues: u32, extra: &str) -> String {
    let base = std::fs::read_to_string(repo().join("configs/lab.toml")).expect("configs/lab.toml");
    let cores: Vec<String> = (0..queues).map(|q| q.to_string()).collect();
    base.replace(
        "queues = 1\n",
        &format!("queues = {queues}\ncores = [{}]\n", cores.join(", ")),
    ) + extra
}

/// Applies the Kubernetes manifests of `configs/FILE` to the lab daemon.
pub fn apply(lab: &Lab, file: &str) {
    let objects =
        sluice_cli::resources::read_manifests(&repo().join("configs").join(file).to_string_lossy())
            .unwrap_or_else(|e| panic!("configs/{file}: {e:#}"));
    sluice_cli::resources::apply_or_delete(&api(lab), &objects, false).expect("apply");
}

/// The control API of a lab daemon, through its unix socket, with the test token.
pub fn api(lab: &Lab) -> sluice_cli::client::Client {
    sluice_cli::client::Client {
        endpoint: sluice_cli::client::Endpoint::Unix(lab.dir.join("api.sock")),
        token: Some("lab-test-token".into()),
    }
}

pub fn u(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// A worker counter of the stats file, summed over the workers.
pub fn worker_sum(stats: &serde_json::Value, key: &str) -> u64 {
    stats["workers"]
        .as_array()
        .expect("stats without workers")
        .iter()
        .map(|w| u(w, &[key]))
        .sum()
}

pub fn iface<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no interface {name} in stats: {v}"))
}

/// A file of the repository, by its path from the root.
pub fn repo_file(p: &str) -> String {
    format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
}

/// Line echo servers (`tools/lab/echo.py`) on `port` in the backend namespaces be1..be3, for
/// the value's lifetime; each answers "be{i}: <line>".
pub struct EchoServers(Vec<std::process::Child>);

impl EchoServers {
    pub fn start(lab: &Lab, port: u16) -> EchoServers {
        let echo = repo_file("tools/lab/echo.py");
        let servers = EchoServers(
            (1..=3)
                .map(|i| {
                    std::process::Command::new("ip")
                        .args(["netns", "exec", &lab.ns(&format!("be{i}"))])
                        .args([
                            "python3",
                            &echo,
                            "serve",
                            &format!("be{i}"),
                            &port.to_string(),
                        ])
                        .spawn()
                        .expect("echo server")
                })
                .collect(),
        );
        // python's start-up, before the first connection
        std::thread::sleep(std::time::Duration::from_millis(500));
        servers
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
