//! The two hottest routes matched by hand before the router: `GET /api/{dataset}` (a list) and
//! `GET /api/{dataset}/{id}` (a row), nearly every cached hit. They run the same handlers inside
//! the same span, limits and panic catch as through the router ([`around_hot`]), but skip what
//! the router costs each request (matching, path parameters, a boxed clone of the route and of
//! the layer: 34,047 -> 31,634 instructions a hit, counted by `bench/callgrind.py`).
//!
//! A request is taken only when no other route of [`ENDPOINTS`] could match it: each of its
//! segments must differ from every literal segment that routes of its length have in that place
//! (so `/api/health`, `/api/movies/count` and `/api/auth/me` go to the router), and it must be a
//! GET with no empty or percent-encoded segment (those are decoded, or refused, by the router).
//! Everything else goes to the router unchanged. With CORS configured nothing is taken here:
//! the CORS layer lives in the router.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{FromRequestParts as _, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::data::{self, Call};
use super::endpoints::{ENDPOINTS, Handler};
use super::layers::around_hot;
use crate::service::Caller;

/// The router with the hot routes answered before it.
#[derive(Clone)]
pub(super) struct HotRoutes {
    state: AppState,
    rest: Router,
    max_uri_bytes: usize,
    routes: Arc<Routes>,
}

/// What [`HotRoutes`] matches, read off [`ENDPOINTS`] once.
struct Routes {
    /// The route templates as the router names them (`/api/{dataset}`), for spans and metrics.
    list: String,
    item: String,
    /// `literals[n - 1][i]`: the literal segments that routes of `n` segments have in place `i`.
    literals: Vec<Vec<Vec<&'static str>>>,
}

/// A request the hot routes answer.
enum Hot<'a> {
    List(&'a str),
    Item(&'a str, &'a str),
}

impl HotRoutes {
    pub(super) fn new(state: AppState, rest: Router, max_uri_bytes: usize) -> Self {
        HotRoutes {
            state,
            rest,
            max_uri_bytes,
            routes: Arc::new(Routes::from_endpoints()),
        }
    }
}

impl Routes {
    fn from_endpoints() -> Self {
        let route_of = |handler: fn(&Handler) -> bool| {
            ENDPOINTS
                .iter()
                .find(|e| e.method == "GET" && handler(&e.handler))
                .map(|e| format!("/api/{}", e.route))
                .expect("the list and item endpoints are in the table")
        };
        let mut literals: Vec<Vec<Vec<&'static str>>> = Vec::new();
        for endpoint in ENDPOINTS {
            let segments: Vec<&'static str> = endpoint.route.split('/').collect();
            // What the matching below relies on: a path matches only routes of as many segments,
            // each segment a literal or a whole parameter.
            assert!(
                segments.iter().all(|s| !s.contains(['{', '}'])
                    || (s.starts_with('{') && s.ends_with('}') && !s.starts_with("{*"))),
                "{}: a catch-all or partial parameter needs the hot routes revised",
                endpoint.route
            );
            if literals.len() < segments.len() {
                literals.resize_with(segments.len(), Vec::new);
            }
            let places = &mut literals[segments.len() - 1];
            places.resize_with(segments.len(), Vec::new);
            for (place, segment) in segments.into_iter().enumerate() {
                if !segment.starts_with('{') && !places[place].contains(&segment) {
                    places[place].push(segment);
                }
            }
        }
        Routes {
            list: route_of(|h| matches!(h, Handler::List)),
            item: route_of(|h| matches!(h, Handler::Item)),
            literals,
        }
    }

    /// The hot route `request` takes, if no other route could match it.
    fn matching<'a>(&self, method: &Method, path: &'a str) -> Option<Hot<'a>> {
        if method != Method::GET || path.contains('%') {
            return None;
        }
        let rest = path.strip_prefix("/api/")?;
        let mut segments = rest.split('/');
        let (first, second) = (segments.next()?, segments.next());
        if segments.next().is_some() {
            return None;
        }
        let taken = |segments: &[&str]| {
            let places = &self.literals[segments.len() - 1];
            segments
                .iter()
                .zip(places)
                .any(|(segment, literals)| segment.is_empty() || literals.contains(segment))
        };
        match second {
            None if !taken(&[first]) => Some(Hot::List(first)),
            Some(id) if !taken(&[first, id]) => Some(Hot::Item(first, id)),
            _ => None,
        }
    }
}

