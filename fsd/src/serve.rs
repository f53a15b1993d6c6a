//! `berth-fsd serve`: opens the stores and runs the gRPC service and `/metrics` until
//! asked to stop.
//!
//! The server's id (the owner name in volume leases) is kept in `<state-dir>/server-id`
//! so a restarted server takes its own leases back at once; a server with a new state
//! directory waits for the old lease to expire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::volume::volumes_server::VolumesServer;

use crate::data::lease::Leases;
use crate::data::objects::{StoreConfig, StoreError};
use crate::data::ChunkStore;
use crate::error::FsError;
use crate::meta::MetaStore;
use crate::metrics::{self, Metrics};
use crate::service::VolumeService;

/// HTTP/2 flow-control window of one gRPC stream: two whole 1 MiB writes and more.
const IO_WINDOW: u32 = 4 << 20;

/// Where the server listens and keeps its state.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// The object store holding file data, the metadata journal and leases.
    pub store: StoreConfig,
    /// Directory for `meta.db`.
    pub state_dir: PathBuf,
    /// `/metrics` address.
    pub metrics_listen: SocketAddr,
    /// How long a volume lease lasts without renewal; `None` turns leases off (only
    /// safe when no other server ever uses the same object store).
    pub lease_ttl: Option<Duration>,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating directory {path} failed; check permissions")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the object store failed")]
    Store(#[from] StoreError),
    #[error("reading or writing the server id {path} failed; check the state directory")]
    ServerId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening metadata database in {path} failed")]
    Meta { path: PathBuf, source: FsError },
    #[error("binding {what} address {addr} failed; pick a free port")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Metrics(std::io::Error),
}

/// Runs the file server until `shutdown` resolves, then stops accepting requests,
/// lets running ones finish and closes the database.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ServeError::CreateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let objects = config.store.open()?;
    let server_id = server_id(&config.state_dir)?;
    let meta =
        Arc::new(
            MetaStore::open(&config.state_dir)
                .await
                .map_err(|source| ServeError::Meta {
                    path: config.state_dir.clone(),
                    source,
                })?,
        );
    let leases = config
        .lease_ttl
        .map(|ttl| Leases::new(objects.clone(), server_id.clone(), ttl));
    let renewals = leases.as_ref().map(|l| l.spawn_renewals());
    let data = Arc::new(ChunkStore::new(objects, meta.clone(), leases));
    let metrics = Arc::new(Metrics::new());
    let service = VolumeService::new(meta.clone(), data.clone(), metrics.clone());

    let grpc_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "gRPC",
            addr: config.listen,
            source,
        })?;
    let metrics_listener = metrics::bind(config.metrics_listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "metrics",
            addr: config.metrics_listen,
            source,
        })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    tracing::info!(
        listen = %config.listen,
        metrics = %config.metrics_listen,
        store = ?config.store,
        server_id,
        state = %config.state_dir.display(),
        boot_id = service.boot_id(),
        "berth-fsd serving"
    );
    let metrics_task = tokio::spawn(metrics::serve_metrics(
        metrics_listener,
        metrics,
        stopped(stop_rx.clone()),
    ));
    let incoming = tokio_stream_listener(grpc_listener);
    // HTTP/2's default 64 KiB windows make a 1 MiB write wait for a window update
    // every 64 KiB; let a few whole writes be in flight instead.
    let grpc = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(IO_WINDOW))
        .initial_connection_window_size(Some(4 * IO_WINDOW))
        .add_service(VolumesServer::new(service).max_decoding_message_size(32 << 20))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
        .await;
    data.shutdown().await;
    if let Some(task) = renewals {
        task.abort();
    }
    meta.close().await;
    grpc?;
    match metrics_task.await {
        Ok(result) => result.map_err(ServeError::Metrics)?,
        Err(err) => tracing::error!(%err, "metrics task panicked"),
    }
    tracing::info!("berth-fsd stopped");
    Ok(())
}

/// Accepted connections of a bound listener, with TCP_NODELAY (small RPCs dominate).
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// This server's id, created on first start.
fn server_id(state_dir: &Path) -> Result<String, ServeError> {
    let path = state_dir.join("server-id");
    let err = |source| ServeError::ServerId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(err(source)),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, &id).map_err(err)?;
            Ok(id)
        }
    }
}
