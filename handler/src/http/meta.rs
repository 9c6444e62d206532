//! Service endpoints: health, version, the OpenAPI document and its docs page.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::{AppState, json_response, openapi};

/// How long the health check waits for the database before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /api/health`: 200 `ok` when the database answers, 503 `degraded` when it does not.
pub async fn health(State(state): State<AppState>) -> Response {
    let started = Instant::now();
    let ping = tokio::time::timeout(HEALTH_TIMEOUT, state.storage.ping()).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    let (status, database) = match ping {
        Ok(Ok(())) => (
            "ok",
            json!({"status": "ok", "backend": state.storage.backend(), "latency_ms": latency_ms}),
        ),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "health check: database failed");
            (
                "degraded",
                json!({"status": "down", "backend": state.storage.backend(), "error": error.to_string()}),
            )
        }
        Err(_) => (
            "degraded",
            json!({"status": "down", "backend": state.storage.backend(), "error": "timed out"}),
        ),
    };
    // A cache that is down costs speed, not answers (requests bypass it): the instance stays
    // in service (200) but says it is degraded. A database that is down is a 503.
    let cache_started = Instant::now();
    let cache = match state.cache.ping().await {
        Ok(()) => json!({"status": "ok", "backend": state.cache.backend(),
            "latency_ms": (cache_started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0}),
        Err(_) => json!({"status": "down", "backend": state.cache.backend()}),
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if status == "ok" && cache["status"] == "ok" {
        "ok"
    } else {
        "degraded"
    };
    let body = json!({"status": status, "checks": {"database": database, "cache": cache}});
    json_response(code, body.to_string().into_bytes(), "")
}

/// `GET /api/version`.
pub async fn version() -> Response {
    let body = json!({
        "name": "smartcache",
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("SMARTCACHE_GIT_COMMIT"),
    });
    json_response(StatusCode::OK, body.to_string().into_bytes(), "")
}

/// `GET /api/openapi.json`: generated from [`super::ENDPOINTS`] and the dataset declarations.
pub async fn openapi(State(state): State<AppState>) -> Response {
    let document = openapi::document(&state.catalog);
    json_response(StatusCode::OK, document.to_string().into_bytes(), "")
}

/// `GET /api/docs`: a self-contained page that renders the OpenAPI document; it loads nothing
/// from the internet, so it works offline and under a strict CSP.
pub async fn docs() -> Response {
    let mut response = Html(include_str!("docs.html")).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    response
}