impl tower::Service<Request> for HotRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let matched = self
            .routes
            .matching(request.method(), request.uri().path())
            .map(|hot| match hot {
                Hot::List(name) => (name.to_owned(), None),
                Hot::Item(name, id) => (name.to_owned(), Some(id.to_owned())),
            });
        let Some((name, id)) = matched else {
            return Box::pin(tower::ServiceExt::oneshot(self.rest.clone(), request));
        };
        let (state, routes, max_uri_bytes) = (
            self.state.clone(),
            Arc::clone(&self.routes),
            self.max_uri_bytes,
        );
        Box::pin(async move {
            let route = if id.is_none() {
                &routes.list
            } else {
                &routes.item
            };
            let answer = |request: Request| async move {
                let (mut parts, _) = request.into_parts();
                let Ok(caller) = Caller::from_request_parts(&mut parts, &state).await;
                let Ok(call) = Call::from_request_parts(&mut parts, &state).await;
                let answered = match id {
                    None => {
                        let query = RawQuery(parts.uri.query().map(str::to_owned));
                        data::list(State(state), Ok(Path(name)), query, caller, call).await
                    }
                    Some(id) => data::item(State(state), Ok(Path((name, id))), caller, call).await,
                };
                answered.unwrap_or_else(IntoResponse::into_response)
            };
            let mut response = around_hot(max_uri_bytes, route, request, answer).await;
            // As the router does for its routes (hyper would add it on the wire, Lambda not).
            if let Some(length) = http_body::Body::size_hint(response.body()).exact()
                && !response.headers().contains_key(header::CONTENT_LENGTH)
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_no_other_route_could_match_are_taken() {
        let routes = Routes::from_endpoints();
        let get = Method::GET;
        let taken = |method: &Method, path: &str| match routes.matching(method, path) {
            Some(Hot::List(name)) => format!("list {name}"),
            Some(Hot::Item(name, id)) => format!("item {name} {id}"),
            None => "router".to_owned(),
        };
        assert_eq!(routes.list, "/api/{dataset}");
        assert_eq!(routes.item, "/api/{dataset}/{id}");
        assert_eq!(taken(&get, "/api/movies"), "list movies");
        assert_eq!(taken(&get, "/api/movies/595"), "item movies 595");
        for path in [
            "/api/health",
            "/api/version",
            "/api/openapi.json",
            "/api/docs",
            "/api/docs/swagger-ui.css",
            "/api/movies/count",
            "/api/movies/export",
            "/api/movies/facets/genres",
            "/api/auth/me",
            "/api/admin/cache",
            "/api/movies/",
            "/api//595",
            "/api/",
            "/api/mo%76ies",
            "/api/movies/5%2095",
            "/WarmCache",
            "/movies",
        ] {
            assert_eq!(taken(&get, path), "router", "{path}");
        }
        // Every other endpoint, its parameters filled in, goes to the router.
        for endpoint in ENDPOINTS {
            let path = format!("/api/{}", endpoint.route)
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let method = Method::from_bytes(endpoint.method.as_bytes()).unwrap();
            let expected = match (endpoint.method, endpoint.route) {
                ("GET", "{dataset}") => "list x",
                ("GET", "{dataset}/{id}") => "item x x",
                _ => "router",
            };
            assert_eq!(
                taken(&method, &path),
                expected,
                "{} {path}",
                endpoint.method
            );
        }
        for method in [Method::HEAD, Method::POST, Method::PATCH, Method::DELETE] {
            assert_eq!(taken(&method, "/api/movies/595"), "router", "{method}");
        }
    }
}
