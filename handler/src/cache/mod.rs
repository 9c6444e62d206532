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
//! **Where.** Without `REDIS_URL` everything lives in this process. With it, entries and write
//! positions live in Redis ([`redis::RedisStore`]) and are shared by every instance, with a
//! bounded near cache (L1) in front: a near hit still checks the dataset's write position in
//! Redis (a few bytes) before it is served. When Redis fails, requests go to the database
//! (`X-Cache: BYPASS`) and never fail because of the cache.

mod coalesce;
mod entry;
mod hot;
mod memory;
mod redis;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

pub use entry::{CachedResponse, Outcome};
use memory::MemoryStore;
use redis::RedisStore;
pub use redis::Unavailable;

use crate::datasets::{Dataset, Value, normalise_text};
use crate::query::{Filter, FilterOp, Query, QueryKind};

/// Writes remembered per dataset for validating entries; an entry older than the oldest
/// remembered write is treated as stale.
const WRITE_LOG_CAPACITY: usize = 4096;
/// The largest record of one write (the key, filterable and sortable columns of the old and new
/// rows, as JSON). A write whose record would be larger is recorded as a change of the whole
/// dataset instead, so the log stays bounded in bytes and cheap to read.
const WRITE_RECORD_MAX_BYTES: usize = 2048;
/// The most writes one freshness check reads; an entry with more writes since it was computed
/// is simply recomputed.
const MAX_WRITES_CHECKED: u64 = 256;
/// Default byte budget of the in-process store (the near cache when Redis is used).
pub const DEFAULT_MAX_BYTES: usize = crate::config::DEFAULT_CACHE_MAX_BYTES;
/// A canonical query longer than this is cut in cache keys, keeping a readable start and a
/// SHA-256 of the whole, so a client cannot make keys of any length (at most ~270 bytes).
const MAX_READABLE_QUERY: usize = 200;
/// How long a copy fetched from Redis stays in the near cache (it is revalidated on every read).
const NEAR_TTL: Duration = Duration::from_secs(30);
/// Local rate-limit windows kept before ended ones are swept out.
const LOCAL_WINDOWS_PRUNE_AT: usize = 4096;
/// At most this many local windows; beyond it the one nearest its end is forgotten.
const LOCAL_WINDOWS_MAX: usize = 65_536;

/// How long past its freshness an answer is kept, to be served as STALE while the database fails.
pub const STALE_GRACE: Duration = Duration::from_secs(300);

/// What a cached answer is about: its kind and, for items, the key.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Query(&'a Query),
    Item(&'a Value),
}

/// One computation shared by the concurrent misses of a key at one write position.
type Flight = OnceCell<(Arc<CachedResponse>, Outcome)>;

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

pub struct RecordedWrite {
    seq: u64,
    old: Option<Vec<Value>>,
    new: Option<Vec<Value>>,
}

pub struct Cache {
    prefix: String,
    default_ttl: Duration,
    /// The only store in process mode; the near cache (L1) in front of Redis otherwise.
    store: MemoryStore,
    redis: Option<RedisStore>,
    /// Write positions in process mode.
    writes: Mutex<HashMap<String, WriteLog>>,
    /// Keys of streamed answers being computed in this instance.
    streaming: Mutex<std::collections::HashSet<String>>,
    /// Datasets with a write that Redis did not record: purged before anything is served.
    unrecorded: Mutex<std::collections::HashSet<String>>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    hot: hot::HotKeys,
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stales: AtomicU64,
    /// Fixed-window counters kept in process (no Redis, or Redis unreachable).
    local_windows: Mutex<HashMap<String, (u64, Instant)>>,
    /// Large answers (exports) this instance is serving now, shared by all their readers: one
    /// copy per answer however many clients download it, and no Redis round trip for the next.
    large: Mutex<HashMap<String, std::sync::Weak<CachedResponse>>>,
    /// Redis reads of entries under way: concurrent readers of one key share one.
    fetches: Mutex<HashMap<String, Arc<Fetch>>>,
}

/// One shared read of an entry from Redis.
type Fetch = OnceCell<Option<Arc<CachedResponse>>>;

