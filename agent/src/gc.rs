//! Image garbage collection on a worker: keeps the image store within a size budget.
//!
//! [`run`] collects to the budget ([`crate::image::Images::gc_to_budget`]) shortly after an instance's
//! root filesystem goes (so a deleted site's layers leave soon) and every
//! [`GcConfig::interval`] in any case. An operator can also collect everything unused at
//! once through the admin socket ([`crate::admin`], `berth worker gc`). Images in use by
//! an instance are never removed (see [`crate::image`]).

use std::sync::Arc;
use std::time::Duration;

use berth_images::GcReport;
use tracing::{info, warn};

use crate::state::Agent;

/// Default store budget: 10 GiB.
pub const DEFAULT_BUDGET: u64 = 10 << 30;

/// How the agent collects.
#[derive(Clone, Copy, Debug)]
pub struct GcConfig {
    /// Disk bytes the image store may use before unused images are evicted.
    pub budget: u64,
    /// Time between two periodic collections.
    pub interval: Duration,
    /// Wait after an instance's removal before collecting (batches a site's instances).
    pub settle: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            budget: DEFAULT_BUDGET,
            interval: Duration::from_secs(600),
            settle: Duration::from_secs(2),
        }
    }
}

pub use berth_api::size::parse_size;

/// One line for operators: what a collection removed and what is left.
pub fn summary(r: &GcReport) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    format!(
        "removed {} image(s), {} layer snapshot(s), {} blob(s), {} leftover(s); freed {:.1} MiB; store now {:.1} MiB with {} image(s)",
        r.images_removed.len(),
        r.snapshots_removed,
        r.blobs_removed,
        r.leftovers_removed,
        mib(r.bytes_freed),
        mib(r.bytes_after),
        r.images_kept
    )
}

/// Collects to the budget after removals and periodically, until the task is dropped.
pub async fn run(agent: Arc<Agent>, cfg: GcConfig) {
    let images = &agent.images;
    info!(budget = cfg.budget, interval = ?cfg.interval, "image garbage collection on");
    loop {
        tokio::select! {
            _ = images.released() => tokio::time::sleep(cfg.settle).await,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
        match images.gc_to_budget(cfg.budget).await {
            Ok(r) if r.images_removed.is_empty() && r.bytes_freed == 0 => {
                if r.bytes_after > cfg.budget {
                    warn!(
                        bytes = r.bytes_after,
                        budget = cfg.budget,
                        "image store is over its budget with only images in use"
                    );
                }
            }
            Ok(r) => info!(
                images = r.images_removed.len(),
                bytes_freed = r.bytes_freed,
                bytes_after = r.bytes_after,
                "image garbage collection: {}",
                summary(&r)
            ),
            Err(e) => warn!(error = %e, "image garbage collection failed"),
        }
    }
}
