//! Callback promises (AFS-style): what a mount read under a promise stays current until
//! the server breaks the promise, so an open of an unchanged file needs no round trip.
//!
//! A mount keeps one `Watch` stream open. [`Promises::grant`] registers the mount as
//! a holder of some inodes *before* the server reads the state it sends, so a change
//! that lands after the read always finds the holder. Every change calls
//! [`Promises::revoke`] *after* it is applied and *before* it is answered: each other
//! holder gets a `Break` and the change waits for its `ack`, or until the holder can
//! no longer be trusting the promise: a mount trusts its promises only until
//! [`PROMISE_LIFETIME`] after sending the last heartbeat the server answered, and the
//! server answers a heartbeat only while it serves the volume, so waiting until
//! `PROMISE_LIFETIME` after the last answered heartbeat is always enough. A holder
//! that makes a change waits for nobody: it forgets its own promises itself.
//!
//! After a restart, a lost lease or a take-over, promises another incarnation granted
//! may still be trusted for up to `PROMISE_LIFETIME`: changes to such a volume wait
//! out that grace (see [`Promises::reset_volume`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::volume::{watch_event, PromiseBreak, WatchEvent};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

/// How long a mount may rely on its promises after the last heartbeat the server
/// answered (it sends one every second).
pub const PROMISE_LIFETIME: Duration = Duration::from_secs(3);
/// Most inodes one mount may hold promises on; beyond it nothing more is granted.
const MAX_PROMISES_PER_MOUNT: usize = 1 << 20;

