//! End-to-end tests of `berth-fsd`: a real server, two real FUSE mounts of the same
//! volume, and plain `std::fs` calls (root and /dev/fuse required).

mod common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{require_fuse_and_root, volume, Mount, Server};

fn errno(err: &std::io::Error) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("expected an OS error, got {err}"))
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn two_mounts_share_one_volume() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("share");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));

    // Root: 0755, owned by root.
    let root = fs::metadata(&a.path).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o755);
    assert_eq!(root.uid(), 0);

    // The mount raised its readahead (after INIT, which would lower it again), so a
    // sequential reader's requests arrive 1 MiB at a time.
    let dev = root.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let readahead = fs::read_to_string(&knob).unwrap_or_else(|e| panic!("{knob}: {e}"));
    assert_eq!(
        readahead.trim(),
        berth_fsd::mount::READAHEAD_KB.to_string(),
        "{knob}"
    );

    // Written on A, read on B.
    fs::write(a.join("hello.txt"), b"hello from a\n").unwrap();
    assert_eq!(fs::read(b.join("hello.txt")).unwrap(), b"hello from a\n");

    // mkdir and listing, through std::fs and through ls.
    fs::create_dir(a.join("dir")).unwrap();
    fs::write(a.join("dir/one"), b"1").unwrap();
    fs::write(a.join("dir/two"), b"22").unwrap();
    let mut names: Vec<String> = fs::read_dir(b.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["one", "two"]);
    let ls = Command::new("ls")
        .arg("-la")
        .arg(b.join("dir"))
        .output()
        .unwrap();
    assert!(
        ls.status.success(),
        "ls failed: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("one") && listing.contains("two"),
        "ls -la: {listing}"
    );
    assert_eq!(fs::metadata(b.join("dir/two")).unwrap().len(), 2);

    // Errnos reach the application.
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(b.join("hello.txt"))
        .unwrap_err();
    assert_eq!(errno(&err), libc::EEXIST);
    let err = fs::remove_dir(b.join("dir")).unwrap_err();
    assert_eq!(errno(&err), libc::ENOTEMPTY);
    let err = fs::read(a.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = fs::write(a.join(&"x".repeat(256)), b"").unwrap_err();
    assert_eq!(errno(&err), libc::ENAMETOOLONG);
    let err = fs::remove_file(a.join("dir")).unwrap_err();
    assert_eq!(errno(&err), libc::EISDIR);

    // Rename over an existing file, seen from the other mount.
    fs::write(a.join("new"), b"new contents").unwrap();
    fs::write(a.join("target"), b"old contents").unwrap();
    fs::rename(a.join("new"), b.join("target")).unwrap_or_else(|e| {
        // A rename across two mounts is EXDEV; do it within B instead.
        assert_eq!(errno(&e), libc::EXDEV);
        fs::rename(b.join("new"), b.join("target")).unwrap();
    });
    assert_eq!(fs::read(a.join("target")).unwrap(), b"new contents");
    assert_eq!(
        fs::metadata(b.join("new")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A's name "new" may stay cached for the entry TTL, but an open checks it.
    assert_eq!(
        fs::read(a.join("new")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Unlink; rmdir once empty.
    fs::remove_file(b.join("dir/one")).unwrap();
    fs::remove_file(b.join("dir/two")).unwrap();
    assert_eq!(
        fs::read(a.join("dir/one")).unwrap_err().kind(),
        ErrorKind::NotFound,
        "an open checks a cached name with the server"
    );
    within_ttl(|| fs::metadata(a.join("dir/one")).is_err_and(|e| e.kind() == ErrorKind::NotFound));
    fs::remove_dir(a.join("dir")).unwrap();
    assert_eq!(
        fs::metadata(b.join("dir")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // chmod on A is seen on B (after the attribute TTL at most).
    fs::set_permissions(a.join("hello.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(a.join("hello.txt")).unwrap().mode() & 0o7777,
        0o600
    );
    within_ttl(|| fs::metadata(b.join("hello.txt")).unwrap().mode() & 0o7777 == 0o600);

    // Truncate (down, then up again: the cut bytes must not come back).
    let f = OpenOptions::new()
        .write(true)
        .open(a.join("hello.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(b.join("hello.txt")).unwrap(), b"hello");
    let f = OpenOptions::new()
        .write(true)
        .open(b.join("hello.txt"))
        .unwrap();
    f.set_len(8).unwrap();
    drop(f);
    assert_eq!(fs::read(a.join("hello.txt")).unwrap(), b"hello\0\0\0");

    // 10 MiB, byte-exact, across chunk boundaries, read back on the other mount.
    let big = pattern(10 << 20);
    fs::write(a.join("big.bin"), &big).unwrap();
    let back = fs::read(b.join("big.bin")).unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "10 MiB file differs after the round trip");
    // A random-access read across the 4 MiB chunk boundary.
    let mut f = fs::File::open(b.join("big.bin")).unwrap();
    f.seek(SeekFrom::Start((4 << 20) - 10)).unwrap();
    let mut buf = [0u8; 20];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &big[(4 << 20) - 10..(4 << 20) + 10]);

    // Appends from both mounts.
    for (mount, line) in [(&a, "a1\n"), (&b, "b1\n"), (&a, "a2\n"), (&b, "b2\n")] {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(mount.join("log.txt"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    assert_eq!(
        fs::read_to_string(a.join("log.txt")).unwrap(),
        "a1\nb1\na2\nb2\n"
    );
    assert_eq!(
        fs::read_to_string(b.join("log.txt")).unwrap(),
        "a1\nb1\na2\nb2\n"
    );

    // A small file comes with the open; a write through another descriptor on the
    // same mount is still what the first descriptor reads afterwards.
    fs::write(b.join("small.txt"), b"version one").unwrap();
    let first = fs::File::open(a.join("small.txt")).unwrap();
    let second = OpenOptions::new()
        .write(true)
        .open(a.join("small.txt"))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&second, b"VERSION", 0).unwrap();
    let mut buf = [0u8; 11];
    std::os::unix::fs::FileExt::read_exact_at(&first, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"VERSION one");
    drop((first, second));
    assert_eq!(fs::read(b.join("small.txt")).unwrap(), b"VERSION one");

    // statfs works (df).
    let df = Command::new("df").arg(&a.path).output().unwrap();
    assert!(
        df.status.success(),
        "df failed: {}",
        String::from_utf8_lossy(&df.stderr)
    );
    assert!(String::from_utf8_lossy(&df.stdout).contains(&format!("berth:{vol}")));

    // Metrics counted the work.
    let metrics = server.metrics();
    assert!(
        metrics.contains("berth_fsd_ops_total{op=\"write\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_fsd_ops_total{op=\"rmdir\",outcome=\"enotempty\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_fsd_written_bytes_total"),
        "{metrics}"
    );

    let (mut a, mut b) = (a, b);
    assert!(a.stop(), "mount A did not exit 0 on SIGTERM");
    assert!(b.stop(), "mount B did not exit 0 on SIGTERM");
}

/// Waits for a change made on one mount to show in `stat` on another: names and
/// attributes may be cached for the TTL (1 s by default), never longer.
fn within_ttl(seen: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !seen() {
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1500),
            "a change on the other mount was still not seen after 1.5 s (TTL 1 s)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `berth_fsd_<name>` summed over its label sets, from the server's `/metrics`.
fn metric(server: &Server, name: &str, labels: &str) -> u64 {
    sum_of(&server.metrics(), name, labels)
}

/// `berth_fsd_<name>` summed over the label sets that contain `labels`, in `text`.
fn sum_of(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("berth_fsd_{name}");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(labels))
        .filter(|l| {
            let rest = &l[prefix.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Callback promises: once a mount has opened one file of a directory, the server has
/// promised it the directory's names and small files, so opening them (again) asks the
/// server nothing; and every change another mount makes still shows at the next open,
/// because the change is not answered before the promise holder dropped its copy.
#[test]
fn promised_opens_ask_nothing_and_changes_elsewhere_still_show() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("promise");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let mut b = Mount::start(&server, &vol, &tmp.path().join("b"));
    fs::create_dir(a.join("app")).unwrap();
    let body = |i: usize| format!("module {i}\n").repeat(20 + i).into_bytes();
    for i in 0..40 {
        fs::write(a.join(&format!("app/m{i:02}.py")), body(i)).unwrap();
    }
    let opens = |s: &Server| metric(s, "ops_total", "op=\"open\"");
    let read_all = |m: &Mount| {
        for i in 0..40 {
            let path = m.join(&format!("app/m{i:02}.py"));
            assert_eq!(fs::read(&path).unwrap(), body(i), "{}", path.display());
        }
    };
    // B's watch stream comes up within a heartbeat of the mount.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = opens(&server);
    read_all(&b);
    let cold = opens(&server) - before;
    let before = opens(&server);
    read_all(&b);
    let warm = opens(&server) - before;
    println!("server round trips for 40 opens on B: cold {cold}, warm {warm}");
    // One asks for the directory; a few more only if B's trust lapsed meanwhile
    // (a heartbeat answered late on a loaded machine).
    assert!(cold <= 5, "{cold} of 40 cold opens asked the server");
    assert!(warm <= 5, "{warm} of 40 warm opens asked the server");
    // The mount's own count agrees.
    let by_promise = sum_of(&b.metrics(), "mount_opens_total", "by=\"promise\"");
    assert!(
        by_promise >= 70,
        "only {by_promise} of 80 opens answered by promises"
    );
    assert!(sum_of(&b.metrics(), "mount_watch_streams_total", "") >= 1);

    // Changes on A, each seen by B's next open.
    let bigger = b"rewritten on A, longer than before\n".repeat(40);
    fs::write(a.join("app/m05.py"), &bigger).unwrap();
    assert_eq!(fs::read(b.join("app/m05.py")).unwrap(), bigger);
    let mut same_size = body(6);
    same_size.reverse();
    fs::write(a.join("app/m06.py"), &same_size).unwrap();
    assert_eq!(fs::read(b.join("app/m06.py")).unwrap(), same_size);
    fs::rename(a.join("app/m07.py"), a.join("app/m08.py")).unwrap();
    assert_eq!(fs::read(b.join("app/m08.py")).unwrap(), body(7));
    let gone = fs::read(b.join("app/m07.py")).unwrap_err();
    assert_eq!(errno(&gone), libc::ENOENT);
    fs::remove_file(a.join("app/m09.py")).unwrap();
    assert_eq!(
        errno(&fs::read(b.join("app/m09.py")).unwrap_err()),
        libc::ENOENT
    );
    // B's lookups of an absent name (answered from a promised whole listing when B
    // holds one, else by the server): A's create breaks that promise, so B finds
    // the new file at once.
    let stats = |s: &Server| metric(s, "ops_total", "op=\"lookup\"");
    assert_eq!(fs::read(b.join("app/m01.py")).unwrap(), body(1));
    let before = stats(&server);
    for _ in 0..5 {
        assert_eq!(
            errno(&fs::metadata(b.join("app/new.py")).unwrap_err()),
            libc::ENOENT
        );
    }
    println!(
        "5 lookups of an absent name: {} server round trips",
        stats(&server) - before
    );
    fs::write(a.join("app/new.py"), b"new\n").unwrap();
    assert_eq!(fs::read(b.join("app/new.py")).unwrap(), b"new\n");
    fs::create_dir(a.join("app/sub")).unwrap();
    assert!(fs::metadata(b.join("app/sub")).unwrap().is_dir());
    fs::write(a.join("app/sub/deep.py"), b"deep\n").unwrap();
    assert_eq!(fs::read(b.join("app/sub/deep.py")).unwrap(), b"deep\n");
    assert!(
        metric(&server, "promise_breaks_total", "") > 0,
        "no promise was broken"
    );
    assert_eq!(metric(&server, "promise_break_timeouts_total", ""), 0);

    // A mount killed while holding promises: A's change is not lost or refused, it
    // waits for the dead mount's promises to lapse (counted), then goes through.
    read_all_but(&b, &[5, 6, 7, 8, 9]);
    b.kill9();
    let started = std::time::Instant::now();
    fs::write(a.join("app/m10.py"), b"after B died\n").unwrap();
    println!("write after B died took {:?}", started.elapsed());
    assert_eq!(fs::read(a.join("app/m10.py")).unwrap(), b"after B died\n");
    assert_eq!(metric(&server, "promise_break_timeouts_total", ""), 1);
}

fn read_all_but(m: &Mount, skip: &[usize]) {
    for i in (0..40).filter(|i| !skip.contains(i)) {
        fs::read(m.join(&format!("app/m{i:02}.py"))).unwrap();
    }
}

/// A promise holder that stops answering while its stream stays open (stopped, cut
/// off): another mount's change is not refused or lost, it waits out the promise
/// lifetime; the holder, resumed, trusts nothing it held and sees the change.
#[test]
fn a_stopped_holder_is_waited_out_and_sees_the_change_when_it_resumes() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let vol = volume("stopped");
    let a = Mount::start(&server, &vol, &tmp.path().join("a"));
    let b = Mount::start(&server, &vol, &tmp.path().join("b"));
    fs::create_dir(a.join("app")).unwrap();
    fs::write(a.join("app/x.txt"), b"version 1\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for _ in 0..2 {
        assert_eq!(fs::read(b.join("app/x.txt")).unwrap(), b"version 1\n");
    }
    b.signal(nix::sys::signal::Signal::SIGSTOP);
    let started = std::time::Instant::now();
    fs::write(
        a.join("app/x.txt"),
        b"version 2, written while B was stopped\n",
    )
    .unwrap();
    println!("write while B was stopped took {:?}", started.elapsed());
    let timeouts = metric(&server, "promise_break_timeouts_total", "");
    b.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        timeouts >= 1,
        "the change did not wait for the stopped holder"
    );
    assert_eq!(
        fs::read(b.join("app/x.txt")).unwrap(),
        b"version 2, written while B was stopped\n"
    );
}
