//! Extended attributes of inodes, in the `xattrs` table (deleted with their inode).
//!
//! Only names are checked here (length, size limits); which namespaces are allowed is
//! decided by the service. Values are opaque bytes.

use super::{inode_tx, now_ns, MetaStore};
use crate::error::{FsError, FsResult};

/// Longest attribute name (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest value (`XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 64 << 10;
/// Most bytes of names and values one inode may hold.
pub const XATTR_TOTAL_MAX: usize = 64 << 10;
/// `setxattr` flag: fail with EEXIST if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// `setxattr` flag: fail with ENODATA if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

impl MetaStore {
    /// Sets attribute `name` of `ino` to `value`, honouring `XATTR_CREATE`/`XATTR_REPLACE`.
    pub async fn set_xattr(
        &self,
        volume: &str,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::ValueTooLarge);
        }
        let mut tx = self.writer.begin().await?;
        inode_tx(&mut tx, volume, ino).await?;
        let existing: Option<(i64,)> = sqlx::query_as(
            "SELECT LENGTH(value) FROM xattrs WHERE volume = ? AND ino = ? AND name = ?",
        )
        .bind(volume)
        .bind(ino as i64)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if flags & XATTR_CREATE != 0 && existing.is_some() {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && existing.is_none() {
            return Err(FsError::NoAttr);
        }
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(LENGTH(name) + LENGTH(value)), 0) FROM xattrs \
             WHERE volume = ? AND ino = ? AND name != ?",
        )
        .bind(volume)
        .bind(ino as i64)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if total as usize + name.len() + value.len() > XATTR_TOTAL_MAX {
            return Err(FsError::NoSpace);
        }
        sqlx::query(
            "INSERT INTO xattrs (volume, ino, name, value) VALUES (?, ?, ?, ?) \
             ON CONFLICT (volume, ino, name) DO UPDATE SET value = excluded.value",
        )
        .bind(volume)
        .bind(ino as i64)
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        touch_ctime(&mut tx, volume, ino).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The value of attribute `name` of `ino` (ENODATA if unset).
    pub async fn get_xattr(&self, volume: &str, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT value FROM xattrs WHERE volume = ? AND ino = ? AND name = ?")
                .bind(volume)
                .bind(ino as i64)
                .bind(name)
                .fetch_optional(&self.reader)
                .await?;
        match row {
            Some((value,)) => Ok(value),
            None => {
                self.get_attr(volume, ino).await?;
                Err(FsError::NoAttr)
            }
        }
    }

    /// Names of the attributes of `ino`, sorted.
    pub async fn list_xattr(&self, volume: &str, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        self.get_attr(volume, ino).await?;
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT name FROM xattrs WHERE volume = ? AND ino = ? ORDER BY name")
                .bind(volume)
                .bind(ino as i64)
                .fetch_all(&self.reader)
                .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Removes attribute `name` of `ino` (ENODATA if unset).
    pub async fn remove_xattr(&self, volume: &str, ino: u64, name: &[u8]) -> FsResult<()> {
        let mut tx = self.writer.begin().await?;
        inode_tx(&mut tx, volume, ino).await?;
        let removed = sqlx::query("DELETE FROM xattrs WHERE volume = ? AND ino = ? AND name = ?")
            .bind(volume)
            .bind(ino as i64)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(FsError::NoAttr);
        }
        touch_ctime(&mut tx, volume, ino).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn touch_ctime(tx: &mut super::Tx, volume: &str, ino: u64) -> FsResult<()> {
    sqlx::query("UPDATE inodes SET ctime_ns = ? WHERE volume = ? AND ino = ?")
        .bind(now_ns())
        .bind(volume)
        .bind(ino as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
