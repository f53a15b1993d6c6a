//! The reconciler: applies assignment snapshots by driving one supervisor task per
//! instance.
//!
//! Each supervisor owns one instance's lifecycle. It watches the desired assignment for
//! its id (a `watch` channel: `Some(assignment)` or `None` for "remove"), starts the
//! instance, reports STARTING / READY / FAILED / STOPPED, polls sandboxd while the app is
//! ready, restarts it with exponential backoff when it dies, and replaces it when the
//! generation changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::control::{Assignment, InstanceState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use crate::instance::{self, Running, StartError};
use crate::reconcile::{diff, Action};
use crate::state::{Agent, InstanceView};

/// Interval between sandboxd status polls of a ready instance.
pub const EXIT_POLL: Duration = Duration::from_secs(2);
/// Longest wait between restarts of a crashing instance.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An instance ready this long resets its crash backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

struct Handle {
    tx: watch::Sender<Option<Assignment>>,
    join: JoinHandle<()>,
}

/// Applies assignment snapshots to the worker.
pub struct Reconciler {
    agent: Arc<Agent>,
    tasks: Mutex<HashMap<String, Handle>>,
}

impl Reconciler {
    pub fn new(agent: Arc<Agent>) -> Arc<Self> {
        Arc::new(Self {
            agent,
            tasks: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `desired` the set of instances this worker runs.
    pub fn apply(self: &Arc<Self>, desired: &[Assignment]) {
        let mut tasks = self.tasks.lock().expect("supervisor table lock poisoned");
        let actual: BTreeMap<String, Assignment> = tasks
            .iter()
            .filter_map(|(id, h)| h.tx.borrow().clone().map(|a| (id.clone(), a)))
            .collect();
        for action in diff(desired, &actual) {
            info!(?action, "reconcile");
            match action {
                Action::Start(a) => {
                    let id = a.instance_id.clone();
                    match tasks.get(&id) {
                        // Still stopping from an earlier removal: it picks this up.
                        Some(h) if !h.join.is_finished() => {
                            h.tx.send_replace(Some(a));
                        }
                        _ => {
                            let (tx, rx) = watch::channel(Some(a.clone()));
                            let span = info_span!(parent: None, "instance", instance = %id, site = %a.site);
                            let join = tokio::spawn(
                                supervise(self.clone(), id.clone(), rx).instrument(span),
                            );
                            tasks.insert(id, Handle { tx, join });
                        }
                    }
                }
                Action::Replace(a) | Action::Update(a) => {
                    if let Some(h) = tasks.get(&a.instance_id) {
                        h.tx.send_replace(Some(a));
                    }
                }
                Action::Stop(id) => {
                    if let Some(h) = tasks.get(&id) {
                        h.tx.send_replace(None);
                    }
                }
            }
        }
    }

    /// Called by a supervisor with nothing running: leaves the table if its instance is
    /// still unwanted (checked under the table lock, so no assignment is lost).
    fn try_finish(&self, id: &str, rx: &watch::Receiver<Option<Assignment>>) -> bool {
        let mut tasks = self.tasks.lock().expect("supervisor table lock poisoned");
        if rx.borrow().is_some() {
            return false;
        }
        tasks.remove(id);
        true
    }

    /// Number of instances still managed (running or stopping).
    pub fn len(&self) -> usize {
        self.tasks
            .lock()
            .expect("supervisor table lock poisoned")
            .len()
    }

    /// True when no instance is managed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every instance and waits (up to `timeout`) until all are torn down.
    pub async fn shutdown(self: &Arc<Self>, timeout: Duration) -> bool {
        self.apply(&[]);
        let deadline = Instant::now() + timeout;
        while !self.is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }
}

enum Outcome {
    /// The assignment went away or its generation changed.
    Unwanted,
    /// The app died; the message says how.
    Exited(String),
}

fn wants(rx: &watch::Receiver<Option<Assignment>>, generation: u64) -> bool {
    matches!(&*rx.borrow(), Some(a) if a.generation == generation)
}

fn view(
    a: &Assignment,
    state: InstanceState,
    message: String,
    run: Option<&Running>,
) -> InstanceView {
    InstanceView {
        site: a.site.clone(),
        generation: a.generation,
        state,
        message,
        port: u16::try_from(a.port).unwrap_or(0),
        netns: run.map(|r| r.netns.clone()).unwrap_or_default(),
        epoch: run.map(|r| r.epoch).unwrap_or(0),
    }
}

async fn supervise(rec: Arc<Reconciler>, id: String, mut rx: watch::Receiver<Option<Assignment>>) {
    let agent = rec.agent.clone();
    let mut failures: u32 = 0;
    let mut reported: Option<u64> = None;
    loop {
        let desired = rx.borrow_and_update().clone();
        let Some(a) = desired else {
            if let Some(generation) = reported.take() {
                agent.remove(&id, generation);
                info!("instance stopped");
            }
            if rec.try_finish(&id, &rx) {
                return;
            }
            continue;
        };
        let generation = a.generation;
        agent.metrics.starts.inc();
        agent.set_state(
            &id,
            view(&a, InstanceState::Starting, "starting".into(), None),
        );
        reported = Some(generation);
        info!(generation, image = %a.image, "starting instance");
        let rx_check = rx.clone();
        let result = instance::start(&agent, a.clone(), move || wants(&rx_check, generation)).await;
        let message = match result {
            Ok(mut run) => {
                agent.set_state(
                    &id,
                    view(&a, InstanceState::Ready, "ready".into(), Some(&run)),
                );
                let ready_at = Instant::now();
                let outcome = watch_running(&agent, &mut run, &mut rx).await;
                run.teardown(&agent).await;
                if ready_at.elapsed() > STABLE_AFTER {
                    failures = 0;
                }
                match outcome {
                    Outcome::Unwanted => continue,
                    Outcome::Exited(msg) => msg,
                }
            }
            Err(StartError::Cancelled) => continue,
            Err(e) => e.to_string(),
        };
        agent.metrics.failures.inc();
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "instance failed");
        agent.set_state(&id, view(&a, InstanceState::Failed, message, None));
        // Wait out the backoff unless the assignment changes first.
        let _ = tokio::time::timeout(delay, async {
            while wants(&rx, generation) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Exponential restart delay: 1 s, 2 s, 4 s, ... capped at [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Waits while the instance runs: until it is no longer wanted or its app exits.
async fn watch_running(
    agent: &Arc<Agent>,
    run: &mut Running,
    rx: &mut watch::Receiver<Option<Assignment>>,
) -> Outcome {
    let generation = run.assignment.generation;
    let mut tick = tokio::time::interval(EXIT_POLL);
    tick.tick().await;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() || !wants(rx, generation) {
                    return Outcome::Unwanted;
                }
                if let Some(a) = rx.borrow_and_update().clone() {
                    run.assignment = a;
                }
            }
            _ = tick.tick() => {
                match instance::sandbox_info(agent, run.id()).await {
                    Ok(info) if instance::has_exited(&info) => {
                        let msg = match info {
                            Some(i) => format!(
                                "app exited with code {}{}; last log lines: {}",
                                i.exit_code,
                                if i.oom_killed { " (out of memory: raise the memory limit)" } else { "" },
                                crate::logtail::tail(&agent.cfg.log_path(run.id()), 10)
                            ),
                            None => "sandbox disappeared from sandboxd (was sandboxd restarted?)".to_string(),
                        };
                        return Outcome::Exited(msg);
                    }
                    Ok(_) => {}
                    Err(status) => {
                        warn!(%status, "cannot ask sandboxd about the instance; leaving it running");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }
}
