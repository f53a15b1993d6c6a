//! Two mounts of one volume on two simulated workers (root and /dev/fuse required):
//! each `berth-fsd mount` client runs in its own network namespace and reaches the
//! file server over TCP through a veth and a bridge (see `common/netns.rs`).
//!
//! - Close-to-open: what one worker wrote and closed, the other sees on its next open,
//!   round after round, shrinking and growing, new names included.
//! - `fcntl` locks and `flock` exclude each other across the two workers; a waiting
//!   `F_SETLKW` is granted when the holder unlocks; a lock goes when its holder
//!   closes the file or is killed with SIGKILL, not at lease expiry.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::Workers;
use common::{require_fuse_and_root, volume, Mount, Server};

/// A server on the host's bridge address and a mount in each of two namespaces.
struct Cluster {
    // Drop order: mounts, then the server, then the namespaces.
    a: Mount,
    b: Mount,
    _server: Server,
    workers: Workers,
    _tmp: tempfile::TempDir,
}

fn cluster(tag: &str) -> Cluster {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let workers = Workers::new(2);
    let server = Server::start_full(
        &tmp.path().join("store"),
        &tmp.path().join("state"),
        &[],
        &[],
        &workers.host_ip,
    );
    let vol = volume(tag);
    let a = Mount::start_in(
        &server.url(),
        &vol,
        &tmp.path().join("a"),
        Some(&workers.netns(0)),
    );
    let b = Mount::start_in(
        &server.url(),
        &vol,
        &tmp.path().join("b"),
        Some(&workers.netns(1)),
    );
    // The clients really talk to the server from their namespaces.
    for i in 0..2 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec"])
            .arg(workers.netns(i).file_name().unwrap())
            .args(["ss", "-tnH", "state", "established"])
            .output()
            .expect("running ss");
        let text = String::from_utf8_lossy(&out.stdout);
        let peer = format!("{}:{}", workers.host_ip, server.port);
        assert!(
            text.contains(&peer) && text.contains(&workers.ips[i]),
            "worker {i} has no connection {} -> {peer}:\n{text}",
            workers.ips[i]
        );
    }
    Cluster {
        a,
        b,
        _server: server,
        workers,
        _tmp: tmp,
    }
}