impl Cache {
    pub fn in_process(prefix: &str, default_ttl: Duration, max_bytes: usize) -> Self {
        Cache {
            prefix: prefix.to_owned(),
            default_ttl,
            store: MemoryStore::new(max_bytes),
            redis: None,
            writes: Mutex::default(),
            streaming: Mutex::default(),
            unrecorded: Mutex::default(),
            flights: Mutex::default(),
            hot: hot::HotKeys::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            stales: AtomicU64::new(0),
            local_windows: Mutex::default(),
            large: Mutex::default(),
            fetches: Mutex::default(),
        }
    }

    /// Shared through Redis (`redis://`, `rediss://`, or a comma list of cluster nodes), with a
    /// near cache of `near_max_bytes`. Connects on first use.
    pub fn with_redis(
        url: &str,
        prefix: &str,
        default_ttl: Duration,
        near_max_bytes: usize,
    ) -> Self {
        let mut cache = Cache::in_process(prefix, default_ttl, near_max_bytes);
        cache.redis = Some(RedisStore::new(url, prefix));
        cache
    }

    /// Redis connections authenticate with Entra ID tokens (`REDIS_AUTH=entra`).
    pub fn with_entra_tokens(mut self, tokens: std::sync::Arc<crate::identity::Tokens>) -> Self {
        if let Some(redis) = &mut self.redis {
            redis.use_entra_tokens(tokens);
        }
        self
    }

    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "in-process"
        }
    }

    /// The readable key: `<prefix>:<dataset>:<kind>:<canonical query>` (a long query cut, with
    /// a hash of the whole).
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
                    bounded(query.canonical(dataset))
                )
            }
            Subject::Item(key) => {
                let key = bounded(key.to_text());
                format!("{}:{}:item:{key}", self.prefix, dataset.name)
            }
        }
    }

    /// Keys of facet answers also name their column, which the query string does not carry.
    pub fn facet_key(&self, dataset: &Dataset, column: &str, query: &Query) -> String {
        format!(
            "{}:{}:facets:{column}:{}",
            self.prefix,
            dataset.name,
            bounded(query.canonical(dataset))
        )
    }

    /// The dataset's current write position.
    pub async fn stamp(&self, dataset: &str) -> Result<Stamp, Unavailable> {
        match &self.redis {
            Some(redis) => redis.stamp(dataset).await,
            None => Ok(self
                .writes
                .lock()
                .get(dataset)
                .map(|log| log.stamp)
                .unwrap_or_default()),
        }
    }

    /// Records a write (create: `old` None; delete: `new` None). Call it after the database commit
    /// and before acknowledging the write; if it fails, the write must not be acknowledged as
    /// cached-consistent. Only what freshness checks read is kept of each row (its key and its
    /// filterable and sortable columns); a write too large to remember that way ends every
    /// cached answer of the dataset instead.
    pub async fn record_write(
        &self,
        dataset: &Dataset,
        old: Option<Vec<Value>>,
        new: Option<Vec<Value>>,
    ) -> Result<(), Unavailable> {
        let (old, new) = (
            old.map(|row| freshness_columns(dataset, row)),
            new.map(|row| freshness_columns(dataset, row)),
        );
        let payload = RecordedWrite::encode_payload(&old, &new);
        if payload.len() > WRITE_RECORD_MAX_BYTES {
            tracing::info!(dataset = %dataset.name, bytes = payload.len(), "a write too large to record: the dataset's answers end");
            return self.record_dataset_change(&dataset.name).await;
        }
        let dataset = dataset.name.as_str();
        if let Some(redis) = &self.redis {
            if let Err(unavailable) = redis
                .record_write(dataset, payload, WRITE_LOG_CAPACITY)
                .await
            {
                // The write is in the database but not in the log: until a purge of the dataset
                // succeeds, this instance serves none of its cached answers (see `lookup`).
                self.unrecorded.lock().insert(dataset.to_owned());
                return Err(unavailable);
            }
            return Ok(());
        }
        let mut writes = self.writes.lock();
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
        Ok(())
    }

    /// A write whose rows cannot be recorded: every cached answer of the dataset ends, as after
    /// an import (a Redis that misses it leaves the same debt as a missed write).
    async fn record_dataset_change(&self, dataset: &str) -> Result<(), Unavailable> {
        let purged = self.purge(dataset).await;
        if purged.is_err() {
            self.unrecorded.lock().insert(dataset.to_owned());
        }
        purged
    }

    /// Counts one event under `name` in a fixed `window` (shared through Redis when there is
    /// one, in this process otherwise or while Redis is unreachable): the count so far and the
    /// time left in the window.
    pub async fn count_in_window(&self, name: &str, window: Duration) -> (u64, Duration) {
        if let Some(redis) = &self.redis
            && let Ok(counted) = redis.count_in_window(name, window).await
        {
            return counted;
        }
        self.local_window(name, window, 1)
    }

    /// Takes one back from `name`'s current window, if it has one.
    pub async fn uncount_in_window(&self, name: &str) {
        if let Some(redis) = &self.redis
            && redis.uncount_in_window(name).await.is_ok()
        {
            return;
        }
        let mut windows = self.local_windows.lock();
        if let Some((count, _)) = windows.get_mut(name) {
            *count = count.saturating_sub(1);
        }
    }

    /// The count of `name`'s current window and the time left in it, without counting anything.
    pub async fn peek_window(&self, name: &str) -> (u64, Duration) {
        if let Some(redis) = &self.redis
            && let Ok(peeked) = redis.peek_window(name).await
        {
            return peeked;
        }
        self.local_window(name, Duration::ZERO, 0)
    }

    /// Adds `by` to `name`'s window in this process (opening one of `window` if there is none).
    fn local_window(&self, name: &str, window: Duration, by: u64) -> (u64, Duration) {
        let now = Instant::now();
        let mut windows = self.local_windows.lock();
        // Ended windows are dropped now and then, not on every call.
        if windows.len() >= LOCAL_WINDOWS_PRUNE_AT {
            windows.retain(|_, (_, ends)| *ends > now);
        }
        match windows.get(name) {
            Some((_, ends)) if *ends <= now => {
                windows.remove(name);
            }
            Some(_) => {}
            None if by == 0 => return (0, Duration::ZERO),
            None => {
                // Names come from clients (addresses, emails): the map is bounded, and when
                // full it forgets a window chosen at random (a chosen one could be a victim's).
                if windows.len() >= LOCAL_WINDOWS_MAX {
                    let skip = (random_unit() * windows.len() as f64) as usize;
                    let forgotten = windows.keys().nth(skip.min(windows.len() - 1)).cloned();
                    if let Some(forgotten) = forgotten {
                        windows.remove(&forgotten);
                    }
                }
            }
        }
        let (count, ends) = windows.entry(name.to_owned()).or_insert((0, now + window));
        *count += by;
        (*count, ends.saturating_duration_since(now))
    }

    /// Makes every cached answer of the dataset stale (after an import, or on request).
    pub async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
        self.store
            .remove_prefix(&format!("{}:{dataset}:", self.prefix));
        if let Some(redis) = &self.redis {
            return redis.purge(dataset).await;
        }
        let mut writes = self.writes.lock();
        let log = writes.entry(dataset.to_owned()).or_default();
        log.stamp = Stamp {
            epoch: log.stamp.epoch + 1,
            seq: 0,
        };
        log.recent.clear();
        Ok(())
    }

    /// Whether an entry stamped `stamp` still answers `subject` correctly.
    async fn is_fresh(
        &self,
        dataset: &Dataset,
        subject: &Subject<'_>,
        stamp: Stamp,
    ) -> Result<bool, Unavailable> {
        if let Some(redis) = &self.redis {
            let current = redis.stamp(&dataset.name).await?;
            if current.epoch != stamp.epoch || current.seq < stamp.seq {
                return Ok(false);
            }
            if current.seq == stamp.seq {
                return Ok(true);
            }
            if current.seq - stamp.seq > MAX_WRITES_CHECKED {
                return Ok(false);
            }
            return Ok(
                match redis.writes_since(dataset, stamp.seq, current.seq).await? {
                    Some(writes) => !touched_by(dataset, subject, writes.iter()),
                    None => false,
                },
            );
        }
        let writes = self.writes.lock();
        let Some(log) = writes.get(&dataset.name) else {
            return Ok(stamp == Stamp::default());
        };
        if log.stamp.epoch != stamp.epoch {
            return Ok(false);
        }
        if log.stamp.seq == stamp.seq {
            return Ok(true);
        }
        if log.stamp.seq.saturating_sub(stamp.seq) > MAX_WRITES_CHECKED {
            return Ok(false);
        }
        // Every write since the stamp must be remembered, and none may touch the answer.
        let remembered_from = log.recent.front().map_or(log.stamp.seq + 1, |w| w.seq);
        if remembered_from > stamp.seq + 1 {
            return Ok(false);
        }
        Ok(!touched_by(
            dataset,
            subject,
            log.recent.iter().filter(|w| w.seq > stamp.seq),
        ))
    }

    /// A fresh stored answer, from the near cache or Redis.
    async fn lookup(
        &self,
        dataset: &Dataset,
        subject: &Subject<'_>,
        key: &str,
        warming: bool,
    ) -> Result<Option<Arc<CachedResponse>>, Unavailable> {
        self.purge_unrecorded(&dataset.name).await?;
        // Warm-up refreshes what would expire within a fifth of its lifetime.
        let margin_ms = if warming {
            u64::try_from(self.ttl(dataset).as_millis() / 5).unwrap_or(u64::MAX)
        } else {
            0
        };
        let usable = |entry: &CachedResponse| {
            entry.expires_at_ms > entry::unix_ms().saturating_add(margin_ms)
                && !entry.should_refresh_early(random_unit())
        };
        if let Some(entry) = self.store.get(key)
            && usable(&entry)
            && self.is_fresh(dataset, subject, entry.stamp).await?
        {
            return Ok(Some(entry));
        }
        if let Some(entry) = self.large_in_use(key)
            && usable(&entry)
            && self.is_fresh(dataset, subject, entry.stamp).await?
        {
            return Ok(Some(entry));
        }
        if let Some(redis) = &self.redis
            && let Some(entry) = self.fetch(redis, subject, key).await?
            && usable(&entry)
            && self.is_fresh(dataset, subject, entry.stamp).await?
        {
            return Ok(Some(self.keep_near(dataset, key, entry)));
        }
        Ok(None)
    }

    /// The entry stored in Redis under `key`, fetched once however many ask at the same time (an
    /// export's may be large); exports get longer to arrive than the rest.
    async fn fetch(
        &self,
        redis: &RedisStore,
        subject: &Subject<'_>,
        key: &str,
    ) -> Result<Option<Arc<CachedResponse>>, Unavailable> {
        let large = matches!(subject, Subject::Query(query) if query.kind == QueryKind::Export);
        let cell = Arc::clone(self.fetches.lock().entry(key.to_owned()).or_default());
        let fetched = cell
            .get_or_try_init(|| async {
                let entry = match large {
                    true => redis.get_large(key).await?,
                    false => redis.get(key).await?,
                };
                Ok::<_, Unavailable>(entry.map(Arc::new))
            })
            .await
            .cloned();
        let mut fetches = self.fetches.lock();
        if fetches.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            fetches.remove(key);
        }
        fetched
    }

    /// The large answer stored under `key` that some request of this instance still holds.
    fn large_in_use(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.large
            .lock()
            .get(key)
            .and_then(std::sync::Weak::upgrade)
    }

    /// Lets the readers of a large answer share `entry` while any of them holds it.
    pub fn share_large(&self, key: &str, entry: &Arc<CachedResponse>) {
        if entry.is_small() {
            return;
        }
        let mut large = self.large.lock();
        large.retain(|_, held| held.strong_count() > 0);
        large.insert(key.to_owned(), Arc::downgrade(entry));
    }

    /// Bytes of the large answers being served now (each counted once however many readers it
    /// has); what `EXPORT_MEMORY_BYTES` bounds.
    pub fn large_bytes_in_use(&self) -> usize {
        self.large
            .lock()
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .map(|entry| entry.size())
            .sum()
    }

    /// Keeps a copy fetched from Redis in the near cache for a short while (small ones only: a
    /// large export is read from Redis each time rather than held by every instance).
    fn keep_near(
        &self,
        dataset: &Dataset,
        key: &str,
        entry: Arc<CachedResponse>,
    ) -> Arc<CachedResponse> {
        if entry.is_small() {
            // Decompressed once now, so the near cache's budget counts what it will hold.
            let _ = entry.plain_body();
            self.store.insert(
                key.to_owned(),
                Arc::clone(&entry),
                NEAR_TTL.min(self.ttl(dataset)),
            );
        } else {
            self.share_large(key, &entry);
        }
        entry
    }

    /// For answers streamed to the client as they are computed (exports): a fresh stored answer,
    /// or `None` and the write position to stamp a new one with. `Err` means bypass the cache.
    pub async fn lookup_streamed(
        &self,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: &str,
    ) -> Result<Result<Arc<CachedResponse>, Stamp>, Unavailable> {
        let result = match self.lookup(dataset, &subject, key, false).await {
            Ok(Some(entry)) => Ok(Ok(entry)),
            Ok(None) => self.stamp(&dataset.name).await.map(Err),
            Err(unavailable) => Err(unavailable),
        };
        let counter = match &result {
            Ok(Ok(_)) => &self.hits,
            Ok(Err(_)) => &self.misses,
            Err(_) => &self.bypasses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Claims the computation of a streamed answer (an export), or waits for the request that
    /// holds it, in this instance or (with Redis) any other, and returns the answer it stored.
    /// The claim ends when the returned [`StreamClaim`] is dropped.
    pub async fn claim_streamed(
        self: &Arc<Self>,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: &str,
    ) -> Claim {
        let deadline = Instant::now() + STREAM_WAIT;
        loop {
            if self.streaming.lock().insert(key.to_owned()) {
                // The previous holder may have stored it just now.
                if let Ok(Some(entry)) = self.lookup(dataset, &subject, key, false).await {
                    self.streaming.lock().remove(key);
                    return Claim::Served(entry);
                }
                let lease = match self
                    .lease_or_wait_for(dataset, &subject, key, STREAM_LEASE_TTL, STREAM_WAIT)
                    .await
                {
                    Lease::Served(entry) => {
                        self.streaming.lock().remove(key);
                        return Claim::Served(entry);
                    }
                    Lease::Held(lease_key, token) => Some((lease_key, token)),
                    Lease::None => None,
                };
                return Claim::Compute(StreamClaim {
                    cache: Arc::clone(self),
                    key: key.to_owned(),
                    lease,
                });
            }
            tokio::time::sleep(STREAM_POLL).await;
            // Only once the holder is done is the stored answer worth a look (it may be large).
            if !self.streaming.lock().contains(key)
                && let Ok(Some(entry)) = self.lookup(dataset, &subject, key, false).await
            {
                return Claim::Served(entry);
            }
            if Instant::now() > deadline {
                // The holder is slow or stuck: compute this one without a claim.
                return Claim::Compute(StreamClaim {
                    cache: Arc::clone(self),
                    key: String::new(),
                    lease: None,
                });
            }
        }
    }

    /// Stores an answer that was streamed and compressed on the way (see [`Cache::lookup_streamed`]).
    pub async fn store_streamed(&self, key: &str, entry: Arc<CachedResponse>) {
        self.share_large(key, &entry);
        let ttl = Duration::from_millis(entry.expires_at_ms.saturating_sub(entry::unix_ms()));
        // In process the store is the cache: keep the entry unless it would crowd out a quarter.
        if self.redis.is_none() && entry.size() <= self.store.max_bytes() / 4 {
            self.store
                .insert(key.to_owned(), Arc::clone(&entry), ttl + STALE_GRACE);
        }
        if let Some(redis) = &self.redis {
            let _ = redis.set(key, &entry, ttl + STALE_GRACE).await;
        }
    }

    /// The TTL, with jitter, for a new answer of `dataset`.
    pub fn new_ttl(&self, dataset: &Dataset) -> Duration {
        jittered(self.ttl(dataset))
    }

    fn ttl(&self, dataset: &Dataset) -> Duration {
        dataset
            .cache_ttl_seconds
            .map_or(self.default_ttl, Duration::from_secs)
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
        self.get_or_compute_or_stale(dataset, subject, key, compute, |_| false, false)
            .await
    }

    /// [`Cache::get_or_compute`], and when the computation fails in a way `database_down` accepts,
    /// the last good answer (at most [`STALE_GRACE`] past its freshness) as `STALE`.
    pub async fn get_or_compute_or_stale<F, Fut, E>(
        &self,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: String,
        compute: F,
        database_down: impl Fn(&E) -> bool,
        warming: bool,
    ) -> Result<(Arc<CachedResponse>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, &'static str), E>>,
    {
        let stamp = match self.lookup(dataset, &subject, &key, warming).await {
            Ok(Some(entry)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((entry, Outcome::Hit));
            }
            // The stamp is read before the query starts: see the module documentation.
            Ok(None) => self.stamp(&dataset.name).await,
            Err(unavailable) => Err(unavailable),
        };
        let Ok(stamp) = stamp else {
            // The cache is down: answer from the database, store nothing.
            self.bypasses.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let (body, content_type) = compute().await?;
            let entry = CachedResponse::new(
                &body,
                content_type,
                started.elapsed(),
                Stamp::default(),
                Duration::ZERO,
            );
            return Ok((Arc::new(entry), Outcome::Bypass));
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let flight_key = format!("{key}@{}.{}", stamp.epoch, stamp.seq);
        let cell = {
            let mut flights = self.flights.lock();
            Arc::clone(flights.entry(flight_key.clone()).or_default())
        };
        let result = cell
            .get_or_try_init(|| async {
                // Another instance may be computing the same answer: wait for it rather than
                // query the database again.
                let lease = match self.lease_or_wait(dataset, &subject, &key).await {
                    Lease::Served(entry) => return Ok((entry, Outcome::Hit)),
                    lease => lease,
                };
                let started = Instant::now();
                let computed = compute().await;
                let (body, content_type) = match computed {
                    Ok(computed) => computed,
                    Err(error) => {
                        self.release(&key, lease).await;
                        return Err(error);
                    }
                };
                let ttl = jittered(self.ttl(dataset));
                let entry = Arc::new(CachedResponse::new(
                    &body,
                    content_type,
                    started.elapsed(),
                    stamp,
                    ttl,
                ));
                self.store
                    .insert(key.clone(), Arc::clone(&entry), ttl + STALE_GRACE);
                if let Some(redis) = &self.redis {
                    // A failed store costs the next reader a miss, nothing more.
                    let _ = redis.set(&key, &entry, ttl + STALE_GRACE).await;
                }
                self.release(&key, lease).await;
                Ok((entry, Outcome::Miss))
            })
            .await
            .cloned();
        {
            let mut flights = self.flights.lock();
            if flights
                .get(&flight_key)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                flights.remove(&flight_key);
            }
        }
        match result {
            Err(error) if database_down(&error) => match self.last_good(&key).await {
                Some(entry) => {
                    self.stales.fetch_add(1, Ordering::Relaxed);
                    Ok((entry, Outcome::Stale))
                }
                None => Err(error),
            },
            other => other,
        }
    }

    /// Whatever answer is still stored for `key`, fresh or not.
    async fn last_good(&self, key: &str) -> Option<Arc<CachedResponse>> {
        if let Some(entry) = self.store.get(key) {
            return Some(entry);
        }
        let redis = self.redis.as_ref()?;
        redis.get(key).await.ok().flatten().map(Arc::new)
    }

    /// Purges `dataset` if a write to it could not be recorded; fails while that is not done.
    async fn purge_unrecorded(&self, dataset: &str) -> Result<(), Unavailable> {
        if !self.unrecorded.lock().contains(dataset) {
            return Ok(());
        }
        self.purge(dataset).await?;
        self.unrecorded.lock().remove(dataset);
        tracing::info!(dataset, "purged after a write that Redis missed");
        Ok(())
    }

    /// Retries the purges owed for writes Redis missed (the serving loop calls this every few
    /// seconds, so other instances stop serving those answers soon after Redis returns).
    pub async fn settle_unrecorded(&self) {
        let owed: Vec<String> = self.unrecorded.lock().iter().cloned().collect();
        for dataset in owed {
            let _ = self.purge_unrecorded(&dataset).await;
        }
    }

    /// A round trip to the shared store (nothing to check in process mode).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        match &self.redis {
            Some(redis) => redis.ping().await,
            None => Ok(()),
        }
    }

    /// `(entries, bytes)` of one dataset held by this instance.
    pub fn usage_of(&self, dataset: &str) -> (usize, usize) {
        self.store.usage_of(&format!("{}:{dataset}:", self.prefix))
    }

    /// `(entries, bytes)` held by this instance.
    pub fn usage(&self) -> (usize, usize) {
        self.store.usage()
    }

    /// In Redis mode, takes the key's lease, or waits for the instance holding it to store the
    /// answer. A lease expires by itself if its holder dies.
    async fn lease_or_wait(&self, dataset: &Dataset, subject: &Subject<'_>, key: &str) -> Lease {
        self.lease_or_wait_for(dataset, subject, key, LEASE_TTL, LEASE_WAIT)
            .await
    }

    async fn lease_or_wait_for(
        &self,
        dataset: &Dataset,
        subject: &Subject<'_>,
        key: &str,
        lease_ttl: Duration,
        wait: Duration,
    ) -> Lease {
        let Some(redis) = &self.redis else {
            return Lease::None;
        };
        let lease_key = self.lease_key(key);
        let token = lease_token();
        let deadline = Instant::now() + wait;
        let mut waited = false;
        loop {
            match redis.try_lease(&lease_key, &token, lease_ttl).await {
                // Taken after another holder let go: it stored its answer first, so look.
                Ok(true) if waited => {
                    if let Ok(Some(entry)) = self.fetch(redis, subject, key).await
                        && self
                            .is_fresh(dataset, subject, entry.stamp)
                            .await
                            .unwrap_or(false)
                    {
                        let _ = redis.release_lease(&lease_key, &token).await;
                        return Lease::Served(self.keep_near(dataset, key, entry));
                    }
                    return Lease::Held(lease_key, token);
                }
                Ok(true) => return Lease::Held(lease_key, token),
                Ok(false) => waited = true,
                Err(_) => return Lease::None,
            }
            tokio::time::sleep(LEASE_POLL).await;
            // While the holder works, only its (tiny) lease is looked at; the answer, which may
            // be large, is read once the lease is gone.
            if redis.exists(&lease_key).await.unwrap_or(true) {
                if Instant::now() > deadline {
                    return Lease::None;
                }
                continue;
            }
            if let Ok(Some(entry)) = self.fetch(redis, subject, key).await
                && self
                    .is_fresh(dataset, subject, entry.stamp)
                    .await
                    .unwrap_or(false)
            {
                return Lease::Served(self.keep_near(dataset, key, entry));
            }
            if Instant::now() > deadline {
                return Lease::None; // the holder is slow: answer this request ourselves
            }
        }
    }

    async fn release(&self, _key: &str, lease: Lease) {
        if let (Some(redis), Lease::Held(lease_key, token)) = (&self.redis, lease) {
            let _ = redis.release_lease(&lease_key, &token).await;
        }
    }

    /// `<prefix>:<dataset>:lease:<kind>:<query>`: `lease` is no entry kind, so no entry key can
    /// be mistaken for a lease.
    fn lease_key(&self, key: &str) -> String {
        let rest = key
            .strip_prefix(&format!("{}:", self.prefix))
            .unwrap_or(key);
        match rest.split_once(':') {
            Some((dataset, tail)) => format!("{}:{dataset}:lease:{tail}", self.prefix),
            None => format!("{}:lease:{rest}", self.prefix),
        }
    }

    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn miss_count(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub fn bypass_count(&self) -> u64 {
        self.bypasses.load(Ordering::Relaxed)
    }

    pub fn stale_count(&self) -> u64 {
        self.stales.load(Ordering::Relaxed)
    }

    /// Counts an access to a cached path, for warm-up.
    pub fn record_access(&self, path: &str) {
        self.hot.record(path);
    }

    /// Moves this instance's access counts to the shared scores (Redis, or this process).
    pub async fn flush_hot_keys(&self) -> Result<(), Unavailable> {
        let counts = self.hot.drain();
        match &self.redis {
            Some(redis) => {
                redis
                    .add_hot(counts.into_iter().collect(), hot::MAX_SCORED)
                    .await
            }
            None => {
                self.hot.add_local(counts);
                Ok(())
            }
        }
    }

    /// The hottest paths, most accessed first; with `decay`, their scores are halved afterwards
    /// (warm-up does this, so popularity fades).
    pub async fn hot_paths(
        &self,
        limit: usize,
        decay: bool,
    ) -> Result<Vec<(String, f64)>, Unavailable> {
        self.flush_hot_keys().await?;
        match (&self.redis, decay) {
            (Some(redis), _) => redis.top_hot(limit, decay).await,
            (None, true) => Ok(self.hot.top_local_and_decay(limit)),
            (None, false) => Ok(self.hot.peek_local(limit)),
        }
    }
}

/// How long a lease lasts if its holder never releases it (it died, say).
const LEASE_TTL: Duration = Duration::from_secs(5);
/// How long a request waits for another instance's computation before doing its own.
const LEASE_WAIT: Duration = Duration::from_secs(3);
const LEASE_POLL: Duration = Duration::from_millis(20);
/// Streamed answers (exports) take seconds: their leases last longer and are waited for longer.
const STREAM_LEASE_TTL: Duration = Duration::from_secs(60);
const STREAM_WAIT: Duration = Duration::from_secs(30);
const STREAM_POLL: Duration = Duration::from_millis(50);

/// Whether this request computes a streamed answer or got it from the one that did.
pub enum Claim {
    Compute(StreamClaim),
    Served(Arc<CachedResponse>),
}

/// The right to compute a streamed answer; dropping it (after storing, or on failure or a
/// client that left) lets waiters go on.
pub struct StreamClaim {
    cache: Arc<Cache>,
    key: String,
    lease: Option<(String, String)>,
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        if !self.key.is_empty() {
            self.cache.streaming.lock().remove(&self.key);
        }
        if let (Some((lease_key, token)), Some(_)) = (self.lease.take(), &self.cache.redis) {
            let cache = Arc::clone(&self.cache);
            // Dropped inside the runtime (a response body or a handler): release off this thread.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Some(redis) = &cache.redis {
                        let _ = redis.release_lease(&lease_key, &token).await;
                    }
                });
            }
        }
    }
}

