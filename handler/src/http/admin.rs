//! The cache's admin view and purge (admins; in Azure, a function key too), and the invocations
//! of the `WarmCache` and `SyncDatasets` timers (the Functions host only).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState, json_response};
use crate::config::{Secret, canonical_ip};
use crate::service::{Caller, WARM_LIMIT, WarmReport};

/// `GET /api/admin/cache`.
pub async fn view(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let report = state.cache_report(&caller).await?;
    Ok(json_response(
        StatusCode::OK,
        report.to_string().into_bytes(),
        "",
    ))
}

/// `DELETE /api/admin/cache?dataset=NAME`: every cached answer of the dataset becomes stale.
pub async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let raw = raw.unwrap_or_default();
    let name = url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "dataset")
        .map(|(_, v)| v.into_owned());
    state.purge(&caller, name.as_deref()).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"dataset": name, "purged": true})
            .to_string()
            .into_bytes(),
        "",
    ))
}

/// The warm-up of `state`'s service (what the timer and `handler warm` run).
pub async fn warm(state: &AppState, limit: usize) -> WarmReport {
    state.service.warm(limit).await
}

/// Who may invoke the timer functions: the Functions host, which started this process and
/// connects from loopback (the host forwards only its HTTP functions' routes, never
/// `/WarmCache` or `/SyncDatasets`, so outside callers cannot come in that way), or a caller that presents
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
    accept_invocation(&state, request).await?;
    let report = state.service.warm(WARM_LIMIT).await;
    Ok(invocation_answer(
        report.lines,
        json!({
            "refreshed": report.refreshed,
            "fresh": report.fresh,
            "failed": report.failed,
            "skipped": report.skipped,
        }),
    ))
}

/// `POST /SyncDatasets`: the sync timer's invocation, answered like [`warm_cache_invocation`]:
/// a line per dataset in `Logs`, the whole report in `ReturnValue`.
pub async fn sync_datasets_invocation(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    accept_invocation(&state, request).await?;
    let report = state.service.sync_datasets().await;
    let value = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    Ok(invocation_answer(report.lines(), value))
}

/// Refuses anyone but the Functions host (or a holder of `TIMER_SECRET`) before any work, then
/// reads the invocation's body (bounded in size and time) and drops it.
async fn accept_invocation(
    state: &AppState,
    request: axum::extract::Request,
) -> Result<(), ApiError> {
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
    Ok(())
}

/// A custom handler's invocation answer: no output bindings, the lines the host logs, and the
/// return value.
fn invocation_answer(logs: Vec<String>, return_value: serde_json::Value) -> Response {
    let body = json!({
        "Outputs": {},
        "Logs": logs,
        // An object, not a string: the host base64-decodes string values that look like base64.
        "ReturnValue": return_value,
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
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
