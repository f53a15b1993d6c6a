//! Shared state of the agent: configuration, clients, the table of local instances the
//! ingress and the heartbeat read, and the queue of state reports for the controller.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use berth_api::control::{InstanceReport, InstanceState};
use tokio::sync::Notify;

use crate::idmap::IdRanges;
use crate::image::Images;
use crate::ingress::pool::Pool;
use crate::metrics::{Metrics, StateLabels};
use crate::netns::HostNetns;
use crate::network::Network;
use crate::sandbox::SandboxClient;
use crate::volumes::Volumes;

/// Everything the agent is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Controller gRPC URL, e.g. `http://127.0.0.1:7701`.
    pub controller: String,
    pub sandboxd_socket: PathBuf,
    /// File server gRPC URL handed to `berth-fsd mount --server`.
    pub fsd: String,
    pub fsd_bin: PathBuf,
    pub ingress_listen: SocketAddr,
    /// Address front ends use to reach the ingress (defaults to the listen address).
    pub ingress_advertise: String,
    pub metrics_listen: SocketAddr,
    /// Absolute path of the agent's state directory.
    pub state_dir: PathBuf,
    pub name: String,
    pub capacity: u32,
}

impl Config {
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.state_dir.join("instances")
    }
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }
    /// The table of per-site host id ranges ([`crate::idmap`]).
    pub fn idmap_path(&self) -> PathBuf {
        self.state_dir.join("idmap.json")
    }
}

/// Name of an instance's network namespace under /run/netns.
pub fn netns_name(instance_id: &str) -> String {
    format!("berth-{instance_id}")
}

/// What the ingress and the heartbeat see of one instance.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub site: String,
    pub generation: u64,
    pub state: InstanceState,
    pub message: String,
    pub port: u16,
    pub netns: PathBuf,
    /// Changes on every (re)start, so pooled connections of an old run are never reused.
    pub epoch: u64,
}

/// The agent as a whole, shared by its tasks.
pub struct Agent {
    pub cfg: Config,
    pub host_netns: Arc<HostNetns>,
    pub sandboxes: SandboxClient,
    pub volumes: Volumes,
    pub images: Images,
    /// Host id range of each site's user namespace.
    pub id_ranges: IdRanges,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    /// Sandbox egress (veth, NAT, firewall); `None` leaves namespaces with `lo` only.
    pub network: Option<Arc<Network>>,
    instances: RwLock<HashMap<String, InstanceView>>,
    reports: Mutex<BTreeMap<String, InstanceReport>>,
    pub reports_ready: Notify,
    epochs: AtomicU64,
    /// Image pull progress (done, total bytes) of starting instances.
    pulls: Mutex<HashMap<String, (u64, u64)>>,
}

