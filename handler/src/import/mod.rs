//! `handler import`: streams a CSV file (optionally gzipped) into a dataset's storage.
//!
//! A blocking thread reads and converts records into typed rows and hands batches over a bounded
//! channel to the async side, which writes them into the storage's staging area; parsing and
//! loading overlap, and memory holds at most a few batches whatever the file size. Bad rows are
//! rejected with their line number and reason; the good ones replace the dataset's rows in one
//! atomic swap at the end, and only if at least one row was good.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IsTerminal as _, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::datasets::rules::{self, EngineRules};
use crate::datasets::{Column, Dataset, ImportMode, Value};
use crate::storage::{CommitGate, Committing, ImportSink, Row, Storage, Ungated};

mod csv_source;
mod report;

pub use csv_source::{csv_reader, header_names};

use report::{Groups, MAX_REPORTED_REJECTIONS, RejectsFile};
pub use report::{ImportReport, Rejection, RejectionGroup};

/// How an import shows and keeps what it does.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// A progress bar on stderr, when it is a terminal.
    pub show_progress: bool,
    /// Every rejected line written here as CSV (see [`report::RejectsFile`]).
    pub rejects: Option<PathBuf>,
    /// Replace every row, or change only the rows that differ; `None`: as the dataset declares.
    pub mode: Option<ImportMode>,
}

/// Rows per staging write: large enough to amortise a round trip, small enough to stay flat.
pub const BATCH_ROWS: usize = 10_000;
/// A batch also ends at this many bytes of CSV, so wide rows (long texts) keep memory flat too.
pub const BATCH_BYTES: usize = 4 << 20;
/// A sync that changes at most this many rows records each with the cache (one record of all
/// of them), so only the answers they change end; beyond it, it records a change of everything.
/// Why 10,000: every cached answer older than the sync is checked once per instance against each
/// recorded row (about a microsecond per row for a page), so 10,000 rows cost a check about as
/// much as recomputing a cold page (a few milliseconds of server time); the record (the key,
/// filter and sort columns of the old and new rows, about 2 MB for flights) stays well under the
/// record limit; and the sync holds the changed rows in memory to record them. With more
/// changes than that, few list, facet or export answers would survive anyway.
pub const SYNC_RECORDED_ROWS: u64 = 10_000;
/// Where an import reads its CSV from.
pub struct ImportSource {
    /// How errors and the report name the source (a path, or a blob URL without its SAS).
    pub name: String,
    /// Bytes to read, for the progress bar (0 when unknown).
    pub size: u64,
    /// Gzip-compressed (`.gz`): decompressed while reading.
    pub gzipped: bool,
    /// Read on a blocking thread.
    pub reader: Box<dyn Read + Send>,
}

impl ImportSource {
    pub fn file(path: &Path) -> anyhow::Result<ImportSource> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(ImportSource {
            name: path.display().to_string(),
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            gzipped: path.extension().is_some_and(|e| e == "gz"),
            reader: Box::new(file),
        })
    }
}

/// Live counts of a running import, for whoever watches it (the admin imports endpoint).
#[derive(Debug, Default)]
pub struct ImportProgress {
    /// Bytes of the source read so far (compressed bytes for a `.gz`).
    pub bytes_read: AtomicU64,
    /// Rows handed to the database's staging area so far.
    pub rows_staged: AtomicU64,
}

/// Imports `path` into `dataset`, replacing its rows. Fails, leaving the previous rows in place,
/// when the file cannot be read, its header lacks a declared column, no row is valid, or the
/// database fails.
pub async fn import_file(
    storage: &dyn Storage,
    dataset: &Dataset,
    path: &Path,
    show_progress: bool,
) -> anyhow::Result<ImportReport> {
    let source = ImportSource::file(path)?;
    let options = ImportOptions {
        show_progress,
        ..ImportOptions::default()
    };
    import(storage, dataset, source, &options, None, &Ungated).await
}

