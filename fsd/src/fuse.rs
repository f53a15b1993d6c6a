//! The FUSE filesystem of `berth-fsd mount`: a thin translator from kernel requests to
//! `Volumes` calls on the file server.
//!
//! The client keeps no file data of its own: writes go to the server as they come (the
//! kernel page cache is write-through and kept across opens while a file's mtime,
//! ctime and size stay the same), names and attributes are cached for their TTL (the
//! kernel's, and [`AttrCache`]), every open checks its file's names and version with
//! the server (close-to-open; ESTALE sends the kernel to look a changed name up
//! again), and `flush`/`release`/`fsync` of a handle that wrote
//! call `Fsync`, so data is durable in object storage when `close` returns. Open
//! handles remember the server boot id their writes went to: if the server restarted
//! in between, acknowledged writes may be lost and the next fsync/close reports EIO.
//! Directory handles snapshot the listing so offsets stay stable while reading.
//! Symlinks, hard links, xattrs, paged listings and `fcntl` locks are in [`ops`].

mod attr;
mod open;
mod ops;
pub mod promised;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroU32;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_api::volume::{
    Attr, CreateRequest, InodeRequest, LookupRequest, MkdirRequest, NameRequest, ReadRequest,
    RenameRequest, SetAttrRequest, VolumeRequest, WriteRequest,
};
use bytes::Bytes;
use fuse3::notify::Notify;
use fuse3::raw::prelude::*;
use fuse3::{Errno, Inode, Result as FuseResult};
use futures::stream;

pub use attr::Ttls;
use attr::{file_attr, file_type, may_access, nanos, AttrCache, Names};

