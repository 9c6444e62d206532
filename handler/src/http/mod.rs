//! The HTTP API under `/api`. [`ENDPOINTS`] is the single list of what is served: the router is
//! built from it, the OpenAPI document is generated from it, and a test checks it against the
//! `functions/*/function.json` files the Azure Functions host reads.

mod admin;
mod data;
mod error;
mod meta;
pub mod openapi;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use tracing::Instrument as _;

use crate::cache::Cache;
use crate::datasets::Catalog;
use crate::storage::Storage;

pub use admin::{WARM_LIMIT, WarmReport, warm};
pub use error::ApiError;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub storage: Arc<dyn Storage>,
    pub cache: Arc<Cache>,
    /// `ADMIN_API_ENABLED`: the admin endpoints answer only when set, until roles exist.
    pub admin_enabled: bool,
}

/// One served endpoint: the Azure function that declares it, and its route as written in that
/// function's `function.json` (relative to the `api` prefix).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub function: &'static str,
    pub method: &'static str,
    pub route: &'static str,
    pub summary: &'static str,
    handler: Handler,
}

#[derive(Debug, Clone, Copy)]
enum Handler {
    Health,
    Version,
    OpenApi,
    Docs,
    List,
    Export,
    Facets,
    Item,
    AdminView,
    AdminPurge,
}

/// Functions that the host invokes by POSTing JSON to `/<FunctionName>` (non-HTTP triggers).
pub const INVOCATIONS: &[&str] = &["WarmCache"];

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        function: "Health",
        method: "GET",
        route: "health",
        summary: "Liveness and dependency checks",
        handler: Handler::Health,
    },
    Endpoint {
        function: "Version",
        method: "GET",
        route: "version",
        summary: "Name, version and git commit",
        handler: Handler::Version,
    },
    Endpoint {
        function: "OpenApi",
        method: "GET",
        route: "openapi.json",
        summary: "This API as an OpenAPI 3.1 document",
        handler: Handler::OpenApi,
    },
    Endpoint {
        function: "Docs",
        method: "GET",
        route: "docs",
        summary: "A documentation page (works offline)",
        handler: Handler::Docs,
    },
    Endpoint {
        function: "ListItems",
        method: "GET",
        route: "{dataset}",
        summary: "A page of rows, filtered and sorted",
        handler: Handler::List,
    },
    Endpoint {
        function: "ExportItems",
        method: "GET",
        route: "{dataset}/export",
        summary: "Every matching row, streamed",
        handler: Handler::Export,
    },
    Endpoint {
        function: "Facets",
        method: "GET",
        route: "{dataset}/facets/{column}",
        summary: "Rows per value of a column",
        handler: Handler::Facets,
    },
    Endpoint {
        function: "AdminCache",
        method: "GET",
        route: "admin/cache",
        summary: "Cache statistics and hot keys (admin)",
        handler: Handler::AdminView,
    },
    Endpoint {
        function: "AdminCache",
        method: "DELETE",
        route: "admin/cache",
        summary: "Purge a dataset's cached answers (admin)",
        handler: Handler::AdminPurge,
    },
    Endpoint {
        function: "GetItem",
        method: "GET",
        route: "{dataset}/{id}",
        summary: "One row by key",
        handler: Handler::Item,
    },
];

impl Handler {
    fn method_router(self, filter: MethodFilter) -> MethodRouter<AppState> {
        match self {
            Handler::Health => MethodRouter::new().on(filter, meta::health),
            Handler::Version => MethodRouter::new().on(filter, meta::version),
            Handler::OpenApi => MethodRouter::new().on(filter, meta::openapi),
            Handler::Docs => MethodRouter::new().on(filter, meta::docs),
            Handler::List => MethodRouter::new().on(filter, data::list),
            Handler::Export => MethodRouter::new().on(filter, data::export),
            Handler::Facets => MethodRouter::new().on(filter, data::facets),
            Handler::Item => MethodRouter::new().on(filter, data::item),
            Handler::AdminView => MethodRouter::new().on(filter, admin::view),
            Handler::AdminPurge => MethodRouter::new().on(filter, admin::purge),
        }
    }
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        other => panic!("ENDPOINTS uses an unsupported method {other}"),
    }
}

/// The whole application: every endpoint under `/api`, problem+json for unknown routes and
/// methods, and a span per request.
pub fn router(state: AppState) -> Router {
    let mut paths: BTreeMap<String, MethodRouter<AppState>> = BTreeMap::new();
    for endpoint in ENDPOINTS {
        let path = format!("/api/{}", endpoint.route);
        let route = endpoint
            .handler
            .method_router(method_filter(endpoint.method));
        let merged = match paths.remove(&path) {
            Some(existing) => existing.merge(route),
            None => route,
        };
        paths.insert(path, merged);
    }
    let mut router = Router::new();
    for (path, route) in paths {
        router = router.route(&path, route.fallback(method_not_allowed));
    }
    router = router.route(
        "/WarmCache",
        axum::routing::post(admin::warm_cache_invocation),
    );
    router
        .fallback(not_found)
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

async fn not_found() -> Response {
    error::problem(StatusCode::NOT_FOUND, "No endpoint at this path.", None)
}

async fn method_not_allowed() -> Response {
    error::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "This endpoint does not accept this method.",
        None,
    )
}

/// One span per request, named after the route template (not the raw path, which would make
/// every movie its own operation), with the status and duration.
async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!("request", http.method = %method, http.route = %route, http.status = tracing::field::Empty);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.status", response.status().as_u16());
    tracing::debug!(parent: &span, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "answered");
    response
}

/// Shared response helpers for handlers.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>, timing: &str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(timing)
        && !timing.is_empty()
    {
        headers.insert("server-timing", value);
    }
    response
}