/// Imports a source into `dataset`, replacing its rows, with the guarantees of [`import_file`].
pub async fn import(
    storage: &dyn Storage,
    dataset: &Dataset,
    source: ImportSource,
    options: &ImportOptions,
    watcher: Option<Arc<ImportProgress>>,
    gate: &dyn CommitGate,
) -> anyhow::Result<ImportReport> {
    let started = Instant::now();
    let ImportSource {
        name,
        size,
        gzipped,
        reader,
    } = source;
    let progress = progress_bar(
        size,
        options.show_progress && std::io::stderr().is_terminal(),
    );
    // Created before anything is read: a path that cannot be written fails the import at once.
    let rejects = match &options.rejects {
        Some(path) => Some(RejectsFile::create(path)?),
        None => None,
    };
    let counted = CountingReader {
        inner: progress.wrap_read(reader),
        watcher: watcher.clone(),
    };

    // The reader may wait on the network (a blob): all reading, the gzip and CSV headers
    // included, happens on a blocking thread. The header is checked before the database is
    // touched.
    let (header_checked, header) = tokio::sync::oneshot::channel();
    let (sender, mut receiver) = mpsc::channel::<Vec<Row>>(2);
    let engine = storage.engine_rules();
    let reading = tokio::task::spawn_blocking({
        let dataset = dataset.clone();
        move || {
            let mut csv = csv_reader(Box::new(counted), gzipped);
            let plan = match ReadPlan::new(&dataset, engine, &mut csv, rejects) {
                Ok(plan) => plan,
                Err(error) => {
                    let _ = header_checked.send(Err(error));
                    return Ok(ReadOutcome::default());
                }
            };
            let _ = header_checked.send(Ok(()));
            plan.read_all(&dataset, &mut csv, &sender)
        }
    });
    header
        .await
        .map_err(|_| anyhow!("the CSV reader crashed"))?
        .with_context(|| format!("cannot import {name}"))?;

    let mut sink = storage
        .begin_import(dataset)
        .await
        .context("cannot start the import")?;
    let mut imported = 0u64;
    let mut write_error = None;
    while let Some(batch) = receiver.recv().await {
        if let Err(error) = sink.write(&batch).await {
            write_error = Some(error);
            break;
        }
        imported += batch.len() as u64;
        if let Some(watcher) = &watcher {
            watcher.rows_staged.store(imported, Ordering::Relaxed);
        }
    }
    drop(receiver); // stops the reader early if a write failed
    let outcome = reading
        .await
        .map_err(|e| anyhow!("the CSV reader crashed: {e}"))?;
    progress.finish_and_clear();

    let result = match (write_error, outcome) {
        (Some(error), _) => Err(anyhow::Error::new(error).context("the database refused the rows")),
        (None, Err(error)) => Err(error.context(format!("cannot read {name}"))),
        (None, Ok(outcome)) if imported == 0 => Err(match outcome.rejections.first() {
            Some(first) => anyhow!(
                "no row of {name} could be imported: {} rejected, the first on line {}: {}",
                outcome.rejected,
                first.line,
                first.message()
            ),
            None => anyhow!("{name} holds no rows"),
        }),
        (None, Ok(outcome)) => Ok(outcome),
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Err(abort_error) = sink.abort().await {
                tracing::warn!(error = %abort_error, "could not discard the staged rows");
            }
            return Err(error);
        }
    };
    let staged = started.elapsed();
    let sync = match options.mode.unwrap_or(dataset.import.mode) {
        ImportMode::Replace => {
            replace(sink, gate, &progress).await?;
            None
        }
        ImportMode::Sync => {
            let spinner = spinner(
                &progress,
                "comparing with the live rows and applying changes",
            );
            let synced = storage.sync(dataset, sink, gate, SYNC_RECORDED_ROWS).await;
            spinner.finish_and_clear();
            synced.context("cannot sync the dataset's rows with the imported ones (they were left as they were)")?
        }
    };
    Ok(ImportReport {
        dataset: dataset.name.clone(),
        imported,
        rejected: outcome.rejected,
        rejections: outcome.rejections,
        groups: outcome.groups.into_sorted(),
        elapsed: started.elapsed(),
        staged,
        sync,
    })
}

