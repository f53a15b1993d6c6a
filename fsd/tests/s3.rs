//! `berth-fsd serve` on a real S3 server: SeaweedFS (`weed server -s3`) on loopback
//! (root, /dev/fuse and `weed` required; see `common/weed.rs` for how it is started).
//!
//! - A volume written through a FUSE mount is rebuilt from the bucket alone by a new
//!   file server whose state directory was wiped.
//! - SeaweedFS killed (-9) and restarted while an application writes and fsyncs: the
//!   application sees a pause, never an error, and every fsync'd byte is there after,
//!   also after a rebuild from the bucket alone.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::weed::Weed;
use common::{require_fuse_and_root, volume, Mount, Server};

const TTL: &str = "1500";

/// Deterministic contents of test file `i`.
fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((j * 31 + i * 7 + j / 4096) % 251) as u8)
        .collect()
}

fn fsd_on(weed: &Weed, state: &Path) -> Server {
    let mut args = weed.serve_args();
    args.extend(["--lease-ttl-ms".to_string(), TTL.to_string()]);
    Server::start_with(&state.join("unused-store"), state, &args, &Weed::env())
}

/// Every regular file under `root` (relative path -> bytes) and every symlink.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("listing") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let kind = entry.file_type().expect("file type");
            if kind.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else if kind.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).expect("reading file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn volume_on_seaweedfs_is_rebuilt_from_the_bucket_alone() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let weed = Weed::start(tmp.path());
    let vol = volume("s3-rebuild");
    let state = tmp.path().join("state");
    let mut a = fsd_on(&weed, &state);
    let m = Mount::start(&a, &vol, &tmp.path().join("m"));

    // Small files, one spanning three 4 MiB chunks, a directory, a rename over an
    // existing file, a symlink, a hard link and a chmod.
    fs::create_dir_all(m.join("site/uploads")).unwrap();
    for i in 0..30 {
        let mut f = fs::File::create(m.join(&format!("site/uploads/f{i}"))).unwrap();
        f.write_all(&body(i, i * 997 + 1)).unwrap();
        f.sync_all().unwrap();
    }
    let big = body(99, (9 << 20) + 12345);
    let mut f = fs::File::create(m.join("site/big.bin")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::write(m.join("site/config.php"), b"old").unwrap();
    fs::write(m.join("site/config.php.new"), b"<?php // new").unwrap();
    fs::rename(m.join("site/config.php.new"), m.join("site/config.php")).unwrap();
    std::os::unix::fs::symlink("uploads/f1", m.join("site/link")).unwrap();
    fs::hard_link(m.join("site/uploads/f2"), m.join("site/f2-again")).unwrap();
    fs::set_permissions(
        m.join("site/uploads/f3"),
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o640),
    )
    .unwrap();
    // Metadata changes become durable with the next fsync of a written file.
    let mut f = fs::File::create(m.join("site/last")).unwrap();
    f.write_all(b"last").unwrap();
    f.sync_all().unwrap();
    drop(f);

    let before = tree(&m.path);
    assert_eq!(before["site/big.bin"], big, "read back through the mount");
    assert_eq!(before["site/config.php"], b"<?php // new");
    drop(m);
    a.kill9();
    fs::remove_dir_all(&state).unwrap();

    let started = Instant::now();
    let b = fsd_on(&weed, &state);
    let m = Mount::start(&b, &vol, &tmp.path().join("m2"));
    let after = tree(&m.path);
    eprintln!(
        "rebuilt {} entries from the bucket in {:?}",
        after.len(),
        started.elapsed()
    );
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "names differ after the rebuild"
    );
    for (name, bytes) in &before {
        assert!(&after[name] == bytes, "{name} differs after the rebuild");
    }
    let meta = fs::metadata(m.join("site/uploads/f3")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o640
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&fs::metadata(m.join("site/f2-again")).unwrap()),
        2
    );
    drop(m);
    drop(b);
}

/// One write + fsync of the writer below.
struct Written {
    index: usize,
    len: usize,
    took: Duration,
}

#[test]
fn seaweedfs_restart_during_writes_is_a_pause_and_loses_nothing() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut weed = Weed::start(tmp.path());
    let vol = volume("s3-restart");
    let state = tmp.path().join("state");
    let mut a = fsd_on(&weed, &state);
    let m = Mount::start(&a, &vol, &tmp.path().join("m"));
    fs::create_dir(m.join("w")).unwrap();

    // The application: write a file, fsync it, close it; again and again. Any error is
    // a failure of the test (kept with the file index to report it).
    let stop = Arc::new(AtomicBool::new(false));
    let dir = m.join("w");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut done: Vec<Written> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let len = (i * 7919) % (300 << 10) + 1;
                let started = Instant::now();
                let result = fs::File::create(dir.join(format!("{i}"))).and_then(|mut f| {
                    f.write_all(&body(i, len))?;
                    f.sync_all()
                });
                if let Err(err) = result {
                    return Err(format!(
                        "write+fsync of file {i} failed after {:?}: {err}",
                        started.elapsed()
                    ));
                }
                done.push(Written {
                    index: i,
                    len,
                    took: started.elapsed(),
                });
                i += 1;
            }
            Ok(done)
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    // By hand, a longer outage: BERTH_TEST_S3_OUTAGE_SECS=N keeps weed down N s.
    if let Some(secs) = std::env::var("BERTH_TEST_S3_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        weed.kill9();
        std::thread::sleep(Duration::from_secs(secs));
    }
    weed.restart();
    let back = killed.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let done = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|err| panic!("the application saw an error: {err}"));

    let slowest = done.iter().map(|w| w.took).max().unwrap_or_default();
    let after_restart = done
        .iter()
        .filter(|w| w.took < Duration::from_secs(1))
        .count();
    eprintln!(
        "weed down+restart {back:?}; {} files fsync'd; slowest write+fsync {slowest:?}; {after_restart} under 1 s",
        done.len()
    );
    assert!(
        slowest >= back / 2,
        "no write waited for the S3 restart: the restart did not hit the writer"
    );
    assert!(done.len() > 20, "too few writes: {}", done.len());

    // Every fsync'd file is whole through the same mount...
    for w in &done {
        let got = fs::read(m.join(&format!("w/{}", w.index))).unwrap();
        assert!(got == body(w.index, w.len), "file {} differs", w.index);
    }
    // ...and in the bucket: a new file server with no local state rebuilds it.
    drop(m);
    a.kill9();
    fs::remove_dir_all(&state).unwrap();
    let b = fsd_on(&weed, &state);
    let m = Mount::start(&b, &vol, &tmp.path().join("m2"));
    for w in &done {
        let got = fs::read(m.join(&format!("w/{}", w.index)))
            .unwrap_or_else(|err| panic!("fsync'd file {} lost: {err}", w.index));
        assert!(
            got == body(w.index, w.len),
            "fsync'd file {} differs",
            w.index
        );
    }
    drop(m);
    drop(b);
}
