//! Desired state in SQLite (`<state-dir>/berth.db`, WAL, embedded migrations).
//!
//! Every write goes through one transaction that also bumps the single-row
//! `revision` counter when desired state or instance readiness changes; after commit
//! the new revision is published on a `watch` channel that wakes the gRPC streams.
//! Writes are serialized by an in-process lock, so SQLite never has to arbitrate
//! between two writers. Snapshot reads run in a read transaction so the revision and
//! the rows they return belong together.

mod id_ranges;
mod sites;
mod snapshots;
mod workers;

pub use id_ranges::{FIRST_HOST_ID, ID_RANGE_SIZE};
pub use snapshots::{AssignmentRow, RouteSite};
pub use workers::InstanceReportIn;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use thiserror::Error;
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::placement::{self, WorkerLoad};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening state database {path}: {source}: check that the state directory is writable")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating state database: {0}: the database may be from a newer controller")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state database query failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("site {0:?} already exists: pick another name or delete the site first")]
    SiteExists(String),
    #[error("no free host id range left for site {0}: all 65,536 blocks of the 32-bit id space are taken; delete unused rows of table id_ranges")]
    IdRangesExhausted(String),
    #[error("stored env of site {site:?} is not a JSON object of strings: {source}")]
    CorruptEnv {
        site: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Instance states as stored (and shown by the REST API).
pub const STATES: [&str; 5] = ["pending", "starting", "ready", "failed", "stopped"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub worker_id: Option<String>,
    /// Name of the assigned worker, empty while unplaced.
    pub worker_name: String,
    pub state: String,
    pub message: String,
    pub generation: u64,
    /// Image pull progress while starting (bytes; 0/0 when not pulling).
    pub pull_done_bytes: u64,
    pub pull_total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRecord {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub instances: i64,
    pub port: u32,
    pub env: BTreeMap<String, String>,
    pub insecure_registry: bool,
    pub registry_auth: String,
    pub local_cache: bool,
    pub created_at: String,
    pub generation: u64,
    pub instance_states: Vec<InstanceRecord>,
}

/// A validated site to insert.
#[derive(Debug, Clone)]
pub struct NewSite {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub instances: u32,
    pub port: u32,
    pub env: BTreeMap<String, String>,
    pub insecure_registry: bool,
    pub registry_auth: String,
    pub local_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    pub ingress_addr: String,
    pub capacity: u32,
    pub memory_mb: u64,
    pub registered_at: String,
    /// Instances assigned to the worker (any state).
    pub instances: u32,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub sites: i64,
    pub instances_by_state: BTreeMap<String, i64>,
}

pub struct Store {
    pool: SqlitePool,
    write_lock: Mutex<()>,
    revision: watch::Sender<u64>,
}

impl Store {
    /// Opens (creating if missing) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let rev: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            write_lock: Mutex::new(()),
            revision: watch::Sender::new(rev as u64),
        })
    }

    /// The current revision of desired state.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// A receiver that changes whenever the revision does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a serialized write transaction.
    async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        let guard = self.write_lock.lock().await;
        let tx = self.pool.begin().await?;
        Ok(WriteTx {
            store: self,
            _guard: guard,
            tx,
        })
    }

    /// Bumps the revision without other changes (e.g. a worker went up or down, which
    /// changes the routing table).
    pub async fn bump_revision(&self) -> Result<u64, StoreError> {
        let tx = self.begin_write().await?;
        tx.commit(true).await?;
        Ok(self.revision())
    }

    /// Places every unplaced instance on live workers; bumps the revision if any
    /// instance was placed. Returns how many were placed.
    pub async fn place_pending(
        &self,
        is_live: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let n = place_in_tx(&mut tx.tx, is_live).await?;
        tx.commit(n > 0).await?;
        Ok(n)
    }

    /// Site and instance counts for metrics.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        let sites: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
            .fetch_one(&self.pool)
            .await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM instances GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let mut instances_by_state: BTreeMap<String, i64> =
            STATES.iter().map(|s| (s.to_string(), 0)).collect();
        instances_by_state.extend(rows);
        Ok(Counts {
            sites,
            instances_by_state,
        })
    }
}

/// A write transaction holding the store's write lock.
struct WriteTx<'s> {
    store: &'s Store,
    _guard: MutexGuard<'s, ()>,
    tx: Transaction<'static, Sqlite>,
}

impl WriteTx<'_> {
    /// Commits; with `bump` the revision is incremented in the same transaction and
    /// published after commit.
    async fn commit(mut self, bump: bool) -> Result<(), StoreError> {
        let new_rev = if bump {
            let v: i64 = sqlx::query_scalar(
                "UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value",
            )
            .fetch_one(&mut *self.tx)
            .await?;
            Some(v as u64)
        } else {
            None
        };
        self.tx.commit().await?;
        if let Some(v) = new_rev {
            self.store.revision.send_replace(v);
            tracing::debug!(revision = v, "revision bumped");
        }
        Ok(())
    }
}

/// Places unplaced instances inside an open write transaction.
pub(crate) async fn place_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    is_live: &(dyn Fn(&str) -> bool + Sync),
) -> Result<usize, StoreError> {
    let unplaced: Vec<String> =
        sqlx::query_scalar("SELECT id FROM instances WHERE worker_id IS NULL ORDER BY rowid")
            .fetch_all(&mut **tx)
            .await?;
    if unplaced.is_empty() {
        return Ok(0);
    }
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT w.id, w.name, w.capacity, COUNT(i.id) FROM workers w \
         LEFT JOIN instances i ON i.worker_id = w.id GROUP BY w.id",
    )
    .fetch_all(&mut **tx)
    .await?;
    let loads: Vec<WorkerLoad> = rows
        .into_iter()
        .map(|(id, name, capacity, instances)| WorkerLoad {
            live: is_live(&id),
            id,
            name,
            capacity: capacity.clamp(0, u32::MAX as i64) as u32,
            instances: instances as u32,
        })
        .collect();
    let decisions = placement::place(&unplaced, &loads);
    for (instance, worker) in &decisions {
        sqlx::query("UPDATE instances SET worker_id = ? WHERE id = ?")
            .bind(worker)
            .bind(instance)
            .execute(&mut **tx)
            .await?;
        tracing::info!(instance = %instance, worker = %worker, "instance placed");
    }
    Ok(decisions.len())
}

#[cfg(test)]
mod tests;
