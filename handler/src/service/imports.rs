//! Imports: open a source (a file, or a blob in Azure Blob Storage), import it (replacing the
//! dataset's rows atomically), ending every cached answer of the dataset, which all predate the
//! new rows, with the same record-before-commit protocol as a write (`gate`). The command line waits for it; over HTTP it runs in the background (the serverless
//! counterpart of a Data Factory copy pipeline) and is followed by its job's status.
//!
//! The blob is opened before an HTTP import is accepted, so a wrong URL, a missing blob or a
//! denied SAS is refused at once; what can only fail later (bad rows, the database) shows in the
//! job's status. Jobs live in the instance that runs them (kept for a day).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde_json::json;

use super::gate::CacheGate;
use super::{Caller, Service, ServiceError};
use crate::blob::{BlobAuth, BlobError, BlobLocation, BlobReader};
use crate::cache::Cache;
use crate::datasets::{Dataset, ImportMode, Level};
use crate::import::{self, ImportOptions, ImportProgress, ImportReport, ImportSource};
use crate::storage::Storage;

/// Where an import reads its CSV (plain or gzipped).
pub enum ImportFrom {
    File(PathBuf),
    /// A blob's URL: with a SAS in its query, or read with the account key of
    /// `AZURE_STORAGE_CONNECTION_STRING`, or the instance's Entra ID identity.
    Blob(String),
}

/// An import job's status, as its status endpoint shows it.
pub struct JobStatus {
    pub id: String,
    pub body: serde_json::Value,
}

impl Service {
    /// Imports `from` into dataset `name`, replacing its rows, then ends its cached answers.
    /// The error is the failure's whole story (what was read, what the database said).
    #[tracing::instrument(level = "debug", name = "service.import", skip_all, fields(dataset = name))]
    pub async fn import(
        &self,
        name: &str,
        from: ImportFrom,
        options: &ImportOptions,
    ) -> anyhow::Result<ImportReport> {
        let dataset = self.catalog.get(name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "there is no dataset named {name:?}; declared: {}",
                self.catalog.names().collect::<Vec<_>>().join(", ")
            )
        })?;
        let source = match from {
            ImportFrom::File(path) => ImportSource::file(&path)?,
            ImportFrom::Blob(url) => self.open_blob(&url).await?.0,
        };
        import_gated(&self.storage, &self.cache, &dataset, source, options, None).await
    }

    /// Opens a blob as an import's source, with the access the settings give; and the blob's
    /// name as it may be shown (no SAS).
    async fn open_blob(&self, url: &str) -> anyhow::Result<(ImportSource, String)> {
        let (reader, display) = self.blob_reader(url)?;
        Ok((reader.open().await?, display))
    }

    /// A reader of the blob at `url` with the access the settings give (nothing is sent yet),
    /// and the blob's name as it may be shown (no SAS).
    pub(super) fn blob_reader(&self, url: &str) -> anyhow::Result<(BlobReader, String)> {
        let location = BlobLocation::parse(url)?;
        let access = &self.blob_access;
        let connection_string = access.connection_string.as_ref().map(|s| s.expose());
        let auth = BlobAuth::for_location(&location, connection_string, access.auth.as_deref())?;
        let display = location.display.clone();
        Ok((BlobReader::new(location, auth)?, display))
    }

    /// Imports over HTTP, for an admin (checked before the request's body is read).
    #[tracing::instrument(level = "debug", name = "service.importer", skip_all)]
    pub async fn importer(&self, caller: &Caller) -> Result<Importer<'_>, ServiceError> {
        self.authorize(caller, Level::Admin).await?;
        Ok(Importer { service: self })
    }
}

/// What an admin may do with imports.
pub struct Importer<'a> {
    service: &'a Service,
}

