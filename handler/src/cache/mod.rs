//! Cache-aside for finished responses, with answer-aware invalidation.
//!
//! What is stored is the finished response (gzipped once, with its ETag and the time it took to
//! compute), so a hit is served without parsing or re-serialising anything.
//!
//! **Exactness without scanning keys.** Each dataset has a write position `(epoch, seq)`. A write
//! records its old and new rows at the next `seq` *before its transaction commits*, marked in
//! flight until the writer ends it (see [`Cache::begin_write`]); an import records a change of
//! everything the same way; a purge starts a new epoch. An entry is stamped with the position
//! read before its database query started, less any write still in flight. On read, an entry is
//! fresh when none of the writes since its stamp can change this answer ([`fresh::changes`]: a
//! row entering, leaving or moving within a page up to its end, a facet count or label, an item's
//! own key). So a write to a Drama film ends the `genres=drama` pages it reaches, while
//! `genres=comedy` stays a hit; the classic race (a reader computes from the old row, the write
//! lands, the reader stores the old answer) cannot serve the old answer; and an instance cut off
//! from Redis cannot write at all. ARCHITECTURE.md ("Cache") argues each failure case.
//!
//! **One database query per cold key.** Concurrent misses of one key at one write position share
//! one computation (a reader arriving after a write gets a computation of its own, so it never
//! receives an answer that started before the write it may have seen acknowledged).
//!
//! **Where.** What instances must agree on sits behind one [`store::Store`]: without `REDIS_URL`
//! the in-process [`local::LocalStore`]; with it, [`redis::RedisStore`], shared by every
//! instance. In front of either is a bounded memory tier ([`memory::MemoryStore`], weighed in
//! bytes, TinyLFU admission: the whole entry cache in process mode, a near cache in front of
//! Redis): a near hit still checks the dataset's write position in the store (a few bytes) before
//! it is served. When Redis fails,
//! requests go to the database (`X-Cache: BYPASS`) and never fail because of the cache.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the facade: lookups through the tiers, purges, stats |
//! | [`writes`] | recording writes before they commit: in flight, ended, recorded again |
//! | [`keys`] | readable, bounded keys |
//! | [`fresh`] | write positions, the write log's records, the answer-aware freshness rule |
//! | [`records`] | the write log as a process holds it, indexed by the keys each record touched |
//! | [`flight`] | one computation per cold key: flights, leases, streamed claims, STALE |
//! | [`store`] | the store trait; [`local`] and [`redis`] implement it |
//! | [`memory`], [`entry`], [`gzip`] | the memory tier, what it holds, its gzip copies |
//! | [`hot`], [`windows`], [`coalesce`], [`spread`] | hot paths, rate windows, shared stamp reads, jitter |

mod coalesce;
mod entry;
mod flight;
mod fresh;
mod gzip;
mod hot;
mod keys;
mod local;
mod memory;
mod records;
mod redis;
mod spread;
mod store;
mod windows;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub use entry::{CachedResponse, Outcome};
pub use flight::{Claim, Computed, StreamClaim};
pub use fresh::{PageEnd, Position, RowChange, Stamp};
pub use store::Unavailable;
pub use writes::{COMMIT_WITHIN, WRITE_IN_FLIGHT_FOR, WriteInFlight};

use flight::Flight;
use fresh::is_fresh;
#[cfg(test)]
use fresh::{RecordedWrite, freshness_columns};
use keys::Keys;
#[cfg(test)]
use keys::MAX_READABLE_QUERY;
use local::LocalStore;
use memory::MemoryStore;
use redis::RedisStore;
use spread::{jittered, random_unit};
use store::Store;
use windows::LocalWindows;

use crate::datasets::{Dataset, Value};
use crate::identity::Tokens;
use crate::query::{Query, QueryKind};

/// Default byte budget of the memory tier.
pub const DEFAULT_MAX_BYTES: usize = crate::config::DEFAULT_CACHE_MAX_BYTES;

/// How long past its freshness an answer is kept, to be served as STALE while the database fails.
pub const STALE_GRACE: Duration = Duration::from_secs(300);

