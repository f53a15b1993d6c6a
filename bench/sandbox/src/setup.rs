//! What both runtimes share: a busybox root filesystem, one network namespace, the
//! sandbox request (and through it the OCI spec), and the `berth-sandboxd` process.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_api::sandbox::sandboxes_client::SandboxesClient;
use berth_api::sandbox::{CreateRequest, Resources};
use tonic::transport::Channel;

/// Memory limit of every benchmark sandbox (and its swap limit).
pub const MEMORY_BYTES: u64 = 64 << 20;
/// CPU quota of every benchmark sandbox (half a core).
pub const CPU_MILLIS: u32 = 500;
/// Pids limit of every benchmark sandbox.
pub const PIDS_MAX: u32 = 64;

/// Fails unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the sandbox benchmark needs root (namespaces, cgroups, mounts): run it as root"
    );
    Ok(())
}

/// Makes this process a child subreaper, so the inits that `runc create` leaves
/// behind are re-parented here and can be waited for (what a containerd shim does).
pub fn become_subreaper() -> anyhow::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("making the benchmark a child subreaper (prctl PR_SET_CHILD_SUBREAPER)");
    }
    Ok(())
}

/// Writes a busybox-static root filesystem with `/bin/true` and `/bin/sleep`.
pub fn busybox_rootfs(root: &Path) -> anyhow::Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    let busybox = root.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox)
        .context("copying /bin/busybox into the rootfs: install busybox-static")?;
    std::fs::set_permissions(&busybox, std::fs::Permissions::from_mode(0o755))
        .context("making the rootfs busybox executable")?;
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .with_context(|| format!("linking /bin/{applet} in the rootfs"))?;
    }
    Ok(())
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace with `lo` up, removed on drop. Every sandbox of the
/// benchmark (Berth's and runc's) joins this one namespace by path.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Where a benchmark sandbox lives, shared by both runtimes.
#[derive(Debug, Clone)]
pub struct Target {
    pub rootfs: PathBuf,
    pub netns_path: String,
    pub log_path: PathBuf,
}

impl Target {
    /// The request Berth's agent would send for sandbox `id` of `site` running
    /// `args`. runc gets the OCI spec sandboxd builds from this very request.
    pub fn request(&self, site: &str, id: &str, args: &[&str]) -> CreateRequest {
        CreateRequest {
            id: id.to_string(),
            site: site.to_string(),
            rootfs: self.rootfs.display().to_string(),
            netns_path: self.netns_path.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_path: self.log_path.display().to_string(),
            resources: Some(Resources {
                memory_bytes: MEMORY_BYTES,
                cpu_millis: CPU_MILLIS,
                pids_max: PIDS_MAX,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A `berth-sandboxd` started for the benchmark, killed on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `exe` with its socket and state under `dir`; its log goes to
    /// `dir/sandboxd.log`.
    pub fn start(exe: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for sandboxd's metrics")?
            .port();
        let socket = dir.join("sandboxd.sock");
        let log = File::create(dir.join("sandboxd.log")).context("creating sandboxd.log")?;
        let child = Command::new(exe)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("sandboxd-state"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Self { child, socket })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Connects to the daemon's socket, waiting up to 20 s for it to come up.
    pub async fn client(&mut self) -> anyhow::Result<SandboxesClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().context("checking on sandboxd")? {
                bail!("berth-sandboxd exited at start ({status}); see sandboxd.log in the work directory");
            }
            if self.socket.exists() {
                if let Ok(c) = berth_sandboxd::connect(&self.socket).await {
                    return Ok(c);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "berth-sandboxd did not listen on {} within 20 s",
                self.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the OCI bundle sandboxd would write for `req` into `bundle`.
///
/// sandboxd's helper joins the request's network namespace itself before
/// libcontainer runs (so the spec may not name it); with `name_netns` the spec's
/// network namespace entry is set to that path instead, so that runc joins the
/// same namespace with `setns`.
pub fn write_bundle(req: &CreateRequest, bundle: &Path, name_netns: bool) -> anyhow::Result<()> {
    let spec = berth_sandboxd::spec::build(req).context("building the oci spec")?;
    std::fs::create_dir_all(bundle)
        .with_context(|| format!("creating the bundle {}", bundle.display()))?;
    let config = bundle.join("config.json");
    if !name_netns {
        spec.save(&config)
            .with_context(|| format!("writing {}", config.display()))?;
        return Ok(());
    }
    let mut json = serde_json::to_value(&spec).context("serializing the oci spec")?;
    let namespaces = json
        .pointer_mut("/linux/namespaces")
        .and_then(|v| v.as_array_mut())
        .context("the oci spec has no linux.namespaces")?;
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(serde_json::json!({ "type": "network", "path": req.netns_path }));
    let bytes = serde_json::to_vec(&json).context("serializing the oci spec")?;
    std::fs::write(&config, bytes).with_context(|| format!("writing {}", config.display()))?;
    Ok(())
}

/// Removes the per-site parent cgroups the benchmark's runc and helper sandboxes
/// leave behind (`/berth/<site>` under every v1 controller and in the v2 tree);
/// sandboxd removes its own. Best effort: a directory still in use stays.
pub fn remove_site_cgroups(sites: &[&str]) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = controllers.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        for site in sites {
            let _ = std::fs::remove_dir(root.join("berth").join(site));
        }
    }
}

/// Waits for the child `pid` (an init re-parented to this subreaper); returns its
/// exit code, 128+signal when killed.
pub fn wait_pid(pid: i32) -> anyhow::Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waiting for process {pid}: {e}"),
        }
    }
}

/// Reaps every exited child that nobody waits for (intermediate runc processes).
pub fn reap_strays() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
