//! The shared store: Redis standalone (`redis://`, `rediss://`) or Cluster (a comma list of nodes).
//!
//! Keys, for a prefix `p` and dataset `d`:
//! - `p:d:<kind>:<canonical query>`: an entry (header line + gzipped body), with a TTL;
//! - `p:{d}:stamp` (hash: `epoch`, `seq`) and `p:{d}:writes` (list of `"<seq> <json [old, new]>"`):
//!   the dataset's write position and recent writes. The `{d}` hash tag keeps the two in one
//!   cluster slot, so the scripts that change them are atomic on a cluster too.
//!
//! The connection opens lazily on first use and is shared by every request of the instance.
//! Every call has a short timeout, and after a failure a breaker skips Redis for a moment, so a
//! dead Redis costs no latency: the caller serves from the database instead (`X-Cache: BYPASS`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tokio::sync::OnceCell;

use super::coalesce::Coalescer;
use super::entry::CachedResponse;
use super::fresh::{RecordedWrite, Stamp};
use super::store::{NewWrite, Store, Unavailable};
use crate::breaker::Breaker;
use crate::datasets::Dataset;
use crate::identity::Tokens;
use connection::{Conn, Connection};

mod connection;

/// How long one Redis call may take before the request goes to the database instead.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a read of a possibly large entry (an export) may take.
const LARGE_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The pace writes of large entries are given time for (bytes per second).
const LARGE_WRITE_BYTES_PER_SECOND: u64 = 32 << 20;
/// How long Redis is skipped after a failure.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

pub struct RedisStore {
    url: String,
    prefix: String,
    /// Entra ID tokens as passwords (Azure Cache for Redis without access keys).
    tokens: Option<Arc<Tokens>>,
    connection: OnceCell<Connection>,
    breaker: Breaker,
    stamp_reads: Coalescer<Result<Stamp, Unavailable>>,
}

const RECORD_WRITE: &str = r"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('RPUSH', KEYS[2], seq .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return seq";

const COUNT_IN_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}";

/// A missing counter stays missing (a `DECR` would make one without an expiry).
const UNCOUNT_IN_WINDOW: &str = r"
if redis.call('GET', KEYS[1]) then return redis.call('DECR', KEYS[1]) end
return 0";

/// A dataset's position starts at a fresh epoch (the clock, in microseconds): if the stamp key
/// is ever lost (eviction, a restart without persistence), counting restarts from a new epoch and
/// can never again reach the position of an entry stored before.
const INIT_STAMP: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('HSETNX', KEYS[1], 'seq', 0)
return redis.call('HMGET', KEYS[1], 'epoch', 'seq')";

const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

const PURGE: &str = r"
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'seq', 0)
redis.call('DEL', KEYS[2])
return 1";

