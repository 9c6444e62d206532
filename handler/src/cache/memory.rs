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
        let (entry, charge) = match inner.entries.get(key) {
            Some(stored) if stored.expires > Instant::now() => {
                (Arc::clone(&stored.entry), stored.charge)
            }
            Some(_) => {
                inner.remove(key);
                return None;
            }
            None => return None,
        };
        // An entry grows once, when its plain body is first decompressed: counted from then on.
        let size = charge_of(key, &entry);
        if size != charge {
            if let Some(stored) = inner.entries.get_mut(key) {
                stored.charge = size;
            }
            inner.bytes = inner.bytes + size - charge;
            inner.evict_beyond(self.max_bytes);
        }
        Some(entry)
    }

    pub fn insert(&self, key: String, entry: Arc<CachedResponse>, ttl: Duration) {
        let size = charge_of(&key, &entry);
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
        inner.evict_beyond(self.max_bytes);
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

/// What an entry under `key` counts against the budget: the entry and its key (held twice: in
/// the map and in the eviction order).
fn charge_of(key: &str, entry: &CachedResponse) -> usize {
    entry.size() + 2 * key.len() + OVERHEAD_BYTES
}

impl Inner {
    /// Evicts the oldest entries until the bytes fit `max_bytes`.
    fn evict_beyond(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((oldest, insertion)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&oldest)
                .is_some_and(|s| s.insertion == insertion)
            {
                self.remove(&oldest);
            }
        }
    }

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
