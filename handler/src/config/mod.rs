//! Settings, read once at start-up from the environment (Function App settings in Azure).
//!
//! Variables read here:
//! - `DATABASE_URL`: `sqlite://…` (default [`DEFAULT_DATABASE_URL`]) or `postgres://…`;
//! - `DATASETS_DIR`: where the dataset declarations live (default `datasets`);
//! - `FUNCTIONS_CUSTOMHANDLER_PORT` (set by the Functions host), else `FUNCTIONS_HTTPWORKER_PORT`
//!   (older hosts), else `PORT`, else [`DEFAULT_PORT`];
//! - `BIND_ADDRESS` (default `127.0.0.1`, where the Functions host connects): `0.0.0.0` in a
//!   container;
//! - `REDIS_URL`: `redis://…`, `rediss://…` (TLS) or a comma list of cluster nodes; unset means
//!   the in-process cache;
//! - `REDIS_AUTH=entra`: Redis connections authenticate with the instance's Entra ID token
//!   (Azure Cache for Redis with access keys disabled; `REDIS_URL` then has no password);
//! - `CACHE_PREFIX` (default `smartcache`): the first part of every cache key;
//! - `CACHE_TTL_SECONDS` (default 1800): lifetime of cached answers of datasets that declare none;
//! - `JWT_SECRET` (at least 32 bytes): signs access tokens; without it, accounts and writes are
//!   off (read-only). Setting `AUTH_PROVIDER` without it is an error;
//! - `JWT_TTL_SECONDS` (default 3600): access token lifetime;
//! - `AUTH_PROVIDER` (`local`, the default, or `firebase`), with `FIREBASE_API_KEY`,
//!   `FIREBASE_PROJECT_ID`, `FIREBASE_AUTH_EMULATOR_HOST` and `FIREBASE_CERTS_URL` (where the
//!   ID-token certificates are fetched; Google's URL unless set, which only tests need);
//! - `MAX_BODY_BYTES` (default 1 MiB): the largest request body accepted;
//! - `CORS_ALLOWED_ORIGINS`: a comma list of origins allowed to call the API from a browser;
//!   unset means no CORS headers at all;
//! - `AZURE_STORAGE_CONNECTION_STRING`: the account key for imports and syncs from Blob Storage
//!   (else a SAS in the blob URL, else the instance's Entra ID identity); `AZURE_STORAGE_AUTH`
//!   (`sas`, `key`, `identity` or `anonymous`) forces one way;
//! - `TRUSTED_PROXIES`: a comma list of addresses or CIDR ranges whose `X-Forwarded-For` is
//!   believed (the Functions host on loopback is trusted when `FUNCTIONS_CUSTOMHANDLER_PORT` is
//!   set); `TIMER_SECRET`: lets a caller other than the Functions host invoke `/WarmCache` and
//!   `/SyncDatasets`;
//! - `CACHE_MAX_BYTES`: the in-process cache's budget (the near cache's with Redis);
//! - `FIREBASE_ALLOW_UNVERIFIED_EMAIL`: accept Firebase accounts whose email is not verified;
//! - the limits on what one client may make the server spend, each with a default in
//!   [`ConnectionLimits`] and [`RequestLimits`]: `HEADER_TIMEOUT_SECONDS`,
//!   `IDLE_TIMEOUT_SECONDS`, `WRITE_TIMEOUT_SECONDS`, `MAX_CONNECTIONS`,
//!   `MAX_CONNECTIONS_PER_ADDRESS`, `BODY_TIMEOUT_SECONDS`,
//!   `MAX_URI_BYTES`, `MAX_QUERY_PARAMETERS`, `MAX_FILTER_REPEATS`, `MAX_VALUE_CHARS`,
//!   `MAX_CURSOR_BYTES`, `EXPORT_CONCURRENCY`, `EXPORT_MAX_BYTES`, `EXPORT_MEMORY_BYTES`,
//!   `MAX_DATABASE_READS`.
//!
//! The platform's own variables (telemetry export, the Azure identity, AWS Lambda) are read here
//! too, in [`TelemetrySettings`], [`IdentitySettings`] and [`started_by_lambda`]; no other module
//! reads the environment.
//!
//! Errors name the variable. Secrets (a database password) are never printed.

