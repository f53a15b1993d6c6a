//! File data as fixed-size chunks in an object store, and what makes a volume durable
//! there: the metadata journal ([`journal`]) and the volume lease ([`lease`]).
//!
//! Chunk `i` of inode `ino` holds bytes `[i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)` of the
//! file. Objects are immutable: every upload of a chunk gets a new version name
//! (`volumes/<v>/chunks/<ino>/<i>.<version>`, see [`objects`]) and the chunk map in
//! the metadata store says which version is current, so an overwrite never changes an
//! object in place and a crash mid-upload leaves the old version intact. A chunk
//! without a map entry, or a short one, reads as zeros up to the file size (holes).
//! Writes land in per-inode dirty chunk buffers in memory; a chunk that fills up is
//! uploaded in the background ([`upload`], write-behind) and reads ahead of a
//! sequential reader are fetched in parallel ([`prefetch`]). [`InodeData::flush`]
//! (called by `Fsync`) uploads what is still dirty, waits for every upload, points the
//! chunk map at them and commits the metadata journal, and only then does an fsync
//! return. Memory pressure and truncation upload chunks without committing the
//! journal. The file size lives in the metadata
//! store, never here: callers pass it in. Callers hold an inode's [`InodeData`] lock
//! across the data and the metadata update of one operation, so writes, truncation and
//! reads of one inode are ordered.

mod cache;
pub mod journal;
pub mod lease;
pub mod objects;
mod prefetch;
mod upload;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, Semaphore};

use crate::error::{FsError, FsResult};
use crate::meta::MetaStore;
use cache::ChunkCache;
use journal::{Journal, Synced};
use lease::{Acquired, Leases};
use objects::{chunk_path, Objects};
use prefetch::{Prefetch, MAX_PREFETCH_PER_SERVER};
use upload::{Reap, Upload, MAX_UPLOADS_PER_SERVER};

/// Bytes per chunk object.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// An inode with more dirty (partly written) chunks than this starts uploading them
/// during the write.
const MAX_DIRTY_CHUNKS: usize = 8;
/// When all inodes together hold more dirty chunks than this (256 MiB), a write
/// starts uploading its inode's dirty chunks before returning.
const MAX_TOTAL_DIRTY_CHUNKS: usize = 64;
/// A write at least this large into a new chunk allocates the whole chunk at once.
const LARGE_WRITE: usize = 128 << 10;
/// Bytes of clean chunks kept in the read cache (shared by all inodes): 256 MiB.
const CACHE_BYTES: usize = 256 << 20;

type InodeKey = (String, u64);

/// What [`ChunkStore::open_volume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The volume was open and its lease held already.
    Already,
    /// Opened now (first use, restart, lease taken back or over); `existed`: the
    /// volume was not created by this call.
    Now { existed: bool },
}

/// The chunk store of all volumes.
pub struct ChunkStore {
    objects: Objects,
    meta: Arc<MetaStore>,
    journal: Arc<Journal>,
    /// `None`: this server owns every volume it is asked about (one server per store).
    leases: Option<Arc<Leases>>,
    /// Volumes whose lease is held and whose local copy is in sync.
    opened: Mutex<std::collections::HashSet<String>>,
    open_lock: AsyncMutex<()>,
    inodes: Mutex<HashMap<InodeKey, Arc<AsyncMutex<InodeState>>>>,
    cache: Arc<ChunkCache>,
    dirty_total: Arc<AtomicUsize>,
    /// Permits for background chunk uploads of all inodes.
    uploads: Arc<Semaphore>,
    /// Permits for prefetch GETs of all inodes.
    fetches: Arc<Semaphore>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("store", &self.objects.store.to_string())
            .finish_non_exhaustive()
    }
}

/// In-memory data of one inode: dirty chunks, uploads and prefetches, by chunk index.
#[derive(Debug, Default)]
struct InodeState {
    dirty: BTreeMap<u64, Vec<u8>>,
    /// How many of `dirty` are counted in the store-wide total.
    counted: usize,
    /// Chunks being uploaded in the background (write-behind), at most one per index.
    uploading: BTreeMap<u64, Upload>,
    /// The first background upload failure not yet reported by a flush.
    failed: Option<FsError>,
    /// Where the last read ended (to tell sequential readers).
    read_end: Option<u64>,
    /// Chunks being fetched ahead of a sequential reader.
    prefetch: BTreeMap<u64, Prefetch>,
}

impl InodeState {
    /// Whether dropping this state would lose data or an error not yet reported.
    fn holds_data(&self) -> bool {
        !self.dirty.is_empty() || !self.uploading.is_empty() || self.failed.is_some()
    }

