//! The cache's admin view and the warm-up (the `WarmCache` timer function and `handler warm`).
//!
//! The admin endpoints need an admin's token (and, in Azure, a function key).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt as _;

use super::data::Warming;
use super::{ApiError, AppState, json_response};
use crate::auth::Level;
use crate::config::{Secret, canonical_ip};

/// Hot paths that one warm-up run considers.
pub const WARM_LIMIT: usize = 50;
/// Hot paths the admin view lists.
const ADMIN_HOT_KEYS: usize = 20;

/// `GET /api/admin/cache`.
pub async fn view(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    super::auth::authorize(&state, &headers, Level::Admin).await?;
    let cache = &state.cache;
    let (hits, misses) = (cache.hit_count(), cache.miss_count());
    let lookups = hits + misses;
    let hot = cache
        .hot_paths(ADMIN_HOT_KEYS, false)
        .await
        .unwrap_or_default();
    let mut datasets = Vec::new();
    for dataset in state.catalog.iter() {
        let (entries, bytes) = cache.usage_of(&dataset.name);
        let stamp = cache.stamp(&dataset.name).await.ok();
        datasets.push(json!({
            "name": dataset.name,
            "near_entries": entries,
            "near_bytes": bytes,
            "write_position": stamp.map(|s| json!({"epoch": s.epoch, "seq": s.seq})),
        }));
    }
    let (entries, bytes) = cache.usage();
    let body = json!({
        "backend": cache.backend(),
        "hits": hits,
        "misses": misses,
        "bypasses": cache.bypass_count(),
        "stale": cache.stale_count(),
        "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
        "near": {"entries": entries, "bytes": bytes},
        "hot_keys": hot.iter().map(|(path, score)| json!({"path": path, "score": score})).collect::<Vec<_>>(),
        "datasets": datasets,
    });
    Ok(json_response(
        StatusCode::OK,
        body.to_string().into_bytes(),
        "",
    ))
}

/// `DELETE /api/admin/cache?dataset=NAME`: every cached answer of the dataset becomes stale.
pub async fn purge(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    super::auth::authorize(&state, &headers, Level::Admin).await?;
    let raw = raw.unwrap_or_default();
    let name = url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "dataset")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ApiError::invalid("dataset", "is required"))?;
    if state.catalog.get(&name).is_none() {
        return Err(ApiError::invalid(
            "dataset",
            format!("there is no dataset named {name:?}"),
        ));
    }
    state
        .cache
        .purge(&name)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"dataset": name, "purged": true})
            .to_string()
            .into_bytes(),
        "",
    ))
}

/// What a warm-up did: counts only (its log goes to whoever invoked it, and the hot paths are
/// other callers' queries).
#[derive(Debug, Default)]
pub struct WarmReport {
    pub lines: Vec<String>,
    pub refreshed: usize,
    pub fresh: usize,
    pub failed: usize,
    /// Hot paths that are not this API's data reads (nothing to replay).
    pub skipped: usize,
}

/// Replays the hottest paths through the router, refreshing what is missing or near expiry.
/// The paths come from the shared hot-key set, outside this process: any that is not a data
/// GET of this API is skipped, never trusted.
pub async fn warm(state: &AppState, limit: usize) -> WarmReport {
    let mut report = WarmReport::default();
    let paths = match state.cache.hot_paths(limit, true).await {
        Ok(paths) => paths,
        Err(_) => {
            report.failed += 1;
            report
                .lines
                .push("the cache is unavailable: nothing warmed".to_owned());
            return report;
        }
    };
    let router = super::router(state.clone());
    let started = std::time::Instant::now();
    for (path, _score) in paths {
        let request = (path.starts_with("/api/") && !path.starts_with("/api/admin"))
            .then(|| Request::get(path.as_str()).body(Body::empty()).ok())
            .flatten();
        let Some(mut request) = request else {
            report.skipped += 1;
            continue;
        };
        request.extensions_mut().insert(Warming);
        let Ok(response) = router.clone().oneshot(request).await;
        let outcome = response.headers().get("x-cache").map(|v| v.as_bytes());
        match (response.status().is_success(), outcome) {
            (true, Some(b"HIT")) => report.fresh += 1,
            (true, Some(b"MISS")) => report.refreshed += 1,
            _ => report.failed += 1,
        }
    }
    report.lines.push(format!(
        "warm-up: {} refreshed, {} fresh, {} failed, {} skipped in {:.1} ms",
        report.refreshed,
        report.fresh,
        report.failed,
        report.skipped,
        started.elapsed().as_secs_f64() * 1000.0
    ));
    crate::telemetry::metrics::warmup(
        report.refreshed as u64,
        report.fresh as u64,
        report.failed as u64,
    );
    report
}

