//! The data endpoints: list, item, export and facets of a dataset.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use std::future::Future;

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::cache::{CachedResponse, Claim, Outcome, Stamp, StreamClaim, Subject};
use crate::datasets::{Dataset, Value};
use crate::query::{Cursor, ExportFormat, Query, QueryKind, encode_cursor};
use crate::storage::Row;

pub(super) fn dataset(state: &AppState, name: &str) -> Result<Arc<Dataset>, ApiError> {
    state
        .catalog
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("There is no dataset named {name:?}.")))
}

/// The dataset, if the caller may read it (its `[access] read` level; anyone by default).
async fn readable(state: &AppState, name: &str, call: &Call) -> Result<Arc<Dataset>, ApiError> {
    let dataset = dataset(state, name)?;
    if !call.warming {
        super::auth::authorize(state, &call.headers, dataset.access.read).await?;
    }
    Ok(dataset)
}

/// Makes sure the dataset's tables exist before a query: a dataset never imported is empty, not
/// an error. Behind the database breaker, like the query itself.
async fn tables_for_query(state: &AppState, dataset: &Dataset) -> Result<(), ApiError> {
    if state.database.is_open() {
        return Err(ApiError::Unavailable);
    }
    let result = state.ensure_tables(dataset).await;
    if matches!(result, Err(ApiError::Unavailable)) {
        state.database.trip();
    }
    result
}

/// Path parameters that are not valid UTF-8 are the client's error, reported as problem+json.
pub(super) fn path_params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))
}

/// What a cached GET needs from its request.
pub struct Call {
    headers: HeaderMap,
    path_and_query: String,
    /// Set (as a request extension, never from the network) by warm-up.
    warming: bool,
    started: Instant,
}

/// Marks an internal warm-up request: near-expiry entries are refreshed, accesses not counted.
#[derive(Clone, Copy)]
pub struct Warming;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Call {
            headers: parts.headers.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            warming: parts.extensions.get::<Warming>().is_some(),
            started: Instant::now(),
        })
    }
}

