//! Service endpoints: health, version, the OpenAPI document (its docs page: `docs`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{AppState, json_response, openapi};

/// `GET /api/health`: 200 `ok` when the database answers, 503 `degraded` when it does not.
pub async fn health(State(state): State<AppState>) -> Response {
    let (database_up, body) = state.health().await;
    let code = if database_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
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
    let document = openapi::document(&openapi::Described {
        catalog: &state.catalog,
        engine: state.storage.engine_rules(),
        limits: &state.limits.query,
    });
    json_response(StatusCode::OK, document.to_string().into_bytes(), "")
}