impl Agent {
    pub fn new(
        cfg: Config,
        host_netns: HostNetns,
        sandboxes: SandboxClient,
        volumes: Volumes,
        images: Images,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            id_ranges: IdRanges::new(cfg.idmap_path()),
            cfg,
            host_netns: Arc::new(host_netns),
            sandboxes,
            volumes,
            images,
            metrics,
            pool: Pool::default(),
            network: None,
            instances: RwLock::new(HashMap::new()),
            reports: Mutex::new(BTreeMap::new()),
            reports_ready: Notify::new(),
            epochs: AtomicU64::new(1),
            pulls: Mutex::new(HashMap::new()),
        }
    }

    /// Gives instances egress through `network`.
    pub fn with_network(mut self, network: Arc<Network>) -> Self {
        self.network = Some(network);
        self
    }

    /// A fresh epoch for a new run of an instance.
    pub fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed)
    }

    /// Looks up an instance for the ingress.
    pub fn instance(&self, id: &str) -> Option<InstanceView> {
        self.instances
            .read()
            .expect("instance table lock poisoned")
            .get(id)
            .cloned()
    }

    /// Records how far the image pull of a starting instance is; the next report of
    /// its state carries it. `total` 0 means no pull is running.
    pub fn set_pull_progress(&self, id: &str, done: u64, total: u64) {
        let mut p = self.pulls.lock().expect("pull progress lock poisoned");
        if total == 0 {
            p.remove(id);
        } else {
            p.insert(id.to_string(), (done, total));
        }
    }

    fn pull_progress(&self, id: &str, state: InstanceState) -> (u64, u64) {
        let mut p = self.pulls.lock().expect("pull progress lock poisoned");
        if state != InstanceState::Starting {
            p.remove(id);
            return (0, 0);
        }
        p.get(id).copied().unwrap_or_default()
    }

    /// Records a new state for an instance and queues a report to the controller.
    pub fn set_state(&self, id: &str, view: InstanceView) {
        let (pull_done_bytes, pull_total_bytes) = self.pull_progress(id, view.state);
        let report = InstanceReport {
            worker_id: String::new(),
            instance_id: id.to_string(),
            state: view.state as i32,
            message: view.message.clone(),
            generation: view.generation,
            pull_done_bytes,
            pull_total_bytes,
        };
        {
            let mut table = self
                .instances
                .write()
                .expect("instance table lock poisoned");
            table.insert(id.to_string(), view);
            self.refresh_gauges(&table);
        }
        self.queue_report(report);
    }

    /// Forgets a stopped instance and queues its STOPPED report.
    pub fn remove(&self, id: &str, generation: u64) {
        {
            let mut table = self
                .instances
                .write()
                .expect("instance table lock poisoned");
            table.remove(id);
            self.refresh_gauges(&table);
        }
        self.set_pull_progress(id, 0, 0);
        self.pool.forget(id);
        self.queue_report(InstanceReport {
            worker_id: String::new(),
            instance_id: id.to_string(),
            state: InstanceState::Stopped as i32,
            message: "stopped".to_string(),
            generation,
            ..Default::default()
        });
    }

    fn refresh_gauges(&self, table: &HashMap<String, InstanceView>) {
        for state in [
            InstanceState::Starting,
            InstanceState::Ready,
            InstanceState::Failed,
        ] {
            let n = table.values().filter(|v| v.state == state).count();
            self.metrics
                .instances
                .get_or_create(&StateLabels {
                    state: state_label(state),
                })
                .set(n as i64);
        }
    }

    fn queue_report(&self, report: InstanceReport) {
        self.reports
            .lock()
            .expect("report queue lock poisoned")
            .insert(report.instance_id.clone(), report);
        self.reports_ready.notify_one();
    }

    /// Takes the queued reports (latest per instance).
    pub fn take_reports(&self) -> Vec<InstanceReport> {
        std::mem::take(&mut *self.reports.lock().expect("report queue lock poisoned"))
            .into_values()
            .collect()
    }

    /// Puts back reports that could not be delivered, unless a newer one was queued.
    pub fn requeue_reports(&self, reports: Vec<InstanceReport>) {
        let mut q = self.reports.lock().expect("report queue lock poisoned");
        for r in reports {
            q.entry(r.instance_id.clone()).or_insert(r);
        }
    }

    /// Current state of every local instance (for heartbeats).
    pub fn snapshot(&self, worker_id: &str) -> Vec<InstanceReport> {
        let mut out: Vec<InstanceReport> = self
            .instances
            .read()
            .expect("instance table lock poisoned")
            .iter()
            .map(|(id, v)| {
                let (pull_done_bytes, pull_total_bytes) = self.pull_progress(id, v.state);
                InstanceReport {
                    worker_id: worker_id.to_string(),
                    instance_id: id.clone(),
                    state: v.state as i32,
                    message: v.message.clone(),
                    generation: v.generation,
                    pull_done_bytes,
                    pull_total_bytes,
                }
            })
            .collect();
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        out
    }
}

/// Lower-case label of a state.
pub fn state_label(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Unspecified => "unspecified",
        InstanceState::Pending => "pending",
        InstanceState::Starting => "starting",
        InstanceState::Ready => "ready",
        InstanceState::Failed => "failed",
        InstanceState::Stopped => "stopped",
    }
}
