//! End-to-end test of the daemon binary on the real kernel: a busybox rootfs, a
//! network namespace, the gRPC service over its Unix socket, cgroups v1/v2.
//! Needs root; fails loudly without it.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_api::sandbox::sandboxes_client::SandboxesClient;
use berth_api::sandbox::{
    BindMount, CreateRequest, IdMapping, ListRequest, Resources, SandboxId, SandboxStatus,
    StopRequest,
};
use tonic::transport::Channel;

mod cgroupfs;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "sandboxd integration tests need root (namespaces, cgroups, mounts): run as root"
    );
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos:x}", std::process::id())
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let ns = Self(name);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The daemon process, terminated on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    metrics: String,
}

impl Daemon {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let socket = dir.join("sandboxd.sock");
        let metrics = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-sandboxd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--metrics-listen")
            .arg(&metrics)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawning berth-sandboxd");
        Self {
            child: Some(child),
            socket,
            metrics,
        }
    }

    async fn client(&self) -> SandboxesClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() {
                if let Ok(c) = berth_sandboxd::connect(&self.socket).await {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd did not come up in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// SIGTERM and wait; returns the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd ignored SIGTERM for 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copying /bin/busybox (install busybox-static)");
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for applet in [
        "sh", "sleep", "cat", "id", "ps", "echo", "touch", "hostname", "ls", "true", "dd",
        "unshare", "setsid", "wc", "grep", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn wait_for_log(path: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "log {} lacks {needles:?} after 10 s; it holds:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] == "Z" && f[1] == parent.to_string()
        })
        .count()
}

/// The site's parent cgroup goes a few seconds after its last sandbox (sandboxd keeps
/// it for SITE_CGROUP_LINGER so a replaced instance does not remake it).
fn site_cgroup_goes(site: &str) {
    let dir = memory_cgroup(site, "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "site cgroup {} left 10 s after its last sandbox was deleted",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stop with a grace period in ms; the stopped sandbox's info.
async fn stop(
    client: &mut SandboxesClient<Channel>,
    id: &str,
    grace_ms: u32,
) -> berth_api::sandbox::SandboxInfo {
    client
        .stop(StopRequest {
            id: id.to_string(),
            grace_ms,
        })
        .await
        .unwrap()
        .into_inner()
}

fn memory_cgroup(site: &str, id: &str) -> PathBuf {
    cgroupfs::memory_dir(site, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let u = unique();
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("marker.txt"), "bind-mount-visible\n").unwrap();
    let netns = Netns::new(format!("berth-test-{u}"));

    let mut daemon = Daemon::start(dir);
    let mut client = daemon.client().await;
    let site = format!("itsite-{u}");
    let id = format!("it-{u}");
    let log = dir.join("app.log");

    // Refused requests.
    let mut bad = CreateRequest {
        id: "Bad_Id".into(),
        site: site.clone(),
        rootfs: rootfs.to_str().unwrap().into(),
        netns_path: netns.path(),
        args: vec!["/bin/true".into()],
        log_path: log.to_str().unwrap().into(),
        ..Default::default()
    };
    let err = client.create(bad.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    bad.id = id.clone();
    bad.rootfs = dir.join("missing").to_str().unwrap().into();
    let err = client.create(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("rootfs"), "{err}");

    let script = "echo hello-out; echo hello-err >&2; cat /data/marker.txt; \
                  touch /tmp/ok && echo tmp-writable; echo host=$(hostname); \
                  echo uid=$(id -u); sleep 1000";
    let req = CreateRequest {
        id: id.clone(),
        site: site.clone(),
        rootfs: rootfs.to_str().unwrap().into(),
        netns_path: netns.path(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["GREETING=hi".into()],
        cwd: "/".into(),
        hostname: "box".into(),
        mounts: vec![BindMount {
            source: shared.to_str().unwrap().into(),
            destination: "/data".into(),
            read_only: true,
        }],
        resources: Some(Resources {
            memory_bytes: 64 << 20,
            cpu_millis: 500,
            pids_max: 64,
            ..Default::default()
        }),
        log_path: log.to_str().unwrap().into(),
        uid: 0,
        gid: 0,
        ..Default::default()
    };
    let t = Instant::now();
    let created = client.create(req.clone()).await.unwrap().into_inner();
    let create_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(created.status, SandboxStatus::Created as i32);
    assert!(created.pid > 0);
    let err = client.create(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");

    let t = Instant::now();
    let started = client
        .start(SandboxId { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("timing: create {create_ms:.1} ms, start {start_ms:.1} ms (helper re-exec included)");
    assert_eq!(started.status, SandboxStatus::Running as i32);
    let pid = started.pid;

    let out = wait_for_log(
        &log,
        &[
            "hello-out",
            "hello-err",
            "bind-mount-visible",
            "tmp-writable",
            "host=box",
            "uid=0",
        ],
    );
    eprintln!("app log:\n{out}");

    // Own pid namespace; the init is re-parented to sandboxd.
    let daemon_pid = daemon.child.as_ref().unwrap().id();
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PPid:")
                .map(|v| v.trim().parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(
        ppid, daemon_pid,
        "sandbox init is not re-parented to sandboxd"
    );
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(ns, ours, "sandbox shares our pid namespace");
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let want_net = std::fs::metadata(netns.path()).unwrap();
    assert!(
        net.to_str()
            .unwrap()
            .contains(&std::os::unix::fs::MetadataExt::ino(&want_net).to_string()),
        "sandbox is not in the given netns: {net:?}"
    );

    // Cgroup with the memory limit.
    eprintln!("cgroup layout: {}", cgroupfs::layout());
    let memcg = memory_cgroup(&site, &id);
    assert!(memcg.is_dir(), "no cgroup at {}", memcg.display());
    assert_eq!(cgroupfs::memory_limit(&site, &id), Some(64 << 20));
    let procs = std::fs::read_to_string(memcg.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "init {pid} not in {procs}"
    );

    let metrics = daemon.metrics();
    assert!(metrics.contains("sandboxes_running 1"), "{metrics}");
    assert!(metrics.contains("sandbox_starts_total 1"), "{metrics}");

    let list = client.list(ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.sandboxes.len(), 1);

    // Wait returns once the process is gone, not before.
    let mut waiter_client = client.clone();
    let waiter_id = id.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .wait(SandboxId { id: waiter_id })
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "Wait returned while the sandbox runs"
    );

    // sh as pid 1 ignores SIGTERM: killed after the grace period.
    let t = Instant::now();
    let stopped = stop(&mut client, &id, 300).await;
    let stop_elapsed = t.elapsed();
    assert!(
        stop_elapsed < Duration::from_secs(5),
        "stop took {stop_elapsed:?}"
    );
    assert_eq!(stopped.status, SandboxStatus::Stopped as i32);
    assert_eq!(stopped.exit_code, 128 + 9);
    assert!(!stopped.oom_killed);
    assert!(!alive(pid), "init {pid} survived Stop");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("Wait returned after the stop")
        .unwrap()
        .expect("Wait succeeded");
    assert_eq!(waited.status, SandboxStatus::Stopped as i32);
    assert_eq!(waited.exit_code, 128 + 9);
    let procs = std::fs::read_to_string(memcg.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.trim().is_empty(),
        "cgroup not empty after stop: {procs}"
    );

    client.delete(SandboxId { id: id.clone() }).await.unwrap();
    assert!(
        !memcg.exists(),
        "cgroup {} left after delete",
        memcg.display()
    );
    assert!(!cgroupfs::dir("pids", &site, &id).exists());
    assert!(!dir.join("state/bundles").join(&id).exists());
    assert!(!dir.join("state/containers").join(&id).exists());
    client.delete(SandboxId { id: id.clone() }).await.unwrap();
    let err = client.get(SandboxId { id: id.clone() }).await.unwrap_err();
    let werr = client.wait(SandboxId { id: id.clone() }).await.unwrap_err();
    assert_eq!(werr.code(), tonic::Code::NotFound, "{werr}");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // An app that handles SIGTERM exits within the grace period with its own code;
    // Delete stops a running sandbox by itself.
    let id2 = format!("it2-{u}");
    let log2 = dir.join("app2.log");
    let req2 = CreateRequest {
        id: id2.clone(),
        site: site.clone(),
        rootfs: rootfs.to_str().unwrap().into(),
        netns_path: netns.path(),
        args: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done".into(),
        ],
        log_path: log2.to_str().unwrap().into(),
        ..Default::default()
    };
    client.create(req2).await.unwrap();
    let pid2 = client
        .start(SandboxId { id: id2.clone() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    wait_for_log(&log2, &["ready"]);
    let stopped = stop(&mut client, &id2, 5000).await;
    assert_eq!(stopped.exit_code, 7, "{stopped:?}");
    wait_for_log(&log2, &["got-term"]);
    assert!(!alive(pid2));
    client.delete(SandboxId { id: id2.clone() }).await.unwrap();
    assert!(!memory_cgroup(&site, &id2).exists());

    // A created-but-never-started sandbox is deleted directly.
    let id3 = format!("it3-{u}");
    let created = client
        .create(CreateRequest {
            id: id3.clone(),
            site: site.clone(),
            rootfs: rootfs.to_str().unwrap().into(),
            netns_path: netns.path(),
            args: vec!["/bin/true".into()],
            log_path: dir.join("app3.log").to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client.delete(SandboxId { id: id3.clone() }).await.unwrap();
    assert!(!alive(created.pid));
    assert!(!memory_cgroup(&site, &id3).exists());

    // A command missing from the rootfs fails cleanly and leaves nothing behind.
    let id5 = format!("it5-{u}");
    let failed = async {
        client
            .create(CreateRequest {
                id: id5.clone(),
                site: site.clone(),
                rootfs: rootfs.to_str().unwrap().into(),
                netns_path: netns.path(),
                args: vec!["/bin/does-not-exist".into()],
                log_path: dir.join("app5.log").to_str().unwrap().into(),
                ..Default::default()
            })
            .await?;
        client.start(SandboxId { id: id5.clone() }).await
    }
    .await;
    let err = failed.expect_err("running a missing binary must fail");
    eprintln!("missing binary: {err}");
    client.delete(SandboxId { id: id5.clone() }).await.unwrap();
    assert!(!memory_cgroup(&site, &id5).exists());
    assert!(!dir.join("state/containers").join(&id5).exists());
    assert!(daemon.metrics().contains("sandbox_failures_total 1"));

    // The memory limit OOM-kills inside the sandbox, and Stop/Get report it.
    let id4 = format!("it4-{u}");
    let log4 = dir.join("app4.log");
    client
        .create(CreateRequest {
            id: id4.clone(),
            site: site.clone(),
            rootfs: rootfs.to_str().unwrap().into(),
            netns_path: netns.path(),
            args: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo start; x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived".into(),
            ],
            resources: Some(Resources {
                memory_bytes: 16 << 20,
                ..Default::default()
            }),
            log_path: log4.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client.start(SandboxId { id: id4.clone() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let oomed = loop {
        let info = client
            .get(SandboxId { id: id4.clone() })
            .await
            .unwrap()
            .into_inner();
        if info.status == SandboxStatus::Stopped as i32 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "memory hog still running after 30 s: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        oomed.oom_killed,
        "{oomed:?}; log: {:?}",
        std::fs::read_to_string(&log4)
    );
    let kills = cgroupfs::oom_kills(&site, &id4);
    assert!(kills >= 1, "the kernel counted {kills} OOM kills");
    // Every kill the kernel counted is reported (the hog may be killed more than once
    // when a slow machine lets it allocate again before the first kill lands).
    let metrics = daemon.metrics();
    let reported: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "berth_sandboxd_oom_kills_total{{site=\"{site}\"}} "
            ))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no OOM counter for {site}:\n{metrics}"));
    assert!(
        reported >= 1 && reported <= kills,
        "reported {reported} OOM kills, the kernel counted {kills}:\n{metrics}"
    );
    client.delete(SandboxId { id: id4.clone() }).await.unwrap();

    let list = client.list(ListRequest {}).await.unwrap().into_inner();
    assert!(list.sandboxes.is_empty(), "{list:?}");
    let metrics = daemon.metrics();
    assert!(metrics.contains("sandboxes_running 0"), "{metrics}");

    assert_eq!(zombies_of(daemon.child.as_ref().unwrap().id()), 0);
    site_cgroup_goes(&site);
    drop(client);
    let status = daemon.terminate();
    assert!(status.success(), "sandboxd exited with {status}");
    assert!(!daemon.socket.exists(), "socket left after shutdown");
    cgroupfs::remove_site(&site);
}

/// A restarted daemon knows the sandboxes of the previous one, can stop a running
/// one it did not start (exit code unknown: -1) and delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_restart() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let u = unique();
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    let netns = Netns::new(format!("berth-test-r{u}"));
    let site = format!("restart-{u}");
    let id = format!("rs-{u}");
    let log = dir.join("app.log");

    let mut daemon = Daemon::start(dir);
    let mut client = daemon.client().await;
    client
        .create(CreateRequest {
            id: id.clone(),
            site: site.clone(),
            rootfs: rootfs.to_str().unwrap().into(),
            netns_path: netns.path(),
            args: vec!["/bin/sh".into(), "-c".into(), "echo up; sleep 1000".into()],
            log_path: log.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = client
        .start(SandboxId { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    wait_for_log(&log, &["up"]);
    drop(client);
    assert!(daemon.terminate().success());
    assert!(alive(pid), "shutdown must leave sandboxes running");

    let daemon = Daemon::start(dir);
    let mut client = daemon.client().await;
    let info = client
        .get(SandboxId { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status, SandboxStatus::Running as i32);
    assert_eq!(info.pid, pid);
    let stopped = stop(&mut client, &id, 200).await;
    assert_eq!(stopped.status, SandboxStatus::Stopped as i32);
    assert_eq!(stopped.exit_code, -1, "{stopped:?}");
    client.delete(SandboxId { id: id.clone() }).await.unwrap();
    assert!(!memory_cgroup(&site, &id).exists());
    let list = client.list(ListRequest {}).await.unwrap().into_inner();
    assert!(list.sandboxes.is_empty(), "{list:?}");
    cgroupfs::remove_site(&site);
}

/// Host id range of the hardened test sandboxes (unique per test process).
fn host_id_base() -> u32 {
    2_000_000 + (std::process::id() % 1000) * 65_536
}

fn chown_tree(path: &Path, id: u32) {
    run(
        "chown",
        &["-R", "-h", &format!("{id}:{id}"), path.to_str().unwrap()],
    );
}

fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Every property of a hardened sandbox, checked from inside (the app's log) and
/// from the host: user namespace mapping, a host-owned file the sandbox's root
/// cannot write, seccomp (EPERM), capabilities, no_new_privs, masked and read-only
/// paths, minimal /dev, /tmp size limit, read-only rootfs, cpu and io weights,
/// stats, and a Stop that leaves no daemonized grandchild behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_sandbox() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The sandbox's root is an unprivileged host uid: it must be able to traverse.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let u = unique();
    let host_id = host_id_base();
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    // Stand-in for the agent's idmapped overlay: the image owned by the site's root.
    chown_tree(&rootfs, host_id);
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(shared.join("host.txt"), "host-owned\n").unwrap();
    std::fs::set_permissions(
        shared.join("host.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let netns = Netns::new(format!("berth-test-h{u}"));
    let daemon = Daemon::start(dir);
    let mut client = daemon.client().await;
    let site = format!("hard-{u}");
    let id = format!("hd-{u}");
    let log = dir.join("hard.log");

    let script = r#"
cat /proc/self/uid_map
echo uid=$(id -u)
echo x >> /data/host.txt && echo host-write-ok || echo host-write-denied
echo x > /data/new.txt && echo new-file-ok
unshare -U true 2>&1 | grep -q 'not permitted' && echo unshare-eperm
echo timer_list=$(wc -c < /proc/timer_list)
echo keys=$(wc -c < /proc/keys)
echo acpi=$(ls /proc/acpi | wc -l)
echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo procsys-writable || echo procsys-ro
echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable || echo sysrq-ro
dd if=/dev/zero of=/tmp/fill bs=1024 count=4096 2>&1 | grep -q 'No space' && echo tmp-enospc
touch /rootfile && echo rootfs-writable
grep NoNewPrivs /proc/self/status
echo x > /dev/null && echo devnull-ok
setsid sh -c 'trap "" TERM; while :; do sleep 1; done' &
trap '' TERM
echo ready
while :; do sleep 1; done
"#;
    let req = CreateRequest {
        id: id.clone(),
        site: site.clone(),
        rootfs: rootfs.to_str().unwrap().into(),
        netns_path: netns.path(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        mounts: vec![BindMount {
            source: shared.to_str().unwrap().into(),
            destination: "/data".into(),
            read_only: false,
        }],
        resources: Some(Resources {
            memory_bytes: 64 << 20,
            cpu_millis: 500,
            pids_max: 64,
            swap_bytes: 0,
            cpu_weight: 200,
            io_weight: 300,
        }),
        log_path: log.to_str().unwrap().into(),
        id_mapping: Some(IdMapping {
            host_id,
            size: 65_536,
        }),
        tmp_bytes: 1 << 20,
        ..Default::default()
    };
    client.create(req.clone()).await.unwrap();
    let pid = client
        .start(SandboxId { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    let out = wait_for_log(&log, &["ready"]);
    eprintln!("hardened app log:\n{out}");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(fields, ["0", &host_id.to_string(), "65536"], "{uid_map}");
    let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
    assert!(gid_map.contains(&host_id.to_string()), "{gid_map}");
    assert_eq!(
        status_field(pid, "Uid:").split_whitespace().next(),
        Some(host_id.to_string().as_str())
    );
    for want in [
        "uid=0",
        "host-write-denied",
        "new-file-ok",
        "unshare-eperm",
        "timer_list=0",
        "keys=0",
        "acpi=0",
        "procsys-ro",
        "sysrq-ro",
        "tmp-enospc",
        "rootfs-writable",
        "NoNewPrivs:\t1",
        "devnull-ok",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in the app log:\n{out}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(shared.join("host.txt")).unwrap(),
        "host-owned\n"
    );
    // A file the sandbox's root creates belongs to its host uid, not host root.
    let meta = std::fs::metadata(shared.join("new.txt")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), host_id);

    // Docker's default capability set less CAP_NET_RAW (bit 13), nothing more.
    assert_eq!(status_field(pid, "CapEff:"), "00000000a80405fb");
    assert_eq!(status_field(pid, "CapBnd:"), "00000000a80405fb");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    // Minimal /dev: character devices, directories and symlinks only.
    for entry in std::fs::read_dir(format!("/proc/{pid}/root/dev")).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        assert!(
            !std::os::unix::fs::FileTypeExt::is_block_device(&ft),
            "block device {:?} in the sandbox's /dev",
            entry.path()
        );
    }
    assert!(Path::new(&format!("/proc/{pid}/root/dev/urandom")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/dev/kmsg")).exists());
    assert!(!Path::new(&format!("/proc/{pid}/root/dev/mem")).exists());

    // Weights and limits in the cgroup files, on either layout.
    assert_eq!(cgroupfs::memory_limit(&site, &id), Some(64 << 20));
    assert_eq!(cgroupfs::swap_limit(&site, &id), Some(0), "swap_bytes: 0");
    assert_eq!(cgroupfs::cpu_max(&site, &id), (Some(50_000), 100_000));
    // cpu_weight 200 is twice the default: 2048 shares.
    assert_eq!(
        cgroupfs::cpu_weight_raw(&site, &id),
        cgroupfs::expected_cpu_weight_raw(2048),
        "cpu weight on {}",
        cgroupfs::layout()
    );
    assert_eq!(cgroupfs::pids_max(&site, &id), Some(64));
    let io = match cgroupfs::io_weight(&site, &id) {
        Some((io_file, io_weight)) => {
            let want_io = if io_file.contains("bfq") || io_file == "blkio.weight" {
                300
            } else {
                // v2 io.weight is 1-10000: libcgroups maps 10-1000 linearly onto it.
                1 + (300 - 10) * 9999 / 990
            };
            assert_eq!(io_weight, want_io, "{io_file} on {}", cgroupfs::layout());
            format!("{io_file} {io_weight}")
        }
        // Only where the kernel offers no weight file at all (v1 without BFQ or
        // CFQ, as this machine's 6.18 kernel): sandboxd must then not ask for one, or every
        // create would fail. The cgroup v2 guest checks io.weight for real.
        None => {
            assert!(
                !cgroupfs::unified(),
                "a v2 sandbox with the io controller must get an io weight file"
            );
            "no io weight file on this kernel (no BFQ/CFQ)".to_string()
        }
    };
    eprintln!(
        "{}: memory {:?}, swap {:?}, cpu {:?}, cpu weight {}, pids {:?}, {io}",
        cgroupfs::layout(),
        cgroupfs::memory_limit(&site, &id),
        cgroupfs::swap_limit(&site, &id),
        cgroupfs::cpu_max(&site, &id),
        cgroupfs::cpu_weight_raw(&site, &id),
        cgroupfs::pids_max(&site, &id),
    );

    // Stats through the API and as metrics.
    let stats = client
        .stats(SandboxId { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.pids >= 3, "{stats:?}");
    assert!(stats.memory_bytes > 0, "{stats:?}");
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    assert_eq!(stats.site, site);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = daemon.metrics();
    let series = format!("berth_sandboxd_instance_pids{{site=\"{site}\",instance=\"{id}\"}}");
    assert!(metrics.contains(&series), "{metrics}");

    // Stop: the daemonized grandchild ignoring SIGTERM dies with the cgroup.
    let procs = cgroupfs::procs(&site, &id);
    assert!(procs.len() >= 3, "{procs:?}");
    let stopped = stop(&mut client, &id, 300).await;
    assert_eq!(stopped.status, SandboxStatus::Stopped as i32);
    for p in &procs {
        assert!(!alive(*p), "process {p} survived Stop");
    }
    client.delete(SandboxId { id: id.clone() }).await.unwrap();

    // Read-only root filesystem as an option.
    let id2 = format!("ro-{u}");
    let log2 = dir.join("ro.log");
    client
        .create(CreateRequest {
            id: id2.clone(),
            args: vec![
                "/bin/sh".into(),
                "-c".into(),
                "touch /rootfile 2>/dev/null && echo rootfs-writable || echo rootfs-ro; \
                 touch /tmp/x && echo tmp-ok"
                    .into(),
            ],
            log_path: log2.to_str().unwrap().into(),
            read_only_rootfs: true,
            mounts: vec![],
            ..req
        })
        .await
        .unwrap();
    client.start(SandboxId { id: id2.clone() }).await.unwrap();
    let out = wait_for_log(&log2, &["tmp-ok"]);
    assert!(out.contains("rootfs-ro"), "{out}");
    client.delete(SandboxId { id: id2.clone() }).await.unwrap();
    site_cgroup_goes(&site);
    assert_eq!(zombies_of(daemon.child.as_ref().unwrap().id()), 0);
}
