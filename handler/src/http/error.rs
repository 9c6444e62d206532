//! One error type for the HTTP layer, answered as `application/problem+json` (RFC 9457).
//! Internal causes are logged, never sent: the body says what the client can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::query::QueryError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidParameter(#[from] QueryError),
    #[error("{0}")]
    NotFound(String),
    #[error("the database is unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        ApiError::InvalidParameter(QueryError {
            parameter: parameter.to_owned(),
            reason: reason.into(),
        })
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A problem document with the given status and detail.
pub fn problem(status: StatusCode, detail: &str, extra: Option<serde_json::Value>) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(serde_json::Value::Object(fields)), Some(map)) = (extra, body.as_object_mut()) {
        map.extend(fields);
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            ApiError::InvalidParameter(e) => problem(
                status,
                &self.to_string(),
                Some(json!({"invalid_params": [{"name": e.parameter, "reason": e.reason}]})),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                problem(status, "The server could not answer this request.", None)
            }
            ApiError::Unavailable => {
                let mut response = problem(
                    status,
                    "The database is unavailable; try again shortly.",
                    None,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            ApiError::NotFound(_) => problem(status, &self.to_string(), None),
        }
    }
}
