//! Conversions between the wire's [`Attr`] and FUSE's attribute types, the
//! permission check behind `access`, and the client's short-lived [`AttrCache`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_api::volume::{Attr, FileKind};
use fuse3::raw::reply::FileAttr;
use fuse3::{FileType, Timestamp};

/// Block size reported in `st_blksize` (the kernel sends writes of up to 1 MiB).
const BLKSIZE: u32 = 1 << 20;

/// How long the kernel may cache what the server said.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// Attributes from getattr/setattr/readdirplus.
    pub attr: Duration,
    /// Entries (and attributes from lookup) of directories.
    pub dir_entry: Duration,
    /// Entries (and attributes from lookup) of files and symlinks. `open` asks the
    /// server whether the name still leads to the inode and whether the file changed
    /// (and then makes the kernel drop its attributes and pages), so a cached name
    /// never lets an open miss what another mount wrote and closed (close-to-open).
    pub file_entry: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Self {
            attr: Duration::from_secs(1),
            dir_entry: Duration::from_secs(1),
            file_entry: Duration::from_secs(1),
        }
    }
}

impl Ttls {
    /// TTL of an entry reply for `attr`.
    pub fn entry(&self, attr: &Attr) -> Duration {
        if attr.kind == FileKind::Directory as i32 {
            self.dir_entry
        } else {
            self.file_entry
        }
    }
}

/// Attributes the server sent within the attribute TTL, by inode.
///
/// Answers the kernel's `getattr` (and `access`, `opendir`) from what lookups,
/// listings and opens brought within `ttl` (for instance after the kernel dropped
/// its own copy at an open that found the file changed): attributes are at most
/// `ttl` old, as documented.
/// Any change made through this mount that can touch other inodes' attributes
/// (unlink, rename, link, …) empties it; a write or xattr change forgets its inode.
#[derive(Debug)]
pub struct AttrCache {
    ttl: Duration,
    inner: Mutex<HashMap<u64, (Attr, Instant)>>,
    /// (mtime, ctime, size) of each file when it was last opened through this mount.
    /// ctime is in it because mtime alone can be set back (tar, `cp -p`, `rsync -t`)
    /// after a same-size write; ctime is the server's clock at every change.
    opened: Mutex<HashMap<u64, (i64, i64, u64)>>,
    /// `opened` was emptied once (it outgrew its bound): any inode may have pages.
    opened_lost: std::sync::atomic::AtomicBool,
    /// (mtime, ctime, size) of the attributes last handed to the kernel per inode.
    told: Mutex<HashMap<u64, (i64, i64, u64)>>,
    told_lost: std::sync::atomic::AtomicBool,
}

/// Entries kept at most; the cache is emptied when it grows past this.
const ATTR_CACHE_MAX: usize = 65_536;

impl AttrCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
            opened_lost: std::sync::atomic::AtomicBool::new(false),
            told: Mutex::new(HashMap::new()),
            told_lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records that the kernel was just handed `attr` (every reply with attributes
    /// goes through here).
    pub fn told_kernel(&self, attr: &Attr) {
        let mut told = self.told.lock().expect("told versions lock poisoned");
        if told.len() >= ATTR_CACHE_MAX {
            told.clear();
            self.told_lost
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        told.insert(attr.ino, (attr.mtime_ns, attr.ctime_ns, attr.size));
    }

    /// Whether the kernel can hold nothing of `attr.ino` but `attr` itself: it has
    /// no pages of it (never opened through this mount) and its attributes are this
    /// version. Then an open storing the contents need not invalidate anything
    /// (which would cost the `getattr` round trip that follows).
    pub fn kernel_holds_only(&self, attr: &Attr) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.opened_lost.load(Relaxed) || self.told_lost.load(Relaxed) {
            return false;
        }
        let opened = self.opened.lock().expect("open versions lock poisoned");
        let told = self.told.lock().expect("told versions lock poisoned");
        !opened.contains_key(&attr.ino)
            && told.get(&attr.ino) == Some(&(attr.mtime_ns, attr.ctime_ns, attr.size))
    }

    /// Records an open of `attr` (as the server just reported it) and says whether
    /// the file is unchanged since the previous open through this mount, so the
    /// kernel may keep its cached pages (`FOPEN_KEEP_CACHE`).
    pub fn unchanged_since_last_open(&self, attr: &Attr) -> bool {
        let mut opened = self.opened.lock().expect("open versions lock poisoned");
        if opened.len() >= ATTR_CACHE_MAX {
            opened.clear();
            self.opened_lost
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let now = (attr.mtime_ns, attr.ctime_ns, attr.size);
        opened.insert(attr.ino, now) == Some(now)
    }

    /// (mtime, ctime, size) of `ino` at its previous open through this mount.
    pub fn last_open(&self, ino: u64) -> Option<(i64, i64, u64)> {
        let opened = self.opened.lock().expect("open versions lock poisoned");
        opened.get(&ino).copied()
    }

    /// Whether `attr` is the version the previous open through this mount saw
    /// (without recording this one).
    pub fn unchanged_since(&self, attr: &Attr) -> bool {
        let opened = self.opened.lock().expect("open versions lock poisoned");
        opened.get(&attr.ino) == Some(&(attr.mtime_ns, attr.ctime_ns, attr.size))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Attr, Instant)>> {
        self.inner.lock().expect("attribute cache lock poisoned")
    }

    /// Remembers what the server just said about `attr.ino`.
    pub fn put(&self, attr: &Attr) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.inner();
        if map.len() >= ATTR_CACHE_MAX {
            map.clear();
        }
        map.insert(attr.ino, (*attr, Instant::now()));
    }

    /// The attributes of `ino` if the server sent them less than `ttl` ago.
    pub fn get(&self, ino: u64) -> Option<Attr> {
        let map = self.inner();
        let (attr, at) = map.get(&ino)?;
        (at.elapsed() < self.ttl).then_some(*attr)
    }

    /// Forgets one inode (its data or xattrs changed through this mount).
    pub fn forget(&self, ino: u64) {
        self.inner().remove(&ino);
    }

    /// Forgets everything (a change that may touch attributes of other inodes).
    pub fn clear(&self) {
        self.inner().clear();
    }
}

