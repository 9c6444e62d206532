//! The shared store: Redis standalone (`redis://`, `rediss://`) or Cluster (a comma list of nodes).
//!
//! Keys, for a prefix `p` and dataset `d`:
//! - `p:d:<kind>:<canonical query>`: an entry (header line + gzipped body), with a TTL;
//! - `p:{d}:stamp` (hash: `epoch`, `seq`, `run`), `p:{d}:writes` (list of `"<seq> <json [old,
//!   new]>"` or `"<seq> *"`) and `p:{d}:inflight` (sorted set of `"<epoch>:<seq>"` by the time
//!   each write stops counting as in flight) with `p:{d}:inflight-tags` (hash: each of those
//!   members' row tag): the dataset's write position, recent writes, and writes recorded but not
//!   yet committed. The `{d}` hash tag keeps the four in one cluster slot, so the scripts that
//!   change them are atomic on a cluster too.
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
use super::fresh::{Position, RecordedWrite};
use super::records::RecordKey;
use super::store::{InFlight, NewWrite, Store, Unavailable};
use crate::breaker::Breaker;
use crate::datasets::Dataset;
use crate::identity::Tokens;
use connection::{Conn, Connection};

mod connection;
mod mirror;
mod scripts;

use mirror::Mirror;
use scripts::{SCRIPTS, WRITES_OF_EPOCH};

const NO_SCRIPT: redis::ServerErrorKind = redis::ServerErrorKind::NoScript;

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
    position_reads: Coalescer<Result<Position, Unavailable>>,
    /// Each dataset's position read, built once (`EVALSHA` of the position script with its three
    /// keys): it runs for every cached read not already proven fresh, and formatting its keys and
    /// packing its arguments each time cost ~3,000 instructions of a ~60,000-instruction hit.
    position_commands: parking_lot::RwLock<
        std::collections::HashMap<String, Arc<redis::Cmd>, foldhash::fast::RandomState>,
    >,
    /// The write log's records read so far, per dataset (see `writes_since`).
    mirrors: parking_lot::Mutex<std::collections::HashMap<String, Mirror>>,
}

/// Records a log read takes beyond the reader's position, for writes that landed since.
const WRITES_AHEAD: u64 = 64;

const COUNT_IN_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}";

/// A missing counter stays missing (a `DECR` would make one without an expiry).
const UNCOUNT_IN_WINDOW: &str = r"
if redis.call('GET', KEYS[1]) then return redis.call('DECR', KEYS[1]) end
return 0";

const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

impl RedisStore {
    /// Prepares the store; nothing connects until the first call.
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisStore {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            tokens: None,
            connection: OnceCell::new(),
            breaker: Breaker::new(BREAKER_OPEN_FOR),
            position_reads: Coalescer::default(),
            position_commands: Default::default(),
            mirrors: Default::default(),
        }
    }

    fn stamp_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:stamp", self.prefix)
    }

    fn writes_key(&self, dataset: &str) -> String {
        format!("{}:{{{dataset}}}:writes", self.prefix)
    }

    /// The keys of a dataset's position, in the order the position scripts take them: the
    /// stamp, the log, the writes in flight and their tags.
    fn position_keys(&self, dataset: &str) -> [String; 4] {
        [
            self.stamp_key(dataset),
            self.writes_key(dataset),
            format!("{}:{{{dataset}}}:inflight", self.prefix),
            format!("{}:{{{dataset}}}:inflight-tags", self.prefix),
        ]
    }

    /// Runs one of the position scripts over `dataset`'s keys with `args`.
    async fn run_position_script<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &'static Script,
        dataset: &str,
        args: Vec<String>,
    ) -> Result<T, Unavailable> {
        let keys = self.position_keys(dataset);
        self.run(|mut conn| async move {
            let mut invocation = script.key(&keys[0]);
            invocation.key(&keys[1]).key(&keys[2]).key(&keys[3]);
            for arg in &args {
                invocation.arg(arg);
            }
            conn.invoke(&invocation).await
        })
        .await
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

    /// The prebuilt position read of `dataset` (see `position_commands`).
    fn position_command(&self, dataset: &str) -> Arc<redis::Cmd> {
        if let Some(command) = self.position_commands.read().get(dataset) {
            return Arc::clone(command);
        }
        let [stamp, writes, inflight, _] = self.position_keys(dataset);
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(SCRIPTS.position.get_hash())
            .arg(3)
            .arg(stamp)
            .arg(writes)
            .arg(inflight);
        let command = Arc::new(command);
        self.position_commands
            .write()
            .insert(dataset.to_owned(), Arc::clone(&command));
        command
    }

    async fn read_position(&self, dataset: &str) -> Result<Position, Unavailable> {
        let command = self.position_command(dataset);
        let reply: String = self
            .run(|mut conn| async move {
                match conn.query::<String>(&command).await {
                    // A Redis that has not seen the script yet (a restart, `SCRIPT FLUSH`): load
                    // it and send the command again, within the same call and timeout.
                    Err(error) if error.kind() == redis::ErrorKind::Server(NO_SCRIPT) => {
                        conn.load(&SCRIPTS.position).await?;
                        conn.query::<String>(&command).await
                    }
                    answered => answered,
                }
            })
            .await?;
        parse_position(&reply).ok_or(Unavailable)
    }

    /// At most `count` items of the write log from the one after seq `after` on, if the
    /// dataset is still in `epoch`.
    async fn fetch_writes(
        &self,
        dataset: &str,
        epoch: u64,
        after: u64,
        count: u64,
    ) -> Result<Option<Vec<String>>, Unavailable> {
        let (stamp, writes) = (self.stamp_key(dataset), self.writes_key(dataset));
        self.run(|mut conn| async move {
            let mut invocation = WRITES_OF_EPOCH.key(stamp);
            invocation.key(writes).arg(epoch).arg(after).arg(count);
            conn.invoke(&invocation).await
        })
        .await
    }

    fn hot_key(&self) -> String {
        format!("{}:hot", self.prefix)
    }
}

