//! Symbolic links, hard links and paged directory listings.
//!
//! A symlink is an inode of kind `SYMLINK` whose target lives in the `symlinks` table;
//! the server stores the target as given and never resolves it (the kernel of each
//! worker does, inside its own mount namespace). A hard link is one more dentry for an
//! existing non-directory inode, counted in `nlink`.

use berth_api::volume::{Attr, FileKind};

use super::{
    dir_tx, inode_tx, insert_dentry, insert_inode, lookup_tx, now_ns, touch_dir, DirRow, MetaStore,
    NewInode,
};
use crate::error::{FsError, FsResult};

/// Longest symlink target in bytes (`PATH_MAX` - 1).
pub const SYMLINK_MAX: usize = 4095;

impl MetaStore {
    /// Creates a symlink `name` in `parent` pointing at `target`.
    pub async fn symlink(
        &self,
        volume: &str,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: NewInode,
    ) -> FsResult<Attr> {
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::Invalid(
                "symlink target must be non-empty and contain no NUL".to_string(),
            ));
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, parent).await?;
        if lookup_tx(&mut tx, volume, parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        let new = NewInode {
            mode: 0o777,
            ..owner
        };
        let mut row = insert_inode(&mut tx, volume, FileKind::Symlink, new, 1).await?;
        row.size = target.len() as i64;
        sqlx::query("UPDATE inodes SET size = ? WHERE volume = ? AND ino = ?")
            .bind(row.size)
            .bind(volume)
            .bind(row.ino)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO symlinks (volume, ino, target) VALUES (?, ?, ?)")
            .bind(volume)
            .bind(row.ino)
            .bind(target)
            .execute(&mut *tx)
            .await?;
        insert_dentry(&mut tx, volume, parent, name, row.ino).await?;
        touch_dir(&mut tx, volume, parent, 0).await?;
        tx.commit().await?;
        Ok(row.to_attr())
    }

    /// The target of symlink `ino` (EINVAL if it is not a symlink).
    pub async fn read_link(&self, volume: &str, ino: u64) -> FsResult<Vec<u8>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT target FROM symlinks WHERE volume = ? AND ino = ?")
                .bind(volume)
                .bind(ino as i64)
                .fetch_optional(&self.reader)
                .await?;
        match row {
            Some((target,)) => Ok(target),
            None => {
                self.get_attr(volume, ino).await?;
                Err(FsError::Invalid("not a symlink".to_string()))
            }
        }
    }

    /// Adds the entry `name` in `parent` for the existing inode `ino` (not a directory).
    pub async fn link(&self, volume: &str, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let mut tx = self.writer.begin().await?;
        let mut row = inode_tx(&mut tx, volume, ino).await?;
        if row.is_dir() {
            return Err(FsError::NotPermitted(
                "hard links to directories are not allowed".to_string(),
            ));
        }
        dir_tx(&mut tx, volume, parent).await?;
        if lookup_tx(&mut tx, volume, parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        insert_dentry(&mut tx, volume, parent, name, row.ino).await?;
        row.nlink += 1;
        row.ctime_ns = now_ns();
        sqlx::query("UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE volume = ? AND ino = ?")
            .bind(row.nlink)
            .bind(row.ctime_ns)
            .bind(volume)
            .bind(row.ino)
            .execute(&mut *tx)
            .await?;
        touch_dir(&mut tx, volume, parent, 0).await?;
        tx.commit().await?;
        Ok(row.to_attr())
    }

    /// Up to `limit` entries of directory `ino` whose names sort after `after`.
    pub async fn read_dir_page(
        &self,
        volume: &str,
        ino: u64,
        after: &[u8],
        limit: u32,
    ) -> FsResult<Vec<(Vec<u8>, Attr)>> {
        let dir = self.get_attr(volume, ino).await?;
        if dir.kind != FileKind::Directory as i32 {
            return Err(FsError::NotDir);
        }
        let rows: Vec<DirRow> = sqlx::query_as(
            "SELECT d.name, i.ino, i.kind, i.mode, i.uid, i.gid, i.size, i.nlink, i.atime_ns, \
             i.mtime_ns, i.ctime_ns FROM dentries d JOIN inodes i \
             ON i.volume = d.volume AND i.ino = d.ino \
             WHERE d.volume = ? AND d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?",
        )
        .bind(volume)
        .bind(ino as i64)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.name, r.inode.to_attr()))
            .collect())
    }

    /// Bytes (sum of file sizes) and inodes used by a volume, for quota checks.
    pub async fn quota_usage(&self, volume: &str) -> FsResult<(u64, u64)> {
        let (files, bytes) = self.usage(volume).await?;
        Ok((bytes, files))
    }
}