    /// Forgets everything in flight and dirty (the data is gone or was replaced).
    fn discard(&mut self) {
        self.dirty.clear();
        for upload in self.uploading.values() {
            upload.abort();
        }
        self.uploading.clear();
        self.failed = None;
        self.prefetch.clear();
        self.read_end = None;
    }
}

/// Exclusive access to one inode's data while an operation runs.
pub struct InodeData {
    volume: String,
    ino: u64,
    state: OwnedMutexGuard<InodeState>,
    objects: Objects,
    meta: Arc<MetaStore>,
    journal: Arc<Journal>,
    cache: Arc<ChunkCache>,
    dirty_total: Arc<AtomicUsize>,
    uploads: Arc<Semaphore>,
    fetches: Arc<Semaphore>,
}

impl ChunkStore {
    /// A chunk store over `objects`, keeping its chunk map and journal through `meta`.
    /// With `leases`, a volume is served only while this server holds its lease.
    pub fn new(objects: Objects, meta: Arc<MetaStore>, leases: Option<Arc<Leases>>) -> Self {
        Self {
            journal: Arc::new(Journal::new(objects.clone(), meta.clone())),
            objects,
            meta,
            leases,
            opened: Mutex::new(std::collections::HashSet::new()),
            open_lock: AsyncMutex::new(()),
            inodes: Mutex::new(HashMap::new()),
            cache: Arc::new(ChunkCache::new(CACHE_BYTES)),
            dirty_total: Arc::new(AtomicUsize::new(0)),
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS_PER_SERVER)),
            fetches: Arc::new(Semaphore::new(MAX_PREFETCH_PER_SERVER)),
        }
    }

    /// Dirty chunks held in memory by all inodes (as of the last finished operation).
    pub fn dirty_chunks(&self) -> usize {
        self.dirty_total.load(Ordering::Relaxed)
    }

    /// Makes `volume` ready to serve: holds its lease (or answers `Unavailable`),
    /// brings the local metadata up to date with the object store when the lease was
    /// just taken, and creates the volume on first use. Cheap when already open.
    pub async fn open_volume(&self, volume: &str) -> FsResult<Opened> {
        let held = self.leases.as_ref().is_none_or(|l| l.is_held(volume));
        if held && self.is_open(volume) {
            return Ok(Opened::Already);
        }
        let _guard = self.open_lock.lock().await;
        if let Some(leases) = &self.leases {
            if leases.acquire(volume).await? == Acquired::New {
                self.opened
                    .lock()
                    .expect("open set poisoned")
                    .remove(volume);
            }
        }
        if self.is_open(volume) {
            return Ok(Opened::Already);
        }
        if self.journal.sync_from_store(volume).await? == Synced::Rebuilt {
            self.forget_volume(volume).await;
        }
        let created = self.meta.ensure_volume(volume).await?;
        self.opened
            .lock()
            .expect("open set poisoned")
            .insert(volume.to_string());
        Ok(Opened::Now { existed: !created })
    }

    /// Whether this server may serve `volume` now (holds its lease, when leased).
    pub fn serves(&self, volume: &str) -> bool {
        self.leases.as_ref().is_none_or(|l| l.is_held(volume)) && self.is_open(volume)
    }

    fn is_open(&self, volume: &str) -> bool {
        self.opened
            .lock()
            .expect("open set poisoned")
            .contains(volume)
    }

    /// Drops in-memory data of a volume whose metadata was replaced from the store.
    async fn forget_volume(&self, volume: &str) {
        let cells: Vec<_> = self
            .inodes
            .lock()
            .expect("inode table lock poisoned")
            .iter()
            .filter(|((v, _), _)| v == volume)
            .map(|(_, cell)| cell.clone())
            .collect();
        for cell in cells {
            let mut state = cell.lock().await;
            let was = state.counted;
            state.discard();
            state.counted = 0;
            self.dirty_total.fetch_sub(was, Ordering::Relaxed);
        }
        self.cache.remove_volume(volume);
    }

    /// Makes every metadata change of `volume` durable in the object store.
    pub async fn sync_volume(&self, volume: &str) -> FsResult<()> {
        self.journal.commit(volume).await
    }

    /// Commits the journal of every open volume and lets go of their leases (clean
    /// shutdown), so another server can take them over at once.
    pub async fn shutdown(&self) {
        let volumes: Vec<String> = self
            .opened
            .lock()
            .expect("open set poisoned")
            .drain()
            .collect();
        for volume in &volumes {
            if let Err(err) = self.journal.commit(volume).await {
                tracing::error!(volume, error = %err, "committing the journal at shutdown failed");
            }
        }
        if let Some(leases) = &self.leases {
            leases.release_all().await;
        }
    }

    /// Locks one inode's data. Hold the guard across the whole operation.
    pub async fn lock(&self, volume: &str, ino: u64) -> InodeData {
        let cell = {
            let mut inodes = self.inodes.lock().expect("inode table lock poisoned");
            // Drop entries no operation holds and with nothing dirty, so the table
            // tracks only inodes in use.
            if inodes.len() > 1024 {
                inodes.retain(|_, cell| {
                    Arc::strong_count(cell) > 1
                        || cell.try_lock().map(|s| s.holds_data()).unwrap_or(true)
                });
            }
            inodes.entry((volume.to_string(), ino)).or_default().clone()
        };
        InodeData {
            volume: volume.to_string(),
            ino,
            state: cell.lock_owned().await,
            objects: self.objects.clone(),
            meta: self.meta.clone(),
            journal: self.journal.clone(),
            cache: self.cache.clone(),
            dirty_total: self.dirty_total.clone(),
            uploads: self.uploads.clone(),
            fetches: self.fetches.clone(),
        }
    }
}

