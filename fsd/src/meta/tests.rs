//! Unit tests of the metadata store against a real SQLite file in a temp dir.

use super::rename::{Place, RENAME_EXCHANGE, RENAME_NOREPLACE};
use super::*;

const V: &str = "test-vol";
const NEW: NewInode = NewInode {
    mode: 0o644,
    uid: 1000,
    gid: 1000,
};

async fn store() -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().expect("creating temp dir");
    let meta = MetaStore::open(dir.path())
        .await
        .expect("opening meta store");
    meta.ensure_volume(V).await.expect("creating volume");
    (dir, meta)
}

fn at(parent: u64, name: &[u8]) -> Place<'_> {
    Place { parent, name }
}

#[tokio::test]
async fn root_exists_with_0755() {
    let (_d, meta) = store().await;
    let root = meta.get_attr(V, ROOT_INO).await.unwrap();
    assert_eq!(root.mode, 0o755);
    assert_eq!(root.kind, FileKind::Directory as i32);
    assert_eq!(root.nlink, 2);
}

#[tokio::test]
async fn create_lookup_and_exclusive() {
    let (_d, meta) = store().await;
    let (a, created) = meta
        .create_file(V, ROOT_INO, b"a", NEW, true)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(meta.lookup(V, ROOT_INO, b"a").await.unwrap().ino, a.ino);
    let err = meta
        .create_file(V, ROOT_INO, b"a", NEW, true)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);
    let (again, created) = meta
        .create_file(V, ROOT_INO, b"a", NEW, false)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.ino, a.ino);
    let err = meta.lookup(V, a.ino, b"x").await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTDIR);
}

#[tokio::test]
async fn rename_over_existing_file_drops_target() {
    let (_d, meta) = store().await;
    let (a, _) = meta
        .create_file(V, ROOT_INO, b"a", NEW, true)
        .await
        .unwrap();
    let (b, _) = meta
        .create_file(V, ROOT_INO, b"b", NEW, true)
        .await
        .unwrap();
    let gone = meta
        .rename(V, at(ROOT_INO, b"a"), at(ROOT_INO, b"b"), 0)
        .await
        .unwrap();
    assert_eq!(gone, Some(b.ino));
    assert_eq!(meta.lookup(V, ROOT_INO, b"b").await.unwrap().ino, a.ino);
    assert_eq!(
        meta.lookup(V, ROOT_INO, b"a").await.unwrap_err().errno(),
        libc::ENOENT
    );
}

#[tokio::test]
async fn rename_flags() {
    let (_d, meta) = store().await;
    let (a, _) = meta
        .create_file(V, ROOT_INO, b"a", NEW, true)
        .await
        .unwrap();
    let d = meta.mkdir(V, ROOT_INO, b"d", NEW).await.unwrap();
    let err = meta
        .rename(V, at(ROOT_INO, b"a"), at(ROOT_INO, b"d"), RENAME_NOREPLACE)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);
    let err = meta
        .rename(V, at(ROOT_INO, b"a"), at(ROOT_INO, b"d"), 0)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EISDIR);
    meta.rename(V, at(ROOT_INO, b"a"), at(ROOT_INO, b"d"), RENAME_EXCHANGE)
        .await
        .unwrap();
    assert_eq!(meta.lookup(V, ROOT_INO, b"a").await.unwrap().ino, d.ino);
    assert_eq!(meta.lookup(V, ROOT_INO, b"d").await.unwrap().ino, a.ino);
}

#[tokio::test]
async fn directories_and_link_counts() {
    let (_d, meta) = store().await;
    let d = meta.mkdir(V, ROOT_INO, b"d", NEW).await.unwrap();
    let e = meta.mkdir(V, d.ino, b"e", NEW).await.unwrap();
    assert_eq!(meta.get_attr(V, ROOT_INO).await.unwrap().nlink, 3);
    assert_eq!(meta.get_attr(V, d.ino).await.unwrap().nlink, 3);
    let err = meta.rmdir(V, ROOT_INO, b"d").await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    let err = meta
        .rename(V, at(ROOT_INO, b"d"), at(e.ino, b"x"), 0)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    meta.rename(V, at(d.ino, b"e"), at(ROOT_INO, b"e"), 0)
        .await
        .unwrap();
    assert_eq!(meta.get_attr(V, d.ino).await.unwrap().nlink, 2);
    assert_eq!(meta.get_attr(V, ROOT_INO).await.unwrap().nlink, 4);
    meta.rmdir(V, ROOT_INO, b"d").await.unwrap();
    let names: Vec<Vec<u8>> = meta
        .read_dir(V, ROOT_INO)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![b"e".to_vec()]);
    assert_eq!(
        meta.unlink(V, ROOT_INO, b"e").await.unwrap_err().errno(),
        libc::EISDIR
    );
}

#[tokio::test]
async fn writes_grow_size_and_truncate_shrinks() {
    let (_d, meta) = store().await;
    let (a, _) = meta
        .create_file(V, ROOT_INO, b"a", NEW, true)
        .await
        .unwrap();
    assert_eq!(meta.note_write(V, a.ino, 100).await.unwrap().size, 100);
    assert_eq!(meta.note_write(V, a.ino, 50).await.unwrap().size, 100);
    let changes = AttrChanges {
        size: Some(10),
        mode: Some(0o100600),
        ..Default::default()
    };
    let (attr, old) = meta.set_attr(V, a.ino, &changes).await.unwrap();
    assert_eq!((attr.size, old, attr.mode), (10, 100, 0o600));
    assert_eq!(meta.unlink(V, ROOT_INO, b"a").await.unwrap(), Some(a.ino));
    assert_eq!(meta.usage(V).await.unwrap().0, 1);
}
