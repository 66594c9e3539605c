//! `sluice-k8s-sync`: watches the Kubernetes API and keeps sluiced's state in step with it.

use clap::Parser;
use sluice_cli::client::Endpoint;
use sluice_cli::sync::{run, Options};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluice-k8s-sync",
    version,
    about = "Relay Kubernetes state to sluiced"
)]
struct Args {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// sluiced's API: unix:/path/to/api.sock or http://HOST:PORT.
    #[arg(
        long,
        env = "SLUICE_SERVER",
        default_value = "unix:/run/sluice/api.sock"
    )]
    server: String,
    /// The API token file (api.token_file of sluiced).
    #[arg(long, env = "SLUICE_TOKEN_FILE", default_value = "/etc/sluice/token")]
    token_file: PathBuf,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let a = Args::parse();
    let result = (|| -> anyhow::Result<()> {
        let token = std::fs::read_to_string(&a.token_file)
            .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", a.token_file.display()))?
            .trim()
            .to_string();
        let opts = Options {
            kubeconfig: a.kubeconfig.clone(),
            server: Endpoint::parse(&a.server)?,
            token: Some(token),
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(opts))
    })();
    if let Err(e) = result {
        eprintln!("sluice-k8s-sync: {e:#}");
        std::process::exit(1);
    }
}
