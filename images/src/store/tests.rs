//! Store unit tests that need no registry: garbage collection over hand-made records,
//! and the `Send` bound of the pull future.

use std::fs;
use std::time::{Duration, SystemTime};

use super::*;
use crate::manifest::media_types;

/// Put an image with these layer contents in the store the way a pull would.
fn fake_image(store: &ImageStore, name: &str, layers: &[&str]) -> Digest {
    let config = format!("{{\"config-of\":\"{name}\"}}");
    let config_digest = Digest::of(config.as_bytes());
    store
        .put_blob_bytes(&config_digest, config.as_bytes())
        .unwrap();
    let mut descs = Vec::new();
    for l in layers {
        let d = Digest::of(l.as_bytes());
        store.put_blob_bytes(&d, l.as_bytes()).unwrap();
        let snap = store.snapshot_path(&d);
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("file"), l.repeat(1000)).unwrap();
        descs.push(Descriptor {
            media_type: media_types::OCI_LAYER.into(),
            digest: d,
            size: l.len() as u64,
            platform: None,
        });
    }
    let manifest = format!("{{\"manifest-of\":\"{name}\"}}");
    let manifest_digest = Digest::of(manifest.as_bytes());
    store
        .put_blob_bytes(&manifest_digest, manifest.as_bytes())
        .unwrap();
    let rec = ImageRecord {
        reference: format!("127.0.0.1:1/{name}@{manifest_digest}")
            .parse()
            .unwrap(),
        manifest_digest: manifest_digest.clone(),
        config_digest,
        config: ImageConfig::default(),
        layers: descs,
    };
    fs::write(
        store.record_path(&manifest_digest),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
    manifest_digest
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn gc_keeps_in_use_images_and_shared_layers() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let a = fake_image(&store, "a", &["base", "app-a"]);
    let b = fake_image(&store, "b", &["base", "app-b"]);
    // Leftovers of an interrupted pull: a partial download and a temp snapshot.
    fs::write(store.partial_path(&Digest::of(b"x")), b"half").unwrap();
    fs::create_dir(store.tmp_path("snap-x")).unwrap();
    assert_eq!(count(&dir.path().join("snapshots")), 3);

    let report = store.gc(std::slice::from_ref(&a)).unwrap();
    assert_eq!(report.images_removed, vec![b.clone()]);
    assert_eq!(report.images_kept, 1);
    assert_eq!(report.snapshots_removed, 1, "only app-b; base is shared");
    assert_eq!(
        report.blobs_removed, 3,
        "b's manifest, config and app-b layer"
    );
    assert_eq!(report.leftovers_removed, 2);
    assert!(report.bytes_freed > 0);
    assert!(store.get(&a).unwrap().is_some());
    assert!(store.get(&b).unwrap().is_none());
    assert!(store.snapshot_path(&Digest::of(b"base")).is_dir());
    assert!(!store.snapshot_path(&Digest::of(b"app-b")).exists());
    assert_eq!(count(&dir.path().join("partial")), 0);
    assert_eq!(count(&dir.path().join("tmp")), 0);

    // Nothing in use: everything goes.
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.images_removed, vec![a]);
    assert_eq!(count(&dir.path().join("snapshots")), 0);
    assert_eq!(count(&dir.path().join("blobs/sha256")), 0);
    assert_eq!(count(&dir.path().join("images")), 0);
}

#[test]
fn gc_removes_unreadable_records_and_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let a = fake_image(&store, "a", &["one"]);
    fs::write(dir.path().join("images/garbage.json"), b"{not json").unwrap();
    // An orphan snapshot and blob, as a pull killed before its record leaves them.
    let orphan = Digest::of(b"orphan");
    store.put_blob_bytes(&orphan, b"orphan").unwrap();
    fs::create_dir(store.snapshot_path(&orphan)).unwrap();
    let report = store.gc(std::slice::from_ref(&a)).unwrap();
    assert_eq!(report.images_kept, 1);
    assert_eq!(report.snapshots_removed, 1);
    assert_eq!(report.blobs_removed, 1);
    assert!(!dir.path().join("images/garbage.json").exists());
    assert!(store.get(&a).unwrap().is_some());
}

#[test]
fn gc_to_budget_evicts_least_recently_used_unused_images() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let old = fake_image(&store, "old", &["old-layer"]);
    let mid = fake_image(&store, "mid", &["mid-layer"]);
    let new = fake_image(&store, "new", &["new-layer"]);
    let used = fake_image(&store, "used", &["used-layer"]);
    let now = SystemTime::now();
    for (d, age) in [(&old, 300), (&mid, 200), (&new, 100), (&used, 400)] {
        File::options()
            .write(true)
            .open(store.record_path(d))
            .unwrap()
            .set_modified(now - Duration::from_secs(age))
            .unwrap();
    }
    let total = store.disk_usage();
    // A generous budget removes nothing.
    let r = store
        .gc_to_budget(total, std::slice::from_ref(&used))
        .unwrap();
    assert!(r.images_removed.is_empty(), "{r:?}");
    // A budget just under the total evicts the oldest unused image only.
    let r = store
        .gc_to_budget(total - 1, std::slice::from_ref(&used))
        .unwrap();
    assert_eq!(r.images_removed, vec![old]);
    assert!(r.bytes_after < total);
    // Zero: everything not in use goes; the in-use image stays even over budget.
    let r = store.gc_to_budget(0, std::slice::from_ref(&used)).unwrap();
    let mut removed = r.images_removed.clone();
    removed.sort();
    let mut want = vec![mid, new];
    want.sort();
    assert_eq!(removed, want);
    assert!(store.get(&used).unwrap().is_some());
    assert!(r.bytes_after > 0);
}

#[test]
fn open_clears_leftovers_of_dead_processes_but_keeps_partials() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    // pid 0x7fffffff is never a live process.
    fs::create_dir(dir.path().join("tmp/2147483647-1-1-snap-abc")).unwrap();
    fs::write(dir.path().join("tmp/2147483647-2-1-record"), b"{}").unwrap();
    let partial = store.partial_path(&Digest::of(b"p"));
    fs::write(&partial, b"resume me").unwrap();
    drop(store);
    let _store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(count(&dir.path().join("tmp")), 0);
    assert!(
        partial.exists(),
        "partial downloads are resumed, not discarded"
    );
}

#[test]
fn pull_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let r: Reference = "127.0.0.1:1/x:1".parse().unwrap();
    let opts = ClientOptions::default();
    let fut = store.pull(&r, &opts, |_| {});
    assert_send(&fut);
}
