//! Unit tests of the chunk store on a real local directory.

use super::*;
use crate::meta::NewInode;
use objects::StoreConfig;

/// A chunk store over a real local object store and a real metadata database, with
/// volume "v" open.
struct Fixture {
    dir: tempfile::TempDir,
    objects: Objects,
    meta: Arc<MetaStore>,
    chunks: ChunkStore,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("creating temp dir");
    let objects = StoreConfig::Local(dir.path().join("store"))
        .open()
        .expect("opening local store");
    let meta = Arc::new(
        MetaStore::open(&ensure(dir.path().join("state")))
            .await
            .expect("opening metadata"),
    );
    let chunks = ChunkStore::new(objects.clone(), meta.clone(), None);
    chunks.open_volume("v").await.expect("opening volume");
    Fixture {
        dir,
        objects,
        meta,
        chunks,
    }
}

fn ensure(path: std::path::PathBuf) -> std::path::PathBuf {
    std::fs::create_dir_all(&path).expect("creating state dir");
    path
}

/// Creates file `name` (0644, root) in volume `v`'s root directory; its inode.
pub(super) async fn create_file(meta: &MetaStore, name: &str) -> u64 {
    let new = NewInode {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let (attr, _) = meta
        .create_file("v", crate::meta::ROOT_INO, name.as_bytes(), new, true)
        .await
        .expect("creating file");
    attr.ino
}

impl Fixture {
    async fn file(&self, name: &str) -> u64 {
        create_file(&self.meta, name).await
    }

    /// Object names under the chunk folder of an inode.
    async fn chunk_objects(&self, ino: u64) -> Vec<String> {
        let prefix = object_store::path::Path::from(format!("volumes/v/chunks/{ino}"));
        let mut names: Vec<String> =
            futures::TryStreamExt::try_collect::<Vec<_>>(self.objects.store.list(Some(&prefix)))
                .await
                .expect("listing chunks")
                .into_iter()
                .map(|o| o.location.filename().unwrap_or_default().to_string())
                .collect();
        names.sort();
        names
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn write_across_chunks_flush_and_read_back_cold() {
    let f = fixture().await;
    let ino = f.file("a").await;
    let data = pattern((CHUNK_SIZE + CHUNK_SIZE / 2) as usize, 7);
    let offset = CHUNK_SIZE / 2;
    {
        let mut inode = f.chunks.lock("v", ino).await;
        inode.write(0, offset, &data).await.unwrap();
        inode.flush().await.unwrap();
        assert_eq!(inode.dirty_chunks(), 0);
    }
    // A fresh chunk store (as after a restart) reads from the objects only.
    let cold = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
    let size = offset + data.len() as u64;
    let mut inode = cold.lock("v", ino).await;
    let got = inode.read(size, 0, size as u32).await.unwrap();
    assert_eq!(got.len() as u64, size);
    assert!(
        got[..offset as usize].iter().all(|&b| b == 0),
        "hole reads as zeros"
    );
    assert_eq!(&got[offset as usize..], &data[..]);
}

#[tokio::test]
async fn truncate_shrinks_and_does_not_resurrect() {
    let f = fixture().await;
    let ino = f.file("t").await;
    let mut inode = f.chunks.lock("v", ino).await;
    let data = pattern((2 * CHUNK_SIZE + 10) as usize, 3);
    inode.write(0, 0, &data).await.unwrap();
    inode.flush().await.unwrap();
    inode.truncate(data.len() as u64, 100).await.unwrap();
    // Grow again: the bytes past 100 must read as zeros.
    let grown = CHUNK_SIZE + 5;
    let got = inode.read(grown, 0, grown as u32).await.unwrap();
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|&b| b == 0));
    f.meta
        .unlink("v", crate::meta::ROOT_INO, b"t")
        .await
        .unwrap();
    inode.delete_all().await.unwrap();
    assert!(inode.read(10, 0, 10).await.unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn dirty_data_is_readable_before_flush() {
    let f = fixture().await;
    let mut inode = f.chunks.lock("v", 2).await;
    inode.write(0, 0, b"hello").await.unwrap();
    inode.write(5, 5, b" world").await.unwrap();
    assert_eq!(inode.read(11, 0, 100).await.unwrap(), &b"hello world"[..]);
    assert_eq!(inode.read(11, 6, 3).await.unwrap(), &b"wor"[..]);
}

#[tokio::test]
async fn dirty_total_tracks_all_inodes_and_caps_memory() {
    let f = fixture().await;
    let chunks = &f.chunks;
    let (a, b, c) = (f.file("1").await, f.file("2").await, f.file("3").await);
    {
        let mut one = chunks.lock("v", a).await;
        one.write(0, 0, b"x").await.unwrap();
        let mut two = chunks.lock("v", b).await;
        two.write(0, CHUNK_SIZE, b"y").await.unwrap();
    }
    assert_eq!(chunks.dirty_chunks(), 2);
    {
        let mut one = chunks.lock("v", a).await;
        one.flush().await.unwrap();
    }
    assert_eq!(chunks.dirty_chunks(), 1);
    {
        // One inode writing more than its share gets flushed during the write.
        let mut big = chunks.lock("v", c).await;
        let data = vec![7u8; (CHUNK_SIZE * (MAX_DIRTY_CHUNKS as u64 + 1)) as usize];
        big.write(0, 0, &data).await.unwrap();
        assert_eq!(big.dirty_chunks(), 0);
    }
    assert_eq!(chunks.dirty_chunks(), 1);
}

#[tokio::test]
async fn a_chunk_changed_in_the_store_is_an_error_never_wrong_bytes() {
    let f = fixture().await;
    let ino = f.file("rot").await;
    let data = pattern((3 * CHUNK_SIZE) as usize, 3);
    {
        let mut inode = f.chunks.lock("v", ino).await;
        inode.write(0, 0, &data).await.unwrap();
        inode.flush().await.unwrap();
    }
    let names = f.chunk_objects(ino).await;
    assert_eq!(names.len(), 3, "{names:?}");
    for name in &names {
        let (_, crc) = name.rsplit_once('-').expect("a version carries its CRC-32");
        assert_eq!(crc.len(), 8, "{name}");
    }
    // One bit of chunk 1 flips on the store's disk (same length, same name).
    let chunk1 = names.iter().find(|n| n.starts_with("1.")).unwrap();
    let file = f
        .dir
        .path()
        .join(format!("store/volumes/v/chunks/{ino}/{chunk1}"));
    let mut raw = std::fs::read(&file).unwrap();
    raw[12345] ^= 0x10;
    std::fs::write(&file, &raw).unwrap();

    // A cold server reads chunk 0 fine and refuses chunk 1, whether it is read
    // directly or was fetched ahead by the sequential reader's prefetch.
    let size = data.len() as u64;
    for sequential in [false, true] {
        let cold = ChunkStore::new(f.objects.clone(), f.meta.clone(), None);
        let mut inode = cold.lock("v", ino).await;
        let mut offset = if sequential { 0 } else { CHUNK_SIZE };
        let err = loop {
            match inode.read(size, offset, 1 << 20).await {
                Ok(got) => {
                    let at = offset as usize;
                    assert_eq!(&got[..], &data[at..at + got.len()], "at {offset}");
                    assert!(offset < CHUNK_SIZE, "read corrupt chunk bytes at {offset}");
                    offset += got.len() as u64;
                }
                Err(err) => break err,
            }
        };
        assert_eq!(offset, CHUNK_SIZE, "fails at the damaged chunk");
        assert!(matches!(err, FsError::Corrupt(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("CRC-32") && message.contains(chunk1.as_str()),
            "{message}"
        );
        // The chunk after it is fine.
        let got = inode.read(size, 2 * CHUNK_SIZE, 4096).await.unwrap();
        assert_eq!(&got[..], &data[(2 * CHUNK_SIZE) as usize..][..4096]);
    }
}

#[tokio::test]
async fn overwrite_uploads_a_new_version_and_collects_the_old_one() {
    let f = fixture().await;
    let ino = f.file("o").await;
    let mut inode = f.chunks.lock("v", ino).await;
    inode.write(0, 0, b"first").await.unwrap();
    inode.flush().await.unwrap();
    let before = f.chunk_objects(ino).await;
    assert_eq!(before.len(), 1, "one object per chunk: {before:?}");
    inode.write(5, 0, b"again").await.unwrap();
    inode.flush().await.unwrap();
    let after = f.chunk_objects(ino).await;
    assert_eq!(
        after.len(),
        1,
        "the superseded version is deleted: {after:?}"
    );
    assert_ne!(
        before, after,
        "an overwrite never rewrites an object in place"
    );
    assert_eq!(inode.read(5, 0, 5).await.unwrap(), &b"again"[..]);
    drop(inode);
    // Unlinking the file drops its chunks once the journal says so.
    f.meta
        .unlink("v", crate::meta::ROOT_INO, b"o")
        .await
        .unwrap();
    f.chunks.sync_volume("v").await.unwrap();
    assert!(
        f.chunk_objects(ino).await.is_empty(),
        "chunks of a deleted file stay"
    );
}

/// A second metadata database, empty, over the same object store: the volume comes
/// back from snapshot + journal alone.
async fn rebuilt(f: &Fixture, name: &str) -> (Arc<MetaStore>, ChunkStore) {
    let meta = Arc::new(
        MetaStore::open(&ensure(f.dir.path().join(name)))
            .await
            .expect("opening second metadata db"),
    );
    let chunks = ChunkStore::new(f.objects.clone(), meta.clone(), None);
    chunks.open_volume("v").await.expect("rebuilding volume");
    (meta, chunks)
}

#[tokio::test]
async fn volume_is_rebuilt_from_object_storage_alone() {
    let f = fixture().await;
    let data = pattern((CHUNK_SIZE + 1234) as usize, 9);
    let ino = f.file("kept").await;
    {
        let mut inode = f.chunks.lock("v", ino).await;
        inode.write(0, 0, &data).await.unwrap();
        f.meta
            .note_write("v", ino, data.len() as u64)
            .await
            .unwrap();
        inode.flush().await.unwrap();
    }
    let changes = crate::meta::AttrChanges {
        mode: Some(0o600),
        uid: Some(1000),
        ..Default::default()
    };
    f.meta.set_attr("v", ino, &changes).await.unwrap();
    let sub = f
        .meta
        .mkdir(
            "v",
            crate::meta::ROOT_INO,
            b"dir",
            NewInode {
                mode: 0o750,
                uid: 7,
                gid: 8,
            },
        )
        .await
        .unwrap();
    f.file("gone").await;
    f.meta
        .unlink("v", crate::meta::ROOT_INO, b"gone")
        .await
        .unwrap();
    f.chunks.sync_volume("v").await.unwrap();
    // Not synced: may be lost, and is (the new server never saw it).
    f.file("unsynced").await;

    let (meta, chunks) = rebuilt(&f, "state2").await;
    let attr = meta
        .lookup("v", crate::meta::ROOT_INO, b"kept")
        .await
        .unwrap();
    assert_eq!(attr.ino, ino);
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!((attr.mode, attr.uid), (0o600, 1000));
    let dir = meta
        .lookup("v", crate::meta::ROOT_INO, b"dir")
        .await
        .unwrap();
    assert_eq!(
        (dir.ino, dir.mode, dir.uid, dir.gid),
        (sub.ino, 0o750, 7, 8)
    );
    assert!(meta
        .lookup("v", crate::meta::ROOT_INO, b"gone")
        .await
        .is_err());
    assert!(meta
        .lookup("v", crate::meta::ROOT_INO, b"unsynced")
        .await
        .is_err());
    let mut inode = chunks.lock("v", ino).await;
    assert!(inode.read(attr.size, 0, attr.size as u32).await.unwrap() == data);
    drop(inode);
    // New inodes on the rebuilt copy never reuse synced numbers.
    let new = meta
        .create_file(
            "v",
            crate::meta::ROOT_INO,
            b"new",
            NewInode {
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            true,
        )
        .await
        .unwrap()
        .0;
    assert!(new.ino > sub.ino);
}

#[tokio::test]
async fn snapshots_replace_old_segments_and_rebuild() {
    let f = fixture().await;
    for i in 0..journal::SNAPSHOT_EVERY + 3 {
        f.file(&format!("f{i}")).await;
        f.chunks.sync_volume("v").await.unwrap();
    }
    // What a snapshot replaces is deleted in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (snaps, segs) = loop {
        let snaps = f
            .objects
            .list_seqs(&objects::snapshot_prefix("v"))
            .await
            .unwrap();
        let segs = f
            .objects
            .list_seqs(&objects::journal_prefix("v"))
            .await
            .unwrap();
        if (snaps.len() == 1 && segs.len() <= 3) || std::time::Instant::now() > deadline {
            break (snaps, segs);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(snaps.len(), 1, "one snapshot kept: {snaps:?}");
    assert!(
        segs.iter().all(|s| *s > snaps[0]) && segs.len() <= 3,
        "segments covered by the snapshot are deleted: {segs:?} vs {snaps:?}"
    );
    let (meta, _chunks) = rebuilt(&f, "state3").await;
    let names = meta.read_dir("v", crate::meta::ROOT_INO).await.unwrap();
    assert_eq!(names.len() as u64, journal::SNAPSHOT_EVERY + 3);
}

#[tokio::test]
async fn lease_keeps_a_second_server_out_until_it_expires() {
    let f = fixture().await;
    let ttl = std::time::Duration::from_millis(600);
    let a_leases = lease::Leases::new(f.objects.clone(), "a".into(), ttl);
    let renewals = a_leases.spawn_renewals();
    let a = ChunkStore::new(f.objects.clone(), f.meta.clone(), Some(a_leases));
    a.open_volume("w").await.unwrap();
    let b_meta = Arc::new(
        MetaStore::open(&ensure(f.dir.path().join("b")))
            .await
            .unwrap(),
    );
    let b = ChunkStore::new(
        f.objects.clone(),
        b_meta.clone(),
        Some(lease::Leases::new(f.objects.clone(), "b".into(), ttl)),
    );
    // While a renews, b is refused, however long it waits.
    for _ in 0..4 {
        let err = b.open_volume("w").await.unwrap_err();
        assert!(matches!(err, FsError::Unavailable(_)), "{err}");
        tokio::time::sleep(ttl / 2).await;
    }
    // a dies (stops renewing): b takes over one ttl later.
    renewals.abort();
    let started = std::time::Instant::now();
    loop {
        match b.open_volume("w").await {
            Ok(_) => break,
            Err(FsError::Unavailable(_)) if started.elapsed() < ttl * 5 => {
                tokio::time::sleep(ttl / 10).await
            }
            Err(err) => panic!("take-over failed: {err}"),
        }
    }
    assert!(
        started.elapsed() >= ttl / 2,
        "taken over before the lease expired"
    );
    b_meta.get_attr("w", crate::meta::ROOT_INO).await.unwrap();
}
