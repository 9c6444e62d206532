//! Imports from Azure Blob Storage over HTTP: `POST /api/admin/imports` starts one in the
//! background, `GET /api/admin/imports/{id}` reports its progress and, once it ends, its summary
//! or error (see `service::imports`). Admins only, checked before the body is read.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::body::JsonBody;
use super::{ApiError, AppState, json_response};
use crate::service::{Caller, ServiceError};

/// `POST /api/admin/imports` with `{"dataset": "...", "blob": "https://...", "mode": "sync"}`
/// (`mode` optional: the dataset's declared one): 202 and
/// `Location` of the job's status.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let importer = state.importer(&caller).await?;
    let body = JsonBody::from_request(request, &state).await?;
    let text = |name: &str| match body.fields.get(name) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err((name.to_owned(), "is required (a string)".to_owned())),
    };
    let (dataset, blob) = match (text("dataset"), text("blob")) {
        (Ok(d), Ok(b)) => (d, b),
        (d, b) => {
            let invalid = [d.err(), b.err()].into_iter().flatten().collect();
            return Err(ApiError::unprocessable(invalid));
        }
    };
    let mode = match body.fields.get("mode") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(mode)) => Some(
            mode.parse()
                .map_err(|reason| ApiError::unprocessable(vec![("mode".to_owned(), reason)]))?,
        ),
        Some(_) => {
            return Err(ApiError::unprocessable(vec![(
                "mode".to_owned(),
                "must be \"replace\" or \"sync\"".to_owned(),
            )]));
        }
    };
    let job = importer.start(&dataset, &blob, mode).await?;
    let mut response = json_response(StatusCode::ACCEPTED, job.body.to_string().into_bytes(), "");
    let location = format!("/api/admin/imports/{}", job.id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `GET /api/admin/imports/{id}`.
pub async fn status(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let importer = state.importer(&caller).await?;
    let id = path
        .map(|Path(id)| id)
        .map_err(|_| ServiceError::NotFound("no such import".into()))?;
    let job = importer.status(&id)?;
    Ok(json_response(
        StatusCode::OK,
        job.body.to_string().into_bytes(),
        "",
    ))
}
