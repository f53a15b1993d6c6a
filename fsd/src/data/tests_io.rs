//! Tests of write-behind, read prefetch and group commit, over a real local directory
//! wrapped in [`FaultyStore`], which counts requests and fails chunk PUTs on demand.

use std::sync::atomic::AtomicBool;

use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::*;
use objects::StoreConfig;

/// A real store that can be told to fail chunk uploads, and counts GETs of chunks and
/// PUTs of journal segments.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fail_chunk_puts: AtomicBool,
    failed_puts: AtomicUsize,
    chunk_gets: AtomicUsize,
    chunk_puts: AtomicUsize,
    segment_puts: AtomicUsize,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn is_chunk(location: &ObjectPath) -> bool {
    location.as_ref().contains("/chunks/")
}

#[tonic::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if is_chunk(location) {
            if self.fail_chunk_puts.load(Ordering::SeqCst) {
                self.failed_puts.fetch_add(1, Ordering::SeqCst);
                return Err(object_store::Error::PermissionDenied {
                    path: location.to_string(),
                    source: "injected upload failure".into(),
                });
            }
            self.chunk_puts.fetch_add(1, Ordering::SeqCst);
        }
        if location.as_ref().contains("/journal/") {
            self.segment_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if is_chunk(location) {
            self.chunk_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<FaultyStore>,
    objects: Objects,
    meta: Arc<MetaStore>,
    chunks: ChunkStore,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("creating temp dir");
    let real = StoreConfig::Local(dir.path().join("store"))
        .open()
        .expect("opening local store");
    let store = Arc::new(FaultyStore {
        inner: real.store.clone(),
        fail_chunk_puts: AtomicBool::new(false),
        failed_puts: AtomicUsize::new(0),
        chunk_gets: AtomicUsize::new(0),
        chunk_puts: AtomicUsize::new(0),
        segment_puts: AtomicUsize::new(0),
    });
    let objects = Objects {
        store: store.clone(),
        chunks: store.clone(),
        ..real
    };
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("creating state dir");
    let meta = Arc::new(MetaStore::open(&state).await.expect("opening metadata"));
    let chunks = ChunkStore::new(objects.clone(), meta.clone(), None);
    chunks.open_volume("v").await.expect("opening volume");
    Fixture {
        dir,
        store,
        objects,
        meta,
        chunks,
    }
}

impl Fixture {
    async fn file(&self, name: &str) -> u64 {
        super::tests::create_file(&self.meta, name).await
    }

    /// Writes `data` from offset 0 in 1 MiB writes, as the FUSE client does, keeping
    /// the file size in the metadata.
    async fn write_file(&self, inode: &mut InodeData, ino: u64, data: &[u8]) {
        let mut size = 0;
        for piece in data.chunks(1 << 20) {
            inode.write(size, size, piece).await.expect("writing");
            size += piece.len() as u64;
            self.meta.note_write("v", ino, size).await.expect("size");
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(17) ^ (i >> 20) as u8 ^ seed)
        .collect()
}

#[tokio::test]
async fn full_chunks_upload_in_the_background_before_fsync() {
    let f = fixture().await;
    let ino = f.file("seq").await;
    let data = pattern((3 * CHUNK_SIZE + 100) as usize, 1);
    let mut inode = f.chunks.lock("v", ino).await;
    f.write_file(&mut inode, ino, &data).await;
    assert_eq!(
        inode.dirty_chunks(),
        1,
        "only the partial last chunk stays dirty"
    );
    // The three full chunks reach the store without an fsync.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.store.chunk_puts.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline, "no background upload");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Reads see every byte meanwhile, from memory.
    let size = data.len() as u64;
    assert!(inode.read(size, 0, size as u32).await.unwrap() == data);
    inode.flush().await.unwrap();
    drop(inode);
    assert_eq!(f.store.chunk_puts.load(Ordering::SeqCst), 4);
    // A fresh chunk store reads it all from the objects.
    let cold = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
    let mut inode = cold.lock("v", ino).await;
    assert!(inode.read(size, 0, size as u32).await.unwrap() == data);
}

#[tokio::test]
async fn a_failed_background_upload_fails_the_next_fsync_and_keeps_the_data() {
    let f = fixture().await;
    let ino = f.file("bad").await;
    let data = pattern((2 * CHUNK_SIZE + 5) as usize, 2);
    let size = data.len() as u64;
    f.store.fail_chunk_puts.store(true, Ordering::SeqCst);
    let mut inode = f.chunks.lock("v", ino).await;
    f.write_file(&mut inode, ino, &data).await;
    let err = inode
        .flush()
        .await
        .expect_err("fsync after a failed upload");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // Nothing was dropped: the data is still readable, and uploaded by a later fsync
    // once the store works again.
    assert!(inode.read(size, 0, size as u32).await.unwrap() == data);
    f.store.fail_chunk_puts.store(false, Ordering::SeqCst);
    inode.flush().await.expect("fsync once the store is back");
    drop(inode);
    let cold = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
    let mut inode = cold.lock("v", ino).await;
    assert!(inode.read(size, 0, size as u32).await.unwrap() == data);
}

#[tokio::test]
async fn an_upload_failure_between_two_fsyncs_is_reported_once_by_the_next() {
    let f = fixture().await;
    let ino = f.file("later").await;
    let data = pattern(CHUNK_SIZE as usize, 3);
    let mut inode = f.chunks.lock("v", ino).await;
    inode.flush().await.unwrap();
    f.store.fail_chunk_puts.store(true, Ordering::SeqCst);
    f.write_file(&mut inode, ino, &data).await; // a full chunk: uploads in the background
    drop(inode);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.store.failed_puts.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no background upload");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    f.store.fail_chunk_puts.store(false, Ordering::SeqCst);
    // The operation that noticed nothing (the write) succeeded; the fsync must not,
    // even though the retry of the upload inside it would.
    let mut inode = f.chunks.lock("v", ino).await;
    let err = inode
        .flush()
        .await
        .expect_err("the failure must reach fsync");
    assert_eq!(err.errno(), libc::EIO);
    inode
        .flush()
        .await
        .expect("the next fsync uploads the kept data");
    let size = data.len() as u64;
    assert!(inode.read(size, 0, size as u32).await.unwrap() == data);
}

#[tokio::test]
async fn sequential_reads_fetch_each_chunk_once_and_never_stale() {
    let f = fixture().await;
    let ino = f.file("read").await;
    let data = pattern((6 * CHUNK_SIZE + 7) as usize, 4);
    let size = data.len() as u64;
    {
        let mut inode = f.chunks.lock("v", ino).await;
        f.write_file(&mut inode, ino, &data).await;
        inode.flush().await.unwrap();
    }
    let cold = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
    let before = f.store.chunk_gets.load(Ordering::SeqCst);
    let mut got = Vec::new();
    let mut offset = 0;
    while offset < size {
        let mut inode = cold.lock("v", ino).await;
        let piece = inode.read(size, offset, 1 << 20).await.unwrap();
        offset += piece.len() as u64;
        got.extend_from_slice(&piece);
    }
    assert!(got == data);
    assert_eq!(
        f.store.chunk_gets.load(Ordering::SeqCst) - before,
        7,
        "one GET per chunk: prefetched chunks are not fetched again"
    );

    // A chunk rewritten while it is being prefetched reads back as written.
    let other = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
    let mut inode = other.lock("v", ino).await;
    inode.read(size, 0, 4096).await.unwrap(); // prefetches chunks 1..5
    inode.write(size, CHUNK_SIZE, b"fresh").await.unwrap();
    inode.flush().await.unwrap();
    let read = inode.read(size, CHUNK_SIZE, 5).await.unwrap();
    assert_eq!(read, &b"fresh"[..]);
    drop(inode);
    let mut inode = other.lock("v", ino).await;
    assert_eq!(
        inode.read(size, CHUNK_SIZE, 5).await.unwrap(),
        &b"fresh"[..]
    );
}

#[tokio::test]
async fn concurrent_fsyncs_share_journal_segments() {
    let f = fixture().await;
    const FILES: usize = 8;
    let mut inos = Vec::new();
    for i in 0..FILES {
        inos.push(f.file(&format!("small{i}")).await);
    }
    f.chunks.sync_volume("v").await.unwrap();
    let before = f.store.segment_puts.load(Ordering::SeqCst);
    let writers = inos.iter().map(|&ino| {
        let chunks = &f.chunks;
        let meta = &f.meta;
        async move {
            let mut inode = chunks.lock("v", ino).await;
            inode.write(0, 0, &pattern(4096, ino as u8)).await?;
            meta.note_write("v", ino, 4096).await?;
            inode.flush().await
        }
    });
    for result in futures::future::join_all(writers).await {
        result.expect("fsync");
    }
    let segments = f.store.segment_puts.load(Ordering::SeqCst) - before;
    assert!(
        segments < FILES,
        "{FILES} concurrent fsyncs wrote {segments} journal segments"
    );
    // Every one of them is durable: a new server rebuilds all 8 from the store.
    let state = f.dir.path().join("rebuilt");
    std::fs::create_dir_all(&state).unwrap();
    let meta = Arc::new(MetaStore::open(&state).await.unwrap());
    let chunks = ChunkStore::new(f.objects.clone(), meta.clone(), None);
    chunks.open_volume("v").await.unwrap();
    for &ino in &inos {
        assert_eq!(meta.get_attr("v", ino).await.unwrap().size, 4096);
        let mut inode = chunks.lock("v", ino).await;
        assert!(inode.read(4096, 0, 4096).await.unwrap() == pattern(4096, ino as u8));
    }
}