/// The position script's reply, `"<epoch> <seq> <settled>"` (a reply from Redis is input: a
/// malformed one is no position).
fn parse_position(reply: &str) -> Option<Position> {
    let mut parts = reply.split(' ').map(str::parse::<u64>);
    let (Some(Ok(epoch)), Some(Ok(seq)), Some(Ok(settled)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(Position {
        epoch,
        seq,
        settled,
    })
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
    #[tracing::instrument(name = "redis.position", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn position(&self, dataset: &str) -> Result<Position, Unavailable> {
        self.position_reads
            .read(dataset, || self.read_position(dataset), Err(Unavailable))
            .await
    }

    #[tracing::instrument(name = "redis.begin_write", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn begin_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
        lifetime: Duration,
    ) -> Result<InFlight, Unavailable> {
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let args = vec![
            write.payload.clone(),
            capacity.to_string(),
            lifetime_ms.to_string(),
            write.in_flight_tag(),
        ];
        let (epoch, seq, alone): (String, u64, i64) = self
            .run_position_script(&SCRIPTS.begin_write, dataset, args)
            .await?;
        Ok(InFlight {
            epoch: epoch.parse().map_err(|_| Unavailable)?,
            seq,
            alone: alone == 1,
        })
    }

    #[tracing::instrument(name = "redis.end_write", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn end_write(&self, dataset: &str, write: InFlight) -> Result<bool, Unavailable> {
        let args = vec![write.epoch.to_string(), write.seq.to_string()];
        let stands: i64 = self
            .run_position_script(&SCRIPTS.end_write, dataset, args)
            .await?;
        Ok(stands == 1)
    }

    #[tracing::instrument(name = "redis.record_write", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn record_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
    ) -> Result<(), Unavailable> {
        let args = vec![write.payload.clone(), capacity.to_string()];
        self.run_position_script::<u64>(&SCRIPTS.record_write, dataset, args)
            .await
            .map(|_| ())
    }

    /// The writes of `epoch` after `seq`, or `None` when some of them are no longer remembered.
    /// Records never change once written (a seq is given once per epoch), so the ones already
    /// read are kept in process and only newer ones are fetched.
    #[tracing::instrument(name = "redis.writes_since", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn writes_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        current: u64,
    ) -> Result<Option<Vec<Arc<RecordedWrite>>>, Unavailable> {
        if current <= seq {
            return Ok(Some(Vec::new()));
        }
        self.mirrored(dataset, epoch, seq, current, |mirror| {
            mirror.between(seq, current)
        })
        .await
    }

    #[tracing::instrument(name = "redis.key_touched_since", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn key_touched_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        current: u64,
        key: &RecordKey,
    ) -> Result<Option<bool>, Unavailable> {
        if current <= seq {
            return Ok(Some(false));
        }
        self.mirrored(dataset, epoch, seq, current, |mirror| {
            mirror.touched_between(seq, current, key)
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
        self.run_position_script::<i64>(&SCRIPTS.purge, dataset, Vec::new())
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_position;

    #[test]
    fn a_position_reply_is_three_numbers_or_no_position() {
        let position = parse_position("1764770000123456 42 41").unwrap();
        assert_eq!(
            (position.epoch, position.seq, position.settled),
            (1_764_770_000_123_456, 42, 41)
        );
        for malformed in ["", "1 2", "1 2 3 4", "a 2 3", "1 -2 3", "1 2 3.5", "1  2 3"] {
            assert!(parse_position(malformed).is_none(), "{malformed:?}");
        }
    }
}
