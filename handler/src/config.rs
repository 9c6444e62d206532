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
//! - `AZURE_STORAGE_CONNECTION_STRING`: the account key for imports from Blob Storage (else a SAS
//!   in the blob URL, else the instance's Entra ID identity); `AZURE_STORAGE_AUTH` (`sas`, `key`,
//!   `identity` or `anonymous`) forces one way.
//!
//! Errors name the variable. Secrets (a database password) are never printed.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

pub const DEFAULT_DATABASE_URL: &str = "sqlite://smartcache.db";
pub const DEFAULT_DATASETS_DIR: &str = "datasets";
pub const DEFAULT_PORT: u16 = 7071;
pub const DEFAULT_CACHE_PREFIX: &str = "smartcache";
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 1800;
pub const DEFAULT_JWT_TTL_SECONDS: u64 = 3600;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
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
    pub cache_ttl: std::time::Duration,
    pub jwt_secret: Option<Secret>,
    pub jwt_ttl: std::time::Duration,
    pub auth_provider: AuthProvider,
    pub firebase_api_key: Option<Secret>,
    pub firebase_project_id: Option<String>,
    pub firebase_auth_emulator_host: Option<String>,
    pub firebase_certs_url: Option<String>,
    pub max_body_bytes: usize,
    pub cors_allowed_origins: Vec<String>,
    pub storage_connection_string: Option<Secret>,
    pub storage_auth: Option<String>,
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
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
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
        let positive = |name: &str, default: u64| -> anyhow::Result<u64> {
            match non_empty(name) {
                None => Ok(default),
                Some(value) => value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n > 0)
                    .with_context(|| format!("{name} must be a positive number, not {value:?}")),
            }
        };
        let jwt_ttl = positive("JWT_TTL_SECONDS", DEFAULT_JWT_TTL_SECONDS)?;
        let max_body_bytes = positive("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES as u64)?;
        let jwt_secret = non_empty("JWT_SECRET");
        if let Some(secret) = &jwt_secret
            && secret.len() < crate::auth::token::MIN_SECRET_BYTES
        {
            bail!(
                "JWT_SECRET must be at least {} bytes long (it is {})",
                crate::auth::token::MIN_SECRET_BYTES,
                secret.len()
            );
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
        let firebase_api_key = non_empty("FIREBASE_API_KEY").map(Secret);
        if auth_provider == AuthProvider::Firebase {
            if firebase_project_id.is_none() {
                bail!("AUTH_PROVIDER=firebase needs FIREBASE_PROJECT_ID");
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
            database_url: Secret(database_url),
            datasets_dir: datasets_dir.into(),
            port,
            bind_address,
            redis_url: non_empty("REDIS_URL").map(Secret),
            redis_entra,
            cache_prefix,
            cache_ttl: std::time::Duration::from_secs(cache_ttl),
            jwt_secret: jwt_secret.map(Secret),
            jwt_ttl: std::time::Duration::from_secs(jwt_ttl),
            auth_provider,
            firebase_api_key,
            firebase_project_id,
            firebase_auth_emulator_host,
            firebase_certs_url: non_empty("FIREBASE_CERTS_URL"),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            cors_allowed_origins,
            storage_connection_string: non_empty("AZURE_STORAGE_CONNECTION_STRING").map(Secret),
            storage_auth,
        })
    }
}

/// A value that must not reach logs: `Debug` and `Display` print a redacted form.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep the scheme: it is useful and never secret.
        match self.0.split_once("://") {
            Some((scheme, _)) => write!(f, "{scheme}://[redacted]"),
            None => f.write_str("[redacted]"),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
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
