//! The advisory lock table shared by every mount of every volume this server serves.
//!
//! Locks are POSIX byte ranges keyed by (volume, inode); an owner is (mount id, the
//! kernel's lock owner), so two processes on two workers conflict like two processes on
//! one machine. The table lives in memory only. A mount renews its lease with
//! `KeepAlive`; the locks of a mount whose lease is older than [`LEASE`] are dropped
//! before any lock operation looks at the table, so a dead worker cannot hold a lock
//! for ever. This module never blocks: `F_SETLKW` is retried by the client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{FsError, FsResult};

/// How long a mount's locks outlive its last lease renewal.
pub const LEASE: Duration = Duration::from_secs(20);

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub mount: String,
    pub owner: u64,
}

/// One held lock: bytes `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub owner: Owner,
    pub start: u64,
    pub end: u64,
    pub write: bool,
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

#[derive(Debug, Default)]
struct Inner {
    locks: HashMap<(String, u64), Vec<Lock>>,
    leases: HashMap<String, Instant>,
}

/// The lock table.
#[derive(Debug, Default)]
pub struct LockTable {
    inner: Mutex<Inner>,
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        let dead: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > LEASE)
            .map(|(m, _)| m.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        for mount in &dead {
            tracing::warn!(mount, "mount lease expired; dropping its locks");
            self.leases.remove(mount);
        }
        for locks in self.locks.values_mut() {
            locks.retain(|l| !dead.contains(&l.owner.mount));
        }
        self.locks.retain(|_, l| !l.is_empty());
    }
}

impl LockTable {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lock table lock poisoned")
    }

    /// Renews `mount`'s lease.
    pub fn keep_alive(&self, mount: &str) {
        self.inner()
            .leases
            .insert(mount.to_string(), Instant::now());
    }

    /// The first lock of another owner that conflicts with `want` (`F_GETLK`).
    pub fn conflict(&self, volume: &str, ino: u64, want: &Lock) -> Option<Lock> {
        let mut inner = self.inner();
        inner.expire(Instant::now());
        find_conflict(inner.locks.get(&(volume.to_string(), ino)), want)
    }

    /// Takes `want` (replacing the owner's locks on that range), or fails with EAGAIN.
    pub fn lock(&self, volume: &str, ino: u64, want: Lock) -> FsResult<()> {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.expire(now);
        inner.leases.insert(want.owner.mount.clone(), now);
        let key = (volume.to_string(), ino);
        if find_conflict(inner.locks.get(&key), &want).is_some() {
            return Err(FsError::WouldBlock);
        }
        let locks = inner.locks.entry(key).or_default();
        cut(locks, &want.owner, want.start, want.end);
        locks.push(want);
        Ok(())
    }

    /// Releases `owner`'s locks on bytes `start..=end`.
    pub fn unlock(&self, volume: &str, ino: u64, owner: &Owner, start: u64, end: u64) {
        let mut inner = self.inner();
        let key = (volume.to_string(), ino);
        if let Some(locks) = inner.locks.get_mut(&key) {
            cut(locks, owner, start, end);
            if locks.is_empty() {
                inner.locks.remove(&key);
            }
        }
    }

    /// Releases every lock of `owner` on the inode.
    pub fn release(&self, volume: &str, ino: u64, owner: &Owner) {
        self.unlock(volume, ino, owner, 0, u64::MAX);
    }

    /// Number of locks held on all inodes (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner().locks.values().map(Vec::len).sum()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn find_conflict(locks: Option<&Vec<Lock>>, want: &Lock) -> Option<Lock> {
    locks?
        .iter()
        .find(|l| {
            l.owner != want.owner && l.overlaps(want.start, want.end) && (l.write || want.write)
        })
        .cloned()
}

/// Removes bytes `start..=end` from `owner`'s locks, splitting ranges that stick out.
fn cut(locks: &mut Vec<Lock>, owner: &Owner, start: u64, end: u64) {
    let mut kept = Vec::with_capacity(locks.len() + 1);
    for l in locks.drain(..) {
        if &l.owner != owner || !l.overlaps(start, end) {
            kept.push(l);
            continue;
        }
        if l.start < start {
            kept.push(Lock {
                end: start - 1,
                ..l.clone()
            });
        }
        if l.end > end {
            kept.push(Lock {
                start: end + 1,
                ..l
            });
        }
    }
    *locks = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(mount: &str, owner: u64, start: u64, end: u64, write: bool) -> Lock {
        Lock {
            owner: Owner {
                mount: mount.to_string(),
                owner,
            },
            start,
            end,
            write,
            pid: 1,
        }
    }

    #[test]
    fn writers_exclude_across_mounts_readers_share() {
        let t = LockTable::default();
        t.lock("v", 2, lock("a", 1, 0, u64::MAX, false)).unwrap();
        t.lock("v", 2, lock("b", 1, 0, 10, false)).unwrap();
        assert!(matches!(
            t.lock("v", 2, lock("b", 1, 5, 5, true)),
            Err(FsError::WouldBlock)
        ));
        // Same kernel owner number on another mount is another owner.
        assert!(t.conflict("v", 2, &lock("b", 1, 0, 0, true)).is_some());
        // Another inode or volume is independent.
        t.lock("v", 3, lock("b", 1, 0, 0, true)).unwrap();
        t.lock("w", 2, lock("b", 1, 0, 0, true)).unwrap();
    }

    #[test]
    fn unlock_splits_ranges_and_release_drops_all() {
        let t = LockTable::default();
        let a = Owner {
            mount: "a".into(),
            owner: 7,
        };
        t.lock("v", 2, lock("a", 7, 0, 99, true)).unwrap();
        t.unlock("v", 2, &a, 10, 19);
        assert_eq!(t.len(), 2);
        t.lock("v", 2, lock("b", 1, 10, 19, true)).unwrap();
        assert!(t.lock("v", 2, lock("b", 1, 9, 9, true)).is_err());
        t.release("v", 2, &a);
        t.lock("v", 2, lock("b", 1, 0, 99, true)).unwrap();
    }

    #[test]
    fn relocking_own_range_converts_type() {
        let t = LockTable::default();
        t.lock("v", 2, lock("a", 1, 0, 9, false)).unwrap();
        t.lock("v", 2, lock("a", 1, 0, 9, true)).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.conflict("v", 2, &lock("b", 1, 0, 0, false)).is_some());
    }
}
