//! Per-volume quota on a real mount: writes past the byte quota fail with ENOSPC and
//! change nothing, creates past the inode quota fail with EDQUOT, space comes back
//! after deleting (root and /dev/fuse required). Its own test binary: the quota is set
//! through the server's environment.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use common::{require_fuse_and_root, volume, Mount, Server};

#[test]
fn writes_past_the_quota_fail_whole_and_nothing_is_corrupt() {
    require_fuse_and_root();
    // Inherited by the server child; this binary starts no other server.
    std::env::set_var("BERTH_FSD_QUOTA_BYTES", (1u64 << 20).to_string());
    std::env::set_var("BERTH_FSD_QUOTA_INODES", "20");
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let a = Mount::start(&server, &volume("quota"), &tmp.path().join("a"));

    fs::write(a.join("keep"), vec![1u8; 700 << 10]).unwrap();
    // 400 KiB more passes 1 MiB: ENOSPC, and the file is not half written.
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(a.join("big"))
        .unwrap();
    let err = f
        .write_all(&vec![2u8; 400 << 10])
        .and_then(|()| f.sync_all())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert!(fs::metadata(a.join("big")).unwrap().len() < 400 << 10);
    // Growing by truncate is refused too.
    let f = OpenOptions::new().write(true).open(a.join("keep")).unwrap();
    assert_eq!(
        f.set_len(2 << 20).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    drop(f);
    // What was there is intact.
    assert_eq!(fs::read(a.join("keep")).unwrap(), vec![1u8; 700 << 10]);
    // df shows the quota as the size.
    let st = nix::sys::statvfs::statvfs(&a.path).unwrap();
    assert_eq!(st.blocks() * st.fragment_size(), 1 << 20);

    // Deleting gives the space back.
    fs::remove_file(a.join("keep")).unwrap();
    fs::remove_file(a.join("big")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(a.join("again"), vec![3u8; 900 << 10]).unwrap();
    assert_eq!(fs::read(a.join("again")).unwrap().len(), 900 << 10);

    // Inodes: the root and "again" count; creating past 20 is EDQUOT.
    let mut made = 0;
    let err = loop {
        match fs::write(a.join(&format!("f{made}")), b"") {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100, "inode quota not enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert_eq!(made, 18);
    assert_eq!(
        fs::create_dir(a.join("d")).unwrap_err().raw_os_error(),
        Some(libc::EDQUOT)
    );

    let mut a = a;
    assert!(a.stop(), "mount did not exit 0");
}
