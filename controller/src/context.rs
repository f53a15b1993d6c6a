//! The state every REST handler and gRPC service shares.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Token;
use crate::images::ImageResolver;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Controller {
    pub store: Store,
    pub liveness: Liveness,
    pub resolver: Arc<dyn ImageResolver>,
    pub token: Token,
    /// Domain suffix of site hostnames (`<site>.<domain>`).
    pub domain: String,
    /// Public URL of a site with `{site}` as placeholder.
    pub public_url_base: String,
    pub metrics: Metrics,
    /// Turns true when the controller shuts down; watch streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl Controller {
    pub fn hostname(&self, site: &str) -> String {
        format!("{site}.{}", self.domain)
    }

    pub fn url(&self, site: &str) -> String {
        self.public_url_base.replace("{site}", site)
    }

    /// Liveness predicate for the store's placement.
    pub fn is_live(&self, worker_id: &str) -> bool {
        self.liveness.is_live(worker_id)
    }
}
