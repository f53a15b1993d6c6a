//! The `Volumes` gRPC service: validates requests, runs them against the metadata store
//! and the chunk store, and maps failures to statuses carrying a POSIX errno.
//!
//! Every response carries [`BOOT_METADATA_KEY`], an id that changes each time the
//! server starts, so a client can tell that acknowledged but unsynced writes may have
//! been lost and fail the next fsync with EIO instead of pretending they are durable.
//!
//! Submodules: [`locks`] (the advisory lock table shared by all mounts) and [`quota`]
//! (per-volume byte and inode limits). The link, xattr, lock and paged-listing calls
//! are in `service/ops.rs`.

pub mod locks;
mod ops;
pub mod promises;
pub mod quota;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use berth_api::volume::volumes_server::Volumes;
use berth_api::volume::{
    Attr, CreateRequest, DirEntry, Empty, Entry, FileKind, InodeRequest, KeepAliveRequest,
    LinkRequest, LockRequest, LockResponse, LookupRequest, MkdirRequest, NameRequest,
    ReadDirPageRequest, ReadDirResponse, ReadLinkResponse, ReadRequest, ReadResponse,
    RenameRequest, SetAttrRequest, SetXattrRequest, StatFsResponse, SymlinkRequest, VolumeRequest,
    WatchEvent, WatchRequest, WriteRequest, WriteResponse, XattrNames, XattrRequest, XattrValue,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::data::{ChunkStore, Opened};
use crate::error::{FsError, FsResult};
use crate::meta::rename::Place;
use crate::meta::{AttrChanges, MetaStore, NewInode};
use crate::metrics::Metrics;
use crate::names::{validate_name, validate_volume};
use locks::LockTable;
use promises::Promises;
use quota::{Quota, QuotaLimits};

/// Response metadata key holding the server's boot id.
pub const BOOT_METADATA_KEY: &str = "x-berth-fsd-boot";
/// Request metadata key holding the id of the mount a request comes from.
pub const MOUNT_METADATA_KEY: &str = "x-berth-mount";
/// Most entries of a directory an open's lookup lists along (`siblings`).
const MAX_SIBLINGS: u32 = 4096;
/// Largest `siblings_budget` honoured, in bytes of file contents.
const MAX_SIBLINGS_BUDGET: u32 = 8 << 20;

/// Largest single read or write accepted (the FUSE client sends at most 1 MiB).
const MAX_IO: u32 = 16 << 20;
/// Largest file a lookup made for an open sends along (`LookupRequest.read_small`).
const MAX_READ_SMALL: u32 = 1 << 20;
/// Block size reported by statfs.
const STATFS_BSIZE: u32 = 4096;
/// Capacity reported by statfs: 4 TiB, in blocks (object storage has no fixed size).
const STATFS_BLOCKS: u64 = (4 << 40) / STATFS_BSIZE as u64;
/// Inode capacity reported by statfs.
const STATFS_FILES: u64 = 1 << 32;

/// Implementation of `berth.volume.v1.Volumes`.
#[derive(Debug, Clone)]
pub struct VolumeService {
    meta: Arc<MetaStore>,
    data: Arc<ChunkStore>,
    metrics: Arc<Metrics>,
    boot_id: String,
    locks: Arc<LockTable>,
    quota: Arc<Quota>,
    promises: Arc<Promises>,
}

/// The mount a request says it comes from (`x-berth-mount`), if any.
fn mount_of<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(MOUNT_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|m| !m.is_empty() && m.len() <= 128)
        .map(str::to_string)
}

impl VolumeService {
    pub fn new(meta: Arc<MetaStore>, data: Arc<ChunkStore>, metrics: Arc<Metrics>) -> Self {
        let promises = Arc::new(Promises::new(
            metrics.promise_breaks.clone(),
            metrics.promise_timeouts.clone(),
        ));
        Self {
            promises,
            meta,
            data,
            metrics,
            boot_id: uuid::Uuid::new_v4().to_string(),
            locks: Arc::new(LockTable::default()),
            quota: Arc::new(Quota::new(QuotaLimits::from_env())),
        }
    }

