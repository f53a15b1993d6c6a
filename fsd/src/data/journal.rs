//! The metadata journal in object storage: segments, snapshots, garbage collection and
//! rebuilding the local SQLite copy of a volume from them.
//!
//! [`Journal::commit`] is what makes an fsync durable: it captures every pending
//! metadata change of the volume (including the chunk map entries of data just
//! uploaded), writes them as segment `seq + 1` with create-only semantics, and records
//! the segment locally. Concurrent commits of one volume share segments (group
//! commit): while one segment is being written, the commits that arrive queue, the
//! first of them to run captures the changes of all of them in the next segment, and
//! the others return as soon as it is durable, without a capture or a PUT of their
//! own (see [`VolumeLog`]). After a segment is durable,
//! the chunk objects it stopped referencing are deleted, and every
//! [`SNAPSHOT_EVERY`] segments a snapshot replaces the segments before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use super::objects::{
    chunk_path, journal_path, journal_prefix, snapshot_path, snapshot_prefix, Objects,
};
use crate::error::{FsError, FsResult};
use crate::meta::journal::{Change, Dump, LayoutState};
use crate::meta::MetaStore;

/// Segments between snapshots.
pub const SNAPSHOT_EVERY: u64 = 64;

/// A journal segment object.
#[derive(Debug, Serialize, Deserialize)]
struct Segment {
    volume: String,
    seq: u64,
    changes: Vec<Change>,
}

/// A snapshot object.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    volume: String,
    seq: u64,
    tables: Dump,
}

/// Commits and replays the journals of all volumes.
#[derive(Debug)]
pub struct Journal {
    objects: Objects,
    meta: Arc<MetaStore>,
    logs: Mutex<HashMap<String, Arc<VolumeLog>>>,
}

/// Group commit of one volume's journal.
///
/// Commits are numbered as they take their capture. A caller's changes are in the
/// store before it calls [`Journal::commit`], so any capture numbered after the number
/// it saw on arrival includes them: once such a commit is durable, the caller is done.
#[derive(Debug, Default)]
struct VolumeLog {
    /// Held while a segment is captured and written (and while replaying).
    lock: AsyncMutex<()>,
    /// Captures taken so far.
    captures: AtomicU64,
    /// The highest capture number whose segment (or finding nothing to write) is
    /// durable.
    durable: AtomicU64,
}

/// What [`Journal::sync_from_store`] did to the local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The local copy was already current.
    Current,
    /// The local copy was replaced or brought forward from the store.
    Rebuilt,
}

impl Journal {
    pub fn new(objects: Objects, meta: Arc<MetaStore>) -> Self {
        Self {
            objects,
            meta,
            logs: Mutex::new(HashMap::new()),
        }
    }

    fn log_of(&self, volume: &str) -> Arc<VolumeLog> {
        self.logs
            .lock()
            .expect("journal lock table poisoned")
            .entry(volume.to_string())
            .or_default()
            .clone()
    }

    /// Writes every pending metadata change of `volume` to the object store; returns
    /// once a segment holding every change made before the call is durable (its own,
    /// or one a concurrent commit wrote for it).
    #[tracing::instrument(skip_all, fields(volume))]
    pub async fn commit(&self, volume: &str) -> FsResult<()> {
        let log = self.log_of(volume);
        let arrived = log.captures.load(Ordering::SeqCst);
        let _guard = log.lock.lock().await;
        if log.durable.load(Ordering::SeqCst) > arrived {
            return Ok(()); // a commit that captured after we arrived covered us
        }
        let number = log.captures.fetch_add(1, Ordering::SeqCst) + 1;
        self.commit_locked(volume).await?;
        log.durable.fetch_max(number, Ordering::SeqCst);
        Ok(())
    }

    /// One capture and segment; the caller holds the volume's journal lock.
    async fn commit_locked(&self, volume: &str) -> FsResult<()> {
        let capture = self.meta.capture(volume).await?;
        if capture.changes.is_empty() && capture.garbage.is_empty() {
            return Ok(());
        }
        let state = self.meta.layout_state(volume).await?.unwrap_or_default();
        let mut seq = state.seq;
        if !capture.changes.is_empty() {
            seq += 1;
            let segment = Segment {
                volume: volume.to_string(),
                seq,
                changes: capture.changes.clone(),
            };
            let body = serde_json::to_vec(&segment)
                .map_err(|e| FsError::Corrupt(format!("encoding journal segment: {e}")))?;
            let bytes = body.len();
            if !self
                .objects
                .put_new(&journal_path(volume, seq), Bytes::from(body))
                .await?
            {
                return Err(FsError::Unavailable(format!(
                    "journal segment {seq} of volume {volume} was written by another fsd; \
                     this server lost the volume"
                )));
            }
            self.meta.ack(volume, seq, &capture).await?;
            tracing::debug!(
                seq,
                changes = capture.changes.len(),
                bytes,
                "journal segment written"
            );
        }
        // The segment no longer references these objects: delete them.
        let mut deleted_all = true;
        for g in &capture.garbage {
            if let Err(err) = self
                .objects
                .delete(&chunk_path(volume, g.ino, g.idx, &g.version))
                .await
            {
                tracing::warn!(error = %err, "deleting a superseded chunk failed; kept for later");
                deleted_all = false;
                break;
            }
        }
        if deleted_all && !capture.garbage.is_empty() {
            self.meta
                .forget_garbage(volume, capture.max_garbage)
                .await?;
        }
        if seq >= state.snapshot_seq + SNAPSHOT_EVERY {
            if let Err(err) = self.snapshot(volume, seq).await {
                tracing::warn!(error = %err, "writing a snapshot failed; journal kept");
            }
        }
        Ok(())
    }

