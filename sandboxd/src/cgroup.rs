//! Looks at a sandbox's cgroup from the outside: which processes are left, killing
//! them all at once (`cgroup.kill` on v2; freeze, SIGKILL, thaw on v1, so nothing can
//! fork away between reading the pid list and the signal), how many the memory
//! controller OOM-killed, what the sandbox uses (cpu, memory, pids), and removing what
//! libcontainer left behind, including the site's parent cgroup once it is empty.
//!
//! Works on cgroup v1 (legacy and hybrid layouts, where libcgroups uses its v1
//! manager: the path is joined to every controller's mount point) and on v2 (one
//! unified directory). It never creates cgroups: libcontainer does that.

use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::{get_cgroup_setup, CgroupSetup};
use libcgroups::v1::ControllerType;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

/// Errors of locating a cgroup hierarchy.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("detecting the cgroup layout under /sys/fs/cgroup: {0}")]
    Setup(String),
    #[error("finding the mount point of the {controller} cgroup controller: {message}")]
    MountPoint {
        controller: &'static str,
        message: String,
    },
}

/// Where one sandbox's cgroup lives.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    /// Directory whose `cgroup.procs` lists the sandbox's processes.
    procs_dir: PathBuf,
    /// Memory controller directory (v1) or the unified directory (v2).
    memory_dir: PathBuf,
    /// Every directory of this cgroup across controllers.
    all_dirs: Vec<PathBuf>,
    /// Freezer directory (v1 only).
    freezer_dir: Option<PathBuf>,
    /// cpuacct directory (v1) or the unified directory (v2).
    cpu_dir: PathBuf,
    unified: bool,
}

/// Resource usage of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_max_bytes: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

fn join(mount: &Path, cgroup_path: &Path) -> PathBuf {
    mount.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
}

/// The controllers' mount points, found once per process: parsing
/// `/proc/self/mountinfo` for each of them on every lookup cost milliseconds per
/// sandbox operation. (Cgroup hierarchies are not remounted under a running worker.)
#[derive(Debug, Clone)]
enum Mounts {
    Unified(PathBuf),
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
        freezer: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        all: Vec<PathBuf>,
    },
}

static MOUNTS: std::sync::Mutex<Option<Mounts>> = std::sync::Mutex::new(None);

fn mounts() -> Result<Mounts, CgroupError> {
    let mut cached = MOUNTS.lock().expect("cgroup mounts lock poisoned");
    if let Some(m) = cached.as_ref() {
        return Ok(m.clone());
    }
    let m = find_mounts()?;
    *cached = Some(m.clone());
    Ok(m)
}

fn find_mounts() -> Result<Mounts, CgroupError> {
    let setup = get_cgroup_setup().map_err(|e| CgroupError::Setup(e.to_string()))?;
    match setup {
        CgroupSetup::Unified => libcgroups::v2::util::get_unified_mount_point()
            .map(Mounts::Unified)
            .map_err(|e| CgroupError::MountPoint {
                controller: "unified",
                message: e.to_string(),
            }),
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            let mount_of = |controller: ControllerType| {
                libcgroups::v1::util::get_subsystem_mount_point(&controller)
            };
            let memory = mount_of(ControllerType::Memory).map_err(|e| CgroupError::MountPoint {
                controller: "memory",
                message: e.to_string(),
            })?;
            Ok(Mounts::V1 {
                memory,
                pids: mount_of(ControllerType::Pids).ok(),
                freezer: mount_of(ControllerType::Freezer).ok(),
                cpuacct: mount_of(ControllerType::CpuAcct).ok(),
                all: libcgroups::v1::util::list_subsystem_mount_points()
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            })
        }
    }
}

impl SandboxCgroup {
    /// Locates the cgroup at `cgroup_path` (e.g. `/berth/<site>/<id>`).
    pub fn locate(cgroup_path: &Path) -> Result<Self, CgroupError> {
        match mounts()? {
            Mounts::Unified(mount) => {
                let dir = join(&mount, cgroup_path);
                Ok(Self {
                    procs_dir: dir.clone(),
                    memory_dir: dir.clone(),
                    cpu_dir: dir.clone(),
                    all_dirs: vec![dir],
                    freezer_dir: None,
                    unified: true,
                })
            }
            Mounts::V1 {
                memory,
                pids,
                freezer,
                cpuacct,
                all,
            } => {
                let memory = join(&memory, cgroup_path);
                let procs = pids
                    .map(|m| join(&m, cgroup_path))
                    .unwrap_or_else(|| memory.clone());
                let mut all_dirs: Vec<PathBuf> = all.iter().map(|m| join(m, cgroup_path)).collect();
                for d in [&memory, &procs] {
                    if !all_dirs.contains(d) {
                        all_dirs.push(d.clone());
                    }
                }
                Ok(Self {
                    procs_dir: procs,
                    cpu_dir: cpuacct
                        .map(|m| join(&m, cgroup_path))
                        .unwrap_or_else(|| memory.clone()),
                    memory_dir: memory,
                    all_dirs,
                    freezer_dir: freezer.map(|m| join(&m, cgroup_path)),
                    unified: false,
                })
            }
        }
    }

