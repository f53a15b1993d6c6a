//! The daemon's record of its sandboxes, kept in memory and mirrored to disk after
//! every change, so a restarted daemon knows the ids, their init pids (with the
//! process start time, to tell a reused pid apart) and their cgroup paths.
//!
//! On disk: a snapshot, `<state>/sandboxes.json` (replaced atomically: temporary
//! file + rename), and a change log beside it, `<state>/sandboxes.log`, one JSON line
//! per changed record ([`Change`]), appended before the operation answers. Loading
//! replays the log over the snapshot; [`Store::save`] writes a new snapshot and
//! empties the log (at start, and once the log is long). Appending is one `write`
//! of one line: a change is either in the log whole or not at all, as with a
//! rename, without rewriting every record per change (and without the block
//! allocation ext4 forces on a rename over an existing file, which cost 0.3–5 ms per
//! change under build I/O). Nothing is fsynced: sandboxes do not survive a reboot,
//! so the records only have to survive a daemon restart; a torn last line (a crash of
//! the host mid-append) is ignored. It never stores secrets or env.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// One line of the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The record, new or changed.
    Put(Record),
    /// The record of this id is gone.
    Remove(String),
}

/// The snapshot file and its change log.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    log_path: PathBuf,
    /// The log, opened for appending on first use, and its number of lines.
    log: Mutex<(Option<File>, usize)>,
}

impl Store {
    /// A store whose snapshot is `path` (its log: the same name ending `.log`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            log_path: path.with_extension("log"),
            path,
            log: Mutex::new((None, 0)),
        }
    }

    /// Where the snapshot lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads every record: the snapshot (none when it does not exist yet) with the
    /// change log replayed over it.
    pub fn load(&self) -> Result<BTreeMap<String, Record>, StoreError> {
        let mut records: BTreeMap<String, Record> = match read_optional(&self.path)? {
            None => BTreeMap::new(),
            Some(data) => serde_json::from_slice::<Vec<Record>>(&data)
                .map_err(|source| StoreError::Parse {
                    path: self.path.clone(),
                    source,
                })?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect(),
        };
        let log = read_optional(&self.log_path)?.unwrap_or_default();
        let lines: Vec<&[u8]> = log
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace() || *b == 0))
            .collect();
        let mut replayed = 0;
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<Change>(line) {
                Ok(Change::Put(r)) => {
                    records.insert(r.id.clone(), r);
                }
                Ok(Change::Remove(id)) => {
                    records.remove(&id);
                }
                Err(err) if i + 1 == lines.len() => {
                    tracing::warn!(log = %self.log_path.display(), %err, "ignoring a torn last line of the change log");
                }
                Err(source) => {
                    return Err(StoreError::Parse {
                        path: self.log_path.clone(),
                        source,
                    })
                }
            }
            replayed += 1;
        }
        self.log.lock().expect("store log poisoned").1 = replayed;
        Ok(records)
    }

    /// Appends one change to the log.
    pub fn append(&self, change: &Change) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.log_path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(change).expect("changes serialize");
        line.push(b'\n');
        let mut log = self.log.lock().expect("store log poisoned");
        if log.0.is_none() {
            log.0 = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log_path)
                    .map_err(err)?,
            );
        }
        let file = log.0.as_mut().expect("log just opened");
        // One write: the line is in the log whole or not at all.
        file.write_all(&line).map_err(err)?;
        log.1 += 1;
        Ok(())
    }

    /// Lines in the change log since the last snapshot.
    pub fn log_lines(&self) -> usize {
        self.log.lock().expect("store log poisoned").1
    }

    /// Writes `records` as the new snapshot and empties the change log. The caller
    /// must hold off appends meanwhile (the records' lock), or a change appended
    /// between the two steps is lost.
    pub fn save(&self, records: &BTreeMap<String, Record>) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let list: Vec<&Record> = records.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("records serialize");
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(err)?;
        // No fsync: sandboxes do not survive a reboot, so the file only has to
        // survive a daemon restart, and an fsync per change stalled operations for
        // seconds under build I/O.
        f.write_all(&json).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        // A crash before this truncation replays the log over a snapshot that
        // already holds it: puts and removes are idempotent.
        let mut log = self.log.lock().expect("store log poisoned");
        let log_err = |source| StoreError::Write {
            path: self.log_path.clone(),
            source,
        };
        match &log.0 {
            Some(file) => file.set_len(0).map_err(log_err)?,
            None => match std::fs::remove_file(&self.log_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(log_err(source)),
            },
        }
        log.1 = 0;
        Ok(())
    }
}

/// The contents of `path`, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
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

    fn record(id: &str, status: Status) -> Record {
        Record {
            id: id.into(),
            site: "s".into(),
            status,
            pid: 7,
            pid_start_time: Some(1),
            exit_code: 0,
            oom_killed: false,
            cgroup_path: format!("/berth/s/{id}").into(),
            log_path: "/tmp/s.log".into(),
        }
    }

    #[test]
    fn changes_replay_over_the_snapshot_and_a_save_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandboxes.json");
        let store = Store::new(&path);
        let mut records = BTreeMap::new();
        records.insert("a".to_string(), record("a", Status::Running));
        records.insert("b".to_string(), record("b", Status::Running));
        store.save(&records).unwrap();
        store
            .append(&Change::Put(record("c", Status::Created)))
            .unwrap();
        store
            .append(&Change::Put(record("a", Status::Stopped)))
            .unwrap();
        store.append(&Change::Remove("b".into())).unwrap();
        assert_eq!(store.log_lines(), 3);

        let again = Store::new(&path);
        let loaded = again.load().unwrap();
        assert_eq!(again.log_lines(), 3);
        let ids: Vec<&str> = loaded.keys().map(|k| k.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(loaded["a"].status, Status::Stopped);

        again.save(&loaded).unwrap();
        assert_eq!(again.log_lines(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("sandboxes.log"))
                .map(|m| m.len())
                .unwrap_or(0),
            0
        );
        assert_eq!(Store::new(&path).load().unwrap(), loaded);
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandboxes.json");
        let store = Store::new(&path);
        store
            .append(&Change::Put(record("a", Status::Running)))
            .unwrap();
        let log = dir.path().join("sandboxes.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"put\":{\"id\":\"b\",\"si").unwrap();
        let loaded = Store::new(&path).load().unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), ["a"]);

        f.write_all(b"\n").unwrap();
        drop(f);
        Store::new(&path)
            .append(&Change::Remove("a".into()))
            .unwrap();
        assert!(matches!(
            Store::new(&path).load(),
            Err(StoreError::Parse { .. })
        ));
    }
}
