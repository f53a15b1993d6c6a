//! Wires the daemon together: state directory, child reaper, records, the gRPC
//! service on a Unix socket (mode 0600) and `/metrics`; stops serving when the
//! shutdown future resolves.
//!
//! Shutdown leaves running sandboxes alone (the agent stops them first); their
//! records stay on disk for the next daemon.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::sandbox::sandboxes_server::SandboxesServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::metrics::{self, Metrics};
use crate::reaper::Reaper;
use crate::sandboxes::{Layout, Sandboxes};
use crate::service::SandboxesService;
use crate::SandboxdError;

/// What the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unix socket the gRPC service listens on.
    pub socket: PathBuf,
    /// Bundles, libcontainer state and records.
    pub state_dir: PathBuf,
    /// Address of `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Binary re-executed for libcontainer operations (normally `/proc/self/exe`).
    pub helper_exe: PathBuf,
    /// Cap of each sandbox's log file ([`crate::logcap`]).
    pub log_max_bytes: u64,
}

/// Removes a socket file left by a daemon that is gone; refuses when one still
/// answers on it.
async fn clear_stale_socket(socket: &Path) -> Result<(), SandboxdError> {
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SandboxdError::SocketInUse {
            path: socket.to_path_buf(),
            reason: "it exists and is not a socket".into(),
        });
    }
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        return Err(SandboxdError::SocketInUse {
            path: socket.to_path_buf(),
            reason: "another sandboxd is listening on it".into(),
        });
    }
    std::fs::remove_file(socket).map_err(|source| SandboxdError::Socket {
        path: socket.to_path_buf(),
        source,
    })
}

/// Runs the daemon until `shutdown` resolves. Must be called inside a tokio runtime
/// before this process spawns any child.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxdError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| SandboxdError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let layout = Layout::create(&config.state_dir)?;
    let reaper = Reaper::start()?;
    let metrics = Arc::new(Metrics::new());
    let sandboxes = Sandboxes::open(
        layout,
        config.helper_exe.clone(),
        reaper,
        metrics.clone(),
        config.log_max_bytes,
    )?;

    if let Some(parent) = config.socket.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SandboxdError::Socket {
            path: config.socket.clone(),
            source,
        })?;
    }
    clear_stale_socket(&config.socket).await?;
    let listener = UnixListener::bind(&config.socket).map_err(|source| SandboxdError::Socket {
        path: config.socket.clone(),
        source,
    })?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| SandboxdError::Socket {
            path: config.socket.clone(),
            source,
        },
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let metrics_task = tokio::spawn(metrics::serve(config.metrics_listen, metrics, metrics_stop));
    tracing::info!(
        socket = %config.socket.display(),
        state_dir = %config.state_dir.display(),
        metrics = %config.metrics_listen,
        "sandboxd serving"
    );
    let grpc_stop = {
        let mut rx = stop_rx;
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let served = tonic::transport::Server::builder()
        .add_service(SandboxesServer::new(SandboxesService::new(sandboxes)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), grpc_stop)
        .await;
    let _ = std::fs::remove_file(&config.socket);
    served.map_err(SandboxdError::Serve)?;
    match metrics_task.await {
        Ok(result) => result?,
        Err(join) => tracing::error!(%join, "metrics task panicked"),
    }
    tracing::info!("sandboxd stopped");
    Ok(())
}
