//! `berth-fsd serve`: opens the stores and runs the gRPC service and `/metrics` until
//! asked to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::volume::volumes_server::VolumesServer;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::data::ChunkStore;
use crate::error::FsError;
use crate::meta::MetaStore;
use crate::metrics::{self, Metrics};
use crate::service::VolumeService;

/// Where the server listens and keeps its state.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Object store root (local directory) for file data.
    pub store_dir: PathBuf,
    /// Directory for `meta.db`.
    pub state_dir: PathBuf,
    /// `/metrics` address.
    pub metrics_listen: SocketAddr,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating directory {path} failed; check permissions")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening object store at {path} failed")]
    Store {
        path: PathBuf,
        source: object_store::Error,
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
    for dir in [&config.store_dir, &config.state_dir] {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(&config.store_dir).map_err(|source| {
            ServeError::Store {
                path: config.store_dir.clone(),
                source,
            }
        })?,
    );
    let meta =
        Arc::new(
            MetaStore::open(&config.state_dir)
                .await
                .map_err(|source| ServeError::Meta {
                    path: config.state_dir.clone(),
                    source,
                })?,
        );
    let data = Arc::new(ChunkStore::new(store));
    let metrics = Arc::new(Metrics::new());
    let service = VolumeService::new(meta.clone(), data, metrics.clone());

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
        store = %config.store_dir.display(),
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
    let grpc = tonic::transport::Server::builder()
        .add_service(VolumesServer::new(service).max_decoding_message_size(32 << 20))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx))
        .await;
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
