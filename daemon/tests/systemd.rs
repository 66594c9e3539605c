//! Running under systemd (issue 9): the units pass `systemd-analyze verify`; sluiced speaks
//! sd_notify (READY, WATCHDOG, RELOADING, STOPPING); SIGHUP reloads what can change live and
//! refuses, with a log line and nothing changed, a bad file or a change that needs a restart.
//! sluiced runs API-only here: no root needed.

mod apid;

use apid::Daemon;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn signal(d: &Daemon, sig: i32) {
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(d.pid(), sig) };
}

/// Waits until the daemon's log contains `want` (after `skip` bytes of it).
fn wait_log(d: &Daemon, skip: usize, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = d.log();
        let tail = log.get(skip..).unwrap_or("").to_string();
        if tail.contains(want) {
            return tail;
        }
        assert!(Instant::now() < deadline, "no {want:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sd_notify_ready_watchdog_reloading_and_stopping() {
    let dir = Daemon::dir();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock_env = sock_path.to_string_lossy().into_owned();
    // a 400 ms watchdog: sluiced pings every 200 ms
    let mut d = Daemon::start_with_env(
        dir,
        false,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "400000")],
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\nSTATUS="), "{first}");
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    signal(&d, libc::SIGHUP);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m == "READY=1") {
        seen.push(next());
    }
    assert!(seen.contains(&"RELOADING=1".to_string()), "{seen:?}");
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    let mut rest = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if rest.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("STOPPING=1"),
        "{rest:?}"
    );
}

#[test]
fn sighup_reloads_live_settings_and_refuses_the_rest() {
    let mut d = Daemon::start(false);
    let cfg = d.dir.join("sluiced.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();

    // mode and flow events change live
    let skip = d.log().len();
    std::fs::write(
        &cfg,
        format!("{good}[lb]\nmode = \"dsr\"\n[observe]\nflows = false\n"),
    )
    .unwrap();
    signal(&d, libc::SIGHUP);
    let log = wait_log(&d, skip, "config reloaded");
    assert!(
        log.contains("lb_mode=dsr") && log.contains("flows=false"),
        "{log}"
    );

    // a file that does not parse: refused, nothing changes
    let skip = d.log().len();
    std::fs::write(&cfg, format!("{good}[lb]\nmode = \"sideways\"\n")).unwrap();
    signal(&d, libc::SIGHUP);
    let log = wait_log(&d, skip, "config reload refused");
    assert!(
        log.contains("lb.mode") && log.contains("the running config stays"),
        "{log}"
    );

    // a change only a restart can make: refused, naming the section
    let skip = d.log().len();
    std::fs::write(
        &cfg,
        good.replace("max_body_bytes = 65536", "max_body_bytes = 1048576"),
    )
    .unwrap();
    signal(&d, libc::SIGHUP);
    let log = wait_log(&d, skip, "config reload refused");
    assert!(
        log.contains("[api] changed, which needs a restart"),
        "{log}"
    );

    assert!(d.running(), "a refused reload must not stop the daemon");
    assert!(d.client(false).request("GET", "/healthz", None).is_ok());
    assert_eq!(d.stop(), Some(0));
}

/// The unit files, with the binaries' install path pointed at this build's, pass
/// `systemd-analyze verify` without a warning.
#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_sluiced")).parent().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let dir = Daemon::dir();
    for name in ["sluiced.service", "sluice-k8s-sync.service"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        let here = text.replace("/usr/local/bin", &bin.display().to_string());
        assert!(
            bin.join(if name == "sluiced.service" {
                "sluiced"
            } else {
                "sluice-k8s-sync"
            })
            .exists(),
            "build the workspace first (make test does)"
        );
        std::fs::write(dir.join(name), here).unwrap();
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("sluiced.service"))
        .arg(dir.join("sluice-k8s-sync.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        // this machine's own unit files are not ours to judge
        .filter(|l| l.contains("sluice"))
        .collect();
    assert!(warnings.is_empty(), "{err}");
}

/// `make install DESTDIR=...` lays out binaries, units (paths following PREFIX) and examples.
#[test]
fn make_install_lays_everything_out_under_destdir() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = Path::new(env!("CARGO_BIN_EXE_sluiced")).parent().unwrap();
    let dest = Daemon::dir();
    let o = Command::new("make")
        .arg("-C")
        .arg(&repo)
        .arg("--no-print-directory")
        .arg("install")
        .arg(format!("DESTDIR={}", dest.display()))
        .arg("PREFIX=/opt/sluice")
        .arg(format!("BINDIR={}", bin.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::PermissionsExt;
    for b in ["sluiced", "sluice", "sluice-k8s-sync", "sluice-decap"] {
        let m = std::fs::metadata(dest.join("opt/sluice/bin").join(b)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755, "{b}");
    }
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/sluiced.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/sluice/bin/sluiced --config"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert!(dest
        .join("etc/systemd/system/sluice-k8s-sync.service")
        .exists());
    assert!(dest.join("etc/sluice/examples/lab.toml").exists());
    assert!(dest.join("opt/sluice/share/doc/sluice/README.md").exists());
    let _ = std::fs::remove_dir_all(&dest);
}