/// The names each inode was reached by through this mount (lookup, listing, create,
/// link, rename), so `open` can check with the server that they still lead to it.
#[derive(Debug, Default)]
pub struct Names {
    inner: Mutex<NameMaps>,
}

/// Names kept per inode (hard links); the oldest goes first.
const NAMES_PER_INODE: usize = 4;

type Name = (u64, Vec<u8>);

#[derive(Debug, Default)]
struct NameMaps {
    by_ino: HashMap<u64, Vec<Name>>,
    by_name: HashMap<Name, u64>,
    /// Names an open found stale (it answered ESTALE): the kernel is about to look
    /// one of them up again and retry the open.
    stale: std::collections::HashSet<Name>,
    /// Inodes the kernel just looked up again through such a name.
    fresh: std::collections::HashSet<u64>,
    /// Inodes whose open answered ESTALE so that the kernel's lookup brings it
    /// their new size (an `O_APPEND` open of a file changed elsewhere).
    resize: std::collections::HashSet<u64>,
}

impl NameMaps {
    fn unlink(&mut self, key: &Name) -> Option<u64> {
        let ino = self.by_name.remove(key)?;
        if let Some(names) = self.by_ino.get_mut(&ino) {
            names.retain(|n| n != key);
            if names.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
        Some(ino)
    }
}

impl Names {
    fn inner(&self) -> std::sync::MutexGuard<'_, NameMaps> {
        self.inner.lock().expect("name map lock poisoned")
    }

    /// Records that `name` in directory `parent` leads to `ino`.
    pub fn remember(&self, ino: u64, parent: u64, name: &[u8]) {
        let mut maps = self.inner();
        if maps.by_name.len() >= ATTR_CACHE_MAX {
            maps.by_ino.clear();
            maps.by_name.clear();
        }
        let key = (parent, name.to_vec());
        if maps.resize.remove(&ino) {
            maps.fresh.insert(ino);
        }
        if maps.stale.remove(&key) {
            // The kernel retries an open through this name, and the server just
            // said where it leads: the retried open needs no other check.
            if maps.fresh.len() >= ATTR_CACHE_MAX {
                maps.fresh.clear();
            }
            maps.fresh.insert(ino);
        }
        match maps.by_name.get(&key) {
            Some(known) if *known == ino => return,
            Some(_) => {
                maps.unlink(&key);
            }
            None => {}
        }
        let names = maps.by_ino.entry(ino).or_default();
        names.push(key.clone());
        let dropped = (names.len() > NAMES_PER_INODE).then(|| names.remove(0));
        if let Some(old) = dropped {
            maps.by_name.remove(&old);
        }
        maps.by_name.insert(key, ino);
    }

    /// The inode `name` in `parent` is known to lead to.
    pub fn ino_of(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.inner().by_name.get(&(parent, name.to_vec())).copied()
    }

    /// Every known (parent, name) of `ino`.
    pub fn of(&self, ino: u64) -> Vec<Name> {
        self.inner().by_ino.get(&ino).cloned().unwrap_or_default()
    }

    /// `name` in `parent` no longer leads where it did.
    pub fn removed(&self, parent: u64, name: &[u8]) {
        self.inner().unlink(&(parent, name.to_vec()));
    }

    /// An open found that `name` in `parent` no longer leads to its inode and
    /// answered ESTALE; the kernel will look the path up again.
    pub fn found_stale(&self, parent: u64, name: &[u8]) {
        let mut maps = self.inner();
        let key = (parent, name.to_vec());
        maps.unlink(&key);
        if maps.stale.len() >= ATTR_CACHE_MAX {
            maps.stale.clear();
        }
        maps.stale.insert(key);
    }

