//! Writes: `POST /api/{dataset}`, `PUT`/`PATCH`/`DELETE /api/{dataset}/{id}`. The caller is
//! authorised before the body is even read (an anonymous client gets its 401 whatever it sends);
//! the rest is the service's (see `service::writes`): a write the cache cannot record is not
//! made (503 with `Retry-After`).

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::JsonBody;
use super::data::path_params;
use super::{ApiError, AppState, json_response};
use crate::service::{Action, Caller, Written};

fn row_response(status: StatusCode, written: Written) -> Response {
    let mut response = match written.row {
        Some(row) if status != StatusCode::NO_CONTENT => json_response(status, row, ""),
        _ => status.into_response(),
    };
    let headers = response.headers_mut();
    if let Some(Ok(location)) = written.location.map(|l| HeaderValue::from_str(&l)) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// `POST /api/{dataset}`: 201 with `Location` and the row as stored.
pub async fn create(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let write = state.write(&caller, &name, Action::Create).await?;
    let body = JsonBody::from_request(request, &state).await?;
    Ok(row_response(
        StatusCode::CREATED,
        write.create(&body.fields).await?,
    ))
}

/// `PUT /api/{dataset}/{id}`: replaces every column.
pub async fn replace(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let write = state.write(&caller, &name, Action::Update).await?;
    let body = JsonBody::from_request(request, &state).await?;
    Ok(row_response(
        StatusCode::OK,
        write.replace(&id, &body.fields).await?,
    ))
}

/// `PATCH /api/{dataset}/{id}`: changes the columns the body names.
pub async fn patch(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let write = state.write(&caller, &name, Action::Update).await?;
    let body = JsonBody::from_request(request, &state).await?;
    Ok(row_response(
        StatusCode::OK,
        write.patch(&id, &body.fields).await?,
    ))
}

/// `DELETE /api/{dataset}/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let write = state.write(&caller, &name, Action::Delete).await?;
    Ok(row_response(
        StatusCode::NO_CONTENT,
        write.delete(&id).await?,
    ))
}