/// Swaps the staged rows in for every row of the dataset, the change of everything recorded
/// with the gate first.
async fn replace(
    sink: Box<dyn ImportSink>,
    gate: &dyn CommitGate,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    if let Err(reason) = gate.before_commit(Committing::Everything).await {
        if let Err(abort_error) = sink.abort().await {
            tracing::warn!(error = %abort_error, "could not discard the staged rows");
        }
        anyhow::bail!("the dataset's rows were left as they were: {reason}");
    }
    let spinner = spinner(progress, "building indexes and swapping in the new rows");
    let committed = sink.commit().await;
    spinner.finish_and_clear();
    committed.context("cannot replace the dataset's rows with the imported ones")
}

/// Counts the source's bytes for a watcher.
struct CountingReader<R> {
    inner: R,
    watcher: Option<Arc<ImportProgress>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(watcher) = &self.watcher {
            watcher.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A spinner for the phase after staging, shown only where the progress bar was.
fn spinner(progress: &ProgressBar, message: &'static str) -> ProgressBar {
    if progress.is_hidden() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

fn progress_bar(size: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("the template is valid"),
    );
    bar
}

/// Where each declared column is read from in the CSV, and where rejected lines go.
struct ReadPlan {
    sources: Vec<Option<usize>>,
    fields: usize,
    engine: EngineRules,
    rejects: Option<RejectsFile>,
}

/// What the reader thread found besides the rows it sent.
#[derive(Default)]
struct ReadOutcome {
    rejected: u64,
    rejections: Vec<Rejection>,
    groups: Groups,
}

impl ReadPlan {
    fn new<R: Read>(
        dataset: &Dataset,
        engine: EngineRules,
        csv: &mut csv::Reader<R>,
        mut rejects: Option<RejectsFile>,
    ) -> anyhow::Result<ReadPlan> {
        if let Some(rejects) = &mut rejects {
            let headers = csv.byte_headers().context("cannot read the header line")?;
            rejects.header(headers)?;
        }
        let names = header_names(csv)?;
        let mut sources = Vec::with_capacity(dataset.columns.len());
        for column in &dataset.columns {
            let Some(source) = &column.source else {
                sources.push(None);
                continue;
            };
            let Some(index) = names.iter().position(|n| n == source) else {
                bail!(
                    "the header has no column {source:?} (the source of {:?}); it has: {}",
                    column.name,
                    names.join(", ")
                );
            };
            sources.push(Some(index));
        }
        Ok(ReadPlan {
            sources,
            fields: names.len(),
            engine,
            rejects,
        })
    }

    fn read_all<R: Read>(
        mut self,
        dataset: &Dataset,
        csv: &mut csv::Reader<R>,
        sender: &mpsc::Sender<Vec<Row>>,
    ) -> anyhow::Result<ReadOutcome> {
        let mut outcome = ReadOutcome::default();
        let mut rejects = self.rejects.take();
        let mut reject = |rejection: Rejection, record: Option<&csv::ByteRecord>| {
            outcome.rejected += 1;
            outcome.groups.add(&rejection);
            if let Some(file) = &mut rejects {
                file.write(&rejection, record)?;
            }
            if outcome.rejections.len() < MAX_REPORTED_REJECTIONS {
                outcome.rejections.push(rejection);
            }
            anyhow::Ok(())
        };
        // Keys seen so far and the line of each: a duplicate is rejected, naming the first.
        let mut keys: HashMap<KeyOf, u64> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut batch_bytes = 0usize;
        let mut record = csv::ByteRecord::new();
        let mut ordinal = 0i64;
        loop {
            match csv.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    // A malformed record is that line's problem; an I/O error ends the import.
                    match error.kind() {
                        csv::ErrorKind::Io(_) => return Err(error.into()),
                        _ => {
                            let line = error.position().map_or(0, |p| p.line());
                            let rejection = Rejection {
                                line,
                                column: None,
                                reason: "malformed CSV record".to_owned(),
                                detail: Some(error.to_string()),
                            };
                            reject(rejection, None)?;
                            continue;
                        }
                    }
                }
            }
            ordinal += 1;
            let line = record.position().map_or(0, |p| p.line());
            if record.len() != self.fields {
                let rejection = Rejection {
                    line,
                    column: None,
                    reason: format!("expected {} fields, found {}", self.fields, record.len()),
                    detail: None,
                };
                reject(rejection, Some(&record))?;
                continue;
            }
            let row = match self.convert(dataset, &record, ordinal) {
                Ok(row) => row,
                Err((column, reason, value)) => {
                    let rejection = Rejection {
                        line,
                        column: Some(column),
                        reason,
                        detail: Some(value),
                    };
                    reject(rejection, Some(&record))?;
                    continue;
                }
            };
            let key = KeyOf::of(&row[dataset.key.column]);
            if let Some(first) = keys.get(&key) {
                let rejection = Rejection {
                    line,
                    column: Some(dataset.key_column().name.clone()),
                    reason: "duplicate key".to_owned(),
                    detail: Some(format!(
                        "{} is first on line {first}",
                        row[dataset.key.column].to_text()
                    )),
                };
                reject(rejection, Some(&record))?;
                continue;
            }
            keys.insert(key, line);
            batch.push(row);
            batch_bytes += record.as_slice().len();
            if batch.len() == BATCH_ROWS || batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if sender.blocking_send(full).is_err() {
                    return Ok(outcome); // the writer stopped; it reports why
                }
            }
        }
        if !batch.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        if let Some(file) = rejects {
            file.finish()?;
        }
        Ok(outcome)
    }

    fn convert(
        &self,
        dataset: &Dataset,
        record: &csv::ByteRecord,
        ordinal: i64,
    ) -> Result<Row, (String, String, String)> {
        let mut row = Vec::with_capacity(dataset.columns.len());
        for (position, (column, source)) in dataset.columns.iter().zip(&self.sources).enumerate() {
            let value = match source {
                None => Value::Integer(ordinal), // a generated row_number key
                Some(field) => {
                    let raw = std::str::from_utf8(&record[*field]).map_err(|_| {
                        let value = String::from_utf8_lossy(&record[*field]);
                        (
                            column.name.clone(),
                            "is not valid UTF-8".to_owned(),
                            quoted(&value),
                        )
                    })?;
                    let is_key = position == dataset.key.column;
                    convert_field(column, is_key, raw, self.engine)
                        .map_err(|reason| (column.name.clone(), reason, quoted(raw)))?
                }
            };
            row.push(value);
        }
        Ok(row)
    }
}

