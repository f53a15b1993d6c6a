//! The mount's side of callback promises (see `service/promises.rs`): what the server
//! sent with `promised = true` is trusted, without asking again, while the watch
//! stream is up and the server answered a heartbeat sent less than
//! [`TRUST`] ago, and until a break (or a change made through this mount) names it.
//!
//! A reply is only taken as promised when nothing it covers was broken since the
//! request went out ([`Ticket`]), and on the same stream: a break that overtakes the
//! reply it revokes cannot leave a stale promise behind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::volume::{watch_event, watch_request, Attr, Entry, WatchHello, WatchRequest};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::FsClient;
use crate::service::promises::PROMISE_LIFETIME;

/// How often the mount sends a heartbeat on its watch stream.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long after sending an answered heartbeat promises are trusted: a little less
/// than the server waits, for clocks that run at slightly different rates.
const TRUST: Duration = PROMISE_LIFETIME
    .checked_sub(Duration::from_millis(500))
    .expect("promise lifetime above 500 ms");
/// Most inodes with promised attributes kept; past it all are forgotten.
const MAX_PROMISED: usize = 256 * 1024;
/// Bytes of promised small-file contents kept for opens to come.
const MAX_CONTENT_BYTES: usize = 64 << 20;
/// Breaks remembered for tickets in flight; past it older tickets are refused.
const MAX_BREAK_HISTORY: usize = 64 * 1024;

/// Taken before a request whose reply may carry promises.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    incarnation: u64,
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped whenever the stream goes down: everything promised before is void.
    incarnation: u64,
    /// The server registered the current stream.
    live: bool,
    valid_until: Option<Instant>,
    beats: VecDeque<(u64, Instant)>,
    attrs: HashMap<u64, Attr>,
    /// Names of a promised directory known to lead to an inode, and whether they
    /// are all of its names (a whole listing came with them).
    dirs: HashMap<u64, (bool, HashMap<Vec<u8>, u64>)>,
    contents: HashMap<u64, Bytes>,
    content_bytes: usize,
    seq: u64,
    broken_at: HashMap<u64, u64>,
    floor: u64,
    /// When each directory last had its entries sent along, and when with the
    /// contents of its small files.
    listed: HashMap<u64, Listed>,
}

/// When a directory's entries came along with a lookup.
#[derive(Debug, Clone, Copy)]
struct Listed {
    entries: Instant,
    data: Option<Instant>,
}

impl State {
    fn fresh(&self, t: Ticket, ino: u64) -> bool {
        self.live
            && t.incarnation == self.incarnation
            && t.seq >= self.floor
            && self.broken_at.get(&ino).is_none_or(|s| *s <= t.seq)
    }

    fn trusted(&self) -> bool {
        self.live && self.valid_until.is_some_and(|until| Instant::now() < until)
    }

    fn forget(&mut self, ino: u64) {
        self.attrs.remove(&ino);
        self.dirs.remove(&ino);
        if let Some(old) = self.contents.remove(&ino) {
            self.content_bytes -= old.len();
        }
        self.seq += 1;
        if self.broken_at.len() >= MAX_BREAK_HISTORY {
            self.broken_at.clear();
            self.floor = self.seq;
        }
        self.broken_at.insert(ino, self.seq);
    }

    fn keep_attr(&mut self, attr: &Attr) {
        if self.attrs.len() >= MAX_PROMISED {
            self.attrs.clear();
            self.dirs.clear();
        }
        self.attrs.insert(attr.ino, *attr);
    }

    fn keep_contents(&mut self, ino: u64, data: Bytes) {
        if self.content_bytes + data.len() > MAX_CONTENT_BYTES {
            self.contents.clear();
            self.content_bytes = 0;
        }
        self.content_bytes += data.len();
        if let Some(old) = self.contents.insert(ino, data) {
            self.content_bytes -= old.len();
        }
    }
}

