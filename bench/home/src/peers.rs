//! The processes a bench run needs: one SeaweedFS server (S3 gateway on loopback), the
//! Berth file server over it, and the FUSE clients under test (Berth, s3fs, rclone),
//! each of which can be remounted to start a phase with cold client caches.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const ACCESS_KEY: &str = "benchkey";
pub const SECRET_KEY: &str = "benchsecret";

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| {
                format!("starting {name} ({cmd:?}); is it installed? see scripts/install-deps.sh")
            })?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Fails if the process already exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); see its log", self.name);
        }
        Ok(())
    }

    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(25));
    }
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn wait_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > timeout {
            bail!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mounted(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

fn wait_mounted(path: &Path, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while !is_mounted(path) {
        proc.check()?;
        if start.elapsed() > timeout {
            bail!("{} was not mounted within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("umount").arg(path).status();
        if is_mounted(path) {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

/// SeaweedFS with its S3 gateway, all on loopback (gRPC ports are port + 10000).
pub struct Weed {
    _proc: Proc,
    pub s3_port: u16,
}

impl Weed {
    pub fn start(dir: &Path, base_port: u16) -> Result<Self> {
        let data = dir.join("weed-data");
        fs::create_dir_all(&data)?;
        let config = dir.join("s3.json");
        fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"bench","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )?;
        let s3_port = base_port;
        let mut cmd = Command::new("weed");
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .arg(format!("-master.port={}", base_port + 1))
            .arg(format!("-volume.port={}", base_port + 2))
            .arg(format!("-filer.port={}", base_port + 3))
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-s3.config={}", config.display()))
            .args([
                "-volume.max=100",
                "-master.volumeSizeLimitMB=1024",
                "-master.telemetry=false",
                // Extra listeners with fixed default ports that collide with other
                // SeaweedFS instances on the machine.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-metricsPort=0",
            ]);
        let mut proc = Proc::spawn("weed", &mut cmd, &dir.join("weed.log"))?;
        wait_port(s3_port, "weed s3", Duration::from_secs(60))?;
        proc.check()?;
        Ok(Self {
            _proc: proc,
            s3_port,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn make_bucket(&self, bucket: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            match run(rclone(&self.endpoint())
                .arg("mkdir")
                .arg(format!("ws:{bucket}")))
            {
                Ok(_) => return Ok(()),
                Err(err) if start.elapsed() > Duration::from_secs(30) => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// An rclone command with the `ws:` remote pointing at the S3 server at `endpoint`.
fn rclone(endpoint: &str) -> Command {
    let mut cmd = Command::new("rclone");
    cmd.env("RCLONE_CONFIG_WS_TYPE", "s3")
        .env("RCLONE_CONFIG_WS_PROVIDER", "SeaweedFS")
        .env("RCLONE_CONFIG_WS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_WS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_WS_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG", "/dev/null")
        // The environment's CA bundle breaks rclone (MACHINE-NOTES); plain http here.
        .env_remove("AWS_CA_BUNDLE");
    cmd
}

/// Which file system a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    Berth,
    S3fs,
    Rclone,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Local => "local ext4",
            Kind::Berth => "Berth /home",
            Kind::S3fs => "s3fs",
            Kind::Rclone => "rclone mount",
        }
    }
}

/// Everything needed to (re)mount one target.
pub struct Target {
    pub kind: Kind,
    pub dir: PathBuf,
    work: PathBuf,
    endpoint: String,
    fsd_bin: PathBuf,
    fsd_port: u16,
    mount: Option<Proc>,
    generation: u32,
}

impl Target {
    pub fn new(kind: Kind, work: &Path, weed: &Weed, fsd_bin: &Path, fsd_port: u16) -> Self {
        let dir = work.join(format!("mnt-{kind:?}").to_lowercase());
        Self {
            kind,
            dir,
            work: work.to_path_buf(),
            endpoint: weed.endpoint(),
            fsd_bin: fsd_bin.to_path_buf(),
            fsd_port,
            mount: None,
            generation: 0,
        }
    }

    /// Mounts (or for local disk: creates) the target directory.
    pub fn mount(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        self.generation += 1;
        let log = self
            .work
            .join(format!("{:?}-mount-{}.log", self.kind, self.generation).to_lowercase());
        let mut proc = match self.kind {
            Kind::Local => return Ok(()),
            Kind::Berth => {
                let mut cmd = Command::new(&self.fsd_bin);
                cmd.arg("mount")
                    .arg("--server")
                    .arg(format!("http://127.0.0.1:{}", self.fsd_port))
                    .args(["--volume", "bench"])
                    .arg(&self.dir)
                    .env("RUST_LOG", "warn");
                Proc::spawn("berth-fsd mount", &mut cmd, &log)?
            }
            Kind::S3fs => {
                let pw = self.work.join("s3fs.passwd");
                fs::write(&pw, format!("{ACCESS_KEY}:{SECRET_KEY}\n"))?;
                fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                let mut cmd = Command::new("s3fs");
                cmd.arg("hb-s3fs")
                    .arg(&self.dir)
                    .arg("-f")
                    .arg("-o")
                    .arg(format!("passwd_file={}", pw.display()))
                    .arg("-o")
                    .arg(format!("url={}", self.endpoint))
                    .args(["-o", "use_path_request_style", "-o", "allow_other"]);
                Proc::spawn("s3fs", &mut cmd, &log)?
            }
            Kind::Rclone => {
                // A fresh VFS cache directory per mount: nothing read comes from an
                // earlier mount's disk cache.
                let cache = self.work.join(format!("rclone-cache-{}", self.generation));
                let mut cmd = rclone(&self.endpoint);
                cmd.arg("mount")
                    .arg("ws:hb-rclone")
                    .arg(&self.dir)
                    .args(["--vfs-cache-mode", "off", "--allow-other"])
                    .arg("--cache-dir")
                    .arg(&cache);
                Proc::spawn("rclone mount", &mut cmd, &log)?
            }
        };
        wait_mounted(&self.dir, &mut proc, Duration::from_secs(60))?;
        self.mount = Some(proc);
        Ok(())
    }

    pub fn unmount(&mut self) {
        if let Some(mut proc) = self.mount.take() {
            if self.kind == Kind::Berth {
                proc.stop(Duration::from_secs(20));
            } else {
                unmount(&self.dir);
                proc.stop(Duration::from_secs(20));
            }
            unmount(&self.dir);
        }
    }

    /// Starts a phase cold: FUSE client remounted (its caches gone), then the
    /// kernel's page, dentry and inode caches dropped.
    pub fn cold(&mut self) -> Result<()> {
        if self.kind != Kind::Local {
            self.unmount();
            self.mount()?;
        }
        drop_caches()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// `sync` then drop the page cache, dentries and inodes (the whole machine's).
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping caches (/proc/sys/vm/drop_caches); run as root")
}

/// The Berth file server over the bench's S3 bucket.
pub fn start_fsd(fsd_bin: &Path, work: &Path, weed: &Weed, port: u16) -> Result<Proc> {
    let state = work.join("fsd-state");
    fs::create_dir_all(&state)?;
    let mut cmd = Command::new(fsd_bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", port + 1))
        .args(["--s3-bucket", "hb-berth", "--s3-endpoint"])
        .arg(weed.endpoint())
        .arg("--state-dir")
        .arg(&state)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_CA_BUNDLE")
        .env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("berth-fsd serve", &mut cmd, &work.join("fsd-serve.log"))?;
    wait_port(port, "berth-fsd serve", Duration::from_secs(30))?;
    proc.check()?;
    Ok(proc)
}
