//! AWS Lambda (cargo feature `lambda`): the same router behind API Gateway (REST or HTTP API) or an
//! Application Load Balancer, through `lambda_http`, so the API is not tied to one cloud.
//! `handler serve` runs this when the Lambda runtime's `AWS_LAMBDA_RUNTIME_API` is set.

use crate::http::AppState;

/// Whether this process was started by the Lambda runtime.
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// Answers the runtime's events with the router until the runtime stops the process.
pub async fn run(state: AppState) -> anyhow::Result<()> {
    lambda_http::run(crate::http::router(state))
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