/// Promises this mount holds.
#[derive(Debug, Default)]
pub struct Promised {
    inner: Mutex<State>,
    /// Set when the mount goes away: the watch stream says goodbye and ends.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Promised {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().expect("promise state poisoned")
    }

    /// A ticket for a request that asks for promises; `None` while the stream is
    /// down (then the request should not ask).
    pub fn ticket(&self) -> Option<Ticket> {
        let st = self.state();
        st.live.then_some(Ticket {
            incarnation: st.incarnation,
            seq: st.seq,
        })
    }

    /// Whether a lookup in `dir` should bring the directory's entries along (with
    /// the contents of its small files: `with_data`, for an open): not when that
    /// came lately, nor (for entries alone) when its whole listing is promised.
    pub fn wants_listing(&self, dir: u64, with_data: bool) -> bool {
        let st = self.state();
        let listed = st.listed.get(&dir);
        let at = if with_data {
            listed.and_then(|l| l.data)
        } else if st.dirs.get(&dir).is_some_and(|(complete, _)| *complete) {
            return false;
        } else {
            listed.map(|l| l.entries)
        };
        at.is_none_or(|at| at.elapsed() >= Duration::from_secs(5))
    }

    /// Takes in a promised lookup reply for `name` in `parent` made with ticket `t`
    /// (`with_data`: it asked for the small files' contents). Siblings' contents are
    /// kept; the entry's own are the caller's.
    pub fn accept(&self, t: Ticket, parent: u64, name: &[u8], entry: &Entry, with_data: bool) {
        let mut st = self.state();
        let Some(attr) = entry.attr.as_ref() else {
            return;
        };
        if !entry.promised || !st.fresh(t, parent) {
            return;
        }
        if !entry.siblings.is_empty() || entry.listing_complete {
            if st.listed.len() >= MAX_PROMISED {
                st.listed.clear();
            }
            let now = Instant::now();
            let data = with_data
                .then_some(now)
                .or_else(|| st.listed.get(&parent).and_then(|l| l.data));
            st.listed.insert(parent, Listed { entries: now, data });
        }
        let (complete, mut names) = if entry.listing_complete {
            (true, HashMap::new())
        } else {
            st.dirs.remove(&parent).unwrap_or_default()
        };
        names.insert(name.to_vec(), attr.ino);
        for s in &entry.siblings {
            names.insert(s.name.clone(), s.ino);
        }
        st.dirs.insert(parent, (complete, names));
        if st.fresh(t, attr.ino) {
            st.keep_attr(attr);
        }
        for s in &entry.siblings {
            if let (Some(attr), true) = (s.attr.as_ref(), st.fresh(t, s.ino)) {
                st.keep_attr(attr);
                if let Some(data) = &s.data {
                    st.keep_contents(s.ino, data.clone());
                }
            }
        }
    }

    /// For an open of `ino` reached by `names`: its promised attributes (and the
    /// promised contents, taken out) when the inode and every one of those names
    /// are promised and trusted now.
    pub fn for_open(&self, ino: u64, names: &[(u64, Vec<u8>)]) -> Option<(Attr, Option<Bytes>)> {
        let mut st = self.state();
        if names.is_empty() || !st.trusted() {
            return None;
        }
        let attr = *st.attrs.get(&ino)?;
        let all_hold = names.iter().all(|(parent, name)| {
            st.dirs
                .get(parent)
                .and_then(|(_, d)| d.get(name))
                .is_some_and(|i| *i == ino)
        });
        if !all_hold {
            return None;
        }
        let contents = st.contents.remove(&ino);
        if let Some(c) = &contents {
            st.content_bytes -= c.len();
        }
        Some((attr, contents))
    }

    /// A path lookup answered from promises: `Some(Some(attr))` when `name` in
    /// `parent` is promised to lead to an inode with promised attributes,
    /// `Some(None)` when the directory's whole listing is promised and has no such
    /// name, `None` when the server must be asked.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<Option<Attr>> {
        let st = self.state();
        if !st.trusted() {
            return None;
        }
        let (complete, names) = st.dirs.get(&parent)?;
        match names.get(name) {
            Some(ino) => st.attrs.get(ino).map(|attr| Some(*attr)),
            None if *complete => Some(None),
            None => None,
        }
    }

    /// Forgets what is promised about `inos` (a break, or a change through this
    /// mount, which the server does not break for it).
    pub fn forget(&self, inos: &[u64]) {
        let mut st = self.state();
        for ino in inos {
            st.forget(*ino);
        }
    }

    /// Forgets what is promised about directory `parent` and about the inode `name`
    /// in it leads to (`known`: that inode, as the mount's name map has it). When
    /// neither this map nor the caller knows the inode and `must_exist` (the name
    /// was there: unlink, rmdir, rename's source), everything is forgotten.
    pub fn forget_name(&self, parent: u64, name: &[u8], known: Option<u64>, must_exist: bool) {
        let promised = self
            .state()
            .dirs
            .get(&parent)
            .and_then(|(_, d)| d.get(name).copied());
        match (known, promised) {
            (None, None) if must_exist => self.forget_all(),
            (a, b) => {
                let inos: Vec<u64> = [Some(parent), a, b].into_iter().flatten().collect();
                self.forget(&inos);
            }
        }
    }

    /// Forgets every promise (a change whose inodes this mount cannot name).
    pub fn forget_all(&self) {
        let mut st = self.state();
        st.attrs.clear();
        st.dirs.clear();
        st.contents.clear();
        st.content_bytes = 0;
        st.broken_at.clear();
        st.seq += 1;
        st.floor = st.seq;
    }

    /// The mount is going away: trust nothing from now on and tell the server, so
    /// that its changes need not wait out this mount's promises.
    pub fn close(&self) {
        self.disconnected();
        self.closing.send_replace(true);
    }

    fn welcome(&self) {
        self.state().live = true;
    }

    fn beat_sent(&self, n: u64) {
        let mut st = self.state();
        if st.beats.len() >= 64 {
            st.beats.pop_front();
        }
        st.beats.push_back((n, Instant::now()));
    }

    fn beat_answered(&self, n: u64) {
        let mut st = self.state();
        while let Some(&(k, sent)) = st.beats.front() {
            if k > n {
                break;
            }
            st.beats.pop_front();
            if k == n {
                let until = sent + TRUST;
                st.valid_until = Some(st.valid_until.map_or(until, |u| u.max(until)));
            }
        }
    }

    fn disconnected(&self) {
        let mut st = self.state();
        let incarnation = st.incarnation + 1;
        *st = State {
            incarnation,
            seq: st.seq,
            floor: st.seq,
            ..State::default()
        };
    }
}

