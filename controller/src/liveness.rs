//! Worker liveness, kept in memory from heartbeats.
//!
//! A worker is live when it heartbeated (or registered) within
//! [`DEAD_AFTER_INTERVALS`] heartbeat intervals. Right after the controller starts, a
//! worker known from the database but not yet heard from counts as live for a grace
//! period, so a controller restart never reshuffles or unroutes a running site.
//! Nothing here touches the database.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Heartbeat interval handed to workers at registration.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(2000);
/// Missed intervals after which a worker is considered down.
pub const DEAD_AFTER_INTERVALS: u32 = 3;
/// How long workers known from before a controller start count as live unheard.
pub const RESTART_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    grace: Duration,
    timeout: Duration,
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(HEARTBEAT_INTERVAL * DEAD_AFTER_INTERVALS, RESTART_GRACE)
    }
}

impl Liveness {
    pub fn new(timeout: Duration, grace: Duration) -> Self {
        Self {
            started: Instant::now(),
            grace,
            timeout,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a sign of life (registration or heartbeat) from `worker_id`.
    pub fn seen(&self, worker_id: &str) {
        self.seen_at(worker_id, Instant::now());
    }

    fn seen_at(&self, worker_id: &str, at: Instant) {
        self.lock().insert(worker_id.to_string(), at);
    }

    pub fn is_live(&self, worker_id: &str) -> bool {
        self.is_live_at(worker_id, Instant::now())
    }

    fn is_live_at(&self, worker_id: &str, now: Instant) -> bool {
        match self.lock().get(worker_id) {
            Some(seen) => now.saturating_duration_since(*seen) < self.timeout,
            None => now.saturating_duration_since(self.started) < self.grace,
        }
    }

    /// The subset of `worker_ids` that is live now.
    pub fn live_set<'a>(&self, worker_ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let now = Instant::now();
        worker_ids
            .into_iter()
            .filter(|id| self.is_live_at(id, now))
            .map(str::to_string)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.last_seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unheard_workers_are_live_only_during_grace() {
        let l = Liveness::new(Duration::from_secs(6), Duration::from_secs(10));
        let t0 = l.started;
        assert!(l.is_live_at("w", t0 + Duration::from_secs(9)));
        assert!(!l.is_live_at("w", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn heartbeats_keep_a_worker_live() {
        let l = Liveness::new(Duration::from_secs(6), Duration::from_secs(10));
        let t0 = l.started;
        l.seen_at("w", t0 + Duration::from_secs(20));
        assert!(l.is_live_at("w", t0 + Duration::from_secs(25)));
        assert!(!l.is_live_at("w", t0 + Duration::from_secs(27)));
        // A heartbeat inside the grace period ends the grace for that worker.
        l.seen_at("x", t0);
        assert!(!l.is_live_at("x", t0 + Duration::from_secs(7)));
    }
}
