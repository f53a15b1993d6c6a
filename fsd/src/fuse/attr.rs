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
    /// Entries (and attributes from lookup) of files. Zero makes every open by path
    /// ask the server again, which gives close-to-open consistency across mounts.
    pub file_entry: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Self {
            attr: Duration::from_secs(1),
            dir_entry: Duration::from_secs(1),
            file_entry: Duration::ZERO,
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
/// fuse3 gives a lookup reply one TTL for the entry and the attributes, and file
/// entries have TTL 0 (every open by path asks the server: close-to-open), so the
/// kernel follows each lookup of a file with a getattr. This cache answers that
/// getattr (and `access`, `opendir`) from the lookup's reply, as the kernel itself
/// would with a nonzero attribute TTL: attributes are at most `ttl` old, as documented.
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
}

/// Entries kept at most; the cache is emptied when it grows past this.
const ATTR_CACHE_MAX: usize = 65_536;

impl AttrCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// Records an open of `attr` (as the server just reported it) and says whether
    /// the file is unchanged since the previous open through this mount, so the
    /// kernel may keep its cached pages (`FOPEN_KEEP_CACHE`).
    pub fn unchanged_since_last_open(&self, attr: &Attr) -> bool {
        let mut opened = self.opened.lock().expect("open versions lock poisoned");
        if opened.len() >= ATTR_CACHE_MAX {
            opened.clear();
        }
        let now = (attr.mtime_ns, attr.ctime_ns, attr.size);
        opened.insert(attr.ino, now) == Some(now)
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
