//! Volume metadata in SQLite: inodes and directory entries.
//!
//! One database (`<state-dir>/meta.db`, WAL) holds every volume. Inode numbers are per
//! volume and inode 1 is each volume's root, created on first use. Every mutation runs
//! in one transaction on a single writer connection, so a rename over an existing file
//! is atomic and concurrent clients never see half an operation; reads go through a
//! separate pool of read-only connections. This module never touches file data: when
//! the last link of a file goes away it returns the inode number and the caller deletes
//! the chunks after the transaction committed.

pub mod fast;
pub mod journal;
pub mod links;
pub mod rename;
pub mod xattr;

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::volume::{Attr, FileKind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::error::{FsError, FsResult};

/// Inode number of every volume's root directory.
pub const ROOT_INO: u64 = 1;

const INODE_COLS: &str = "ino, kind, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns";

/// One inode as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct InodeRow {
    ino: i64,
    kind: i64,
    mode: i64,
    uid: i64,
    gid: i64,
    size: i64,
    nlink: i64,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl InodeRow {
    fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory as i64
    }

    fn to_attr(&self) -> Attr {
        Attr {
            ino: self.ino as u64,
            kind: self.kind as i32,
            mode: (self.mode as u32) & 0o7777,
            nlink: self.nlink as u32,
            uid: self.uid as u32,
            gid: self.gid as u32,
            size: self.size as u64,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DirRow {
    name: Vec<u8>,
    #[sqlx(flatten)]
    inode: InodeRow,
}

/// Attribute changes of a `SetAttr` call; `None` leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// Owner and permission bits of a new inode.
#[derive(Debug, Clone, Copy)]
pub struct NewInode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The SQLite metadata store of all volumes.
#[derive(Debug)]
pub struct MetaStore {
    writer: SqlitePool,
    reader: SqlitePool,
    fast: fast::FastReader,
    known_volumes: Mutex<HashSet<String>>,
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl MetaStore {
    /// Opens (creating and migrating if needed) `<state_dir>/meta.db`.
    pub async fn open(state_dir: &Path) -> FsResult<Self> {
        let path = state_dir.join("meta.db");
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a crash of the process (the OS has the pages);
            // only a power loss can lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        journal::install(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            reader,
            fast: fast::FastReader::new(&path),
            known_volumes: Mutex::new(HashSet::new()),
        })
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Creates the volume (and its root directory, mode 0755 owned by root) unless it
    /// exists; true when this call created it. Cheap after the first call for a volume.
    pub async fn ensure_volume(&self, volume: &str) -> FsResult<bool> {
        if self
            .known_volumes
            .lock()
            .expect("volume set lock poisoned")
            .contains(volume)
        {
            return Ok(false);
        }
        let now = now_ns();
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO volumes (name, next_ino, created_ns) VALUES (?, ?, ?)",
        )
        .bind(volume)
        .bind((ROOT_INO + 1) as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            sqlx::query(
                "INSERT INTO inodes (volume, ino, kind, mode, uid, gid, size, nlink, atime_ns, \
                 mtime_ns, ctime_ns) VALUES (?, ?, ?, ?, 0, 0, 0, 2, ?, ?, ?)",
            )
            .bind(volume)
            .bind(ROOT_INO as i64)
            .bind(FileKind::Directory as i64)
            .bind(0o755_i64)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tracing::info!(volume, "created volume");
        }
        tx.commit().await?;
        self.known_volumes
            .lock()
            .expect("volume set lock poisoned")
            .insert(volume.to_string());
        Ok(inserted == 1)
    }

    /// Attributes of an inode.
    pub async fn get_attr(&self, volume: &str, ino: u64) -> FsResult<Attr> {
        self.fast.get_attr(volume, ino)?.ok_or(FsError::NotFound)
    }

    /// Attributes of the entry `name` in directory `parent`.
    pub async fn lookup(&self, volume: &str, parent: u64, name: &[u8]) -> FsResult<Attr> {
        match self.fast.lookup(volume, parent, name)? {
            Some(attr) => Ok(attr),
            None => {
                // Tell "no such entry" from "parent is not a directory".
                let parent = self.get_attr(volume, parent).await?;
                if parent.kind != FileKind::Directory as i32 {
                    return Err(FsError::NotDir);
                }
                Err(FsError::NotFound)
            }
        }
    }

    /// Entries of a directory (without `.` and `..`), sorted by name.
    pub async fn read_dir(&self, volume: &str, ino: u64) -> FsResult<Vec<(Vec<u8>, Attr)>> {
        let dir = self.get_attr(volume, ino).await?;
        if dir.kind != FileKind::Directory as i32 {
            return Err(FsError::NotDir);
        }
        let rows: Vec<DirRow> = sqlx::query_as(
            "SELECT d.name, i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.nlink, i.atime_ns, \
             i.mtime_ns, i.ctime_ns FROM dentries d JOIN inodes i \
             ON i.volume = d.volume AND i.ino = d.ino \
             WHERE d.volume = ? AND d.parent = ? ORDER BY d.name",
        )
        .bind(volume)
        .bind(ino as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.name, r.inode.to_attr()))
            .collect())
    }

    /// Creates a regular file. If `name` exists and `exclusive` is false the existing
    /// file is returned instead (`created` is then false).
    pub async fn create_file(
        &self,
        volume: &str,
        parent: u64,
        name: &[u8],
        new: NewInode,
        exclusive: bool,
    ) -> FsResult<(Attr, bool)> {
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, parent).await?;
        if let Some(existing) = lookup_tx(&mut tx, volume, parent, name).await? {
            if exclusive {
                return Err(FsError::Exists);
            }
            if existing.is_dir() {
                return Err(FsError::IsDir);
            }
            return Ok((existing.to_attr(), false));
        }
        let row = insert_inode(&mut tx, volume, FileKind::File, new, 1).await?;
        insert_dentry(&mut tx, volume, parent, name, row.ino).await?;
        touch_dir(&mut tx, volume, parent, 0).await?;
        tx.commit().await?;
        Ok((row.to_attr(), true))
    }

    /// Creates a directory.
    pub async fn mkdir(
        &self,
        volume: &str,
        parent: u64,
        name: &[u8],
        new: NewInode,
    ) -> FsResult<Attr> {
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, parent).await?;
        if lookup_tx(&mut tx, volume, parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let row = insert_inode(&mut tx, volume, FileKind::Directory, new, 2).await?;
        insert_dentry(&mut tx, volume, parent, name, row.ino).await?;
        touch_dir(&mut tx, volume, parent, 1).await?;
        tx.commit().await?;
        Ok(row.to_attr())
    }

    /// Applies attribute changes; returns the new attributes and the size before.
    pub async fn set_attr(
        &self,
        volume: &str,
        ino: u64,
        changes: &AttrChanges,
    ) -> FsResult<(Attr, u64)> {
        let mut tx = self.writer.begin().await?;
        let mut row = inode_tx(&mut tx, volume, ino).await?;
        let old_size = row.size as u64;
        let now = now_ns();
        if let Some(size) = changes.size {
            if row.is_dir() {
                return Err(FsError::IsDir);
            }
            if size > i64::MAX as u64 {
                return Err(FsError::TooLarge {
                    max: i64::MAX as u64,
                });
            }
            row.size = size as i64;
            row.mtime_ns = now;
        }
        if let Some(mode) = changes.mode {
            row.mode = i64::from(mode & 0o7777);
        }
        if let Some(uid) = changes.uid {
            row.uid = i64::from(uid);
        }
        if let Some(gid) = changes.gid {
            row.gid = i64::from(gid);
        }
        if let Some(atime) = changes.atime_ns {
            row.atime_ns = atime;
        }
        if let Some(mtime) = changes.mtime_ns {
            row.mtime_ns = mtime;
        }
        row.ctime_ns = now;
        sqlx::query(
            "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, \
             mtime_ns = ?, ctime_ns = ? WHERE volume = ? AND ino = ?",
        )
        .bind(row.mode)
        .bind(row.uid)
        .bind(row.gid)
        .bind(row.size)
        .bind(row.atime_ns)
        .bind(row.mtime_ns)
        .bind(row.ctime_ns)
        .bind(volume)
        .bind(ino as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((row.to_attr(), old_size))
    }

    /// Records a write that ended at byte `end`: grows the size if needed and sets
    /// mtime/ctime to now.
    pub async fn note_write(&self, volume: &str, ino: u64, end: u64) -> FsResult<Attr> {
        let now = now_ns();
        let row: Option<InodeRow> = sqlx::query_as(&format!(
            "UPDATE inodes SET size = MAX(size, ?), mtime_ns = ?, ctime_ns = ? \
             WHERE volume = ? AND ino = ? RETURNING {INODE_COLS}"
        ))
        .bind(end as i64)
        .bind(now)
        .bind(now)
        .bind(volume)
        .bind(ino as i64)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| r.to_attr()).ok_or(FsError::NotFound)
    }

    /// Removes a non-directory entry. Returns the inode number if that was its last
    /// link (its data must then be deleted).
    pub async fn unlink(&self, volume: &str, parent: u64, name: &[u8]) -> FsResult<Option<u64>> {
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, parent).await?;
        let row = lookup_tx(&mut tx, volume, parent, name)
            .await?
            .ok_or(FsError::NotFound)?;
        if row.is_dir() {
            return Err(FsError::IsDir);
        }
        delete_dentry(&mut tx, volume, parent, name).await?;
        touch_dir(&mut tx, volume, parent, 0).await?;
        let gone = drop_link(&mut tx, volume, &row).await?;
        tx.commit().await?;
        Ok(gone.then_some(row.ino as u64))
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, volume: &str, parent: u64, name: &[u8]) -> FsResult<()> {
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, parent).await?;
        let row = lookup_tx(&mut tx, volume, parent, name)
            .await?
            .ok_or(FsError::NotFound)?;
        if !row.is_dir() {
            return Err(FsError::NotDir);
        }
        if has_children(&mut tx, volume, row.ino as u64).await? {
            return Err(FsError::NotEmpty);
        }
        delete_dentry(&mut tx, volume, parent, name).await?;
        delete_inode(&mut tx, volume, row.ino as u64).await?;
        touch_dir(&mut tx, volume, parent, -1).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Number of inodes and total bytes of a volume.
    pub async fn usage(&self, volume: &str) -> FsResult<(u64, u64)> {
        let (files, bytes): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM inodes WHERE volume = ?")
                .bind(volume)
                .fetch_one(&self.reader)
                .await?;
        Ok((files as u64, bytes as u64))
    }
}

