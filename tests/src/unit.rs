//! A real registry and a real Berth unit (`berth up`) for one test, torn down on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, free_port_base, workspace_root};

/// Debian's `docker-registry` on a free loopback port, data in a temp dir.
pub struct Registry {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    pub fn start() -> Self {
        let which = Command::new("sh")
            .args([
                "-c",
                "for t in docker-registry umoci skopeo; do command -v $t || exit 1; done",
            ])
            .output()
            .expect("sh");
        assert!(
            which.status.success(),
            "docker-registry, umoci and skopeo are needed: apt-get install docker-registry umoci skopeo (scripts/install-deps.sh)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_base(1);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let r = Self { addr, dir, child };
        wait_for(Duration::from_secs(15), "docker-registry to answer", || {
            reqwest::blocking::get(format!("http://{addr}/v2/"))
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        r
    }

    /// Builds the demo image (busybox httpd + CGI) and pushes it as `name:tag`.
    pub fn push_demo_image(&self, name_tag: &str, extra: &[&str]) -> String {
        let out = Command::new(workspace_root().join("scripts/build-image.sh"))
            .arg(name_tag)
            .arg(self.addr.to_string())
            .args(extra)
            .env("TMPDIR", self.dir.path())
            .output()
            .expect("running scripts/build-image.sh");
        assert!(
            out.status.success(),
            "building/pushing {name_tag} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/{name_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole Berth started with `berth up` in its own state dir and port range.
pub struct Unit {
    pub state: tempfile::TempDir,
    pub port_base: u16,
    pub http: SocketAddr,
    pub api: String,
    pub bin: PathBuf,
    child: Option<Child>,
}

impl Unit {
    /// Starts a unit; `restart_delay` is how long `berth up` waits before restarting
    /// a daemon that died.
    pub fn up(restart_delay: f64) -> Self {
        let bin = bin_dir();
        let state = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let port_base = free_port_base(400);
        let log = std::fs::File::create(state.path().join("up.log")).unwrap();
        let child = Command::new(bin.join("berth"))
            .args(["up", "--state-dir"])
            .arg(state.path())
            .args(["--port-base", &port_base.to_string()])
            .args(["--restart-delay", &restart_delay.to_string()])
            .args(["--worker-name", &format!("e2e-{port_base}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting berth up");
        let http: SocketAddr = ([127, 0, 0, 1], port_base + 380).into();
        let mut u = Self {
            api: format!("http://127.0.0.1:{port_base}"),
            state,
            port_base,
            http,
            bin,
            child: Some(child),
        };
        wait_until_up(
            u.child.as_mut().unwrap(),
            "berth up",
            u.state.path(),
            UNIT_LOGS,
        );
        u
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// All daemons' logs, for failure messages.
    pub fn daemon_logs(&self) -> String {
        log_tails(self.state.path(), UNIT_LOGS)
    }

    /// Runs the `berth` CLI against this unit.
    pub fn berth(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("berth"))
            .args(args)
            .env("BERTH_API", &self.api)
            .env(
                "BERTH_TOKEN_FILE",
                self.state.path().join("controller/token"),
            )
            .env_remove("BERTH_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("running berth")
    }

    /// Runs `berth`, panicking with every log if it fails.
    pub fn berth_ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("controller/token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// GET through the front end with `Host: <site>.localhost`.
    pub fn get(
        &self,
        site: &str,
        path_and_query: &str,
    ) -> reqwest::Result<reqwest::blocking::Response> {
        let host = format!("{site}.localhost");
        reqwest::blocking::Client::builder()
            .resolve(&host, self.http)
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!(
                "http://{host}:{}{path_and_query}",
                self.http.port()
            ))
            .send()
    }

    /// Site JSON from `berth sites show -o json`.
    pub fn site(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.berth_ok(&["sites", "show", name, "-o", "json"]))
            .expect("site json")
    }

    /// Pid of one of this unit's daemons (by binary name).
    pub fn daemon_pid(&self, bin: &str) -> Option<i32> {
        let st = self.state.path().display().to_string();
        crate::host::pids_with_cmdline(&[bin, &st])
            .into_iter()
            .next()
    }

    /// Stops `berth up` with SIGTERM and waits for it.
    pub fn down(&mut self) {
        if let Some(c) = self.child.take() {
            stop_gracefully(c);
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        self.down();
    }
}

/// GET through `u`'s front end that must succeed; its body. Panics with every log.
pub fn body(u: &Unit, site: &str, pq: &str) -> String {
    let r = u
        .get(site, pq)
        .unwrap_or_else(|e| panic!("GET {pq} on {site}: {e}\n{}", u.daemon_logs()));
    assert!(
        r.status().is_success(),
        "GET {pq} on {site}: {}\n{}",
        r.status(),
        u.daemon_logs()
    );
    r.text().unwrap()
}

/// The value of the demo page's `key` line (`"instance: "`, `"value: "`, ...).
pub fn page_field<'a>(page: &'a str, key: &str) -> &'a str {
    page.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in page:\n{page}"))
        .trim()
}

/// The instance that served a demo page.
pub fn instance_of(page: &str) -> String {
    page_field(page, "instance: ").to_string()
}

/// Ids of a site's instances, from `berth sites show`.
pub fn instance_ids(u: &Unit, site: &str) -> Vec<String> {
    u.site(site)["instance_states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// One more web worker, `berth up --join`ed to a unit's controller (its own sandboxd,
/// agent, state directory and ports on this host). Stopped with SIGTERM on drop.
pub struct JoinedWorker {
    pub name: String,
    pub state: tempfile::TempDir,
    child: Option<Child>,
}

impl JoinedWorker {
    /// Joins `u` as worker `name` and waits until `berth up --join` says it is up.
    pub fn join(u: &Unit, name: &str) -> Self {
        let state = tempfile::Builder::new()
            .prefix("berth-e2e-worker-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let port_base = free_port_base(400);
        let grpc =
            u.port_base + (berth_api::ports::CONTROLLER_GRPC - berth_api::ports::CONTROLLER_API);
        let log = std::fs::File::create(state.path().join("up.log")).unwrap();
        let child = Command::new(u.bin.join("berth"))
            .args(["up", "--join", &format!("http://127.0.0.1:{grpc}")])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--port-base", &port_base.to_string()])
            .args(["--worker-name", name])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting berth up --join");
        let mut w = Self {
            name: name.to_string(),
            state,
            child: Some(child),
        };
        wait_until_up(
            w.child.as_mut().unwrap(),
            "berth up --join",
            w.state.path(),
            WORKER_LOGS,
        );
        w
    }

    /// The worker's logs, for failure messages.
    pub fn logs(&self) -> String {
        log_tails(self.state.path(), WORKER_LOGS)
    }
}

impl Drop for JoinedWorker {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_gracefully(c);
        }
    }
}

/// Logs of a whole unit and of a joined worker, under their state directories.
const UNIT_LOGS: &[&str] = &[
    "up",
    "logs/controller",
    "logs/agent",
    "logs/sandboxd",
    "logs/fsd",
    "logs/frontend",
];
const WORKER_LOGS: &[&str] = &["up", "logs/agent", "logs/sandboxd"];

/// Waits until `berth up` (`what`) prints its banner in `<state>/up.log`; panics with
/// the tails of `logs` if it exits first or takes over a minute.
fn wait_until_up(child: &mut Child, what: &str, state: &Path, logs: &[&str]) {
    let log = state.join("up.log");
    let logs = || log_tails(state, logs);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Press Ctrl-C") {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what} exited ({st}):\n{text}\n{}", logs());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} did not come up in 60s:\n{text}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last 40 lines of `<dir>/<name>.log` for each name, for failure messages.
fn log_tails(dir: &Path, names: &[&str]) -> String {
    let mut out = String::new();
    for d in names {
        let p = dir.join(format!("{d}.log"));
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("----- {} (last 40 lines)\n", p.display()));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// SIGTERM to a `berth up`, then waits up to 90 s for it (SIGKILL after that).
fn stop_gracefully(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` until it is true or panics after `timeout` naming `what`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