enum Lease {
    /// Not in Redis mode, or Redis failed: compute without one.
    None,
    Held(String, String),
    /// Another instance stored the answer while we waited.
    Served(Arc<CachedResponse>),
}

/// A number in (0, 1] for XFetch; not cryptographic, just spread.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
}

fn lease_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Whether any of `writes` (old or new row) passes the filters of `subject`.
fn touched_by<'w>(
    dataset: &Dataset,
    subject: &Subject<'_>,
    mut writes: impl Iterator<Item = &'w RecordedWrite>,
) -> bool {
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
    writes.any(|w| touches(&w.old) || touches(&w.new))
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

/// `text` as it goes into a key: as it is up to [`MAX_READABLE_QUERY`] bytes, else its first
/// [`MAX_READABLE_QUERY`] bytes (to a character boundary) and a SHA-256 of the whole. A cut text
/// is at least 269 bytes long and an uncut one at most 200, so no query can be written to read
/// as another's cut key.
fn bounded(text: String) -> String {
    if text.len() <= MAX_READABLE_QUERY {
        return text;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut cut = MAX_READABLE_QUERY;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut key = String::with_capacity(cut + 72);
    key.push_str(&text[..cut]);
    key.push_str("~sha256=");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// The row as the write log keeps it: the key and the columns a cached answer can depend on
/// (filters, sorts); the others are nulls that nothing reads.
fn freshness_columns(dataset: &Dataset, row: Vec<Value>) -> Vec<Value> {
    row.into_iter()
        .zip(&dataset.columns)
        .enumerate()
        .map(|(index, (value, column))| {
            if index == dataset.key.column || column.filterable || column.sortable {
                value
            } else {
                Value::Null
            }
        })
        .collect()
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
