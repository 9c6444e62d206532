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

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands as _, BasicAuth, Script, StreamingCredentialsProvider};
use tokio::sync::OnceCell;

use super::coalesce::Coalescer;
use super::entry::CachedResponse;
use super::{RecordedWrite, Stamp};
use crate::breaker::Breaker;
use crate::datasets::{Dataset, Value};
use crate::identity::{self, Tokens};

/// How long one Redis call may take before the request goes to the database instead.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a read of a possibly large entry (an export) may take.
const LARGE_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The pace writes of large entries are given time for (bytes per second).
const LARGE_WRITE_BYTES_PER_SECOND: u64 = 32 << 20;
/// The connection's own limit on waiting for an answer: the calls' timeouts above decide.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Redis is skipped after a failure.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// Redis did not answer (down, slow, refusing): the caller bypasses the cache.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the cache is unavailable")]
pub struct Unavailable;

enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

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

    /// Authenticates every connection with an Entra ID token (user: the token's object id) and
    /// authenticates live connections again with each new token, before the old one expires.
    pub fn use_entra_tokens(&mut self, tokens: Arc<Tokens>) {
        self.tokens = Some(tokens);
    }

    fn stamp_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:stamp", self.prefix)
    }

    fn writes_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:writes", self.prefix)
    }

    async fn connect(&self) -> redis::RedisResult<Connection> {
        if self.url.contains(',') {
            let nodes: Vec<String> = self
                .url
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    if n.contains("://") {
                        n.to_owned()
                    } else {
                        format!("redis://{n}")
                    }
                })
                .collect();
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(CALL_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(1);
            if let Some(tokens) = &self.tokens {
                builder = builder.set_credentials_provider(EntraCredentials(Arc::clone(tokens)));
            }
            let client = builder.build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(self.url.as_str())?;
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1);
            if let Some(tokens) = &self.tokens {
                config = config.set_credentials_provider(EntraCredentials(Arc::clone(tokens)));
            }
            Ok(Connection::Standalone(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
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
            let connection = self.connection.get_or_try_init(|| self.connect()).await?;
            let conn = match connection {
                Connection::Standalone(c) => Conn::Standalone(c.clone()),
                Connection::Cluster(c) => Conn::Cluster(c.clone()),
            };
            call(conn).await
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

    #[tracing::instrument(name = "redis.get", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    pub async fn get(&self, key: &str) -> Result<Option<CachedResponse>, Unavailable> {
        self.get_within(key, CALL_TIMEOUT * 2).await
    }

    /// [`RedisStore::get`] of an entry that may be large (an export).
    #[tracing::instrument(name = "redis.get", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    pub async fn get_large(&self, key: &str) -> Result<Option<CachedResponse>, Unavailable> {
        self.get_within(key, LARGE_READ_TIMEOUT).await
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

    /// Whether `key` exists (a lease, say).
    pub async fn exists(&self, key: &str) -> Result<bool, Unavailable> {
        let key = key.to_owned();
        self.run(|mut conn| async move {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&key);
            conn.query::<bool>(&exists).await
        })
        .await
    }

    #[tracing::instrument(name = "redis.set", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    pub async fn set(
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
    pub async fn stamp(&self, dataset: &str) -> Result<Stamp, Unavailable> {
        self.stamp_reads
            .read(dataset, || self.read_stamp(dataset), Err(Unavailable))
            .await
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

    /// The writes after `seq`, or `None` when some of them are no longer remembered.
    #[tracing::instrument(name = "redis.writes_since", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    pub async fn writes_since(
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
    pub async fn record_write(
        &self,
        dataset: &str,
        write: String,
        capacity: usize,
    ) -> Result<u64, Unavailable> {
        let (stamp, writes) = (self.stamp_key(dataset), self.writes_key(dataset));
        self.run(|mut conn| async move {
            let script = Script::new(RECORD_WRITE);
            let mut invocation = script.key(stamp);
            invocation.key(writes).arg(write).arg(capacity);
            conn.invoke(&invocation).await
        })
        .await
    }

    /// Counts one event under `name` in a fixed window: the count so far and the time until
    /// the window ends. Used for login attempts, shared by every instance.
    pub async fn count_in_window(
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
    pub async fn uncount_in_window(&self, name: &str) -> Result<(), Unavailable> {
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
    pub async fn peek_window(&self, name: &str) -> Result<(u64, Duration), Unavailable> {
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
    pub async fn try_lease(
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
    pub async fn release_lease(&self, lease_key: &str, token: &str) -> Result<(), Unavailable> {
        let (key, token) = (lease_key.to_owned(), token.to_owned());
        self.run(|mut conn| async move {
            let script = Script::new(RELEASE_LEASE);
            let mut invocation = script.key(key);
            invocation.arg(token);
            conn.invoke::<i64>(&invocation).await.map(|_| ())
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), Unavailable> {
        self.run(
            |mut conn| async move { conn.query::<String>(&redis::cmd("PING")).await.map(|_| ()) },
        )
        .await
    }

    fn hot_key(&self) -> String {
        format!("{}:hot", self.prefix)
    }

    /// Adds local access counts to the shared sorted set of hot paths, which keeps its
    /// `keep` highest scores only.
    pub async fn add_hot(
        &self,
        counts: Vec<(String, u64)>,
        keep: usize,
    ) -> Result<(), Unavailable> {
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
    pub async fn top_hot(
        &self,
        limit: usize,
        decay: bool,
    ) -> Result<Vec<(String, f64)>, Unavailable> {
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
    pub async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
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

/// Credentials from Entra ID for redis-rs: the current token at once, then each next one when
/// the current enters its refresh window; redis-rs sends `AUTH <oid> <token>` on every live
/// connection as each arrives, and uses the latest for new connections.
struct EntraCredentials(Arc<Tokens>);

/// After a failed token fetch, the next try.
const TOKEN_RETRY: Duration = Duration::from_secs(10);

impl StreamingCredentialsProvider for EntraCredentials {
    fn subscribe(
        &self,
    ) -> Pin<Box<dyn futures_util::Stream<Item = redis::RedisResult<BasicAuth>> + Send + 'static>>
    {
        let tokens = Arc::clone(&self.0);
        Box::pin(futures_util::stream::unfold(
            None,
            move |next_at: Option<SystemTime>| {
                let tokens = Arc::clone(&tokens);
                async move {
                    if let Some(at) = next_at {
                        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    let now = SystemTime::now();
                    let item = match tokens.current(identity::REDIS_SCOPE).await {
                        Ok((token, next)) => {
                            let user = token.object_id().unwrap_or_else(|| "default".to_owned());
                            (Ok(BasicAuth::new(user, token.secret)), next)
                        }
                        Err(error) => {
                            tracing::warn!(
                                error = format!("{error:#}"),
                                "no Entra ID token for Redis"
                            );
                            let failure = redis::RedisError::from((
                                redis::ErrorKind::AuthenticationFailed,
                                "no Entra ID token for Redis",
                                format!("{error:#}"),
                            ));
                            (Err(failure), now + TOKEN_RETRY)
                        }
                    };
                    Some((item.0, Some(item.1)))
                }
            },
        ))
    }
}

/// A cheap clone of the shared connection for one call.
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn get(&mut self, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        match self {
            Conn::Standalone(c) => c.get(key).await,
            Conn::Cluster(c) => c.get(key).await,
        }
    }

    async fn set_px(&mut self, key: &str, value: Vec<u8>, millis: u64) -> redis::RedisResult<()> {
        let options = redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis));
        match self {
            Conn::Standalone(c) => c.set_options(key, value, options).await,
            Conn::Cluster(c) => c.set_options(key, value, options).await,
        }
    }

    async fn hget(
        &mut self,
        key: &str,
        fields: &[&str],
    ) -> redis::RedisResult<(Option<u64>, Option<u64>)> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg(fields);
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn pipeline(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Conn::Standalone(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn pipeline_query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn lrange(
        &mut self,
        key: &str,
        start: isize,
        stop: isize,
    ) -> redis::RedisResult<Vec<String>> {
        match self {
            Conn::Standalone(c) => c.lrange(key, start, stop).await,
            Conn::Cluster(c) => c.lrange(key, start, stop).await,
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => invocation.invoke_async(c).await,
            Conn::Cluster(c) => invocation.invoke_async(c).await,
        }
    }
}

impl RecordedWrite {
    /// `"<seq> [old, new]"` as the write log stores it.
    pub fn encode_payload(old: &Option<Vec<Value>>, new: &Option<Vec<Value>>) -> String {
        let row = |r: &Option<Vec<Value>>| match r {
            Some(values) => serde_json::Value::Array(values.iter().map(Value::to_json).collect()),
            None => serde_json::Value::Null,
        };
        serde_json::Value::Array(vec![row(old), row(new)]).to_string()
    }

    fn decode(dataset: &Dataset, item: &str) -> Option<RecordedWrite> {
        let (seq, payload) = item.split_once(' ')?;
        let json: serde_json::Value = serde_json::from_str(payload).ok()?;
        let row = |v: &serde_json::Value| -> Option<Option<Vec<Value>>> {
            match v {
                serde_json::Value::Null => Some(None),
                serde_json::Value::Array(cells) if cells.len() == dataset.columns.len() => {
                    Some(Some(
                        cells
                            .iter()
                            .zip(&dataset.columns)
                            .map(|(cell, column)| Value::from_json(column, cell))
                            .collect::<Option<_>>()?,
                    ))
                }
                _ => None,
            }
        };
        Some(RecordedWrite {
            seq: seq.parse().ok()?,
            old: row(json.get(0)?)?,
            new: row(json.get(1)?)?,
        })
    }
}
