//! Wiring: state directory, token, store, REST and gRPC listeners, the liveness
//! monitor, and graceful shutdown (streams end, servers drain, database closes).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{AuthError, Token};
use crate::context::Controller;
use crate::images::ImageResolver;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("creating state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {addr} ({what}): {source}: pick a free address with --{what}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("REST server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub domain: String,
    pub public_url_base: String,
}

/// How often the liveness monitor looks for workers going up or down.
const LIVENESS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    resolver: Arc<dyn ImageResolver>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .map_err(|source| ServerError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
    let token = Token::load_or_create(&config.state_dir)?;
    let store = Store::open(&config.state_dir.join("berth.db")).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Arc::new(Controller {
        store,
        liveness: Liveness::default(),
        resolver,
        token,
        domain: config.domain.clone(),
        public_url_base: config.public_url_base.clone(),
        metrics: Metrics::default(),
        shutdown: shutdown_rx,
    });

    let http_listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                what: "listen",
                source,
            })?;
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.grpc_listen,
            what: "grpc-listen",
            source,
        })?;
    tracing::info!(
        rest = %config.listen,
        grpc = %config.grpc_listen,
        state_dir = %config.state_dir.display(),
        revision = ctx.store.revision(),
        "controller listening"
    );

    let monitor = tokio::spawn(monitor_liveness(ctx.clone()));

    let mut http_stop = ctx.shutdown.clone();
    let http = axum::serve(http_listener, crate::rest::router(ctx.clone())).with_graceful_shutdown(
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    );
    let (workers, routes) = crate::grpc::services(ctx.clone());
    let mut grpc_stop = ctx.shutdown.clone();
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(workers)
        .add_service(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        });

    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: closing watch streams and draining requests");
        let _ = shutdown_tx.send(true);
    });

    let (h, g) = tokio::join!(async { http.await }, grpc);
    monitor.abort();
    ctx.store.close().await;
    h.map_err(ServerError::Http)?;
    g?;
    tracing::info!("controller stopped");
    Ok(())
}

/// Notices workers going up or down: places pending instances on workers that came
/// (back) up and bumps the revision so routing tables drop or regain endpoints.
async fn monitor_liveness(ctx: Arc<Controller>) {
    let mut previous: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(LIVENESS_CHECK_EVERY);
    loop {
        tick.tick().await;
        let ids = match ctx.store.worker_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "liveness monitor: listing workers");
                continue;
            }
        };
        let live = ctx.liveness.live_set(ids.iter().map(String::as_str));
        if let Some(prev) = &previous {
            if prev == &live {
                continue;
            }
            for w in live.difference(prev) {
                tracing::info!(worker_id = %w, "worker is up");
            }
            for w in prev.difference(&live) {
                tracing::warn!(worker_id = %w, "worker is down: routing nothing to it");
            }
            if let Err(e) = ctx.store.place_pending(&|w| live.contains(w)).await {
                tracing::warn!(error = %e, "liveness monitor: placing pending instances");
                continue;
            }
            if let Err(e) = ctx.store.bump_revision().await {
                tracing::warn!(error = %e, "liveness monitor: bumping revision");
                continue;
            }
        }
        previous = Some(live);
    }
}
