//! Bodies of the FUSE operations added for POSIX coverage: symlinks, hard links,
//! extended attributes, paged listings and `fcntl` locks shared across mounts.
//! `fuse.rs` keeps the `Filesystem` trait impl thin and calls these.
//!
//! Locks: each mount has a random id; a lock owner on the server is (mount id, kernel
//! lock owner). `F_SETLKW` polls the server with backoff while the handle stays open.
//! The client remembers which (inode, owner) pairs hold locks, and through which open
//! files, so that `flush` (every `close`: POSIX locks of the closing process) and
//! `release` (last close of an open file: its `flock` and OFD locks) release them with
//! one call each, only when needed.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use berth_api::volume::{
    Attr, LinkRequest, LockKind, LockRequest, ReadDirPageRequest, SetXattrRequest, SymlinkRequest,
    XattrRequest,
};
use bytes::Bytes;
use fuse3::raw::prelude::*;
use fuse3::Result as FuseResult;

use super::{attr_of, errno, Listed, VolumeFs};

/// The locks this mount took: (inode, kernel lock owner) -> the open files (fh) they
/// were taken through.
#[derive(Debug, Default)]
pub(super) struct Locked {
    /// Ordered by inode first, so an open can ask about one inode without a scan.
    owners: BTreeMap<(u64, u64), HashSet<u64>>,
}

impl Locked {
    fn insert(&mut self, ino: u64, owner: u64, fh: u64) {
        self.owners.entry((ino, owner)).or_default().insert(fh);
    }

    /// Whether any owner holds (or held, until its close) a lock on `ino` through
    /// this mount.
    pub(super) fn holds(&self, ino: u64) -> bool {
        self.owners
            .range((ino, 0)..=(ino, u64::MAX))
            .next()
            .is_some()
    }

    /// Forgets `owner`'s locks on `ino`; whether there were any.
    fn remove(&mut self, ino: u64, owner: u64) -> bool {
        self.owners.remove(&(ino, owner)).is_some()
    }

    /// Forgets every owner that locked through open file `fh` and returns them. At the
    /// last close of an open file those are its OFD (and `flock`) locks: a process's
    /// POSIX locks taken through it went already with that process's `flush`.
    fn take_handle(&mut self, fh: u64) -> Vec<(u64, u64)> {
        let taken: Vec<(u64, u64)> = self
            .owners
            .iter()
            .filter(|(_, fhs)| fhs.contains(&fh))
            .map(|(key, _)| *key)
            .collect();
        for key in &taken {
            self.owners.remove(key);
        }
        taken
    }
}

/// Entries fetched per `ReadDirPage` call.
const PAGE: u32 = 4096;

fn lock_kind(r#type: u32) -> FuseResult<LockKind> {
    match r#type as i32 {
        libc::F_RDLCK => Ok(LockKind::Read),
        libc::F_WRLCK => Ok(LockKind::Write),
        libc::F_UNLCK => Ok(LockKind::Unlock),
        _ => Err(errno(libc::EINVAL)),
    }
}

fn xattr_reply(data: Vec<u8>, size: u32) -> FuseResult<ReplyXAttr> {
    if size == 0 {
        return Ok(ReplyXAttr::Size(data.len() as u32));
    }
    if data.len() > size as usize {
        return Err(errno(libc::ERANGE));
    }
    Ok(ReplyXAttr::Data(Bytes::from(data)))
}

