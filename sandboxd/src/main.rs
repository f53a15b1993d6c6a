//! `berth-sandboxd`: the sandbox runtime daemon (see the library docs).
//!
//! `berth-sandboxd __helper <json>` is the internal helper mode the daemon re-executes
//! for libcontainer operations; it must stay single-threaded, so it is dispatched
//! before the tokio runtime starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Runs sandboxes for the agent, on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "berth-sandboxd", version)]
struct Args {
    /// Unix socket to serve the Sandboxes gRPC service on (mode 0600).
    #[arg(long, env = "BERTH_SANDBOXD_SOCKET")]
    socket: PathBuf,
    /// State directory: bundles, libcontainer state, sandbox records.
    #[arg(long, env = "BERTH_SANDBOXD_STATE_DIR")]
    state_dir: PathBuf,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(
        long,
        default_value = "127.0.0.1:7705",
        env = "BERTH_SANDBOXD_METRICS_LISTEN"
    )]
    metrics_listen: SocketAddr,
    /// Cap of each sandbox's log file, in bytes: past it the newest bytes up to the
    /// cap are kept in `<log>.1` and the file starts again (K, M, G suffixes: powers
    /// of 1024).
    #[arg(long, env = "BERTH_SANDBOXD_LOG_MAX_BYTES", default_value = "10M", value_parser = parse_log_cap)]
    log_max_bytes: u64,
}

/// A log cap: a size as `berth_api::size` spells it, at least 4 KiB.
fn parse_log_cap(s: &str) -> Result<u64, String> {
    let bytes = berth_api::size::parse_size(s)?;
    if bytes < 4096 {
        return Err(format!("{s:?} is below the smallest log cap of 4K"));
    }
    Ok(bytes)
}

fn init_tracing(filter: EnvFilter) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args_os();
    if argv.nth(1).as_deref() == Some(std::ffi::OsStr::new(berth_sandboxd::HELPER_ARG)) {
        // libcgroups warns about every controller this kernel lacks, on every call.
        let filter = EnvFilter::try_from_env("BERTH_SANDBOXD_HELPER_LOG")
            .unwrap_or_else(|_| EnvFilter::new("warn,libcgroups=error"));
        init_tracing(filter);
        let arg = argv
            .next()
            .and_then(|a| a.into_string().ok())
            .context("the helper mode needs one JSON argument")?;
        std::process::exit(berth_sandboxd::helper_main(&arg));
    }

    let args = Args::parse();
    init_tracing(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        let config = berth_sandboxd::Config {
            socket: args.socket,
            state_dir: args.state_dir,
            metrics_listen: args.metrics_listen,
            helper_exe: PathBuf::from("/proc/self/exe"),
            log_max_bytes: args.log_max_bytes,
        };
        berth_sandboxd::run(config, shutdown)
            .await
            .context("running berth-sandboxd")
    })
}