    /// Writes a snapshot covering segments `..= seq` (the caller holds the volume's
    /// journal lock), then deletes the segments and snapshots it replaces in the
    /// background.
    async fn snapshot(&self, volume: &str, seq: u64) -> FsResult<()> {
        let tables = self.meta.dump(volume).await?;
        let snapshot = Snapshot {
            volume: volume.to_string(),
            seq,
            tables,
        };
        let body = serde_json::to_vec(&snapshot)
            .map_err(|e| FsError::Corrupt(format!("encoding snapshot: {e}")))?;
        self.objects
            .put(&snapshot_path(volume, seq), Bytes::from(body))
            .await?;
        self.meta.note_snapshot(volume, seq).await?;
        tracing::info!(seq, "volume snapshot written");
        // What the snapshot replaces goes in the background: dozens of DELETEs that
        // no fsync needs to wait for (a rebuild reads the newest snapshot and only
        // the segments after it; a deletion cut short is redone by the next one).
        let objects = self.objects.clone();
        let volume = volume.to_string();
        tokio::spawn(async move {
            if let Err(err) = delete_replaced(&objects, &volume, seq).await {
                tracing::warn!(volume, seq, error = %err, "deleting segments a snapshot replaced failed; the next snapshot retries");
            }
        });
        Ok(())
    }

    /// Brings the local copy of `volume` up to date with the object store (called
    /// when this server takes the volume's lease). Local changes that never reached a
    /// segment are kept if nobody wrote the volume since, else dropped.
    #[tracing::instrument(skip_all, fields(volume))]
    pub async fn sync_from_store(&self, volume: &str) -> FsResult<Synced> {
        let log = self.log_of(volume);
        let _guard = log.lock.lock().await;
        let local = self.meta.layout_state(volume).await?;
        let snapshots = self.objects.list_seqs(&snapshot_prefix(volume)).await?;
        let segments = self.objects.list_seqs(&journal_prefix(volume)).await?;
        let latest_snapshot = snapshots.last().copied();
        let latest = segments.last().copied().max(latest_snapshot).unwrap_or(0);
        let empty_store = snapshots.is_empty() && segments.is_empty();
        match local {
            Some(l) if l.seq == latest => return Ok(Synced::Current),
            Some(l) if l.seq > latest => {
                tracing::warn!(
                    local = l.seq,
                    store = latest,
                    "local metadata is ahead of the object store; keeping it"
                );
                return Ok(Synced::Current);
            }
            None if empty_store => {
                // A volume new to the store: start its journal from the local copy.
                self.meta
                    .rebuild(volume, false, None, &[], LayoutState::default())
                    .await?;
                if self.meta.has_rows(volume).await? {
                    self.snapshot(volume, 0).await?;
                }
                return Ok(Synced::Current);
            }
            _ => {}
        }
        // Forward from the local state if every segment after it is still there and
        // nothing local diverged; otherwise from the newest snapshot.
        let forward_from = match local {
            Some(l)
                if latest_snapshot.is_none_or(|s| s <= l.seq)
                    && !self.meta.has_pending(volume).await? =>
            {
                Some(l)
            }
            _ => None,
        };
        let (base, snapshot) = match forward_from {
            Some(l) => (l, None),
            None => match latest_snapshot {
                Some(s) => {
                    let raw = self
                        .objects
                        .get(&snapshot_path(volume, s))
                        .await?
                        .ok_or_else(|| FsError::Corrupt(format!("snapshot {s} vanished")))?;
                    let snapshot: Snapshot = serde_json::from_slice(&raw)
                        .map_err(|e| FsError::Corrupt(format!("snapshot {s}: {e}")))?;
                    (
                        LayoutState {
                            seq: s,
                            snapshot_seq: s,
                        },
                        Some(snapshot.tables),
                    )
                }
                None => (LayoutState::default(), None),
            },
        };
        let wanted: Vec<u64> = segments.into_iter().filter(|s| *s > base.seq).collect();
        let mut changes = Vec::with_capacity(wanted.len());
        for (expected, seq) in (base.seq + 1..).zip(&wanted) {
            if *seq != expected {
                return Err(FsError::Corrupt(format!(
                    "journal of volume {volume} misses segment {expected}"
                )));
            }
            let raw = self
                .objects
                .get(&journal_path(volume, *seq))
                .await?
                .ok_or_else(|| FsError::Corrupt(format!("journal segment {seq} vanished")))?;
            let segment: Segment = serde_json::from_slice(&raw)
                .map_err(|e| FsError::Corrupt(format!("journal segment {seq}: {e}")))?;
            changes.push(segment.changes);
        }
        let state = LayoutState {
            seq: base.seq + changes.len() as u64,
            snapshot_seq: base.snapshot_seq,
        };
        let wipe = forward_from.is_none();
        self.meta
            .rebuild(volume, wipe, snapshot.as_ref(), &changes, state)
            .await?;
        tracing::info!(
            from_snapshot = snapshot.is_some(),
            segments = changes.len(),
            seq = state.seq,
            "volume metadata rebuilt from the object store"
        );
        Ok(Synced::Rebuilt)
    }
}

/// Deletes the segments and older snapshots that snapshot `seq` of `volume` replaces.
async fn delete_replaced(objects: &Objects, volume: &str, seq: u64) -> FsResult<()> {
    for old in objects.list_seqs(&journal_prefix(volume)).await? {
        if old <= seq {
            objects.delete(&journal_path(volume, old)).await?;
        }
    }
    for old in objects.list_seqs(&snapshot_prefix(volume)).await? {
        if old < seq {
            objects.delete(&snapshot_path(volume, old)).await?;
        }
    }
    Ok(())
}
