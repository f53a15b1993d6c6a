//! Point reads of the metadata (one inode's attributes, one directory entry) on plain
//! SQLite connections, answered on the calling task.
//!
//! sqlx runs every statement on a worker thread of the connection and hands rows back
//! through channels: a lookup is a few microseconds of SQLite behind two thread
//! hand-offs, which cost ~100 µs on a busy 2-core server, and lookups are most of what
//! a mount asks (every open revalidates its name). These reads are single-row, indexed
//! queries on a WAL read snapshot, so they run inline, like a cache hit, on a small pool
//! of read-only rusqlite connections with cached statements. Everything that writes,
//! and listings of any length, stay on sqlx (one writer, so transactions stay atomic).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use berth_api::volume::Attr;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::InodeRow;
use crate::error::FsResult;

/// Connections kept for reuse; more are opened when readers run concurrently.
const POOL: usize = 8;

/// Read-only connections to `meta.db` for point reads.
#[derive(Debug)]
pub struct FastReader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InodeRow> {
    Ok(InodeRow {
        ino: r.get(0)?,
        kind: r.get(1)?,
        mode: r.get(2)?,
        uid: r.get(3)?,
        gid: r.get(4)?,
        size: r.get(5)?,
        nlink: r.get(6)?,
        atime_ns: r.get(7)?,
        mtime_ns: r.get(8)?,
        ctime_ns: r.get(9)?,
    })
}

impl FastReader {
    /// Readers of the database at `path` (which the writer already created).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            pool: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> FsResult<T> {
        let pooled = self.pool.lock().expect("reader pool lock poisoned").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&conn);
        let mut pool = self.pool.lock().expect("reader pool lock poisoned");
        if pool.len() < POOL {
            pool.push(conn);
        }
        Ok(result?)
    }

    /// Attributes of an inode, if it exists.
    pub fn get_attr(&self, volume: &str, ino: u64) -> FsResult<Option<Attr>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT ino, kind, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns \
                 FROM inodes WHERE volume = ?1 AND ino = ?2",
            )?
            .query_row((volume, ino as i64), row)
            .optional()
        })
        .map(|r| r.map(|r| r.to_attr()))
    }

    /// Attributes of the entry `name` in directory `parent`, if there is one.
    pub fn lookup(&self, volume: &str, parent: u64, name: &[u8]) -> FsResult<Option<Attr>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.nlink, i.atime_ns, \
                 i.mtime_ns, i.ctime_ns FROM dentries d JOIN inodes i \
                 ON i.volume = d.volume AND i.ino = d.ino \
                 WHERE d.volume = ?1 AND d.parent = ?2 AND d.name = ?3",
            )?
            .query_row((volume, parent as i64, name), row)
            .optional()
        })
        .map(|r| r.map(|r| r.to_attr()))
    }
}
