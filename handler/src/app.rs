//! Wiring: settings → dataset catalog → storage (lazy) → API (hot routes, router) → listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::ConnectionLimits;
use crate::config::Settings;
use crate::datasets::Catalog;
use crate::http::{self, AppState, TimerAccess};
use crate::service::{BlobAccess, Service};
use crate::storage;

/// Everything a command needs. Building it opens no connection: pools connect on first use, so a
/// Functions instance answers the host's first probe at once.
pub struct Context {
    pub settings: Settings,
    pub service: Service,
}

impl Context {
    pub fn from_settings(settings: Settings) -> anyhow::Result<Context> {
        let catalog = Catalog::load_dir(&settings.datasets_dir)?;
        let storage = storage::open(settings.database_url.expose())?;
        // Redis connects lazily, on the first cached request.
        let (prefix, ttl) = (&settings.cache_prefix, settings.cache_ttl);
        let budget = settings.cache_max_bytes;
        let cache = match &settings.redis_url {
            Some(url) => match settings.redis_entra {
                true => Cache::with_redis(url.expose(), prefix, ttl, budget)
                    .with_entra_tokens(crate::identity::azure()),
                false => Cache::with_redis(url.expose(), prefix, ttl, budget),
            },
            None => Cache::in_process(prefix, ttl, budget),
        };
        let cache = Arc::new(cache);
        let auth = Auth::from_settings(&settings, Arc::clone(&storage), Arc::clone(&cache))?;
        if auth.is_none() {
            tracing::info!("JWT_SECRET is not set: accounts and writes are off (read-only)");
        }
        let mut service = Service::new(Arc::new(catalog), storage, cache)
            .with_auth(auth)
            .with_limits(settings.requests.clone());
        service.blob_access = Arc::new(BlobAccess {
            connection_string: settings.storage_connection_string.clone(),
            auth: settings.storage_auth.clone(),
        });
        Ok(Context { settings, service })
    }

    /// The HTTP front end's state: the service, and what only HTTP needs.
    pub fn app_state(&self) -> AppState {
        let mut state = AppState::from_service(self.service.clone());
        state.cors_allowed_origins = Arc::new(self.settings.cors_allowed_origins.clone());
        state.trusted_proxies = Arc::new(self.settings.trusted_proxies.clone());
        state.timers = Arc::new(TimerAccess {
            host_on_loopback: self.settings.under_functions_host,
            secret: self.settings.timer_secret.clone(),
        });
        state
    }
}

/// A bound, not yet running server. Binding first lets tests use port 0.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
}

impl Application {
    /// Listens on 127.0.0.1 (the Functions host and tests).
    pub async fn bind(state: AppState, port: u16) -> anyhow::Result<Application> {
        Application::bind_to(state, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Listens on any address (`BIND_ADDRESS=0.0.0.0` in a container).
    pub async fn bind_to(state: AppState, address: SocketAddr) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        Ok(Application {
            listener,
            state,
            limits: ConnectionLimits::default(),
        })
    }

    /// The listener's timeouts and connection cap (defaults otherwise).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Access counts are aggregated here and flushed now and then, so that the warm-up run on
        // any instance sees what is hot on all of them.
        let cache = Arc::clone(&self.state.cache);
        let flusher = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                every.tick().await;
                let _ = cache.flush_hot_keys().await;
                cache.settle_unrecorded().await;
            }
        });
        let trusted = (*self.state.trusted_proxies).clone();
        let served = crate::server::serve(
            self.listener,
            http::api(self.state),
            self.limits,
            trusted,
            shutdown_signal(),
        )
        .await;
        flusher.abort();
        served?;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(vars: &[(&str, &str)]) -> Context {
        let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets");
        let settings = Settings::from_lookup(|name| {
            if name == "DATASETS_DIR" {
                return Some(datasets.to_owned());
            }
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        Context::from_settings(settings).unwrap()
    }

    #[tokio::test]
    async fn redis_url_selects_the_shared_cache_and_accounts_need_a_secret() {
        let local = context(&[]);
        assert_eq!(local.service.cache.backend(), "in-process");
        assert!(local.service.auth.is_none(), "read-only without JWT_SECRET");
        let shared = context(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ]);
        assert_eq!(shared.service.cache.backend(), "redis");
        assert!(shared.service.auth.is_some());
    }
}
