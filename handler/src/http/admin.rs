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

/// What a warm-up did.
#[derive(Debug, Default)]
pub struct WarmReport {
    pub lines: Vec<String>,
    pub refreshed: usize,
    pub fresh: usize,
    pub failed: usize,
}

/// Replays the hottest paths through the router, refreshing what is missing or near expiry.
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
    if paths.is_empty() {
        report.lines.push("no hot keys yet".to_owned());
    }
    let router = super::router(state.clone());
    for (path, score) in paths {
        // Only this API's data GETs are replayed, whatever the shared set holds.
        if !path.starts_with("/api/") || path.starts_with("/api/admin") {
            continue;
        }
        let mut request = Request::get(&path)
            .body(Body::empty())
            .expect("a path from a request is a valid URI");
        request.extensions_mut().insert(Warming);
        let started = std::time::Instant::now();
        let response = router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let what = match (response.status().is_success(), outcome.as_str()) {
            (true, "HIT") => {
                report.fresh += 1;
                "fresh, left as is".to_owned()
            }
            (true, "MISS") => {
                report.refreshed += 1;
                format!("refreshed in {ms:.1} ms")
            }
            (_, other) => {
                report.failed += 1;
                format!("not refreshed: {} {other}", response.status().as_u16())
            }
        };
        report
            .lines
            .push(format!("{path} (score {score:.1}): {what}"));
    }
    crate::telemetry::metrics::warmup(
        report.refreshed as u64,
        report.fresh as u64,
        report.failed as u64,
    );
    report
}

/// `POST /WarmCache`: the timer invocation from the Functions host. Its body (`{"Data": {...},
/// "Metadata": {...}}`) carries nothing the warm-up needs, so it is not parsed.
pub async fn warm_cache_invocation(
    State(state): State<AppState>,
    _body: axum::body::Bytes,
) -> Response {
    let report = warm(&state, WARM_LIMIT).await;
    let body = json!({
        "Outputs": {},
        "Logs": report.lines,
        // An object, not a string: the host base64-decodes string values that look like base64.
        "ReturnValue": {"refreshed": report.refreshed, "fresh": report.fresh, "failed": report.failed},
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}
