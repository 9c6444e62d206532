//! One database query per cold key: concurrent misses of a key at one write position share one
//! computation in this instance (a flight), and instances sharing a store take a lease so only
//! one of them computes while the others wait for its stored answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::entry::{CachedResponse, Outcome};
use super::fresh::is_fresh;
use super::fresh::{PageEnd, Position};
use super::spread::{jittered, lease_token};
use super::store::Unavailable;
use super::{Cache, STALE_GRACE, Subject};
use crate::datasets::Dataset;

/// One computation shared by the concurrent misses of a key at one write position.
pub(super) type Flight = OnceCell<(Arc<CachedResponse>, Outcome)>;

/// An answer as a read computed it.
pub struct Computed {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// For a page followed by another: where it ends (see [`PageEnd`]).
    pub page_end: Option<PageEnd>,
}

impl Computed {
    pub fn json(body: Vec<u8>) -> Computed {
        Computed {
            body,
            content_type: "application/json",
            page_end: None,
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
        if let Some((lease_key, token)) = self.lease.take()
            && self.cache.store.is_shared()
        {
            let cache = Arc::clone(&self.cache);
            // Dropped inside the runtime (a response body or a handler): release off this thread.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = cache.store.release_lease(&lease_key, &token).await;
                });
            }
        }
    }
}

enum Lease {
    /// Not shared between instances, or the store failed: compute without one.
    None,
    Held(String, String),
    /// Another instance stored the answer while we waited.
    Served(Arc<CachedResponse>),
}

impl Cache {
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
        Fut: Future<Output = Result<Computed, E>>,
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
        Fut: Future<Output = Result<Computed, E>>,
    {
        let stamp = match self.lookup(dataset, &subject, &key, warming).await {
            Ok(Some(entry)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((entry, Outcome::Hit));
            }
            // The position is read before the query starts: see the module documentation.
            Ok(None) => self.position(&dataset.name).await,
            Err(unavailable) => Err(unavailable),
        };
        // Boxed: inline, the miss's state (the query's future among it) would make every hit's
        // future that much larger, and a hit moves its future several times (~1,500 bytes here).
        Box::pin(self.miss(dataset, subject, key, stamp, compute, database_down)).await
    }

