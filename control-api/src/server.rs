//! Running the API: token loading, listeners (TCP and unix socket), a tokio runtime on its own
//! thread (the workers never see it), clean shutdown.

use crate::api::{router, Api};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("api.token_file {path}: {problem}")]
    Token { path: PathBuf, problem: String },
    #[error("api.listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("api.socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the API runtime: {0}")]
    Runtime(std::io::Error),
}

/// Reads the bearer token; refuses a file others can read (it grants write access to the datapath).
pub fn load_token(path: &Path) -> Result<String, ServeError> {
    let err = |problem: String| ServeError::Token {
        path: path.into(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} lets group or others read it; chmod 600 {}",
            path.display()
        )));
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(err("is empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("must be one line without spaces".into()));
    }
    Ok(token)
}

/// Serves `app` on `listener` until `stop` fires, finishing requests in flight.
fn spawn_serve<L>(
    listener: L,
    app: axum::Router,
    stop: &tokio::sync::broadcast::Sender<()>,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let mut stop = stop.subscribe();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.recv().await;
            })
            .await;
    })
}

pub struct Server {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub tcp_addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
}

impl Server {
    /// Binds the listeners (errors come back here, not from a background thread) and serves.
    pub fn start(api: Arc<Api>, listen: &str, socket: &Path) -> Result<Server, ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            // the API is not the fast path: one async thread plus the blocking pool for applies
            .worker_threads(1)
            .thread_name("sluice-api")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let tcp = if listen.is_empty() {
            None
        } else {
            let std_l =
                std::net::TcpListener::bind(listen).map_err(|source| ServeError::Listen {
                    addr: listen.into(),
                    source,
                })?;
            std_l
                .set_nonblocking(true)
                .map_err(|source| ServeError::Listen {
                    addr: listen.into(),
                    source,
                })?;
            Some(std_l)
        };
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let unix = if socket.as_os_str().is_empty() {
            None
        } else {
            let serr = |source| ServeError::Socket {
                path: socket.into(),
                source,
            };
            if let Some(dir) = socket.parent() {
                std::fs::create_dir_all(dir).map_err(serr)?;
            }
            // a socket left by a previous run (a crash) would make bind fail
            if std::fs::symlink_metadata(socket).is_ok() {
                std::fs::remove_file(socket).map_err(serr)?;
            }
            let l = std::os::unix::net::UnixListener::bind(socket).map_err(serr)?;
            // owner and group only: the socket serves reads without a token
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
                .map_err(serr)?;
            l.set_nonblocking(true).map_err(serr)?;
            Some(l)
        };
        let open_tcp_reads = tcp_addr.is_some_and(|a| a.ip().is_loopback());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-api-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
                    if let Some(l) = tcp {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => tasks.push(spawn_serve(
                                l,
                                router(api.clone(), open_tcp_reads),
                                &stop_tx,
                            )),
                            Err(e) => tracing::error!("API TCP listener: {e}"),
                        }
                    }
                    if let Some(l) = unix {
                        match tokio::net::UnixListener::from_std(l) {
                            Ok(l) => {
                                tasks.push(spawn_serve(l, router(api.clone(), true), &stop_tx))
                            }
                            Err(e) => tracing::error!("API unix listener: {e}"),
                        }
                    }
                    let _ = rx.await;
                    let _ = stop_tx.send(());
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .map_err(ServeError::Runtime)?;
        Ok(Server {
            shutdown: Some(tx),
            thread: Some(thread),
            tcp_addr,
            socket: (!socket.as_os_str().is_empty()).then(|| socket.to_path_buf()),
        })
    }

    /// Stops accepting, finishes requests in flight, removes the socket.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_must_be_private_and_nonempty() {
        let dir = std::env::temp_dir().join(format!("sluice-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_token(&f)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_token(&f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(load_token(&f).unwrap_err().to_string().contains("empty"));
        assert!(load_token(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
