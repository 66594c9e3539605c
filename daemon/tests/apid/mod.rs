//! sluiced in API-only mode (no interfaces: no root needed) in a private directory, for tests that
//! drive its control API over the unix socket.
#![allow(dead_code)]

use serde_json::Value;
use sluice_cli::client::{Answer, Client, Endpoint};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Daemon {
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sluice-api-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn config(dir: &std::path::Path, token: bool, extra: &str) -> PathBuf {
        let token_line = if token {
            format!("token_file = \"{}/token\"\n", dir.display())
        } else {
            String::new()
        };
        let text = format!(
            "[appliance]\nname = \"apitest\"\nruntime_dir = \"{d}\"\nnode_addresses = [\"192.0.2.10\"]\nstats_interval_ms = 100\n\
             [api]\nlisten = \"\"\nsocket = \"{d}/api.sock\"\nstate_dir = \"{d}/state\"\nmax_body_bytes = 65536\n{token_line}{extra}",
            d = dir.display()
        );
        let p = dir.join("sluiced.toml");
        std::fs::write(&p, text).unwrap();
        if token && !dir.join("token").exists() {
            std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
            std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        p
    }

    pub fn start_in(dir: PathBuf, token: bool) -> Daemon {
        Self::start_with_env(dir, token, &[])
    }

    /// `start_in` with extra environment variables for sluiced.
    pub fn start_with_env(dir: PathBuf, token: bool, env: &[(&str, &str)]) -> Daemon {
        Self::spawn(dir, token, env, None)
    }

    /// Also listening on TCP `127.0.0.1:port` (for HTTP clients that cannot use the socket).
    pub fn start_tcp(port: u16) -> Daemon {
        Self::spawn(Self::dir(), true, &[], Some(port))
    }

    fn spawn(dir: PathBuf, token: bool, env: &[(&str, &str)], tcp: Option<u16>) -> Daemon {
        let cfg = Self::config(&dir, token, "");
        if let Some(port) = tcp {
            let text = std::fs::read_to_string(&cfg)
                .unwrap()
                .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
            std::fs::write(&cfg, text).unwrap();
        }
        let log = std::fs::File::create(dir.join("sluiced.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
            .arg("--config")
            .arg(&cfg)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let d = Daemon {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if d.client(false).request("GET", "/healthz", None).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluiced API did not come up:\n{}", d.log());
    }

    pub fn start(token: bool) -> Daemon {
        Self::start_in(Self::dir(), token)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluiced.log")).unwrap_or_default()
    }

    pub fn client(&self, token: bool) -> Client {
        Client {
            endpoint: Endpoint::Unix(self.dir.join("api.sock")),
            token: token.then(|| TOKEN.to_string()),
        }
    }

    pub fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        self.client(true).request(method, path, body).unwrap()
    }

    pub fn state(&self) -> Value {
        self.client(false).get("/v1/state").unwrap()
    }

    /// SIGTERM and wait: exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok()?.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
