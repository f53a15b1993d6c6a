//! Workers: registration (idempotent on name), listing, and instance state reports.

use rand::Rng;

use super::{place_in_tx, Store, StoreError, WorkerRecord, STATES};

/// One instance state report, from `ReportInstance` or a heartbeat.
#[derive(Debug, Clone)]
pub struct InstanceReportIn {
    pub worker_id: String,
    pub instance_id: String,
    /// One of [`STATES`].
    pub state: String,
    pub message: String,
    pub generation: u64,
    /// Image pull progress while starting (bytes; 0/0 when not pulling).
    pub pull_done_bytes: u64,
    pub pull_total_bytes: u64,
}

fn new_worker_id() -> String {
    let bytes: [u8; 8] = rand::thread_rng().gen();
    format!("w-{}", hex::encode(bytes))
}

impl Store {
    /// Registers `name` or updates its addresses and capacity; returns its id (stable
    /// across re-registrations). Places pending instances and bumps the revision.
    pub async fn register_worker(
        &self,
        name: &str,
        ingress_addr: &str,
        capacity: u32,
        memory_mb: u64,
        is_live: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<String, StoreError> {
        let mut w = self.begin_write().await?;
        let id: String = sqlx::query_scalar(
            "INSERT INTO workers (id, name, ingress_addr, capacity, memory_mb, registered_at) \
             VALUES (?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now')) \
             ON CONFLICT (name) DO UPDATE SET ingress_addr = excluded.ingress_addr, \
             capacity = excluded.capacity, memory_mb = excluded.memory_mb \
             RETURNING id",
        )
        .bind(new_worker_id())
        .bind(name)
        .bind(ingress_addr)
        .bind(capacity as i64)
        .bind(memory_mb.min(i64::MAX as u64) as i64)
        .fetch_one(&mut *w.tx)
        .await?;
        // The registering worker is live by definition, whatever the tracker says yet.
        place_in_tx(&mut w.tx, &|w: &str| w == id || is_live(w)).await?;
        // The worker's address or liveness may have changed routes: always bump.
        w.commit(true).await?;
        Ok(id)
    }

    pub async fn worker_exists(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workers WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn worker_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM workers ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT w.id, w.name, w.ingress_addr, w.capacity, w.memory_mb, w.registered_at, \
             COUNT(i.id) FROM workers w LEFT JOIN instances i ON i.worker_id = w.id \
             GROUP BY w.id ORDER BY w.name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, ingress_addr, capacity, memory_mb, registered_at, n)| WorkerRecord {
                    id,
                    name,
                    ingress_addr,
                    capacity: capacity as u32,
                    memory_mb: memory_mb as u64,
                    registered_at,
                    instances: n as u32,
                },
            )
            .collect())
    }

    /// Applies state reports. Reports for unknown instances, from a worker the instance
    /// is not assigned to, or for an older generation are ignored. Bumps the revision
    /// when any state changed. Returns how many reports changed a state.
    pub async fn report_instances(
        &self,
        reports: &[InstanceReportIn],
    ) -> Result<usize, StoreError> {
        if reports.is_empty() {
            return Ok(0);
        }
        let mut w = self.begin_write().await?;
        let mut changed = 0;
        for r in reports {
            if !STATES.contains(&r.state.as_str()) {
                continue;
            }
            let row: Option<(Option<String>, String, String, i64, i64, i64)> = sqlx::query_as(
                "SELECT worker_id, state, message, generation, pull_done_bytes, \
                 pull_total_bytes FROM instances WHERE id = ?",
            )
            .bind(&r.instance_id)
            .fetch_optional(&mut *w.tx)
            .await?;
            let Some((worker_id, state, message, generation, done, total)) = row else {
                tracing::debug!(instance = %r.instance_id, "report for unknown instance ignored");
                continue;
            };
            if worker_id.as_deref() != Some(r.worker_id.as_str()) {
                tracing::debug!(instance = %r.instance_id, worker = %r.worker_id,
                    "report from a worker the instance is not assigned to ignored");
                continue;
            }
            if r.generation < generation as u64 {
                tracing::debug!(instance = %r.instance_id, "report for an older generation ignored");
                continue;
            }
            let (r_done, r_total) = (
                i64::try_from(r.pull_done_bytes).unwrap_or(i64::MAX),
                i64::try_from(r.pull_total_bytes).unwrap_or(i64::MAX),
            );
            if state == r.state && message == r.message && (done, total) == (r_done, r_total) {
                continue;
            }
            sqlx::query(
                "UPDATE instances SET state = ?, message = ?, pull_done_bytes = ?, \
                 pull_total_bytes = ? WHERE id = ?",
            )
            .bind(&r.state)
            .bind(&r.message)
            .bind(r_done)
            .bind(r_total)
            .bind(&r.instance_id)
            .execute(&mut *w.tx)
            .await?;
            if state != r.state {
                tracing::info!(instance = %r.instance_id, from = %state, to = %r.state, "instance state changed");
                changed += 1;
            }
        }
        w.commit(changed > 0).await?;
        Ok(changed)
    }
}