    /// [`Cache::get_or_compute_or_stale`] past a miss, from the position read for it.
    async fn miss<F, Fut, E>(
        &self,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: String,
        stamp: Result<Position, Unavailable>,
        compute: F,
        database_down: impl Fn(&E) -> bool,
    ) -> Result<(Arc<CachedResponse>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed, E>>,
    {
        let Ok(position) = stamp else {
            // The cache is down: answer from the database, store nothing.
            self.bypasses.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let computed = compute().await?;
            let entry = CachedResponse::new(
                computed.body,
                computed.content_type,
                started.elapsed(),
                Default::default(),
                Duration::ZERO,
            );
            return Ok((Arc::new(entry), Outcome::Bypass));
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let stamp = position.stamp();
        let flight_key = format!(
            "{key}@{}.{}.{}",
            position.epoch, position.seq, position.settled
        );
        let cell = Arc::clone(self.flights.lock().entry(flight_key.clone()).or_default());
        // Taken by whichever runs it: this caller's own flight, or its own computation after.
        let compute = parking_lot::Mutex::new(Some(compute));
        let computed_here = std::sync::atomic::AtomicBool::new(false);
        let result = cell
            .get_or_try_init(|| async {
                computed_here.store(true, Ordering::Relaxed);
                let compute = compute.lock().take().expect("a flight's closure runs once");
                // Another instance may be computing the same answer: wait for it rather than
                // query the database again.
                let lease = match self.lease_or_wait(dataset, &subject, &key).await {
                    Lease::Served(entry) => return Ok((entry, Outcome::Hit)),
                    lease => lease,
                };
                let started = Instant::now();
                let computed = match compute().await {
                    Ok(computed) => computed,
                    Err(error) => {
                        self.release(lease).await;
                        return Err(error);
                    }
                };
                let entry = self
                    .store_computed(dataset, &key, stamp, computed, started.elapsed())
                    .await;
                self.release(lease).await;
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
        // A computation that began while a write was in flight may predate its commit, and this
        // caller may have arrived after the write was acknowledged: it takes the shared answer
        // only if no write since its stamp changes it, and computes its own otherwise.
        if let Ok((entry, _)) = &result
            && !computed_here.load(Ordering::Relaxed)
            && !position.is_settled()
            && !is_fresh(&*self.store, dataset, &subject, entry)
                .await
                .unwrap_or(false)
            && let Some(compute) = compute.into_inner()
        {
            return self.compute_alone(stamp, key, dataset, compute).await;
        }
        match result {
            Err(error) if database_down(&error) => {
                match self.last_good(dataset, &subject, &key).await {
                    Some(entry) => {
                        self.stales.fetch_add(1, Ordering::Relaxed);
                        Ok((entry, Outcome::Stale))
                    }
                    None => Err(error),
                }
            }
            other => other,
        }
    }

    /// Computes and stores an answer without sharing the computation (see the caller).
    async fn compute_alone<F, Fut, E>(
        &self,
        stamp: super::Stamp,
        key: String,
        dataset: &Dataset,
        compute: F,
    ) -> Result<(Arc<CachedResponse>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed, E>>,
    {
        let started = Instant::now();
        let computed = compute().await?;
        let entry = self
            .store_computed(dataset, &key, stamp, computed, started.elapsed())
            .await;
        Ok((entry, Outcome::Miss))
    }

    /// A computed answer as an entry stamped `stamp`, kept in the memory tier and the store
    /// (a failed store costs the next reader a miss, nothing more).
    pub(super) async fn store_computed(
        &self,
        dataset: &Dataset,
        key: &str,
        stamp: super::Stamp,
        computed: Computed,
        compute_time: Duration,
    ) -> Arc<CachedResponse> {
        let ttl = jittered(self.ttl(dataset));
        let entry = Arc::new(
            CachedResponse::new(
                computed.body,
                computed.content_type,
                compute_time,
                stamp,
                ttl,
            )
            .ending_at(computed.page_end),
        );
        self.memory
            .insert(key.to_owned(), Arc::clone(&entry), ttl + STALE_GRACE);
        let _ = self.store.set(key, &entry, ttl + STALE_GRACE).await;
        entry
    }

    /// Claims the computation of a streamed answer (an export), or waits for the request that
    /// holds it, in this instance or (with a shared store) any other, and returns the answer it
    /// stored. The claim ends when the returned [`StreamClaim`] is dropped.
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

    /// With a shared store, takes the key's lease, or waits for the instance holding it to store
    /// the answer. A lease expires by itself if its holder dies.
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
        if !self.store.is_shared() {
            return Lease::None;
        }
        let lease_key = self.keys.lease_key(key);
        let token = lease_token();
        let deadline = Instant::now() + wait;
        let mut waited = false;
        loop {
            match self.store.try_lease(&lease_key, &token, lease_ttl).await {
                // Taken after another holder let go: it stored its answer first, so look.
                Ok(true) if waited => {
                    if let Some(entry) = self.fetch_fresh(dataset, subject, key).await {
                        let _ = self.store.release_lease(&lease_key, &token).await;
                        return Lease::Served(entry);
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
            if self.store.lease_exists(&lease_key).await.unwrap_or(true) {
                if Instant::now() > deadline {
                    return Lease::None;
                }
                continue;
            }
            if let Some(entry) = self.fetch_fresh(dataset, subject, key).await {
                return Lease::Served(entry);
            }
            if Instant::now() > deadline {
                return Lease::None; // the holder is slow: answer this request ourselves
            }
        }
    }

    /// The answer another instance stored under `key`, if it is fresh (kept near when small).
    async fn fetch_fresh(
        &self,
        dataset: &Dataset,
        subject: &Subject<'_>,
        key: &str,
    ) -> Option<Arc<CachedResponse>> {
        let entry = self.fetch(subject, key).await.ok()??;
        let fresh = is_fresh(&*self.store, dataset, subject, &entry).await;
        fresh
            .unwrap_or(false)
            .then(|| self.keep_near(dataset, key, entry))
    }

    async fn release(&self, lease: Lease) {
        if let Lease::Held(lease_key, token) = lease {
            let _ = self.store.release_lease(&lease_key, &token).await;
        }
    }
}
