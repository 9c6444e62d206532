//! The HTTP API under `/api`. [`ENDPOINTS`] is the single list of what is served: the router is
//! built from it, the OpenAPI document is generated from it, and a test checks it against the
//! `functions/*/function.json` files the Azure Functions host reads.

mod admin;
mod auth;
mod body;
mod client;
mod data;
mod docs;
mod endpoints;
mod error;
mod hot;
mod imports;
mod layers;
mod meta;
pub mod openapi;
mod ranges;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::{RequestLimits, TrustedProxies};
use crate::datasets::Catalog;
use crate::service::Service;
use crate::storage::Storage;

pub use crate::service::BlobAccess;
pub use admin::{TIMER_SECRET_HEADER, TimerAccess, warm};
pub use client::{client_address, forwarded_hops, parse_hop};
pub use endpoints::{ENDPOINTS, Endpoint, INVOCATIONS};
pub use error::ApiError;

use endpoints::method_filter;
use layers::{around_request, cors_headers, method_not_allowed, not_found};

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

/// The whole application: every endpoint under `/api`, problem+json for unknown routes and
/// methods, and a span per request; the hottest routes answered before the router (`hot`).
/// As an axum `Router`, for tests and Lambda; the listener calls [`api`] directly.
pub fn router(state: AppState) -> Router {
    match api(state).0 {
        Served::Hot(hot) => Router::new().fallback_service(hot),
        Served::Routed(routed) => routed,
    }
}

/// [`router`] as the listener calls it: without an outer router around the hot routes, whose
/// matching (of no routes), boxed clone and drop cost every request ~2,300 instructions of a
/// cached hit's ~32,000 (`bench/callgrind.py`).
#[derive(Clone)]
pub struct Api(Served);

#[derive(Clone)]
enum Served {
    Hot(hot::HotRoutes),
    /// With CORS configured (its layer lives in the router): every request through the router.
    Routed(Router),
}

pub fn api(state: AppState) -> Api {
    let max_uri_bytes = state.limits.max_uri_bytes;
    let routed = endpoint_router(state.clone());
    if !state.cors_allowed_origins.is_empty() {
        return Api(Served::Routed(routed));
    }
    Api(Served::Hot(hot::HotRoutes::new(
        state,
        routed,
        max_uri_bytes,
    )))
}

impl tower::Service<axum::extract::Request> for Api {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both are always ready (a router is; `HotRoutes` hands its rest to one by `oneshot`).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        match &mut self.0 {
            Served::Hot(hot) => hot.call(request),
            Served::Routed(router) => Box::pin(tower::ServiceExt::oneshot(router.clone(), request)),
        }
    }
}

/// [`router`] without the hot routes: every request matched by the router built from
/// [`ENDPOINTS`] (what `router` hands everything else to; tests compare the two).
pub fn endpoint_router(state: AppState) -> Router {
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
    router = router
        .route(
            "/WarmCache",
            axum::routing::post(admin::warm_cache_invocation),
        )
        .route(
            "/SyncDatasets",
            axum::routing::post(admin::sync_datasets_invocation),
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
            around_request(max_uri_bytes, request, next)
        }))
        .with_state(state)
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
                around_request(4096, request, next)
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
