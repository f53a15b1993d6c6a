//! The daemon's record of its sandboxes, kept in memory and mirrored to
//! `<state>/sandboxes.json` after every change, so a restarted daemon knows the ids,
//! their init pids (with the process start time, to tell a reused pid apart) and
//! their cgroup paths.
//!
//! Writes are atomic (temporary file + rename, not fsynced); it never stores secrets
//! or env.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_api::sandbox::{SandboxInfo, SandboxStatus};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of the state file.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("reading the sandbox state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the sandbox state file {path}: {source}; move it aside to start empty")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the sandbox state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Lifecycle of a sandbox as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// One sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub site: String,
    pub status: Status,
    /// Host pid of the container's init (0 if none).
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub pid_start_time: Option<u64>,
    /// Exit code once stopped: 128+signal when killed, -1 when unknown.
    pub exit_code: i32,
    pub oom_killed: bool,
    /// Cgroup path relative to the controllers' mount points.
    pub cgroup_path: PathBuf,
    pub log_path: PathBuf,
}

impl Record {
    /// The API view of this record.
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            site: self.site.clone(),
            status: match self.status {
                Status::Created => SandboxStatus::Created,
                Status::Running => SandboxStatus::Running,
                Status::Stopped => SandboxStatus::Stopped,
            } as i32,
            pid: self.pid,
            exit_code: self.exit_code,
            oom_killed: self.oom_killed,
        }
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// A store kept at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads every record (none when the file does not exist yet).
    pub fn load(&self) -> Result<BTreeMap<String, Record>, StoreError> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let records: Vec<Record> =
            serde_json::from_slice(&data).map_err(|source| StoreError::Parse {
                path: self.path.clone(),
                source,
            })?;
        Ok(records.into_iter().map(|r| (r.id.clone(), r)).collect())
    }

    /// Replaces the file with `records`.
    pub fn save(&self, records: &BTreeMap<String, Record>) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let list: Vec<&Record> = records.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("records serialize");
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        // No fsync: sandboxes do not survive a reboot, so the file only has to
        // survive a daemon restart, and an fsync per change stalled operations for
        // seconds under build I/O.
        f.write_all(&json).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("sandboxes.json"));
        assert!(store.load().unwrap().is_empty());
        let mut records = BTreeMap::new();
        let r = Record {
            id: "a-1".into(),
            site: "a".into(),
            status: Status::Running,
            pid: 42,
            pid_start_time: Some(7),
            exit_code: 0,
            oom_killed: false,
            cgroup_path: "/berth/a/a-1".into(),
            log_path: "/tmp/a.log".into(),
        };
        records.insert(r.id.clone(), r.clone());
        store.save(&records).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.get("a-1"), Some(&r));
        assert_eq!(r.info().status, SandboxStatus::Running as i32);
    }
}
