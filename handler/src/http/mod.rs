//! The HTTP API under `/api`. [`ENDPOINTS`] is the single list of what is served: the router is
//! built from it, the OpenAPI document is generated from it, and a test checks it against the
//! `functions/*/function.json` files the Azure Functions host reads.

mod admin;
mod auth;
mod body;
mod data;
mod error;
mod imports;
mod meta;
pub mod openapi;
mod write;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use tracing::Instrument as _;

use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::{RequestLimits, TrustedProxies};
use crate::datasets::Catalog;
use crate::service::{Caller, Service};
use crate::storage::Storage;

pub use crate::service::BlobAccess;
pub use admin::{TIMER_SECRET_HEADER, TimerAccess, warm};
pub use error::ApiError;

/// What every handler shares: one `Arc`, so that the clone each request makes costs one atomic
/// increment, not one per field (on two cores the shared counters' cache lines bounce). Its
/// fields, and the service's through them, are read and written through `Deref`; writing to a
/// state that other clones share first copies the fields (cheap: they are handles), so a changed
/// clone never changes the others.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`]: the service, and what only HTTP needs.
#[derive(Clone)]
pub struct Shared {
    pub service: Service,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Who may invoke the timer functions.
    pub timers: Arc<TimerAccess>,
    /// `CORS_ALLOWED_ORIGINS`; empty means no CORS headers.
    pub cors_allowed_origins: Arc<Vec<String>>,
}

impl std::ops::Deref for Shared {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

impl std::ops::DerefMut for Shared {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

impl AppState {
    /// A read-only state with default limits; see the `with_*` methods for the rest.
    pub fn new(catalog: Arc<Catalog>, storage: Arc<dyn Storage>, cache: Arc<Cache>) -> Self {
        AppState::from_service(Service::new(catalog, storage, cache))
    }

    pub fn from_service(service: Service) -> Self {
        AppState(Arc::new(Shared {
            service,
            trusted_proxies: Arc::default(),
            timers: Arc::default(),
            cors_allowed_origins: Arc::new(Vec::new()),
        }))
    }

    pub fn with_auth(mut self, auth: Option<Auth>) -> Self {
        let service = &mut self.service;
        *service = service.clone().with_auth(auth);
        self
    }

    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        let service = &mut self.service;
        *service = service.clone().with_limits(limits);
        self
    }
}

/// Who asks, as the service needs to know: the bearer token, and the client's address (see
/// [`client_address`]).
impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let address = client_address(peer, &parts.headers, &state.trusted_proxies);
        Ok(Caller::new(bearer(&parts.headers), address))
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// At most this many `X-Forwarded-For` hops are looked at, from the right.
const MAX_FORWARDED_HOPS: usize = 16;

/// The client's address, for rate limits. It is the peer's, unless the peer is a trusted proxy
/// (`TRUSTED_PROXIES`, or the Functions host on loopback): then it is the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy itself (entries further left were written
/// by the client, and can say anything). IPv6 addresses count by their /64, the block one
/// subscriber usually holds, so rotating within it gains nothing. `unknown` without a peer (a
/// request made in process).
pub fn client_address(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &TrustedProxies,
) -> String {
    let Some(peer) = peer else {
        return "unknown".to_owned();
    };
    let mut client = crate::config::canonical_ip(peer);
    warn_of_an_untrusted_proxy(client, headers, trusted);
    if trusted.contains(client) {
        let hops = forwarded_hops(headers);
        for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
            // A hop that is no address was written by someone untrusted: the last trusted
            // proxy's own peer (the one before it) is all that is known.
            let Some(address) = parse_hop(hop) else { break };
            client = crate::config::canonical_ip(address);
            if !trusted.contains(client) {
                break;
            }
        }
    }
    match client {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// Says once, in the log, when a private or loopback peer forwards addresses while no proxy is
/// trusted: behind a load balancer then, every client has the balancer's address, and the
/// sign-in limits count them all as one (set `TRUSTED_PROXIES`).
fn warn_of_an_untrusted_proxy(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &TrustedProxies,
) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let private = match peer {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
    };
    if private
        && trusted.is_empty()
        && headers.contains_key("x-forwarded-for")
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            %peer,
            "a private peer sends X-Forwarded-For but TRUSTED_PROXIES is not set: if this is \
             your load balancer, every client counts as its address for the sign-in limits"
        );
    }
}

/// The `X-Forwarded-For` entries, first to last (each proxy appends the address it saw).
pub fn forwarded_hops(headers: &axum::http::HeaderMap) -> Vec<&str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// `203.0.113.7`, `203.0.113.7:50123`, `2001:db8::1`, `[2001:db8::1]:443`.
pub fn parse_hop(hop: &str) -> Option<std::net::IpAddr> {
    hop.parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// One served endpoint: the Azure function that declares it, and its route as written in that
/// function's `function.json` (relative to the `api` prefix).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub function: &'static str,
    pub method: &'static str,
    pub route: &'static str,
    pub summary: &'static str,
    /// The function's `authLevel`: `function` for admin-only endpoints, so that in Azure the host
    /// demands a function key as well as the admin token.
    pub auth_level: &'static str,
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
    ImportStart,
    ImportStatus,
    Create,
    Replace,
    Patch,
    Delete,
    Signup,
    Login,
    Me,
}

