//! The cache's admin view and purge (admins only).

use serde_json::json;

use super::{Caller, Service, ServiceError};
use crate::datasets::Level;

/// Hot reads the admin view lists.
const ADMIN_HOT_KEYS: usize = 20;

impl Service {
    /// Hits, misses and their ratio, what this instance holds per dataset, the hot reads and
    /// every dataset's write position.
    #[tracing::instrument(level = "debug", name = "service.cache_report", skip_all)]
    pub async fn cache_report(&self, caller: &Caller) -> Result<serde_json::Value, ServiceError> {
        self.authorize(caller, Level::Admin).await?;
        let cache = &self.cache;
        let (hits, misses) = (cache.hit_count(), cache.miss_count());
        let lookups = hits + misses;
        let hot = cache
            .hot_paths(ADMIN_HOT_KEYS, false)
            .await
            .unwrap_or_default();
        let mut datasets = Vec::new();
        for dataset in self.catalog.iter() {
            let (entries, bytes) = cache.usage_of(&dataset.name);
            let position = cache.position(&dataset.name).await.ok();
            datasets.push(json!({
                "name": dataset.name,
                "near_entries": entries,
                "near_bytes": bytes,
                "write_position": position.map(|p| json!({"epoch": p.epoch, "seq": p.seq, "settled": p.settled})),
            }));
        }
        let (entries, bytes) = cache.usage();
        Ok(json!({
            "backend": cache.backend(),
            "hits": hits,
            "misses": misses,
            "bypasses": cache.bypass_count(),
            "stale": cache.stale_count(),
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
            "near": {"entries": entries, "bytes": bytes},
            "hot_keys": hot.iter().map(|(path, score)| json!({"path": path, "score": score})).collect::<Vec<_>>(),
            "datasets": datasets,
        }))
    }

    /// Every cached answer of dataset `name` (a parameter the caller must give) becomes stale.
    #[tracing::instrument(level = "debug", name = "service.purge", skip_all, fields(dataset = name))]
    pub async fn purge(&self, caller: &Caller, name: Option<&str>) -> Result<(), ServiceError> {
        self.authorize(caller, Level::Admin).await?;
        let name = name.ok_or_else(|| ServiceError::invalid("dataset", "is required"))?;
        if self.catalog.get(name).is_none() {
            return Err(ServiceError::invalid(
                "dataset",
                format!("there is no dataset named {name:?}"),
            ));
        }
        self.cache
            .purge(name)
            .await
            .map_err(|_| ServiceError::Unavailable)
    }
}

/// How long the health check waits for the database before calling it down.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Service {
    /// Whether the database answers, and the checks' report: `ok`, or `degraded` when the
    /// database or the cache does not answer. A cache that is down costs speed, not answers
    /// (requests bypass it): the instance stays in service but says it is degraded.
    #[tracing::instrument(level = "debug", name = "service.health", skip_all)]
    pub async fn health(&self) -> (bool, serde_json::Value) {
        let started = std::time::Instant::now();
        let ping = tokio::time::timeout(HEALTH_TIMEOUT, self.storage.ping()).await;
        let latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
        let backend = self.storage.backend();
        let database = match ping {
            Ok(Ok(())) => json!({"status": "ok", "backend": backend, "latency_ms": latency_ms}),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "health check: database failed");
                json!({"status": "down", "backend": backend, "error": error.to_string()})
            }
            Err(_) => json!({"status": "down", "backend": backend, "error": "timed out"}),
        };
        let cache_started = std::time::Instant::now();
        let cache = match self.cache.ping().await {
            Ok(()) => json!({"status": "ok", "backend": self.cache.backend(),
                "latency_ms": (cache_started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0}),
            Err(_) => json!({"status": "down", "backend": self.cache.backend()}),
        };
        let database_up = database["status"] == "ok";
        let status = if database_up && cache["status"] == "ok" {
            "ok"
        } else {
            "degraded"
        };
        let body = json!({"status": status, "checks": {"database": database, "cache": cache}});
        (database_up, body)
    }
}