    /// The callback promise table (for `/metrics` and tests).
    pub fn promises(&self) -> &Arc<Promises> {
        &self.promises
    }

    /// The same service with byte and inode limits on every volume (by default they
    /// come from `BERTH_FSD_QUOTA_BYTES` / `BERTH_FSD_QUOTA_INODES`).
    pub fn with_quota(mut self, limits: QuotaLimits) -> Self {
        self.quota = Arc::new(Quota::new(limits));
        self
    }

    /// The id sent in [`BOOT_METADATA_KEY`].
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Runs one operation on `volume`: validates the name, creates the volume on first
    /// use, records metrics and turns errors into statuses.
    async fn run<T>(
        &self,
        op: &'static str,
        volume: &str,
        body: impl Future<Output = FsResult<T>>,
    ) -> Result<Response<T>, Status> {
        let span = tracing::debug_span!("op", op, volume);
        let started = Instant::now();
        let result = async {
            validate_volume(volume)?;
            if let Opened::Now { existed } = self.data.open_volume(volume).await? {
                self.promises.reset_volume(volume, existed);
            }
            body.await
        }
        .instrument(span)
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.kind(),
        };
        self.metrics.observe(op, outcome, started.elapsed());
        match result {
            Ok(value) => {
                let mut response = Response::new(value);
                if let Ok(id) = MetadataValue::try_from(self.boot_id.as_str()) {
                    response.metadata_mut().insert(BOOT_METADATA_KEY, id);
                }
                Ok(response)
            }
            Err(err) => {
                if err.errno() == libc::EIO {
                    tracing::error!(op, volume, error = %err, "volume operation failed");
                } else {
                    tracing::debug!(op, volume, error = %err, "volume operation refused");
                }
                Err(err.into_status())
            }
        }
    }

    /// Deletes the data of an inode whose last link went away.
    async fn drop_data(&self, volume: &str, ino: Option<u64>) -> FsResult<()> {
        if let Some(ino) = ino {
            self.data.lock(volume, ino).await.delete_all().await?;
            self.quota.invalidate(volume);
        }
        Ok(())
    }

    /// The reply to a lookup made for an open: with the whole file when it is a
    /// regular file of at most `read_small` bytes (capped at [`MAX_READ_SMALL`]) in a
    /// version other than the one the client holds, so the open needs no read.
    async fn with_small_contents(&self, r: &LookupRequest, attr: Attr) -> FsResult<Entry> {
        let limit = u64::from(r.read_small.min(MAX_READ_SMALL));
        let held = (r.cached_mtime_ns, r.cached_ctime_ns, r.cached_size);
        let wanted = |a: &Attr| {
            a.kind == FileKind::File as i32
                && a.size <= limit
                && (a.mtime_ns, a.ctime_ns, a.size) != held
        };
        if !wanted(&attr) {
            return Ok(Entry {
                attr: Some(attr),
                ..Entry::default()
            });
        }
        // Under the inode's lock (writers hold it too) attributes and bytes are of
        // one version.
        let mut inode = self.data.lock(&r.volume, attr.ino).await;
        let attr = self.meta.get_attr(&r.volume, attr.ino).await?;
        if !wanted(&attr) {
            return Ok(Entry {
                attr: Some(attr),
                ..Entry::default()
            });
        }
        let data = inode.read(attr.size, 0, attr.size as u32).await?;
        self.metrics.add_read(data.len() as u64);
        Ok(Entry {
            attr: Some(attr),
            data: Some(data),
            ..Entry::default()
        })
    }

    /// Runs change `body`, then breaks the promises other mounts hold on `inos`
    /// (whether or not the change went through: a failed one may have done part of
    /// its work) before the change is answered.
    async fn changing<T>(
        &self,
        volume: &str,
        mount: Option<String>,
        inos: impl AsRef<[u64]>,
        body: impl Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        let result = body.await;
        self.promises
            .revoke(volume, inos.as_ref(), mount.as_deref())
            .await;
        result
    }

    /// The inode `name` in `parent` leads to now, if any (for breaking its promises).
    async fn ino_at(&self, volume: &str, parent: u64, name: &[u8]) -> Option<u64> {
        self.meta
            .lookup(volume, parent, name)
            .await
            .ok()
            .map(|a| a.ino)
    }

    /// Attributes of a regular file, or EISDIR.
    async fn file_attr(&self, volume: &str, ino: u64) -> FsResult<Attr> {
        let attr = self.meta.get_attr(volume, ino).await?;
        if attr.kind == FileKind::Directory as i32 {
            return Err(FsError::IsDir);
        }
        Ok(attr)
    }
}