/// Functions that the host invokes by POSTing JSON to `/<FunctionName>` (non-HTTP triggers).
pub const INVOCATIONS: &[&str] = &["WarmCache"];

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        function: "Health",
        method: "GET",
        route: "health",
        summary: "Liveness and dependency checks",
        auth_level: "anonymous",
        handler: Handler::Health,
    },
    Endpoint {
        function: "Version",
        method: "GET",
        route: "version",
        summary: "Name, version and git commit",
        auth_level: "anonymous",
        handler: Handler::Version,
    },
    Endpoint {
        function: "OpenApi",
        method: "GET",
        route: "openapi.json",
        summary: "This API as an OpenAPI 3.1 document",
        auth_level: "anonymous",
        handler: Handler::OpenApi,
    },
    Endpoint {
        function: "Docs",
        method: "GET",
        route: "docs",
        summary: "A documentation page (works offline)",
        auth_level: "anonymous",
        handler: Handler::Docs,
    },
    Endpoint {
        function: "ListItems",
        method: "GET",
        route: "{dataset}",
        summary: "A page of rows, filtered and sorted",
        auth_level: "anonymous",
        handler: Handler::List,
    },
    Endpoint {
        function: "ExportItems",
        method: "GET",
        route: "{dataset}/export",
        summary: "Every matching row, streamed",
        auth_level: "anonymous",
        handler: Handler::Export,
    },
    Endpoint {
        function: "Facets",
        method: "GET",
        route: "{dataset}/facets/{column}",
        summary: "Rows per value of a column",
        auth_level: "anonymous",
        handler: Handler::Facets,
    },
    Endpoint {
        function: "AdminCache",
        method: "GET",
        route: "admin/cache",
        summary: "Cache statistics and hot keys (admin)",
        auth_level: "function",
        handler: Handler::AdminView,
    },
    Endpoint {
        function: "AdminCache",
        method: "DELETE",
        route: "admin/cache",
        summary: "Purge a dataset's cached answers (admin)",
        auth_level: "function",
        handler: Handler::AdminPurge,
    },
    Endpoint {
        function: "AdminImports",
        method: "POST",
        route: "admin/imports",
        summary: "Start an import from Azure Blob Storage (admin)",
        auth_level: "function",
        handler: Handler::ImportStart,
    },
    Endpoint {
        function: "AdminImportStatus",
        method: "GET",
        route: "admin/imports/{id}",
        summary: "Progress and summary of an import (admin)",
        auth_level: "function",
        handler: Handler::ImportStatus,
    },
    Endpoint {
        function: "Signup",
        method: "POST",
        route: "auth/signup",
        summary: "Create an account (role: user)",
        auth_level: "anonymous",
        handler: Handler::Signup,
    },
    Endpoint {
        function: "Login",
        method: "POST",
        route: "auth/login",
        summary: "Exchange email and password for an access token",
        auth_level: "anonymous",
        handler: Handler::Login,
    },
    Endpoint {
        function: "Me",
        method: "GET",
        route: "auth/me",
        summary: "The signed-in caller",
        auth_level: "anonymous",
        handler: Handler::Me,
    },
    Endpoint {
        function: "CreateItem",
        method: "POST",
        route: "{dataset}",
        summary: "Create a row (admin unless the dataset says otherwise)",
        auth_level: "function",
        handler: Handler::Create,
    },
    Endpoint {
        function: "UpdateItem",
        method: "PUT",
        route: "{dataset}/{id}",
        summary: "Replace a row",
        auth_level: "function",
        handler: Handler::Replace,
    },
    Endpoint {
        function: "UpdateItem",
        method: "PATCH",
        route: "{dataset}/{id}",
        summary: "Change some columns of a row",
        auth_level: "function",
        handler: Handler::Patch,
    },
    Endpoint {
        function: "DeleteItem",
        method: "DELETE",
        route: "{dataset}/{id}",
        summary: "Delete a row",
        auth_level: "function",
        handler: Handler::Delete,
    },
    Endpoint {
        function: "GetItem",
        method: "GET",
        route: "{dataset}/{id}",
        summary: "One row by key",
        auth_level: "anonymous",
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
            Handler::ImportStart => MethodRouter::new().on(filter, imports::start),
            Handler::ImportStatus => MethodRouter::new().on(filter, imports::status),
            Handler::Create => MethodRouter::new().on(filter, write::create),
            Handler::Replace => MethodRouter::new().on(filter, write::replace),
            Handler::Patch => MethodRouter::new().on(filter, write::patch),
            Handler::Delete => MethodRouter::new().on(filter, write::delete),
            Handler::Signup => MethodRouter::new().on(filter, auth::signup),
            Handler::Login => MethodRouter::new().on(filter, auth::login),
            Handler::Me => MethodRouter::new().on(filter, auth::me),
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
    let mut router = router.fallback(not_found);
    // No layer at all without configured origins: no CORS headers, and no cost per request.
    if !state.cors_allowed_origins.is_empty() {
        let cors = Arc::clone(&state.cors_allowed_origins);
        router = router.layer(middleware::from_fn(move |request, next| {
            cors_headers(Arc::clone(&cors), request, next)
        }));
    }
    let max_uri_bytes = state.limits.max_uri_bytes;
    router
        .layer(middleware::from_fn(move |request, next| {
            guard(max_uri_bytes, request, next)
        }))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// What every request goes through (one layer, since each costs every request):
/// - a path and query string over `MAX_URI_BYTES` is refused before any handler parses it;
/// - a panic while answering (a bug) becomes a logged error and a 500 problem document, never a
///   dropped connection, and the other requests on the instance go on;
/// - `X-Content-Type-Options: nosniff` on every answer: browsers must not guess another content
///   type than the one sent (a JSON or CSV body read as HTML would run a script in the API's
///   origin).
async fn guard(max_uri_bytes: usize, request: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    let length = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().len(), |p| p.as_str().len());
    let mut response = if length > max_uri_bytes {
        ApiError::UriTooLong(max_uri_bytes).into_response()
    } else {
        match std::panic::AssertUnwindSafe(next.run(request))
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
async fn cors_headers(allowed: Arc<Vec<String>>, request: Request, next: Next) -> Response {
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
/// every movie its own operation), continuing the caller's trace (`traceparent`), with the
/// status, the dataset and the cache outcome; and the request duration metric.
async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let dataset = route
        .contains("{dataset}")
        .then(|| request.uri().path().split('/').nth(2).map(str::to_owned))
        .flatten();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        dataset = dataset.as_deref().unwrap_or_default(),
        cache.outcome = tracing::field::Empty,
    );
    // Before the span is first entered; a no-op when no exporter is configured.
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
    });
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
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
    crate::telemetry::metrics::request(method.as_str(), &route, status, elapsed);
    tracing::debug!(parent: &span, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "answered");
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panic_while_answering_is_a_500_problem_not_a_dropped_connection() {
        async fn boom() -> &'static str {
            panic!("a bug")
        }
        let router = Router::new()
            .route("/boom", axum::routing::get(boom))
            .layer(middleware::from_fn(|request, next| {
                guard(4096, request, next)
            }));
        let request = axum::http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }

    fn forwarded(value: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let peer = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let none = TrustedProxies::default();
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1").unwrap();
        let forged = forwarded("198.51.100.1, 203.0.113.9:5000");
        // An untrusted peer's header is ignored, whatever it says.
        assert_eq!(
            client_address(peer("198.51.100.77"), &forged, &none),
            "198.51.100.77"
        );
        assert_eq!(
            client_address(peer("198.51.100.77"), &forged, &proxies),
            "198.51.100.77"
        );
        // Behind a trusted proxy, the right-most entry the proxies did not write.
        assert_eq!(
            client_address(peer("10.1.2.3"), &forged, &proxies),
            "203.0.113.9"
        );
        let chain = forwarded("198.51.100.1, 203.0.113.9, 10.9.9.9");
        assert_eq!(
            client_address(peer("192.0.2.1"), &chain, &proxies),
            "203.0.113.9"
        );
        // Garbage where an address should be: the last proxy's peer is all that is known.
        let garbage = forwarded("203.0.113.9, not-an-address");
        assert_eq!(
            client_address(peer("10.1.2.3"), &garbage, &proxies),
            "10.1.2.3"
        );
        // No header behind a proxy: the proxy itself.
        let empty = axum::http::HeaderMap::new();
        assert_eq!(
            client_address(peer("10.1.2.3"), &empty, &proxies),
            "10.1.2.3"
        );
        // IPv6 counts by /64; IPv4-mapped IPv6 is IPv4.
        assert_eq!(
            client_address(peer("2001:db8:1:2:aaaa::1"), &empty, &none),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_address(peer("::ffff:203.0.113.5"), &empty, &none),
            "203.0.113.5"
        );
        // The Functions host on loopback forwards the front end's entry.
        let host = TrustedProxies::default().with_loopback();
        let azure = forwarded("198.51.100.1, 203.0.113.9:61234");
        assert_eq!(
            client_address(peer("127.0.0.1"), &azure, &host),
            "203.0.113.9"
        );
        assert_eq!(client_address(None, &azure, &host), "unknown");
    }
}
