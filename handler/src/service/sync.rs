//! Sync (the `SyncDatasets` timer and `handler sync`): each dataset whose declaration names a
//! blob (`[import] blob`) is imported again when the blob changed since its last sync, and left
//! alone otherwise. What "changed" means is the blob's `ETag` (any write to a blob changes it),
//! read with a HEAD and compared with the version recorded in the database
//! (`smartcache_sources`) after the last successful import. Datasets are synced one at a time, in
//! catalog order; one's failure is reported and the others go on.
//!
//! The import runs in the dataset's declared `[import] mode`: the declaration says how its rows
//! are replaced, whoever imports them (`sync` changes only the rows that differ, and ends only the
//! cached answers they change).

use chrono::Utc;
use serde::Serialize;

use super::{ImportFrom, Service};
use crate::blob::BlobVersion;
use crate::datasets::Dataset;
use crate::import::ImportOptions;
use crate::storage::SourceVersion;

/// What one run did, dataset by dataset: the invocation's `ReturnValue`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncRunReport {
    pub synced: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub datasets: Vec<SyncOutcome>,
}

/// What was done for one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct SyncOutcome {
    pub dataset: String,
    /// The blob's URL without its query: a SAS never reaches a log.
    pub blob: String,
    pub action: SyncAction,
    /// The blob's `ETag` as read this run (`None` when it could not be read).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The import's mode (`replace` or `sync`), when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The import's summary line, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// What went wrong: the whole failure, or after a successful import the version that could
    /// not be recorded (the next run imports again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncAction {
    /// The blob changed (or was never synced): it was imported.
    Synced,
    /// The blob is the version last synced: nothing was read or written.
    Unchanged,
    /// The blob could not be read, or the import failed (the rows are as they were).
    Failed,
}

impl SyncOutcome {
    /// The line the invocation's `Logs` carry for this dataset.
    pub fn line(&self) -> String {
        let etag = self.etag.as_deref().unwrap_or("unknown");
        match self.action {
            SyncAction::Synced => format!(
                "sync {}: synced {} (ETag {etag}, {}): {}{}",
                self.dataset,
                self.blob,
                self.mode.unwrap_or("replace"),
                self.summary.as_deref().unwrap_or_default(),
                self.error
                    .as_deref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
            SyncAction::Unchanged => format!(
                "sync {}: unchanged {} (ETag {etag}), skipped",
                self.dataset, self.blob
            ),
            SyncAction::Failed => format!(
                "sync {}: failed {}: {}",
                self.dataset,
                self.blob,
                self.error.as_deref().unwrap_or_default()
            ),
        }
    }
}

impl SyncRunReport {
    /// One line per dataset, as [`SyncOutcome::line`] says.
    pub fn lines(&self) -> Vec<String> {
        self.datasets.iter().map(SyncOutcome::line).collect()
    }
}

impl Service {
    /// Syncs every dataset that declares a blob: imports it when it changed since its last sync.
    #[tracing::instrument(level = "debug", name = "service.sync_datasets", skip_all)]
    pub async fn sync_datasets(&self) -> SyncRunReport {
        let mut report = SyncRunReport::default();
        for dataset in self.catalog.iter() {
            let Some(url) = dataset.import.blob.as_deref() else {
                continue;
            };
            let outcome = self.sync_one(dataset, url).await;
            match outcome.action {
                SyncAction::Synced => report.synced += 1,
                SyncAction::Unchanged => report.unchanged += 1,
                SyncAction::Failed => report.failed += 1,
            }
            if outcome.error.is_none() {
                tracing::info!(dataset = %dataset.name, "{}", outcome.line());
            } else {
                tracing::warn!(dataset = %dataset.name, "{}", outcome.line());
            }
            report.datasets.push(outcome);
        }
        report
    }

    async fn sync_one(&self, dataset: &Dataset, url: &str) -> SyncOutcome {
        let mut outcome = SyncOutcome {
            dataset: dataset.name.clone(),
            // Until the URL parses: what precedes its query (a SAS is never shown).
            blob: url.split(['?', '#']).next().unwrap_or_default().to_owned(),
            action: SyncAction::Failed,
            etag: None,
            last_modified: None,
            mode: None,
            summary: None,
            error: None,
        };
        let current = match self.blob_version(url).await {
            Ok((blob, version)) => {
                outcome.blob = blob;
                outcome.etag = Some(version.etag.clone());
                outcome.last_modified = version.last_modified.clone();
                version
            }
            Err(error) => {
                outcome.error = Some(format!("{error:#}"));
                return outcome;
            }
        };
        let recorded = match self.storage.source_version(&dataset.name).await {
            Ok(recorded) => recorded,
            Err(error) => {
                let error = anyhow::Error::new(error).context("cannot read the synced version");
                outcome.error = Some(format!("{error:#}"));
                return outcome;
            }
        };
        if recorded.is_some_and(|r| r.blob == outcome.blob && r.etag == current.etag) {
            outcome.action = SyncAction::Unchanged;
            return outcome;
        }
        let mode = dataset.import.mode;
        outcome.mode = Some(mode.as_str());
        let options = ImportOptions {
            mode: Some(mode),
            ..ImportOptions::default()
        };
        let from = ImportFrom::Blob(url.to_owned());
        let report = match self.import(&dataset.name, from, &options).await {
            Ok(report) => report,
            Err(error) => {
                outcome.error = Some(format!("{error:#}"));
                return outcome;
            }
        };
        outcome.action = SyncAction::Synced;
        outcome.summary = Some(report.summary());
        // Recorded only after the import succeeded, and it is the version read *before* the
        // import: if the blob changed in between, the import read the newer one and the next run
        // finds a version other than this and syncs again; a change is never skipped. A crash
        // between the import and this record is harmless the same way: the next run syncs
        // again, and a sync of rows that did not change changes nothing.
        let version = SourceVersion {
            blob: outcome.blob.clone(),
            etag: current.etag,
            last_modified: current.last_modified,
            synced_at: Utc::now(),
        };
        if let Err(error) = self
            .storage
            .record_source_version(&dataset.name, &version)
            .await
        {
            let error = anyhow::Error::new(error);
            outcome.error = Some(format!(
                "the synced version could not be recorded, so the next run imports again: {error:#}"
            ));
        }
        outcome
    }

    /// The blob's version, read with the access the settings give (as an import reads it), and
    /// its URL as it may be shown.
    async fn blob_version(&self, url: &str) -> anyhow::Result<(String, BlobVersion)> {
        let (reader, display) = self.blob_reader(url)?;
        Ok((display, reader.version().await?))
    }
}