fn check_io_size(len: u64) -> FsResult<()> {
    if len > u64::from(MAX_IO) {
        return Err(FsError::Invalid(format!(
            "one read or write may move at most {MAX_IO} bytes"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Volumes for VolumeService {
    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<Entry>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        // Lookups an open makes (to check its names and version) are counted apart
        // from the kernel's path lookups.
        let op = if r.for_open { "open" } else { "lookup" };
        self.run(op, &r.volume, self.lookup_op(&r, mount.as_deref()))
            .await
    }

    async fn get_attr(&self, request: Request<InodeRequest>) -> Result<Response<Attr>, Status> {
        let r = request.into_inner();
        self.run("getattr", &r.volume, self.meta.get_attr(&r.volume, r.ino))
            .await
    }

    async fn set_attr(&self, request: Request<SetAttrRequest>) -> Result<Response<Attr>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let changes = AttrChanges {
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime_ns: r.atime_ns,
            mtime_ns: r.mtime_ns,
        };
        let body = async {
            if changes.size.is_none() {
                return Ok(self.meta.set_attr(&r.volume, r.ino, &changes).await?.0);
            }
            let mut inode = self.data.lock(&r.volume, r.ino).await;
            if let Some(size) = changes.size {
                let before = self.meta.get_attr(&r.volume, r.ino).await?;
                if size > before.size && before.kind != FileKind::Directory as i32 {
                    self.quota
                        .grow(&self.meta, &r.volume, size - before.size)
                        .await?;
                }
            }
            let (attr, old_size) = self.meta.set_attr(&r.volume, r.ino, &changes).await?;
            if attr.size < old_size {
                self.quota.invalidate(&r.volume);
            }
            inode.truncate(old_size, attr.size).await?;
            Ok(attr)
        };
        self.run(
            "setattr",
            &r.volume,
            self.changing(&r.volume, mount, [r.ino], body),
        )
        .await
    }

    async fn read_dir(
        &self,
        request: Request<InodeRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let r = request.into_inner();
        self.run("readdir", &r.volume, async {
            let entries = self
                .meta
                .read_dir(&r.volume, r.ino)
                .await?
                .into_iter()
                .map(|(name, attr)| DirEntry {
                    name,
                    attr: Some(attr),
                })
                .collect();
            Ok(ReadDirResponse { entries })
        })
        .await
    }

    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<Entry>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = async {
            validate_name(&r.name)?;
            let new = NewInode {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
            };
            if self.quota.limits.inodes.is_some() {
                match self.meta.lookup(&r.volume, r.parent, &r.name).await {
                    Err(FsError::NotFound) => self.quota.new_inode(&self.meta, &r.volume).await?,
                    Err(err) => return Err(err),
                    Ok(_) => {}
                }
            }
            let (attr, _created) = self
                .meta
                .create_file(&r.volume, r.parent, &r.name, new, r.exclusive)
                .await?;
            Ok(Entry {
                attr: Some(attr),
                ..Entry::default()
            })
        };
        self.run(
            "create",
            &r.volume,
            self.changing(&r.volume, mount, [r.parent], body),
        )
        .await
    }

    async fn mkdir(&self, request: Request<MkdirRequest>) -> Result<Response<Entry>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = async {
            validate_name(&r.name)?;
            let new = NewInode {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
            };
            self.quota.new_inode(&self.meta, &r.volume).await?;
            let attr = self.meta.mkdir(&r.volume, r.parent, &r.name, new).await?;
            Ok(Entry {
                attr: Some(attr),
                ..Entry::default()
            })
        };
        self.run(
            "mkdir",
            &r.volume,
            self.changing(&r.volume, mount, [r.parent], body),
        )
        .await
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let r = request.into_inner();
        self.run("read", &r.volume, async {
            check_io_size(u64::from(r.size))?;
            let mut inode = self.data.lock(&r.volume, r.ino).await;
            let attr = self.file_attr(&r.volume, r.ino).await?;
            let data = inode.read(attr.size, r.offset, r.size).await?;
            self.metrics.add_read(data.len() as u64);
            Ok(ReadResponse { data })
        })
        .await
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = async {
            let len = r.data.len() as u64;
            check_io_size(len)?;
            let mut inode = self.data.lock(&r.volume, r.ino).await;
            let attr = self.file_attr(&r.volume, r.ino).await?;
            let end = r.offset.checked_add(len).ok_or(FsError::TooLarge {
                max: i64::MAX as u64,
            })?;
            if end > i64::MAX as u64 {
                return Err(FsError::TooLarge {
                    max: i64::MAX as u64,
                });
            }
            self.quota
                .grow(&self.meta, &r.volume, end.saturating_sub(attr.size))
                .await?;
            inode.write(attr.size, r.offset, &r.data).await?;
            let attr = self
                .meta
                .note_write(&r.volume, r.ino, r.offset + len)
                .await?;
            self.metrics.add_written(len);
            Ok(WriteResponse {
                written: len as u32,
                attr: Some(attr),
            })
        };
        self.run(
            "write",
            &r.volume,
            self.changing(&r.volume, mount, [r.ino], body),
        )
        .await
    }

    async fn rename(&self, request: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        self.run("rename", &r.volume, async {
            validate_name(&r.name)?;
            validate_name(&r.new_name)?;
            let moved = self.ino_at(&r.volume, r.parent, &r.name).await;
            let replaced = self.ino_at(&r.volume, r.new_parent, &r.new_name).await;
            let inos = [Some(r.parent), Some(r.new_parent), moved, replaced];
            let inos: Vec<u64> = inos.into_iter().flatten().collect();
            let from = Place {
                parent: r.parent,
                name: &r.name,
            };
            let to = Place {
                parent: r.new_parent,
                name: &r.new_name,
            };
            let body = async {
                let gone = self.meta.rename(&r.volume, from, to, r.flags).await?;
                self.drop_data(&r.volume, gone).await?;
                Ok(Empty {})
            };
            self.changing(&r.volume, mount, inos, body).await
        })
        .await
    }

    async fn unlink(&self, request: Request<NameRequest>) -> Result<Response<Empty>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        self.run("unlink", &r.volume, async {
            validate_name(&r.name)?;
            let target = self.ino_at(&r.volume, r.parent, &r.name).await;
            let inos: Vec<u64> = [Some(r.parent), target].into_iter().flatten().collect();
            let body = async {
                let gone = self.meta.unlink(&r.volume, r.parent, &r.name).await?;
                self.drop_data(&r.volume, gone).await?;
                Ok(Empty {})
            };
            self.changing(&r.volume, mount, inos, body).await
        })
        .await
    }

    async fn rmdir(&self, request: Request<NameRequest>) -> Result<Response<Empty>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        self.run("rmdir", &r.volume, async {
            validate_name(&r.name)?;
            let target = self.ino_at(&r.volume, r.parent, &r.name).await;
            let inos: Vec<u64> = [Some(r.parent), target].into_iter().flatten().collect();
            let body = async {
                self.meta.rmdir(&r.volume, r.parent, &r.name).await?;
                self.quota.invalidate(&r.volume);
                Ok(Empty {})
            };
            self.changing(&r.volume, mount, inos, body).await
        })
        .await
    }

    async fn fsync(&self, request: Request<InodeRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.run("fsync", &r.volume, async {
            let mut inode = self.data.lock(&r.volume, r.ino).await;
            self.meta.get_attr(&r.volume, r.ino).await?;
            inode.flush().await?;
            Ok(Empty {})
        })
        .await
    }

    async fn stat_fs(
        &self,
        request: Request<VolumeRequest>,
    ) -> Result<Response<StatFsResponse>, Status> {
        let r = request.into_inner();
        self.run("statfs", &r.volume, async {
            let (files, bytes) = self.meta.usage(&r.volume).await?;
            let used = bytes.div_ceil(u64::from(STATFS_BSIZE));
            let limits = self.quota.limits;
            let blocks = limits
                .bytes
                .map_or(STATFS_BLOCKS, |b| b / u64::from(STATFS_BSIZE));
            let total_files = limits.inodes.unwrap_or(STATFS_FILES);
            Ok(StatFsResponse {
                blocks,
                bfree: blocks.saturating_sub(used),
                files: total_files,
                ffree: total_files.saturating_sub(files),
                bsize: STATFS_BSIZE,
                namelen: crate::names::NAME_MAX as u32,
            })
        })
        .await
    }

    async fn symlink(&self, request: Request<SymlinkRequest>) -> Result<Response<Entry>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = self.symlink_op(&r);
        self.run(
            "symlink",
            &r.volume,
            self.changing(&r.volume, mount, [r.parent], body),
        )
        .await
    }

    async fn read_link(
        &self,
        request: Request<InodeRequest>,
    ) -> Result<Response<ReadLinkResponse>, Status> {
        let r = request.into_inner();
        self.run("readlink", &r.volume, self.read_link_op(&r.volume, r.ino))
            .await
    }

    async fn link(&self, request: Request<LinkRequest>) -> Result<Response<Entry>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = self.link_op(&r);
        let inos = [r.ino, r.new_parent];
        self.run(
            "link",
            &r.volume,
            self.changing(&r.volume, mount, inos, body),
        )
        .await
    }

    async fn set_xattr(
        &self,
        request: Request<SetXattrRequest>,
    ) -> Result<Response<Empty>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = async { self.set_xattr_op(&r).await.map(|()| Empty {}) };
        self.run(
            "setxattr",
            &r.volume,
            self.changing(&r.volume, mount, [r.ino], body),
        )
        .await
    }

    async fn get_xattr(
        &self,
        request: Request<XattrRequest>,
    ) -> Result<Response<XattrValue>, Status> {
        let r = request.into_inner();
        self.run("getxattr", &r.volume, self.get_xattr_op(&r)).await
    }

    async fn list_xattr(
        &self,
        request: Request<InodeRequest>,
    ) -> Result<Response<XattrNames>, Status> {
        let r = request.into_inner();
        self.run("listxattr", &r.volume, self.list_xattr_op(&r.volume, r.ino))
            .await
    }

    async fn remove_xattr(
        &self,
        request: Request<XattrRequest>,
    ) -> Result<Response<Empty>, Status> {
        let mount = mount_of(&request);
        let r = request.into_inner();
        let body = async { self.remove_xattr_op(&r).await.map(|()| Empty {}) };
        self.run(
            "removexattr",
            &r.volume,
            self.changing(&r.volume, mount, [r.ino], body),
        )
        .await
    }

    async fn read_dir_page(
        &self,
        request: Request<ReadDirPageRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let r = request.into_inner();
        self.run("readdir", &r.volume, self.read_dir_page_op(&r))
            .await
    }

    async fn get_lock(
        &self,
        request: Request<LockRequest>,
    ) -> Result<Response<LockResponse>, Status> {
        let r = request.into_inner();
        self.run("getlk", &r.volume, self.get_lock_op(&r)).await
    }

    async fn set_lock(
        &self,
        request: Request<LockRequest>,
    ) -> Result<Response<LockResponse>, Status> {
        let r = request.into_inner();
        self.run("setlk", &r.volume, self.set_lock_op(&r)).await
    }

    async fn release_locks(
        &self,
        request: Request<LockRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.run("releaselocks", &r.volume, async {
            self.release_locks_op(&r).map(|()| Empty {})
        })
        .await
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        if r.mount_id.is_empty() || r.mount_id.len() > 128 {
            return Err(FsError::Invalid(
                "keep-alive needs a mount id of 1 to 128 bytes".to_string(),
            )
            .into_status());
        }
        self.keep_alive_op(&r.mount_id);
        Ok(Response::new(Empty {}))
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self.watch_op(request.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
