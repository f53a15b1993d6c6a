//! A small LRU cache of clean chunks, shared by all inodes of all volumes.
//!
//! It holds only chunks whose content equals the object in the store; callers remove a
//! chunk before it becomes dirty and insert it again after it was written.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

type Key = (String, u64, u64);

/// LRU of clean chunks by (volume, inode, chunk index).
#[derive(Debug)]
pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    entries: HashMap<Key, (Bytes, u64)>,
}

impl ChunkCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, volume: &str, ino: u64, index: u64) -> Option<Bytes> {
        let mut inner = self.inner.lock().expect("chunk cache lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&(volume.to_string(), ino, index))?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    pub fn insert(&self, volume: &str, ino: u64, index: u64, bytes: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("chunk cache lock poisoned");
        inner.tick += 1;
        let tick = inner.tick;
        inner
            .entries
            .insert((volume.to_string(), ino, index), (bytes, tick));
        while inner.entries.len() > self.capacity {
            let oldest = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => inner.entries.remove(&key),
                None => break,
            };
        }
    }

    pub fn remove(&self, volume: &str, ino: u64, index: u64) {
        let mut inner = self.inner.lock().expect("chunk cache lock poisoned");
        inner.entries.remove(&(volume.to_string(), ino, index));
    }

    /// Removes every chunk of a volume.
    pub fn remove_volume(&self, volume: &str) {
        let mut inner = self.inner.lock().expect("chunk cache lock poisoned");
        inner.entries.retain(|(v, _, _), _| v != volume);
    }

    /// Removes chunks `>= first` of an inode.
    pub fn remove_from(&self, volume: &str, ino: u64, first: u64) {
        let mut inner = self.inner.lock().expect("chunk cache lock poisoned");
        inner
            .entries
            .retain(|(v, i, idx), _| !(v == volume && *i == ino && *idx >= first));
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
    }
}
