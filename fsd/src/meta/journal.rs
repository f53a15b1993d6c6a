//! Change capture of the metadata, so a volume can be rebuilt from object storage alone.
//!
//! SQLite is the server's fast local index; the object store holds the truth. Triggers
//! (installed by [`install`] on every table that has a `volume` column, plus `volumes`)
//! record the primary key of every row an operation inserts, updates or deletes in
//! `journal_pending`, inside the operation's own transaction. [`MetaStore::capture`]
//! turns the pending keys into full row images (or "gone") at one read snapshot; the
//! data layer uploads them as a journal segment and then calls [`MetaStore::ack`].
//! Replaying row images is idempotent and replaying all segments in order ends in the
//! database state at the last segment's snapshot, whatever operations produced it, so
//! new tables are journaled without code here knowing their meaning.
//!
//! This module also keeps the chunk map (`chunks`: which immutable object holds chunk
//! `idx` of inode `ino`) and `chunk_garbage`, the objects superseded or dropped that may
//! be deleted once a journal segment no longer referencing them is durable. It never
//! talks to the object store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, SqlitePool, TypeInfo, ValueRef};

use super::{MetaStore, Tx};
use crate::error::{FsError, FsResult};

/// Tables that are local bookkeeping and never journaled.
const LOCAL_TABLES: &[&str] = &["journal_pending", "layout_state", "chunk_garbage"];

/// Tables holding state that dies with the server (advisory locks, open handles):
/// replaying them on another server would resurrect stale owners.
const EPHEMERAL_TABLE_MARKERS: &[&str] = &["lock", "open_handle", "lease"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal_pending (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    volume TEXT NOT NULL,
    tbl    TEXT NOT NULL,
    key    TEXT NOT NULL,
    UNIQUE (volume, tbl, key)
);
CREATE TABLE IF NOT EXISTS layout_state (
    volume TEXT PRIMARY KEY NOT NULL,
    seq    INTEGER NOT NULL,
    snapshot_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    volume  TEXT    NOT NULL,
    ino     INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    version TEXT    NOT NULL,
    PRIMARY KEY (volume, ino, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_garbage (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    volume  TEXT    NOT NULL,
    ino     INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    version TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS berth_chunk_superseded AFTER UPDATE OF version ON chunks
WHEN OLD.version <> NEW.version BEGIN
    INSERT INTO chunk_garbage (volume, ino, idx, version)
    VALUES (OLD.volume, OLD.ino, OLD.idx, OLD.version);
END;
CREATE TRIGGER IF NOT EXISTS berth_chunk_dropped AFTER DELETE ON chunks BEGIN
    INSERT INTO chunk_garbage (volume, ino, idx, version)
    VALUES (OLD.volume, OLD.ino, OLD.idx, OLD.version);
END;
CREATE TRIGGER IF NOT EXISTS berth_inode_chunks_dropped AFTER DELETE ON inodes BEGIN
    DELETE FROM chunks WHERE volume = OLD.volume AND ino = OLD.ino;
END;
";

/// One SQLite value, as stored in journal segments and snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// Hex-encoded bytes.
    Blob(String),
}

/// A row image: column name to value.
pub type RowImage = BTreeMap<String, Value>;

/// One changed row: its key and its image after the change, or `None` if deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    pub key: Vec<Value>,
    pub row: Option<RowImage>,
}

/// A chunk object that may be deleted once the capture it came with is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage {
    pub ino: u64,
    pub idx: u64,
    pub version: String,
}

/// Row images of every pending change of a volume at one read snapshot.
#[derive(Debug, Default)]
pub struct Capture {
    pub changes: Vec<Change>,
    pub garbage: Vec<Garbage>,
    /// Pending ids up to this one are covered.
    pub max_pending: i64,
    /// Garbage ids up to this one are listed.
    pub max_garbage: i64,
}

/// Every journaled row of a volume.
pub type Dump = BTreeMap<String, Vec<RowImage>>;

/// Where a volume's local copy stands relative to the object store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayoutState {
    /// Last journal segment written or applied here (0: none).
    pub seq: u64,
    /// Journal segment covered by the newest snapshot written or loaded here.
    pub snapshot_seq: u64,
}

