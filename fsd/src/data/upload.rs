//! Write-behind: a file's chunks are uploaded in the background as they fill, so a
//! sequential writer keeps writing while earlier chunks travel to the object store.
//!
//! A chunk leaves the dirty set when it is full (or when the inode or the server
//! holds too many dirty chunks) and becomes an [`Upload`]: a spawned PUT of an
//! immutable, new object version. Uploads are bounded per inode
//! ([`MAX_UPLOADS_PER_INODE`]) and per server (a semaphore of
//! [`MAX_UPLOADS_PER_SERVER`] permits): a write that would exceed either waits for an
//! earlier upload, which is the backpressure on a writer faster than the store.
//!
//! The chunk map only ever points at objects whose PUT finished: finished uploads are
//! recorded by [`InodeData::reap`] under the inode lock (at the next write, and all of
//! them at fsync), so a crash never leaves the metadata referencing a missing object.
//! At most one upload per chunk index is in flight, so versions are recorded in the
//! order they were written. A failed upload puts its bytes back into the dirty set
//! (nothing is dropped) and its error is kept: the next fsync or close of the file
//! returns it (EIO) instead of claiming the data is durable; a later fsync uploads
//! the chunk again.

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::objects::{chunk_path, chunk_version};
use super::InodeData;
use crate::error::{FsError, FsResult};

/// Background uploads one inode may have in flight (4 MiB each).
pub const MAX_UPLOADS_PER_INODE: usize = 8;
/// Background uploads all inodes together may have in flight (4 MiB each).
pub const MAX_UPLOADS_PER_SERVER: usize = 16;

/// One chunk on its way to the object store.
#[derive(Debug)]
pub struct Upload {
    /// The chunk's content, served to reads until the upload is recorded.
    pub bytes: Bytes,
    version: String,
    task: JoinHandle<FsResult<()>>,
    /// The task's output once [`InodeData::reap_one`] waited for it.
    settled: Option<Result<FsResult<()>, tokio::task::JoinError>>,
}

impl Upload {
    fn is_done(&self) -> bool {
        self.settled.is_some() || self.task.is_finished()
    }

    /// Stops the PUT (the object, if it lands, is never referenced).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Which uploads [`InodeData::reap`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Only those already finished; never waits.
    Finished,
    /// All of them, waiting for each.
    All,
}

impl InodeData {
    /// Moves dirty chunk `index` into a background upload. Waits first when this
    /// chunk is already being uploaded (so versions are recorded in order), when the
    /// inode has [`MAX_UPLOADS_PER_INODE`] uploads in flight, or for a server-wide
    /// permit.
    pub(super) async fn start_upload(&mut self, index: u64) -> FsResult<()> {
        if !self.state.dirty.contains_key(&index) {
            return Ok(());
        }
        if self.state.uploading.contains_key(&index) {
            self.reap_one(index).await?;
        }
        while self.state.uploading.len() >= MAX_UPLOADS_PER_INODE {
            let oldest = *self
                .state
                .uploading
                .keys()
                .next()
                .expect("uploading is not empty");
            self.reap_one(oldest).await?;
        }
        let permit = self
            .uploads
            .clone()
            .acquire_owned()
            .await
            .expect("the upload semaphore is never closed");
        let Some(buf) = self.state.dirty.remove(&index) else {
            return Ok(());
        };
        let bytes = Bytes::from(buf);
        let version = chunk_version(&bytes);
        let path = chunk_path(&self.volume, self.ino, index, &version);
        let objects = self.objects.clone();
        let body = bytes.clone();
        let span = tracing::debug_span!("upload", ino = self.ino, index);
        let task = tokio::spawn(
            async move {
                let _permit = permit;
                objects.put_chunk(&path, body).await
            }
            .instrument(span),
        );
        self.state.uploading.insert(
            index,
            Upload {
                bytes,
                version,
                task,
                settled: None,
            },
        );
        Ok(())
    }

    /// Waits for the upload of chunk `index`, then records every finished upload.
    async fn reap_one(&mut self, index: u64) -> FsResult<()> {
        if let Some(upload) = self.state.uploading.get_mut(&index) {
            if upload.settled.is_none() {
                // Keep the output for `reap`, which records it with the others.
                upload.settled = Some((&mut upload.task).await);
            }
        }
        self.reap(Reap::Finished).await
    }

    /// Records finished uploads in the chunk map (one metadata transaction) and puts
    /// the bytes of failed ones back into the dirty set, keeping the first error for
    /// the next fsync. An `Err` here is the metadata store failing; the uploaded
    /// chunks then stay dirty and are uploaded again later.
    pub(super) async fn reap(&mut self, which: Reap) -> FsResult<()> {
        let done: Vec<u64> = self
            .state
            .uploading
            .iter()
            .filter(|(_, u)| which == Reap::All || u.is_done())
            .map(|(index, _)| *index)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        // Wait in place first: if this operation is cancelled meanwhile, every upload
        // is still in the table.
        for index in &done {
            let upload = self
                .state
                .uploading
                .get_mut(index)
                .expect("index listed above");
            if upload.settled.is_none() {
                upload.settled = Some((&mut upload.task).await);
            }
        }
        let mut versions = Vec::with_capacity(done.len());
        let mut uploaded = Vec::with_capacity(done.len());
        for index in done {
            let upload = self
                .state
                .uploading
                .remove(&index)
                .expect("index listed above");
            let joined = upload.settled.expect("settled above");
            let result = joined.unwrap_or_else(|join| {
                Err(FsError::Store(object_store::Error::Generic {
                    store: "fsd write-behind",
                    source: Box::new(join),
                }))
            });
            match result {
                Ok(()) => {
                    versions.push((index, upload.version));
                    uploaded.push((index, upload.bytes));
                }
                Err(err) => {
                    tracing::warn!(
                        volume = self.volume,
                        ino = self.ino,
                        index,
                        error = %err,
                        "background upload of a chunk failed; the next fsync reports it"
                    );
                    self.state
                        .dirty
                        .entry(index)
                        .or_insert_with(|| upload.bytes.to_vec());
                    self.state.failed.get_or_insert(err);
                }
            }
        }
        if versions.is_empty() {
            return Ok(());
        }
        if let Err(err) = self
            .meta
            .set_chunks(&self.volume, self.ino, &versions, None)
            .await
        {
            for (index, bytes) in uploaded {
                self.state
                    .dirty
                    .entry(index)
                    .or_insert_with(|| bytes.to_vec());
            }
            return Err(err);
        }
        for (index, bytes) in uploaded {
            // A newer dirty copy supersedes what was just recorded; only the chunk
            // map's current version may sit in the cache.
            if !self.state.dirty.contains_key(&index) {
                self.cache.insert(&self.volume, self.ino, index, bytes);
            }
        }
        Ok(())
    }

    /// Uploads every dirty chunk, waits for all uploads and records them; returns the
    /// error of a failed upload (now or earlier in the background), with its data
    /// kept dirty.
    pub(super) async fn upload_all(&mut self) -> FsResult<()> {
        let indices: Vec<u64> = self.state.dirty.keys().copied().collect();
        for index in indices {
            self.start_upload(index).await?;
        }
        self.reap(Reap::All).await?;
        match self.state.failed.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
