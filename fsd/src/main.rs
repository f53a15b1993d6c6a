//! `berth-fsd`: the volume file server (`serve`) and its FUSE client (`mount`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_fsd::fuse::Ttls;
use berth_fsd::{MountConfig, ServeConfig};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "berth-fsd",
    version,
    about = "Berth's file server and FUSE client for shared /home volumes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve volumes over gRPC (berth.volume.v1.Volumes). Volumes are created on first use.
    Serve {
        /// gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:7702")]
        listen: SocketAddr,
        /// Object store root (local directory) holding file data chunks.
        #[arg(long)]
        store_dir: PathBuf,
        /// Directory for the metadata database (meta.db).
        #[arg(long)]
        state_dir: PathBuf,
        /// Prometheus /metrics listen address.
        #[arg(long, default_value = "127.0.0.1:7706")]
        metrics_listen: SocketAddr,
    },
    /// Mount one volume with FUSE (needs root) and serve it in the foreground.
    ///
    /// Prints "mounted <volume> at <mountpoint>" on stdout once the mount is usable.
    /// A supervisor that spawns this as a child can instead wait until the mount
    /// point's st_dev differs from its parent directory's. SIGTERM or SIGINT unmounts
    /// (lazily if busy) and exits 0.
    Mount {
        /// File server URL.
        #[arg(long, default_value = "http://127.0.0.1:7702")]
        server: String,
        /// Volume name ([a-z0-9-]{1,64}).
        #[arg(long)]
        volume: String,
        /// Attribute cache time in milliseconds.
        #[arg(long, default_value_t = 1000)]
        attr_ttl_ms: u64,
        /// Entry cache time of directories in milliseconds.
        #[arg(long, default_value_t = 1000)]
        dir_entry_ttl_ms: u64,
        /// Entry cache time of files in milliseconds (0 = close-to-open consistency).
        #[arg(long, default_value_t = 0)]
        file_entry_ttl_ms: u64,
        /// How long an operation waits for an unreachable file server before EIO.
        #[arg(long, default_value_t = 30)]
        retry_secs: u64,
        /// Empty directory to mount on.
        mountpoint: PathBuf,
    },
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "installing SIGTERM handler failed");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            store_dir,
            state_dir,
            metrics_listen,
        } => {
            let config = ServeConfig {
                listen,
                store_dir,
                state_dir,
                metrics_listen,
            };
            berth_fsd::serve(config, shutdown_signal())
                .await
                .context("berth-fsd serve")?;
        }
        Command::Mount {
            server,
            volume,
            attr_ttl_ms,
            dir_entry_ttl_ms,
            file_entry_ttl_ms,
            retry_secs,
            mountpoint,
        } => {
            let config = MountConfig {
                server,
                volume: volume.clone(),
                mountpoint: mountpoint.clone(),
                ttls: Ttls {
                    attr: Duration::from_millis(attr_ttl_ms),
                    dir_entry: Duration::from_millis(dir_entry_ttl_ms),
                    file_entry: Duration::from_millis(file_entry_ttl_ms),
                },
                retry_window: Duration::from_secs(retry_secs),
            };
            let ready = || println!("mounted {volume} at {}", mountpoint.display());
            berth_fsd::mount(config, ready, shutdown_signal())
                .await
                .with_context(|| format!("berth-fsd mount {}", mountpoint.display()))?;
            // A lazily detached (busy) mount leaves fuse3's blocking read of /dev/fuse
            // pending, which would keep the runtime from shutting down; exiting closes
            // the device and ends the session for good.
            std::process::exit(0);
        }
    }
    Ok(())
}
