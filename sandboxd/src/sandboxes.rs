//! The sandbox lifecycle: create, start, stop, delete, list.
//!
//! Operations on one id are serialized; different ids run concurrently. libcontainer
//! itself only ever runs in helper processes ([`crate::helper`]: create, and delete
//! when the cgroups cannot simply be removed); start is the one message on the init's
//! notify socket, sent from here. This module writes bundles, signals processes,
//! watches cgroups and keeps the records
//! ([`crate::store`]). It never leaves a half-created sandbox behind: a failed create
//! is deleted again, and the site's parent cgroup goes with its last sandbox.
//!
//! A monitor task ([`Sandboxes::monitor`]) reads every live sandbox's cgroup once a
//! second: OOM kills become log events tagged with site and instance and the
//! `berth_sandboxd_oom_kills_total{site}` counter; usage becomes per-instance gauges.
//! A restarted daemon re-adopts the sandboxes on disk whose init is still the same
//! process (pid and start time), keeps reporting them and can stop and delete them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::sandbox::{CreateRequest, SandboxInfo};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tracing::Instrument;

use crate::cgroup::{SandboxCgroup, Usage};
use crate::helper::{self, HelperRequest};
use crate::metrics::{InstanceLabels, Metrics, SiteLabel};
use crate::reaper::Reaper;
use crate::store::{Change, Record, Status, Store, StoreError};
use crate::validate::{self, ValidationError};
use crate::{spec, SandboxdError};

