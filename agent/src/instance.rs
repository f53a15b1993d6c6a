//! Start and stop steps of one instance on this worker.
//!
//! [`start`] runs: pull image -> the site's host id range -> idmapped overlay rootfs -> `/home` volume -> network namespace ->
//! sandboxd Create + Start -> HTTP health probe inside the namespace. Each step records
//! what it made in a [`Running`] before or right after making it, so [`Running::teardown`]
//! can undo exactly what was done when a later step fails, the start is cancelled, or the
//! instance is removed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::control::Assignment;
use berth_api::sandbox::{SandboxId, SandboxInfo, SandboxStatus, StopRequest};
use berth_images::idmap::IdRange;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::image::ImageError;
use crate::metrics::Phase;
use crate::netns;
use crate::spec::{self, PreparedPaths, SpecError};
use crate::state::{netns_name, Agent};
use crate::volumes::{VolumeError, Volumes};

/// How long an app may take to answer its first HTTP request.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between health probes.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Grace period between SIGTERM and SIGKILL when stopping an app.
pub const STOP_GRACE_MS: u32 = 5000;

/// Why a start failed. Messages go to the controller and on to the site owner.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("pulling image {image}: {source}")]
    Pull {
        image: String,
        source: Box<ImageError>,
    },
    #[error("preparing the root filesystem: {0}")]
    Rootfs(Box<ImageError>),
    #[error("preparing the writable layer of the root filesystem: {0}")]
    WritableLayer(#[from] berth_images::rootfs::RootfsError),
    #[error("giving the site its user namespace: {0}")]
    IdRange(#[from] crate::idmap::IdmapError),
    #[error("mounting /home: {0}")]
    Volume(#[from] VolumeError),
    #[error("{0}")]
    LocalCache(#[from] crate::localcache::LocalCacheError),
    #[error("creating the network namespace: {0}")]
    Netns(#[from] netns::NetnsError),
    #[error("giving the sandbox its network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("sandboxd {op} failed: {status} (is berth-sandboxd running on its socket?)")]
    Sandbox {
        op: &'static str,
        status: tonic::Status,
    },
    #[error(
        "app exited with code {code}{oom} before answering on port {port}; last log lines: {log}"
    )]
    ExitedEarly {
        code: i32,
        oom: &'static str,
        port: u32,
        log: String,
    },
    #[error("app did not answer HTTP on 127.0.0.1:{port}{path} within {timeout:?}: make it listen on $PORT; last error: {last}; last log lines: {log}")]
    HealthTimeout {
        port: u32,
        path: String,
        timeout: Duration,
        last: String,
        log: String,
    },
    #[error("start cancelled: the assignment changed or was removed")]
    Cancelled,
}

/// Resources held by one run of an instance.
pub struct Running {
    pub assignment: Assignment,
    pub epoch: u64,
    pub netns: PathBuf,
    instance_dir: PathBuf,
    rootfs: bool,
    volume: Option<String>,
    netns_made: bool,
    egress: bool,
    sandbox: bool,
}

impl Running {
    fn new(agent: &Agent, assignment: Assignment) -> Self {
        let id = assignment.instance_id.clone();
        Self {
            epoch: agent.next_epoch(),
            netns: netns::path_of(&netns_name(&id)),
            instance_dir: agent.cfg.instance_dir(&id),
            assignment,
            rootfs: false,
            volume: None,
            netns_made: false,
            egress: false,
            sandbox: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.assignment.instance_id
    }

    /// Undoes everything this run made, in reverse order. Safe to call more than once;
    /// failures are logged and the remaining steps still run.
    pub async fn teardown(&mut self, agent: &Agent) {
        let id = self.assignment.instance_id.clone();
        agent.pool.forget(&id);
        if self.sandbox {
            stop_and_delete_sandbox(agent, &id).await;
            self.sandbox = false;
        }
        if self.egress {
            if let Some(net) = &agent.network {
                if let Err(e) = net.detach_async(&id).await {
                    warn!(instance = %id, error = %e, "removing the sandbox network");
                }
            }
            self.egress = false;
        }
        if self.netns_made {
            if let Err(e) = netns::remove(&self.netns) {
                warn!(instance = %id, error = %e, "removing network namespace");
            }
            self.netns_made = false;
        }
        if self.rootfs {
            if let Err(e) = agent.images.unmount_rootfs(&self.instance_dir).await {
                warn!(instance = %id, error = %e, "unmounting root filesystem");
            }
            self.rootfs = false;
        }
        if let Some(volume) = self.volume.take() {
            agent.volumes.release(&volume).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.instance_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(instance = %id, dir = %self.instance_dir.display(), error = %e, "removing instance directory");
            }
        }
    }
}

/// Stops (grace period, then kill) and deletes the sandbox `id`; missing is fine.
pub async fn stop_and_delete_sandbox(agent: &Agent, id: &str) {
    let mut client = agent.sandboxes.clone();
    match client
        .stop(StopRequest {
            id: id.to_string(),
            grace_ms: STOP_GRACE_MS,
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => return,
        Err(s) => warn!(instance = id, status = %s, "sandbox stop failed; deleting anyway"),
    }
    if let Err(s) = client.delete(SandboxId { id: id.to_string() }).await {
        if s.code() != tonic::Code::NotFound {
            warn!(instance = id, status = %s, "sandbox delete failed");
        }
    }
}

/// Asks sandboxd about the sandbox; `Ok(None)` when sandboxd does not know it.
pub async fn sandbox_info(agent: &Agent, id: &str) -> Result<Option<SandboxInfo>, tonic::Status> {
    match agent
        .sandboxes
        .clone()
        .get(SandboxId { id: id.to_string() })
        .await
    {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// True once the sandbox has stopped (or vanished); the info when it has one.
pub fn has_exited(info: &Option<SandboxInfo>) -> bool {
    match info {
        None => true,
        Some(i) => i.status == SandboxStatus::Stopped as i32,
    }
}

/// Starts one instance. `still_wanted` is polled between and during long steps; when it
/// turns false the start is undone and [`StartError::Cancelled`] returned. On error
/// nothing of the run is left behind.
pub async fn start<F>(
    agent: &Arc<Agent>,
    assignment: Assignment,
    still_wanted: F,
) -> Result<Running, StartError>
where
    F: Fn() -> bool,
{
    let mut run = Running::new(agent, assignment);
    match start_steps(agent, &mut run, &still_wanted).await {
        Ok(()) => Ok(run),
        Err(e) => {
            run.teardown(agent).await;
            Err(e)
        }
    }
}

async fn start_steps<F>(
    agent: &Arc<Agent>,
    run: &mut Running,
    still_wanted: &F,
) -> Result<(), StartError>
where
    F: Fn() -> bool,
{
    let a = run.assignment.clone();
    let id = a.instance_id.clone();
    let total = Instant::now();

    // a. image
    let t = Instant::now();
    let status = starting_status(agent, &id, a.generation);
    let pull = agent
        .images
        .pull(&a.image, &a.registry_auth, a.insecure_registry, &status);
    let image = tokio::select! {
        r = pull => r.map_err(|source| StartError::Pull { image: a.image.clone(), source: Box::new(source) })?,
        _ = wait_unwanted(still_wanted) => return Err(StartError::Cancelled),
    };
    agent.metrics.phase(Phase::Pull, t.elapsed().as_secs_f64());
    check(still_wanted)?;

    // b. rootfs + c. /home
    let t = Instant::now();
    if let Some(leftover) = stale_instance_dir(agent, &id) {
        warn!(instance = %id, dir = %leftover.display(), "removing leftovers of an earlier run");
        let _ = agent.images.unmount_rootfs(&leftover).await;
        let _ = std::fs::remove_dir_all(&leftover);
    }
    let assigned = (a.id_base != 0).then_some((a.id_base, a.id_count));
    let id_mapping = agent.id_ranges.range_for(&a.site, assigned)?;
    let range = IdRange {
        host_id: id_mapping.host_id,
        size: id_mapping.size,
    };
    run.rootfs = true;
    // The root filesystem's writable layer is a tmpfs of half the instance's memory:
    // a tenant filling it gets ENOSPC and pays in its own memory (like Cloud Run's
    // in-memory filesystem), never with the worker's disk. Half, so the files alone
    // cannot push the memory cgroup into an OOM no kill can resolve (tmpfs pages
    // belong to no process). No memory limit (0): 1 GiB.
    let layer_bytes = if a.memory_mb == 0 {
        1 << 30
    } else {
        (a.memory_mb << 20) / 2
    }
    .max(16 << 20);
    let dir = run.instance_dir.clone();
    tokio::task::spawn_blocking(move || {
        berth_images::rootfs::mount_writable_layer(&dir, layer_bytes)
    })
    .await
    .expect("the writable-layer mount task does not panic")?;
    let rootfs = agent
        .images
        .mount_rootfs(&image, &run.instance_dir, Some(range))
        .await
        .map_err(|e| StartError::Rootfs(Box::new(e)))?;
    let home = if a.volume.is_empty() {
        None
    } else {
        let dir = agent.volumes.acquire(&a.volume).await?;
        run.volume = Some(a.volume.clone());
        Volumes::give_root_to(&dir, range.host_id).await?;
        Some(crate::localcache::home_for(&a, dir, &run.instance_dir).await?)
    };
    agent.metrics.phase(Phase::Mount, t.elapsed().as_secs_f64());
    check(still_wanted)?;

    // d. network namespace + e. sandbox
    status(crate::image::PullProgress {
        line: "starting sandbox".to_string(),
        done_bytes: 0,
        total_bytes: 0,
    });
    let t = Instant::now();
    let log_path = agent.cfg.log_path(&id);
    let mut req = spec::create_request(
        &a,
        &image.process,
        &PreparedPaths {
            rootfs: &rootfs,
            netns: &run.netns,
            home: home.as_ref().map(|(dir, _)| dir.as_path()),
            log: &log_path,
            id_mapping: Some(id_mapping),
        },
    )?;
    if home.as_ref().is_some_and(|(_, cached)| *cached) {
        req.env.push(crate::localcache::READY_ENV.to_string());
    }
    // A namespace or sandbox of the same id left by a crashed run goes first.
    netns::remove(&run.netns)?;
    stop_and_delete_sandbox(agent, &id).await;
    run.netns_made = true;
    netns::create(&netns_name(&id))?;
    if let Some(net) = &agent.network {
        run.egress = true;
        net.attach_async(&id, &netns_name(&id)).await?;
    }
    let _ = std::fs::create_dir_all(agent.cfg.logs_dir());
    let mut client = agent.sandboxes.clone();
    run.sandbox = true;
    client
        .create(req)
        .await
        .map_err(|status| StartError::Sandbox {
            op: "Create",
            status,
        })?;
    client
        .start(SandboxId { id: id.clone() })
        .await
        .map_err(|status| StartError::Sandbox {
            op: "Start",
            status,
        })?;
    agent
        .metrics
        .phase(Phase::Sandbox, t.elapsed().as_secs_f64());
    info!(instance = %id, "sandbox started; probing health");

    // f. health
    let t = Instant::now();
    wait_healthy(agent, run, still_wanted).await?;
    agent
        .metrics
        .phase(Phase::Health, t.elapsed().as_secs_f64());
    agent
        .metrics
        .phase(Phase::Total, total.elapsed().as_secs_f64());
    info!(instance = %id, elapsed_ms = total.elapsed().as_millis() as u64, "instance ready");
    Ok(())
}

/// Sets the message of instance `id` while it is STARTING for `generation` (pull progress,
/// then the step it is at); reported to the controller like any state change.
fn starting_status(
    agent: &Arc<Agent>,
    id: &str,
    generation: u64,
) -> impl Fn(crate::image::PullProgress) + Send + Sync {
    let agent = agent.clone();
    let id = id.to_string();
    move |p: crate::image::PullProgress| {
        agent.set_pull_progress(&id, p.done_bytes, p.total_bytes);
        let message = p.line;
        if let Some(mut view) = agent.instance(&id) {
            if view.state == berth_api::control::InstanceState::Starting
                && view.generation == generation
                && view.message != message
            {
                view.message = message;
                agent.set_state(&id, view);
            }
        }
    }
}

fn stale_instance_dir(agent: &Agent, id: &str) -> Option<PathBuf> {
    let dir = agent.cfg.instance_dir(id);
    dir.exists().then_some(dir)
}

fn check<F: Fn() -> bool>(still_wanted: &F) -> Result<(), StartError> {
    if still_wanted() {
        Ok(())
    } else {
        Err(StartError::Cancelled)
    }
}

async fn wait_unwanted<F: Fn() -> bool>(still_wanted: &F) {
    while still_wanted() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the app's health path inside its namespace until any HTTP response arrives.
async fn wait_healthy<F>(
    agent: &Arc<Agent>,
    run: &Running,
    still_wanted: &F,
) -> Result<(), StartError>
where
    F: Fn() -> bool,
{
    let a = &run.assignment;
    let path = spec::health_path(a);
    let started = Instant::now();
    let mut last: String;
    let mut last_status_check = Instant::now();
    loop {
        check(still_wanted)?;
        match probe(agent, run, &path).await {
            Ok(status) => {
                debug!(instance = %a.instance_id, %status, "health probe answered");
                return Ok(());
            }
            Err(e) => last = e,
        }
        if last_status_check.elapsed() >= Duration::from_millis(500) {
            last_status_check = Instant::now();
            if let Ok(info) = sandbox_info(agent, &a.instance_id).await {
                if has_exited(&info) {
                    let (code, oom) = info
                        .map(|i| {
                            (
                                i.exit_code,
                                if i.oom_killed { " (out of memory)" } else { "" },
                            )
                        })
                        .unwrap_or((-1, ""));
                    return Err(StartError::ExitedEarly {
                        code,
                        oom,
                        port: a.port,
                        log: crate::logtail::tail(&agent.cfg.log_path(&a.instance_id), 10),
                    });
                }
            }
        }
        if started.elapsed() > HEALTH_TIMEOUT {
            return Err(StartError::HealthTimeout {
                port: a.port,
                path,
                timeout: HEALTH_TIMEOUT,
                last,
                log: crate::logtail::tail(&agent.cfg.log_path(&a.instance_id), 10),
            });
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// One GET of `path` on the app, from inside its namespace.
async fn probe(agent: &Arc<Agent>, run: &Running, path: &str) -> Result<http::StatusCode, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, run.assignment.port as u16));
    let stream = netns::connect_in_async(
        agent.host_netns.clone(),
        run.netns.clone(),
        addr,
        Duration::from_secs(1),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "berth-agent-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the probe request: {e}"))?;
    let result = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await;
    conn.abort();
    match result {
        Ok(Ok(resp)) => Ok(resp.status()),
        Ok(Err(e)) => Err(format!("http request: {e}")),
        Err(_) => Err("no HTTP response within 2 s".to_string()),
    }
}
