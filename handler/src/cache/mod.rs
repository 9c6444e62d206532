//! Cache-aside for finished responses, with exact invalidation.
//!
//! What is stored is the finished response (gzipped once, with its ETag and the time it took to
//! compute), so a hit is served without parsing or re-serialising anything.
//!
//! **Exactness without scanning keys.** Each dataset has a write position `(epoch, seq)`. An entry
//! is stamped with the position read *before* its database query started. A write records its
//! old and new rows at the next `seq` (before it is acknowledged); an import or purge starts a new
//! epoch. On read, an entry is fresh when nothing was written since its stamp, or when none of the
//! writes since then matches the entry's filters (old row or new row, evaluated in Rust by
//! [`Query::matches`], the same rule the SQL applies). So a write to a Drama film ends the
//! `genres=drama` lists and unfiltered lists, while `genres=comedy` stays a hit; and the classic
//! race (a reader computes from the old row, the write lands, the reader stores the old answer)
//! cannot serve the old answer: its stamp predates the write, which matches it.
//!
//! **One database query per cold key.** Concurrent misses of one key at one write position share
//! one computation (a reader arriving after a write gets a computation of its own, so it never
//! receives an answer that started before the write it may have seen acknowledged).
//!
//! This store is in-process (the embedded default); the Redis store (shared between instances) is
//! the next step of issue #3 and keeps this contract.

mod entry;
mod memory;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

pub use entry::{CachedResponse, Outcome};
use memory::MemoryStore;

use crate::datasets::{Dataset, Value, normalise_text};
use crate::query::{Filter, FilterOp, Query, QueryKind};

/// Writes remembered per dataset for validating entries; an entry older than the oldest
/// remembered write is treated as stale.
const WRITE_LOG_CAPACITY: usize = 4096;
/// Default byte budget of the in-process store.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// What a cached answer is about: its kind and, for items, the key.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Query(&'a Query),
    Item(&'a Value),
}

/// A dataset's write position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub epoch: u64,
    pub seq: u64,
}

#[derive(Default)]
struct WriteLog {
    stamp: Stamp,
    /// Recent writes, oldest first.
    recent: VecDeque<RecordedWrite>,
}

struct RecordedWrite {
    seq: u64,
    old: Option<Vec<Value>>,
    new: Option<Vec<Value>>,
}

