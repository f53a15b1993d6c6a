//! The object store under the volumes: a local directory or an S3-compatible bucket,
//! object names of the layout, and retries of transient failures.
//!
//! Layout of volume `v` (every object is written once and never changed, except the
//! lease):
//! - `volumes/<v>/chunks/<ino>/<idx>.<version>`: bytes `[idx * 4 MiB, ...)` of a file;
//!   a new version is uploaded for every change, and the chunk map in the metadata says
//!   which version is current. A version is `<uuid>-<crc32>`: the CRC-32 of the chunk's
//!   bytes, checked at every read (versions written before it are a bare uuid and are
//!   read unchecked).
//! - `volumes/<v>/journal/<seq>`: a batch of metadata row images (20-digit `seq`).
//! - `volumes/<v>/snapshot/<seq>`: every metadata row, covering segments `..= seq`.
//! - `volumes/<v>/lease`: which server owns the volume (see [`super::lease`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, PutResult, RetryConfig};

use crate::error::{FsError, FsResult};

/// Where the objects live.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A local directory (the embedded default).
    Local(PathBuf),
    /// An S3-compatible bucket. Credentials come from `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (and the other standard `AWS_*` variables).
    S3(S3Config),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:8333`; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Send `If-None-Match` / `If-Match` on lease and journal writes. Turn off for
    /// stores that reject them; ownership then relies on lease timing alone.
    pub conditional_put: bool,
}

/// Why the object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating store directory {path} failed; check permissions")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening object store {what} failed")]
    Open {
        what: String,
        source: object_store::Error,
    },
}

/// An opened object store and how to use it.
#[derive(Debug, Clone)]
pub struct Objects {
    /// Journal segments, snapshots and the lease (S3: payloads signed, so the server
    /// checks every byte of the metadata).
    pub store: Arc<dyn ObjectStore>,
    /// File chunks: the same store, but on S3 with `UNSIGNED-PAYLOAD` (no SHA-256 of
    /// each 4 MiB body, which cost weed and fsd a fifth of a sequential write): the
    /// CRC-32 in each chunk's version is checked at every read instead.
    pub chunks: Arc<dyn ObjectStore>,
    /// Whether `PutMode::Create` / `Update` are honoured.
    pub conditional_put: bool,
    /// How long fsd itself retries a transient failure before giving up.
    pub retry_window: Duration,
}

impl StoreConfig {
    /// Opens the store.
    pub fn open(&self) -> Result<Objects, StoreError> {
        match self {
            StoreConfig::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.clone(),
                    source,
                })?;
                let store =
                    LocalFileSystem::new_with_prefix(dir).map_err(|source| StoreError::Open {
                        what: dir.display().to_string(),
                        source,
                    })?;
                Ok(Objects::new(Arc::new(store), true, Duration::ZERO))
            }
            StoreConfig::S3(s3) => {
                let retry = RetryConfig {
                    max_retries: 8,
                    retry_timeout: Duration::from_secs(30),
                    ..RetryConfig::default()
                };
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry)
                    .with_conditional_put(if s3.conditional_put {
                        S3ConditionalPut::ETagMatch
                    } else {
                        S3ConditionalPut::Disabled
                    });
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let open = |builder: AmazonS3Builder| {
                    builder.build().map_err(|source| StoreError::Open {
                        what: format!("s3 bucket {}", s3.bucket),
                        source,
                    })
                };
                let chunks = open(builder.clone().with_unsigned_payload(true))?;
                let store = open(builder)?;
                Ok(Objects {
                    chunks: Arc::new(chunks),
                    ..Objects::new(
                        Arc::new(store),
                        s3.conditional_put,
                        Duration::from_secs(120),
                    )
                })
            }
        }
    }
}

/// Whether an error may go away by itself (network, server restart, throttling).
fn transient(err: &object_store::Error) -> bool {
    !matches!(
        err,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotImplemented
            | object_store::Error::NotSupported { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

impl Objects {
    /// One store for everything.
    pub fn new(store: Arc<dyn ObjectStore>, conditional_put: bool, retry_window: Duration) -> Self {
        Self {
            chunks: store.clone(),
            store,
            conditional_put,
            retry_window,
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry window closes.
    async fn retry<T, F, Fut>(&self, what: &str, path: &ObjectPath, op: F) -> FsResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let deadline = Instant::now() + self.retry_window;
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if transient(&err) && Instant::now() < deadline => {
                    tracing::warn!(%path, error = %err, "object {what} failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Writes an object (replacing any).
    pub async fn put(&self, path: &ObjectPath, bytes: Bytes) -> FsResult<PutResult> {
        self.retry("put", path, || {
            self.store.put(path, PutPayload::from(bytes.clone()))
        })
        .await
    }

    /// Writes an object that must not exist yet. `Ok(false)` if another object of
    /// that name exists (one with the very same bytes counts as this write's own
    /// earlier, answer-lost attempt: `Ok(true)`). Stores without conditional put get a
    /// check-then-write (racy; see home-semantics.md).
    pub async fn put_new(&self, path: &ObjectPath, bytes: Bytes) -> FsResult<bool> {
        if !self.conditional_put {
            if self.get(path).await?.is_some() {
                return Ok(false);
            }
            self.put(path, bytes).await?;
            return Ok(true);
        }
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let result = self
            .retry("create", path, || {
                self.store
                    .put_opts(path, PutPayload::from(bytes.clone()), opts())
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(FsError::Store(object_store::Error::AlreadyExists { .. }))
            | Err(FsError::Store(object_store::Error::Precondition { .. })) => {
                // A PUT the store applied but whose answer was lost (the S3 server was
                // killed mid-request) is sent again by the retries and then finds its
                // own object. Same bytes: it is ours, the write succeeded.
                let ours = self.get(path).await?.is_some_and(|found| found == bytes);
                if ours {
                    tracing::info!(%path, "create-only put found its own earlier attempt");
                }
                Ok(ours)
            }
            Err(err) => Err(err),
        }
    }

    /// Uploads chunk bytes under `path` (its version from [`chunk_version`]).
    pub async fn put_chunk(&self, path: &ObjectPath, bytes: Bytes) -> FsResult<()> {
        self.retry("put", path, || {
            self.chunks.put(path, PutPayload::from(bytes.clone()))
        })
        .await
        .map(|_| ())
    }

    /// Reads chunk `path` of `version` and checks its CRC-32; `None` if the object does
    /// not exist. A chunk whose bytes do not match is read once more (a flip on the
    /// way), then reported as corrupt: never handed to a reader.
    pub async fn get_chunk(&self, path: &ObjectPath, version: &str) -> FsResult<Option<Bytes>> {
        let want = chunk_crc(version);
        let mut attempt = 0;
        loop {
            let result = self
                .retry("get", path, || async {
                    self.chunks.get(path).await?.bytes().await
                })
                .await;
            let bytes = match result {
                Ok(bytes) => bytes,
                Err(FsError::Store(object_store::Error::NotFound { .. })) => return Ok(None),
                Err(err) => return Err(err),
            };
            let Some(want) = want else {
                return Ok(Some(bytes));
            };
            let got = crc32fast::hash(&bytes);
            if got == want {
                return Ok(Some(bytes));
            }
            attempt += 1;
            tracing::warn!(%path, want, got, len = bytes.len(), attempt, "chunk fails its CRC-32");
            if attempt == 2 {
                return Err(FsError::Corrupt(format!(
                    "chunk object {path} has CRC-32 {got:08x} ({} bytes) but was written \
                     with {want:08x}: the object store changed or lost its bytes; restore \
                     the object from a backup or replica of the bucket",
                    bytes.len()
                )));
            }
        }
    }

    /// Reads a whole object; `None` if it does not exist.
    pub async fn get(&self, path: &ObjectPath) -> FsResult<Option<Bytes>> {
        let result = self
            .retry("get", path, || async {
                self.store.get(path).await?.bytes().await
            })
            .await;
        match result {
            Ok(bytes) => Ok(Some(bytes)),
            Err(FsError::Store(object_store::Error::NotFound { .. })) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Deletes an object; a missing one is fine.
    pub async fn delete(&self, path: &ObjectPath) -> FsResult<()> {
        match self.retry("delete", path, || self.store.delete(path)).await {
            Ok(()) | Err(FsError::Store(object_store::Error::NotFound { .. })) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Sequence numbers of the objects directly under `prefix` named by a number.
    pub async fn list_seqs(&self, prefix: &ObjectPath) -> FsResult<Vec<u64>> {
        let objects: Vec<_> = self
            .retry("list", prefix, || {
                self.store.list(Some(prefix)).try_collect::<Vec<_>>()
            })
            .await?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| o.location.filename()?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }
}

/// The object holding version `version` of chunk `idx` of inode `ino`.
pub fn chunk_path(volume: &str, ino: u64, idx: u64, version: &str) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/chunks/{ino}/{idx}.{version}"))
}

/// The folder of a volume's journal segments.
pub fn journal_prefix(volume: &str) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/journal"))
}

/// Journal segment `seq`.
pub fn journal_path(volume: &str, seq: u64) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/journal/{seq:020}"))
}

/// The folder of a volume's snapshots.
pub fn snapshot_prefix(volume: &str) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/snapshot"))
}

/// The snapshot covering journal segments `..= seq`.
pub fn snapshot_path(volume: &str, seq: u64) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/snapshot/{seq:020}"))
}

/// The volume's lease.
pub fn lease_path(volume: &str) -> ObjectPath {
    ObjectPath::from(format!("volumes/{volume}/lease"))
}

/// A new, never reused version for a chunk of these bytes: `<uuid>-<crc32>`.
pub fn chunk_version(bytes: &[u8]) -> String {
    format!(
        "{}-{:08x}",
        uuid::Uuid::new_v4().simple(),
        crc32fast::hash(bytes)
    )
}

/// The CRC-32 a chunk version was written with (`None`: a version from before CRCs).
fn chunk_crc(version: &str) -> Option<u32> {
    let (_, crc) = version.rsplit_once('-')?;
    (crc.len() == 8)
        .then(|| u32::from_str_radix(crc, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn a_chunk_version_carries_the_crc_of_its_bytes() {
        let version = chunk_version(b"123456789");
        // The CRC-32 (ISO-HDLC) check value of "123456789".
        assert!(version.ends_with("-cbf43926"), "{version}");
        assert_eq!(chunk_crc(&version), Some(0xcbf4_3926));
        assert_ne!(
            chunk_version(b"123456789"),
            version,
            "versions are never reused"
        );
        // Versions written before CRCs are a bare uuid: read unchecked.
        assert_eq!(chunk_crc(&uuid::Uuid::new_v4().simple().to_string()), None);
    }

    #[tokio::test]
    async fn put_new_counts_its_own_earlier_attempt_as_done() {
        let objects = Objects::new(Arc::new(InMemory::new()), true, Duration::ZERO);
        let path = journal_path("v", 7);
        // An earlier attempt the store applied but never answered.
        objects
            .store
            .put(&path, PutPayload::from_static(b"segment 7 of a"))
            .await
            .unwrap();
        let ours = Bytes::from_static(b"segment 7 of a");
        assert!(objects.put_new(&path, ours).await.unwrap());
        // Another server's segment of the same number is a conflict.
        let theirs = Bytes::from_static(b"segment 7 of b");
        assert!(!objects.put_new(&path, theirs).await.unwrap());
        assert!(objects
            .put_new(&journal_path("v", 8), Bytes::from_static(b"8"))
            .await
            .unwrap());
    }
}
