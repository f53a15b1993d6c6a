//! Listeners and process lifetime: the public HTTP/1.1 + HTTP/2 (h2c) listener, the
//! `/metrics` listener, the routes watch task, and graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::proxy::{ClientConn, Proxy};
use crate::table::RouteTable;
use crate::watch::{RouteWatcher, WatchError};

/// Everything the front end needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Controller gRPC URL, e.g. `http://127.0.0.1:7701`.
    pub controller: String,
    /// Public HTTP address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address.
    pub metrics_listen: SocketAddr,
    /// How long in-flight requests may take to finish after shutdown is asked.
    pub drain_timeout: Duration,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("binding {addr} for {flag} (is another process using the port? pick another address with {flag})")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Runs the front end until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to `drain_timeout`) and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let watcher = RouteWatcher::new(&config.controller, table.clone(), metrics.clone())?;
    let listener = bind("--listen", config.listen).await?;
    let metrics_listener = bind("--metrics-listen", config.metrics_listen).await?;
    info!(listen = %config.listen, metrics = %config.metrics_listen, controller = %config.controller, "front end started");

    let watch_task = tokio::spawn(watcher.run());
    let metrics_task = tokio::spawn(serve_metrics(metrics_listener, metrics.clone()));
    let proxy = Arc::new(Proxy::new(table, metrics));
    serve_proxy(listener, proxy, shutdown, config.drain_timeout).await;
    watch_task.abort();
    metrics_task.abort();
    Ok(())
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { flag, addr, source })
}

async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let client = ClientConn::new(peer.ip().to_canonical());
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            let client = client.clone();
            async move { proxy.handle(req, &client).await }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%peer, error = %err, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            timeout_s = drain_timeout.as_secs(),
            "drain timed out, closing the remaining connections"
        );
    }
}

async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, std::convert::Infallible>(metrics_response(&req, &metrics)) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}

fn metrics_response(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this listener serves /metrics and /healthz\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