impl Importer<'_> {
    /// Starts importing the blob at `blob` into dataset `name` in the background: the new job's
    /// status. A wrong dataset or URL, a missing blob or denied access is refused at once (the
    /// client's mistake); Blob Storage or Entra ID failing is a bad gateway.
    #[tracing::instrument(level = "debug", name = "service.start_import", skip_all, fields(dataset = name))]
    pub async fn start(
        self,
        name: &str,
        blob: &str,
        mode: Option<ImportMode>,
    ) -> Result<JobStatus, ServiceError> {
        let service = self.service;
        let unprocessable = |field: &str, reason: String| {
            ServiceError::Unprocessable(vec![(field.to_owned(), reason)])
        };
        let dataset = service.catalog.get(name).cloned().ok_or_else(|| {
            unprocessable("dataset", format!("there is no dataset named {name:?}"))
        })?;
        BlobLocation::parse(blob).map_err(|e| unprocessable("blob", format!("{e:#}")))?;
        let id = new_job_id();
        // Taken before the blob is opened: two requests for one dataset cannot both start.
        let slot = service
            .imports
            .reserve(&dataset.name, &id)
            .map_err(|running| {
                ServiceError::Conflict(format!(
                    "an import of {} is running: /api/admin/imports/{running}",
                    dataset.name
                ))
            })?;
        let (source, display) = service.open_blob(blob).await.map_err(|error| {
            match error.downcast_ref::<BlobError>() {
                // Blob Storage or Entra ID failed: not the client's mistake.
                Some(
                    BlobError::Unexpected { .. }
                    | BlobError::Unreachable { .. }
                    | BlobError::Token(_),
                ) => ServiceError::BadGateway(error.to_string()),
                // What the client named is wrong: the blob, or the access it gave.
                _ => unprocessable("blob", format!("{error:#}")),
            }
        })?;
        let mode = mode.unwrap_or(dataset.import.mode);
        let job = Arc::new(Job {
            id,
            mode,
            dataset: dataset.name.clone(),
            source: display,
            size: source.size,
            started_at: Utc::now(),
            progress: Arc::default(),
            outcome: Mutex::new(None),
        });
        service.imports.insert(Arc::clone(&job));
        tracing::info!(job = %job.id, dataset = %dataset.name, blob = %job.source, "import started");
        // The import outlives the request: the client polls the status.
        let (service, running) = (service.clone(), Arc::clone(&job));
        tokio::spawn(async move {
            // In a task of its own, so that even a crash ends the job with an error.
            let (storage, cache) = (Arc::clone(&service.storage), Arc::clone(&service.cache));
            let progress = Arc::clone(&running.progress);
            let imported = tokio::spawn(async move {
                let options = ImportOptions {
                    mode: Some(mode),
                    ..ImportOptions::default()
                };
                import_gated(&storage, &cache, &dataset, source, &options, Some(progress)).await
            })
            .await
            .unwrap_or_else(|crashed| Err(anyhow::anyhow!("the import crashed: {crashed}")));
            let result = match imported {
                Ok(report) => {
                    tracing::info!(job = %running.id, "{}", report.summary());
                    Ok(report)
                }
                Err(error) => {
                    tracing::warn!(job = %running.id, error = format!("{error:#}"), "import failed");
                    Err(format!("{error:#}"))
                }
            };
            *running.outcome.lock() = Some(Outcome {
                finished_at: Utc::now(),
                finished: Instant::now(),
                result,
            });
            drop(slot);
        });
        Ok(JobStatus {
            id: job.id.clone(),
            body: job.status(),
        })
    }

    /// An import job's status, on the instance that runs it.
    pub fn status(&self, id: &str) -> Result<JobStatus, ServiceError> {
        let job =
            self.service.imports.get(id).ok_or_else(|| {
                ServiceError::NotFound(format!("no import {id:?} on this instance"))
            })?;
        Ok(JobStatus {
            id: job.id.clone(),
            body: job.status(),
        })
    }
}

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
    mode: ImportMode,
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
            "mode": self.mode.as_str(),
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
                            .map(|r| json!({"line": r.line, "reason": r.message()}))
                            .collect::<Vec<_>>(),
                        "rejection_groups": report.groups.iter()
                            .map(|g| json!({"column": g.column, "reason": g.reason,
                                "count": g.count, "first_lines": g.first_lines}))
                            .collect::<Vec<_>>(),
                        "seconds": report.elapsed.as_secs_f64(),
                        "rows_per_second": report.rows_per_second().round(),
                    });
                    if let (Some(sync), Some(unchanged)) = (report.sync, report.unchanged()) {
                        status["report"]["sync"] = json!({
                            "added": sync.added, "changed": sync.changed,
                            "removed": sync.removed, "unchanged": unchanged,
                        });
                    }
                }
                Err(error) => status["error"] = json!(error),
            }
        }
        status
    }
}

/// Imports `source` into `dataset`, recording the change of everything with the cache just
/// before the new rows are swapped in (refused, and nothing changed, if it cannot), and ending
/// that record after: every answer computed before the swap ends, on every instance.
async fn import_gated(
    storage: &Arc<dyn Storage>,
    cache: &Cache,
    dataset: &Dataset,
    source: ImportSource,
    options: &ImportOptions,
    watcher: Option<Arc<ImportProgress>>,
) -> anyhow::Result<ImportReport> {
    let gate = CacheGate::new(cache, dataset);
    let imported = import::import(storage.as_ref(), dataset, source, options, watcher, &gate).await;
    let confirmed = gate.finish().await;
    let report = imported?;
    if confirmed.is_err() {
        anyhow::bail!(
            "the rows were replaced, but the cache could not confirm it: this instance serves none \
             of {}'s cached answers until it can, and other instances may serve old ones until \
             the record lapses",
            dataset.name
        );
    }
    Ok(report)
}