mod limits;
mod platform;
mod proxies;
mod secret;
mod vars;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use limits::{ConnectionLimits, QueryLimits, RequestLimits};
pub use platform::{IdentitySettings, TelemetrySettings, started_by_lambda};
pub use proxies::{TrustedProxies, canonical_ip};
pub use secret::Secret;
use vars::Vars;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://smartcache.db";
pub const DEFAULT_DATASETS_DIR: &str = "datasets";
pub const DEFAULT_PORT: u16 = 7071;
pub const DEFAULT_CACHE_PREFIX: &str = "smartcache";
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 1800;
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The in-process cache's byte budget (the near cache's when Redis is used).
pub const DEFAULT_CACHE_MAX_BYTES: usize = 64 << 20;
/// The shortest `JWT_SECRET` accepted (HS256 wants a key at least as long as its hash).
pub const MIN_SECRET_BYTES: usize = 32;
const PORT_VARIABLES: [&str; 3] = [
    "FUNCTIONS_CUSTOMHANDLER_PORT",
    "FUNCTIONS_HTTPWORKER_PORT",
    "PORT",
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret,
    pub datasets_dir: PathBuf,
    pub port: u16,
    pub bind_address: std::net::IpAddr,
    pub redis_url: Option<Secret>,
    pub redis_entra: bool,
    pub cache_prefix: String,
    pub cache_ttl: Duration,
    pub jwt_secret: Option<Secret>,
    pub jwt_ttl: Duration,
    pub auth_provider: AuthProvider,
    pub firebase_api_key: Option<Secret>,
    pub firebase_project_id: Option<String>,
    pub firebase_auth_emulator_host: Option<String>,
    pub firebase_certs_url: Option<String>,
    pub firebase_allow_unverified_email: bool,
    pub cors_allowed_origins: Vec<String>,
    pub storage_connection_string: Option<Secret>,
    pub storage_auth: Option<String>,
    pub cache_max_bytes: usize,
    /// Set when the Functions host started this process (`FUNCTIONS_CUSTOMHANDLER_PORT`): the
    /// host is then the loopback peer, which forwards requests and invokes timers.
    pub under_functions_host: bool,
    pub trusted_proxies: TrustedProxies,
    pub timer_secret: Option<Secret>,
    pub connections: ConnectionLimits,
    pub requests: RequestLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProvider {
    Local,
    Firebase,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let vars = Vars::new(lookup);
        let non_empty = |name: &str| vars.non_empty(name);
        let database_url =
            non_empty("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let datasets_dir =
            non_empty("DATASETS_DIR").unwrap_or_else(|| DEFAULT_DATASETS_DIR.to_owned());
        let mut port = DEFAULT_PORT;
        for name in PORT_VARIABLES {
            if let Some(value) = non_empty(name) {
                port = value.trim().parse().with_context(|| {
                    format!("{name} must be a TCP port number from 0 to 65535, not {value:?}")
                })?;
                break;
            }
        }
        let bind_address = match non_empty("BIND_ADDRESS") {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(value) => value.trim().parse().with_context(|| {
                format!("BIND_ADDRESS must be an IP address such as 0.0.0.0, not {value:?}")
            })?,
        };
        let cache_prefix =
            non_empty("CACHE_PREFIX").unwrap_or_else(|| DEFAULT_CACHE_PREFIX.to_owned());
        if cache_prefix.contains(char::is_whitespace) {
            bail!("CACHE_PREFIX must not contain spaces");
        }
        let cache_ttl = match non_empty("CACHE_TTL_SECONDS") {
            None => DEFAULT_CACHE_TTL_SECONDS,
            Some(value) => value
                .trim()
                .parse()
                .ok()
                .filter(|&s: &u64| s > 0)
                .with_context(|| {
                    format!("CACHE_TTL_SECONDS must be a positive number of seconds, not {value:?}")
                })?,
        };
        if let Some(url) = non_empty("REDIS_URL") {
            let first = url.split(',').next().unwrap_or_default().trim();
            let valid = first.starts_with("redis://")
                || first.starts_with("rediss://")
                || (url.contains(',') && first.contains(':'));
            if !valid {
                bail!(
                    "REDIS_URL must be redis://host:port, rediss://host:port, or a comma list of cluster nodes"
                );
            }
        }
        let jwt_ttl = vars.positive("JWT_TTL_SECONDS", DEFAULT_JWT_TTL_SECONDS)?;
        let jwt_secret = non_empty("JWT_SECRET");
        if let Some(secret) = &jwt_secret
            && secret.len() < MIN_SECRET_BYTES
        {
            bail!(
                "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long (it is {})",
                secret.len()
            );
        }
        let connections = ConnectionLimits::from_vars(&vars)?;
        let requests = RequestLimits::from_vars(&vars)?;
        let cache_max_bytes = vars.count("CACHE_MAX_BYTES", DEFAULT_CACHE_MAX_BYTES)?;
        let under_functions_host = vars
            .raw("FUNCTIONS_CUSTOMHANDLER_PORT")
            .or_else(|| vars.raw("FUNCTIONS_HTTPWORKER_PORT"))
            .is_some_and(|v| !v.trim().is_empty());
        let trusted_proxies =
            TrustedProxies::parse(&non_empty("TRUSTED_PROXIES").unwrap_or_default())
                .context("TRUSTED_PROXIES must be a comma list of IP addresses or CIDR ranges")?;
        let trusted_proxies = if under_functions_host {
            trusted_proxies.with_loopback()
        } else {
            trusted_proxies
        };
        let timer_secret = non_empty("TIMER_SECRET");
        if timer_secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_BYTES)
        {
            bail!("TIMER_SECRET must be at least {MIN_SECRET_BYTES} bytes long");
        }
        let auth_provider = match non_empty("AUTH_PROVIDER").map(|v| v.trim().to_ascii_lowercase())
        {
            None => AuthProvider::Local,
            Some(v) if jwt_secret.is_none() => {
                bail!(
                    "AUTH_PROVIDER={v} needs JWT_SECRET (at least 32 bytes) to sign access tokens"
                )
            }
            Some(v) if v == "local" => AuthProvider::Local,
            Some(v) if v == "firebase" => AuthProvider::Firebase,
            Some(v) => bail!("AUTH_PROVIDER must be local or firebase, not {v:?}"),
        };
        let firebase_project_id = non_empty("FIREBASE_PROJECT_ID");
        let firebase_auth_emulator_host = non_empty("FIREBASE_AUTH_EMULATOR_HOST");
        let firebase_api_key = non_empty("FIREBASE_API_KEY").map(Secret::new);
        if auth_provider == AuthProvider::Firebase {
            if firebase_project_id.is_none() {
                bail!("AUTH_PROVIDER=firebase needs FIREBASE_PROJECT_ID");
            }
            // Firebase's own rule: the emulator is for `demo-` projects, which no real
            // project can be named, so an emulator setting left on in production cannot make
            // unsigned tokens count there.
            if firebase_auth_emulator_host.is_some()
                && !firebase_project_id
                    .as_deref()
                    .is_some_and(|p| p.starts_with("demo-"))
            {
                bail!(
                    "FIREBASE_AUTH_EMULATOR_HOST is set, but FIREBASE_PROJECT_ID is not a demo- \
                     project: the Auth emulator is for demo- projects only"
                );
            }
            if firebase_api_key.is_none() && firebase_auth_emulator_host.is_none() {
                bail!("AUTH_PROVIDER=firebase needs FIREBASE_API_KEY (the Web API key)");
            }
        }
        let cors_allowed_origins = non_empty("CORS_ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let redis_entra = match non_empty("REDIS_AUTH").map(|v| v.trim().to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "entra" => true,
            Some(v) if v == "password" => false,
            Some(v) => bail!("REDIS_AUTH must be entra or password, not {v:?}"),
        };
        let storage_auth = non_empty("AZURE_STORAGE_AUTH").map(|v| v.trim().to_ascii_lowercase());
        if let Some(auth) = &storage_auth
            && !matches!(auth.as_str(), "sas" | "key" | "identity" | "anonymous")
        {
            bail!("AZURE_STORAGE_AUTH must be sas, key, identity or anonymous, not {auth:?}");
        }
        if !database_url.contains(':') {
            bail!(
                "DATABASE_URL must be a URL such as sqlite://smartcache.db or postgres://host/db"
            );
        }
        Ok(Settings {
            database_url: Secret::new(database_url),
            datasets_dir: datasets_dir.into(),
            port,
            bind_address,
            redis_url: non_empty("REDIS_URL").map(Secret::new),
            redis_entra,
            cache_prefix,
            cache_ttl: std::time::Duration::from_secs(cache_ttl),
            jwt_secret: jwt_secret.map(Secret::new),
            jwt_ttl: std::time::Duration::from_secs(jwt_ttl),
            auth_provider,
            firebase_api_key,
            firebase_project_id,
            firebase_auth_emulator_host,
            firebase_certs_url: non_empty("FIREBASE_CERTS_URL"),
            firebase_allow_unverified_email: vars.flag("FIREBASE_ALLOW_UNVERIFIED_EMAIL")?,
            cors_allowed_origins,
            storage_connection_string: non_empty("AZURE_STORAGE_CONNECTION_STRING")
                .map(Secret::new),
            storage_auth,
            cache_max_bytes,
            under_functions_host,
            trusted_proxies,
            timer_secret: timer_secret.map(Secret::new),
            connections,
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        Settings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_serve_the_embedded_database_on_7071() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 7071);
        assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
    }

    #[test]
    fn the_functions_host_port_wins() {
        let s = settings(&[("PORT", "8080"), ("FUNCTIONS_CUSTOMHANDLER_PORT", "4321")]).unwrap();
        assert_eq!(s.port, 4321);
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let err = settings(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "http")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{err}");
    }

    #[test]
    fn redis_urls_are_checked_and_secret() {
        let s = settings(&[("REDIS_URL", "rediss://:pw@cache.example:6380")]).unwrap();
        assert_eq!(format!("{:?}", s.redis_url), "Some(rediss://[redacted])");
        assert!(settings(&[("REDIS_URL", "127.0.0.1:7001,127.0.0.1:7002")]).is_ok());
        let err = settings(&[("REDIS_URL", "localhost")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_URL"), "{err}");
    }

    #[test]
    fn accounts_need_a_long_enough_secret() {
        let s = settings(&[]).unwrap();
        assert!(s.jwt_secret.is_none(), "no secret: read-only");
        let err = settings(&[("JWT_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("at least 32 bytes") && !err.contains("short"),
            "{err}"
        );
        let err = settings(&[("AUTH_PROVIDER", "local")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
        let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let s = settings(&[secret]).unwrap();
        assert_eq!(s.auth_provider, AuthProvider::Local);
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        let err = settings(&[secret, ("AUTH_PROVIDER", "firebase")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FIREBASE_PROJECT_ID"), "{err}");
    }

    #[test]
    fn the_database_password_never_prints() {
        let s = settings(&[("DATABASE_URL", "postgres://app:hunter2@db/x")]).unwrap();
        assert_eq!(format!("{:?}", s.database_url), "postgres://[redacted]");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