/// Grace period of Stop when the request gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long to keep SIGKILLing a cgroup before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of the OOM and usage monitor.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of sandbox operations.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("sandbox {0} already exists: delete it first or pick another id")]
    AlreadyExists(String),
    #[error("sandbox {id} is {status:?}; {what}")]
    WrongState {
        id: String,
        status: Status,
        what: &'static str,
    },
    #[error("writing the bundle of sandbox {id} in {dir}: {message}")]
    Bundle {
        id: String,
        dir: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("sandbox {id}: {source}")]
    Helper {
        id: String,
        #[source]
        source: helper::HelperError,
    },
    #[error("stopping sandbox {id}: {message}")]
    Stop { id: String, message: String },
    #[error("telling the init of sandbox {id} to start (its notify socket): {source}: the sandbox was probably killed; delete and create it again")]
    Notify {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sandbox {id}: {source}")]
    Cgroup {
        id: String,
        #[source]
        source: crate::cgroup::CgroupError,
    },
    #[error("removing {path} of sandbox {id}: {source}")]
    Remove {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Directories under the daemon's state dir.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<state>/bundles/<id>/config.json`
    pub bundles: PathBuf,
    /// libcontainer's state root, `<state>/containers/<id>/`.
    pub containers: PathBuf,
    /// `<state>/sandboxes.json` (and its change log `<state>/sandboxes.log`).
    pub records: PathBuf,
}

impl Layout {
    /// The layout under `state_dir`, creating the directories.
    pub fn create(state_dir: &Path) -> Result<Self, SandboxdError> {
        let layout = Self {
            bundles: state_dir.join("bundles"),
            containers: state_dir.join("containers"),
            records: state_dir.join("sandboxes.json"),
        };
        for dir in [&layout.bundles, &layout.containers] {
            std::fs::create_dir_all(dir).map_err(|source| SandboxdError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(layout)
    }
}

/// Runs sandboxes.
pub struct Sandboxes {
    layout: Layout,
    exe: PathBuf,
    reaper: Arc<Reaper>,
    metrics: Arc<Metrics>,
    store: Store,
    records: Mutex<BTreeMap<String, Record>>,
    /// One lock per id so operations on a sandbox do not interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// OOM kills already reported, per id.
    oom_seen: Mutex<HashMap<String, u64>>,
    /// Bumped whenever a sandbox stops or is deleted: what [`Sandboxes::wait`] waits on.
    changes: tokio::sync::watch::Sender<u64>,
    /// Cap of each sandbox's log file ([`crate::logcap`]).
    log_max_bytes: u64,
    /// Sites whose last sandbox went, and when: the monitor removes their parent
    /// cgroup after [`SITE_CGROUP_LINGER`], so a site whose instances are replaced
    /// one by one does not remove and make it again in every hierarchy each time.
    emptied_sites: Mutex<HashMap<String, Instant>>,
}

/// Lines in the store's change log past which the monitor writes a new snapshot.
const COMPACT_AFTER: usize = 256;

/// How long an empty site's parent cgroup stays before the monitor removes it.
pub const SITE_CGROUP_LINGER: Duration = Duration::from_secs(3);

/// State letter and start time (clock ticks since boot) of a process, from
/// `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// The parent pid of a process, from `/proc/<pid>/status`.
fn parent_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Start time (clock ticks since boot) of a process, from `/proc/<pid>/stat`.
pub fn process_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// Whether `pid` is a live (not zombie) process started at `start_time`. An init
/// adopted from an earlier daemon is reaped by someone else, maybe late: a zombie
/// counts as gone.
fn alive(pid: i32, start_time: Option<u64>) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((state, t)) => !matches!(state, 'Z' | 'X') && start_time.is_none_or(|s| s == t),
        None => false,
    }
}

impl Sandboxes {
    /// Loads the records under `layout`. Sandboxes whose init is still alive but was
    /// started by an earlier daemon are watched by polling; dead ones become stopped
    /// with an unknown exit code (-1). Must run inside a tokio runtime.
    pub fn open(
        layout: Layout,
        exe: PathBuf,
        reaper: Arc<Reaper>,
        metrics: Arc<Metrics>,
        log_max_bytes: u64,
    ) -> Result<Arc<Self>, SandboxError> {
        let store = Store::new(&layout.records);
        let mut records = store.load()?;
        let mut adopted = Vec::new();
        for r in records.values_mut() {
            if r.status == Status::Stopped {
                continue;
            }
            if alive(r.pid, r.pid_start_time) {
                adopted.push((r.id.clone(), r.pid));
            } else {
                r.status = Status::Stopped;
                r.exit_code = -1;
            }
        }
        store.save(&records)?;
        let this = Arc::new(Self {
            layout,
            exe,
            reaper,
            metrics,
            store,
            records: Mutex::new(records),
            locks: Mutex::new(HashMap::new()),
            oom_seen: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            log_max_bytes,
            emptied_sites: Mutex::new(HashMap::new()),
        });
        this.update_gauge();
        this.remove_orphan_sites();
        helper::prepare_standby(&this.exe);
        // Once per daemon here rather than in the first create.
        match crate::seccomp::default_profile() {
            Ok(profile) => {
                if let Err(err) = crate::seccomp::bpf::compiled(&profile) {
                    tracing::warn!(%err, "seccomp profile left to libcontainer");
                }
            }
            Err(err) => tracing::warn!(%err, "building the default seccomp profile"),
        }
        for (id, pid) in adopted {
            tracing::info!(
                id,
                pid,
                "re-adopted a sandbox started by an earlier sandboxd"
            );
            this.clone().watch(id, pid, false);
        }
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MONITOR_INTERVAL);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                this.monitor();
            }
        });
        Ok(this)
    }

    /// One pass of the monitor: reports new OOM kills, refreshes usage gauges and cuts
    /// back log files over the cap, of every sandbox that is not stopped; removes
    /// lingering site cgroups; snapshots the records when their change log is long.
    pub fn monitor(&self) {
        self.remove_emptied_sites();
        self.compact_store();
        let live: Vec<Record> = self
            .records
            .lock()
            .expect("records poisoned")
            .values()
            .filter(|r| r.status != Status::Stopped)
            .cloned()
            .collect();
        for r in live {
            self.cap_log(&r);
            let Ok(cgroup) = SandboxCgroup::locate(&r.cgroup_path) else {
                continue;
            };
            let usage = cgroup.usage();
            self.report_ooms(&r.id, &r.site, usage.oom_kills);
            let labels = InstanceLabels {
                site: r.site.clone(),
                instance: r.id.clone(),
            };
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.metrics
                .cpu_usage_ns
                .get_or_create(&labels)
                .set(gauge(usage.cpu_usage_ns));
            self.metrics
                .memory_bytes
                .get_or_create(&labels)
                .set(gauge(usage.memory_bytes));
            self.metrics
                .pids
                .get_or_create(&labels)
                .set(gauge(usage.pids));
        }
    }

    /// At start: removes the parent cgroups of sites with no sandbox on record (the
    /// previous daemon stopped before their linger was over).
    fn remove_orphan_sites(&self) {
        let Ok(root) = SandboxCgroup::locate(Path::new("/berth")) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(root.memory_dir()) else {
            return;
        };
        let records = self.records.lock().expect("records poisoned");
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let site = e.file_name().to_string_lossy().into_owned();
            if !records.values().any(|r| r.site == site) {
                crate::cgroup::remove_site_dirs(&spec::site_cgroup_path(&site));
            }
        }
    }

    /// Removes the parent cgroup of every site that has had no sandbox for
    /// [`SITE_CGROUP_LINGER`].
    fn remove_emptied_sites(&self) {
        let due: Vec<String> = {
            let mut emptied = self.emptied_sites.lock().expect("emptied_sites poisoned");
            let due: Vec<String> = emptied
                .iter()
                .filter(|(_, at)| at.elapsed() >= SITE_CGROUP_LINGER)
                .map(|(site, _)| site.clone())
                .collect();
            for site in &due {
                emptied.remove(site);
            }
            due
        };
        if due.is_empty() {
            return;
        }
        let records = self.records.lock().expect("records poisoned");
        for site in due {
            if !records.values().any(|r| r.site == site) {
                crate::cgroup::remove_site_dirs(&spec::site_cgroup_path(&site));
            }
        }
    }

    /// Cuts the sandbox's log file back when it is over the cap.
    fn cap_log(&self, r: &Record) {
        match crate::logcap::enforce(&r.log_path, self.log_max_bytes) {
            Ok(None) => {}
            Ok(Some(rot)) => {
                let label = SiteLabel {
                    site: r.site.clone(),
                };
                self.metrics.log_rotations.get_or_create(&label).inc();
                self.metrics
                    .log_dropped_bytes
                    .get_or_create(&label)
                    .inc_by(rot.size.saturating_sub(rot.kept));
                tracing::info!(
                    site = %r.site,
                    instance = %r.id,
                    size = rot.size,
                    kept = rot.kept,
                    cap = self.log_max_bytes,
                    "log over its cap: kept the newest bytes in <log>.1 and started the log again"
                );
            }
            Err(err) => {
                tracing::warn!(instance = %r.id, log = %r.log_path.display(), %err, "checking the log cap")
            }
        }
    }

    /// Turns OOM kills not reported yet into an event and the per-site counter.
    fn report_ooms(&self, id: &str, site: &str, total: u64) {
        let mut seen = self.oom_seen.lock().expect("oom_seen poisoned");
        let before = seen.get(id).copied().unwrap_or(0);
        if total > before {
            let new = total - before;
            seen.insert(id.to_string(), total);
            drop(seen);
            tracing::warn!(
                site,
                instance = id,
                oom_kills = new,
                total,
                "oom kill in sandbox: the memory limit killed a process"
            );
            self.metrics
                .oom_kills
                .get_or_create(&SiteLabel {
                    site: site.to_string(),
                })
                .inc_by(new);
        }
    }

    /// Resource usage of one sandbox, read from its cgroup now.
    pub fn stats(&self, id: &str) -> Result<(Record, Usage), SandboxError> {
        validate::id(id)?;
        let record = self
            .get_record(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        let cgroup =
            SandboxCgroup::locate(&record.cgroup_path).map_err(|source| SandboxError::Cgroup {
                id: id.to_string(),
                source,
            })?;
        Ok((record, cgroup.usage()))
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks poisoned")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn get_record(&self, id: &str) -> Option<Record> {
        self.records
            .lock()
            .expect("records poisoned")
            .get(id)
            .cloned()
    }

    /// Applies `f`, which changes at most the record of `id`, and appends that
    /// change to the store's log before returning.
    fn update<F: FnOnce(&mut BTreeMap<String, Record>)>(
        &self,
        id: &str,
        f: F,
    ) -> Result<(), StoreError> {
        let mut records = self.records.lock().expect("records poisoned");
        f(&mut records);
        let running = records
            .values()
            .filter(|r| r.status == Status::Running)
            .count();
        self.metrics.running.set(running as i64);
        let change = match records.get(id) {
            Some(r) => Change::Put(r.clone()),
            None => Change::Remove(id.to_string()),
        };
        let saved = self.store.append(&change);
        drop(records);
        self.changes.send_modify(|n| *n += 1);
        saved
    }

    /// Writes a new snapshot of the records once the store's change log is long
    /// (the log is replayed at start).
    fn compact_store(&self) {
        if self.store.log_lines() < COMPACT_AFTER {
            return;
        }
        let records = self.records.lock().expect("records poisoned");
        if let Err(err) = self.store.save(&records) {
            tracing::warn!(%err, "writing a snapshot of the sandbox records");
        }
    }

    fn update_gauge(&self) {
        let records = self.records.lock().expect("records poisoned");
        let running = records
            .values()
            .filter(|r| r.status == Status::Running)
            .count();
        self.metrics.running.set(running as i64);
    }

    /// Marks the sandbox stopped if its init is still `pid` and it is not already.
    fn mark_stopped(&self, id: &str, pid: i32, exit_code: i32) {
        let record = self.get_record(id);
        let oom_kills = record.as_ref().map_or(0, |r| {
            SandboxCgroup::locate(&r.cgroup_path).map_or(0, |c| c.oom_kills())
        });
        if let Some(r) = &record {
            self.report_ooms(id, &r.site, oom_kills);
        }
        let oom = oom_kills > 0;
        let res = self.update(id, |records| {
            if let Some(r) = records.get_mut(id) {
                if r.pid == pid && r.status != Status::Stopped {
                    r.status = Status::Stopped;
                    r.exit_code = exit_code;
                    r.oom_killed = oom;
                }
            }
        });
        if let Err(err) = res {
            tracing::error!(id, %err, "saving the stopped state");
        }
    }

    /// Waits in the background for the init to exit and records it.
    fn watch(self: Arc<Self>, id: String, pid: i32, child: bool) {
        let span = tracing::info_span!(parent: None, "watch", sandbox = %id, pid);
        tokio::spawn(
            async move {
                let code = self.wait_exit(pid, child, None).await.unwrap_or(-1);
                tracing::info!(exit_code = code, "sandbox process exited");
                self.mark_stopped(&id, pid, code);
            }
            .instrument(span),
        );
    }

    /// Waits until `pid` exits (at most `timeout`). Children of this daemon are
    /// awaited through the reaper (with their exit code); inits adopted from an earlier
    /// daemon are polled and report -1.
    async fn wait_exit(&self, pid: i32, child: bool, timeout: Option<Duration>) -> Option<i32> {
        if child {
            return self.reaper.wait(pid, timeout).await;
        }
        let start_time = process_start_time(pid);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !alive(pid, start_time) {
                return Some(-1);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the init `pid` of a record was started by this daemon.
    fn is_child(&self, pid: i32) -> bool {
        // Our own children are direct children: their PPid is us, or a helper of ours
        // that has not exited yet (its orphans come to us, the nearest subreaper).
        let me = std::process::id() as i32;
        // The helper may be exiting right now: once it is gone (reaped) its pid no
        // longer tells, but the init has been re-parented to us by then; look again.
        for _ in 0..3 {
            match parent_of(pid) {
                Some(ppid) if ppid == me => return true,
                Some(ppid) => match parent_of(ppid) {
                    Some(grandparent) => return grandparent == me,
                    None => continue,
                },
                // Already reaped (or gone): a recorded exit code tells.
                None => return self.reaper.exit_code(pid).is_some(),
            }
        }
        false
    }

    /// Creates a sandbox: writes its bundle and has libcontainer create the
    /// container (the init waits for Start).
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<SandboxInfo, SandboxError> {
        validate::create_request(&req)?;
        let lock = self.lock_for(&req.id);
        let _guard = lock.lock().await;
        if self.get_record(&req.id).is_some() {
            return Err(SandboxError::AlreadyExists(req.id));
        }
        let started = Instant::now();
        let result = self.create_locked(&req).await;
        match &result {
            Ok(_) => self
                .metrics
                .create_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(err) => {
                self.metrics.failures.inc();
                tracing::warn!(%err, "create failed; cleaning up");
                let cgroup = spec::cgroup_path(&req.site, &req.id);
                if let Err(cleanup) = self.remove_container(&req.id, Some(&cgroup)).await {
                    tracing::error!(err = %cleanup, "cleaning up after a failed create");
                }
                let site_empty = !self
                    .records
                    .lock()
                    .expect("records poisoned")
                    .values()
                    .any(|r| r.site == req.site);
                if site_empty {
                    crate::cgroup::remove_site_dirs(&spec::site_cgroup_path(&req.site));
                }
            }
        }
        result
    }

    async fn create_locked(
        self: &Arc<Self>,
        req: &CreateRequest,
    ) -> Result<SandboxInfo, SandboxError> {
        let id = req.id.clone();
        // Leftovers of a crashed earlier attempt with the same id.
        if self.layout.containers.join(&id).exists() {
            tracing::warn!("removing stale libcontainer state");
            self.remove_container(&id, Some(&spec::cgroup_path(&req.site, &id)))
                .await?;
        }
        let mut spec = spec::build(req)?;
        // The seccomp profile, compiled once per daemon, goes to the init apart from
        // the bundle; libcontainer would compile it again in every init.
        let seccomp = crate::seccomp::bpf::compiled_for(&mut spec);
        let bundle = self.layout.bundles.join(&id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                spec.save(bundle.join("config.json"))
                    .map_err(|e| e.to_string())
            })
            .map_err(|message| SandboxError::Bundle {
                id: id.clone(),
                dir: bundle.clone(),
                message,
            })?;

        let resp = helper::run(
            &self.exe,
            &HelperRequest::Create {
                id: id.clone(),
                bundle,
                state_root: self.layout.containers.clone(),
                log_path: PathBuf::from(&req.log_path),
                netns: Some(PathBuf::from(&req.netns_path)),
                seccomp: seccomp.map(|p| (*p).clone()),
            },
            &self.reaper,
        )
        .await
        .map_err(|source| SandboxError::Helper {
            id: id.clone(),
            source,
        })?;
        let pid = resp.pid.unwrap_or(0);
        let record = Record {
            id: id.clone(),
            site: req.site.clone(),
            status: Status::Created,
            pid,
            pid_start_time: process_start_time(pid),
            exit_code: 0,
            oom_killed: false,
            cgroup_path: spec::cgroup_path(&req.site, &id),
            log_path: PathBuf::from(&req.log_path),
        };
        self.update(&id, |records| {
            records.insert(id.clone(), record.clone());
        })?;
        let child = self.is_child(pid);
        if !child {
            tracing::warn!(
                pid,
                "sandbox init is not a child of sandboxd; exit codes will be unknown"
            );
        }
        self.clone().watch(id, pid, child);
        tracing::info!(pid, "sandbox created");
        Ok(record.info())
    }

    /// Starts a created sandbox's process.
    pub async fn start(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        validate::id(id)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let record = self
            .get_record(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        match record.status {
            Status::Running => return Ok(record.info()),
            Status::Stopped => {
                return Err(SandboxError::WrongState {
                    id: id.to_string(),
                    status: record.status,
                    what: "delete and create it again",
                })
            }
            Status::Created => {}
        }
        // libcontainer's `start` is one message on the init's notify socket; sent from
        // here it needs no helper process (the helper costs an exec and a state load).
        if let Err(source) = notify_start(&self.layout.containers.join(id)).await {
            self.metrics.failures.inc();
            return Err(SandboxError::Notify {
                id: id.to_string(),
                source,
            });
        }
        self.metrics.starts.inc();
        self.update(id, |records| {
            if let Some(r) = records.get_mut(id) {
                if r.status == Status::Created {
                    r.status = Status::Running;
                }
            }
        })?;
        tracing::info!("sandbox started");
        Ok(self
            .get_record(id)
            .map(|r| r.info())
            .unwrap_or_else(|| record.info()))
    }

    /// Stops a sandbox: SIGTERM to its init, `grace`, then SIGKILL to everything in
    /// its cgroup until the cgroup is empty.
    pub async fn stop(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<SandboxInfo, SandboxError> {
        validate::id(id)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.stop_locked(id, grace.unwrap_or(DEFAULT_GRACE)).await
    }

    async fn stop_locked(&self, id: &str, grace: Duration) -> Result<SandboxInfo, SandboxError> {
        let record = self
            .get_record(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        let cgroup =
            SandboxCgroup::locate(&record.cgroup_path).map_err(|source| SandboxError::Cgroup {
                id: id.to_string(),
                source,
            })?;
        let pid = record.pid;
        let child = self.is_child(pid);
        let mut exit = None;
        if record.status == Status::Stopped {
            exit = Some(record.exit_code);
        } else if record.status == Status::Running && pid > 0 {
            // pid 1 of a pid namespace only gets SIGTERM if it handles it.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            exit = self.wait_exit(pid, child, Some(grace)).await;
            if exit.is_none() {
                tracing::info!(?grace, "grace period over; killing the sandbox");
            }
        }
        // SIGKILL whatever is left (a created init, ignored SIGTERM, escaped children).
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let procs = cgroup.procs().map_err(|e| SandboxError::Stop {
                id: id.to_string(),
                message: format!("reading cgroup.procs: {e}"),
            })?;
            let init_gone = exit.is_some() || pid <= 0;
            if procs.is_empty() && init_gone {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Stop {
                    id: id.to_string(),
                    message: format!(
                        "processes {procs:?} survived SIGKILL for {KILL_TIMEOUT:?}; check for D-state processes"
                    ),
                });
            }
            if let Err(err) = cgroup.kill_all() {
                tracing::warn!(%err, "killing the cgroup at once failed; signalling each process");
                let _ = cgroup.signal_all(Signal::SIGKILL);
            }
            if !init_gone {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                exit = self
                    .wait_exit(pid, child, Some(Duration::from_millis(100)))
                    .await;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(code) = exit {
            self.mark_stopped(id, pid, code);
        }
        let info = self
            .get_record(id)
            .map(|r| r.info())
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        tracing::info!(
            exit_code = info.exit_code,
            oom_killed = info.oom_killed,
            "sandbox stopped"
        );
        Ok(info)
    }

    /// Deletes a sandbox (stopping it first): cgroups, libcontainer state, bundle and
    /// record. Deleting an unknown id succeeds.
    pub async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        validate::id(id)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let record = self.get_record(id);
        if let Some(r) = &record {
            if r.status != Status::Stopped {
                self.stop_locked(id, DEFAULT_GRACE).await?;
            }
        }
        self.remove_container(id, record.as_ref().map(|r| r.cgroup_path.as_path()))
            .await?;
        if let Some(r) = record {
            let mut site_empty = false;
            self.update(id, |records| {
                records.remove(id);
                site_empty = !records.values().any(|o| o.site == r.site);
            })?;
            self.reaper.forget(r.pid);
            self.forget_metrics(&r.site, id);
            if site_empty {
                self.emptied_sites
                    .lock()
                    .expect("emptied_sites poisoned")
                    .insert(r.site.clone(), Instant::now());
            }
        }
        self.locks.lock().expect("locks poisoned").remove(id);
        tracing::info!("sandbox deleted");
        Ok(())
    }

    fn forget_metrics(&self, site: &str, id: &str) {
        self.oom_seen.lock().expect("oom_seen poisoned").remove(id);
        let labels = InstanceLabels {
            site: site.to_string(),
            instance: id.to_string(),
        };
        self.metrics.cpu_usage_ns.remove(&labels);
        self.metrics.memory_bytes.remove(&labels);
        self.metrics.pids.remove(&labels);
    }

    /// Removes the sandbox's cgroups, libcontainer state and bundle. With the cgroup
    /// path known (every recorded sandbox) and the processes gone, that is a few
    /// `rmdir`s done here; otherwise (stale state of a crashed create, nested cgroups
    /// made inside) libcontainer's delete runs in a helper.
    async fn remove_container(
        &self,
        id: &str,
        cgroup_path: Option<&Path>,
    ) -> Result<(), SandboxError> {
        let cgroup = cgroup_path.and_then(|p| SandboxCgroup::locate(p).ok());
        let removed_here = cgroup.as_ref().is_some_and(|c| {
            c.remove_leftovers();
            c.existing_dirs().is_empty()
        });
        if !removed_here {
            helper::run(
                &self.exe,
                &HelperRequest::Delete {
                    id: id.to_string(),
                    state_root: self.layout.containers.clone(),
                },
                &self.reaper,
            )
            .await
            .map_err(|source| SandboxError::Helper {
                id: id.to_string(),
                source,
            })?;
            if let Some(c) = &cgroup {
                c.remove_leftovers();
            }
        }
        for dir in [
            self.layout.bundles.join(id),
            self.layout.containers.join(id),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SandboxError::Remove {
                        id: id.to_string(),
                        path: dir,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Waits until the sandbox's process has exited; its record then.
    pub async fn wait(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        validate::id(id)?;
        let mut changes = self.changes.subscribe();
        loop {
            let record = self
                .get_record(id)
                .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
            if record.status == Status::Stopped {
                return Ok(record.info());
            }
            if changes.changed().await.is_err() {
                return Err(SandboxError::NotFound(id.to_string()));
            }
        }
    }

    /// One sandbox.
    pub fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        validate::id(id)?;
        self.get_record(id)
            .map(|r| r.info())
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// Every sandbox, by id.
    pub fn list(&self) -> Vec<SandboxInfo> {
        self.records
            .lock()
            .expect("records poisoned")
            .values()
            .map(Record::info)
            .collect()
    }
}

/// libcontainer's start message to a created init, on `<container_dir>/notify.sock`.
/// The socket is reached through `/proc/self/fd/<dir>/notify.sock`, which stays
/// under the 108-byte limit of socket paths whatever the state directory's length,
/// without the `chdir` libcontainer uses (this process is multi-threaded).
async fn notify_start(container_dir: &Path) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let dir = std::fs::File::open(container_dir)?;
    let path = format!(
        "/proc/self/fd/{}/notify.sock",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    );
    let mut stream = tokio::net::UnixStream::connect(&path).await?;
    drop(dir);
    // The init reads to end of file.
    stream.write_all(b"start container").await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).expect("own start time");
        assert!(alive(me, Some(t)));
        assert!(!alive(me, Some(t + 1)));
        assert!(!alive(0, None));
    }

    #[test]
    fn zombies_count_as_gone() {
        let pid = std::process::Command::new("/bin/true")
            .spawn()
            .unwrap()
            .id() as i32;
        // Not waited for: it stays a zombie (or is reaped by a test reaper).
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(pid, None));
    }
}
