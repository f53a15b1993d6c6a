//! Rename, including over an existing entry and `RENAME_NOREPLACE` / `RENAME_EXCHANGE`,
//! as one SQLite transaction: other clients see the old or the new tree, never both.

use super::{
    delete_dentry, delete_inode, dir_tx, drop_link, has_children, lookup_tx, now_ns, parent_of,
    touch_dir, InodeRow, MetaStore, Tx, ROOT_INO,
};
use crate::error::{FsError, FsResult};

/// `renameat2` flag: fail with EEXIST if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// `renameat2` flag: atomically swap source and target.
pub const RENAME_EXCHANGE: u32 = 2;

/// One side of a rename.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub parent: u64,
    pub name: &'a [u8],
}

impl MetaStore {
    /// Renames `from` to `to`. Returns the inode number of a file whose last link was
    /// replaced (its data must then be deleted).
    pub async fn rename(
        &self,
        volume: &str,
        from: Place<'_>,
        to: Place<'_>,
        flags: u32,
    ) -> FsResult<Option<u64>> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Invalid(format!(
                "unsupported rename flags {flags:#x}"
            )));
        }
        let mut tx = self.writer.begin().await?;
        dir_tx(&mut tx, volume, from.parent).await?;
        dir_tx(&mut tx, volume, to.parent).await?;
        let src = lookup_tx(&mut tx, volume, from.parent, from.name)
            .await?
            .ok_or(FsError::NotFound)?;
        let dst = lookup_tx(&mut tx, volume, to.parent, to.name).await?;

        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(FsError::NotFound)?;
            exchange(&mut tx, volume, from, &src, to, &dst).await?;
            tx.commit().await?;
            return Ok(None);
        }
        if let Some(dst) = &dst {
            if dst.ino == src.ino {
                // Both names are links to the same inode: POSIX says do nothing.
                return Ok(None);
            }
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
        }
        if src.is_dir() {
            ensure_not_into_itself(&mut tx, volume, src.ino as u64, to.parent).await?;
        }

        let mut gone = None;
        if let Some(dst) = dst {
            match (src.is_dir(), dst.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    if has_children(&mut tx, volume, dst.ino as u64).await? {
                        return Err(FsError::NotEmpty);
                    }
                    delete_dentry(&mut tx, volume, to.parent, to.name).await?;
                    delete_inode(&mut tx, volume, dst.ino as u64).await?;
                    touch_dir(&mut tx, volume, to.parent, -1).await?;
                }
                (false, false) => {
                    delete_dentry(&mut tx, volume, to.parent, to.name).await?;
                    if drop_link(&mut tx, volume, &dst).await? {
                        gone = Some(dst.ino as u64);
                    }
                }
            }
        }

        move_dentry(&mut tx, volume, from, to).await?;
        let subdir = i64::from(src.is_dir());
        touch_dir(&mut tx, volume, from.parent, -subdir).await?;
        touch_dir(&mut tx, volume, to.parent, subdir).await?;
        touch_ctime(&mut tx, volume, src.ino).await?;
        tx.commit().await?;
        Ok(gone)
    }
}

/// Fails with EINVAL if directory `dir` is `target` or one of its ancestors.
async fn ensure_not_into_itself(tx: &mut Tx, volume: &str, dir: u64, target: u64) -> FsResult<()> {
    let mut cur = target;
    loop {
        if cur == dir {
            return Err(FsError::Invalid(
                "cannot move a directory into itself".to_string(),
            ));
        }
        if cur == ROOT_INO {
            return Ok(());
        }
        match parent_of(tx, volume, cur).await? {
            Some(parent) => cur = parent,
            None => return Ok(()),
        }
    }
}

async fn move_dentry(tx: &mut Tx, volume: &str, from: Place<'_>, to: Place<'_>) -> FsResult<()> {
    sqlx::query(
        "UPDATE dentries SET parent = ?, name = ? WHERE volume = ? AND parent = ? AND name = ?",
    )
    .bind(to.parent as i64)
    .bind(to.name)
    .bind(volume)
    .bind(from.parent as i64)
    .bind(from.name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn set_dentry_ino(tx: &mut Tx, volume: &str, at: Place<'_>, ino: i64) -> FsResult<()> {
    sqlx::query("UPDATE dentries SET ino = ? WHERE volume = ? AND parent = ? AND name = ?")
        .bind(ino)
        .bind(volume)
        .bind(at.parent as i64)
        .bind(at.name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn touch_ctime(tx: &mut Tx, volume: &str, ino: i64) -> FsResult<()> {
    sqlx::query("UPDATE inodes SET ctime_ns = ? WHERE volume = ? AND ino = ?")
        .bind(now_ns())
        .bind(volume)
        .bind(ino)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `RENAME_EXCHANGE`: swaps the inodes the two entries point at.
async fn exchange(
    tx: &mut Tx,
    volume: &str,
    from: Place<'_>,
    src: &InodeRow,
    to: Place<'_>,
    dst: &InodeRow,
) -> FsResult<()> {
    if src.ino == dst.ino {
        return Ok(());
    }
    if src.is_dir() {
        ensure_not_into_itself(tx, volume, src.ino as u64, to.parent).await?;
    }
    if dst.is_dir() {
        ensure_not_into_itself(tx, volume, dst.ino as u64, from.parent).await?;
    }
    set_dentry_ino(tx, volume, from, dst.ino).await?;
    set_dentry_ino(tx, volume, to, src.ino).await?;
    // A directory moving to another parent moves its ".." link with it.
    let delta = i64::from(src.is_dir()) - i64::from(dst.is_dir());
    touch_dir(tx, volume, from.parent, -delta).await?;
    touch_dir(tx, volume, to.parent, delta).await?;
    touch_ctime(tx, volume, src.ino).await?;
    touch_ctime(tx, volume, dst.ino).await?;
    Ok(())
}
