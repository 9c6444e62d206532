//! `POST /api/admin/imports` starts an import from Azure Blob Storage in the background (the
//! serverless counterpart of a Data Factory copy pipeline); `GET /api/admin/imports/{id}` reports
//! its progress and, once it ends, its summary or error.
//!
//! The blob is opened before the answer, so a wrong URL, a missing blob or a denied SAS is a 422
//! at once; what can only fail later (bad rows, the database) shows in the job's status. Jobs
//! live in the instance that runs them (kept for a day): the status endpoint answers on that
//! instance, which is the one a client's next call reaches while the Functions host keeps it warm.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::body::JsonBody;
use super::{ApiError, AppState, json_response};
use crate::auth::Level;
use crate::blob::{BlobAuth, BlobError, BlobLocation, BlobReader};
use crate::import::{self, ImportProgress, ImportReport};

/// Finished jobs are forgotten after this long.
const KEEP_FINISHED: Duration = Duration::from_secs(24 * 3600);
/// Rejections listed in a job's status (the count is always exact).
const LISTED_REJECTIONS: usize = 20;

/// The imports this instance runs or ran.
#[derive(Default)]
pub struct ImportJobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Datasets whose import is being opened or runs: one at a time per dataset.
    busy: Mutex<HashMap<String, String>>,
}

/// A dataset's import slot, held from before the blob is opened until the import ends.
struct Slot {
    jobs: Arc<ImportJobs>,
    dataset: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.jobs.busy.lock().remove(&self.dataset);
    }
}

struct Job {
    id: String,
    dataset: String,
    source: String,
    size: u64,
    started_at: DateTime<Utc>,
    progress: Arc<ImportProgress>,
    outcome: Mutex<Option<Outcome>>,
}

struct Outcome {
    finished_at: DateTime<Utc>,
    finished: Instant,
    result: Result<ImportReport, String>,
}

impl ImportJobs {
    /// The dataset's slot, or the id of the import holding it.
    fn reserve(self: &Arc<Self>, dataset: &str, id: &str) -> Result<Slot, String> {
        let mut busy = self.busy.lock();
        if let Some(holder) = busy.get(dataset) {
            return Err(holder.clone());
        }
        busy.insert(dataset.to_owned(), id.to_owned());
        Ok(Slot {
            jobs: Arc::clone(self),
            dataset: dataset.to_owned(),
        })
    }

    fn insert(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock();
        jobs.retain(|_, job| {
            job.outcome
                .lock()
                .as_ref()
                .is_none_or(|o| o.finished.elapsed() < KEEP_FINISHED)
        });
        jobs.insert(job.id.clone(), job);
    }

    fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().get(id).cloned()
    }
}

