//! The service's one error type: what went wrong, in terms every front end (HTTP, the command
//! line, the timer) can act on. Storage, query and account errors become one of these once,
//! here; each front end turns these into its own answer once (HTTP: `http::ApiError`).

use crate::auth::AuthError;
use crate::query::QueryError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A parameter the caller got wrong, named.
    #[error("{0}")]
    InvalidParameter(#[from] QueryError),
    #[error("{0}")]
    NotFound(String),
    /// The database does not answer: try again shortly.
    #[error("the database is unavailable")]
    Unavailable,
    /// Every slot for this kind of work is taken: try again shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// Understood, but more than the service computes at once.
    #[error("{detail}")]
    TooMuch {
        parameter: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A row's fields that break the declaration: `(name, reason)`.
    #[error("the request body is invalid")]
    Unprocessable(Vec<(String, String)>),
    #[error("{0}")]
    Conflict(String),
    /// The cache could not record a change before its commit: it was rolled back, nothing was
    /// written; try again shortly.
    #[error("the change was not made: {0}")]
    NotRecorded(String),
    /// A change was committed but the cache could not confirm its record afterwards (Redis
    /// failed in between): it may not be visible on every instance yet.
    #[error("the change was made, but the cache could not confirm it")]
    Unconfirmed,
    /// A service this one depends on (Blob Storage, Entra ID) failed or did not answer.
    #[error("{0}")]
    BadGateway(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ServiceError {
    pub fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        ServiceError::InvalidParameter(QueryError {
            parameter: parameter.to_owned(),
            reason: reason.into(),
        })
    }
}

impl From<StorageError> for ServiceError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(cause) | StorageError::Deadlock(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ServiceError::Unavailable
            }
            StorageError::ValueTooLong(cause) => {
                tracing::info!(error = %cause, "a value too long for the database");
                ServiceError::Unprocessable(vec![(
                    "body".into(),
                    "a text value is longer than this database stores in an indexed column \
                     (see the dataset's max_length)"
                        .into(),
                )])
            }
            other => ServiceError::Internal(other.into()),
        }
    }
}