/// A journaled table: its name, the column naming the volume and its primary key.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    volume_col: String,
    pk: Vec<String>,
    columns: Vec<String>,
}

/// Creates the layout tables and (re)creates the capture triggers of every table.
/// Runs at every open, after the migrations, so tables added later are covered too.
pub(super) async fn install(writer: &SqlitePool) -> FsResult<()> {
    sqlx::raw_sql(SCHEMA).execute(writer).await?;
    let mut conn = writer.acquire().await?;
    for table in tables(&mut conn).await? {
        let key = |rec: &str| {
            table
                .pk
                .iter()
                .map(|c| format!("quote({rec}.\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || ',' || ")
        };
        // DELETE + INSERT rather than INSERT OR REPLACE: an outer statement's conflict
        // policy (e.g. OR IGNORE) would override the trigger's.
        let insert = |rec: &str| {
            format!(
                "DELETE FROM journal_pending WHERE volume = {rec}.\"{vol}\" AND tbl = '{t}' \
                 AND key = {k}; \
                 INSERT INTO journal_pending (volume, tbl, key) VALUES ({rec}.\"{vol}\", '{t}', {k});",
                vol = table.volume_col,
                t = table.name,
                k = key(rec)
            )
        };
        let name = &table.name;
        let sql = format!(
            "DROP TRIGGER IF EXISTS berth_journal_{name}_ins;
             DROP TRIGGER IF EXISTS berth_journal_{name}_upd;
             DROP TRIGGER IF EXISTS berth_journal_{name}_del;
             CREATE TRIGGER berth_journal_{name}_ins AFTER INSERT ON \"{name}\" \
             BEGIN {} END;
             CREATE TRIGGER berth_journal_{name}_upd AFTER UPDATE ON \"{name}\" \
             BEGIN {} {} END;
             CREATE TRIGGER berth_journal_{name}_del AFTER DELETE ON \"{name}\" \
             BEGIN {} END;",
            insert("NEW"),
            insert("OLD"),
            insert("NEW"),
            insert("OLD"),
        );
        sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The journaled tables of the schema.
async fn tables(conn: &mut sqlx::SqliteConnection) -> FsResult<Vec<Table>> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for (name,) in names {
        if LOCAL_TABLES.contains(&name.as_str())
            || EPHEMERAL_TABLE_MARKERS.iter().any(|m| name.contains(m))
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let cols: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid")
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
        let columns: Vec<String> = cols.iter().map(|(c, _)| c.clone()).collect();
        let volume_col = if name == "volumes" {
            "name"
        } else if columns.iter().any(|c| c == "volume") {
            "volume"
        } else {
            continue;
        };
        let mut pk: Vec<(i64, String)> = cols
            .iter()
            .filter(|(_, p)| *p > 0)
            .map(|(c, p)| (*p, c.clone()))
            .collect();
        pk.sort();
        if pk.is_empty() {
            tracing::warn!(table = name, "table has no primary key; not journaled");
            continue;
        }
        out.push(Table {
            volume_col: volume_col.to_string(),
            pk: pk.into_iter().map(|(_, c)| c).collect(),
            columns,
            name,
        });
    }
    Ok(out)
}

fn value_of(row: &SqliteRow, i: usize) -> FsResult<Value> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_string();
    Ok(match kind.as_str() {
        "INTEGER" | "BOOLEAN" => Value::Int(row.try_get(i)?),
        "REAL" => Value::Real(row.try_get(i)?),
        "TEXT" => Value::Text(row.try_get(i)?),
        _ => Value::Blob(hex::encode(row.try_get::<Vec<u8>, _>(i)?)),
    })
}

fn bind_value<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    value: &Value,
) -> FsResult<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
    Ok(match value {
        Value::Null => query.bind(None::<i64>),
        Value::Int(i) => query.bind(*i),
        Value::Real(r) => query.bind(*r),
        Value::Text(t) => query.bind(t.clone()),
        Value::Blob(h) => query
            .bind(hex::decode(h).map_err(|e| FsError::Corrupt(format!("bad blob value: {e}")))?),
    })
}

