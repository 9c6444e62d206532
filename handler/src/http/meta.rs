//! Service endpoints: health, version, the OpenAPI document and its docs page.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
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
