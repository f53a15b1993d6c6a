//! The on-disk image store: blobs, layer snapshots and image records.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: verified content (manifests, configs, layer tarballs);
//! - `snapshots/<layer-hex>/`: each layer unpacked once, shared read-only by every
//!   image and instance that uses it (overlay lower dirs);
//! - `images/<manifest-hex>.json`: a pulled image (config and layer list); its presence
//!   means every blob and snapshot it names is complete;
//! - `tmp/`: work in progress, named `<pid>-...`, removed when the store is opened and its
//!   process is gone; `partial/<hex>`: a layer download cut short, resumed with `Range`
//!   by the next pull of that layer; `locks/`: per-digest lock files and `gc.lock`.
//!
//! Crash safety: everything is built under `tmp/` (or `partial/`), fsynced, then renamed
//! into place, so nothing partial ever appears complete; the image record is written last.
//! Concurrent pulls of one layer (threads or processes) serialize on a `flock` of
//! `locks/<hex>.lock`. Every pull holds `locks/gc.lock` shared and garbage collection
//! ([`ImageStore::gc`]) holds it exclusively, so a collection never removes what a running
//! pull is about to record. This module never modifies a snapshot after its rename.
//!
//! Reference counting: an image is in use when the caller (the agent) says so; a blob or
//! snapshot is kept while any kept image names it. Record mtimes are touched on every
//! pull, so [`ImageStore::gc_to_budget`] evicts the least recently used unused images first.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument, warn};

use crate::client::{ClientError, ClientOptions, RegistryClient};
use crate::manifest::{Descriptor, ImageConfig};
use crate::reference::{Digest, Reference};
use crate::unpack::{unpack_layer_onto, UnpackError, UnpackLimits};

mod gc;
#[cfg(test)]
mod tests;

/// Layers downloaded and unpacked at the same time.
pub const DEFAULT_CONCURRENCY: usize = 3;
/// Progress events for a layer are sent at most every this many bytes.
const PROGRESS_STEP: u64 = 4 << 20;

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("unpacking layer {layer} of {image}: {source}")]
    Unpack {
        image: String,
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image record {path} is corrupt: {source}: delete it and pull again")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image store task failed: {0}")]
    Task(String),
}

/// What a garbage collection removed and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifest digests of the image records removed.
    pub images_removed: Vec<Digest>,
    pub snapshots_removed: usize,
    pub blobs_removed: usize,
    /// Partial downloads and leftovers of interrupted pulls removed.
    pub leftovers_removed: usize,
    /// Disk bytes freed (allocated blocks, hard links counted once).
    pub bytes_freed: u64,
    /// Disk bytes the store uses afterwards.
    pub bytes_after: u64,
    pub images_kept: usize,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a pull is doing, for logs and progress output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The image was already in the store: nothing to fetch.
    Cached {
        manifest_digest: Digest,
    },
    /// The manifest and config were fetched and verified.
    Resolved {
        manifest_digest: Digest,
        layers: usize,
        total_bytes: u64,
    },
    /// A layer's snapshot already existed.
    LayerCached {
        digest: Digest,
    },
    LayerDownloading {
        digest: Digest,
        size: u64,
    },
    LayerProgress {
        digest: Digest,
        downloaded: u64,
        size: u64,
    },
    LayerDownloaded {
        digest: Digest,
        size: u64,
    },
    LayerUnpacked {
        digest: Digest,
        entries: u64,
    },
    Done {
        manifest_digest: Digest,
    },
}

/// An image ready to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    /// The image pinned to its manifest digest (`host/repo@sha256:...`).
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// Layer descriptors, lowest first.
    pub layers: Vec<Descriptor>,
    /// Snapshot directories, lowest layer first.
    pub snapshot_dirs: Vec<PathBuf>,
}

/// What `images/<hex>.json` holds.
#[derive(Serialize, Deserialize)]
struct ImageRecord {
    reference: Reference,
    manifest_digest: Digest,
    config_digest: Digest,
    config: ImageConfig,
    layers: Vec<Descriptor>,
}

/// Holds a `flock` (per digest, or the store-wide gc lock) until dropped.
struct DigestLock {
    _lock: Flock<File>,
}

