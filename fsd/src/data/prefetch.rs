//! Read prefetch: while a file is read sequentially, the next chunks are fetched from
//! the object store in parallel, so reading overlaps the store's latency instead of
//! paying one GET per 4 MiB in turn.
//!
//! A read that starts at 0 or near where the previous read of the inode ended counts
//! as sequential and starts GETs of the next [`PREFETCH_CHUNKS`] chunks that are not
//! already cached, dirty, being uploaded or being fetched. GETs are bounded per server
//! by a semaphore of [`MAX_PREFETCH_PER_SERVER`] permits. A prefetch is for one
//! object version: it is dropped when its chunk is written, truncated or deleted, so
//! it can never serve bytes the chunk map no longer points at. A read that needs a
//! chunk being prefetched waits for that GET instead of sending another; a failed
//! prefetch is forgotten and the read fetches the chunk itself (with retries).

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::objects::chunk_path;
use super::{InodeData, CHUNK_SIZE};
use crate::error::FsResult;

/// Chunks fetched ahead of a sequential reader (4 MiB each).
pub const PREFETCH_CHUNKS: u64 = 4;
/// Prefetch GETs all inodes together may have in flight.
pub const MAX_PREFETCH_PER_SERVER: usize = 8;

/// One chunk being fetched ahead of the reader.
#[derive(Debug)]
pub struct Prefetch {
    task: JoinHandle<FsResult<Option<Bytes>>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InodeData {
    /// Called by a read of `[offset, end)` of a file of `size` bytes before it loads
    /// its own chunks: notes where the read ends and, when reads look sequential,
    /// starts fetching the chunks after it.
    pub(super) async fn prefetch_ahead(
        &mut self,
        size: u64,
        offset: u64,
        end: u64,
    ) -> FsResult<()> {
        let sequential = offset == 0
            || self
                .state
                .read_end
                .is_some_and(|e| offset.abs_diff(e) <= CHUNK_SIZE);
        self.state.read_end = Some(end);
        // Prefetches the reader skipped are of no use any more.
        let current = offset / CHUNK_SIZE;
        self.state.prefetch.retain(|index, _| *index >= current);
        if !sequential || end == 0 {
            return Ok(());
        }
        let first = (end - 1) / CHUNK_SIZE + 1;
        let last = size.div_ceil(CHUNK_SIZE).min(first + PREFETCH_CHUNKS);
        for index in first..last {
            if self.state.prefetch.contains_key(&index)
                || self.state.dirty.contains_key(&index)
                || self.state.uploading.contains_key(&index)
                || self.cache.contains(&self.volume, self.ino, index)
            {
                continue;
            }
            let Some(version) = self
                .meta
                .chunk_version(&self.volume, self.ino, index)
                .await?
            else {
                continue; // a hole
            };
            let path = chunk_path(&self.volume, self.ino, index, &version);
            let objects = self.objects.clone();
            let fetches = self.fetches.clone();
            let span = tracing::debug_span!("prefetch", ino = self.ino, index);
            let task = tokio::spawn(
                async move {
                    let _permit = fetches
                        .acquire_owned()
                        .await
                        .expect("the prefetch semaphore is never closed");
                    objects.get_chunk(&path, &version).await
                }
                .instrument(span),
            );
            self.state.prefetch.insert(index, Prefetch { task });
        }
        Ok(())
    }

    /// The chunk fetched ahead for `index`, if a prefetch of it succeeded; it goes
    /// into the cache. `None`: nothing was prefetched or the GET failed.
    pub(super) async fn take_prefetched(&mut self, index: u64) -> Option<Bytes> {
        let mut prefetch = self.state.prefetch.remove(&index)?;
        match (&mut prefetch.task).await {
            Ok(Ok(Some(bytes))) => {
                self.cache
                    .insert(&self.volume, self.ino, index, bytes.clone());
                Some(bytes)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::debug!(index, error = %err, "prefetch failed; reading the chunk again");
                None
            }
            Err(_) => None,
        }
    }
}
