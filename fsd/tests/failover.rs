//! Ownership and failover on one object store (root and /dev/fuse required): two file
//! servers, a mount that knows both; the owner is killed with SIGKILL and the mount
//! keeps working through the other after the lease expires. Also: a volume comes back
//! from the object store alone after its server's state directory is deleted.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{require_fuse_and_root, volume, Mount, Server};

const TTL: &str = "1500";

#[test]
fn mount_fails_over_to_the_second_server_after_sigkill() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let args = ["--lease-ttl-ms", TTL];
    let mut a = Server::start_on(&store, &tmp.path().join("a"), &args);
    let b = Server::start_on(&store, &tmp.path().join("b"), &args);
    let vol = volume("failover");
    let m = Mount::start_url(
        &format!("{},{}", a.url(), b.url()),
        &vol,
        &tmp.path().join("m"),
    );

    let data: Vec<u8> = (0..(6 << 20)).map(|i: usize| (i * 13) as u8).collect();
    let mut f = fs::File::create(m.join("synced.bin")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/small"), b"small").unwrap(); // close flushes
    a.kill9();

    let started = Instant::now();
    assert!(
        fs::read(m.join("synced.bin")).unwrap() == data,
        "fsynced data lost in failover"
    );
    let pause = started.elapsed();
    assert_eq!(fs::read(m.join("dir/small")).unwrap(), b"small");
    fs::write(m.join("after.txt"), b"written via b").unwrap();
    assert_eq!(fs::read(m.join("after.txt")).unwrap(), b"written via b");
    eprintln!("failover pause: {pause:?}");
    assert!(pause < Duration::from_secs(15), "failover took {pause:?}");
    drop(m);
    drop(b);
}

#[test]
fn volume_comes_back_after_the_state_dir_is_deleted() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let state = tmp.path().join("state");
    let vol = volume("rebuild");
    let mut a = Server::start_on(&store, &state, &["--lease-ttl-ms", TTL]);
    let m = Mount::start(&a, &vol, &tmp.path().join("m"));
    let mut expected = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}");
        let body = format!("contents of {i}").repeat(i * 100 + 1);
        fs::write(m.join(&name), &body).unwrap();
        expected.push((name, body));
    }
    fs::create_dir(m.join("sub")).unwrap();
    fs::write(m.join("sub/x"), b"x").unwrap();
    fs::set_permissions(
        m.join("f3"),
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    fs::File::open(m.join("f3")).unwrap().sync_all().unwrap();
    drop(m);
    a.kill9();
    fs::remove_dir_all(&state).unwrap();

    let b = Server::start_on(&store, &state, &["--lease-ttl-ms", TTL]);
    let m = Mount::start(&b, &vol, &tmp.path().join("m2"));
    for (name, body) in &expected {
        assert_eq!(&fs::read_to_string(m.join(name)).unwrap(), body, "{name}");
    }
    assert_eq!(fs::read(m.join("sub/x")).unwrap(), b"x");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(m.join("f3")).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o600);
    drop(m);
}