fn quoted(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MetaStore {
    /// Row images of the pending changes of `volume`, and its chunk garbage, at one
    /// consistent read snapshot.
    pub async fn capture(&self, volume: &str) -> FsResult<Capture> {
        let mut tx = self.reader.begin().await?;
        let tables = tables(&mut tx).await?;
        let pending: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, tbl, key FROM journal_pending WHERE volume = ? ORDER BY id")
                .bind(volume)
                .fetch_all(&mut *tx)
                .await?;
        let mut capture = Capture::default();
        for (id, tbl, key) in pending {
            capture.max_pending = capture.max_pending.max(id);
            let Some(table) = tables.iter().find(|t| t.name == tbl) else {
                continue;
            };
            // `key` was written by SQLite's quote() in our own trigger: a list of SQL
            // literals, safe to splice.
            let pk = quoted(&table.pk);
            let sql = format!(
                "SELECT {key}, t.* FROM (SELECT 1) LEFT JOIN \"{}\" t ON ({pk}) = ({key})",
                table.name
            );
            let row = sqlx::query(&sql).fetch_one(&mut *tx).await?;
            let n = table.pk.len();
            let key: Vec<Value> = (0..n).map(|i| value_of(&row, i)).collect::<FsResult<_>>()?;
            let mut image = RowImage::new();
            for (i, col) in row.columns().iter().enumerate().skip(n) {
                image.insert(col.name().to_string(), value_of(&row, i)?);
            }
            let exists = table
                .pk
                .iter()
                .all(|c| image.get(c).is_some_and(|v| *v != Value::Null));
            capture.changes.push(Change {
                table: table.name.clone(),
                key,
                row: exists.then_some(image),
            });
        }
        let garbage: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "SELECT id, ino, idx, version FROM chunk_garbage WHERE volume = ? ORDER BY id",
        )
        .bind(volume)
        .fetch_all(&mut *tx)
        .await?;
        for (id, ino, idx, version) in garbage {
            capture.max_garbage = capture.max_garbage.max(id);
            capture.garbage.push(Garbage {
                ino: ino as u64,
                idx: idx as u64,
                version,
            });
        }
        tx.commit().await?;
        Ok(capture)
    }

    /// Records that journal segment `seq` holding `capture` is durable.
    pub async fn ack(&self, volume: &str, seq: u64, capture: &Capture) -> FsResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM journal_pending WHERE volume = ? AND id <= ?")
            .bind(volume)
            .bind(capture.max_pending)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO layout_state (volume, seq, snapshot_seq) VALUES (?, ?, 0) \
             ON CONFLICT (volume) DO UPDATE SET seq = excluded.seq",
        )
        .bind(volume)
        .bind(seq as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets garbage up to `max_id` (its objects were deleted).
    pub async fn forget_garbage(&self, volume: &str, max_id: i64) -> FsResult<()> {
        sqlx::query("DELETE FROM chunk_garbage WHERE volume = ? AND id <= ?")
            .bind(volume)
            .bind(max_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records that a snapshot covering segment `seq` is durable.
    pub async fn note_snapshot(&self, volume: &str, seq: u64) -> FsResult<()> {
        sqlx::query("UPDATE layout_state SET snapshot_seq = ? WHERE volume = ?")
            .bind(seq as i64)
            .bind(volume)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Where the local copy of `volume` stands; `None` if it was never synced here.
    pub async fn layout_state(&self, volume: &str) -> FsResult<Option<LayoutState>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT seq, snapshot_seq FROM layout_state WHERE volume = ?")
                .bind(volume)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|(seq, snapshot_seq)| LayoutState {
            seq: seq as u64,
            snapshot_seq: snapshot_seq as u64,
        }))
    }

    /// Whether `volume` has local changes not yet in a journal segment.
    pub async fn has_pending(&self, volume: &str) -> FsResult<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM journal_pending WHERE volume = ? LIMIT 1")
                .bind(volume)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.is_some())
    }

    /// Whether `volume` exists in the local copy.
    pub async fn has_rows(&self, volume: &str) -> FsResult<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM volumes WHERE name = ?")
            .bind(volume)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.is_some())
    }

    /// Every journaled row of `volume`, at one read snapshot (for a snapshot object).
    pub async fn dump(&self, volume: &str) -> FsResult<Dump> {
        let mut tx = self.reader.begin().await?;
        let mut dump = Dump::new();
        for table in tables(&mut tx).await? {
            let sql = format!(
                "SELECT * FROM \"{}\" WHERE \"{}\" = ?",
                table.name, table.volume_col
            );
            let rows = sqlx::query(&sql).bind(volume).fetch_all(&mut *tx).await?;
            let mut images = Vec::with_capacity(rows.len());
            for row in rows {
                let mut image = RowImage::new();
                for (i, col) in row.columns().iter().enumerate() {
                    image.insert(col.name().to_string(), value_of(&row, i)?);
                }
                images.push(image);
            }
            dump.insert(table.name, images);
        }
        tx.commit().await?;
        Ok(dump)
    }

    /// Replaces the local copy of `volume` with `snapshot` (if any, else keeps it,
    /// unless `wipe`) plus `segments` applied in order, in one transaction, and records
    /// `state`. Local changes not in the store are dropped.
    pub async fn rebuild(
        &self,
        volume: &str,
        wipe: bool,
        snapshot: Option<&Dump>,
        segments: &[Vec<Change>],
        state: LayoutState,
    ) -> FsResult<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await?;
        let tables = tables(&mut tx).await?;
        if wipe || snapshot.is_some() {
            for table in &tables {
                let sql = format!(
                    "DELETE FROM \"{}\" WHERE \"{}\" = ?",
                    table.name, table.volume_col
                );
                sqlx::query(&sql).bind(volume).execute(&mut *tx).await?;
            }
        }
        if let Some(dump) = snapshot {
            for (name, rows) in dump {
                let table = known(&tables, name)?;
                for row in rows {
                    check_volume(table, row, volume)?;
                    upsert(&mut tx, table, row).await?;
                }
            }
        }
        for changes in segments {
            for change in changes {
                let table = known(&tables, &change.table)?;
                match &change.row {
                    Some(row) => {
                        check_volume(table, row, volume)?;
                        upsert(&mut tx, table, row).await?;
                    }
                    None => delete(&mut tx, table, &change.key, volume).await?,
                }
            }
        }
        for sql in [
            "DELETE FROM journal_pending WHERE volume = ?",
            "DELETE FROM chunk_garbage WHERE volume = ?",
        ] {
            sqlx::query(sql).bind(volume).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO layout_state (volume, seq, snapshot_seq) VALUES (?, ?, ?) \
             ON CONFLICT (volume) DO UPDATE SET seq = excluded.seq, \
             snapshot_seq = excluded.snapshot_seq",
        )
        .bind(volume)
        .bind(state.seq as i64)
        .bind(state.snapshot_seq as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.known_volumes
            .lock()
            .expect("volume set lock poisoned")
            .remove(volume);
        Ok(())
    }

    /// The object version of each stored chunk of an inode, by chunk index.
    pub async fn chunk_versions(&self, volume: &str, ino: u64) -> FsResult<BTreeMap<u64, String>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT idx, version FROM chunks WHERE volume = ? AND ino = ?")
                .bind(volume)
                .bind(ino as i64)
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(idx, version)| (idx as u64, version))
            .collect())
    }

    /// The object version of one chunk, if it was ever stored.
    pub async fn chunk_version(
        &self,
        volume: &str,
        ino: u64,
        idx: u64,
    ) -> FsResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT version FROM chunks WHERE volume = ? AND ino = ? AND idx = ?")
                .bind(volume)
                .bind(ino as i64)
                .bind(idx as i64)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Points chunks of an inode at newly uploaded objects (the old ones become
    /// garbage) and drops chunks with index `>= drop_from`, in one transaction.
    /// Does nothing for an inode that no longer exists (its objects become garbage).
    pub async fn set_chunks(
        &self,
        volume: &str,
        ino: u64,
        versions: &[(u64, String)],
        drop_from: Option<u64>,
    ) -> FsResult<()> {
        let mut tx = self.writer.begin().await?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM inodes WHERE volume = ? AND ino = ?")
                .bind(volume)
                .bind(ino as i64)
                .fetch_optional(&mut *tx)
                .await?;
        for (idx, version) in versions {
            if exists.is_some() {
                sqlx::query(
                    "INSERT INTO chunks (volume, ino, idx, version) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (volume, ino, idx) DO UPDATE SET version = excluded.version",
                )
                .bind(volume)
                .bind(ino as i64)
                .bind(*idx as i64)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO chunk_garbage (volume, ino, idx, version) VALUES (?, ?, ?, ?)",
                )
                .bind(volume)
                .bind(ino as i64)
                .bind(*idx as i64)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(first) = drop_from {
            sqlx::query("DELETE FROM chunks WHERE volume = ? AND ino = ? AND idx >= ?")
                .bind(volume)
                .bind(ino as i64)
                .bind(first as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn known<'a>(tables: &'a [Table], name: &str) -> FsResult<&'a Table> {
    tables
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| FsError::Corrupt(format!("journal names unknown table {name:?}")))
}

fn check_volume(table: &Table, row: &RowImage, volume: &str) -> FsResult<()> {
    match row.get(&table.volume_col) {
        Some(Value::Text(v)) if v == volume => Ok(()),
        _ => Err(FsError::Corrupt(format!(
            "journal row of table {} belongs to another volume",
            table.name
        ))),
    }
}

async fn upsert(tx: &mut Tx, table: &Table, row: &RowImage) -> FsResult<()> {
    let cols: Vec<String> = row
        .keys()
        .filter(|c| table.columns.contains(c))
        .cloned()
        .collect();
    let updates: Vec<String> = cols
        .iter()
        .filter(|c| !table.pk.contains(c))
        .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let sql = format!(
        "INSERT INTO \"{}\" ({}) VALUES ({}) ON CONFLICT ({}) {conflict}",
        table.name,
        quoted(&cols),
        vec!["?"; cols.len()].join(", "),
        quoted(&table.pk),
    );
    let mut query = sqlx::query(&sql);
    for col in &cols {
        query = bind_value(query, &row[col])?;
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

async fn delete(tx: &mut Tx, table: &Table, key: &[Value], volume: &str) -> FsResult<()> {
    if key.len() != table.pk.len() {
        return Err(FsError::Corrupt(format!(
            "journal key of table {} has {} columns, expected {}",
            table.name,
            key.len(),
            table.pk.len()
        )));
    }
    let cond: Vec<String> = table.pk.iter().map(|c| format!("\"{c}\" = ?")).collect();
    let sql = format!(
        "DELETE FROM \"{}\" WHERE {} AND \"{}\" = ?",
        table.name,
        cond.join(" AND "),
        table.volume_col
    );
    let mut query = sqlx::query(&sql);
    for value in key {
        query = bind_value(query, value)?;
    }
    query.bind(volume.to_string()).execute(&mut **tx).await?;
    Ok(())
}