type Tx = Transaction<'static, Sqlite>;

async fn inode_tx(tx: &mut Tx, volume: &str, ino: u64) -> FsResult<InodeRow> {
    let row: Option<InodeRow> = sqlx::query_as(&format!(
        "SELECT {INODE_COLS} FROM inodes WHERE volume = ? AND ino = ?"
    ))
    .bind(volume)
    .bind(ino as i64)
    .fetch_optional(&mut **tx)
    .await?;
    row.ok_or(FsError::NotFound)
}

/// The inode `ino`, which must be a directory.
async fn dir_tx(tx: &mut Tx, volume: &str, ino: u64) -> FsResult<InodeRow> {
    let row = inode_tx(tx, volume, ino).await?;
    if !row.is_dir() {
        return Err(FsError::NotDir);
    }
    Ok(row)
}

async fn lookup_tx(
    tx: &mut Tx,
    volume: &str,
    parent: u64,
    name: &[u8],
) -> FsResult<Option<InodeRow>> {
    Ok(sqlx::query_as(
        "SELECT i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.nlink, i.atime_ns, \
         i.mtime_ns, i.ctime_ns FROM dentries d JOIN inodes i \
         ON i.volume = d.volume AND i.ino = d.ino \
         WHERE d.volume = ? AND d.parent = ? AND d.name = ?",
    )
    .bind(volume)
    .bind(parent as i64)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?)
}

