//! POSIX operations beyond the basics on a real mount: symlinks, hard links, extended
//! attributes, `fcntl` locks between two mounts, odd names and the name length limit,
//! paths that try to leave the volume (root and /dev/fuse required).

mod common;

use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use common::{require_fuse_and_root, volume, Mount, Server};

fn errno_of(err: &std::io::Error) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("expected an OS error, got {err}"))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings and a slice that outlives the call.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 128 << 10];
    // SAFETY: buf is writable for buf.len() bytes.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn listxattr(p: &Path) -> Vec<String> {
    let p = cpath(p);
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: buf is writable for buf.len() bytes.
    let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(rc as usize);
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// `fcntl(F_SETLK)` of the whole file; `Err(errno)` if refused.
fn setlk(f: &fs::File, kind: i32) -> Result<(), i32> {
    let fl = libc::flock {
        l_type: kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fd is open and fl is a valid flock struct.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn symlinks_hard_links_and_xattrs() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("links");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));

    // Symlinks: relative target followed, target read back on the other mount.
    fs::write(a.join("target.txt"), b"through the link").unwrap();
    symlink("target.txt", a.join("link")).unwrap();
    assert_eq!(
        fs::read_link(b.join("link")).unwrap(),
        Path::new("target.txt")
    );
    assert_eq!(fs::read(b.join("link")).unwrap(), b"through the link");
    let meta = fs::symlink_metadata(b.join("link")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.len(), "target.txt".len() as u64);
    let err = symlink("x", a.join("link")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST);
    // Dangling symlinks are fine; following them is ENOENT.
    symlink("nowhere", a.join("dangling")).unwrap();
    assert_eq!(
        errno_of(&fs::read(a.join("dangling")).unwrap_err()),
        libc::ENOENT
    );
    fs::remove_file(a.join("dangling")).unwrap();

    // Hard links: one inode, two names, nlink counts them, data survives one unlink.
    fs::write(a.join("orig"), b"shared bytes").unwrap();
    fs::hard_link(a.join("orig"), a.join("alias")).unwrap();
    let (m1, m2) = (
        fs::metadata(b.join("orig")).unwrap(),
        fs::metadata(b.join("alias")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m2.nlink(), 2);
    fs::OpenOptions::new()
        .append(true)
        .open(b.join("alias"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(fs::read(a.join("orig")).unwrap(), b"shared bytes!");
    fs::remove_file(a.join("orig")).unwrap();
    assert_eq!(fs::read(b.join("alias")).unwrap(), b"shared bytes!");
    assert_eq!(fs::metadata(b.join("alias")).unwrap().nlink(), 1);
    fs::create_dir(a.join("d")).unwrap();
    let err = fs::hard_link(a.join("d"), a.join("d2")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EPERM);
    // Rename onto another link of the same inode does nothing (POSIX).
    fs::hard_link(a.join("alias"), a.join("alias2")).unwrap();
    fs::rename(a.join("alias"), a.join("alias2")).unwrap();
    assert!(a.join("alias").exists() && a.join("alias2").exists());

    // Extended attributes.
    let f = a.join("target.txt");
    setxattr(&f, "user.color", b"blue", 0).unwrap();
    assert_eq!(
        getxattr(&b.join("target.txt"), "user.color").unwrap(),
        b"blue"
    );
    assert_eq!(
        setxattr(&f, "user.color", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&f, "user.size", b"1", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    setxattr(&f, "user.color", b"red", libc::XATTR_REPLACE).unwrap();
    setxattr(&f, "user.empty", b"", 0).unwrap();
    setxattr(&f, "user.big", &vec![7u8; 60 << 10], 0).unwrap();
    assert_eq!(getxattr(&f, "user.big").unwrap().len(), 60 << 10);
    assert_eq!(
        setxattr(&f, "user.huge", &vec![7u8; (64 << 10) + 1], 0),
        Err(libc::E2BIG)
    );
    // 60 KiB + 8 KiB passes the 64 KiB per-file budget.
    assert_eq!(
        setxattr(&f, "user.more", &vec![1u8; 8 << 10], 0),
        Err(libc::ENOSPC)
    );
    let mut names = listxattr(&b.join("target.txt"));
    names.sort();
    assert_eq!(names, ["user.big", "user.color", "user.empty"]);
    assert_eq!(getxattr(&f, "user.color").unwrap(), b"red");
    assert_eq!(getxattr(&f, "user.empty").unwrap(), b"");
    removexattr(&f, "user.big").unwrap();
    assert_eq!(removexattr(&f, "user.big"), Err(libc::ENODATA));
    assert_eq!(getxattr(&f, "user.big"), Err(libc::ENODATA));
    assert_eq!(
        setxattr(&f, "security.berth", b"x", 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(getxattr(&f, "security.selinux"), Err(libc::ENODATA));
    // Attributes go with the inode.
    fs::remove_file(&f).unwrap();
    fs::write(&f, b"new").unwrap();
    assert_eq!(listxattr(&f), Vec::<String>::new());

    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "mounts did not exit 0");
}

#[test]
fn fcntl_locks_exclude_across_mounts() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("locks");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));
    fs::write(a.join("db"), b"x").unwrap();

    let fa = OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.join("db"))
        .unwrap();
    let fb = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("db"))
        .unwrap();
    setlk(&fa, libc::F_WRLCK).unwrap();
    assert_eq!(setlk(&fb, libc::F_WRLCK), Err(libc::EAGAIN));
    assert_eq!(setlk(&fb, libc::F_RDLCK), Err(libc::EAGAIN));
    // F_GETLK on B names A's lock.
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: open fd, valid flock struct.
    assert_eq!(
        unsafe { libc::fcntl(fb.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    assert_eq!(fl.l_type, libc::F_WRLCK as i16);
    // Unlock, then B may lock; shared locks coexist.
    setlk(&fa, libc::F_UNLCK).unwrap();
    setlk(&fb, libc::F_RDLCK).unwrap();
    setlk(&fa, libc::F_RDLCK).unwrap();
    assert_eq!(setlk(&fa, libc::F_WRLCK), Err(libc::EAGAIN));
    // Closing B's descriptor drops B's lock (POSIX close rule).
    drop(fb);
    setlk(&fa, libc::F_WRLCK).unwrap();
    drop(fa);
    let fb = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("db"))
        .unwrap();
    setlk(&fb, libc::F_WRLCK).unwrap();
    drop(fb);

    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "mounts did not exit 0");
}

#[test]
fn odd_names_limits_and_escapes() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("names");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));

    let odd: Vec<&[u8]> = vec![
        b"with space",
        b"new\nline",
        b"\xff\xfe not utf-8 \x80",
        b"tab\tand\x01control",
        b"-leading-dash",
        "émoji 🚢".as_bytes(),
    ];
    for (i, name) in odd.iter().enumerate() {
        fs::write(a.path.join(OsStr::from_bytes(name)), [i as u8]).unwrap();
    }
    let mut listed: Vec<Vec<u8>> = fs::read_dir(&b.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    listed.sort();
    let mut want: Vec<Vec<u8>> = odd.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(listed, want);
    for (i, name) in odd.iter().enumerate() {
        assert_eq!(
            fs::read(b.path.join(OsStr::from_bytes(name))).unwrap(),
            [i as u8]
        );
    }

    // 255 bytes is the limit, for files, directories, symlinks and renames.
    let max = "n".repeat(255);
    let long = "n".repeat(256);
    fs::write(a.join(&max), b"ok").unwrap();
    assert_eq!(fs::read(b.join(&max)).unwrap(), b"ok");
    fs::create_dir(a.join(&format!("d{}", &max[1..]))).unwrap();
    for err in [
        fs::write(a.join(&long), b"").unwrap_err(),
        fs::create_dir(a.join(&long)).unwrap_err(),
        symlink("x", a.join(&long)).unwrap_err(),
        fs::rename(a.join(&max), a.join(&long)).unwrap_err(),
        fs::hard_link(a.join(&max), a.join(&long)).unwrap_err(),
    ] {
        assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    }

    // `..` at the root of the mount is the mount point's parent, as for any mount: the
    // kernel resolves it and the file server never sees `..`.
    assert_eq!(
        fs::canonicalize(a.path.join("..")).unwrap(),
        fs::canonicalize(tmp.path()).unwrap()
    );
    // A symlink to /etc is just a symlink: stored verbatim, resolved by the reader's
    // kernel in the reader's own mount namespace; nothing of the host's /etc is copied
    // into the volume or read by the server.
    symlink("/etc", a.join("etc-link")).unwrap();
    symlink("../../../../../../etc/passwd", a.join("up-link")).unwrap();
    assert_eq!(
        fs::read_link(b.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(
        fs::read_link(b.join("up-link")).unwrap(),
        Path::new("../../../../../../etc/passwd")
    );
    assert!(fs::symlink_metadata(b.join("etc-link"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Writing through it writes where the *reader's* namespace points, so create a
    // file through a link to a directory inside the volume and check it lands there.
    fs::create_dir(a.join("inside")).unwrap();
    symlink("inside", a.join("in-link")).unwrap();
    fs::write(b.join("in-link/f"), b"via link").unwrap();
    assert_eq!(fs::read(a.join("inside/f")).unwrap(), b"via link");
    let stored = walk(&server.store);
    assert!(
        !stored
            .iter()
            .any(|p| p.contains("passwd") || p.ends_with("/etc")),
        "object store holds host paths: {stored:?}"
    );

    let (mut a, mut b) = (a, b);
    assert!(a.stop() && b.stop(), "mounts did not exit 0");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}
