//! Who is asking: the bearer token, and the client's address behind trusted proxies.

use std::net::SocketAddr;

use crate::config::TrustedProxies;
use crate::service::{Caller, ClientAddress};

use super::AppState;

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
        let address = client_ip(peer, &parts.headers, &state.trusted_proxies);
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
    client_ip(peer, headers, trusted).to_string()
}

/// [`client_address`], not yet written out.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &TrustedProxies,
) -> ClientAddress {
    let Some(peer) = peer else {
        return ClientAddress::Unknown;
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
    ClientAddress::of(client)
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
