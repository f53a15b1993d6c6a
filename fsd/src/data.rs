//! File data as fixed-size chunks in an object store.
//!
//! Chunk `i` of inode `ino` in volume `v` is the object `volumes/<v>/chunks/<ino>/<i>`
//! and holds bytes `[i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)` of the file; a missing or
//! short chunk reads as zeros up to the file size (holes). Writes land in per-inode
//! dirty chunk buffers in memory; [`InodeData::flush`] (called by `Fsync`, on memory
//! pressure and before truncation) writes them to the store, and only then does an
//! fsync return. The file size lives in the metadata store, never here: callers pass it
//! in. Callers hold an inode's [`InodeData`] lock across the data and the metadata
//! update of one operation, so writes, truncation and reads of one inode are ordered.

mod cache;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::error::{FsError, FsResult};
use cache::ChunkCache;

/// Bytes per chunk object.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// An inode with more dirty chunks than this is flushed during the write.
const MAX_DIRTY_CHUNKS: usize = 8;
/// When all inodes together hold more dirty chunks than this (256 MiB), a write
/// flushes its inode before returning.
const MAX_TOTAL_DIRTY_CHUNKS: usize = 64;
/// Chunks kept in the clean read cache (shared by all inodes).
const CACHE_CHUNKS: usize = 16;
/// Concurrent object uploads of one flush.
const UPLOAD_PARALLELISM: usize = 4;

type InodeKey = (String, u64);

/// The chunk store of all volumes.
pub struct ChunkStore {
    store: Arc<dyn ObjectStore>,
    inodes: Mutex<HashMap<InodeKey, Arc<AsyncMutex<InodeState>>>>,
    cache: Arc<ChunkCache>,
    dirty_total: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

/// Dirty chunks of one inode, by chunk index.
#[derive(Debug, Default)]
struct InodeState {
    dirty: BTreeMap<u64, Vec<u8>>,
    /// How many of `dirty` are counted in the store-wide total.
    counted: usize,
}

/// Exclusive access to one inode's data while an operation runs.
pub struct InodeData {
    volume: String,
    ino: u64,
    state: OwnedMutexGuard<InodeState>,
    store: Arc<dyn ObjectStore>,
    cache: Arc<ChunkCache>,
    dirty_total: Arc<AtomicUsize>,
}

fn chunk_prefix(volume: &str, ino: u64) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/chunks/{ino}"))
}

fn chunk_path(volume: &str, ino: u64, index: u64) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/chunks/{ino}/{index}"))
}

impl ChunkStore {
    /// A chunk store over `store` (a local directory today, S3 next).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            inodes: Mutex::new(HashMap::new()),
            cache: Arc::new(ChunkCache::new(CACHE_CHUNKS)),
            dirty_total: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Dirty chunks held in memory by all inodes (as of the last finished operation).
    pub fn dirty_chunks(&self) -> usize {
        self.dirty_total.load(Ordering::Relaxed)
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
                        || cell.try_lock().map(|s| !s.dirty.is_empty()).unwrap_or(true)
                });
            }
            inodes.entry((volume.to_string(), ino)).or_default().clone()
        };
        InodeData {
            volume: volume.to_string(),
            ino,
            state: cell.lock_owned().await,
            store: self.store.clone(),
            cache: self.cache.clone(),
            dirty_total: self.dirty_total.clone(),
        }
    }
}

impl InodeData {
    /// Chunks of this inode waiting to be written to the store.
    pub fn dirty_chunks(&self) -> usize {
        self.state.dirty.len()
    }

    /// Reads up to `len` bytes at `offset` of a file of `size` bytes.
    pub async fn read(&mut self, size: u64, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = size.min(offset + u64::from(len));
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
                None => {
                    let whole = self.load(index).await?;
                    whole.slice(in_chunk.min(whole.len())..(in_chunk + take).min(whole.len()))
                }
            };
            out.extend_from_slice(&chunk);
            // Holes and short chunks read as zeros up to the file size.
            out.resize(out.len() + take - chunk.len(), 0);
            pos += take as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` into dirty chunks; `size` is the file size before.
    /// Flushes when too many chunks are dirty.
    pub async fn write(&mut self, size: u64, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::TooLarge {
                max: i64::MAX as u64,
            })?;
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK_SIZE;
            let in_chunk = (pos % CHUNK_SIZE) as usize;
            let take = (((index + 1) * CHUNK_SIZE).min(end) - pos) as usize;
            if !self.state.dirty.contains_key(&index) {
                // Only chunks that hold data before the write need reading first.
                let base = if index * CHUNK_SIZE < size {
                    self.load(index).await?.to_vec()
                } else {
                    Vec::new()
                };
                self.cache.remove(&self.volume, self.ino, index);
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
            pos += take as u64;
        }
        let uncounted = self.state.dirty.len().saturating_sub(self.state.counted);
        let total = self.dirty_total.load(Ordering::Relaxed) + uncounted;
        if self.state.dirty.len() > MAX_DIRTY_CHUNKS || total > MAX_TOTAL_DIRTY_CHUNKS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every dirty chunk to the object store. On failure the chunks not yet
    /// written stay dirty and the error is returned.
    pub async fn flush(&mut self) -> FsResult<()> {
        if self.state.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.state.dirty);
        let uploads = dirty.into_iter().map(|(index, buf)| {
            let store = self.store.clone();
            let path = chunk_path(&self.volume, self.ino, index);
            let bytes = Bytes::from(buf);
            async move {
                let result = store.put(&path, PutPayload::from(bytes.clone())).await;
                (index, bytes, result)
            }
        });
        let results: Vec<_> = futures::stream::iter(uploads)
            .buffer_unordered(UPLOAD_PARALLELISM)
            .collect()
            .await;
        let mut first_error = None;
        for (index, bytes, result) in results {
            match result {
                Ok(_) => self.cache.insert(&self.volume, self.ino, index, bytes),
                Err(err) => {
                    self.state.dirty.insert(index, bytes.to_vec());
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }

    /// Changes the file size from `old` to `new`: drops chunks past the end and cuts
    /// the last one, durably, so bytes past a shrink never reappear after growing.
    pub async fn truncate(&mut self, old: u64, new: u64) -> FsResult<()> {
        if new >= old {
            return Ok(());
        }
        let keep = new.div_ceil(CHUNK_SIZE); // chunks 0..keep survive
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
        self.flush().await?;
        self.delete_objects_from(keep).await
    }

    /// Deletes all data of the inode (its last link went away).
    pub async fn delete_all(&mut self) -> FsResult<()> {
        self.state.dirty.clear();
        self.cache.remove_from(&self.volume, self.ino, 0);
        self.delete_objects_from(0).await
    }

    /// Deletes the chunk objects with index `>= first`.
    async fn delete_objects_from(&self, first: u64) -> FsResult<()> {
        let prefix = chunk_prefix(&self.volume, self.ino);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        for object in objects {
            let index = object
                .location
                .filename()
                .and_then(|name| name.parse::<u64>().ok());
            if index.is_some_and(|i| i >= first) {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(())
    }

    /// A clean chunk from the cache or the store; empty if it does not exist.
    async fn load(&self, index: u64) -> FsResult<Bytes> {
        if let Some(bytes) = self.cache.get(&self.volume, self.ino, index) {
            return Ok(bytes);
        }
        let path = chunk_path(&self.volume, self.ino, index);
        let bytes = match self.store.get(&path).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => Bytes::new(),
            Err(err) => return Err(err.into()),
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
