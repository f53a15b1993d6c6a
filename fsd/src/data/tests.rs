//! Unit tests of the chunk store on a real local directory.

use super::*;
use object_store::local::LocalFileSystem;

fn store() -> (tempfile::TempDir, Arc<dyn ObjectStore>, ChunkStore) {
    let dir = tempfile::tempdir().expect("creating temp dir");
    let fs: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("opening local store"));
    let chunks = ChunkStore::new(fs.clone());
    (dir, fs, chunks)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test]
async fn write_across_chunks_flush_and_read_back_cold() {
    let (_d, fs, chunks) = store();
    let data = pattern((CHUNK_SIZE + CHUNK_SIZE / 2) as usize, 7);
    let offset = CHUNK_SIZE / 2;
    {
        let mut inode = chunks.lock("v", 5).await;
        inode.write(0, offset, &data).await.unwrap();
        inode.flush().await.unwrap();
        assert_eq!(inode.dirty_chunks(), 0);
    }
    // A fresh chunk store (as after a restart) reads from the objects only.
    let cold = ChunkStore::new(fs);
    let size = offset + data.len() as u64;
    let mut inode = cold.lock("v", 5).await;
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
    let (_d, _fs, chunks) = store();
    let mut inode = chunks.lock("v", 9).await;
    let data = pattern((2 * CHUNK_SIZE + 10) as usize, 3);
    inode.write(0, 0, &data).await.unwrap();
    inode.flush().await.unwrap();
    inode.truncate(data.len() as u64, 100).await.unwrap();
    // Grow again: the bytes past 100 must read as zeros.
    let grown = CHUNK_SIZE + 5;
    let got = inode.read(grown, 0, grown as u32).await.unwrap();
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|&b| b == 0));
    inode.delete_all().await.unwrap();
    assert!(inode.read(10, 0, 10).await.unwrap().iter().all(|&b| b == 0));
}

#[tokio::test]
async fn dirty_data_is_readable_before_flush() {
    let (_d, _fs, chunks) = store();
    let mut inode = chunks.lock("v", 2).await;
    inode.write(0, 0, b"hello").await.unwrap();
    inode.write(5, 5, b" world").await.unwrap();
    assert_eq!(inode.read(11, 0, 100).await.unwrap(), b"hello world");
    assert_eq!(inode.read(11, 6, 3).await.unwrap(), b"wor");
}

#[tokio::test]
async fn dirty_total_tracks_all_inodes_and_caps_memory() {
    let (_d, _fs, chunks) = store();
    {
        let mut one = chunks.lock("v", 1).await;
        one.write(0, 0, b"x").await.unwrap();
        let mut two = chunks.lock("v", 2).await;
        two.write(0, CHUNK_SIZE, b"y").await.unwrap();
    }
    assert_eq!(chunks.dirty_chunks(), 2);
    {
        let mut one = chunks.lock("v", 1).await;
        one.flush().await.unwrap();
    }
    assert_eq!(chunks.dirty_chunks(), 1);
    {
        // One inode writing more than its share gets flushed during the write.
        let mut big = chunks.lock("v", 3).await;
        let data = vec![7u8; (CHUNK_SIZE * (MAX_DIRTY_CHUNKS as u64 + 1)) as usize];
        big.write(0, 0, &data).await.unwrap();
        assert_eq!(big.dirty_chunks(), 0);
    }
    assert_eq!(chunks.dirty_chunks(), 1);
}