impl InodeData {
    /// Chunks of this inode waiting to be written to the store.
    pub fn dirty_chunks(&self) -> usize {
        self.state.dirty.len()
    }

    /// Reads up to `len` bytes at `offset` of a file of `size` bytes.
    pub async fn read(&mut self, size: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        if offset >= size {
            return Ok(Bytes::new());
        }
        let end = size.min(offset + u64::from(len));
        self.prefetch_ahead(size, offset, end).await?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_SIZE;
            let in_chunk = (pos % CHUNK_SIZE) as usize;
            let take = ((index + 1) * CHUNK_SIZE).min(end) - pos;
            let take = take as usize;
            let chunk: Bytes = match self.state.dirty.get(&index) {
                Some(buf) => Bytes::copy_from_slice(
                    &buf[in_chunk.min(buf.len())..(in_chunk + take).min(buf.len())],
                ),
                None if self.state.uploading.contains_key(&index) => {
                    let whole = &self.state.uploading[&index].bytes;
                    whole.slice(in_chunk.min(whole.len())..(in_chunk + take).min(whole.len()))
                }
                None => {
                    let whole = self.load(index).await?;
                    whole.slice(in_chunk.min(whole.len())..(in_chunk + take).min(whole.len()))
                }
            };
            if pos == offset && chunk.len() == take && pos + take as u64 == end {
                // All of it in one chunk (a read that does not cross a chunk
                // boundary): a slice of the chunk, no copy.
                return Ok(chunk);
            }
            out.extend_from_slice(&chunk);
            // Holes and short chunks read as zeros up to the file size.
            out.resize(out.len() + take - chunk.len(), 0);
            pos += take as u64;
        }
        Ok(out.into())
    }

    /// Writes `data` at `offset` into dirty chunks; `size` is the file size before.
    /// Chunks this write fills up start uploading in the background; when too many
    /// chunks are dirty, all of them do. Waits only when too many uploads are in
    /// flight (backpressure).
    pub async fn write(&mut self, size: u64, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::TooLarge {
                max: i64::MAX as u64,
            })?;
        self.reap(Reap::Finished).await?;
        let mut filled = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_SIZE;
            let in_chunk = (pos % CHUNK_SIZE) as usize;
            let take = (((index + 1) * CHUNK_SIZE).min(end) - pos) as usize;
            if !self.state.dirty.contains_key(&index) {
                // Only chunks that hold data before the write need reading first.
                let base = if let Some(upload) = self.state.uploading.get(&index) {
                    upload.bytes.to_vec()
                } else if index * CHUNK_SIZE < size {
                    self.load(index).await?.to_vec()
                } else if data.len() >= LARGE_WRITE {
                    // A large writer will likely fill the chunk: grow it once, not
                    // by copying it at every write.
                    Vec::with_capacity(CHUNK_SIZE as usize)
                } else {
                    Vec::new()
                };
                self.cache.remove(&self.volume, self.ino, index);
                self.state.prefetch.remove(&index);
                self.state.dirty.insert(index, base);
            }
            let buf = self
                .state
                .dirty
                .get_mut(&index)
                .expect("dirty chunk inserted above");
            if buf.len() < in_chunk + take {
                buf.resize(in_chunk + take, 0);
            }
            let src = (pos - offset) as usize;
            buf[in_chunk..in_chunk + take].copy_from_slice(&data[src..src + take]);
            if in_chunk + take == CHUNK_SIZE as usize && buf.len() == CHUNK_SIZE as usize {
                filled.push(index);
            }
            pos += take as u64;
        }
        for index in filled {
            self.start_upload(index).await?;
        }
        let uncounted = self.state.dirty.len().saturating_sub(self.state.counted);
        let total = self.dirty_total.load(Ordering::Relaxed) + uncounted;
        if self.state.dirty.len() > MAX_DIRTY_CHUNKS || total > MAX_TOTAL_DIRTY_CHUNKS {
            let indices: Vec<u64> = self.state.dirty.keys().copied().collect();
            for index in indices {
                self.start_upload(index).await?;
            }
        }
        Ok(())
    }

    /// Makes the inode durable: uploads its dirty chunks, waits for its background
    /// uploads, points the chunk map at them and commits the volume's metadata
    /// journal (which covers every metadata change so far, this inode's included). A
    /// background upload that failed since the last flush fails this one (its data is
    /// kept dirty for the next attempt).
    pub async fn flush(&mut self) -> FsResult<()> {
        self.upload_all().await?;
        self.journal.commit(&self.volume).await
    }

    /// Changes the file size from `old` to `new`: drops chunks past the end and cuts
    /// the last one, in the chunk map, so bytes past a shrink never reappear after
    /// growing. Durable with the next journal commit, like the size change itself.
    pub async fn truncate(&mut self, old: u64, new: u64) -> FsResult<()> {
        if new >= old {
            return Ok(());
        }
        let keep = new.div_ceil(CHUNK_SIZE); // chunks 0..keep survive
                                             // Uploads past the end are recorded and then dropped with the rest below.
        self.reap(Reap::All).await?;
        self.state.prefetch.clear();
        self.state.dirty.retain(|&index, _| index < keep);
        let cut = (new % CHUNK_SIZE) as usize;
        if cut > 0 {
            let last = new / CHUNK_SIZE;
            if !self.state.dirty.contains_key(&last) {
                let base = self.load(last).await?.to_vec();
                self.state.dirty.insert(last, base);
            }
            if let Some(buf) = self.state.dirty.get_mut(&last) {
                buf.truncate(cut);
            }
        }
        self.cache
            .remove_from(&self.volume, self.ino, keep.saturating_sub(1));
        let indices: Vec<u64> = self.state.dirty.keys().copied().collect();
        for index in indices {
            self.start_upload(index).await?;
        }
        self.reap(Reap::All).await?;
        if self.state.failed.is_some() {
            // The error itself stays for the next fsync, which must report it.
            return Err(FsError::Store(object_store::Error::Generic {
                store: "fsd write-behind",
                source: "uploading a chunk of this file failed; its data is kept for a retry"
                    .into(),
            }));
        }
        self.meta
            .set_chunks(&self.volume, self.ino, &[], Some(keep))
            .await
    }

    /// Drops the in-memory data of an inode whose last link went away. Its objects
    /// are deleted once the journal no longer references them (the metadata store
    /// moved its chunk map entries to the garbage list with the inode).
    pub async fn delete_all(&mut self) -> FsResult<()> {
        // Uploads that finish are recorded as garbage (the inode is gone).
        if let Err(err) = self.reap(Reap::All).await {
            tracing::warn!(ino = self.ino, error = %err, "recording uploads of a deleted file failed");
        }
        self.state.discard();
        self.cache.remove_from(&self.volume, self.ino, 0);
        Ok(())
    }

    /// A clean chunk from the cache, a prefetch or the store; empty if it was never
    /// stored.
    async fn load(&mut self, index: u64) -> FsResult<Bytes> {
        if let Some(bytes) = self.cache.get(&self.volume, self.ino, index) {
            return Ok(bytes);
        }
        if let Some(bytes) = self.take_prefetched(index).await {
            return Ok(bytes);
        }
        let Some(version) = self
            .meta
            .chunk_version(&self.volume, self.ino, index)
            .await?
        else {
            return Ok(Bytes::new());
        };
        let path = chunk_path(&self.volume, self.ino, index, &version);
        let Some(bytes) = self.objects.get_chunk(&path, &version).await? else {
            // Deleted with its inode while this operation ran, or lost from the store.
            self.meta.get_attr(&self.volume, self.ino).await?;
            return Err(FsError::Corrupt(format!(
                "chunk object {path} of a live file is missing from the object store"
            )));
        };
        self.cache
            .insert(&self.volume, self.ino, index, bytes.clone());
        Ok(bytes)
    }
}

impl Drop for InodeData {
    /// Brings the store-wide dirty count up to date, whatever the operation did.
    fn drop(&mut self) {
        let now = self.state.dirty.len();
        let before = std::mem::replace(&mut self.state.counted, now);
        if now > before {
            self.dirty_total.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.dirty_total.fetch_sub(before - now, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_io;