/// Who may invoke the timer functions: the Functions host, which started this process and
/// connects from loopback (the host forwards only its HTTP functions' routes, never
/// `/WarmCache`, so outside callers cannot come in that way), or a caller that presents
/// `TIMER_SECRET` in [`TIMER_SECRET_HEADER`].
#[derive(Debug, Default)]
pub struct TimerAccess {
    pub host_on_loopback: bool,
    pub secret: Option<Secret>,
}

/// The request header that carries `TIMER_SECRET`.
pub const TIMER_SECRET_HEADER: &str = "x-smartcache-timer-secret";
/// The largest timer invocation body read (the host sends a few hundred bytes).
const MAX_INVOCATION_BYTES: usize = 64 * 1024;

impl TimerAccess {
    fn allows(&self, peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> bool {
        if self.host_on_loopback && peer.is_some_and(|p| canonical_ip(p).is_loopback()) {
            return true;
        }
        match (&self.secret, headers.get(TIMER_SECRET_HEADER)) {
            (Some(secret), Some(given)) => same_bytes(secret.expose().as_bytes(), given.as_bytes()),
            _ => false,
        }
    }
}

/// Compares without stopping at the first difference, so timing does not tell how much matched.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /WarmCache`: the timer invocation from the Functions host. Its body (`{"Data": {...},
/// "Metadata": {...}}`) carries nothing the warm-up needs: it is read (bounded) and dropped.
pub async fn warm_cache_invocation(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if !state.timers.allows(peer, request.headers()) {
        return Err(ApiError::Forbidden(
            "Timer functions are invoked by the Functions host only.",
        ));
    }
    let read = axum::body::to_bytes(request.into_body(), MAX_INVOCATION_BYTES);
    tokio::time::timeout(state.limits.body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout)?
        .map_err(|_| ApiError::PayloadTooLarge(MAX_INVOCATION_BYTES))?;
    let report = warm(&state, WARM_LIMIT).await;
    let body = json!({
        "Outputs": {},
        "Logs": report.lines,
        // An object, not a string: the host base64-decodes string values that look like base64.
        "ReturnValue": {
            "refreshed": report.refreshed,
            "fresh": report.fresh,
            "failed": report.failed,
            "skipped": report.skipped,
        },
    });
    Ok((
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_on_loopback_or_the_secret_may_invoke_timers() {
        let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let mapped = Some("::ffff:127.0.0.1".parse().unwrap());
        let remote = Some(std::net::IpAddr::from([203, 0, 113, 9]));
        let none = HeaderMap::new();
        let mut with_secret = HeaderMap::new();
        with_secret.insert(TIMER_SECRET_HEADER, "s".repeat(32).parse().unwrap());
        let mut wrong = HeaderMap::new();
        wrong.insert(TIMER_SECRET_HEADER, "t".repeat(32).parse().unwrap());

        let host = TimerAccess {
            host_on_loopback: true,
            secret: None,
        };
        assert!(host.allows(loopback, &none) && host.allows(mapped, &none));
        assert!(!host.allows(remote, &none) && !host.allows(None, &with_secret));

        let plain_server = TimerAccess::default();
        assert!(
            !plain_server.allows(loopback, &none),
            "no host, no secret: nobody"
        );
        let with_key = TimerAccess {
            host_on_loopback: false,
            secret: Some(Secret::new("s".repeat(32))),
        };
        assert!(with_key.allows(remote, &with_secret));
        assert!(!with_key.allows(remote, &wrong) && !with_key.allows(loopback, &none));
    }
}