impl RedisStore {
    /// Prepares the store; nothing connects until the first call.
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisStore {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            tokens: None,
            connection: OnceCell::new(),
            breaker: Breaker::new(BREAKER_OPEN_FOR),
            stamp_reads: Coalescer::default(),
        }
    }

    fn stamp_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:stamp", self.prefix)
    }

    fn writes_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:writes", self.prefix)
    }

    /// Runs `call` on the shared connection, within the timeout, unless the breaker is open.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(CALL_TIMEOUT * 2, call).await
    }

    /// [`RedisStore::run`] with a timeout of its own (large values take longer to move).
    async fn run_within<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.is_open() {
            return Err(Unavailable);
        }
        let result = tokio::time::timeout(timeout, async {
            let connection = self
                .connection
                .get_or_try_init(|| Connection::open(&self.url, self.tokens.as_ref()))
                .await?;
            call(connection.conn()).await
        })
        .await;
        match result {
            Ok(Ok(value)) => {
                self.breaker.close();
                Ok(value)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "redis call failed; bypassing the cache for a moment");
                self.breaker.trip();
                Err(Unavailable)
            }
            Err(_) => {
                tracing::warn!("redis call timed out; bypassing the cache for a moment");
                self.breaker.trip();
                Err(Unavailable)
            }
        }
    }

    async fn get_within(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<CachedResponse>, Unavailable> {
        let key = key.to_owned();
        let bytes: Option<Vec<u8>> = self
            .run_within(timeout, |mut conn| async move { conn.get(&key).await })
            .await?;
        Ok(bytes.and_then(CachedResponse::decode))
    }

    async fn read_stamp(&self, dataset: &str) -> Result<Stamp, Unavailable> {
        let key = self.stamp_key(dataset);
        let read_key = key.clone();
        let (epoch, seq): (Option<u64>, Option<u64>) = self
            .run(|mut conn| async move { conn.hget(&read_key, &["epoch", "seq"]).await })
            .await?;
        if let (Some(epoch), Some(seq)) = (epoch, seq) {
            return Ok(Stamp { epoch, seq });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let fresh_epoch = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
        let (epoch, seq): (Option<u64>, Option<u64>) = self
            .run(|mut conn| async move {
                let script = Script::new(INIT_STAMP);
                let mut invocation = script.key(key);
                invocation.arg(fresh_epoch);
                conn.invoke(&invocation).await
            })
            .await?;
        Ok(Stamp {
            epoch: epoch.unwrap_or(fresh_epoch),
            seq: seq.unwrap_or(0),
        })
    }

    fn hot_key(&self) -> String {
        format!("{}:hot", self.prefix)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// Every connection authenticates with an Entra ID token (user: the token's object id), and
    /// live connections again with each new token, before the old one expires.
    fn use_entra_tokens(&mut self, tokens: Arc<Tokens>) {
        self.tokens = Some(tokens);
    }

    #[tracing::instrument(name = "redis.get", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn get(&self, key: &str, large: bool) -> Result<Option<CachedResponse>, Unavailable> {
        let timeout = match large {
            true => LARGE_READ_TIMEOUT,
            false => CALL_TIMEOUT * 2,
        };
        self.get_within(key, timeout).await
    }

    async fn lease_exists(&self, lease_key: &str) -> Result<bool, Unavailable> {
        let key = lease_key.to_owned();
        self.run(|mut conn| async move {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&key);
            conn.query::<bool>(&exists).await
        })
        .await
    }

    #[tracing::instrument(name = "redis.set", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn set(
        &self,
        key: &str,
        entry: &CachedResponse,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let (key, bytes) = (key.to_owned(), entry.encode());
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let transfer =
            Duration::from_secs_f64(bytes.len() as f64 / LARGE_WRITE_BYTES_PER_SECOND as f64);
        self.run_within(CALL_TIMEOUT * 2 + transfer, |mut conn| async move {
            conn.set_px(&key, bytes, millis).await
        })
        .await
    }

    /// The dataset's write position, from a read issued after this call began (concurrent
    /// callers share one; see `coalesce`).
    #[tracing::instrument(name = "redis.stamp", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn stamp(&self, dataset: &str) -> Result<Stamp, Unavailable> {
        self.stamp_reads
            .read(dataset, || self.read_stamp(dataset), Err(Unavailable))
            .await
    }

    /// The writes after `seq`, or `None` when some of them are no longer remembered.
    #[tracing::instrument(name = "redis.writes_since", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn writes_since(
        &self,
        dataset: &Dataset,
        seq: u64,
        current: u64,
    ) -> Result<Option<Vec<RecordedWrite>>, Unavailable> {
        let missing = current.saturating_sub(seq);
        if missing == 0 {
            return Ok(Some(Vec::new()));
        }
        let key = self.writes_key(&dataset.name);
        let start = -i64::try_from(missing).unwrap_or(i64::MAX);
        let items: Vec<String> = self
            .run(|mut conn| async move { conn.lrange(&key, start as isize, -1).await })
            .await?;
        let writes: Vec<RecordedWrite> = items
            .iter()
            .filter_map(|item| RecordedWrite::decode(dataset, item))
            .collect();
        // Every write from seq + 1 on must be there (more may have landed since: also checked).
        let covered =
            writes.first().is_some_and(|w| w.seq <= seq + 1) && writes.len() == items.len();
        Ok(covered.then(|| writes.into_iter().filter(|w| w.seq > seq).collect()))
    }

    #[tracing::instrument(name = "redis.record_write", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn record_write(
        &self,
        dataset: &str,
        write: NewWrite,
        capacity: usize,
    ) -> Result<(), Unavailable> {
        let (stamp, writes) = (self.stamp_key(dataset), self.writes_key(dataset));
        self.run(|mut conn| async move {
            let script = Script::new(RECORD_WRITE);
            let mut invocation = script.key(stamp);
            invocation.key(writes).arg(write.payload).arg(capacity);
            conn.invoke::<u64>(&invocation).await.map(|_| ())
        })
        .await
    }

    /// Counts one event under `name` in a fixed window: the count so far and the time until
    /// the window ends. Used for login attempts, shared by every instance.
    async fn count_in_window(
        &self,
        name: &str,
        window: Duration,
    ) -> Result<(u64, Duration), Unavailable> {
        let key = format!("{}:limit:{name}", self.prefix);
        let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.run(|mut conn| async move {
            let script = Script::new(COUNT_IN_WINDOW);
            let mut invocation = script.key(key);
            invocation.arg(millis);
            let (count, left): (u64, i64) = conn.invoke(&invocation).await?;
            Ok((
                count,
                Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            ))
        })
        .await
    }

    /// Takes one back from `name`'s window, if it still exists.
    async fn uncount_in_window(&self, name: &str) -> Result<(), Unavailable> {
        let key = format!("{}:limit:{name}", self.prefix);
        self.run(|mut conn| async move {
            let script = Script::new(UNCOUNT_IN_WINDOW);
            let mut invocation = script.key(key);
            invocation.arg(0);
            conn.invoke::<i64>(&invocation).await.map(|_| ())
        })
        .await
    }

    /// The count of `name`'s current window (0 when there is none) and the time left in it.
    async fn peek_window(&self, name: &str) -> Result<(u64, Duration), Unavailable> {
        let key = format!("{}:limit:{name}", self.prefix);
        self.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
            let (count, left): (Option<u64>, i64) = conn.pipeline_query(&pipe).await?;
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            Ok((count.unwrap_or(0), left))
        })
        .await
    }

    /// `SET lease token NX PX ttl`: whether this caller now holds the lease.
    #[tracing::instrument(name = "redis.try_lease", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn try_lease(
        &self,
        lease_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, Unavailable> {
        let (key, token) = (lease_key.to_owned(), token.to_owned());
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.run(|mut conn| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&token).arg("NX").arg("PX").arg(millis);
            let reply: Option<String> = conn.query(&cmd).await?;
            Ok(reply.is_some())
        })
        .await
    }

    /// Deletes the lease if this caller still holds it.
    async fn release_lease(&self, lease_key: &str, token: &str) -> Result<(), Unavailable> {
        let (key, token) = (lease_key.to_owned(), token.to_owned());
        self.run(|mut conn| async move {
            let script = Script::new(RELEASE_LEASE);
            let mut invocation = script.key(key);
            invocation.arg(token);
            conn.invoke::<i64>(&invocation).await.map(|_| ())
        })
        .await
    }

    async fn ping(&self) -> Result<(), Unavailable> {
        self.run(
            |mut conn| async move { conn.query::<String>(&redis::cmd("PING")).await.map(|_| ()) },
        )
        .await
    }

    /// Adds local access counts to the shared sorted set of hot paths, which keeps its
    /// `keep` highest scores only.
    async fn add_hot(&self, counts: Vec<(String, u64)>, keep: usize) -> Result<(), Unavailable> {
        if counts.is_empty() {
            return Ok(());
        }
        let key = self.hot_key();
        let beyond = -i64::try_from(keep).unwrap_or(i64::MAX) - 1;
        self.run(|mut conn| async move {
            let mut pipe = redis::pipe();
            for (path, count) in counts {
                pipe.cmd("ZINCRBY").arg(&key).arg(count).arg(path).ignore();
            }
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(beyond)
                .ignore();
            conn.pipeline(&pipe).await
        })
        .await
    }

    /// The `limit` hottest paths; with `decay`, halves every score afterwards.
    async fn top_hot(&self, limit: usize, decay: bool) -> Result<Vec<(String, f64)>, Unavailable> {
        let key = self.hot_key();
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        self.run(|mut conn| async move {
            let mut cmd = redis::cmd("ZREVRANGE");
            cmd.arg(&key).arg(0).arg(stop).arg("WITHSCORES");
            let top: Vec<(String, f64)> = conn.query(&cmd).await?;
            if decay {
                let mut halve = redis::cmd("ZUNIONSTORE");
                halve.arg(&key).arg(1).arg(&key).arg("WEIGHTS").arg(0.5);
                let _: i64 = conn.query(&halve).await?;
                let mut forget = redis::cmd("ZREMRANGEBYSCORE");
                forget.arg(&key).arg("-inf").arg("(0.5");
                let _: i64 = conn.query(&forget).await?;
            }
            Ok(top)
        })
        .await
    }

    #[tracing::instrument(name = "redis.purge", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
        let (stamp, writes) = (self.stamp_key(dataset), self.writes_key(dataset));
        self.run(|mut conn| async move {
            let script = Script::new(PURGE);
            let mut invocation = script.key(stamp);
            invocation.key(writes);
            conn.invoke::<i64>(&invocation).await.map(|_| ())
        })
        .await
    }
}
