//! Bodies of the link, xattr, paged-listing and lock calls of the `Volumes` service.
//! `service.rs` wraps each in [`VolumeService::run`] (validation, metrics, errno).

use berth_api::volume::{
    Attr, DirEntry, Entry, LinkRequest, LockKind, LockRequest, LockResponse, ReadDirPageRequest,
    ReadDirResponse, ReadLinkResponse, SetXattrRequest, SymlinkRequest, XattrNames, XattrRequest,
    XattrValue,
};

use super::locks::{Lock, Owner};
use super::VolumeService;
use crate::error::{FsError, FsResult};
use crate::meta::NewInode;
use crate::names::validate_name;

/// Largest page of a directory listing.
const MAX_PAGE: u32 = 16_384;

/// Only these xattr namespaces are stored. `security.*` (file capabilities, asked by
/// the kernel on every write) and `system.*` (ACLs) are refused and read as absent.
fn check_xattr_namespace(name: &[u8]) -> FsResult<()> {
    if name.starts_with(b"user.") || name.starts_with(b"trusted.") {
        return Ok(());
    }
    Err(FsError::NotSupported(
        "only user.* and trusted.* extended attributes are stored".to_string(),
    ))
}

fn lock_owner(r: &LockRequest) -> FsResult<Owner> {
    if r.mount_id.is_empty() || r.mount_id.len() > 128 {
        return Err(FsError::Invalid(
            "lock requests need a mount id of 1 to 128 bytes".to_string(),
        ));
    }
    Ok(Owner {
        mount: r.mount_id.clone(),
        owner: r.owner,
    })
}

fn check_range(r: &LockRequest) -> FsResult<()> {
    if r.start > r.end {
        return Err(FsError::Invalid(
            "lock range ends before it starts".to_string(),
        ));
    }
    Ok(())
}

impl VolumeService {
    pub(super) async fn symlink_op(&self, r: &SymlinkRequest) -> FsResult<Entry> {
        validate_name(&r.name)?;
        self.quota.new_inode(&self.meta, &r.volume).await?;
        let owner = NewInode {
            mode: 0o777,
            uid: r.uid,
            gid: r.gid,
        };
        let attr = self
            .meta
            .symlink(&r.volume, r.parent, &r.name, &r.target, owner)
            .await?;
        Ok(Entry {
            attr: Some(attr),
            ..Entry::default()
        })
    }

    pub(super) async fn read_link_op(&self, volume: &str, ino: u64) -> FsResult<ReadLinkResponse> {
        let target = self.meta.read_link(volume, ino).await?;
        Ok(ReadLinkResponse { target })
    }

    pub(super) async fn link_op(&self, r: &LinkRequest) -> FsResult<Entry> {
        validate_name(&r.new_name)?;
        let attr: Attr = self
            .meta
            .link(&r.volume, r.ino, r.new_parent, &r.new_name)
            .await?;
        Ok(Entry {
            attr: Some(attr),
            ..Entry::default()
        })
    }

    pub(super) async fn set_xattr_op(&self, r: &SetXattrRequest) -> FsResult<()> {
        check_xattr_namespace(&r.name)?;
        self.meta
            .set_xattr(&r.volume, r.ino, &r.name, &r.value, r.flags)
            .await
    }

    pub(super) async fn get_xattr_op(&self, r: &XattrRequest) -> FsResult<XattrValue> {
        if check_xattr_namespace(&r.name).is_err() {
            self.meta.get_attr(&r.volume, r.ino).await?;
            return Err(FsError::NoAttr);
        }
        let value = self.meta.get_xattr(&r.volume, r.ino, &r.name).await?;
        Ok(XattrValue { value })
    }

    pub(super) async fn list_xattr_op(&self, volume: &str, ino: u64) -> FsResult<XattrNames> {
        let names = self.meta.list_xattr(volume, ino).await?;
        Ok(XattrNames { names })
    }

    pub(super) async fn remove_xattr_op(&self, r: &XattrRequest) -> FsResult<()> {
        if check_xattr_namespace(&r.name).is_err() {
            self.meta.get_attr(&r.volume, r.ino).await?;
            return Err(FsError::NoAttr);
        }
        self.meta.remove_xattr(&r.volume, r.ino, &r.name).await
    }

    pub(super) async fn read_dir_page_op(
        &self,
        r: &ReadDirPageRequest,
    ) -> FsResult<ReadDirResponse> {
        let limit = r.limit.clamp(1, MAX_PAGE);
        let entries = self
            .meta
            .read_dir_page(&r.volume, r.ino, &r.after, limit)
            .await?
            .into_iter()
            .map(|(name, attr)| DirEntry {
                name,
                attr: Some(attr),
            })
            .collect();
        Ok(ReadDirResponse { entries })
    }

    pub(super) async fn get_lock_op(&self, r: &LockRequest) -> FsResult<LockResponse> {
        let owner = lock_owner(r)?;
        check_range(r)?;
        self.meta.get_attr(&r.volume, r.ino).await?;
        let want = Lock {
            owner,
            start: r.start,
            end: r.end,
            write: r.kind() == LockKind::Write,
            pid: r.pid,
        };
        Ok(match self.locks.conflict(&r.volume, r.ino, &want) {
            Some(l) => LockResponse {
                granted: false,
                kind: if l.write {
                    LockKind::Write
                } else {
                    LockKind::Read
                } as i32,
                start: l.start,
                end: l.end,
                pid: l.pid,
            },
            None => LockResponse {
                granted: true,
                kind: LockKind::Unlock as i32,
                ..Default::default()
            },
        })
    }

    pub(super) async fn set_lock_op(&self, r: &LockRequest) -> FsResult<LockResponse> {
        let owner = lock_owner(r)?;
        check_range(r)?;
        self.meta.get_attr(&r.volume, r.ino).await?;
        match r.kind() {
            LockKind::Unlock => self.locks.unlock(&r.volume, r.ino, &owner, r.start, r.end),
            kind => self.locks.lock(
                &r.volume,
                r.ino,
                Lock {
                    owner,
                    start: r.start,
                    end: r.end,
                    write: kind == LockKind::Write,
                    pid: r.pid,
                },
            )?,
        }
        Ok(LockResponse {
            granted: true,
            kind: r.kind,
            start: r.start,
            end: r.end,
            pid: r.pid,
        })
    }

    pub(super) fn release_locks_op(&self, r: &LockRequest) -> FsResult<()> {
        let owner = lock_owner(r)?;
        self.locks.release(&r.volume, r.ino, &owner);
        Ok(())
    }

    /// Renews a mount's lease (no volume involved).
    pub(super) fn keep_alive_op(&self, mount_id: &str) {
        self.locks.keep_alive(mount_id);
    }
}
