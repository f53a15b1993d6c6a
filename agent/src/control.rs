//! The control loop with the controller: Register (retried with backoff), Heartbeat every
//! interval (re-registering when told), a WatchAssignments stream resumed from the last
//! applied revision, and delivery of queued instance reports.
//!
//! While the controller is unreachable nothing local changes: running instances keep
//! serving and reports wait in the queue (heartbeats carry the full state anyway).

use std::sync::Arc;
use std::time::Duration;

use berth_api::control::workers_client::WorkersClient;
use berth_api::control::{HeartbeatRequest, RegisterRequest, WatchAssignmentsRequest};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::state::Agent;
use crate::supervisor::Reconciler;

/// Longest wait between reconnect attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Heartbeat interval used until the controller says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// Builds a lazily connecting channel to the controller.
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

fn retry_delay(attempt: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(8))).min(MAX_RETRY)
}

fn total_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Runs the control loop forever (cancel by aborting the task). The current worker id
/// is published on `worker_tx` for [`deliver_reports`].
pub async fn run(
    agent: Arc<Agent>,
    reconciler: Arc<Reconciler>,
    client: WorkersClient<Channel>,
    worker_tx: watch::Sender<String>,
) {
    loop {
        let (worker_id, interval) = register(&agent, client.clone()).await;
        worker_tx.send_replace(worker_id.clone());
        let (lost_tx, mut lost_rx) = watch::channel(false);
        let watcher = tokio::spawn(
            watch_assignments(
                client.clone(),
                reconciler.clone(),
                worker_id.clone(),
                lost_tx,
            )
            .instrument(info_span!("watch", worker = %worker_id)),
        );
        heartbeat_until_lost(&agent, client.clone(), &worker_id, interval, &mut lost_rx).await;
        watcher.abort();
        warn!(worker = %worker_id, "controller no longer knows this worker: registering again");
    }
}

async fn register(agent: &Agent, mut client: WorkersClient<Channel>) -> (String, Duration) {
    let req = RegisterRequest {
        name: agent.cfg.name.clone(),
        ingress_addr: agent.cfg.ingress_advertise.clone(),
        capacity_instances: agent.cfg.capacity,
        memory_mb: total_memory_mb(),
    };
    let mut attempt = 0;
    loop {
        match client.register(req.clone()).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let interval = match resp.heartbeat_interval_ms {
                    0 => DEFAULT_HEARTBEAT,
                    ms => Duration::from_millis(ms),
                };
                info!(worker = %resp.worker_id, name = %req.name, ?interval, "registered with the controller");
                return (resp.worker_id, interval);
            }
            Err(status) => {
                let delay = retry_delay(attempt);
                attempt += 1;
                warn!(controller = %agent.cfg.controller, %status, retry_in_ms = delay.as_millis() as u64, "registering with the controller failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Heartbeats until the controller asks for re-registration (or the watch says the
/// worker is unknown).
async fn heartbeat_until_lost(
    agent: &Agent,
    mut client: WorkersClient<Channel>,
    worker_id: &str,
    interval: Duration,
    lost: &mut watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = lost.changed() => {
                if r.is_err() || *lost.borrow() {
                    return;
                }
                continue;
            }
        }
        let req = HeartbeatRequest {
            worker_id: worker_id.to_string(),
            instances: agent.snapshot(worker_id),
        };
        match client.heartbeat(req).await {
            Ok(resp) if resp.get_ref().reregister => return,
            Ok(_) => debug!("heartbeat"),
            Err(status) if status.code() == tonic::Code::NotFound => return,
            Err(status) => warn!(%status, "heartbeat failed; instances keep running"),
        }
    }
}

/// Keeps a WatchAssignments stream open and hands every snapshot to the reconciler.
/// Starts from revision 0 after every (re-)registration: a controller that forgot the
/// worker may have started over, and snapshots are level-triggered anyway.
async fn watch_assignments(
    mut client: WorkersClient<Channel>,
    reconciler: Arc<Reconciler>,
    worker_id: String,
    lost: watch::Sender<bool>,
) {
    let mut revision: u64 = 0;
    let mut attempt: u32 = 0;
    loop {
        let req = WatchAssignmentsRequest {
            worker_id: worker_id.clone(),
            from_revision: revision,
        };
        match client.watch_assignments(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(snapshot)) => {
                            attempt = 0;
                            info!(
                                revision = snapshot.revision,
                                instances = snapshot.instances.len(),
                                "assignments"
                            );
                            reconciler.apply(&snapshot.instances);
                            revision = snapshot.revision;
                        }
                        Ok(None) => {
                            info!("assignment stream ended; reconnecting");
                            break;
                        }
                        Err(status) => {
                            warn!(%status, "assignment stream broke; reconnecting");
                            if status.code() == tonic::Code::NotFound {
                                lost.send_replace(true);
                                return;
                            }
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                lost.send_replace(true);
                return;
            }
            Err(status) => {
                warn!(%status, "opening the assignment stream failed; instances keep running");
            }
        }
        let delay = retry_delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// Sends queued instance reports, retrying the undelivered ones, forever.
pub async fn deliver_reports(
    agent: Arc<Agent>,
    mut client: WorkersClient<Channel>,
    worker: watch::Receiver<String>,
) {
    loop {
        tokio::select! {
            _ = agent.reports_ready.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let worker_id = worker.borrow().clone();
        if worker_id.is_empty() {
            continue;
        }
        if !send_reports(&agent, &mut client, &worker_id).await {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Sends the queued reports once; undelivered ones go back to the queue. True when
/// everything was delivered.
pub async fn send_reports(
    agent: &Agent,
    client: &mut WorkersClient<Channel>,
    worker_id: &str,
) -> bool {
    let mut failed = Vec::new();
    for mut report in agent.take_reports() {
        report.worker_id = worker_id.to_string();
        if let Err(status) = client.report_instance(report.clone()).await {
            if is_transient(&status) {
                debug!(instance = %report.instance_id, %status, "report not delivered; will retry");
                failed.push(report);
            } else {
                warn!(instance = %report.instance_id, %status, "controller rejected the instance report");
            }
        }
    }
    let ok = failed.is_empty();
    agent.requeue_reports(failed);
    ok
}

/// Errors worth retrying a report for (the controller is down or busy).
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}
