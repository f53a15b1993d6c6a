//! Table-driven tests with hand-crafted (often malicious) layers. Headers are written
//! byte by byte because `tar::Builder` itself refuses `..` names.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;

#[derive(Clone, Copy)]
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
}

fn header(kind: EntryType, name: &str, link: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_000_000_000);
    let old = h.as_old_mut();
    assert!(
        name.len() < 100 && link.len() < 100,
        "test names must be short"
    );
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname = [0; 100];
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match *e {
            E::File(n, d) => (header(EntryType::Regular, n, "", d.len() as u64, 0o640), d),
            E::Dir(n) => (header(EntryType::Directory, n, "", 0, 0o750), b""),
            E::Symlink(n, t) => (header(EntryType::Symlink, n, t, 0, 0o777), b""),
            E::Hardlink(n, t) => (header(EntryType::Link, n, t, 0, 0o644), b""),
            E::Char(n) => (header(EntryType::Char, n, "", 0, 0o666), b""),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path under `dir` with its kind and contents (for "nothing changed" checks).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(rel, format!("dir {:o}", md.mode()));
                walk(base, &p, out);
            } else if md.file_type().is_symlink() {
                out.insert(rel, format!("link {:?}", fs::read_link(&p).unwrap()));
            } else {
                let data = fs::read(&p).unwrap();
                out.insert(rel, format!("file {:o} {:?}", md.mode(), data));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "unpack tests need root (chown, mknod, trusted.* xattrs): run them as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a/b/c/snapshot");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), "original").unwrap();
    fs::write(tmp.path().join("a/sibling"), "original").unwrap();
    Fixture {
        _tmp: tmp,
        dest,
        outside,
    }
}

#[test]
fn malicious_layers_never_touch_the_outside() {
    let f = fixture();
    let outside = f.outside.to_str().unwrap().to_string();
    let secret = format!("{outside}/secret");
    let tmp_root = f._tmp.path().to_path_buf();
    let via_root = format!("root{secret}");
    let before = snapshot(&tmp_root);

    // (name, entries, expect error?, paths that must exist inside the snapshot afterwards)
    let cases: Vec<(&str, Vec<E<'_>>, bool, Vec<String>)> = vec![
        (
            "dotdot",
            vec![E::File("../../../sibling", b"pwned")],
            true,
            vec![],
        ),
        (
            "inner dotdot",
            vec![E::File("x/../../sibling", b"pwned")],
            true,
            vec![],
        ),
        (
            "absolute path is rebased",
            vec![E::File(&secret, b"pwned")],
            false,
            vec![secret.trim_start_matches('/').to_string()],
        ),
        (
            // The symlink resolves inside the snapshot, where its target does not exist.
            "write through symlink to outside dir",
            vec![
                E::Symlink("evil", &outside),
                E::File("evil/secret", b"pwned"),
            ],
            true,
            vec![],
        ),
        (
            "write through symlink to /",
            vec![E::Symlink("root", "/"), E::File(&via_root, b"pwned")],
            false,
            vec![secret.trim_start_matches('/').to_string()],
        ),
        (
            "write through relative symlink upwards",
            vec![
                E::Symlink("up", "../../../.."),
                E::File("up/sibling", b"pwned"),
            ],
            false,
            vec!["sibling".to_string()],
        ),
        (
            "symlink replaced by file is not written through",
            vec![E::Symlink("f", &secret), E::File("f", b"pwned")],
            false,
            vec!["f".to_string()],
        ),
        (
            "hardlink to outside via dotdot",
            vec![E::Hardlink("h", "../../outside/secret")],
            true,
            vec![],
        ),
        (
            "hardlink to absolute outside path",
            vec![E::Hardlink("h", &secret)],
            true,
            vec![],
        ),
        (
            "hardlink through symlinked dir",
            vec![E::Symlink("d", &outside), E::Hardlink("h", "d/secret")],
            true,
            vec![],
        ),
        (
            "hardlink to symlink then overwrite",
            vec![
                E::Symlink("s", &secret),
                E::Hardlink("h", "s"),
                E::File("h", b"pwned"),
            ],
            false,
            vec!["h".to_string()],
        ),
        ("device node skipped", vec![E::Char("sda")], false, vec![]),
    ];

    for (name, entries, want_err, inside) in cases {
        fs::remove_dir_all(&f.dest).unwrap();
        fs::create_dir(&f.dest).unwrap();
        let res = unpack_layer(&tar_of(&entries)[..], &f.dest, &UnpackLimits::default());
        assert_eq!(res.is_err(), want_err, "{name}: {res:?}");
        if let Err(e) = &res {
            assert!(!e.to_string().is_empty());
        }
        for p in inside {
            assert!(
                fs::symlink_metadata(f.dest.join(&p)).is_ok(),
                "{name}: {p} should exist inside the snapshot"
            );
        }
        assert!(
            !f.dest.join("sda").exists(),
            "{name}: device nodes must be skipped"
        );
        fs::remove_dir_all(&f.dest).unwrap();
        fs::create_dir(&f.dest).unwrap();
        let mut after = snapshot(&tmp_root);
        after.retain(|k, _| !k.starts_with("a/b/c/snapshot/"));
        let mut want = before.clone();
        want.retain(|k, _| !k.starts_with("a/b/c/snapshot/"));
        assert_eq!(
            after, want,
            "{name}: something outside the snapshot changed"
        );
    }
    assert_eq!(fs::read_to_string(&secret).unwrap(), "original");
}

