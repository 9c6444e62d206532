//! The in-process store: entries behind `Arc`, bounded in bytes. Admission and eviction are
//! moka's (TinyLFU: a new entry displaces others only if it is asked for more often than they
//! are; eviction by least recent use), weighed by the bytes each entry holds, so one scan of
//! one-off answers cannot flush the answers in steady use, as first-in-first-out did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::CachedResponse;

pub struct MemoryStore {
    max_bytes: usize,
    entries: moka::sync::Cache<String, Stored, foldhash::fast::RandomState>,
}

#[derive(Clone)]
struct Stored {
    entry: Arc<CachedResponse>,
    expires: Instant,
    /// What this entry counts against the budget (see [`charge_of`]).
    charge: u32,
}

/// Bookkeeping per entry beyond its bytes and key.
const OVERHEAD_BYTES: usize = 96;

/// Each entry lives until its own expiry, kept when it is re-counted.
struct UntilItsExpiry;

impl Expiry<String, Stored> for UntilItsExpiry {
    fn expire_after_create(&self, _: &String, stored: &Stored, now: Instant) -> Option<Duration> {
        Some(stored.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        stored: &Stored,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(stored.expires.saturating_duration_since(now))
    }
}

/// What an entry under `key` counts against the budget: the entry and its key.
fn charge_of(key: &str, entry: &CachedResponse) -> u32 {
    u32::try_from(entry.size() + key.len() + OVERHEAD_BYTES).unwrap_or(u32::MAX)
}

impl MemoryStore {
    pub fn new(max_bytes: usize) -> Self {
        MemoryStore {
            max_bytes,
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes as u64)
                .weigher(|_, stored: &Stored| stored.charge)
                .expire_after(UntilItsExpiry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        let stored = self.entries.get(key)?;
        if stored.expires <= Instant::now() {
            return None;
        }
        // An entry grows once, when its plain body is first decompressed: counted from then on.
        let charge = charge_of(key, &stored.entry);
        if charge != stored.charge {
            self.entries.insert(
                key.to_owned(),
                Stored {
                    charge,
                    ..stored.clone()
                },
            );
        }
        Some(stored.entry)
    }

    pub fn insert(&self, key: String, entry: Arc<CachedResponse>, ttl: Duration) {
        let charge = charge_of(&key, &entry);
        if charge as usize > self.max_bytes {
            return; // larger than the whole budget: not worth evicting everything for
        }
        let expires = Instant::now() + ttl;
        entry.mark_kept();
        self.entries.insert(
            key,
            Stored {
                entry,
                expires,
                charge,
            },
        );
    }

    pub fn remove_prefix(&self, prefix: &str) {
        for (key, _) in &self.entries {
            if key.starts_with(prefix) {
                self.entries.invalidate(key.as_str());
            }
        }
    }

    /// `(entries, bytes)` of the keys starting with `prefix`.
    pub fn usage_of(&self, prefix: &str) -> (usize, usize) {
        self.entries
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .fold((0, 0), |(n, bytes), (_, stored)| {
                (n + 1, bytes + stored.charge as usize)
            })
    }

    /// `(entries, bytes)`, after the evictions pending now.
    pub fn usage(&self) -> (usize, usize) {
        self.entries.run_pending_tasks();
        (
            usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX),
            usize::try_from(self.entries.weighted_size()).unwrap_or(usize::MAX),
        )
    }
}
