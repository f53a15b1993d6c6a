//! Keeps the routing table current: a `Routes.WatchRoutes` stream to the controller,
//! resumed from the last applied revision after any error.
//!
//! It must never clear the table: while the controller is unreachable the last table
//! keeps serving, and retries back off up to [`MAX_BACKOFF`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use berth_api::control::routes_client::RoutesClient;
use berth_api::control::WatchRoutesRequest;
use thiserror::Error;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::table::RouteTable;

/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("controller address {url:?} is not a valid URL (expected e.g. http://127.0.0.1:7701)")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to the controller at {url}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("opening the routes watch on the controller at {url}: {status}")]
    Open { url: String, status: tonic::Status },
    #[error("routes watch from the controller at {url} broke: {status}")]
    Stream { url: String, status: tonic::Status },
    #[error("the controller at {url} ended the routes watch")]
    Ended { url: String },
}

/// Watches the controller's routes and publishes each table into `table`.
pub struct RouteWatcher {
    url: String,
    endpoint: Endpoint,
    table: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
}

impl RouteWatcher {
    /// Checks the controller URL; no connection is made until [`RouteWatcher::run`].
    pub fn new(
        url: &str,
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WatchError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| WatchError::Url {
                url: url.to_owned(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            // Notice a controller that vanished without closing the connection.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        Ok(RouteWatcher {
            url: url.to_owned(),
            endpoint,
            table,
            metrics,
        })
    }

    /// Runs forever: watch, and on any error wait (backing off) and resume.
    pub async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut applied = false;
            let err = self.watch_once(&mut applied).await;
            if applied {
                backoff = MIN_BACKOFF;
            }
            warn!(
                error = %crate::error_chain(&err),
                revision = self.table.load().revision,
                retry_in_ms = backoff.as_millis() as u64,
                "routes watch interrupted, keeping the last routing table"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One watch stream, from connecting until it fails. Sets `applied` once a table
    /// arrived, so the caller can reset its backoff.
    async fn watch_once(&self, applied: &mut bool) -> WatchError {
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(source) => {
                return WatchError::Connect {
                    url: self.url.clone(),
                    source,
                }
            }
        };
        let from_revision = self.table.load().revision;
        let mut stream = match RoutesClient::new(channel)
            .watch_routes(WatchRoutesRequest { from_revision })
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                return WatchError::Open {
                    url: self.url.clone(),
                    status,
                }
            }
        };
        info!(url = %self.url, from_revision, "watching routes");
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    self.apply(snapshot);
                    *applied = true;
                }
                Ok(None) => {
                    return WatchError::Ended {
                        url: self.url.clone(),
                    }
                }
                Err(status) => {
                    return WatchError::Stream {
                        url: self.url.clone(),
                        status,
                    }
                }
            }
        }
    }

    fn apply(&self, snapshot: berth_api::control::RouteTable) {
        let previous = self.table.load_full();
        let table = RouteTable::build(snapshot, &previous, &self.metrics);
        self.metrics
            .table_revision
            .set(i64::try_from(table.revision).unwrap_or(i64::MAX));
        self.metrics
            .sites
            .set(i64::try_from(table.site_count()).unwrap_or(i64::MAX));
        info!(
            revision = table.revision,
            previous = previous.revision,
            sites = table.site_count(),
            "routing table updated"
        );
        self.table.store(Arc::new(table));
    }
}
