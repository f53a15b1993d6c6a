//! `berth-controller`: REST API, SQLite desired state, placement and the gRPC
//! Workers + Routes services of a Berth scale unit. See the library for the parts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_api::ports;
use berth_controller::registry::RegistryResolver;
use berth_controller::Config;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "berth-controller",
    version,
    about = "Berth controller: REST API, desired state, placement, worker and route streams"
)]
struct Args {
    /// Public REST API address (`/v1/...`, `/healthz`, `/metrics`).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::CONTROLLER_API)))]
    listen: SocketAddr,
    /// Internal gRPC address (Workers + Routes services).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::CONTROLLER_GRPC)))]
    grpc_listen: SocketAddr,
    /// Directory for berth.db and the API token file.
    #[arg(long)]
    state_dir: PathBuf,
    /// Domain suffix of site hostnames: `<site>.<domain>`.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Public URL of a site, `{site}` replaced by its name.
    #[arg(long, default_value = "http://{site}.localhost:8080")]
    public_url_base: String,
    /// PEM file of CA certificates trusted for HTTPS registries, on top of the system roots.
    #[arg(long, env = "BERTH_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let config = Config {
            listen: args.listen,
            grpc_listen: args.grpc_listen,
            state_dir: args.state_dir,
            domain: args.domain,
            public_url_base: args.public_url_base,
        };
        let resolver = RegistryResolver {
            ca_file: args.registry_ca,
        };
        berth_controller::run(config, Arc::new(resolver), shutdown)
            .await
            .context("running the controller")
    })
}