/// 128 random bits as hex: job ids are not guessable from one another.
fn new_job_id() -> String {
    let random = || RandomState::new().hash_one(Instant::now());
    format!("{:016x}{:016x}", random(), random())
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Job {
    fn status(&self) -> serde_json::Value {
        let outcome = self.outcome.lock();
        let state = match outcome.as_ref().map(|o| &o.result) {
            None => "running",
            Some(Ok(_)) => "succeeded",
            Some(Err(_)) => "failed",
        };
        let mut status = json!({
            "id": self.id,
            "dataset": self.dataset,
            "source": self.source,
            "state": state,
            "started_at": timestamp(&self.started_at),
            "bytes_total": self.size,
            "bytes_read": self.progress.bytes_read.load(Ordering::Relaxed),
            "rows_staged": self.progress.rows_staged.load(Ordering::Relaxed),
        });
        if let Some(outcome) = outcome.as_ref() {
            status["finished_at"] = json!(timestamp(&outcome.finished_at));
            match &outcome.result {
                Ok(report) => {
                    status["report"] = json!({
                        "imported": report.imported,
                        "rejected": report.rejected,
                        "rejections": report.rejections.iter().take(LISTED_REJECTIONS)
                            .map(|r| json!({"line": r.line, "reason": r.reason}))
                            .collect::<Vec<_>>(),
                        "seconds": report.elapsed.as_secs_f64(),
                        "rows_per_second": report.rows_per_second().round(),
                    });
                }
                Err(error) => status["error"] = json!(error),
            }
        }
        status
    }
}

/// `POST /api/admin/imports` with `{"dataset": "...", "blob": "https://..."}`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    super::auth::authorize(&state, &headers, Level::Admin).await?;
    let body = JsonBody::from_request(request, &state).await?;
    let text = |name: &str| match body.fields.get(name) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err((name.to_owned(), "is required (a string)".to_owned())),
    };
    let (dataset_name, blob_url) = match (text("dataset"), text("blob")) {
        (Ok(d), Ok(b)) => (d, b),
        (d, b) => {
            let invalid = [d.err(), b.err()].into_iter().flatten().collect();
            return Err(ApiError::Unprocessable(invalid));
        }
    };
    let unprocessable =
        |field: &str, reason: String| ApiError::Unprocessable(vec![(field.to_owned(), reason)]);
    let dataset = state.catalog.get(&dataset_name).cloned().ok_or_else(|| {
        unprocessable(
            "dataset",
            format!("there is no dataset named {dataset_name:?}"),
        )
    })?;
    let location =
        BlobLocation::parse(&blob_url).map_err(|e| unprocessable("blob", format!("{e:#}")))?;
    let id = new_job_id();
    // Taken before the blob is opened: two requests for one dataset cannot both start.
    let slot = state
        .imports
        .reserve(&dataset.name, &id)
        .map_err(|running| {
            ApiError::Conflict(format!(
                "an import of {} is running: /api/admin/imports/{running}",
                dataset.name
            ))
        })?;
    let auth = BlobAuth::for_location(
        &location,
        state
            .blob_access
            .connection_string
            .as_ref()
            .map(|s| s.expose()),
        state.blob_access.auth.as_deref(),
    )
    .map_err(|e| unprocessable("blob", format!("{e:#}")))?;
    let reader = BlobReader::new(location.clone(), auth).map_err(ApiError::Internal)?;
    let source = reader.open().await.map_err(|error| match error {
        // What the client named is wrong: the blob, or the access it gave.
        BlobError::NotFound { .. } | BlobError::Denied { .. } | BlobError::Changed { .. } => {
            unprocessable("blob", error.to_string())
        }
        // Blob Storage or Entra ID failed: not the client's mistake.
        BlobError::Unexpected { .. } | BlobError::Unreachable { .. } | BlobError::Token(_) => {
            ApiError::BadGateway(error.to_string())
        }
    })?;

    let job = Arc::new(Job {
        id,
        dataset: dataset.name.clone(),
        source: location.display.clone(),
        size: source.size,
        started_at: Utc::now(),
        progress: Arc::default(),
        outcome: Mutex::new(None),
    });
    state.imports.insert(Arc::clone(&job));
    tracing::info!(job = %job.id, dataset = %dataset.name, blob = %location.display, "import started");
    // The import outlives this request: the client polls the status.
    tokio::spawn({
        let (state, job) = (state.clone(), Arc::clone(&job));
        async move {
            // In a task of its own, so that even a crash ends the job with an error.
            let running = tokio::spawn({
                let (storage, dataset, progress) = (
                    Arc::clone(&state.storage),
                    dataset.clone(),
                    Arc::clone(&job.progress),
                );
                async move {
                    import::import(storage.as_ref(), &dataset, source, false, Some(progress)).await
                }
            });
            let result = match running.await {
                Ok(result) => result,
                Err(crashed) => Err(anyhow::anyhow!("the import crashed: {crashed}")),
            };
            let result = match result {
                Ok(report) => {
                    // Every cached answer of the dataset predates the new rows.
                    if state.cache.purge(&dataset.name).await.is_err() {
                        tracing::warn!(dataset = %dataset.name, "the cache could not be purged after an import; answers expire by their TTL");
                    }
                    tracing::info!(job = %job.id, "{}", report.summary());
                    Ok(report)
                }
                Err(error) => {
                    tracing::warn!(job = %job.id, error = format!("{error:#}"), "import failed");
                    Err(format!("{error:#}"))
                }
            };
            *job.outcome.lock() = Some(Outcome {
                finished_at: Utc::now(),
                finished: Instant::now(),
                result,
            });
            drop(slot);
        }
    });
    let mut response = json_response(
        StatusCode::ACCEPTED,
        job.status().to_string().into_bytes(),
        "",
    );
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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::auth::authorize(&state, &headers, Level::Admin).await?;
    let id = path
        .map(|Path(id)| id)
        .map_err(|_| ApiError::NotFound("no such import".into()))?;
    let job = state
        .imports
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no import {id:?} on this instance")))?;
    Ok(json_response(
        StatusCode::OK,
        job.status().to_string().into_bytes(),
        "",
    ))
}
