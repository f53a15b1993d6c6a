//! Helpers of the FUSE end-to-end tests: a real `berth-fsd serve` on a free port and
//! real `berth-fsd mount` client processes, cleaned up by guards even on failure.

#![allow(dead_code)]

pub mod netns;
pub mod weed;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_berth-fsd");

/// Panics unless this test can really mount FUSE file systems.
pub fn require_fuse_and_root() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount real FUSE file systems; load the fuse module"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount FUSE file systems and must run as root"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// A running `berth-fsd serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub metrics_port: u16,
    pub store: PathBuf,
    pub state: PathBuf,
    /// Extra `serve` arguments.
    pub extra: Vec<String>,
    /// Extra environment of `serve` (S3 credentials).
    pub env: Vec<(String, String)>,
    /// Address to listen on (127.0.0.1 unless a test made another).
    pub listen_ip: String,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        let mut server = Server {
            child: None,
            port: free_port(),
            metrics_port: free_port(),
            store: root.join("store"),
            state: root.join("state"),
            extra: Vec::new(),
            env: Vec::new(),
            listen_ip: "127.0.0.1".into(),
        };
        server.spawn();
        server
    }

    /// A server on the object store `store` with its own state dir and extra args.
    pub fn start_on(store: &Path, state: &Path, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::start_with(store, state, &extra, &[])
    }

    /// Like [`Server::start_on`], with extra environment variables too.
    pub fn start_with(
        store: &Path,
        state: &Path,
        extra: &[String],
        env: &[(String, String)],
    ) -> Server {
        Server::start_full(store, state, extra, env, "127.0.0.1")
    }

    /// Like [`Server::start_with`], listening on `listen_ip` (an address of this host).
    pub fn start_full(
        store: &Path,
        state: &Path,
        extra: &[String],
        env: &[(String, String)],
        listen_ip: &str,
    ) -> Server {
        let mut server = Server {
            child: None,
            port: free_port(),
            metrics_port: free_port(),
            store: store.to_path_buf(),
            state: state.to_path_buf(),
            extra: extra.to_vec(),
            env: env.to_vec(),
            listen_ip: listen_ip.to_string(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.listen_ip, self.port)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen"])
            .arg(format!("{}:{}", self.listen_ip, self.port))
            .arg("--store-dir")
            .arg(&self.store)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        cmd
    }

    fn spawn(&mut self) {
        let child = self.command().spawn().expect("starting berth-fsd serve");
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.listen_ip.as_str(), self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("berth-fsd serve exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "berth-fsd serve did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A process, forked now, that starts this server again (same port and dirs)
    /// when [`Server::restart_from`] says so. Fork it before opening files on a mount
    /// you will leave dirty: a process forked later inherits those descriptors, and
    /// its exec closes them, which makes the kernel send FLUSH -> Fsync to the very
    /// server being started.
    pub fn prepare_restart(&self) -> Child {
        let cmd = self.command();
        Command::new("sh")
            .arg("-c")
            .arg("read go && exec \"$0\" \"$@\"")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("forking the restart launcher")
    }

    /// SIGKILL, then start again through a launcher from [`Server::prepare_restart`].
    pub fn restart_from(&mut self, mut launcher: Child) {
        use std::io::Write;
        self.kill9();
        launcher
            .stdin
            .take()
            .expect("launcher stdin is piped")
            .write_all(b"go\n")
            .expect("telling the launcher to start the server");
        self.child = Some(launcher);
        self.wait_listening();
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        scrape(self.metrics_port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `berth-fsd mount`; SIGTERM and unmount on drop.
pub struct Mount {
    child: Option<Child>,
    pub path: PathBuf,
    /// The client's `--metrics-listen` port (on loopback of its network namespace).
    metrics_port: u16,
}

/// `GET /metrics` on 127.0.0.1:`port`, as text.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("sending metrics request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading metrics");
    out
}

fn st_dev(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.dev())
}

impl Mount {
    pub fn start(server: &Server, volume: &str, path: &Path) -> Mount {
        Mount::start_url(&server.url(), volume, path)
    }

    /// A mount of `url` (one server or several separated by commas).
    pub fn start_url(url: &str, volume: &str, path: &Path) -> Mount {
        Mount::start_in(url, volume, path, None)
    }

    /// A mount whose client process runs in network namespace `netns` (a path such
    /// as `/run/netns/x`): its traffic to the server goes through that namespace, while
    /// the mount itself appears in this process's mount namespace.
    pub fn start_in(url: &str, volume: &str, path: &Path, netns: Option<&Path>) -> Mount {
        std::fs::create_dir_all(path).expect("creating mount point");
        let mut cmd = Command::new(BIN);
        if let Some(netns) = netns {
            use std::os::fd::{AsRawFd, OwnedFd};
            use std::os::unix::process::CommandExt;
            let fd: OwnedFd = std::fs::File::open(netns)
                .unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()))
                .into();
            // SAFETY: setns(2) is async-signal-safe; fd stays open until after spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let metrics_port = free_port();
        let child = cmd
            .args([
                "mount",
                "--server",
                url,
                "--volume",
                volume,
                "--retry-secs",
                "20",
                "--metrics-listen",
            ])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg(path)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting berth-fsd mount");
        let mut mount = Mount {
            child: Some(child),
            path: path.to_path_buf(),
            metrics_port,
        };
        let parent = path.parent().expect("mount point has a parent");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let (Some(a), Some(b)) = (st_dev(path), st_dev(parent)) {
                if a != b {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = mount.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "berth-fsd mount {} exited early with {status}",
                    path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} was not mounted within 15 s",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The client's `GET /metrics` (only for a mount started outside a namespace).
    pub fn metrics(&self) -> String {
        scrape(self.metrics_port)
    }

    /// Sends `signal` to the client process (SIGSTOP / SIGCONT: a client that stops
    /// answering without its connections closing, as when cut off or stuck).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("mount client running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signalling the mount client");
    }

    /// SIGKILL of the client process, as in a crash of the worker's FUSE client; the
    /// dead mount is detached.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }

    /// SIGTERM, wait for exit, and return whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever happened, leave no mount behind.
        if st_dev(&self.path) != self.path.parent().and_then(st_dev) {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
        status.is_some_and(|s| s.success())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Unique volume name per test.
pub fn volume(tag: &str) -> String {
    format!("t-{tag}-{}", std::process::id())
}