impl VolumeFs {
    pub(super) async fn do_symlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> FuseResult<Attr> {
        let request = SymlinkRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
            uid: req.uid,
            gid: req.gid,
        };
        let reply = self
            .client
            .call("symlink", |mut c| {
                let request = request.clone();
                async move { c.symlink(request).await }
            })
            .await
            .map_err(errno)?;
        attr_of(reply.value.attr)
    }

    pub(super) async fn do_readlink(&self, ino: u64) -> FuseResult<Bytes> {
        let req = self.inode_req(ino);
        let reply = self
            .client
            .unary(
                "readlink",
                req,
                |mut c, r| async move { c.read_link(r).await },
            )
            .await
            .map_err(errno)?;
        Ok(Bytes::from(reply.value.target))
    }

    pub(super) async fn do_link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FuseResult<Attr> {
        let req = LinkRequest {
            volume: self.volume.clone(),
            ino,
            new_parent,
            new_name: new_name.as_bytes().to_vec(),
        };
        let reply = self
            .client
            .unary("link", req, |mut c, r| async move { c.link(r).await })
            .await
            .map_err(errno)?;
        attr_of(reply.value.attr)
    }

    pub(super) async fn do_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: u32,
    ) -> FuseResult<()> {
        let req = SetXattrRequest {
            volume: self.volume.clone(),
            ino,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags: flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) as u32,
        };
        self.client
            .unary(
                "setxattr",
                req,
                |mut c, r| async move { c.set_xattr(r).await },
            )
            .await
            .map_err(errno)?;
        Ok(())
    }

    pub(super) async fn do_getxattr(
        &self,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> FuseResult<ReplyXAttr> {
        let name = name.as_bytes();
        // Asked by the kernel before every write; never stored (see the service).
        if !(name.starts_with(b"user.") || name.starts_with(b"trusted.")) {
            return Err(errno(libc::ENODATA));
        }
        let req = XattrRequest {
            volume: self.volume.clone(),
            ino,
            name: name.to_vec(),
        };
        let reply = self
            .client
            .unary(
                "getxattr",
                req,
                |mut c, r| async move { c.get_xattr(r).await },
            )
            .await
            .map_err(errno)?;
        xattr_reply(reply.value.value, size)
    }

    pub(super) async fn do_listxattr(&self, ino: u64, size: u32) -> FuseResult<ReplyXAttr> {
        let req = self.inode_req(ino);
        let reply = self
            .client
            .unary(
                "listxattr",
                req,
                |mut c, r| async move { c.list_xattr(r).await },
            )
            .await
            .map_err(errno)?;
        let mut out = Vec::new();
        for name in reply.value.names {
            out.extend_from_slice(&name);
            out.push(0);
        }
        xattr_reply(out, size)
    }

    pub(super) async fn do_removexattr(&self, ino: u64, name: &OsStr) -> FuseResult<()> {
        let req = XattrRequest {
            volume: self.volume.clone(),
            ino,
            name: name.as_bytes().to_vec(),
        };
        self.client
            .unary("removexattr", req, |mut c, r| async move {
                c.remove_xattr(r).await
            })
            .await
            .map_err(errno)?;
        Ok(())
    }

    /// All entries of a directory, fetched page by page, with `.` and `..` first.
    pub(super) async fn list(&self, ino: u64) -> FuseResult<Vec<Listed>> {
        let dir = self.get_attr(ino).await?;
        // The parent's inode number is not known here; the kernel ignores the
        // attributes of "." and ".." and fills in the real parent for lookups.
        let mut out = vec![
            Listed {
                name: b".".to_vec(),
                attr: dir,
            },
            Listed {
                name: b"..".to_vec(),
                attr: dir,
            },
        ];
        let mut after = Vec::new();
        loop {
            let req = ReadDirPageRequest {
                volume: self.volume.clone(),
                ino,
                after: after.clone(),
                limit: PAGE,
            };
            let reply = self
                .client
                .unary("readdir", req, |mut c, r| async move {
                    c.read_dir_page(r).await
                })
                .await
                .map_err(errno)?;
            let n = reply.value.entries.len();
            for e in reply.value.entries {
                after.clone_from(&e.name);
                out.push(Listed {
                    name: e.name,
                    attr: attr_of(e.attr)?,
                });
            }
            if n < PAGE as usize {
                return Ok(out);
            }
        }
    }

    fn lock_req(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
    ) -> LockRequest {
        LockRequest {
            volume: self.volume.clone(),
            ino,
            mount_id: self.mount_id.clone(),
            owner,
            start,
            end,
            kind: kind as i32,
            pid,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn do_getlk(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
    ) -> FuseResult<ReplyLock> {
        let req = self.lock_req(ino, owner, start, end, lock_kind(r#type)?, pid);
        let reply = self
            .client
            .unary("getlk", req, |mut c, r| async move { c.get_lock(r).await })
            .await
            .map_err(errno)?
            .value;
        if reply.granted {
            return Ok(ReplyLock {
                start,
                end,
                r#type: libc::F_UNLCK as u32,
                pid: 0,
            });
        }
        let r#type = if reply.kind == LockKind::Write as i32 {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        };
        Ok(ReplyLock {
            start: reply.start,
            end: reply.end,
            r#type: r#type as u32,
            pid: reply.pid,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn do_setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
        block: bool,
    ) -> FuseResult<()> {
        let kind = lock_kind(r#type)?;
        let req = self.lock_req(ino, owner, start, end, kind, pid);
        let mut backoff = Duration::from_millis(20);
        loop {
            let result = self
                .client
                .unary("setlk", req.clone(), |mut c, r| async move {
                    c.set_lock(r).await
                })
                .await;
            match result {
                Ok(_) => {
                    if kind != LockKind::Unlock {
                        self.locked().insert(ino, owner, fh);
                    }
                    return Ok(());
                }
                Err(e) if e == libc::EAGAIN && block => {
                    // Stop waiting once the handle is gone (the process was killed).
                    if !self.handles().contains_key(&fh) {
                        return Err(errno(libc::EINTR));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(errno(e)),
            }
        }
    }

    /// Drops the locks `owner` holds on `ino`, if this mount took any (POSIX: closing
    /// any descriptor of a file releases the process's locks on it).
    pub(super) async fn release_locks(&self, ino: u64, owner: u64) -> FuseResult<()> {
        if !self.locked().remove(ino, owner) {
            return Ok(());
        }
        self.send_release(ino, owner).await
    }

    /// At the last close of open file `fh` (FUSE `release`): drops the locks taken
    /// through it (OFD locks, whose owner is the open file) and those of `lock_owner`
    /// (the open file's `flock` owner when the kernel sets one; 0 otherwise).
    pub(super) async fn release_handle_locks(
        &self,
        ino: u64,
        fh: u64,
        lock_owner: u64,
    ) -> FuseResult<()> {
        let mut owners = self.locked().take_handle(fh);
        if self.locked().remove(ino, lock_owner) {
            owners.push((ino, lock_owner));
        }
        let mut result = Ok(());
        for (ino, owner) in owners {
            let sent = self.send_release(ino, owner).await;
            result = result.and(sent);
        }
        result
    }

    async fn send_release(&self, ino: u64, owner: u64) -> FuseResult<()> {
        let req = self.lock_req(ino, owner, 0, u64::MAX, LockKind::Unlock, 0);
        self.client
            .unary("releaselocks", req, |mut c, r| async move {
                c.release_locks(r).await
            })
            .await
            .map_err(errno)?;
        Ok(())
    }
}