async fn insert_inode(
    tx: &mut Tx,
    volume: &str,
    kind: FileKind,
    new: NewInode,
    nlink: i64,
) -> FsResult<InodeRow> {
    let (ino,): (i64,) = sqlx::query_as(
        "UPDATE volumes SET next_ino = next_ino + 1 WHERE name = ? RETURNING next_ino - 1",
    )
    .bind(volume)
    .fetch_one(&mut **tx)
    .await?;
    let now = now_ns();
    let row = InodeRow {
        ino,
        kind: kind as i64,
        mode: i64::from(new.mode & 0o7777),
        uid: i64::from(new.uid),
        gid: i64::from(new.gid),
        size: 0,
        nlink,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
    };
    sqlx::query(
        "INSERT INTO inodes (volume, ino, kind, mode, uid, gid, size, nlink, atime_ns, \
         mtime_ns, ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(volume)
    .bind(row.ino)
    .bind(row.kind)
    .bind(row.mode)
    .bind(row.uid)
    .bind(row.gid)
    .bind(row.size)
    .bind(row.nlink)
    .bind(row.atime_ns)
    .bind(row.mtime_ns)
    .bind(row.ctime_ns)
    .execute(&mut **tx)
    .await?;
    Ok(row)
}

async fn insert_dentry(
    tx: &mut Tx,
    volume: &str,
    parent: u64,
    name: &[u8],
    ino: i64,
) -> FsResult<()> {
    sqlx::query("INSERT INTO dentries (volume, parent, name, ino) VALUES (?, ?, ?, ?)")
        .bind(volume)
        .bind(parent as i64)
        .bind(name)
        .bind(ino)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn delete_dentry(tx: &mut Tx, volume: &str, parent: u64, name: &[u8]) -> FsResult<()> {
    sqlx::query("DELETE FROM dentries WHERE volume = ? AND parent = ? AND name = ?")
        .bind(volume)
        .bind(parent as i64)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn delete_inode(tx: &mut Tx, volume: &str, ino: u64) -> FsResult<()> {
    sqlx::query("DELETE FROM inodes WHERE volume = ? AND ino = ?")
        .bind(volume)
        .bind(ino as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sets a directory's mtime/ctime to now and adjusts its link count (subdirectories).
async fn touch_dir(tx: &mut Tx, volume: &str, ino: u64, nlink_delta: i64) -> FsResult<()> {
    let now = now_ns();
    sqlx::query(
        "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? \
         WHERE volume = ? AND ino = ?",
    )
    .bind(now)
    .bind(now)
    .bind(nlink_delta)
    .bind(volume)
    .bind(ino as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Drops one link of a non-directory; deletes the inode when none remain. Returns
/// whether the inode is gone.
async fn drop_link(tx: &mut Tx, volume: &str, row: &InodeRow) -> FsResult<bool> {
    if row.nlink <= 1 {
        delete_inode(tx, volume, row.ino as u64).await?;
        return Ok(true);
    }
    sqlx::query("UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? WHERE volume = ? AND ino = ?")
        .bind(now_ns())
        .bind(volume)
        .bind(row.ino)
        .execute(&mut **tx)
        .await?;
    Ok(false)
}

async fn has_children(tx: &mut Tx, volume: &str, ino: u64) -> FsResult<bool> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM dentries WHERE volume = ? AND parent = ? LIMIT 1")
            .bind(volume)
            .bind(ino as i64)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.is_some())
}

/// The directory holding `ino` (for directories, which have exactly one entry).
async fn parent_of(tx: &mut Tx, volume: &str, ino: u64) -> FsResult<Option<u64>> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT parent FROM dentries WHERE volume = ? AND ino = ? LIMIT 1")
            .bind(volume)
            .bind(ino as i64)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map(|(p,)| p as u64))
}

#[cfg(test)]
mod tests;
