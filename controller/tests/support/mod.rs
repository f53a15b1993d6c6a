//! Real peers for the controller's integration test: Debian's `docker-registry`, a
//! tiny busybox image built with umoci and pushed with skopeo, and the controller
//! binary itself. Every helper panics with a clear message when a tool is missing.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now (bind to 0, read, drop).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding 127.0.0.1:0 to find a free port")
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is the tool installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_http_ok(url: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(resp) = raw_get::is_ok(url) {
            if resp {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "{what} did not answer on {url} within 20 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

mod raw_get {
    /// Minimal blocking GET over a raw TCP socket (keeps the helper free of a
    /// blocking HTTP client): true on a 200 answer.
    pub fn is_ok(url: &str) -> std::io::Result<bool> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").expect("http url");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    }
}

/// A running `docker-registry serve` on a free loopback port.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        wait_http_ok(&format!("http://{addr}/v2/"), "docker-registry", &log_path);
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Builds an image from busybox-static with umoci (optionally with a cmd) and
    /// pushes it as `<addr>/<name>:<tag>`.
    pub fn push_busybox(&self, name: &str, tag: &str, cmd: &[&str]) -> String {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("oci");
        let image = format!("{}:{tag}", layout.display());
        let bundle = work.path().join("bundle");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &image]));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("copying /bin/busybox (apt-get install busybox-static)");
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        if !cmd.is_empty() {
            let mut c = Command::new("umoci");
            c.args(["config", "--image", &image]);
            for part in cmd {
                c.arg(format!("--config.cmd={part}"));
            }
            run(&mut c);
        }
        let dest = format!("{}/{name}:{tag}", self.addr);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{image}"))
            .arg(format!("docker://{dest}")));
        dest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller binary under test.
pub struct Controller {
    child: Option<Child>,
    pub rest: String,
    pub grpc: String,
    pub state_dir: PathBuf,
    log: PathBuf,
}

impl Controller {
    pub fn start(state_dir: &Path, rest_port: u16, grpc_port: u16) -> Self {
        let log = state_dir.with_extension(format!("log.{}", rest_port));
        let mut c = Self {
            child: None,
            rest: format!("http://127.0.0.1:{rest_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            state_dir: state_dir.to_path_buf(),
            log,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let rest = self.rest.trim_start_matches("http://").to_string();
        let grpc = self.grpc.trim_start_matches("http://").to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-controller"))
            .args(["--listen", &rest, "--grpc-listen", &grpc, "--state-dir"])
            .arg(&self.state_dir)
            .args(["--domain", "localhost"])
            .args(["--public-url-base", "http://{site}.localhost:8080"])
            .env("RUST_LOG", "info,berth_controller=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting berth-controller");
        self.child = Some(child);
        wait_http_ok(
            &format!("{}/healthz", self.rest),
            "berth-controller",
            &self.log,
        );
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("token"))
            .expect("reading the token file")
            .trim()
            .to_string()
    }

    /// SIGKILL, then start again on the same state directory and ports.
    pub fn kill9_and_restart(&mut self) {
        let mut child = self.child.take().expect("controller running");
        child.kill().expect("SIGKILL to the controller");
        child.wait().unwrap();
        self.spawn();
    }

    /// SIGTERM; returns whether it exited successfully within 10 s.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("controller running");
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- controller log ----\n{}", self.log());
        }
    }
}
