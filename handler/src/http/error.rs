//! The HTTP layer's one error type, answered as `application/problem+json` (RFC 9457): what
//! the service says ([`ServiceError`], converted here once), and what only HTTP can get wrong
//! (bodies, URIs, the timer route). Internal causes are logged, never sent: the body says what
//! the client can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::service::ServiceError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("{0}")]
    MalformedBody(String),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body did not arrive within the body timeout")]
    BodyTimeout,
    /// The path and query string together are longer than `MAX_URI_BYTES`.
    #[error("the path and query string are longer than {0} bytes")]
    UriTooLong(usize),
    /// Only certain callers may do this (the timer functions: the Functions host).
    #[error("{0}")]
    Forbidden(&'static str),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Service(error) => service_status(error),
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// A parameter of the request the client got wrong, named.
    pub fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        ApiError::Service(ServiceError::invalid(parameter, reason))
    }

    /// The body, field by field: `(name, reason)`.
    pub fn unprocessable(invalid: Vec<(String, String)>) -> Self {
        ApiError::Service(ServiceError::Unprocessable(invalid))
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::Service(ServiceError::Auth(error))
    }
}

fn service_status(error: &ServiceError) -> StatusCode {
    match error {
        ServiceError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Unavailable
        | ServiceError::Busy(_)
        | ServiceError::NotRecorded(_)
        | ServiceError::Unconfirmed => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Unprocessable(_) | ServiceError::TooMuch { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ServiceError::Auth(error) => match error {
            AuthError::NotConfigured | AuthError::ProviderUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AuthError::MissingToken | AuthError::InvalidToken | AuthError::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Forbidden | AuthError::EmailNotVerified => StatusCode::FORBIDDEN,
            AuthError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::EmailTaken => StatusCode::CONFLICT,
            AuthError::InvalidField(..) | AuthError::InvalidFields(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AuthError::Storage(StorageError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Storage(_) | AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
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

/// `response` with a `Retry-After` of `seconds`.
fn retry_after(mut response: Response, seconds: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            ApiError::Service(error) => service_problem(status, error),
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
            ApiError::MalformedBody(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::UnsupportedMediaType
            | ApiError::Forbidden(_) => problem(status, &self.to_string(), None),
        }
    }
}

fn service_problem(status: StatusCode, error: &ServiceError) -> Response {
    match error {
        ServiceError::InvalidParameter(e) => problem(
            status,
            &error.to_string(),
            Some(json!({"invalid_params": [{"name": e.parameter, "reason": e.reason}]})),
        ),
        ServiceError::Internal(cause) => {
            tracing::error!(error = format!("{cause:#}"), "request failed");
            problem(status, "The server could not answer this request.", None)
        }
        ServiceError::Unavailable => retry_after(
            problem(
                status,
                "The database is unavailable; try again shortly.",
                None,
            ),
            "5",
        ),
        ServiceError::Busy(detail) => retry_after(problem(status, detail, None), "2"),
        ServiceError::NotRecorded(reason) => retry_after(
            problem(
                status,
                &format!("The change was not made: {reason}. Try again shortly."),
                None,
            ),
            "2",
        ),
        ServiceError::Unconfirmed => retry_after(
            problem(
                status,
                "The change was made, but the cache could not confirm it, so it may not show \
                 everywhere yet. Read the row before trying again.",
                None,
            ),
            "2",
        ),
        ServiceError::TooMuch { parameter, detail } => problem(
            status,
            detail,
            Some(json!({"invalid_params": [{"name": parameter, "reason": detail}]})),
        ),
        ServiceError::NotFound(_) | ServiceError::Conflict(_) | ServiceError::BadGateway(_) => {
            problem(status, &error.to_string(), None)
        }
        ServiceError::Unprocessable(invalid) => problem(
            status,
            "Some fields of the request body are invalid.",
            Some(json!({"invalid_params": invalid_params(invalid)})),
        ),
        ServiceError::Auth(error) => auth_problem(status, error),
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
