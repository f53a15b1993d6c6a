//! The resumable watch loop shared by `WatchAssignments` and `WatchRoutes`.
//!
//! Level-triggered: each message is a full snapshot with the revision it was read
//! at. On connect, a snapshot goes out at once when the controller's revision differs
//! from the client's `from_revision` (normally: is newer); otherwise the client is
//! assumed to hold exactly the current snapshot. After that, the loop wakes on every
//! revision change and every few seconds (so liveness changes propagate even without
//! a revision bump) and sends the snapshot only when its content changed. The loop
//! ends when the client goes away or the controller shuts down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::context::Controller;
use crate::metrics::StreamLabels;
use crate::store::StoreError;

/// How often a stream re-evaluates its snapshot without a revision change.
pub const REEVALUATE_EVERY: Duration = Duration::from_secs(3);

/// A snapshot message that carries its revision.
pub trait Snapshot: Clone + PartialEq + Send + 'static {
    fn set_revision(&mut self, revision: u64);
}

impl Snapshot for berth_api::control::Assignments {
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

impl Snapshot for berth_api::control::RouteTable {
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

/// Starts a watch loop; `build` returns `(revision, snapshot without revision)`.
pub fn spawn<T, F, Fut>(
    ctx: Arc<Controller>,
    stream: &'static str,
    from_revision: u64,
    build: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Snapshot,
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(u64, T), StoreError>> + Send,
{
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let gauge = ctx
                .metrics
                .watch_streams
                .get_or_create(&StreamLabels {
                    stream: stream.to_string(),
                })
                .clone();
            gauge.inc();
            run(&ctx, from_revision, build, &tx).await;
            gauge.dec();
            tracing::debug!("watch stream ended");
        },
        span,
    ));
    ReceiverStream::new(rx)
}

async fn run<T, F, Fut>(
    ctx: &Controller,
    from_revision: u64,
    build: F,
    tx: &mpsc::Sender<Result<T, Status>>,
) where
    T: Snapshot,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(u64, T), StoreError>>,
{
    let mut revisions = ctx.store.subscribe();
    let mut shutdown = ctx.shutdown.clone();
    let mut tick = tokio::time::interval(REEVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // What the client is believed to hold (content only, revision zeroed).
    let mut held: Option<T> = None;
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        revisions.borrow_and_update();
        let (revision, snapshot) = match build().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "building watch snapshot");
                let _ = tx
                    .send(Err(Status::unavailable(
                        "controller state database failed: reconnect with your last revision",
                    )))
                    .await;
                return;
            }
        };
        if first && revision == from_revision {
            held = Some(snapshot);
        } else if held.as_ref() != Some(&snapshot) {
            let mut msg = snapshot.clone();
            msg.set_revision(revision);
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            tracing::debug!(revision, "watch snapshot sent");
            held = Some(snapshot);
        }
        first = false;
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
