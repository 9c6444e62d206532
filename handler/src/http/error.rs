//! One error type for the HTTP layer, answered as `application/problem+json` (RFC 9457).
//! Internal causes are logged, never sent: the body says what the client can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
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
    #[error("{0}")]
    Auth(AuthError),
    /// The request body, field by field: `(name, reason)`.
    #[error("the request body is invalid")]
    Unprocessable(Vec<(String, String)>),
    #[error("{0}")]
    MalformedBody(String),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{0}")]
    Conflict(String),
    /// A service the request depends on (Blob Storage, Entra ID) failed or did not answer.
    #[error("{0}")]
    BadGateway(String),
    #[error("the request body did not arrive within the body timeout")]
    BodyTimeout,
    /// The path and query string together are longer than `MAX_URI_BYTES`.
    #[error("the path and query string are longer than {0} bytes")]
    UriTooLong(usize),
    /// Every slot for this kind of work is taken (uncached exports): try again shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// The request is understood but asks for more than the server will compute at once.
    #[error("{detail}")]
    TooMuch {
        parameter: &'static str,
        detail: String,
    },
    /// Only certain callers may do this (the timer functions: the Functions host).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMuch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Auth(error) => match error {
                AuthError::NotConfigured | AuthError::ProviderUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AuthError::MissingToken
                | AuthError::InvalidToken
                | AuthError::InvalidCredentials => StatusCode::UNAUTHORIZED,
                AuthError::Forbidden | AuthError::EmailNotVerified => StatusCode::FORBIDDEN,
                AuthError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
                AuthError::EmailTaken => StatusCode::CONFLICT,
                AuthError::InvalidField(..) | AuthError::InvalidFields(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                AuthError::Storage(StorageError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
                AuthError::Storage(_) | AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
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
            StorageError::Unavailable(cause) | StorageError::Deadlock(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable
            }
            StorageError::ValueTooLong(cause) => {
                tracing::info!(error = %cause, "a value too long for the database");
                ApiError::Unprocessable(vec![(
                    "body".into(),
                    "a text value is longer than this database stores in an indexed column \
                     (see the dataset's max_length)"
                        .into(),
                )])
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
            ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::MalformedBody(_)
            | ApiError::BadGateway(_)
            | ApiError::Forbidden(_) => problem(status, &self.to_string(), None),
            ApiError::BodyTimeout => {
                let mut response =
                    problem(status, "The request body did not arrive in time.", None);
                // The rest of the body may still be on its way: do not read it as a request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            ApiError::UriTooLong(limit) => problem(
                status,
                &self.to_string(),
                Some(json!({"invalid_params": [{
                    "name": "uri",
                    "reason": format!("the path and query string may be at most {limit} bytes (MAX_URI_BYTES)"),
                }]})),
            ),
            ApiError::Busy(detail) => {
                let mut response = problem(status, detail, None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                response
            }
            ApiError::TooMuch { parameter, detail } => problem(
                status,
                detail,
                Some(json!({"invalid_params": [{"name": parameter, "reason": detail}]})),
            ),
            ApiError::PayloadTooLarge(_) | ApiError::UnsupportedMediaType => {
                problem(status, &self.to_string(), None)
            }
            ApiError::Unprocessable(invalid) => problem(
                status,
                "Some fields of the request body are invalid.",
                Some(json!({"invalid_params": invalid_params(invalid)})),
            ),
            ApiError::Auth(error) => auth_problem(status, error),
        }
    }
}

fn invalid_params(invalid: &[(String, String)]) -> serde_json::Value {
    invalid
        .iter()
        .map(|(name, reason)| json!({"name": name, "reason": reason}))
        .collect()
}

/// Auth failures say what to do, never why a token or password failed in detail.
fn auth_problem(status: StatusCode, error: &AuthError) -> Response {
    let detail = match error {
        AuthError::NotConfigured => {
            "Accounts are not configured on this server (JWT_SECRET is not set).".to_owned()
        }
        AuthError::MissingToken => {
            "Sign in and send the token as `Authorization: Bearer …`.".to_owned()
        }
        AuthError::InvalidToken => "The token is invalid or expired; sign in again.".to_owned(),
        AuthError::InvalidCredentials => "Invalid email or password.".to_owned(),
        AuthError::Forbidden => "This account may not do this.".to_owned(),
        AuthError::EmailNotVerified => {
            "Verify your email address first: follow the link sent to it when you signed up."
                .to_owned()
        }
        AuthError::TooManyAttempts { .. } => "Too many attempts; try again later.".to_owned(),
        AuthError::EmailTaken => "This email is already registered.".to_owned(),
        AuthError::InvalidField(..) | AuthError::InvalidFields(_) => {
            "Some fields of the request body are invalid.".to_owned()
        }
        AuthError::ProviderUnavailable => {
            "The identity provider is unavailable; try again shortly.".to_owned()
        }
        AuthError::Storage(StorageError::Unavailable(_)) => {
            "The database is unavailable; try again shortly.".to_owned()
        }
        AuthError::Storage(_) | AuthError::Internal(_) => {
            tracing::error!(error = %error, "an account request failed");
            "The server could not answer this request.".to_owned()
        }
    };
    let extra = match error {
        AuthError::InvalidField(name, reason) => {
            Some(json!({"invalid_params": [{"name": name, "reason": reason}]}))
        }
        AuthError::InvalidFields(fields) => Some(json!({"invalid_params": fields
            .iter()
            .map(|(name, reason)| json!({"name": name, "reason": reason}))
            .collect::<Vec<_>>()})),
        _ => None,
    };
    let mut response = problem(status, &detail, extra);
    let headers = response.headers_mut();
    match error {
        AuthError::MissingToken | AuthError::InvalidToken => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        AuthError::TooManyAttempts { retry_after } => {
            let seconds = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        AuthError::NotConfigured
        | AuthError::ProviderUnavailable
        | AuthError::Storage(StorageError::Unavailable(_)) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    response
}
