//! `berth-fsd`: the volume file server (`serve`) and its FUSE client (`mount`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_fsd::data::objects::{S3Config, StoreConfig};
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
        /// Object store root (local directory) holding file data, the metadata journal
        /// and leases. Required unless --s3-bucket is given (which takes precedence).
        #[arg(long, required_unless_present = "s3_bucket")]
        store_dir: Option<PathBuf>,
        /// S3 bucket to use as the object store instead of --store-dir. Credentials
        /// come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
        #[arg(long, env = "BERTH_FSD_S3_BUCKET")]
        s3_bucket: Option<String>,
        /// S3 endpoint URL (e.g. http://127.0.0.1:8333); AWS when absent. Path-style
        /// requests are used; http is allowed for http:// endpoints.
        #[arg(long, env = "BERTH_FSD_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        /// S3 region.
        #[arg(long, env = "BERTH_FSD_S3_REGION", default_value = "us-east-1")]
        s3_region: String,
        /// Whether the S3 store honours If-None-Match / If-Match on PUT.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        s3_conditional_put: bool,
        /// How long a volume lease lasts without renewal, in milliseconds; another
        /// server takes a volume over this long after its owner stopped renewing.
        /// 0 turns leases off (only for a store no other server uses).
        #[arg(long, default_value_t = 10_000)]
        lease_ttl_ms: u64,
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
        /// File server URL, or several separated by commas: the client fails over to
        /// the next one when a server is unreachable or does not own the volume.
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
        /// Name cache time of files in milliseconds: how long a file created, removed or
        /// renamed by another mount may go unseen by `stat` here. `open` checks the name
        /// with the server whatever this is (close-to-open).
        #[arg(long, default_value_t = 1000)]
        file_entry_ttl_ms: u64,
        /// How long an operation waits for an unreachable file server before EIO.
        #[arg(long, default_value_t = 30)]
        retry_secs: u64,
        /// Prometheus /metrics listen address of this mount (opens and lookups by
        /// whether a promise answered them, promise breaks, watch streams); none
        /// when absent.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    // The FUSE client runs on one thread: a kernel request is read, answered and
    // replied to without waking another thread (each wake-up costs tens of µs on a
    // VM, several per request on a multi-threaded runtime). The server uses all cores.
    let runtime = match command {
        Command::Mount { .. } => tokio::runtime::Builder::new_current_thread(),
        Command::Serve { .. } => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .context("starting the tokio runtime")?;
    runtime.block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            listen,
            store_dir,
            s3_bucket,
            s3_endpoint,
            s3_region,
            s3_conditional_put,
            lease_ttl_ms,
            state_dir,
            metrics_listen,
        } => {
            let store = match (store_dir, s3_bucket) {
                (_, Some(bucket)) => StoreConfig::S3(S3Config {
                    bucket,
                    endpoint: s3_endpoint,
                    region: s3_region,
                    conditional_put: s3_conditional_put,
                }),
                (Some(dir), None) => StoreConfig::Local(dir),
                (None, None) => anyhow::bail!("give --store-dir or --s3-bucket"),
            };
            let config = ServeConfig {
                listen,
                store,
                state_dir,
                metrics_listen,
                lease_ttl: (lease_ttl_ms > 0).then(|| Duration::from_millis(lease_ttl_ms)),
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
            metrics_listen,
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
                metrics_listen,
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
