//! Looks at a sandbox's cgroup from the outside: which processes are left, killing
//! them all, whether the memory controller OOM-killed one, and removing what
//! libcontainer left behind.
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
    unified: bool,
}

fn join(mount: &Path, cgroup_path: &Path) -> PathBuf {
    mount.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
}

impl SandboxCgroup {
    /// Locates the cgroup at `cgroup_path` (e.g. `/berth/<site>/<id>`).
    pub fn locate(cgroup_path: &Path) -> Result<Self, CgroupError> {
        let setup = get_cgroup_setup().map_err(|e| CgroupError::Setup(e.to_string()))?;
        match setup {
            CgroupSetup::Unified => {
                let mount = libcgroups::v2::util::get_unified_mount_point().map_err(|e| {
                    CgroupError::MountPoint {
                        controller: "unified",
                        message: e.to_string(),
                    }
                })?;
                let dir = join(&mount, cgroup_path);
                Ok(Self {
                    procs_dir: dir.clone(),
                    memory_dir: dir.clone(),
                    all_dirs: vec![dir],
                    unified: true,
                })
            }
            CgroupSetup::Legacy | CgroupSetup::Hybrid => {
                let mount_of = |controller: ControllerType, name: &'static str| {
                    libcgroups::v1::util::get_subsystem_mount_point(&controller).map_err(|e| {
                        CgroupError::MountPoint {
                            controller: name,
                            message: e.to_string(),
                        }
                    })
                };
                let memory = join(&mount_of(ControllerType::Memory, "memory")?, cgroup_path);
                let procs = mount_of(ControllerType::Pids, "pids")
                    .map(|m| join(&m, cgroup_path))
                    .unwrap_or_else(|_| memory.clone());
                let mut all_dirs: Vec<PathBuf> =
                    libcgroups::v1::util::list_subsystem_mount_points()
                        .map(|mounts| mounts.iter().map(|m| join(m, cgroup_path)).collect())
                        .unwrap_or_default();
                for d in [&memory, &procs] {
                    if !all_dirs.contains(d) {
                        all_dirs.push(d.clone());
                    }
                }
                Ok(Self {
                    procs_dir: procs,
                    memory_dir: memory,
                    all_dirs,
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

    /// Whether the kernel OOM-killed a process of this cgroup (best effort: false
    /// when the counter cannot be read).
    pub fn oom_killed(&self) -> bool {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory_dir.join(file))
            .map(|s| oom_kill_count(&s) > 0)
            .unwrap_or(false)
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

/// Parses the `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
pub fn oom_kill_count(contents: &str) -> u64 {
    contents
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == "oom_kill").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
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
    fn joins_absolute_cgroup_paths() {
        assert_eq!(
            join(Path::new("/sys/fs/cgroup/memory"), Path::new("/berth/a/b")),
            PathBuf::from("/sys/fs/cgroup/memory/berth/a/b")
        );
    }
}