/// What a cached answer is about: a list or an export (its query), one column's facets under a
/// query's filters, or one item (its key).
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Query(&'a Query),
    Facets { query: &'a Query, column: usize },
    Item(&'a Value),
}

pub struct Cache {
    keys: Keys,
    default_ttl: Duration,
    /// The memory tier: the only entry store in process mode, the near cache (L1) otherwise.
    memory: MemoryStore,
    store: Box<dyn Store>,
    /// Rate windows counted here while a shared store does not answer.
    fallback_windows: LocalWindows,
    /// Keys of streamed answers being computed in this instance.
    streaming: Mutex<HashSet<String>>,
    /// Datasets with a write that the store did not record: purged before anything is served.
    unrecorded: Mutex<HashSet<String>>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    hot: hot::HotKeys,
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stales: AtomicU64,
    /// Large answers (exports) this instance is serving now, shared by all their readers: one
    /// copy per answer however many clients download it, and no Redis round trip for the next.
    large: Mutex<HashMap<String, Weak<CachedResponse>>>,
    /// Reads of entries from the store under way: concurrent readers of one key share one.
    fetches: Mutex<HashMap<String, Arc<Fetch>>>,
}

/// One shared read of an entry from the store.
type Fetch = OnceCell<Option<Arc<CachedResponse>>>;

impl Cache {
    pub fn in_process(prefix: &str, default_ttl: Duration, max_bytes: usize) -> Self {
        Cache::over(
            Box::new(LocalStore::default()),
            prefix,
            default_ttl,
            max_bytes,
        )
    }

    /// Shared through Redis (`redis://`, `rediss://`, or a comma list of cluster nodes), with a
    /// near cache of `near_max_bytes`. Connects on first use.
    pub fn with_redis(
        url: &str,
        prefix: &str,
        default_ttl: Duration,
        near_max_bytes: usize,
    ) -> Self {
        Cache::over(
            Box::new(RedisStore::new(url, prefix)),
            prefix,
            default_ttl,
            near_max_bytes,
        )
    }

    /// Redis connections authenticate with Entra ID tokens (`REDIS_AUTH=entra`).
    pub fn with_entra_tokens(mut self, tokens: Arc<Tokens>) -> Self {
        self.store.use_entra_tokens(tokens);
        self
    }

    fn over(store: Box<dyn Store>, prefix: &str, default_ttl: Duration, max_bytes: usize) -> Self {
        Cache {
            keys: Keys::new(prefix),
            default_ttl,
            memory: MemoryStore::new(max_bytes),
            store,
            fallback_windows: LocalWindows::default(),
            streaming: Mutex::default(),
            unrecorded: Mutex::default(),
            flights: Mutex::default(),
            hot: hot::HotKeys::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            stales: AtomicU64::new(0),
            large: Mutex::default(),
            fetches: Mutex::default(),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Whether the store is shared by instances (Redis), so a round trip away.
    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// The readable key: `<prefix>:<dataset>:<kind>:<canonical query>` (a long query cut, with
    /// a hash of the whole).
    pub fn key(&self, dataset: &Dataset, subject: &Subject<'_>) -> String {
        self.keys.key(dataset, subject)
    }

    /// The dataset's current write position.
    pub async fn position(&self, dataset: &str) -> Result<Position, Unavailable> {
        self.store.position(dataset).await
    }

    /// Counts one event under `name` in a fixed `window` (shared through the store, or in this
    /// process while the store is unreachable): the count so far and the time left in the window.
    pub async fn count_in_window(&self, name: &str, window: Duration) -> (u64, Duration) {
        match self.store.count_in_window(name, window).await {
            Ok(counted) => counted,
            Err(Unavailable) => self.fallback_windows.count(name, window),
        }
    }

    /// Takes one back from `name`'s current window, if it has one.
    pub async fn uncount_in_window(&self, name: &str) {
        if self.store.uncount_in_window(name).await.is_err() {
            self.fallback_windows.uncount(name);
        }
    }

    /// The count of `name`'s current window and the time left in it, without counting anything.
    pub async fn peek_window(&self, name: &str) -> (u64, Duration) {
        match self.store.peek_window(name).await {
            Ok(peeked) => peeked,
            Err(Unavailable) => self.fallback_windows.peek(name),
        }
    }

    /// Makes every cached answer of the dataset stale (after an import, or on request).
    pub async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
        self.memory
            .remove_prefix(&self.keys.dataset_prefix(dataset));
        self.store.purge(dataset).await
    }

    /// A fresh stored answer, from the memory tier, a large answer being served, or the store.
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
        let store = &*self.store;
        if let Some(entry) = self.memory.get(key)
            && usable(&entry)
            && is_fresh(store, dataset, subject, &entry).await?
        {
            return Ok(Some(entry));
        }
        if let Some(entry) = self.large_in_use(key)
            && usable(&entry)
            && is_fresh(store, dataset, subject, &entry).await?
        {
            return Ok(Some(entry));
        }
        if store.is_shared()
            && let Some(entry) = self.fetch(subject, key).await?
            && usable(&entry)
            && is_fresh(store, dataset, subject, &entry).await?
        {
            return Ok(Some(self.keep_near(dataset, key, entry)));
        }
        Ok(None)
    }

    /// The entry stored under `key`, fetched once however many ask at the same time (an
    /// export's may be large); exports get longer to arrive than the rest.
    async fn fetch(
        &self,
        subject: &Subject<'_>,
        key: &str,
    ) -> Result<Option<Arc<CachedResponse>>, Unavailable> {
        let large = matches!(subject, Subject::Query(query) if query.kind == QueryKind::Export);
        let cell = Arc::clone(self.fetches.lock().entry(key.to_owned()).or_default());
        let fetched = cell
            .get_or_try_init(|| async {
                Ok::<_, Unavailable>(self.store.get(key, large).await?.map(Arc::new))
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
        self.large.lock().get(key).and_then(Weak::upgrade)
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
            .filter_map(Weak::upgrade)
            .map(|entry| entry.size())
            .sum()
    }

    /// Keeps a copy fetched from the store in the near cache until the entry expires (as an
    /// answer computed here is kept): every read checks it against the write log anyway, and its
    /// plain and brotli copies are then made once per entry and instance, not again each time a
    /// shorter near lifetime ran out. Small ones (their plain body decompressed now, so the
    /// budget counts what it will hold), and large ones that take at most a quarter of the budget
    /// (so a hot export is not read from Redis on every request); larger ones are only shared
    /// while they are being sent.
    fn keep_near(
        &self,
        dataset: &Dataset,
        key: &str,
        entry: Arc<CachedResponse>,
    ) -> Arc<CachedResponse> {
        if entry.is_small() {
            let _ = entry.plain_body();
        } else {
            self.share_large(key, &entry);
        }
        if entry.is_small() || entry.size() <= self.memory.max_bytes() / 4 {
            let lifetime =
                Duration::from_millis(entry.expires_at_ms.saturating_sub(entry::unix_ms()));
            self.memory.insert(
                key.to_owned(),
                Arc::clone(&entry),
                lifetime.min(self.ttl(dataset)),
            );
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
            Ok(None) => self
                .position(&dataset.name)
                .await
                .map(|position| Err(position.stamp())),
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

    /// Stores an answer that was streamed and compressed on the way (see [`Cache::lookup_streamed`]).
    pub async fn store_streamed(&self, key: &str, entry: Arc<CachedResponse>) {
        self.share_large(key, &entry);
        let ttl = Duration::from_millis(entry.expires_at_ms.saturating_sub(entry::unix_ms()));
        // In process the memory tier is the cache: keep the entry unless it would crowd out a
        // quarter of it.
        if !self.store.is_shared() && entry.size() <= self.memory.max_bytes() / 4 {
            self.memory
                .insert(key.to_owned(), Arc::clone(&entry), ttl + STALE_GRACE);
        }
        let _ = self.store.set(key, &entry, ttl + STALE_GRACE).await;
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

    /// The answer still stored for `key` past its time to live (while the database fails), if
    /// no write since has changed it: expired, never stale.
    async fn last_good(
        &self,
        dataset: &Dataset,
        subject: &Subject<'_>,
        key: &str,
    ) -> Option<Arc<CachedResponse>> {
        let entry = match self.memory.get(key) {
            Some(entry) => entry,
            None => Arc::new(self.store.get(key, false).await.ok()??),
        };
        is_fresh(&*self.store, dataset, subject, &entry)
            .await
            .unwrap_or(false)
            .then_some(entry)
    }

    /// Purges `dataset` if a write to it could not be recorded; fails while that is not done.
    /// The mark is taken before the purge, so a write that fails to be recorded meanwhile marks
    /// the dataset again rather than being cleared by a purge that ran before it.
    async fn purge_unrecorded(&self, dataset: &str) -> Result<(), Unavailable> {
        if !self.unrecorded.lock().remove(dataset) {
            return Ok(());
        }
        if let Err(unavailable) = self.purge(dataset).await {
            self.unrecorded.lock().insert(dataset.to_owned());
            return Err(unavailable);
        }
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

    /// A round trip to the store (nothing to check in process mode).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        self.store.ping().await
    }

    /// `(entries, bytes)` of one dataset held by this instance.
    pub fn usage_of(&self, dataset: &str) -> (usize, usize) {
        self.memory.usage_of(&self.keys.dataset_prefix(dataset))
    }

    /// `(entries, bytes)` held by this instance.
    pub fn usage(&self) -> (usize, usize) {
        self.memory.usage()
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

    /// Moves this instance's access counts to the store's scores.
    pub async fn flush_hot_keys(&self) -> Result<(), Unavailable> {
        let counts = self.hot.drain();
        if counts.is_empty() {
            return Ok(());
        }
        self.store
            .add_hot(counts.into_iter().collect(), hot::MAX_SCORED)
            .await
    }

    /// The hottest paths, most accessed first; with `decay`, their scores are halved afterwards
    /// (warm-up does this, so popularity fades).
    pub async fn hot_paths(
        &self,
        limit: usize,
        decay: bool,
    ) -> Result<Vec<(String, f64)>, Unavailable> {
        self.flush_hot_keys().await?;
        self.store.top_hot(limit, decay).await
    }
}

#[cfg(test)]
mod tests;