/// Keeps the mount's watch stream up for as long as the mount lives, applying breaks
/// and renewing trust with heartbeats.
pub async fn watch(
    client: FsClient,
    volume: String,
    promised: Arc<Promised>,
    metrics: Arc<crate::metrics::MountMetrics>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut closing = promised.closing.subscribe();
    while !*closing.borrow_and_update() {
        let (tx, rx) = mpsc::channel(256);
        let hello = WatchRequest {
            msg: Some(watch_request::Msg::Hello(WatchHello {
                volume: volume.clone(),
                mount_id: client.mount_id().to_string(),
            })),
        };
        let _ = tx.try_send(hello);
        match client.open_watch(ReceiverStream::new(rx)).await {
            Ok(inbound) => {
                backoff = Duration::from_millis(100);
                metrics.streams.inc();
                follow(inbound, tx, &promised, &metrics, &mut closing).await;
                tracing::debug!(volume, "watch stream ended; promises dropped");
            }
            Err(errno) => tracing::debug!(volume, errno, "watch stream not opened; will retry"),
        }
        promised.disconnected();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = closing.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow(
    mut inbound: tonic::Streaming<berth_api::volume::WatchEvent>,
    tx: mpsc::Sender<WatchRequest>,
    promised: &Promised,
    metrics: &crate::metrics::MountMetrics,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = closing.changed() => {
                let bye = WatchRequest { msg: Some(watch_request::Msg::Bye(true)) };
                let _ = tx.send(bye).await;
                // Let the server read it before the stream is dropped.
                let _ = tokio::time::timeout(Duration::from_secs(1), inbound.message()).await;
                return;
            }
            msg = inbound.message() => {
                let Ok(Some(event)) = msg else { return };
                match event.msg {
                    Some(watch_event::Msg::Welcome(_)) => promised.welcome(),
                    Some(watch_event::Msg::Heartbeat(k)) => promised.beat_answered(k),
                    Some(watch_event::Msg::Broken(b)) => {
                        promised.forget(&b.inos);
                        metrics.breaks.inc();
                        let ack = WatchRequest { msg: Some(watch_request::Msg::Ack(b.id)) };
                        if tx.send(ack).await.is_err() {
                            return;
                        }
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {
                n += 1;
                promised.beat_sent(n);
                let beat = WatchRequest { msg: Some(watch_request::Msg::Heartbeat(n)) };
                if tx.send(beat).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::volume::Sibling;

    fn attr(ino: u64) -> Attr {
        Attr {
            ino,
            kind: 1,
            size: 3,
            ..Attr::default()
        }
    }

    fn live() -> Promised {
        let p = Promised::default();
        p.welcome();
        p.beat_sent(1);
        p.beat_answered(1);
        p
    }

    fn entry(ino: u64, siblings: Vec<Sibling>) -> Entry {
        Entry {
            attr: Some(attr(ino)),
            promised: true,
            siblings,
            listing_complete: true,
            ..Entry::default()
        }
    }

    #[test]
    fn a_promised_reply_serves_opens_until_broken() {
        let p = live();
        let t = p.ticket().unwrap();
        let sib = Sibling {
            name: b"b".to_vec(),
            ino: 11,
            attr: Some(attr(11)),
            data: Some(Bytes::from_static(b"abc")),
        };
        p.accept(t, 1, b"a", &entry(10, vec![sib]), true);
        assert_eq!(p.lookup(1, b"b").unwrap().unwrap().ino, 11);
        assert!(
            p.lookup(1, b"zz").unwrap().is_none(),
            "complete listing: absent"
        );
        assert!(p.for_open(10, &[(1, b"a".to_vec())]).is_some());
        let (a, contents) = p.for_open(11, &[(1, b"b".to_vec())]).unwrap();
        assert_eq!(a.ino, 11);
        assert_eq!(contents.as_deref(), Some(&b"abc"[..]));
        assert!(
            p.for_open(11, &[(1, b"x".to_vec())]).is_none(),
            "unknown name"
        );
        p.forget(&[1]);
        assert!(
            p.for_open(10, &[(1, b"a".to_vec())]).is_none(),
            "dir broken"
        );
    }

    #[test]
    fn a_reply_overtaken_by_a_break_is_not_trusted() {
        let p = live();
        let t = p.ticket().unwrap();
        p.forget(&[10]);
        p.accept(t, 1, b"a", &entry(10, vec![]), true);
        assert!(p.for_open(10, &[(1, b"a".to_vec())]).is_none());
        let t = p.ticket().unwrap();
        p.disconnected();
        p.welcome();
        p.beat_sent(2);
        p.beat_answered(2);
        p.accept(t, 1, b"a", &entry(10, vec![]), true);
        assert!(
            p.for_open(10, &[(1, b"a".to_vec())]).is_none(),
            "older stream"
        );
    }

    #[test]
    fn no_trust_without_an_answered_heartbeat() {
        let p = Promised::default();
        p.welcome();
        let t = p.ticket().unwrap();
        p.accept(t, 1, b"a", &entry(10, vec![]), true);
        assert!(p.for_open(10, &[(1, b"a".to_vec())]).is_none());
        p.beat_sent(1);
        p.beat_answered(1);
        assert!(p.for_open(10, &[(1, b"a".to_vec())]).is_some());
        p.disconnected();
        assert!(p.ticket().is_none());
        assert!(p.for_open(10, &[(1, b"a".to_vec())]).is_none());
    }
}
