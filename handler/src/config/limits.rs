//! What one client may make the server spend: the listener's timeouts and caps, and what one
//! request may make it read, hold and compute.

use std::time::Duration;

use super::DEFAULT_MAX_BODY_BYTES;
use super::vars::Vars;

/// The listener's timeouts and connection cap (see [`crate::server`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `HEADER_TIMEOUT_SECONDS`: from a request's first byte to its last header.
    pub header_timeout: Duration,
    /// `IDLE_TIMEOUT_SECONDS`: an open connection with no request under way.
    pub idle_timeout: Duration,
    /// `WRITE_TIMEOUT_SECONDS`: a response write making no progress (the client stopped reading).
    pub write_timeout: Duration,
    /// `MAX_CONNECTIONS`: open connections per instance.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: open connections from one client address (trusted proxies,
    /// the Functions host among them, are exempt).
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_per_address: 64,
        }
    }
}

/// What one request may make the server read, hold and compute.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// `MAX_URI_BYTES`: path and query string together (414 beyond).
    pub max_uri_bytes: usize,
    /// `MAX_BODY_BYTES`: a request body (413 beyond).
    pub max_body_bytes: usize,
    /// `BODY_TIMEOUT_SECONDS`: reading a request body (408 beyond).
    pub body_timeout: Duration,
    pub query: QueryLimits,
    /// `EXPORT_CONCURRENCY`: uncached exports computed at once per instance (503 beyond). Keep it
    /// below the database pool's size: the rest is for ordinary reads, logins and writes.
    pub export_concurrency: usize,
    /// `EXPORT_MAX_BYTES`: the compressed size of one export held while it is computed.
    pub export_max_bytes: usize,
    /// `EXPORT_MEMORY_BYTES`: large answers (exports) held at once while they are sent, each
    /// counted once however many clients read it (503 beyond).
    pub export_memory_bytes: usize,
    /// `MAX_DATABASE_READS`: database reads for cache misses at once; `None`, the pool's size
    /// less one, which leaves a connection to logins, writes and health checks.
    pub database_reads: Option<usize>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_uri_bytes: 4096,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_timeout: Duration::from_secs(30),
            query: QueryLimits::default(),
            export_concurrency: 2,
            export_max_bytes: 128 << 20,
            export_memory_bytes: 512 << 20,
            database_reads: None,
        }
    }
}

/// What a query string may hold (400 beyond, naming the parameter).
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// `MAX_QUERY_PARAMETERS`: parameters in one query string.
    pub max_parameters: usize,
    /// `MAX_FILTER_REPEATS`: repeats of one list filter (`genres=a&genres=b`).
    pub max_filter_repeats: usize,
    /// `MAX_VALUE_CHARS`: characters in one filter value (in one value of an any-of list).
    pub max_value_chars: usize,
    /// `MAX_ANY_OF_VALUES`: values in one any-of filter (`rating.in=PG,PG-13`).
    pub max_any_of: usize,
    /// `MAX_CURSOR_BYTES`: the length of a cursor (the ones this API makes are far shorter).
    pub max_cursor_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            // Every filter a dataset documents fits (movies: 69 with sort, limit and cursor).
            max_parameters: 128,
            max_filter_repeats: 8,
            max_value_chars: 512,
            max_any_of: 64,
            // A cursor carries a sort value: a 300-character title sorts, encoded, into ~1.6 KB.
            max_cursor_bytes: 2048,
        }
    }
}

impl ConnectionLimits {
    /// The defaults, each overridden by its variable.
    pub fn from_vars(vars: &Vars<impl Fn(&str) -> Option<String>>) -> anyhow::Result<Self> {
        let defaults = ConnectionLimits::default();
        Ok(ConnectionLimits {
            header_timeout: vars.seconds("HEADER_TIMEOUT_SECONDS", defaults.header_timeout)?,
            idle_timeout: vars.seconds("IDLE_TIMEOUT_SECONDS", defaults.idle_timeout)?,
            write_timeout: vars.seconds("WRITE_TIMEOUT_SECONDS", defaults.write_timeout)?,
            max_connections: vars.count("MAX_CONNECTIONS", defaults.max_connections)?,
            max_per_address: vars.count("MAX_CONNECTIONS_PER_ADDRESS", defaults.max_per_address)?,
        })
    }
}

impl RequestLimits {
    /// The defaults, each overridden by its variable.
    pub fn from_vars(vars: &Vars<impl Fn(&str) -> Option<String>>) -> anyhow::Result<Self> {
        let defaults = RequestLimits::default();
        let query = &defaults.query;
        Ok(RequestLimits {
            max_uri_bytes: vars.count("MAX_URI_BYTES", defaults.max_uri_bytes)?,
            max_body_bytes: vars.count("MAX_BODY_BYTES", defaults.max_body_bytes)?,
            body_timeout: vars.seconds("BODY_TIMEOUT_SECONDS", defaults.body_timeout)?,
            query: QueryLimits {
                max_parameters: vars.count("MAX_QUERY_PARAMETERS", query.max_parameters)?,
                max_filter_repeats: vars.count("MAX_FILTER_REPEATS", query.max_filter_repeats)?,
                max_value_chars: vars.count("MAX_VALUE_CHARS", query.max_value_chars)?,
                max_any_of: vars.count("MAX_ANY_OF_VALUES", query.max_any_of)?,
                max_cursor_bytes: vars.count("MAX_CURSOR_BYTES", query.max_cursor_bytes)?,
            },
            export_concurrency: vars.count("EXPORT_CONCURRENCY", defaults.export_concurrency)?,
            export_max_bytes: vars.count("EXPORT_MAX_BYTES", defaults.export_max_bytes)?,
            export_memory_bytes: vars.count("EXPORT_MEMORY_BYTES", defaults.export_memory_bytes)?,
            database_reads: match vars.non_empty("MAX_DATABASE_READS") {
                None => None,
                Some(_) => Some(vars.count("MAX_DATABASE_READS", 1)?),
            },
        })
    }
}