use crate::client::FsClient;

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;
/// Most directory entries handed to one readdir call (the kernel buffer holds fewer).
const LISTING_SLICE: usize = 1024;
/// Files up to this size come with the lookup an open makes, saving a read.
const READ_SMALL: u32 = 128 << 10;
/// `FOPEN_KEEP_CACHE` (linux/fuse.h): keep the file's cached pages across this open.
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_NOFLUSH` (linux/fuse.h, kernel 5.16+): no FLUSH at close of this open file.
const FOPEN_NOFLUSH: u32 = 1 << 5;

/// What an open handle remembers.
#[derive(Debug)]
enum Handle {
    File(FileHandle),
    Dir(Option<Arc<Vec<Listed>>>),
}

#[derive(Debug, Default)]
struct FileHandle {
    /// Writes went out since the last successful fsync.
    dirty: bool,
    /// Boot id of the server that acknowledged the first of those writes.
    boot_id: Option<String>,
    /// A write was acknowledged by a different server boot than an earlier one.
    maybe_lost: bool,
    /// The inode the handle is open on.
    ino: u64,
    /// The whole file as the open's lookup brought it (small files): reads of this
    /// handle are answered from it until a write or truncate through this mount.
    contents: Option<Bytes>,
}

/// One entry of a directory listing (including `.` and `..`).
#[derive(Debug, Clone)]
struct Listed {
    name: Vec<u8>,
    attr: Attr,
}

/// The FUSE filesystem of one volume.
#[derive(Debug)]
pub struct VolumeFs {
    client: FsClient,
    volume: String,
    ttls: Ttls,
    attrs: AttrCache,
    names: Names,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// This mount's id in the server's lock table.
    mount_id: String,
    /// Sends cache invalidations to the kernel (set once the session is up).
    notify: std::sync::OnceLock<Notify>,
    /// (inode, lock owner) pairs that took a lock through this mount, and the open
    /// files they took them through.
    locked: Mutex<ops::Locked>,
    /// What the server promised to call back about (kept current by [`promised::watch`]).
    promised: Arc<promised::Promised>,
    metrics: Arc<crate::metrics::MountMetrics>,
}

fn errno(e: i32) -> Errno {
    Errno::from(e)
}

fn attr_of(attr: Option<Attr>) -> FuseResult<Attr> {
    attr.ok_or_else(|| errno(libc::EIO))
}

impl VolumeFs {
    pub fn new(client: FsClient, volume: String, ttls: Ttls) -> Self {
        Self {
            volume,
            ttls,
            attrs: AttrCache::new(ttls.attr),
            names: Names::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mount_id: client.mount_id().to_string(),
            client,
            notify: std::sync::OnceLock::new(),
            locked: Mutex::new(ops::Locked::default()),
            promised: Arc::new(promised::Promised::default()),
            metrics: Arc::new(crate::metrics::MountMetrics::new()),
        }
    }

    /// The mount's metrics (served by `berth-fsd mount --metrics-listen`).
    pub fn metrics(&self) -> Arc<crate::metrics::MountMetrics> {
        self.metrics.clone()
    }

    /// The mount's promise state, for the task that runs its watch stream.
    pub fn promised(&self) -> Arc<promised::Promised> {
        self.promised.clone()
    }

    /// This mount's id in the server's lock table (renew it with `KeepAlive`).
    pub fn mount_id(&self) -> &str {
        &self.mount_id
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ops::Locked> {
        self.locked.lock().expect("lock set poisoned")
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().expect("handle table lock poisoned")
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, handle);
        fh
    }

    fn inode_req(&self, ino: u64) -> InodeRequest {
        InodeRequest {
            volume: self.volume.clone(),
            ino,
        }
    }

    /// `attr` for a reply to the kernel, remembering which version it was told.
    fn kernel_attr(&self, attr: &Attr) -> FileAttr {
        self.attrs.told_kernel(attr);
        file_attr(attr)
    }

    fn entry(&self, attr: &Attr) -> ReplyEntry {
        ReplyEntry {
            ttl: self.ttls.entry(attr),
            attr: self.kernel_attr(attr),
            generation: 0,
        }
    }

    /// Attributes of `ino`, from the [`AttrCache`] when the server sent them within
    /// the attribute TTL.
    async fn get_attr(&self, ino: u64) -> FuseResult<Attr> {
        if let Some(attr) = self.attrs.get(ino) {
            return Ok(attr);
        }
        self.fetch_attr(ino).await.map_err(errno)
    }

    /// Attributes of `ino` from the server (remembered in the [`AttrCache`]); a
    /// failure is the server's errno.
    async fn fetch_attr(&self, ino: u64) -> Result<Attr, i32> {
        let req = self.inode_req(ino);
        let reply = self
            .client
            .unary(
                "getattr",
                req,
                |mut c, r| async move { c.get_attr(r).await },
            )
            .await?;
        self.attrs.put(&reply.value);
        Ok(reply.value)
    }

    async fn truncate(&self, ino: u64, size: u64) -> FuseResult<Attr> {
        let req = SetAttrRequest {
            volume: self.volume.clone(),
            ino,
            size: Some(size),
            ..Default::default()
        };
        let reply = self
            .client
            .unary(
                "setattr",
                req,
                |mut c, r| async move { c.set_attr(r).await },
            )
            .await;
        self.promised.forget(&[ino]);
        let reply = reply.map_err(errno)?;
        self.drop_contents(ino);
        self.attrs.put(&reply.value);
        Ok(reply.value)
    }

    /// Makes the writes of handle `fh` durable; EIO if they may have been lost.
    async fn sync_handle(&self, ino: u64, fh: u64, force: bool) -> FuseResult<()> {
        let (dirty, boot_id, maybe_lost) = match self.handles().get_mut(&fh) {
            Some(Handle::File(h)) => {
                let state = (h.dirty, h.boot_id.take(), h.maybe_lost);
                h.dirty = false;
                h.maybe_lost = false;
                state
            }
            _ => (false, None, false),
        };
        if !dirty && !force {
            return Ok(());
        }
        let req = self.inode_req(ino);
        let reply = self
            .client
            .unary("fsync", req, |mut c, r| async move { c.fsync(r).await })
            .await
            .map_err(errno)?;
        let restarted = dirty && boot_id.is_some() && reply.boot_id != boot_id;
        if maybe_lost || restarted {
            tracing::error!(
                volume = %self.volume,
                ino,
                "file server restarted before these writes were synced; reporting EIO"
            );
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    /// The listing of directory handle `fh` from `offset` on; re-read at offset 0.
    async fn listing(&self, ino: u64, fh: u64, offset: u64) -> FuseResult<Vec<Listed>> {
        let cached = match self.handles().get(&fh) {
            Some(Handle::Dir(Some(entries))) if offset > 0 => Some(entries.clone()),
            _ => None,
        };
        let entries = match cached {
            Some(entries) => entries,
            None => {
                let entries = Arc::new(self.list(ino).await?);
                if let Some(Handle::Dir(slot)) = self.handles().get_mut(&fh) {
                    *slot = Some(entries.clone());
                }
                entries
            }
        };
        // The kernel asks for one buffer (a few hundred entries) per call: hand out a
        // bounded slice, not the rest of a huge directory every time.
        Ok(entries
            .iter()
            .skip(offset as usize)
            .take(LISTING_SLICE)
            .cloned()
            .collect())
    }
}

impl Filesystem for VolumeFs {
    async fn init(&self, _req: Request) -> FuseResult<ReplyInit> {
        Ok(ReplyInit::new(
            NonZeroU32::new(MAX_WRITE).expect("MAX_WRITE is not zero"),
        ))
    }

    async fn ready(&self, notify: Notify) {
        let _ = self.notify.set(notify);
    }

    async fn destroy(&self, _req: Request) {
        tracing::info!(volume = %self.volume, "kernel ended the FUSE session");
    }

    async fn lookup(&self, _req: Request, parent: Inode, name: &OsStr) -> FuseResult<ReplyEntry> {
        let promised = self.promised.lookup(parent, name.as_bytes());
        self.metrics.lookup(promised.is_some());
        match promised {
            Some(Some(attr)) => {
                self.attrs.put(&attr);
                self.names.remember(attr.ino, parent, name.as_bytes());
                return Ok(self.entry(&attr));
            }
            Some(None) => {
                self.names.not_found(parent, name.as_bytes());
                return Err(errno(libc::ENOENT));
            }
            None => {}
        }
        // The first lookup in a directory that has to ask brings the directory's
        // other entries along, promised, so the lookups that follow there need no
        // round trip (an open there brings the small files' contents).
        let ticket = self.promised.ticket();
        let list = ticket.is_some() && self.promised.wants_listing(parent, false);
        let req = LookupRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            promise: ticket.is_some(),
            siblings: list,
            ..Default::default()
        };
        let reply = match self
            .client
            .unary("lookup", req, |mut c, r| async move { c.lookup(r).await })
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                if e == libc::ENOENT {
                    self.names.not_found(parent, name.as_bytes());
                }
                return Err(errno(e));
            }
        };
        if let Some(ticket) = ticket {
            self.promised
                .accept(ticket, parent, name.as_bytes(), &reply.value, false);
        }
        let attr = attr_of(reply.value.attr)?;
        self.attrs.put(&attr);
        self.names.remember(attr.ino, parent, name.as_bytes());
        Ok(self.entry(&attr))
    }

    async fn getattr(
        &self,
        _req: Request,
        inode: Inode,
        _fh: Option<u64>,
        _flags: u32,
    ) -> FuseResult<ReplyAttr> {
        let attr = self.get_attr(inode).await?;
        Ok(ReplyAttr {
            ttl: self.ttls.attr,
            attr: self.kernel_attr(&attr),
        })
    }

    async fn setattr(
        &self,
        _req: Request,
        inode: Inode,
        _fh: Option<u64>,
        set_attr: SetAttr,
    ) -> FuseResult<ReplyAttr> {
        let req = SetAttrRequest {
            volume: self.volume.clone(),
            ino: inode,
            mode: set_attr.mode.map(|m| m & 0o7777),
            uid: set_attr.uid,
            gid: set_attr.gid,
            size: set_attr.size,
            atime_ns: set_attr.atime.map(nanos),
            mtime_ns: set_attr.mtime.map(nanos),
        };
        let reply = self
            .client
            .unary(
                "setattr",
                req,
                |mut c, r| async move { c.set_attr(r).await },
            )
            .await;
        self.promised.forget(&[inode]);
        let reply = reply.map_err(errno)?;
        self.attrs.put(&reply.value);
        if set_attr.size.is_some() {
            self.drop_contents(inode);
        }
        Ok(ReplyAttr {
            ttl: self.ttls.attr,
            attr: self.kernel_attr(&reply.value),
        })
    }

    async fn mknod(
        &self,
        req: Request,
        parent: Inode,
        name: &OsStr,
        mode: u32,
        _rdev: u32,
    ) -> FuseResult<ReplyEntry> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            // Devices, FIFOs and sockets have no place on a shared volume.
            return Err(errno(libc::EPERM));
        }
        let attr = self.create_file(&req, parent, name, mode, true).await?;
        Ok(self.entry(&attr))
    }

    async fn mkdir(
        &self,
        req: Request,
        parent: Inode,
        name: &OsStr,
        mode: u32,
        _umask: u32,
    ) -> FuseResult<ReplyEntry> {
        let request = MkdirRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            mode: mode & 0o7777,
            uid: req.uid,
            gid: req.gid,
        };
        let reply = self
            .client
            .call("mkdir", |mut c| {
                let request = request.clone();
                async move { c.mkdir(request).await }
            })
            .await;
        self.promised.forget(&[parent]);
        let reply = reply.map_err(errno)?;
        let attr = attr_of(reply.value.attr)?;
        self.attrs.forget(parent);
        self.attrs.put(&attr);
        Ok(self.entry(&attr))
    }

    async fn unlink(&self, _req: Request, parent: Inode, name: &OsStr) -> FuseResult<()> {
        let req = NameRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
        };
        let known = self.names.ino_of(parent, name.as_bytes());
        let result = self
            .client
            .unary("unlink", req, |mut c, r| async move { c.unlink(r).await })
            .await;
        self.promised
            .forget_name(parent, name.as_bytes(), known, true);
        result.map_err(errno)?;
        self.attrs.clear();
        self.names.removed(parent, name.as_bytes());
        Ok(())
    }

    async fn rmdir(&self, _req: Request, parent: Inode, name: &OsStr) -> FuseResult<()> {
        let req = NameRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
        };
        let known = self.names.ino_of(parent, name.as_bytes());
        let result = self
            .client
            .unary("rmdir", req, |mut c, r| async move { c.rmdir(r).await })
            .await;
        self.promised
            .forget_name(parent, name.as_bytes(), known, true);
        result.map_err(errno)?;
        self.attrs.clear();
        self.names.removed(parent, name.as_bytes());
        Ok(())
    }

    async fn rename(
        &self,
        req: Request,
        parent: Inode,
        name: &OsStr,
        new_parent: Inode,
        new_name: &OsStr,
    ) -> FuseResult<()> {
        self.rename2(req, parent, name, new_parent, new_name, 0)
            .await
    }

    async fn rename2(
        &self,
        _req: Request,
        parent: Inode,
        name: &OsStr,
        new_parent: Inode,
        new_name: &OsStr,
        flags: u32,
    ) -> FuseResult<()> {
        let req = RenameRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            new_parent,
            new_name: new_name.as_bytes().to_vec(),
            flags,
        };
        let moved = self.names.ino_of(parent, name.as_bytes());
        let replaced = self.names.ino_of(new_parent, new_name.as_bytes());
        let result = self
            .client
            .unary("rename", req, |mut c, r| async move { c.rename(r).await })
            .await;
        self.promised
            .forget_name(parent, name.as_bytes(), moved, true);
        self.promised
            .forget_name(new_parent, new_name.as_bytes(), replaced, false);
        result.map_err(errno)?;
        self.attrs.clear();
        self.names.renamed(
            parent,
            name.as_bytes(),
            new_parent,
            new_name.as_bytes(),
            flags & libc::RENAME_EXCHANGE != 0,
        );
        Ok(())
    }

    async fn open(&self, _req: Request, inode: Inode, flags: u32) -> FuseResult<ReplyOpen> {
        // The kernel negotiated FUSE_ATOMIC_O_TRUNC: truncation on open is ours to do.
        let truncate = flags & libc::O_TRUNC as u32 != 0 && flags & libc::O_ACCMODE as u32 != 0;
        let append = flags & libc::O_APPEND as u32 != 0 && flags & libc::O_ACCMODE as u32 != 0;
        let (attr, looked_up, contents) = self.revalidate(inode).await?;
        if append && !truncate && !looked_up && !self.attrs.unchanged_since(&attr) {
            // The kernel appends at the size it holds, which may be older than the
            // file (changed elsewhere). An open cannot hand it attributes, a lookup
            // can: ESTALE makes it look the path up (taking the new size) and retry.
            self.names.refresh_through_lookup(inode);
            return Err(errno(libc::ESTALE));
        }
        if truncate {
            self.truncate(inode, 0).await?;
        }
        // Cached pages are kept only if the file's mtime, ctime and size, as the server
        // gives them now, are those of the previous open here: a reader sees what
        // other mounts wrote and closed.
        let fresh_in_kernel = self.attrs.kernel_holds_only(&attr);
        let keep = !truncate && self.attrs.unchanged_since_last_open(&attr);
        let contents = contents.filter(|_| !keep && !truncate);
        let mut open_flags = if keep { FOPEN_KEEP_CACHE } else { 0 };
        match (keep, self.notify.get(), &contents) {
            (true, _, _) | (false, None, _) => {}
            // The whole file came with the lookup: drop the kernel's old attributes
            // and pages, store these contents as its pages and let it keep them, so
            // reads need no FUSE round trip.
            (false, Some(notify), Some(all)) if attr.size == all.len() as u64 => {
                if !fresh_in_kernel {
                    notify.clone().invalid_inode(inode, 0, 0).await;
                }
                if !all.is_empty() {
                    notify.clone().store(inode, 0, all.clone()).await;
                }
                open_flags = FOPEN_KEEP_CACHE;
            }
            // The kernel may hold attributes of the old version for up to the attr
            // TTL (a read would stop at the old size): make it ask again. Its pages
            // go because the open does not keep them. Safe inside open (not a
            // lookup/setattr/read/write of this inode).
            (false, Some(notify), _) => notify.clone().invalid_inode(inode, -1, 0).await,
        }
        // A read-only open with no lock taken on the file through this mount has
        // nothing to do at close: the kernel skips FLUSH (one round trip per close).
        // A POSIX lock taken later through this open file is still dropped at its
        // last close (RELEASE); see docs/home-semantics.md for the one difference.
        if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 && !self.locked().holds(inode) {
            open_flags |= FOPEN_NOFLUSH;
        }
        let fh = self.add_handle(Handle::File(FileHandle {
            ino: inode,
            contents,
            ..FileHandle::default()
        }));
        Ok(ReplyOpen {
            fh,
            flags: open_flags,
        })
    }

    async fn read(
        &self,
        _req: Request,
        inode: Inode,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FuseResult<ReplyData> {
        let held = match self.handles().get(&fh) {
            Some(Handle::File(h)) => h.contents.clone(),
            _ => None,
        };
        if let Some(all) = held {
            // The whole file, as the open found it.
            let len = all.len() as u64;
            let start = offset.min(len) as usize;
            let end = offset.saturating_add(u64::from(size)).min(len) as usize;
            return Ok(ReplyData {
                data: all.slice(start..end),
            });
        }
        let req = ReadRequest {
            volume: self.volume.clone(),
            ino: inode,
            offset,
            size,
        };
        let reply = self
            .client
            .unary("read", req, |mut c, r| async move { c.read(r).await })
            .await
            .map_err(errno)?;
        Ok(ReplyData {
            data: reply.value.data,
        })
    }

    async fn write(
        &self,
        _req: Request,
        inode: Inode,
        fh: u64,
        offset: u64,
        data: &[u8],
        _write_flags: u32,
        _flags: u32,
    ) -> FuseResult<ReplyWrite> {
        let req = WriteRequest {
            volume: self.volume.clone(),
            ino: inode,
            offset,
            data: Bytes::copy_from_slice(data),
        };
        let reply = self
            .client
            .unary("write", req, |mut c, r| async move { c.write(r).await })
            .await;
        self.promised.forget(&[inode]);
        let reply = reply.map_err(errno)?;
        self.attrs.forget(inode);
        self.drop_contents(inode);
        if let Some(Handle::File(h)) = self.handles().get_mut(&fh) {
            if h.dirty && h.boot_id.is_some() && h.boot_id != reply.boot_id {
                h.maybe_lost = true;
            }
            if !h.dirty {
                h.boot_id = reply.boot_id;
            }
            h.dirty = true;
        }
        Ok(ReplyWrite {
            written: reply.value.written,
        })
    }

    async fn statfs(&self, _req: Request, _inode: Inode) -> FuseResult<ReplyStatFs> {
        let req = VolumeRequest {
            volume: self.volume.clone(),
        };
        let reply = self
            .client
            .unary("statfs", req, |mut c, r| async move { c.stat_fs(r).await })
            .await
            .map_err(errno)?;
        let s = reply.value;
        Ok(ReplyStatFs {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bfree,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize,
            namelen: s.namelen,
            frsize: s.bsize,
        })
    }

    async fn release(
        &self,
        _req: Request,
        inode: Inode,
        fh: u64,
        _flags: u32,
        lock_owner: u64,
        _flush: bool,
    ) -> FuseResult<()> {
        let result = self.sync_handle(inode, fh, false).await;
        self.handles().remove(&fh);
        let unlocked = self.release_handle_locks(inode, fh, lock_owner).await;
        result.and(unlocked)
    }

    async fn fsync(&self, _req: Request, inode: Inode, fh: u64, _datasync: bool) -> FuseResult<()> {
        self.sync_handle(inode, fh, true).await
    }

    async fn flush(&self, _req: Request, inode: Inode, fh: u64, lock_owner: u64) -> FuseResult<()> {
        // Called on every close(): make the data durable before close returns, and
        // drop the closing process's POSIX locks on the file.
        let synced = self.sync_handle(inode, fh, false).await;
        let unlocked = self.release_locks(inode, lock_owner).await;
        synced.and(unlocked)
    }

    async fn opendir(&self, _req: Request, inode: Inode, _flags: u32) -> FuseResult<ReplyOpen> {
        let attr = self.get_attr(inode).await?;
        if file_type(attr.kind) != FileType::Directory {
            return Err(errno(libc::ENOTDIR));
        }
        let fh = self.add_handle(Handle::Dir(None));
        Ok(ReplyOpen { fh, flags: 0 })
    }

    async fn readdir<'a>(
        &'a self,
        _req: Request,
        parent: Inode,
        fh: u64,
        offset: i64,
    ) -> FuseResult<
        ReplyDirectory<impl futures::Stream<Item = FuseResult<DirectoryEntry>> + Send + 'a>,
    > {
        let start = offset.max(0) as u64;
        let entries: Vec<FuseResult<DirectoryEntry>> = self
            .listing(parent, fh, start)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(DirectoryEntry {
                    inode: e.attr.ino,
                    kind: file_type(e.attr.kind),
                    name: OsString::from_vec(e.name),
                    offset: (start + i as u64 + 1) as i64,
                })
            })
            .collect();
        Ok(ReplyDirectory {
            entries: stream::iter(entries),
        })
    }

    async fn readdirplus<'a>(
        &'a self,
        _req: Request,
        parent: Inode,
        fh: u64,
        offset: u64,
        _lock_owner: u64,
    ) -> FuseResult<
        ReplyDirectoryPlus<impl futures::Stream<Item = FuseResult<DirectoryEntryPlus>> + Send + 'a>,
    > {
        let entries: Vec<FuseResult<DirectoryEntryPlus>> = self
            .listing(parent, fh, offset)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                self.attrs.put(&e.attr);
                if e.name != b"." && e.name != b".." {
                    self.names.remember(e.attr.ino, parent, &e.name);
                }
                Ok(DirectoryEntryPlus {
                    inode: e.attr.ino,
                    generation: 0,
                    kind: file_type(e.attr.kind),
                    name: OsString::from_vec(e.name),
                    offset: (offset + i as u64 + 1) as i64,
                    attr: self.kernel_attr(&e.attr),
                    entry_ttl: self.ttls.entry(&e.attr),
                    attr_ttl: self.ttls.attr,
                })
            })
            .collect();
        Ok(ReplyDirectoryPlus {
            entries: stream::iter(entries),
        })
    }

    async fn releasedir(
        &self,
        _req: Request,
        _inode: Inode,
        fh: u64,
        _flags: u32,
    ) -> FuseResult<()> {
        self.handles().remove(&fh);
        Ok(())
    }

    async fn fsyncdir(
        &self,
        _req: Request,
        _inode: Inode,
        _fh: u64,
        _datasync: bool,
    ) -> FuseResult<()> {
        // Metadata changes are committed by the server before it answers.
        Ok(())
    }

    async fn access(&self, req: Request, inode: Inode, mask: u32) -> FuseResult<()> {
        let attr = self.get_attr(inode).await?;
        if may_access(&attr, req.uid, req.gid, mask) {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }

    async fn symlink(
        &self,
        req: Request,
        parent: Inode,
        name: &OsStr,
        link: &OsStr,
    ) -> FuseResult<ReplyEntry> {
        let attr = self.do_symlink(&req, parent, name, link).await;
        self.promised.forget(&[parent]);
        let attr = attr?;
        self.attrs.clear();
        self.names.remember(attr.ino, parent, name.as_bytes());
        Ok(self.entry(&attr))
    }

    async fn readlink(&self, _req: Request, inode: Inode) -> FuseResult<ReplyData> {
        Ok(ReplyData {
            data: self.do_readlink(inode).await?,
        })
    }

    async fn link(
        &self,
        _req: Request,
        inode: Inode,
        new_parent: Inode,
        new_name: &OsStr,
    ) -> FuseResult<ReplyEntry> {
        let attr = self.do_link(inode, new_parent, new_name).await;
        self.promised.forget(&[inode, new_parent]);
        let attr = attr?;
        self.attrs.clear();
        self.names
            .remember(attr.ino, new_parent, new_name.as_bytes());
        Ok(self.entry(&attr))
    }

    async fn setxattr(
        &self,
        _req: Request,
        inode: Inode,
        name: &OsStr,
        value: &[u8],
        flags: u32,
        _position: u32,
    ) -> FuseResult<()> {
        let result = self.do_setxattr(inode, name, value, flags).await;
        self.promised.forget(&[inode]);
        self.attrs.forget(inode);
        result
    }

    async fn getxattr(
        &self,
        _req: Request,
        inode: Inode,
        name: &OsStr,
        size: u32,
    ) -> FuseResult<ReplyXAttr> {
        self.do_getxattr(inode, name, size).await
    }

    async fn listxattr(&self, _req: Request, inode: Inode, size: u32) -> FuseResult<ReplyXAttr> {
        self.do_listxattr(inode, size).await
    }

    async fn removexattr(&self, _req: Request, inode: Inode, name: &OsStr) -> FuseResult<()> {
        let result = self.do_removexattr(inode, name).await;
        self.promised.forget(&[inode]);
        self.attrs.forget(inode);
        result
    }

    async fn getlk(
        &self,
        _req: Request,
        inode: Inode,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
    ) -> FuseResult<ReplyLock> {
        self.do_getlk(inode, lock_owner, start, end, r#type, pid)
            .await
    }

    async fn setlk(
        &self,
        _req: Request,
        inode: Inode,
        fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        r#type: u32,
        pid: u32,
        block: bool,
    ) -> FuseResult<()> {
        self.do_setlk(inode, fh, lock_owner, start, end, r#type, pid, block)
            .await
    }

    async fn create(
        &self,
        req: Request,
        parent: Inode,
        name: &OsStr,
        mode: u32,
        flags: u32,
    ) -> FuseResult<ReplyCreated> {
        let exclusive = flags & libc::O_EXCL as u32 != 0;
        let mut attr = self
            .create_file(&req, parent, name, mode, exclusive)
            .await?;
        if flags & libc::O_TRUNC as u32 != 0 && attr.size > 0 {
            attr = self.truncate(attr.ino, 0).await?;
        }
        self.names.remember(attr.ino, parent, name.as_bytes());
        let fh = self.add_handle(Handle::File(FileHandle {
            ino: attr.ino,
            ..FileHandle::default()
        }));
        Ok(ReplyCreated {
            ttl: self.ttls.entry(&attr),
            attr: self.kernel_attr(&attr),
            generation: 0,
            fh,
            flags: 0,
        })
    }
}

impl VolumeFs {
    async fn create_file(
        &self,
        req: &Request,
        parent: Inode,
        name: &OsStr,
        mode: u32,
        exclusive: bool,
    ) -> FuseResult<Attr> {
        let request = CreateRequest {
            volume: self.volume.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            mode: mode & 0o7777,
            uid: req.uid,
            gid: req.gid,
            exclusive,
        };
        let reply = self
            .client
            .call("create", |mut c| {
                let request = request.clone();
                async move { c.create(request).await }
            })
            .await;
        self.promised.forget(&[parent]);
        let reply = reply.map_err(errno)?;
        let attr = attr_of(reply.value.attr)?;
        self.attrs.forget(parent);
        self.attrs.put(&attr);
        Ok(attr)
    }
}