#[test]
fn regular_layer_with_metadata_whiteouts_and_links() {
    let f = fixture();
    let entries = [
        E::Dir("./"),
        E::Dir("etc"),
        E::File("etc/hosts", b"127.0.0.1 localhost\n"),
        E::Hardlink("etc/hosts2", "etc/hosts"),
        E::Symlink("bin", "usr/bin"),
        E::File("usr/bin/tool", b"#!/bin/sh\n"),
        E::File(".wh.removed", b""),
        E::Dir("opaque"),
        E::File("opaque/.wh..wh..opq", b""),
        E::File("opaque/kept", b"k"),
    ];
    let stats = unpack_layer(&tar_of(&entries)[..], &f.dest, &UnpackLimits::default()).unwrap();
    assert_eq!(stats.entries, entries.len() as u64);
    assert_eq!(stats.whiteouts, 2);
    let d = &f.dest;
    let hosts = fs::metadata(d.join("etc/hosts")).unwrap();
    assert_eq!(hosts.mode() & 0o7777, 0o640);
    assert_eq!((hosts.uid(), hosts.gid()), (1234, 4321));
    assert_eq!(hosts.mtime(), 1_000_000_000);
    assert_eq!(hosts.nlink(), 2, "hard link shares the inode");
    let etc = fs::metadata(d.join("etc")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!(
        etc.mtime(),
        1_000_000_000,
        "dir mtime set after its children"
    );
    assert_eq!(fs::read_link(d.join("bin")).unwrap(), Path::new("usr/bin"));
    assert_eq!(
        fs::symlink_metadata(d.join("bin")).unwrap().uid(),
        1234,
        "symlink owner"
    );
    let wh = fs::symlink_metadata(d.join("removed")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!d.join(".wh.removed").exists());
    let opq = xattr_get(&d.join("opaque"), "trusted.overlay.opaque");
    assert_eq!(opq.as_deref(), Some(&b"y"[..]));
    assert!(d.join("opaque/kept").exists());
    assert!(!d.join("opaque/.wh..wh..opq").exists());
    // The root entry's mode was applied to the snapshot dir itself.
    assert_eq!(fs::metadata(d).unwrap().mode() & 0o7777, 0o750);
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn compressed_layers_and_limits() {
    let f = fixture();
    let plain = tar_of(&[E::File("big", &[7u8; 20_000]), E::File("small", b"s")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 1).unwrap();
    for (name, data) in [("plain", &plain), ("gzip", &gz), ("zstd", &zst)] {
        fs::remove_dir_all(&f.dest).unwrap();
        fs::create_dir(&f.dest).unwrap();
        unpack_layer(&data[..], &f.dest, &UnpackLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            fs::read(f.dest.join("big")).unwrap().len(),
            20_000,
            "{name}"
        );
        assert_eq!(fs::read(f.dest.join("small")).unwrap(), b"s", "{name}");
    }
    let small = UnpackLimits {
        max_bytes: 8_000,
        max_entries: 100,
    };
    let e = unpack_layer(&gz[..], &f.dest, &small).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e}");
    let few = UnpackLimits {
        max_bytes: 1 << 30,
        max_entries: 1,
    };
    let e = unpack_layer(&plain[..], &f.dest, &few).unwrap_err();
    assert!(matches!(e, UnpackError::TooManyEntries { .. }), "{e}");
    let e = unpack_layer(&b"this is not a tar archive at all"[..], &f.dest, &few);
    assert!(e.is_err() || e.unwrap().entries == 0);
}

#[test]
fn trusted_xattrs_from_the_archive_are_ignored() {
    let f = fixture();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.user.note", &b"hello"[..]),
    ])
    .unwrap();
    let h = header(EntryType::Directory, "d", "", 0, 0o755);
    b.append(&h, &b""[..]).unwrap();
    let data = b.into_inner().unwrap();
    unpack_layer(&data[..], &f.dest, &UnpackLimits::default()).unwrap();
    assert_eq!(
        xattr_get(&f.dest.join("d"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(
        xattr_get(&f.dest.join("d"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
}

/// A directory with the given mode, owner and mtime (made by hand, as a lower snapshot).
fn mkdir_as(p: &Path, mode: u32, uid: u32, gid: u32, mtime: u64) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(p).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    File::open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn attrs(p: &Path) -> (u32, u32, u32) {
    let md = fs::symlink_metadata(p).unwrap();
    assert!(md.is_dir(), "{p:?} is a directory");
    (md.mode() & 0o7777, md.uid(), md.gid())
}

#[test]
fn implicit_parents_take_their_attributes_from_the_lower_snapshots() {
    let f = fixture();
    let base = f.dest.parent().unwrap().to_path_buf();
    let (bottom, middle) = (base.join("bottom"), base.join("middle"));
    // Bottom layer.
    mkdir_as(&bottom.join("users"), 0o755, 0, 0, 50);
    mkdir_as(&bottom.join("users/alice"), 0o700, 12345, 54321, 111);
    mkdir_as(&bottom.join("data"), 0o777, 2, 2, 50);
    mkdir_as(&bottom.join("gone"), 0o711, 5, 5, 50);
    mkdir_as(&bottom.join("hidden/x"), 0o701, 6, 6, 50);
    mkdir_as(&bottom.join("late"), 0o700, 77, 77, 5);
    // Middle layer: overrides data, whites out gone, makes hidden opaque, and has a
    // symlink pointing outside with a tempting directory there.
    mkdir_as(&middle.join("data"), 0o750, 1000, 1000, 222);
    let gone = CString::new(middle.join("gone").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string; a 0/0 char device is an overlayfs whiteout.
    assert_eq!(unsafe { libc::mknod(gone.as_ptr(), libc::S_IFCHR, 0) }, 0);
    mkdir_as(&middle.join("hidden"), 0o710, 8, 8, 50);
    let hidden = CString::new(middle.join("hidden").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and value.
    let r = unsafe {
        libc::setxattr(
            hidden.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0, "setting trusted.overlay.opaque");
    mkdir_as(&f.outside.join("sub"), 0o701, 9, 9, 50);
    std::os::unix::fs::symlink(&f.outside, middle.join("evil")).unwrap();

    let entries = [
        E::File("users/alice/notes.txt", b"hi"),
        E::File("data/f", b"d"),
        E::File("gone/f", b"g"),
        E::File("hidden/x/f", b"h"),
        E::File("evil/sub/f", b"e"),
        E::File("fresh/f", b"n"),
        E::File("late/f", b"l"),
        // An explicit entry after the implicit creation wins.
        E::Dir("late"),
    ];
    unpack_layer_onto(
        &tar_of(&entries)[..],
        &f.dest,
        &[bottom.clone(), middle.clone()],
        &UnpackLimits::default(),
    )
    .unwrap();
    let d = &f.dest;
    assert_eq!(attrs(&d.join("users")), (0o755, 0, 0));
    assert_eq!(attrs(&d.join("users/alice")), (0o700, 12345, 54321));
    let alice = fs::metadata(d.join("users/alice")).unwrap();
    assert_eq!(alice.mtime(), 111, "mtime from the lower snapshot");
    assert_eq!(
        attrs(&d.join("data")),
        (0o750, 1000, 1000),
        "topmost lower wins"
    );
    assert_eq!(attrs(&d.join("gone")), (0o755, 0, 0), "whited out below");
    assert_eq!(attrs(&d.join("hidden")), (0o710, 8, 8));
    assert_eq!(
        attrs(&d.join("hidden/x")),
        (0o755, 0, 0),
        "under an opaque dir"
    );
    assert_eq!(attrs(&d.join("evil")), (0o755, 0, 0), "a symlink below");
    assert_eq!(attrs(&d.join("evil/sub")), (0o755, 0, 0), "never followed");
    assert_eq!(
        attrs(&d.join("fresh")),
        (0o755, 0, 0),
        "in no lower snapshot"
    );
    assert_eq!(
        attrs(&d.join("late")),
        (0o750, 1234, 4321),
        "explicit entry wins"
    );
    let late = fs::metadata(d.join("late")).unwrap();
    assert_eq!(late.mtime(), 1_000_000_000, "explicit entry's mtime wins");
    // The lower snapshots and the outside were only read.
    assert_eq!(attrs(&bottom.join("users/alice")), (0o700, 12345, 54321));
    assert_eq!(attrs(&f.outside.join("sub")), (0o701, 9, 9));
    assert!(!middle.join("data/f").exists() && !f.outside.join("sub/f").exists());
}
