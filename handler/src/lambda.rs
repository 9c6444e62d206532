//! AWS Lambda (cargo feature `lambda`): the same router behind API Gateway (REST or HTTP API) or an
//! Application Load Balancer, through `lambda_http`, so the API is not tied to one cloud.
//! `handler serve` runs this when the Lambda runtime's `AWS_LAMBDA_RUNTIME_API` is set.

use crate::http::AppState;

/// Whether this process was started by the Lambda runtime.
pub fn is_lambda() -> bool {
    crate::config::started_by_lambda()
}

/// Answers the runtime's events with the router until the runtime stops the process.
pub async fn run(state: AppState) -> anyhow::Result<()> {
    lambda_http::run(router(state))
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}

/// The router, told each event's client address as API Gateway saw it (an ALB appends it to
/// `X-Forwarded-For` instead).
pub fn router(state: AppState) -> axum::Router {
    crate::http::router(state).layer(axum::middleware::map_request(peer_from_event))
}

async fn peer_from_event(mut request: axum::extract::Request) -> axum::extract::Request {
    use lambda_http::request::RequestContext;
    let source_ip = match request.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
        Some(RequestContext::ApiGatewayV1(context)) => context.identity.source_ip.clone(),
        // The ALB appends the address it saw.
        Some(RequestContext::Alb(_)) => crate::http::forwarded_hops(request.headers())
            .last()
            .map(|hop| (*hop).to_owned()),
        _ => None,
    };
    if let Some(ip) = source_ip.as_deref().and_then(crate::http::parse_hop) {
        let peer = std::net::SocketAddr::new(ip, 0);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
    }
    request
}
