//! `/home` volumes: one FUSE mount (`berth-fsd mount`) per volume per worker, shared by
//! every local instance of that volume and refcounted.
//!
//! `<state>/volumes` is made a bind mount onto itself with shared propagation at startup,
//! so a FUSE mount that comes back after a file server restart propagates into sandboxes
//! (sandboxd binds `/home` with `rbind,rslave`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// How long a new FUSE mount may take to appear.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of this module.
#[derive(Debug, Error)]
pub enum VolumeError {
    #[error("preparing volume directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("making {path} a shared mount: {source}")]
    Propagation { path: PathBuf, source: nix::Error },
    #[error("giving the root of volume {path} to the site's root (host uid {host_id}): {source}: is the file server reachable?")]
    Chown {
        path: PathBuf,
        host_id: u32,
        source: io::Error,
    },
    #[error("volume name {0:?} is not a safe directory name")]
    BadName(String),
    #[error("starting {bin} for volume {volume}: {source} (is --fsd-bin right?)")]
    Spawn {
        bin: PathBuf,
        volume: String,
        source: io::Error,
    },
    #[error("mounting volume {volume}: berth-fsd exited with {status} before the mount appeared; its log says: {log}")]
    Exited {
        volume: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("mounting volume {volume}: the mount did not appear at {path} within {timeout:?}; is the file server at {server} up? log: {log}")]
    Timeout {
        volume: String,
        path: PathBuf,
        timeout: Duration,
        server: String,
        log: String,
    },
}

/// True when `dir` is a mount point (a different device than its parent).
pub fn is_mount_point(dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return true;
    };
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev() || d.ino() == p.ino(),
        _ => false,
    }
}

/// True when `dir` appears as a mount point in /proc/self/mountinfo (also catches bind
/// mounts of a directory onto itself, which keep the same device).
fn in_mountinfo(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == want)
}

/// Makes `dir` a bind mount onto itself with shared propagation (idempotent).
pub fn make_shared_root(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !in_mountinfo(dir) {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| VolumeError::Propagation {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| VolumeError::Propagation {
        path: dir.to_path_buf(),
        source,
    })
}

/// Where the agent finds the file server and the FUSE client binary.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    pub root: PathBuf,
    pub logs: PathBuf,
    pub fsd_bin: PathBuf,
    pub fsd_server: String,
}

struct Slot {
    refs: usize,
    child: Option<Child>,
}

/// Refcounted FUSE mounts of the worker's volumes.
pub struct Volumes {
    cfg: VolumeConfig,
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
}