pub struct Cache {
    prefix: String,
    default_ttl: Duration,
    store: MemoryStore,
    writes: Mutex<HashMap<String, WriteLog>>,
    flights: Mutex<HashMap<String, Arc<OnceCell<Arc<CachedResponse>>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub fn in_process(prefix: &str, default_ttl: Duration, max_bytes: usize) -> Self {
        Cache {
            prefix: prefix.to_owned(),
            default_ttl,
            store: MemoryStore::new(max_bytes),
            writes: Mutex::default(),
            flights: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The readable key: `<prefix>:<dataset>:<kind>:<canonical query>`.
    pub fn key(&self, dataset: &Dataset, subject: &Subject<'_>) -> String {
        match subject {
            Subject::Query(query) => {
                let kind = match query.kind {
                    QueryKind::List => "list",
                    QueryKind::Export => "export",
                    QueryKind::Facets => "facets",
                };
                format!(
                    "{}:{}:{kind}:{}",
                    self.prefix,
                    dataset.name,
                    query.canonical(dataset)
                )
            }
            Subject::Item(key) => {
                format!("{}:{}:item:{}", self.prefix, dataset.name, key.to_text())
            }
        }
    }

    /// Keys of facet answers also name their column, which the query string does not carry.
    pub fn facet_key(&self, dataset: &Dataset, column: &str, query: &Query) -> String {
        format!(
            "{}:{}:facets:{column}:{}",
            self.prefix,
            dataset.name,
            query.canonical(dataset)
        )
    }

    pub fn stamp(&self, dataset: &str) -> Stamp {
        self.writes
            .lock()
            .expect("write log lock")
            .get(dataset)
            .map(|log| log.stamp)
            .unwrap_or_default()
    }

    /// Records a write (create: `old` None; delete: `new` None). Call it after the database commit
    /// and before acknowledging the write.
    pub fn record_write(&self, dataset: &str, old: Option<Vec<Value>>, new: Option<Vec<Value>>) {
        let mut writes = self.writes.lock().expect("write log lock");
        let log = writes.entry(dataset.to_owned()).or_default();
        log.stamp.seq += 1;
        log.recent.push_back(RecordedWrite {
            seq: log.stamp.seq,
            old,
            new,
        });
        while log.recent.len() > WRITE_LOG_CAPACITY {
            log.recent.pop_front();
        }
    }

    /// Makes every cached answer of the dataset stale (after an import, or on request).
    pub fn purge(&self, dataset: &str) {
        let mut writes = self.writes.lock().expect("write log lock");
        let log = writes.entry(dataset.to_owned()).or_default();
        log.stamp = Stamp {
            epoch: log.stamp.epoch + 1,
            seq: 0,
        };
        log.recent.clear();
        drop(writes);
        self.store
            .remove_prefix(&format!("{}:{dataset}:", self.prefix));
    }

    /// Whether an entry stamped `stamp` still answers `subject` correctly.
    fn is_fresh(&self, dataset: &Dataset, subject: &Subject<'_>, stamp: Stamp) -> bool {
        let writes = self.writes.lock().expect("write log lock");
        let Some(log) = writes.get(&dataset.name) else {
            return stamp == Stamp::default();
        };
        if log.stamp.epoch != stamp.epoch {
            return false;
        }
        if log.stamp.seq == stamp.seq {
            return true;
        }
        // Every write since the stamp must be remembered, and none may touch the answer.
        let remembered_from = log.recent.front().map_or(log.stamp.seq + 1, |w| w.seq);
        if remembered_from > stamp.seq + 1 {
            return false;
        }
        let item_filter;
        let query = match subject {
            Subject::Query(query) => *query,
            Subject::Item(key) => {
                item_filter = item_query(dataset, key);
                &item_filter
            }
        };
        let touches =
            |row: &Option<Vec<Value>>| row.as_ref().is_some_and(|r| query.matches(dataset, r));
        !log.recent
            .iter()
            .filter(|w| w.seq > stamp.seq)
            .any(|w| touches(&w.old) || touches(&w.new))
    }

    /// Returns the cached answer for `key`, or computes it once, however many callers ask at once.
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: String,
        compute: F,
    ) -> Result<(Arc<CachedResponse>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, &'static str), E>>,
    {
        if let Some(entry) = self.store.get(&key)
            && self.is_fresh(dataset, &subject, entry.stamp)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((entry, Outcome::Hit));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // The stamp is read before the query starts: see the module documentation.
        let stamp = self.stamp(&dataset.name);
        let flight_key = format!("{key}@{}.{}", stamp.epoch, stamp.seq);
        let cell = {
            let mut flights = self.flights.lock().expect("flight lock");
            Arc::clone(flights.entry(flight_key.clone()).or_default())
        };
        let result = cell
            .get_or_try_init(|| async {
                let started = Instant::now();
                let (body, content_type) = compute().await?;
                let entry = Arc::new(CachedResponse::new(
                    &body,
                    content_type,
                    started.elapsed(),
                    stamp,
                ));
                let ttl = jittered(
                    dataset
                        .cache_ttl_seconds
                        .map_or(self.default_ttl, Duration::from_secs),
                );
                self.store.insert(key.clone(), Arc::clone(&entry), ttl);
                Ok(entry)
            })
            .await
            .cloned();
        {
            let mut flights = self.flights.lock().expect("flight lock");
            if flights
                .get(&flight_key)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                flights.remove(&flight_key);
            }
        }
        result.map(|entry| (entry, Outcome::Miss))
    }

    /// `(entries, bytes)` held by this instance.
    pub fn usage(&self) -> (usize, usize) {
        self.store.usage()
    }

    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn miss_count(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// The filter an item answer depends on: its own key.
fn item_query(dataset: &Dataset, key: &Value) -> Query {
    let value = match key {
        Value::Text(text) => Value::Text(normalise_text(text)),
        other => other.clone(),
    };
    Query {
        kind: QueryKind::List,
        filters: vec![Filter {
            column: dataset.key.column,
            op: FilterOp::Eq,
            value,
        }],
        sort: crate::query::Sort {
            column: dataset.key.column,
            descending: false,
        },
        limit: 1,
        cursor: None,
        format: crate::query::ExportFormat::Json,
    }
}

/// ±10% on the TTL, so entries computed together do not all expire together.
fn jittered(ttl: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let factor = 0.9 + f64::from(nanos % 1000) / 1000.0 * 0.2;
    ttl.mul_f64(factor)
}

#[cfg(test)]
mod tests;