/// A field's value as a rejection shows it: quoted, and cut after 60 characters.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(60) {
        Some((cut, _)) => format!("value {:?}…", &value[..cut]),
        None => format!("value {value:?}"),
    }
}

/// One CSV field to a typed value, or the reason it is not one (in words that follow the column's
/// name): its type, then the rules every value obeys (the same as a write's, see [`rules`]).
pub fn convert_field(
    column: &Column,
    is_key: bool,
    raw: &str,
    engine: EngineRules,
) -> Result<Value, String> {
    let value = if column.is_null_marker(raw) {
        Value::Null
    } else {
        match &column.list_delimiter {
            Some(delimiter) => Value::parse_list(raw, delimiter),
            // Not the parser's message, which quotes the value: lines group by reason.
            None => Value::parse_scalar(column.ty, raw)
                .map_err(|_| format!("is not a valid {}", column.ty.name()))?,
        }
    };
    rules::check(column, is_key, &value, engine)?;
    Ok(value)
}

#[derive(Hash, PartialEq, Eq)]
enum KeyOf {
    Integer(i64),
    Text(String),
}

impl KeyOf {
    fn of(value: &Value) -> KeyOf {
        match value {
            Value::Integer(i) => KeyOf::Integer(*i),
            other => KeyOf::Text(other.to_text()),
        }
    }
}