impl Volumes {
    pub fn new(cfg: VolumeConfig) -> Self {
        Self {
            cfg,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Directory where volume `name` is mounted.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.cfg.root.join(name)
    }

    fn slot(&self, name: &str) -> Arc<Mutex<Slot>> {
        let mut slots = self.slots.lock().expect("volume table lock poisoned");
        slots
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    refs: 0,
                    child: None,
                }))
            })
            .clone()
    }

    /// Unmounts leftovers of an earlier run under the volume root.
    pub fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.root) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if in_mountinfo(&p) {
                warn!(path = %p.display(), "unmounting a volume left over by an earlier run");
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
        }
    }

    /// Takes a reference on volume `name`, mounting it if this is the first one.
    /// Returns the host directory to bind as `/home`.
    pub async fn acquire(&self, name: &str) -> Result<PathBuf, VolumeError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(VolumeError::BadName(name.to_string()));
        }
        let slot = self.slot(name);
        let mut slot = slot.lock().await;
        let dir = self.dir_of(name);
        let alive = match slot.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)) && in_mountinfo(&dir),
            None => false,
        };
        if !alive {
            if let Some(child) = slot.child.take() {
                warn!(
                    volume = name,
                    "fsd mount process is gone; mounting the volume again"
                );
                stop_child(child, &dir).await;
            }
            let child = self.mount(name, &dir).await?;
            slot.child = Some(child);
        }
        slot.refs += 1;
        Ok(dir)
    }

    /// Gives the root directory of a mounted volume to the site's root (host id
    /// `host_id`) when it still belongs to host root, so a sandbox in its own user
    /// namespace can create files in `/home`. Only the root directory: the file server
    /// records the caller's host uid, so what the app creates is `host_id`'s already.
    /// Returns whether it changed the owner.
    pub async fn give_root_to(dir: &Path, host_id: u32) -> Result<bool, VolumeError> {
        let dir = dir.to_path_buf();
        let err = |path: &Path, source| VolumeError::Chown {
            path: path.to_path_buf(),
            host_id,
            source,
        };
        let d = dir.clone();
        let result = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let md = std::fs::metadata(&d)?;
            if md.uid() != 0 || host_id == 0 {
                return Ok(false);
            }
            std::os::unix::fs::chown(&d, Some(host_id), Some(host_id))?;
            Ok(true)
        })
        .await
        .map_err(|e| err(&dir, io::Error::other(e.to_string())))?;
        let changed = result.map_err(|e| err(&dir, e))?;
        if changed {
            info!(volume = %dir.display(), host_id, "gave the volume's root directory to the site's root");
        }
        Ok(changed)
    }

    async fn mount(&self, name: &str, dir: &Path) -> Result<Child, VolumeError> {
        std::fs::create_dir_all(dir).map_err(|source| VolumeError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        if is_mount_point(dir) || in_mountinfo(dir) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        }
        std::fs::create_dir_all(&self.cfg.logs).map_err(|source| VolumeError::Dir {
            path: self.cfg.logs.clone(),
            source,
        })?;
        let log_path = self.cfg.logs.join(format!("fsd-{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| VolumeError::Dir {
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| VolumeError::Dir {
            path: log_path.clone(),
            source,
        })?;
        info!(volume = name, dir = %dir.display(), server = %self.cfg.fsd_server, "mounting volume");
        let mut child = Command::new(&self.cfg.fsd_bin)
            .arg("mount")
            .arg("--server")
            .arg(&self.cfg.fsd_server)
            .arg("--volume")
            .arg(name)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| VolumeError::Spawn {
                bin: self.cfg.fsd_bin.clone(),
                volume: name.to_string(),
                source,
            })?;
        let started = Instant::now();
        loop {
            if is_mount_point(dir) {
                info!(
                    volume = name,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "volume mounted"
                );
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VolumeError::Exited {
                    volume: name.to_string(),
                    status,
                    log: crate::logtail::tail(&log_path, 10),
                });
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                stop_child(child, dir).await;
                return Err(VolumeError::Timeout {
                    volume: name.to_string(),
                    path: dir.to_path_buf(),
                    timeout: MOUNT_TIMEOUT,
                    server: self.cfg.fsd_server.clone(),
                    log: crate::logtail::tail(&log_path, 10),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops a reference on volume `name`; the last one unmounts it.
    pub async fn release(&self, name: &str) {
        let slot = self.slot(name);
        let mut slot = slot.lock().await;
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs > 0 {
            return;
        }
        let dir = self.dir_of(name);
        if let Some(child) = slot.child.take() {
            info!(
                volume = name,
                "last instance of the volume is gone: unmounting"
            );
            stop_child(child, &dir).await;
        }
        let _ = std::fs::remove_dir(&dir);
    }

    /// Unmounts every volume regardless of references (shutdown).
    pub async fn release_all(&self) {
        let slots: Vec<(String, Arc<Mutex<Slot>>)> = self
            .slots
            .lock()
            .expect("volume table lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, slot) in slots {
            let mut slot = slot.lock().await;
            slot.refs = 0;
            if let Some(child) = slot.child.take() {
                stop_child(child, &self.dir_of(&name)).await;
            }
        }
    }
}

/// SIGTERM the FUSE client, give it 5 s to unmount, then detach the mount and SIGKILL.
async fn stop_child(mut child: Child, dir: &Path) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        warn!(dir = %dir.display(), "berth-fsd mount did not exit within 5 s of SIGTERM: killing it");
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        let _ = child.kill().await;
    }
    if is_mount_point(dir) || in_mountinfo(dir) {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
    }
}
