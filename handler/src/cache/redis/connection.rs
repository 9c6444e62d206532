//! The connection to Redis, standalone or cluster, and Entra ID credentials for it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands as _, BasicAuth, StreamingCredentialsProvider};

use crate::identity::{self, Tokens};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// The connection's own limit on waiting for an answer: the calls' timeouts decide.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The instance's one connection, opened on first use.
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Opens the connection (a cluster when `url` lists several nodes).
    pub async fn open(url: &str, tokens: Option<&Arc<Tokens>>) -> redis::RedisResult<Connection> {
        if url.contains(',') {
            let nodes: Vec<String> = url
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
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(1);
            if let Some(tokens) = tokens {
                builder = builder.set_credentials_provider(EntraCredentials(Arc::clone(tokens)));
            }
            let client = builder.build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(url)?;
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1);
            if let Some(tokens) = tokens {
                config = config.set_credentials_provider(EntraCredentials(Arc::clone(tokens)));
            }
            Ok(Connection::Standalone(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// A cheap clone for one call.
    pub fn conn(&self) -> Conn {
        match self {
            Connection::Standalone(c) => Conn::Standalone(c.clone()),
            Connection::Cluster(c) => Conn::Cluster(c.clone()),
        }
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
    pub async fn get(&mut self, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        match self {
            Conn::Standalone(c) => c.get(key).await,
            Conn::Cluster(c) => c.get(key).await,
        }
    }

    pub async fn set_px(
        &mut self,
        key: &str,
        value: Vec<u8>,
        millis: u64,
    ) -> redis::RedisResult<()> {
        let options = redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis));
        match self {
            Conn::Standalone(c) => c.set_options(key, value, options).await,
            Conn::Cluster(c) => c.set_options(key, value, options).await,
        }
    }

    pub async fn pipeline(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Conn::Standalone(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub async fn pipeline_query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Loads `script` (on every primary of a cluster), so its `EVALSHA` runs again.
    pub async fn load(&mut self, script: &redis::Script) -> redis::RedisResult<String> {
        match self {
            Conn::Standalone(c) => script.prepare_invoke().load_async(c).await,
            Conn::Cluster(c) => script.prepare_invoke().load_async(c).await,
        }
    }

    pub async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Standalone(c) => invocation.invoke_async(c).await,
            Conn::Cluster(c) => invocation.invoke_async(c).await,
        }
    }
}
