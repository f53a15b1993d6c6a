//! An LRU cache of clean chunks, shared by all inodes of all volumes, bounded by the
//! bytes it holds (small files make small chunks: a count would hold almost nothing).
//!
//! It holds only chunks whose content equals the object in the store; callers remove a
//! chunk before it becomes dirty and insert it again after it was written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

type Key = (String, u64, u64);

/// LRU of clean chunks by (volume, inode, chunk index), at most `capacity` bytes.
#[derive(Debug)]
pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    bytes: usize,
    entries: HashMap<Key, (Bytes, u64)>,
    /// Last-use tick -> key, oldest first.
    order: BTreeMap<u64, Key>,
}

impl Inner {
    fn touch(&mut self, key: &Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.1, tick);
        let bytes = entry.0.clone();
        self.order.remove(&old);
        self.order.insert(tick, key.clone());
        Some(bytes)
    }

    fn remove(&mut self, key: &Key) {
        if let Some((bytes, tick)) = self.entries.remove(key) {
            self.bytes -= bytes.len();
            self.order.remove(&tick);
        }
    }
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunk data.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("chunk cache lock poisoned")
    }

    pub fn get(&self, volume: &str, ino: u64, index: u64) -> Option<Bytes> {
        self.inner().touch(&(volume.to_string(), ino, index))
    }

    /// Whether a chunk is cached (without counting as a use).
    pub fn contains(&self, volume: &str, ino: u64, index: u64) -> bool {
        self.inner()
            .entries
            .contains_key(&(volume.to_string(), ino, index))
    }

    pub fn insert(&self, volume: &str, ino: u64, index: u64, bytes: Bytes) {
        if bytes.len() > self.capacity {
            return;
        }
        let key = (volume.to_string(), ino, index);
        let mut inner = self.inner();
        inner.remove(&key);
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += bytes.len();
        inner.order.insert(tick, key.clone());
        inner.entries.insert(key, (bytes, tick));
        while inner.bytes > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((bytes, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= bytes.len();
            }
        }
    }

    pub fn remove(&self, volume: &str, ino: u64, index: u64) {
        self.inner().remove(&(volume.to_string(), ino, index));
    }

    /// Removes every chunk of a volume.
    pub fn remove_volume(&self, volume: &str) {
        self.remove_where(|(v, _, _)| v == volume);
    }

    /// Removes chunks `>= first` of an inode.
    pub fn remove_from(&self, volume: &str, ino: u64, first: u64) {
        self.remove_where(|(v, i, idx)| v == volume && *i == ino && *idx >= first);
    }

    fn remove_where(&self, doomed: impl Fn(&Key) -> bool) {
        let mut inner = self.inner();
        let keys: Vec<Key> = inner
            .entries
            .keys()
            .filter(|k| doomed(k))
            .cloned()
            .collect();
        for key in keys {
            inner.remove(&key);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let cache = ChunkCache::new(2);
        cache.insert("v", 1, 0, Bytes::from_static(b"a"));
        cache.insert("v", 1, 1, Bytes::from_static(b"b"));
        assert!(cache.get("v", 1, 0).is_some());
        cache.insert("v", 1, 2, Bytes::from_static(b"c"));
        assert!(cache.get("v", 1, 1).is_none());
        assert!(cache.get("v", 1, 0).is_some());
        cache.remove_from("v", 1, 0);
        assert!(cache.get("v", 1, 2).is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn bounded_by_bytes_and_replacing_counts_once() {
        let cache = ChunkCache::new(10);
        cache.insert("v", 1, 0, Bytes::from_static(b"0123"));
        cache.insert("v", 1, 0, Bytes::from_static(b"012345"));
        assert_eq!(cache.bytes(), 6);
        cache.insert("v", 2, 0, Bytes::from_static(b"abcd"));
        assert_eq!(cache.bytes(), 10);
        cache.insert("w", 3, 0, Bytes::from_static(b"x"));
        assert!(cache.get("v", 1, 0).is_none(), "oldest went");
        assert_eq!(cache.bytes(), 5);
        cache.insert("v", 9, 0, Bytes::from(vec![0u8; 11]));
        assert!(cache.get("v", 9, 0).is_none(), "larger than the cache");
        cache.remove_volume("v");
        assert_eq!(cache.bytes(), 1);
        assert!(cache.get("w", 3, 0).is_some());
    }
}