/// Take `flock` on `path` (created if missing), blocking the calling thread.
fn flock_file(path: &Path, arg: FlockArg) -> Result<DigestLock, StoreError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening lock", path))?;
    let lock = Flock::lock(f, arg).map_err(|(_, e)| StoreError::Io {
        op: "locking",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(DigestLock { _lock: lock })
}

/// Disk bytes used by `path` (a file or a tree, not following symlinks), each inode once.
fn disk_usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = 0;
    if seen.insert((md.dev(), md.ino())) {
        total += md.blocks() * 512;
    }
    if md.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                total += disk_usage(&e.path(), seen);
            }
        }
    }
    total
}

/// Remove a file or a whole tree (never following symlinks); missing is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The image store rooted at one directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    limits: UnpackLimits,
    concurrency: usize,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing directory", dir))
}

impl ImageStore {
    /// Open (creating if needed) the store at `root`, clearing work left by dead processes.
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        for sub in [
            "blobs/sha256",
            "snapshots",
            "images",
            "tmp",
            "partial",
            "locks",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            limits: UnpackLimits::default(),
            concurrency: DEFAULT_CONCURRENCY,
        };
        store.clean_tmp()?;
        Ok(store)
    }

    /// Use other unpack limits (tests, small workers).
    pub fn with_limits(mut self, limits: UnpackLimits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// Download and unpack up to `n` layers at once.
    pub fn with_concurrency(mut self, n: usize) -> ImageStore {
        self.concurrency = n.max(1);
        self
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the blob with `digest` (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Path of the snapshot of layer `digest` (it may not exist).
    pub fn snapshot_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("snapshots").join(layer.hex())
    }

    fn record_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", manifest.hex()))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{nanos}-{what}", std::process::id()))
    }

    /// Remove `tmp/` entries whose creating process is gone.
    fn clean_tmp(&self) -> Result<(), StoreError> {
        let dir = self.root.join("tmp");
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                    .map_or_else(|e| e != nix::errno::Errno::ESRCH, |_| true)
            });
            if !alive {
                let p = e.path();
                warn!(path = %p.display(), "removing leftover of an interrupted pull");
                let res = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                res.map_err(io_err("removing", &p))?;
            }
        }
        Ok(())
    }

    async fn lock(&self, digest: &Digest) -> Result<DigestLock, StoreError> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}.lock", digest.hex()));
        tokio::task::spawn_blocking(move || flock_file(&path, FlockArg::LockExclusive))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The store-wide lock: shared by pulls, exclusive for garbage collection.
    async fn gc_lock_shared(&self) -> Result<DigestLock, StoreError> {
        let path = self.root.join("locks/gc.lock");
        tokio::task::spawn_blocking(move || flock_file(&path, FlockArg::LockShared))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.hex())
    }

    /// Mark an image as just used (its record's mtime orders eviction by size budget).
    fn touch(&self, manifest_digest: &Digest) {
        let path = self.record_path(manifest_digest);
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// The image with this manifest digest, if it is completely in the store.
    pub fn get(&self, manifest_digest: &Digest) -> Result<Option<PulledImage>, StoreError> {
        let path = self.record_path(manifest_digest);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let rec: ImageRecord =
            serde_json::from_slice(&data).map_err(|source| StoreError::Record {
                path: path.clone(),
                source,
            })?;
        let snapshot_dirs: Vec<PathBuf> = rec
            .layers
            .iter()
            .map(|l| self.snapshot_path(&l.digest))
            .collect();
        if !snapshot_dirs.iter().all(|d| d.is_dir()) {
            return Ok(None);
        }
        Ok(Some(PulledImage {
            reference: rec.reference,
            manifest_digest: rec.manifest_digest,
            config: rec.config,
            layers: rec.layers,
            snapshot_dirs,
        }))
    }

    /// Store `data` as a blob after checking it hashes to `digest`.
    fn put_blob_bytes(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            return Ok(());
        }
        let actual = Digest::of(data);
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                image: "(store)".into(),
                what: "blob".into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            }
            .into());
        }
        let tmp = self.tmp_path(digest.hex());
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, data)?;
            f.sync_all()
        };
        write().map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err("renaming into place", &dest))?;
        fsync_dir(dest.parent().expect("blob path has a parent"))
    }

    /// Pull `r` with a client built from `opts`. See [`ImageStore::pull_with`].
    pub async fn pull(
        &self,
        r: &Reference,
        opts: &ClientOptions,
        progress: impl Fn(PullEvent) + Send + Sync,
    ) -> Result<PulledImage, StoreError> {
        let client = RegistryClient::new(opts.clone())?;
        self.pull_with(&client, r, &progress).await
    }

    /// Pull `r`: resolve it, download and verify missing layers, unpack each layer once,
    /// record the image. A pinned reference already in the store needs no network; a
    /// tag costs one manifest request when the image is already here.
    #[instrument(skip_all, fields(image = %r))]
    pub async fn pull_with(
        &self,
        client: &RegistryClient,
        r: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<PulledImage, StoreError> {
        let _gc = self.gc_lock_shared().await?;
        if let Some(d) = r.digest() {
            if let Some(img) = self.get(d)? {
                self.touch(d);
                progress(PullEvent::Cached {
                    manifest_digest: d.clone(),
                });
                return Ok(img);
            }
        }
        let fetched = client.fetch_manifest(r).await?;
        let manifest_digest = fetched.digest.clone();
        if let Some(img) = self.get(&manifest_digest)? {
            self.touch(&manifest_digest);
            progress(PullEvent::Cached { manifest_digest });
            return Ok(img);
        }
        let (config, config_bytes) = client.fetch_config(r, &fetched.manifest).await?;
        let layers = fetched.manifest.layers.clone();
        progress(PullEvent::Resolved {
            manifest_digest: manifest_digest.clone(),
            layers: layers.len(),
            total_bytes: layers.iter().map(|l| l.size).sum(),
        });
        let pinned = r.pinned(manifest_digest.clone());
        // The futures are built eagerly (not in a `Stream::map` closure over `&Descriptor`,
        // whose higher-ranked lifetime made the whole pull future not `Send`).
        // Downloads run `concurrency` at a time; each layer is unpacked, in order, as soon
        // as it and every layer below it are in, because a layer is unpacked on top of the
        // snapshots below it (implicit parent directories take their attributes).
        let pending: Vec<_> = layers
            .iter()
            .map(|l| self.fetch_layer(client, &pinned, l, progress))
            .collect();
        let (fetched_tx, mut fetched_rx) = futures::channel::mpsc::unbounded::<()>();
        let downloads = futures::stream::iter(pending)
            .buffered(self.concurrency)
            .try_for_each(move |()| {
                // `buffered` yields in order: the n-th message means layer n is here.
                let _ = fetched_tx.unbounded_send(());
                futures::future::ready(Ok(()))
            });
        let unpacks = async {
            let mut dirs: Vec<PathBuf> = Vec::with_capacity(layers.len());
            for l in &layers {
                if fetched_rx.next().await.is_none() {
                    // The downloads failed: their error is what the pull returns.
                    break;
                }
                let dir = self
                    .ensure_layer(client, &pinned, l, &dirs, progress)
                    .await?;
                dirs.push(dir);
            }
            Ok::<_, StoreError>(dirs)
        };
        let ((), snapshot_dirs) = futures::future::try_join(downloads, unpacks).await?;
        // Manifest and config blobs only once every layer is in: a failed pull leaves no
        // blob of its own behind (a resumable partial download aside).
        self.put_blob_bytes(&manifest_digest, &fetched.bytes)?;
        self.put_blob_bytes(&fetched.manifest.config.digest, &config_bytes)?;
        let rec = ImageRecord {
            reference: pinned.clone(),
            manifest_digest: manifest_digest.clone(),
            config_digest: fetched.manifest.config.digest.clone(),
            config: config.clone(),
            layers: layers.clone(),
        };
        let json = serde_json::to_vec_pretty(&rec).expect("image record serializes");
        let tmp = self.tmp_path("record");
        let path = self.record_path(&manifest_digest);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &json)?;
            f.sync_all()
        };
        write().map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        fsync_dir(&self.root.join("images"))?;
        info!(digest = %manifest_digest, layers = layers.len(), "image pulled");
        progress(PullEvent::Done {
            manifest_digest: manifest_digest.clone(),
        });
        Ok(PulledImage {
            reference: pinned,
            manifest_digest,
            config,
            layers,
            snapshot_dirs,
        })
    }

    /// Make sure the blob of layer `desc` is here, unless its snapshot already is.
    async fn fetch_layer(
        &self,
        client: &RegistryClient,
        r: &Reference,
        desc: &Descriptor,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(), StoreError> {
        let snap = self.snapshot_path(&desc.digest);
        if snap.is_dir() {
            return Ok(());
        }
        let _lock = self.lock(&desc.digest).await?;
        let blob = self.blob_path(&desc.digest);
        if !snap.is_dir() && !blob.exists() {
            self.download(client, r, desc, &blob, progress).await?;
        }
        Ok(())
    }

    /// Make sure layer `desc` is unpacked on top of `lowers` (the snapshots of the layers
    /// below it, bottom first); returns its snapshot directory.
    async fn ensure_layer(
        &self,
        client: &RegistryClient,
        r: &Reference,
        desc: &Descriptor,
        lowers: &[PathBuf],
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<PathBuf, StoreError> {
        let snap = self.snapshot_path(&desc.digest);
        if snap.is_dir() {
            progress(PullEvent::LayerCached {
                digest: desc.digest.clone(),
            });
            return Ok(snap);
        }
        let _lock = self.lock(&desc.digest).await?;
        if snap.is_dir() {
            // Another pull finished it while we waited for the lock.
            progress(PullEvent::LayerCached {
                digest: desc.digest.clone(),
            });
            return Ok(snap);
        }
        let blob = self.blob_path(&desc.digest);
        if !blob.exists() {
            self.download(client, r, desc, &blob, progress).await?;
        }
        let tmp = self.tmp_path(&format!("snap-{}", desc.digest.hex()));
        let limits = self.limits;
        let (snap2, blob2, tmp2) = (snap.clone(), blob.clone(), tmp.clone());
        let lowers = lowers.to_vec();
        let image = r.to_string();
        let layer = desc.digest.clone();
        let stats = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            fs::create_dir(&tmp2).map_err(io_err("creating", &tmp2))?;
            let result = (|| {
                let f = File::open(&blob2).map_err(io_err("opening", &blob2))?;
                let stats = unpack_layer_onto(f, &tmp2, &lowers, &limits).map_err(|source| {
                    StoreError::Unpack {
                        image,
                        layer,
                        source,
                    }
                })?;
                let dir = File::open(&tmp2).map_err(io_err("opening", &tmp2))?;
                // One syncfs flushes every file of the snapshot before it becomes visible.
                nix::unistd::syncfs(dir.as_raw_fd())
                    .map_err(|e| io_err("syncing", &tmp2)(e.into()))?;
                fs::rename(&tmp2, &snap2).map_err(io_err("renaming into place", &snap2))?;
                fsync_dir(snap2.parent().expect("snapshot has a parent"))?;
                Ok(stats.entries)
            })();
            if let Err(e) = &result {
                let _ = fs::remove_dir_all(&tmp2);
                if matches!(e, StoreError::Unpack { .. }) {
                    // The blob is verified but cannot be unpacked: it is of no use to anyone.
                    let _ = fs::remove_file(&blob2);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        debug!(layer = %desc.digest, entries = stats, "layer unpacked");
        progress(PullEvent::LayerUnpacked {
            digest: desc.digest.clone(),
            entries: stats,
        });
        Ok(snap)
    }

    async fn download(
        &self,
        client: &RegistryClient,
        r: &Reference,
        desc: &Descriptor,
        blob: &Path,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(), StoreError> {
        progress(PullEvent::LayerDownloading {
            digest: desc.digest.clone(),
            size: desc.size,
        });
        // Kept across failed pulls (and restarts) so the next pull resumes it; only ever
        // touched under this digest's lock.
        let partial = self.partial_path(&desc.digest);
        let next_report = AtomicU64::new(PROGRESS_STEP);
        let on_bytes = |n: u64| {
            if n >= next_report.load(Ordering::Relaxed) {
                next_report.store(n + PROGRESS_STEP, Ordering::Relaxed);
                progress(PullEvent::LayerProgress {
                    digest: desc.digest.clone(),
                    downloaded: n,
                    size: desc.size,
                });
            }
        };
        client
            .download_blob_to(r, desc, &partial, &on_bytes)
            .await?;
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", &partial))?;
        fs::rename(&partial, blob).map_err(io_err("renaming into place", blob))?;
        fsync_dir(blob.parent().expect("blob path has a parent"))?;
        progress(PullEvent::LayerDownloaded {
            digest: desc.digest.clone(),
            size: desc.size,
        });
        Ok(())
    }

    /// Every image recorded in the store.
    pub fn list(&self) -> Result<Vec<PulledImage>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let name = e.file_name();
            let Some(hex) = Path::new(&name)
                .file_stem()
                .and_then(OsStr::to_str)
                .filter(|_| Path::new(&name).extension() == Some(OsStr::new("json")))
            else {
                continue;
            };
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            if let Some(img) = self.get(&d)? {
                out.push(img);
            }
        }
        Ok(out)
    }
}
