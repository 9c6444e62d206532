//! The one store behind the cache: what every instance must agree on (write positions and the
//! write log, entries, leases, hot keys, rate-limit windows). [`super::local::LocalStore`] keeps
//! it in this process; [`super::redis::RedisStore`] shares it through Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::entry::CachedResponse;
use super::fresh::{Position, RecordedWrite, RowChange};
use super::records::RecordKey;
use crate::datasets::Dataset;
use crate::identity::Tokens;

/// The store did not answer (Redis down, slow, refusing): the caller bypasses the cache.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the cache is unavailable")]
pub struct Unavailable;

/// A write as it is handed to the store: the rows the write log keeps (or a change of every
/// answer), and the same encoded (what a shared store writes; its size was checked by the
/// caller).
#[derive(Clone)]
pub struct NewWrite {
    pub rows: Vec<RowChange>,
    pub everything: bool,
    pub payload: String,
    /// The keys of the rows it touches (`fresh::row_keys`).
    pub keys: Vec<RecordKey>,
}

/// The in-flight tag of a write of many rows or of everything (see [`NewWrite::in_flight_tag`]).
pub const SET_WIDE_TAG: &str = "*";

/// Whether writes tagged `a` and `b` may touch the same row (the Redis scripts decide alike).
pub fn tags_conflict(a: &str, b: &str) -> bool {
    a == b || a == SET_WIDE_TAG || b == SET_WIDE_TAG
}

impl NewWrite {
    /// What a write in flight is known by to the writes recorded after it: its row's key, or
    /// [`SET_WIDE_TAG`] when it may touch more than one row. Two writes conflict when their
    /// tags are equal or either is set-wide.
    pub fn in_flight_tag(&self) -> String {
        match self.keys.as_slice() {
            [key] if !self.everything => key.tag(),
            _ => SET_WIDE_TAG.to_owned(),
        }
    }
}

/// Where a write recorded in flight sits in its dataset's log, to end it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub epoch: u64,
    pub seq: u64,
    /// No other write of the same row (nor one of many rows or of everything) was in flight when
    /// this one was recorded: every such record before it had ended (see `Cache::keep_written`).
    pub alone: bool,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// `"in-process"` or `"redis"`, as reported to clients and in `/api/health`.
    fn backend(&self) -> &'static str;

    /// Whether other instances read the same store. When not, entries live only in the
    /// cache's memory tier ([`Store::get`] finds nothing) and no leases are needed, since
    /// the instance's own flights already share computations.
    fn is_shared(&self) -> bool;

    /// Authenticates with Entra ID tokens (Redis without access keys); nothing to do in process.
    fn use_entra_tokens(&mut self, _tokens: Arc<Tokens>) {}

    /// The dataset's current write position: the last recorded write, and the last before any
    /// write still in flight.
    async fn position(&self, dataset: &str) -> Result<Position, Unavailable>;

    /// Records a write about to commit at the next position, keeping the newest `capacity`
    /// writes, and marks it in flight for at most `lifetime` (see [`Position::settled`]).
    async fn begin_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
        lifetime: Duration,
    ) -> Result<InFlight, Unavailable>;

    /// Ends a write begun by [`Store::begin_write`]: `true` when its record still stands (it was
    /// in flight, in the same epoch); `false` when the store lost it (a restart, a purge) and
    /// the caller must record the write again.
    async fn end_write(&self, dataset: &str, write: InFlight) -> Result<bool, Unavailable>;

    /// Records a finished write at the next position (one whose record in flight was lost).
    async fn record_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
    ) -> Result<(), Unavailable>;

    /// The writes of `epoch` after `seq` up to at least `current`, or `None` when some of them
    /// are no longer remembered (or the epoch is over).
    async fn writes_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        current: u64,
    ) -> Result<Option<Vec<Arc<RecordedWrite>>>, Unavailable>;

    /// Whether a write of `epoch` after `seq` (up to at least `current`) touched the row keyed
    /// `key` or changed everything; `None` when some of them are no longer remembered (or the
    /// epoch is over). [`Store::writes_since`] for an item, answered from an index.
    async fn key_touched_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        current: u64,
        key: &RecordKey,
    ) -> Result<Option<bool>, Unavailable>;

    /// Starts a new epoch of the dataset: every answer stamped before is stale (and, while a
    /// write of the old epoch is in flight, every answer computed in the new one).
    async fn purge(&self, dataset: &str) -> Result<(), Unavailable>;

    /// The entry stored under `key`; `large` gives an export's value longer to arrive.
    async fn get(&self, key: &str, large: bool) -> Result<Option<CachedResponse>, Unavailable>;

    async fn set(
        &self,
        key: &str,
        entry: &CachedResponse,
        ttl: Duration,
    ) -> Result<(), Unavailable>;

    /// Whether this caller now holds the lease `lease_key` (for `ttl`, or until released).
    async fn try_lease(
        &self,
        lease_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, Unavailable>;

    async fn lease_exists(&self, lease_key: &str) -> Result<bool, Unavailable>;

    /// Ends the lease if `token` still holds it.
    async fn release_lease(&self, lease_key: &str, token: &str) -> Result<(), Unavailable>;

    /// Adds access counts to the hot-path scores, which keep their `keep` highest.
    async fn add_hot(&self, counts: Vec<(String, u64)>, keep: usize) -> Result<(), Unavailable>;

    /// The `limit` hottest paths, highest first; with `decay`, every score is halved after.
    async fn top_hot(&self, limit: usize, decay: bool) -> Result<Vec<(String, f64)>, Unavailable>;

    /// Counts one event under `name` in a fixed `window`: the count so far and the time left.
    async fn count_in_window(
        &self,
        name: &str,
        window: Duration,
    ) -> Result<(u64, Duration), Unavailable>;

    /// Takes one back from `name`'s current window, if it has one.
    async fn uncount_in_window(&self, name: &str) -> Result<(), Unavailable>;

    /// `name`'s current count (0 without a window) and the time left, counting nothing.
    async fn peek_window(&self, name: &str) -> Result<(u64, Duration), Unavailable>;

    /// A round trip to the store.
    async fn ping(&self) -> Result<(), Unavailable>;
}
