//! A crash of the file server: data that was fsynced is there after a restart, also
//! when the crash comes while later writes to the same file are being uploaded in the
//! background (write-behind), and data that was only written makes the next fsync fail
//! with EIO (root and /dev/fuse required). Its own test binary, so no other test forks while it holds dirty files.

mod common;

use std::fs;
use std::io::Write;

use common::{require_fuse_and_root, volume, Mount, Server};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn errno(err: &std::io::Error) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("expected an OS error, got {err}"))
}

#[test]
fn fsynced_data_survives_a_server_crash() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(tmp.path());
    let vol = volume("crash");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let launcher = server.prepare_restart();

    let data = pattern(5 << 20);
    let mut f = fs::File::create(a.join("durable.bin")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    // More written to the same file and not synced: its full chunks (the second,
    // holding synced bytes too, and the ones after) go to the store in the background
    // and the server dies with uploads on their way.
    f.write_all(&pattern(24 << 20)).unwrap();
    // Written but never synced: may be lost, and its fsync must then say so.
    let mut unsynced = fs::File::create(a.join("unsynced.bin")).unwrap();
    unsynced.write_all(b"maybe lost").unwrap();

    server.restart_from(launcher); // SIGKILL, then start again on the same dirs and port

    // The running client reconnects by itself. The unsynced tail may or may not be
    // there; the synced head is, whole.
    let read = fs::read(a.join("durable.bin")).unwrap();
    assert!(
        read.len() >= data.len() && read[..data.len()] == data[..],
        "fsynced data lost"
    );
    let err = unsynced.sync_all().unwrap_err();
    assert_eq!(
        errno(&err),
        libc::EIO,
        "fsync after a server crash must report EIO"
    );
    drop(f);

    // So does a fresh mount.
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));
    let read = fs::read(b.join("durable.bin")).unwrap();
    assert!(
        read.len() >= data.len() && read[..data.len()] == data[..],
        "fsynced data lost"
    );
    drop(unsynced);
    drop(b);
    drop(a);
}