#[test]
fn close_to_open_between_two_workers() {
    let c = cluster("c2o");
    let (a, b) = (&c.a, &c.b);
    assert!(c.workers.exec_ok(0, &["true"]));

    // A name the other worker looked up before it existed is found after the create.
    assert!(fs::metadata(b.join("late")).is_err());
    fs::write(a.join("late"), b"created on a").unwrap();
    assert_eq!(fs::read(b.join("late")).unwrap(), b"created on a");

    // Whole-file rewrites, alternating writer, sizes up and down: every open sees the
    // last close of the other worker.
    for round in 0..24usize {
        let (writer, reader) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let len = [1, 70_000, 5, 4 << 20, 0, 333][round % 6] + round;
        let body: Vec<u8> = (0..len).map(|i| (i * 3 + round) as u8).collect();
        let mut f = fs::File::create(writer.join("shared.bin")).unwrap();
        f.write_all(&body).unwrap();
        drop(f);
        let got = fs::read(reader.join("shared.bin")).unwrap();
        assert!(got.len() == body.len() && got == body, "round {round}");
    }

    // Appends that follow each other (open, append, close) on alternating workers.
    let mut expected = String::new();
    for round in 0..20 {
        let (writer, name) = if round % 3 == 0 { (b, "b") } else { (a, "a") };
        let line = format!("{round} from {name}\n");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(writer.join("log.txt"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
        drop(f);
        expected.push_str(&line);
        let other = if round % 3 == 0 { a } else { b };
        let mut got = String::new();
        fs::File::open(other.join("log.txt"))
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, expected, "after append {round}");
    }

    // Same size and the old mtime put back (tar, rsync -t, cp -p do that): the other
    // worker must still not keep its cached pages of the old contents.
    fs::write(a.join("stamped"), b"AAAA").unwrap();
    let mtime = fs::metadata(a.join("stamped")).unwrap().modified().unwrap();
    assert_eq!(fs::read(b.join("stamped")).unwrap(), b"AAAA");
    let f = fs::File::options()
        .write(true)
        .open(a.join("stamped"))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"BBBB", 0).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(
        fs::metadata(a.join("stamped")).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(
        fs::read(b.join("stamped")).unwrap(),
        b"BBBB",
        "stale cached pages after a same-size write with the mtime put back"
    );

    // A rename over an existing file on one worker: the other opens the new contents.
    fs::write(b.join("config"), b"v1").unwrap();
    assert_eq!(fs::read(a.join("config")).unwrap(), b"v1");
    fs::write(b.join("config.tmp"), b"v2").unwrap();
    fs::rename(b.join("config.tmp"), b.join("config")).unwrap();
    assert_eq!(fs::read(a.join("config")).unwrap(), b"v2");

    // Names stay cached for a second (the entry TTL), but an open checks its name
    // with the server, so a cached name never opens what another worker replaced
    // or removed, even when the old file lives on under another name.
    fs::write(a.join("current"), b"old").unwrap();
    assert_eq!(fs::read(b.join("current")).unwrap(), b"old");
    fs::rename(a.join("current"), a.join("previous")).unwrap();
    fs::write(a.join("next"), b"new").unwrap();
    fs::rename(a.join("next"), a.join("current")).unwrap();
    assert_eq!(fs::read(b.join("current")).unwrap(), b"new", "cached name");
    assert_eq!(fs::read(b.join("previous")).unwrap(), b"old");
    fs::remove_file(a.join("previous")).unwrap();
    assert_eq!(
        fs::read(b.join("previous")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT)),
        "an open through a cached name of a removed file"
    );
    // An append through a cached name lands after what the other worker appended.
    fs::write(a.join("journal"), b"1\n").unwrap();
    assert_eq!(fs::read(b.join("journal")).unwrap(), b"1\n");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(a.join("journal"))
        .unwrap();
    f.write_all(b"2\n").unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(b.join("journal"))
        .unwrap();
    f.write_all(b"3\n").unwrap();
    drop(f);
    assert_eq!(fs::read(a.join("journal")).unwrap(), b"1\n2\n3\n");
}

