//! The in-process store: entries behind `Arc`, bounded in bytes, oldest evicted first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use super::CachedResponse;

pub struct MemoryStore {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Stored>,
    /// Insertion order for eviction, with each insertion's number: a key replaced since is
    /// skipped, not evicted early.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    insertions: u64,
}

struct Stored {
    entry: Arc<CachedResponse>,
    expires: Instant,
    insertion: u64,
    /// What this entry counts against the budget: the entry and its key (held twice: in the map
    /// and in the eviction order).
    charge: usize,
}

/// Bookkeeping per entry beyond its bytes and key (map slot, order slot, `Stored`).
const OVERHEAD_BYTES: usize = 96;

impl MemoryStore {
    pub fn new(max_bytes: usize) -> Self {
        MemoryStore {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        let mut inner = self.inner.lock();
        match inner.entries.get(key) {
            Some(stored) if stored.expires > Instant::now() => Some(Arc::clone(&stored.entry)),
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: String, entry: Arc<CachedResponse>, ttl: Duration) {
        let size = entry.size() + 2 * key.len() + OVERHEAD_BYTES;
        if size > self.max_bytes {
            return; // larger than the whole budget: not worth evicting everything for
        }
        let mut inner = self.inner.lock();
        inner.remove(&key);
        inner.bytes += size;
        inner.insertions += 1;
        let insertion = inner.insertions;
        inner.order.push_back((key.clone(), insertion));
        inner.entries.insert(
            key,
            Stored {
                entry,
                expires: Instant::now() + ttl,
                insertion,
                charge: size,
            },
        );
        while inner.bytes > self.max_bytes {
            let Some((oldest, insertion)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&oldest)
                .is_some_and(|s| s.insertion == insertion)
            {
                inner.remove(&oldest);
            }
        }
    }

    pub fn remove_prefix(&self, prefix: &str) {
        let mut inner = self.inner.lock();
        let keys: Vec<String> = inner
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in keys {
            inner.remove(&key);
        }
    }

    /// `(entries, bytes)` of the keys starting with `prefix`.
    pub fn usage_of(&self, prefix: &str) -> (usize, usize) {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .fold((0, 0), |(n, bytes), (_, stored)| {
                (n + 1, bytes + stored.charge)
            })
    }

    /// `(entries, bytes)`.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(stored) = self.entries.remove(key) {
            self.bytes -= stored.charge;
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            // Forget the names of replaced and removed entries now and then.
            let entries = &self.entries;
            self.order
                .retain(|(k, n)| entries.get(k).is_some_and(|s| s.insertion == *n));
        }
    }
}