    /// An open of `ino` answers ESTALE so that the kernel looks it up again (and
    /// takes its current size from the lookup) before retrying.
    pub fn refresh_through_lookup(&self, ino: u64) {
        let mut maps = self.inner();
        if maps.resize.len() >= ATTR_CACHE_MAX {
            maps.resize.clear();
        }
        maps.resize.insert(ino);
    }

    /// Whether `ino` was just looked up again for an open retried after ESTALE
    /// (answers once).
    pub fn take_fresh(&self, ino: u64) -> bool {
        self.inner().fresh.remove(&ino)
    }

    /// A lookup of `name` in `parent` found nothing.
    pub fn not_found(&self, parent: u64, name: &[u8]) {
        let mut maps = self.inner();
        let key = (parent, name.to_vec());
        maps.unlink(&key);
        maps.stale.remove(&key);
    }

    /// `name` in `parent` became `new_name` in `new_parent` through this mount
    /// (whatever the new name held before is gone). `exchanged`: the two swapped.
    pub fn renamed(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        exchanged: bool,
    ) {
        let (moved, replaced) = {
            let mut maps = self.inner();
            let moved = maps.unlink(&(parent, name.to_vec()));
            let replaced = maps.unlink(&(new_parent, new_name.to_vec()));
            (moved, replaced)
        };
        if let Some(ino) = moved {
            self.remember(ino, new_parent, new_name);
        }
        if let (true, Some(ino)) = (exchanged, replaced) {
            self.remember(ino, parent, name);
        }
    }
}

/// FUSE file type of a wire kind.
pub fn file_type(kind: i32) -> FileType {
    match FileKind::try_from(kind) {
        Ok(FileKind::Directory) => FileType::Directory,
        Ok(FileKind::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

/// Nanoseconds since the epoch as a FUSE timestamp.
pub fn timestamp(ns: i64) -> Timestamp {
    Timestamp::new(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// A FUSE timestamp as nanoseconds since the epoch.
pub fn nanos(ts: Timestamp) -> i64 {
    ts.sec
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nsec))
}

/// FUSE attributes of a wire attribute.
pub fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: attr.ino,
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: timestamp(attr.atime_ns),
        mtime: timestamp(attr.mtime_ns),
        ctime: timestamp(attr.ctime_ns),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: BLKSIZE,
    }
}

/// Whether `uid`/`gid` may access `attr` with `mask` (`R_OK | W_OK | X_OK`, or
/// `F_OK`). Root may do anything except execute a file with no execute bit.
pub fn may_access(attr: &Attr, uid: u32, gid: u32, mask: u32) -> bool {
    let mask = mask & 0o7;
    if mask == 0 {
        return true;
    }
    let mode = attr.mode;
    if uid == 0 {
        let is_dir = attr.kind == FileKind::Directory as i32;
        return mask & 0o1 == 0 || is_dir || mode & 0o111 != 0;
    }
    let bits = if uid == attr.uid {
        (mode >> 6) & 0o7
    } else if gid == attr.gid {
        (mode >> 3) & 0o7
    } else {
        mode & 0o7
    };
    bits & mask == mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 2,
            kind: FileKind::File as i32,
            mode,
            uid,
            gid,
            nlink: 1,
            ..Default::default()
        }
    }

    #[test]
    fn attr_cache_expires_and_forgets() {
        let cache = AttrCache::new(Duration::from_millis(200));
        cache.put(&attr(0o644, 1, 1));
        assert_eq!(cache.get(2).map(|a| a.mode), Some(0o644));
        cache.forget(2);
        assert!(cache.get(2).is_none());
        cache.put(&attr(0o600, 1, 1));
        cache.clear();
        assert!(cache.get(2).is_none());
        cache.put(&attr(0o600, 1, 1));
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(2).is_none(), "older than the ttl");
        let mut a = attr(0o600, 1, 1);
        assert!(!cache.unchanged_since_last_open(&a), "first open");
        assert!(cache.unchanged_since_last_open(&a));
        a.mtime_ns += 1;
        assert!(!cache.unchanged_since_last_open(&a), "mtime changed");
        a.size += 1;
        assert!(!cache.unchanged_since_last_open(&a), "size changed");
        let off = AttrCache::new(Duration::ZERO);
        off.put(&attr(0o600, 1, 1));
        assert!(off.get(2).is_none(), "ttl 0 caches nothing");
    }

    #[test]
    fn timestamps_round_trip_including_negative() {
        for ns in [0, 1, 1_500_000_000, -1, -1_500_000_001] {
            assert_eq!(nanos(timestamp(ns)), ns);
        }
    }

    #[test]
    fn access_bits() {
        let a = attr(0o640, 10, 20);
        assert!(may_access(&a, 10, 0, 0o6));
        assert!(!may_access(&a, 10, 0, 0o1));
        assert!(may_access(&a, 11, 20, 0o4));
        assert!(!may_access(&a, 11, 20, 0o2));
        assert!(!may_access(&a, 11, 21, 0o4));
        assert!(may_access(&a, 0, 0, 0o6));
        assert!(!may_access(&a, 0, 0, 0o1));
        assert!(may_access(&a, 11, 21, 0));
    }
}