fn open_rw(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn flock_of(kind: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: an all-zero flock is valid; the fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// `F_SETLK` (or `F_SETLKW`); the errno on failure.
fn setlk(f: &fs::File, cmd: i32, kind: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_of(kind, start, len);
    // SAFETY: fcntl with a valid fd and a pointer to a live flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn flock(f: &fs::File, op: i32) -> Result<(), i32> {
    // SAFETY: flock on a valid fd.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Which kind of lock a forked holder takes.
#[derive(Clone, Copy)]
enum Hold {
    Fcntl,
    Flock,
}

/// Forks a process that opens `path`, takes an exclusive lock on it, says so on a
/// pipe and sleeps until killed. Only async-signal-safe calls after the fork.
fn forked_holder(path: &Path, hold: Hold) -> libc::pid_t {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let fl = flock_of(libc::F_WRLCK, 0, 0);
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only calls async-signal-safe functions and then _exit or
    // sleeps until SIGKILL.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            let fd = libc::open(cpath.as_ptr(), libc::O_RDWR);
            let ok = fd >= 0
                && match hold {
                    Hold::Fcntl => libc::fcntl(fd, libc::F_SETLKW, &fl) == 0,
                    Hold::Flock => libc::flock(fd, libc::LOCK_EX) == 0,
                };
            let msg: u8 = if ok { b'1' } else { b'0' };
            libc::write(fds[1], &msg as *const u8 as *const libc::c_void, 1);
            if !ok {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    let mut msg = 0u8;
    // SAFETY: reading one byte into a live u8 from our end of the pipe.
    let n = unsafe { libc::read(fds[0], &mut msg as *mut u8 as *mut libc::c_void, 1) };
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert!(n == 1 && msg == b'1', "the forked holder could not lock");
    pid
}

/// SIGKILLs and reaps `pid`.
fn kill9(pid: libc::pid_t) {
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Retries `try_lock` until it succeeds; how long that took.
fn time_until(mut try_lock: impl FnMut() -> Result<(), i32>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match try_lock() {
            Ok(()) => return started.elapsed(),
            Err(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => {}
            Err(e) => panic!("lock failed with errno {e}"),
        }
        assert!(
            started.elapsed() < limit,
            "lock not granted within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fcntl_locks_exclude_across_workers_and_go_with_their_holder() {
    let c = cluster("fcntl");
    let (a, b) = (&c.a, &c.b);
    fs::write(a.join("db"), vec![0u8; 4096]).unwrap();
    let fa = open_rw(&a.join("db"));
    let fb = open_rw(&b.join("db"));
    let (set, wait) = (libc::F_SETLK, libc::F_SETLKW);

    // Byte ranges: a write lock on 0..100 on worker a...
    setlk(&fa, set, libc::F_WRLCK, 0, 100).unwrap();
    // ...excludes an overlapping lock on worker b, not a disjoint one.
    assert_eq!(setlk(&fb, set, libc::F_WRLCK, 50, 10), Err(libc::EAGAIN));
    assert_eq!(setlk(&fb, set, libc::F_RDLCK, 99, 1), Err(libc::EAGAIN));
    setlk(&fb, set, libc::F_WRLCK, 200, 100).unwrap();
    // F_GETLK on b names a's lock.
    let mut probe = flock_of(libc::F_WRLCK, 0, 0);
    // SAFETY: fcntl F_GETLK with a live flock.
    assert_eq!(
        unsafe { libc::fcntl(fb.as_raw_fd(), libc::F_GETLK, &mut probe) },
        0
    );
    assert_eq!(probe.l_type as i32, libc::F_WRLCK, "F_GETLK sees a's lock");
    assert_eq!((probe.l_start, probe.l_len), (0, 100));
    setlk(&fb, set, libc::F_UNLCK, 200, 100).unwrap();

    // A blocked F_SETLKW on b is granted once a unlocks.
    let fb2 = fb.try_clone().unwrap();
    // The thread hands its descriptor back: closing it would drop the lock (POSIX).
    let waiter = std::thread::spawn(move || {
        let got = setlk(&fb2, wait, libc::F_WRLCK, 0, 0);
        (fb2, got)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiter.is_finished(),
        "F_SETLKW returned while a held the lock"
    );
    let unlocked = Instant::now();
    setlk(&fa, set, libc::F_UNLCK, 0, 0).unwrap();
    let (fb2, got) = waiter.join().unwrap();
    got.expect("F_SETLKW on b");
    let granted = unlocked.elapsed();
    eprintln!("F_SETLKW granted {granted:?} after the unlock on the other worker");
    assert!(granted < Duration::from_secs(2));
    // Now a cannot lock; closing b's descriptor (POSIX: any of them) frees it.
    assert_eq!(setlk(&fa, set, libc::F_WRLCK, 0, 1), Err(libc::EAGAIN));
    drop(fb);
    drop(fb2);
    let after_close = time_until(
        || setlk(&fa, set, libc::F_WRLCK, 0, 0),
        Duration::from_secs(3),
    );
    eprintln!("lock free {after_close:?} after the holder's close");
    setlk(&fa, set, libc::F_UNLCK, 0, 0).unwrap();

    // A holder on a killed with SIGKILL: b gets the lock within a couple of seconds.
    let holder = forked_holder(&a.join("db"), Hold::Fcntl);
    let fb = open_rw(&b.join("db"));
    assert_eq!(setlk(&fb, set, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    let killed = Instant::now();
    kill9(holder);
    let took = killed.elapsed()
        + time_until(
            || setlk(&fb, set, libc::F_WRLCK, 0, 0),
            Duration::from_secs(3),
        );
    eprintln!("fcntl lock free {took:?} after SIGKILL of its holder on the other worker");
}

#[test]
fn flock_excludes_across_workers_and_goes_with_its_holder() {
    let c = cluster("flock");
    let (a, b) = (&c.a, &c.b);
    fs::write(a.join("lockfile"), b"").unwrap();
    let fa = open_rw(&a.join("lockfile"));
    let fb = open_rw(&b.join("lockfile"));
    let nb = libc::LOCK_NB;

    flock(&fa, libc::LOCK_EX | nb).unwrap();
    assert_eq!(
        flock(&fb, libc::LOCK_EX | nb),
        Err(libc::EWOULDBLOCK),
        "flock on worker b got a lock worker a holds"
    );
    assert_eq!(flock(&fb, libc::LOCK_SH | nb), Err(libc::EWOULDBLOCK));
    flock(&fa, libc::LOCK_UN).unwrap();
    flock(&fb, libc::LOCK_SH | nb).unwrap();
    // Shared locks share, across workers too.
    flock(&fa, libc::LOCK_SH | nb).unwrap();
    assert_eq!(flock(&fa, libc::LOCK_EX | nb), Err(libc::EWOULDBLOCK));
    flock(&fa, libc::LOCK_UN).unwrap();
    // As on Linux NFS, flock and fcntl locks share one table: they conflict.
    assert_eq!(
        setlk(&fa, libc::F_SETLK, libc::F_WRLCK, 0, 1),
        Err(libc::EAGAIN),
        "an fcntl lock was granted over another worker's flock"
    );
    // The lock belongs to the open file: closing it frees it.
    drop(fb);
    let after_close = time_until(|| flock(&fa, libc::LOCK_EX | nb), Duration::from_secs(3));
    eprintln!("flock free {after_close:?} after the holder's close");
    flock(&fa, libc::LOCK_UN).unwrap();

    // A blocking flock on b waits for a.
    flock(&fa, libc::LOCK_EX).unwrap();
    let fb = open_rw(&b.join("lockfile"));
    let fb2 = fb.try_clone().unwrap();
    let waiter = std::thread::spawn(move || flock(&fb2, libc::LOCK_EX));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiter.is_finished(),
        "LOCK_EX on b returned while a held it"
    );
    flock(&fa, libc::LOCK_UN).unwrap();
    waiter.join().unwrap().expect("blocking flock on b");
    flock(&fb, libc::LOCK_UN).unwrap();

    // A holder on a killed with SIGKILL: b gets the lock within a couple of seconds.
    let holder = forked_holder(&a.join("lockfile"), Hold::Flock);
    assert_eq!(flock(&fb, libc::LOCK_EX | nb), Err(libc::EWOULDBLOCK));
    let killed = Instant::now();
    kill9(holder);
    let took =
        killed.elapsed() + time_until(|| flock(&fb, libc::LOCK_EX | nb), Duration::from_secs(3));
    eprintln!("flock free {took:?} after SIGKILL of its holder on the other worker");
}

#[test]
fn ofd_locks_exclude_across_workers_and_go_with_the_last_close() {
    let c = cluster("ofd");
    let (a, b) = (&c.a, &c.b);
    fs::write(a.join("db"), vec![0u8; 100]).unwrap();
    let fa = open_rw(&a.join("db"));
    let fb = open_rw(&b.join("db"));
    setlk(&fa, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(
        setlk(&fb, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0),
        Err(libc::EAGAIN)
    );
    // A second descriptor of the same open file keeps the lock alive...
    let fa2 = fa.try_clone().unwrap();
    drop(fa);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        setlk(&fb, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0),
        Err(libc::EAGAIN),
        "an OFD lock went with the close of one of two descriptors"
    );
    // ...and the last close drops it.
    drop(fa2);
    let took = time_until(
        || setlk(&fb, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0),
        Duration::from_secs(3),
    );
    eprintln!("OFD lock free {took:?} after the last close of its open file");
}

/// What a descriptor sees after its file was unlinked: the old bytes, or an error.
fn read_all_at(f: &fs::File, len: usize) -> Result<Vec<u8>, i32> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => return Err(e.raw_os_error().unwrap_or(0)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Documented in home-semantics.md ("Open and unlinked files"): unlike a local disk,
/// a file unlinked (or replaced by rename) while open loses its data at once; the open
/// descriptor then fails every operation with ENOENT, on the same worker and on others.
/// Nothing else is affected. This test pins that down so a change is noticed.
#[test]
fn unlinked_open_files_fail_with_enoent_and_harm_nothing_else() {
    let c = cluster("orphan");
    let (a, b) = (&c.a, &c.b);
    let body: Vec<u8> = (0..(5 << 20)).map(|i: usize| (i % 241) as u8).collect();
    fs::write(a.join("same"), &body).unwrap();
    fs::write(a.join("other"), &body).unwrap();
    fs::write(a.join("replaced"), &body).unwrap();
    fs::write(a.join("kept"), b"kept").unwrap();
    let enoent = Err(libc::ENOENT);

    // Same worker: open, unlink, then use the descriptor.
    let f = open_rw(&a.join("same"));
    fs::remove_file(a.join("same")).unwrap();
    assert_eq!(read_all_at(&f, body.len()), enoent, "read");
    let stat = f.metadata().map(|m| m.len()).map_err(|e| e.raw_os_error());
    assert_eq!(stat, Err(Some(libc::ENOENT)), "fstat");
    let write = std::os::unix::fs::FileExt::write_at(&f, b"x", 0).map_err(|e| e.raw_os_error());
    assert_eq!(write, Err(Some(libc::ENOENT)), "write");
    let sync = f.sync_all().map_err(|e| e.raw_os_error());
    assert_eq!(sync, Err(Some(libc::ENOENT)), "fsync");
    drop(f);
    assert!(fs::metadata(a.join("same")).is_err());

    // Other worker: open and read on b, unlink on a, read on b again.
    let g = open_rw(&b.join("other"));
    assert_eq!(read_all_at(&g, 4096).unwrap(), body[..4096]);
    fs::remove_file(a.join("other")).unwrap();
    assert_eq!(
        read_all_at(&g, body.len()),
        enoent,
        "read on the other worker"
    );
    drop(g);

    // Replaced by a rename on the other worker: the old descriptor fails, a new open
    // gets the new file.
    let h = open_rw(&a.join("replaced"));
    fs::write(b.join("replaced.new"), b"new").unwrap();
    fs::rename(b.join("replaced.new"), b.join("replaced")).unwrap();
    assert_eq!(
        read_all_at(&h, body.len()),
        enoent,
        "read of a replaced file"
    );
    drop(h);
    assert_eq!(fs::read(a.join("replaced")).unwrap(), b"new");

    // Nothing else changed, and the space is given back.
    assert_eq!(fs::read(b.join("kept")).unwrap(), b"kept");
    let names: Vec<_> = fs::read_dir(&a.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["kept", "replaced"]);
}

/// A worker whose FUSE client dies (SIGKILL) while one of its processes holds a lock:
/// the file server drops that mount's locks once its lease (20 s without KeepAlive)
/// has run out, and the other worker gets the lock.
#[test]
fn locks_of_a_dead_worker_go_when_its_mount_lease_expires() {
    let mut c = cluster("deadmount");
    fs::write(c.a.join("db"), b"x").unwrap();
    let holder = forked_holder(&c.a.join("db"), Hold::Fcntl);
    let fb = open_rw(&c.b.join("db"));
    assert_eq!(
        setlk(&fb, libc::F_SETLK, libc::F_WRLCK, 0, 0),
        Err(libc::EAGAIN)
    );
    let killed = Instant::now();
    c.a.kill9();
    // The holder lives on (its mount is dead), so only the lease can free the lock.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        setlk(&fb, libc::F_SETLK, libc::F_WRLCK, 0, 0),
        Err(libc::EAGAIN),
        "lock dropped before the mount's lease ran out"
    );
    let took = killed.elapsed()
        + time_until(
            || setlk(&fb, libc::F_SETLK, libc::F_WRLCK, 0, 0),
            Duration::from_secs(40),
        );
    kill9(holder);
    eprintln!("lock of a dead worker's process free {took:?} after its FUSE client died");
    assert!(took >= Duration::from_secs(15), "freed after {took:?}");
}
