//! `berth-frontend`: the front end daemon. Parses flags, sets up logging and signals,
//! and hands over to [`berth_frontend::run`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use berth_api::ports;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Berth front end: routes HTTP requests by Host to the ready instances of a site.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Controller gRPC URL the routing table is streamed from.
    #[arg(long, env = "BERTH_CONTROLLER", default_value_t = format!("http://127.0.0.1:{}", ports::CONTROLLER_GRPC))]
    controller: String,
    /// Public HTTP/1.1 + HTTP/2 (h2c) address.
    #[arg(long, env = "BERTH_FRONTEND_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::FRONTEND_HTTP)))]
    listen: SocketAddr,
    /// Prometheus /metrics address.
    #[arg(long, env = "BERTH_FRONTEND_METRICS_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::FRONTEND_METRICS)))]
    metrics_listen: SocketAddr,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = name, "shutdown requested");
    };
    let config = berth_frontend::Config {
        controller: args.controller,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
    };
    berth_frontend::run(config, shutdown)
        .await
        .context("running the front end")?;
    info!("front end stopped");
    Ok(())
}
