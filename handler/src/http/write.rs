//! Writes: `POST /api/{dataset}`, `PUT`/`PATCH`/`DELETE /api/{dataset}/{id}`.
//!
//! Each one: authorise (the dataset's `[access]` level, admins by default) before the body is
//! even read, check the body
//! against the declaration (422 naming every bad field), apply it in one transaction, then record
//! the write with the cache (old and new row, so exactly the answers it could change end) before
//! answering. A write Redis could not record is still committed; the cache then serves none of
//! the dataset's answers until it has purged them (`X-Cache-Invalidation: deferred`).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::JsonBody;
use super::data::{dataset, path_params, write_row_json};
use super::{ApiError, AppState, json_response};
use crate::auth::Level;
use crate::datasets::{Dataset, Value, validate};
use crate::storage::{Change, StorageError, Written};

/// The dataset, if the caller may act on it at `level`.
async fn writable(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    level: impl Fn(&Dataset) -> Level,
) -> Result<Arc<Dataset>, ApiError> {
    let dataset = dataset(state, name)?;
    super::auth::authorize(state, headers, level(&dataset)).await?;
    Ok(dataset)
}

fn parse_key(dataset: &Dataset, id: &str) -> Result<Value, ApiError> {
    crate::datasets::rules::request_value(dataset.key_column().ty, id)
        .map_err(|_| ApiError::NotFound(format!("{} has no row with id {id:?}.", dataset.name)))
}

/// Applies the change, then records it with the cache; the caller answers only after both. Both
/// run in a task of their own, so a client that hangs up after the commit cannot stop the cache
/// from hearing of it.
async fn apply(
    state: &AppState,
    dataset: &Arc<Dataset>,
    change: Change,
    id: Option<&str>,
) -> Result<(Written, bool), ApiError> {
    let (state, dataset, id) = (state.clone(), Arc::clone(dataset), id.map(str::to_owned));
    tokio::spawn(async move { apply_now(&state, &dataset, change, id.as_deref()).await })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the write task failed: {e}")))?
}

async fn apply_now(
    state: &AppState,
    dataset: &Dataset,
    change: Change,
    id: Option<&str>,
) -> Result<(Written, bool), ApiError> {
    state.ensure_tables(dataset).await?;
    let written = state
        .storage
        .write(dataset, change)
        .await
        .map_err(|error| match error {
            StorageError::NotFound => ApiError::NotFound(format!(
                "{} has no row with id {:?}.",
                dataset.name,
                id.unwrap_or_default()
            )),
            StorageError::Conflict => {
                ApiError::Conflict(format!("{} already has a row with this id.", dataset.name))
            }
            other => other.into(),
        })?;
    let recorded = state
        .cache
        .record_write(dataset, written.old.clone(), written.new.clone())
        .await
        .inspect_err(|_| {
            tracing::warn!(dataset = %dataset.name, "a write was committed while the cache was unreachable; its answers are purged when it returns");
        })
        .is_ok();
    Ok((written, recorded))
}

fn row_response(
    status: StatusCode,
    dataset: &Dataset,
    written: &Written,
    recorded: bool,
) -> Response {
    let mut body = Vec::with_capacity(512);
    if let Some(row) = &written.new {
        write_row_json(dataset, row, &mut body);
    }
    let mut response = if body.is_empty() {
        status.into_response()
    } else {
        json_response(status, body, "")
    };
    if !recorded {
        response
            .headers_mut()
            .insert("x-cache-invalidation", HeaderValue::from_static("deferred"));
    }
    response
}

fn unprocessable(invalid: Vec<crate::datasets::validate::Invalid>) -> ApiError {
    ApiError::Unprocessable(invalid)
}

/// `POST /api/{dataset}`: 201 with `Location` and the row as stored.
pub async fn create(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let dataset = writable(&state, &name, &headers, |d| d.access.create).await?;
    let body = JsonBody::from_request(request, &state).await?;
    let row = validate::full_row(&dataset, &body.fields, None, state.storage.engine_rules())
        .map_err(unprocessable)?;
    let (written, recorded) = apply(&state, &dataset, Change::Create(row), None).await?;
    let mut response = row_response(StatusCode::CREATED, &dataset, &written, recorded);
    if let Some(row) = &written.new {
        let id = row[dataset.key.column].to_text();
        let location = format!("/api/{}/{}", dataset.name, url_segment(&id));
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

/// What PUT and PATCH start from: the dataset (if the caller may update it), the id as given
/// and as a key, then the body (read only once the caller is known to be allowed).
async fn row_to_update(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    request: Request,
) -> Result<(Arc<Dataset>, String, Value, JsonBody), ApiError> {
    let (name, id) = path_params(path)?;
    let dataset = writable(state, &name, headers, |d| d.access.update).await?;
    let body = JsonBody::from_request(request, state).await?;
    let key = parse_key(&dataset, &id)?;
    Ok((dataset, id, key, body))
}

/// `PUT /api/{dataset}/{id}`: replaces every column.
pub async fn replace(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (dataset, id, key, body) = row_to_update(&state, path, &headers, request).await?;
    let row = validate::full_row(
        &dataset,
        &body.fields,
        Some(&key),
        state.storage.engine_rules(),
    )
    .map_err(unprocessable)?;
    let (written, recorded) = apply(&state, &dataset, Change::Replace(key, row), Some(&id)).await?;
    Ok(row_response(StatusCode::OK, &dataset, &written, recorded))
}

/// `PATCH /api/{dataset}/{id}`: changes the columns the body names.
pub async fn patch(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (dataset, id, key, body) = row_to_update(&state, path, &headers, request).await?;
    let changes = validate::patch(&dataset, &body.fields, &key, state.storage.engine_rules())
        .map_err(unprocessable)?;
    let (written, recorded) =
        apply(&state, &dataset, Change::Patch(key, changes), Some(&id)).await?;
    Ok(row_response(StatusCode::OK, &dataset, &written, recorded))
}

/// `DELETE /api/{dataset}/{id}`: 204.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let dataset = writable(&state, &name, &headers, |d| d.access.delete).await?;
    let key = parse_key(&dataset, &id)?;
    let (written, recorded) = apply(&state, &dataset, Change::Delete(key), Some(&id)).await?;
    Ok(row_response(
        StatusCode::NO_CONTENT,
        &dataset,
        &written,
        recorded,
    ))
}

/// Percent-encodes what a path segment cannot hold as it is.
fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