/// Answers from the cache, computing the body (once, however many callers wait) on a miss.
async fn cached<F, Fut>(
    state: &AppState,
    dataset: &Dataset,
    subject: Subject<'_>,
    key: String,
    call: &Call,
    compute: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Vec<u8>, ApiError>>,
{
    if !call.warming {
        state.cache.record_access(&call.path_and_query);
    }
    // When the database is down, the last good answer is better than an error (X-Cache: STALE).
    // After a failure the breaker skips the database for a moment, so that every request does
    // not wait out a connect timeout first.
    let database_down = |error: &ApiError| matches!(error, ApiError::Unavailable);
    let compute = || async {
        tables_for_query(state, dataset).await?;
        let result = compute().await;
        if matches!(result, Err(ApiError::Unavailable)) {
            state.database.trip();
        }
        result
    };
    let (entry, outcome) = state
        .cache
        .get_or_compute_or_stale(
            dataset,
            subject,
            key,
            || async { Ok::<_, ApiError>((compute().await?, "application/json")) },
            database_down,
            call.warming,
        )
        .await?;
    Ok(cached_response(
        &entry,
        outcome,
        &call.headers,
        call.started,
    ))
}

/// A stored response as HTTP: 304 for a matching `If-None-Match`; the gzipped body as it is
/// stored when the client accepts gzip, decompressed otherwise.
fn cached_response(
    entry: &CachedResponse,
    outcome: Outcome,
    headers: &HeaderMap,
    started: Instant,
) -> Response {
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let timing = match outcome {
        Outcome::Miss => format!(
            "cache;desc=MISS, db;dur={:.1}, total;dur={total_ms:.1}",
            entry.compute_time.as_secs_f64() * 1000.0
        ),
        _ => format!("cache;desc={}, total;dur={total_ms:.1}", outcome.as_str()),
    };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == entry.etag || tag.trim() == "*")
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) {
        let mut response = (StatusCode::OK, entry.gzip_body.clone()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else if entry.is_small() {
        (StatusCode::OK, entry.plain_body()).into_response()
    } else {
        // A large answer (an export) is decompressed as it is sent, never whole in memory.
        (
            StatusCode::OK,
            Body::from_stream(gunzip_stream(entry.gzip_body.clone())),
        )
            .into_response()
    };
    let out = response.headers_mut();
    if let (false, Ok(content_type)) = (not_modified, HeaderValue::from_str(&entry.content_type)) {
        out.insert(header::CONTENT_TYPE, content_type);
    }
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(etag) = HeaderValue::from_str(&entry.etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        out.insert("server-timing", timing);
    }
    response
}

/// Decompresses on a blocking thread, handing 64 KiB chunks over a bounded channel.
fn gunzip_stream(gzip: Bytes) -> ReceiverStream<Result<Bytes, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut decoder = flate2::read::GzDecoder::new(gzip.as_ref());
        loop {
            let mut chunk = vec![0; 1 << 16];
            match decoder.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Whether `Accept-Encoding` allows gzip (a `q=0` refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    accept.split(',').any(|part| {
        let mut pieces = part.split(';').map(str::trim);
        let coding = pieces.next().unwrap_or_default();
        let refused =
            pieces.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// `GET /api/{dataset}`: `{"items": [...], "next_cursor": ...}`.
pub async fn list(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    call: Call,
) -> Result<Response, ApiError> {
    let dataset = readable(&state, &path_params(path)?, &call).await?;
    let query = Query::parse(&dataset, QueryKind::List, raw.as_deref().unwrap_or(""))?;
    let key = state.cache.key(&dataset, &Subject::Query(&query));
    cached(
        &state,
        &dataset,
        Subject::Query(&query),
        key,
        &call,
        || async {
            let rows = state.storage.list(&dataset, &query).await?;
            Ok(list_body(&dataset, &query, rows))
        },
    )
    .await
}

fn list_body(dataset: &Dataset, query: &Query, mut rows: Vec<Row>) -> Vec<u8> {
    let has_more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if has_more => Some(encode_cursor(
            dataset,
            query.sort,
            &Cursor {
                sort_value: last[query.sort.column].clone(),
                key: last[dataset.key.column].clone(),
            },
        )),
        _ => None,
    };
    let mut body = Vec::with_capacity(rows.len() * 256 + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_row_json(dataset, row, &mut body);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => {
            serde_json::to_writer(&mut body, &cursor).expect("writing to a Vec cannot fail")
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    body
}

/// `GET /api/{dataset}/{id}`.
pub async fn item(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    call: Call,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let dataset = readable(&state, &name, &call).await?;
    let key_type = dataset.key_column().ty;
    let key =
        Value::parse_scalar(key_type, &id).map_err(|e| ApiError::invalid("id", e.to_string()))?;
    let cache_key = state.cache.key(&dataset, &Subject::Item(&key));
    cached(
        &state,
        &dataset,
        Subject::Item(&key),
        cache_key,
        &call,
        || async {
            let row = state.storage.get(&dataset, &key).await?;
            let row = row
                .ok_or_else(|| ApiError::NotFound(format!("{name} has no row with id {id:?}.")))?;
            let mut body = Vec::with_capacity(512);
            write_row_json(&dataset, &row, &mut body);
            Ok(body)
        },
    )
    .await
}

/// `GET /api/{dataset}/facets/{column}`: `{"column": ..., "values": [{"value", "count"}]}`.
pub async fn facets(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    call: Call,
) -> Result<Response, ApiError> {
    let (name, column_name) = path_params(path)?;
    let dataset = readable(&state, &name, &call).await?;
    let column = dataset
        .column_index(&column_name)
        .filter(|&i| dataset.columns[i].filterable)
        .ok_or_else(|| {
            let names: Vec<_> = dataset
                .columns
                .iter()
                .filter(|c| c.filterable)
                .map(|c| c.name.as_str())
                .collect();
            ApiError::invalid(
                "column",
                format!(
                    "{column_name:?} has no facets; use one of {}",
                    names.join(", ")
                ),
            )
        })?;
    let query = Query::parse(&dataset, QueryKind::Facets, raw.as_deref().unwrap_or(""))?;
    let key = state.cache.facet_key(&dataset, &column_name, &query);
    cached(&state, &dataset, Subject::Query(&query), key, &call, || async {
        let values = state.storage.facets(&dataset, column, &query).await?;
        let body = serde_json::json!({
            "column": column_name,
            "values": values
                .into_iter()
                .map(|(value, count)| serde_json::json!({"value": value.to_json(), "count": count}))
                .collect::<Vec<_>>(),
        });
        Ok(serde_json::to_vec(&body).expect("a JSON value always serialises"))
    })
    .await
}

/// `GET /api/{dataset}/export`: every matching row, written as the database yields them. Memory
/// stays flat: at most a few batches are in flight between the query and the socket.
pub async fn export(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    call: Call,
) -> Result<Response, ApiError> {
    let dataset = readable(&state, &path_params(path)?, &call).await?;
    let query = Query::parse(&dataset, QueryKind::Export, raw.as_deref().unwrap_or(""))?;
    let format = query.format;
    let key = state.cache.key(&dataset, &Subject::Query(&query));
    let lookup = state
        .cache
        .lookup_streamed(&dataset, Subject::Query(&query), &key)
        .await;
    if !matches!(lookup, Ok(Ok(_))) {
        tables_for_query(&state, &dataset).await?;
    }
    let (mut response, capture) = match lookup {
        Ok(Ok(entry)) => (
            cached_response(&entry, Outcome::Hit, &call.headers, call.started),
            None,
        ),
        // A cold export: one request computes it, the others wait for what it stores.
        Ok(Err(stamp)) => match state
            .cache
            .claim_streamed(&dataset, Subject::Query(&query), &key)
            .await
        {
            Claim::Served(entry) => (
                cached_response(&entry, Outcome::Hit, &call.headers, call.started),
                None,
            ),
            Claim::Compute(claim) => (
                streamed_export(&state, &dataset, query, Some((key, stamp, claim))),
                Some(()),
            ),
        },
        Err(_) => (streamed_export(&state, &dataset, query, None), None),
    };
    let headers = response.headers_mut();
    if capture.is_some() {
        headers.insert("x-cache", HeaderValue::from_static(Outcome::Miss.as_str()));
    } else if !headers.contains_key("x-cache") {
        headers.insert(
            "x-cache",
            HeaderValue::from_static(Outcome::Bypass.as_str()),
        );
    }
    if format == ExportFormat::Csv {
        let disposition = format!("attachment; filename=\"{}.csv\"", dataset.name);
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&disposition).expect("dataset names are ASCII"),
        );
    }
    Ok(response)
}

/// Every matching row, written as the database yields them. Memory stays flat: at most a few
/// batches are in flight between the query and the socket. With `store`, the bytes are also
/// gzipped on the way and, once the last one is sent, stored as the cached answer.
fn streamed_export(
    state: &AppState,
    dataset: &Arc<Dataset>,
    query: Query,
    store: Option<(String, Stamp, StreamClaim)>,
) -> Response {
    let format = query.format;
    let mut encoder = ExportEncoder::new(Arc::clone(dataset), format);
    let head = encoder.head();
    // The claim lives as long as the body: it ends when the export is stored, fails, or the
    // client leaves, and waiting requests then go on.
    let capture = store.map(|(key, stamp, claim)| {
        Arc::new(std::sync::Mutex::new(Some(Capture::new(key, stamp, claim))))
    });
    let (on_rows, on_tail) = (capture.clone(), capture);
    let (cache, ttl) = (Arc::clone(&state.cache), state.cache.new_ttl(dataset));
    let started = Instant::now();
    let rows = state.storage.export(Arc::clone(dataset), query);
    let head_capture = on_rows.clone();
    let body = futures_util::stream::once(async move {
        Capture::add(&head_capture, &head);
        Ok::<_, std::io::Error>(head)
    })
    .chain(rows.map(move |batch| match batch {
        Ok(batch) => {
            let bytes = encoder.rows(&batch);
            Capture::add(&on_rows, &bytes);
            Ok(bytes)
        }
        // The status is sent already: cut the body so the client sees a failed transfer, never
        // a short file that looks complete; and store nothing.
        Err(error) => {
            tracing::error!(error = %error, "export failed mid-stream");
            if let Some(capture) = &on_rows {
                capture.lock().expect("capture lock").take();
            }
            Err(std::io::Error::other("export failed"))
        }
    }))
    .chain(futures_util::stream::once(async move {
        let tail = ExportEncoder::tail(format);
        Capture::add(&on_tail, &tail);
        let finished = on_tail.and_then(|c| c.lock().expect("capture lock").take());
        if let Some(capture) = finished {
            let (key, entry, claim) = capture.finish(format.content_type(), started.elapsed(), ttl);
            tokio::spawn(async move {
                cache.store_streamed(&key, entry).await;
                drop(claim); // only now may the waiting requests read the stored export
            });
        }
        Ok(tail)
    }));
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

/// An export's bytes gzipped as they stream, with the length and CRC its ETag needs.
struct Capture {
    key: String,
    stamp: Stamp,
    claim: StreamClaim,
    gzip: flate2::write::GzEncoder<Vec<u8>>,
    crc: flate2::Crc,
    len: u64,
}

impl Capture {
    fn new(key: String, stamp: Stamp, claim: StreamClaim) -> Self {
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        Capture {
            key,
            stamp,
            claim,
            gzip,
            crc: flate2::Crc::new(),
            len: 0,
        }
    }

    fn add(capture: &Option<Arc<std::sync::Mutex<Option<Capture>>>>, bytes: &[u8]) {
        let Some(capture) = capture else { return };
        if let Some(capture) = capture.lock().expect("capture lock").as_mut() {
            use std::io::Write as _;
            capture
                .gzip
                .write_all(bytes)
                .expect("writing to a Vec cannot fail");
            capture.crc.update(bytes);
            capture.len += bytes.len() as u64;
        }
    }

    fn finish(
        self,
        content_type: &str,
        compute_time: std::time::Duration,
        ttl: std::time::Duration,
    ) -> (String, CachedResponse, StreamClaim) {
        let gzip = Bytes::from(self.gzip.finish().expect("writing to a Vec cannot fail"));
        let entry = CachedResponse::from_gzip(
            gzip,
            self.len,
            self.crc.sum(),
            content_type,
            compute_time,
            self.stamp,
            ttl,
        );
        (self.key, entry, self.claim)
    }
}

/// Writes batches of rows in one export format.
struct ExportEncoder {
    dataset: Arc<Dataset>,
    format: ExportFormat,
    first: bool,
}

impl ExportEncoder {
    fn new(dataset: Arc<Dataset>, format: ExportFormat) -> Self {
        ExportEncoder {
            dataset,
            format,
            first: true,
        }
    }

    fn head(&mut self) -> Bytes {
        match self.format {
            ExportFormat::Json => Bytes::from_static(b"["),
            ExportFormat::Ndjson => Bytes::new(),
            ExportFormat::Csv => {
                let names = self.dataset.columns.iter().map(|c| c.name.as_str());
                csv_line(names)
            }
        }
    }

    fn rows(&mut self, rows: &[Row]) -> Bytes {
        let mut out = Vec::with_capacity(rows.len() * 256);
        match self.format {
            ExportFormat::Json => {
                for row in rows {
                    if !std::mem::take(&mut self.first) {
                        out.push(b',');
                    }
                    write_row_json(&self.dataset, row, &mut out);
                }
            }
            ExportFormat::Ndjson => {
                for row in rows {
                    write_row_json(&self.dataset, row, &mut out);
                    out.push(b'\n');
                }
            }
            ExportFormat::Csv => {
                let mut writer = csv::WriterBuilder::new().from_writer(out);
                for row in rows {
                    let fields = row
                        .iter()
                        .zip(&self.dataset.columns)
                        .map(|(value, column)| {
                            value.to_text_with(column.list_delimiter.as_deref().unwrap_or(","))
                        });
                    writer
                        .write_record(fields)
                        .expect("writing to a Vec cannot fail");
                }
                out = writer.into_inner().expect("flushing a Vec cannot fail");
            }
        }
        Bytes::from(out)
    }

    fn tail(format: ExportFormat) -> Bytes {
        match format {
            ExportFormat::Json => Bytes::from_static(b"]"),
            ExportFormat::Ndjson | ExportFormat::Csv => Bytes::new(),
        }
    }
}

fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> Bytes {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    writer
        .write_record(fields)
        .expect("writing to a Vec cannot fail");
    Bytes::from(writer.into_inner().expect("flushing a Vec cannot fail"))
}

/// A row as a JSON object, columns in declaration order.
pub fn write_row_json(dataset: &Dataset, row: &Row, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (column, value)) in dataset.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(column.name.as_bytes()); // identifiers need no escaping
        out.extend_from_slice(b"\":");
        value.write_json(out);
    }
    out.push(b'}');
}