/// One mount's watch stream.
#[derive(Debug)]
struct Conn {
    volume: String,
    /// Distinguishes successive streams of the same mount.
    stream: u64,
    /// `None` once the stream ended: the mount may trust until `deadline()`.
    tx: Option<mpsc::Sender<Result<WatchEvent, tonic::Status>>>,
    /// When the last heartbeat this server answered arrived.
    last_heard: Instant,
    held: HashSet<u64>,
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

impl Conn {
    fn deadline(&self) -> Instant {
        self.last_heard + PROMISE_LIFETIME
    }
}

#[derive(Debug, Default)]
struct Inner {
    mounts: HashMap<String, Conn>,
    /// volume -> inode -> mounts holding a promise on it.
    holders: HashMap<String, HashMap<u64, HashSet<String>>>,
    /// volume -> no change answered before this (promises of an earlier incarnation).
    grace: HashMap<String, Instant>,
    next_break: u64,
    next_stream: u64,
}

/// The promise table of one server, shared by all volumes.
#[derive(Debug, Default)]
pub struct Promises {
    inner: Mutex<Inner>,
    /// Breaks sent, and breaks that waited out a silent holder (for `/metrics`).
    breaks: Counter,
    timeouts: Counter,
}

impl Promises {
    /// A table counting its breaks in `breaks` and `timeouts`.
    pub fn new(breaks: Counter, timeouts: Counter) -> Self {
        Self {
            inner: Mutex::default(),
            breaks,
            timeouts,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("promise table poisoned")
    }

    /// Registers the watch stream of `mount` on `volume` (replacing an earlier one)
    /// and returns its stream number.
    pub fn connect(
        &self,
        volume: &str,
        mount: &str,
        tx: mpsc::Sender<Result<WatchEvent, tonic::Status>>,
    ) -> u64 {
        let mut inner = self.inner();
        inner.next_stream += 1;
        let stream = inner.next_stream;
        let held = match inner.mounts.remove(mount) {
            // Promises of the old stream: the mount forgot them when it reconnected,
            // but breaking them again costs nothing and keeps the table consistent.
            Some(old) if old.volume == volume => old.held,
            Some(old) => {
                drop_holders(&mut inner.holders, mount, &old);
                HashSet::new()
            }
            None => HashSet::new(),
        };
        inner.mounts.insert(
            mount.to_string(),
            Conn {
                volume: volume.to_string(),
                stream,
                tx: Some(tx),
                last_heard: Instant::now(),
                held,
                waiting: HashMap::new(),
            },
        );
        stream
    }

    /// A heartbeat of stream `stream` arrived; false when the stream is no longer
    /// registered (dropped as silent, or its volume reopened): then the heartbeat
    /// must not be answered and the stream must end.
    pub fn heard(&self, mount: &str, stream: u64) -> bool {
        match self.inner().mounts.get_mut(mount) {
            Some(conn) if conn.stream == stream && conn.tx.is_some() => {
                conn.last_heard = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Break `id` was applied by `mount`.
    pub fn acked(&self, mount: &str, stream: u64, id: u64) {
        if let Some(conn) = self.inner().mounts.get_mut(mount) {
            if conn.stream == stream {
                if let Some(done) = conn.waiting.remove(&id) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Stream `stream` of `mount` ended. Its promises stay registered (the mount may
    /// still trust them) until `PROMISE_LIFETIME` after its last answered heartbeat;
    /// then they are dropped.
    pub fn disconnected(self: &Arc<Self>, mount: &str, stream: u64) {
        let deadline = {
            let mut inner = self.inner();
            let Some(conn) = inner.mounts.get_mut(mount).filter(|c| c.stream == stream) else {
                return;
            };
            conn.tx = None;
            conn.deadline()
        };
        let this = self.clone();
        let mount = mount.to_string();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            this.forget_stream(&mount, stream, true);
        });
    }

    /// Drops `mount`'s stream `stream` and every promise it holds: `lapsed` when
    /// they ran out of time (breaks still waiting for its ack are counted as timed
    /// out), or because the mount said it trusts none of them any more. Changes
    /// waiting for its acks go on.
    pub fn forget_stream(&self, mount: &str, stream: u64, lapsed: bool) {
        let mut inner = self.inner();
        if inner.mounts.get(mount).is_some_and(|c| c.stream == stream) {
            if let Some(conn) = inner.mounts.remove(mount) {
                drop_holders(&mut inner.holders, mount, &conn);
                if lapsed && !conn.waiting.is_empty() {
                    self.timeouts.inc_by(conn.waiting.len() as u64);
                    tracing::warn!(
                        volume = conn.volume,
                        mount,
                        breaks = conn.waiting.len(),
                        "a mount holding promises did not acknowledge their breaks in \
                         time; dropped its stream and promises"
                    );
                }
            }
        }
    }

    /// Registers `mount` as holding promises on `inos` of `volume`. False (nothing
    /// registered) when the mount has no live watch stream on that volume or holds
    /// too many: the caller then must not mark its reply promised.
    pub fn grant(&self, volume: &str, mount: &str, inos: &[u64]) -> bool {
        let mut inner = self.inner();
        let Some(conn) = inner.mounts.get_mut(mount) else {
            return false;
        };
        if conn.volume != volume
            || conn.tx.is_none()
            || conn.held.len() + inos.len() > MAX_PROMISES_PER_MOUNT
        {
            return false;
        }
        conn.held.extend(inos.iter().copied());
        let by_ino = inner.holders.entry(volume.to_string()).or_default();
        for ino in inos {
            by_ino.entry(*ino).or_default().insert(mount.to_string());
        }
        true
    }

    /// Breaks every promise on `inos` of `volume` held by a mount other than
    /// `origin`, and returns once each holder applied the break or can no longer be
    /// trusting it. Call after the change is applied, before answering it.
    pub async fn revoke(&self, volume: &str, inos: &[u64], origin: Option<&str>) {
        let mut waits = Vec::new();
        let grace = {
            let mut inner = self.inner();
            let grace = inner.grace.get(volume).copied();
            let mut per_mount: HashMap<String, Vec<u64>> = HashMap::new();
            if let Some(by_ino) = inner.holders.get_mut(volume) {
                for ino in inos {
                    if let Some(mounts) = by_ino.remove(ino) {
                        for mount in mounts {
                            per_mount.entry(mount).or_default().push(*ino);
                        }
                    }
                }
            }
            for (mount, broken) in per_mount {
                let Some(conn) = inner.mounts.get_mut(&mount) else {
                    continue;
                };
                for ino in &broken {
                    conn.held.remove(ino);
                }
                if origin == Some(mount.as_str()) {
                    continue;
                }
                let id = inner.next_break;
                inner.next_break += 1;
                let conn = inner.mounts.get_mut(&mount).expect("looked up above");
                let (done, wait) = oneshot::channel();
                conn.waiting.insert(id, done);
                let event = WatchEvent {
                    msg: Some(watch_event::Msg::Broken(PromiseBreak { id, inos: broken })),
                };
                if let Some(tx) = &conn.tx {
                    // A full or closed channel: the holder is not reading; wait it out.
                    let _ = tx.try_send(Ok(event));
                }
                waits.push((mount, conn.stream, conn.deadline(), wait));
            }
            grace
        };
        for (mount, stream, deadline, wait) in waits {
            self.breaks.inc();
            if tokio::time::timeout_at(deadline.into(), wait)
                .await
                .is_err()
            {
                self.forget_stream(&mount, stream, true);
            }
        }
        if let Some(until) = grace {
            if Instant::now() < until {
                tokio::time::sleep_until(until.into()).await;
            }
        }
    }

    /// The volume was (re)opened by this server: close every stream on it (their
    /// mounts reconnect and start over) and, when it existed before (`grace`), make
    /// changes wait until promises an earlier incarnation granted have lapsed.
    pub fn reset_volume(&self, volume: &str, grace: bool) {
        let mut inner = self.inner();
        let mounts: Vec<String> = inner
            .mounts
            .iter()
            .filter(|(_, c)| c.volume == volume)
            .map(|(m, _)| m.clone())
            .collect();
        for mount in mounts {
            if let Some(conn) = inner.mounts.remove(&mount) {
                drop_holders(&mut inner.holders, &mount, &conn);
            }
        }
        if grace {
            inner
                .grace
                .insert(volume.to_string(), Instant::now() + PROMISE_LIFETIME);
        }
    }

    /// Streams registered and promises held (for `/metrics`).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner();
        let held = inner.mounts.values().map(|c| c.held.len()).sum();
        (inner.mounts.len(), held)
    }
}

fn drop_holders(
    holders: &mut HashMap<String, HashMap<u64, HashSet<String>>>,
    mount: &str,
    conn: &Conn,
) {
    if let Some(by_ino) = holders.get_mut(&conn.volume) {
        for ino in &conn.held {
            if let Some(mounts) = by_ino.get_mut(ino) {
                mounts.remove(mount);
                if mounts.is_empty() {
                    by_ino.remove(ino);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Events = Result<WatchEvent, tonic::Status>;

    fn stream() -> (mpsc::Sender<Events>, mpsc::Receiver<Events>) {
        mpsc::channel(16)
    }

    fn broken(event: WatchEvent) -> PromiseBreak {
        match event.msg {
            Some(watch_event::Msg::Broken(b)) => b,
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_change_waits_for_the_holder_to_apply_the_break() {
        let p = Arc::new(Promises::default());
        let (tx, mut rx) = stream();
        let s = p.connect("v", "m1", tx);
        assert!(p.grant("v", "m1", &[7, 8]));
        assert!(!p.grant("w", "m1", &[7]), "a stream serves one volume");
        assert!(!p.grant("v", "m2", &[7]), "no stream, no promise");
        let p2 = p.clone();
        let change = tokio::spawn(async move { p2.revoke("v", &[7], Some("m2")).await });
        let b = broken(rx.recv().await.unwrap().unwrap());
        assert_eq!(b.inos, vec![7]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!change.is_finished(), "the change must wait for the ack");
        p.acked("m1", s, b.id);
        change.await.unwrap();
        // Broken once: the next change of 7 waits for nobody; 8 is still held.
        p.revoke("v", &[7], None).await;
        assert_eq!(p.counts(), (1, 1));
    }

    #[tokio::test]
    async fn the_holders_own_change_breaks_nothing_it_waits_for() {
        let p = Arc::new(Promises::default());
        let (tx, mut rx) = stream();
        p.connect("v", "m1", tx);
        assert!(p.grant("v", "m1", &[7]));
        p.revoke("v", &[7], Some("m1")).await;
        assert!(rx.try_recv().is_err(), "no break sent to the origin");
        assert_eq!(p.counts(), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_is_waited_out_and_dropped() {
        let p = Arc::new(Promises::default());
        let (tx, _rx) = stream();
        let s = p.connect("v", "m1", tx);
        assert!(p.grant("v", "m1", &[7, 9]));
        let started = tokio::time::Instant::now();
        p.revoke("v", &[7], None).await;
        let waited = started.elapsed();
        assert!(
            waited >= PROMISE_LIFETIME - Duration::from_millis(10),
            "{waited:?}"
        );
        assert_eq!(p.counts(), (0, 0), "stream and promises dropped");
        assert!(
            !p.grant("v", "m1", &[9]),
            "a dropped stream gets no promises"
        );
        assert!(!p.heard("m1", s), "nor answers to its heartbeats");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_keeps_its_promises_until_they_lapse() {
        let p = Arc::new(Promises::default());
        let (tx, _rx) = stream();
        let s = p.connect("v", "m1", tx);
        assert!(p.grant("v", "m1", &[7]));
        p.disconnected("m1", s);
        assert!(!p.grant("v", "m1", &[8]), "nothing new on an ended stream");
        let started = tokio::time::Instant::now();
        p.revoke("v", &[7], None).await;
        assert!(started.elapsed() >= PROMISE_LIFETIME - Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reopened_volume_waits_out_older_promises() {
        let p = Arc::new(Promises::default());
        let (tx, mut rx) = stream();
        p.connect("v", "m1", tx);
        p.reset_volume("v", true);
        assert!(
            rx.recv().await.is_none(),
            "streams on the volume are closed"
        );
        let started = tokio::time::Instant::now();
        p.revoke("v", &[1], None).await;
        assert!(started.elapsed() >= PROMISE_LIFETIME - Duration::from_millis(10));
        let started = tokio::time::Instant::now();
        p.revoke("v", &[1], None).await;
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "grace is over"
        );
        p.reset_volume("new", false);
        let started = tokio::time::Instant::now();
        p.revoke("new", &[1], None).await;
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "a new volume has no grace"
        );
    }
}