    /// The memory controller's directory (v1) or the unified directory (v2).
    pub fn memory_dir(&self) -> &Path {
        &self.memory_dir
    }

    /// Directories of this cgroup that still exist.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        self.all_dirs
            .iter()
            .filter(|d| d.exists())
            .cloned()
            .collect()
    }

    /// Pids in the cgroup (none when it does not exist).
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        match std::fs::read_to_string(self.procs_dir.join("cgroup.procs")) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` to every process in the cgroup; returns how many were signalled.
    pub fn signal_all(&self, signal: Signal) -> io::Result<usize> {
        let pids = self.procs()?;
        let mut sent = 0;
        for pid in pids {
            if kill(Pid::from_raw(pid), signal).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Kills every process of the cgroup at once: `cgroup.kill` on v2; on v1 the
    /// cgroup is frozen first so no process can fork between reading the pid list and
    /// the signal, then SIGKILLed and thawed (a frozen process dies once thawed).
    /// Returns how many processes were signalled (v1) or 0 (v2: the kernel counts).
    pub fn kill_all(&self) -> io::Result<usize> {
        if self.unified {
            let kill_file = self.procs_dir.join("cgroup.kill");
            if kill_file.exists() {
                return std::fs::write(kill_file, "1").map(|()| 0);
            }
            return self.signal_all(Signal::SIGKILL);
        }
        let Some(freezer) = self.freezer_dir.as_ref().filter(|d| d.is_dir()) else {
            return self.signal_all(Signal::SIGKILL);
        };
        let state = freezer.join("freezer.state");
        std::fs::write(&state, "FROZEN")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::fs::read_to_string(&state)?.trim() != "FROZEN"
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let sent = self.signal_all(Signal::SIGKILL);
        let thawed = std::fs::write(&state, "THAWED");
        let sent = sent?;
        thawed?;
        Ok(sent)
    }

    /// How many processes the kernel OOM-killed in this cgroup (0 when the counter
    /// cannot be read).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory_dir.join(file))
            .map(|s| oom_kill_count(&s))
            .unwrap_or(0)
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > 0
    }

    /// Current usage (fields that cannot be read are 0).
    pub fn usage(&self) -> Usage {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        let pids = num(read(&self.procs_dir, "pids.current"));
        if self.unified {
            let cpu_usage_ns = read(&self.cpu_dir, "cpu.stat")
                .map(|s| stat_field(&s, "usage_usec").saturating_mul(1000))
                .unwrap_or(0);
            Usage {
                cpu_usage_ns,
                memory_bytes: num(read(&self.memory_dir, "memory.current")),
                memory_max_bytes: num(read(&self.memory_dir, "memory.peak")),
                pids,
                oom_kills: self.oom_kills(),
            }
        } else {
            Usage {
                cpu_usage_ns: num(read(&self.cpu_dir, "cpuacct.usage")),
                memory_bytes: num(read(&self.memory_dir, "memory.usage_in_bytes")),
                memory_max_bytes: num(read(&self.memory_dir, "memory.max_usage_in_bytes")),
                pids,
                oom_kills: self.oom_kills(),
            }
        }
    }

    /// Removes directories libcontainer left (best effort; empty cgroups only).
    pub fn remove_leftovers(&self) {
        for dir in self.existing_dirs() {
            if let Err(err) = std::fs::remove_dir(&dir) {
                tracing::warn!(dir = %dir.display(), %err, "removing a leftover cgroup directory");
            }
        }
    }
}

/// Removes the site's parent cgroup `/berth/<site>` in every hierarchy when it holds
/// no sandbox any more (best effort: a non-empty or busy directory stays).
pub fn remove_site_dirs(site_path: &Path) {
    let Ok(site) = SandboxCgroup::locate(site_path) else {
        return;
    };
    for dir in site.existing_dirs() {
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "removed the site cgroup"),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "removing the site cgroup directory")
            }
        }
    }
}

/// How a sandbox's io weight (10-1000, the OCI blkio scale) reaches the kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoWeightSupport {
    /// libcgroups writes the OCI blkio weight as it is: v1 (`blkio.bfq.weight` or
    /// `blkio.weight`), or v2 with BFQ registered (`io.bfq.weight`, same scale).
    Blkio,
    /// v2 without BFQ: `io.weight` (iocost, 1-10000), given in the OCI `unified` map.
    /// libcgroups 0.7 converts a blkio weight for `io.weight` in `u16` arithmetic,
    /// which overflows for any weight above 16: a panic in a debug build (every
    /// sandbox create failed), a wrong weight in a release build.
    IoWeight,
    /// v2 with neither BFQ nor iocost, or without the io controller, or v1 without a
    /// weight file (no BFQ or CFQ scheduler): no io weight.
    Unsupported,
}

static IO_WEIGHT: std::sync::OnceLock<IoWeightSupport> = std::sync::OnceLock::new();

/// Which io weight file this host's cgroups offer (found once per process).
pub fn io_weight_support() -> IoWeightSupport {
    *IO_WEIGHT.get_or_init(|| match mounts() {
        Ok(Mounts::Unified(mount)) => {
            let controllers =
                std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "io") {
                IoWeightSupport::Unsupported
            } else if bfq_registered() {
                IoWeightSupport::Blkio
            } else if mount.join("io.cost.qos").exists() {
                IoWeightSupport::IoWeight
            } else {
                IoWeightSupport::Unsupported
            }
        }
        Ok(Mounts::V1 { all, .. }) => {
            // v1 offers a weight file only with BFQ (`blkio.bfq.weight`) or the old
            // CFQ scheduler (`blkio.weight`); under mq-deadline or none it has
            // neither, and libcgroups fails the create writing one.
            let weighted = all
                .iter()
                .any(|m| m.join("blkio.bfq.weight").exists() || m.join("blkio.weight").exists());
            if weighted {
                IoWeightSupport::Blkio
            } else {
                IoWeightSupport::Unsupported
            }
        }
        Err(_) => IoWeightSupport::Blkio,
    })
}

/// Whether the BFQ scheduler (and so its `io.bfq.weight` cgroup file) is registered:
/// loaded as a module, or offered to a block device.
fn bfq_registered() -> bool {
    if Path::new("/sys/module/bfq").exists() {
        return true;
    }
    std::fs::read_dir("/sys/block").is_ok_and(|devices| {
        devices.flatten().any(|d| {
            std::fs::read_to_string(d.path().join("queue/scheduler")).is_ok_and(|s| {
                s.split_whitespace()
                    .any(|e| e.trim_matches(['[', ']']) == "bfq")
            })
        })
    })
}

/// Whether sandboxes get a v2 `memory.swap.max`: the unified layout, a kernel with
/// swap, and swap accounting not turned off on its command line.
pub fn v2_swap_limits() -> bool {
    static SWAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SWAP.get_or_init(|| {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        matches!(mounts(), Ok(Mounts::Unified(_)))
            && Path::new("/proc/swaps").exists()
            && !cmdline
                .split_whitespace()
                .any(|p| p == "cgroup.memory=noswap" || p == "swapaccount=0")
    })
}

/// A blkio weight (10-1000) on the v2 `io.weight` scale (1-10000), mapped linearly
/// like runc and libcgroups do, without their overflow.
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + u64::from(weight.clamp(10, 1000) - 10) * 9999 / 990
}

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`, `memory.events`).
pub fn stat_field(contents: &str, key: &str) -> u64 {
    contents
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Parses the `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
pub fn oom_kill_count(contents: &str) -> u64 {
    stat_field(contents, "oom_kill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kill_count(v1), 2);
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
    }

    #[test]
    fn parses_v2_cpu_stat() {
        let stat = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(stat_field(stat, "usage_usec"), 1500);
        assert_eq!(stat_field(stat, "nr_throttled"), 0);
    }

    #[test]
    fn maps_blkio_weights_onto_io_weight() {
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(100), 910);
        assert_eq!(blkio_to_io_weight(300), 2930);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn joins_absolute_cgroup_paths() {
        assert_eq!(
            join(Path::new("/sys/fs/cgroup/memory"), Path::new("/berth/a/b")),
            PathBuf::from("/sys/fs/cgroup/memory/berth/a/b")
        );
    }
}
