//! The layers every request goes through: limits and panics, CORS, the request span, and the
//! answers for unknown paths and methods.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::{ApiError, error};

/// What every request goes through, in one layer (each layer costs every request a boxed clone
/// of the route, a boxed `Next` and a boxed future: ~2,000 instructions of a ~36,000-instruction
/// cache hit):
/// - one span per request, named after the route template (not the raw path, which would make
///   every movie its own operation), continuing the caller's trace (`traceparent`), with the
///   status, the dataset and the cache outcome; and the request duration metric;
/// - a path and query string over `MAX_URI_BYTES` is refused before any handler parses it;
/// - a panic while answering (a bug) becomes a logged error and a 500 problem document, never a
///   dropped connection, and the other requests on the instance go on;
/// - `X-Content-Type-Options: nosniff` on every answer: browsers must not guess another content
///   type than the one sent (a JSON or CSV body read as HTML would run a script in the API's
///   origin).
pub async fn around_request(max_uri_bytes: usize, request: Request, next: Next) -> Response {
    // The matched path is shared (an `Arc`), not copied.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    around_hot(max_uri_bytes, route, request, |request| next.run(request)).await
}

/// [`around_request`] for a request routed by hand (`hot`) as much as through the router: the
/// same span, limits and catch around `answer`.
pub(super) async fn around_hot<F, Fut>(
    max_uri_bytes: usize,
    route: &str,
    request: Request,
    answer: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    traced(route, request, |request| {
        guard(max_uri_bytes, request, answer)
    })
    .await
}

/// The request's span and metrics around `inner`.
async fn traced<F, Fut>(route: &str, request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        dataset = tracing::field::Empty,
        cache.outcome = tracing::field::Empty,
    );
    // The dataset is copied out of the path only for a span or metrics that take it.
    let dataset = (route.contains("{dataset}")
        && (!span.is_disabled() || crate::telemetry::metrics::exporting()))
    .then(|| request.uri().path().split('/').nth(2).map(str::to_owned))
    .flatten();
    // Before the span is first entered; nothing to continue when the span is off (its level
    // filtered out), which spares every request reading the trace headers.
    if !span.is_disabled() {
        span.record("dataset", dataset.as_deref().unwrap_or_default());
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
        });
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    }
    let started = Instant::now();
    let response = inner(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    if let Some(outcome) = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
    {
        span.record("cache.outcome", outcome);
        crate::telemetry::metrics::cache_outcome(outcome, dataset.as_deref().unwrap_or_default());
    }
    let elapsed = started.elapsed();
    crate::telemetry::metrics::request(method.as_str(), route, status, elapsed);
    tracing::debug!(parent: &span, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "answered");
    response
}

/// The limits and the panic catch of [`around_request`].
async fn guard<F, Fut>(max_uri_bytes: usize, request: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    use futures_util::FutureExt as _;
    let length = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().len(), |p| p.as_str().len());
    let mut response = if length > max_uri_bytes {
        ApiError::UriTooLong(max_uri_bytes).into_response()
    } else {
        match std::panic::AssertUnwindSafe(inner(request))
            .catch_unwind()
            .await
        {
            Ok(response) => response,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %message, "a request panicked");
                error::problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server could not answer this request.",
                    None,
                )
            }
        }
    };
    response.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// CORS, only for the configured origins: preflights are answered here, and responses to an
/// allowed origin name it. Without `CORS_ALLOWED_ORIGINS`, browsers get no CORS headers at all.
pub async fn cors_headers(allowed: Arc<Vec<String>>, request: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, Method, header};
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| allowed.iter().any(|a| a == o || a == "*"))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, if-none-match"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("etag, location, x-cache, server-timing, retry-after"),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

pub async fn not_found() -> Response {
    error::problem(StatusCode::NOT_FOUND, "No endpoint at this path.", None)
}

pub async fn method_not_allowed() -> Response {
    error::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "This endpoint does not accept this method.",
        None,
    )
}
