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

use std::future::Future;

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::cache::{CachedResponse, Claim, Outcome, Stamp, StreamClaim, Subject};
use crate::datasets::{Dataset, Level, Value};
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
    // When the database is down or busy, the last good answer is better than an error
    // (X-Cache: STALE). After a failure the breaker skips the database for a moment, so that
    // every request does not wait out a connect timeout first.
    let database_down =
        |error: &ApiError| matches!(error, ApiError::Unavailable | ApiError::Busy(_));
    let compute = || async {
        let _slot = read_slot(state).await?;
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
    // Counted for warm-up once answered: paths that fail never become hot.
    if !call.warming {
        state.cache.record_access(&call.path_and_query);
    }
    Ok(cached_response(&entry, outcome, call, is_public(dataset)))
}

/// How long a cache miss waits for one of the read slots.
const READ_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A slot for one database read (`MAX_DATABASE_READS` at once): the rest of the pool is kept for
/// logins, writes and health checks, whatever the misses. Waits a little; then a quick 503.
async fn read_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(READ_SLOT_WAIT, Arc::clone(&state.reads).acquire_owned()).await {
        Ok(Ok(slot)) => Ok(slot),
        _ => Err(ApiError::Busy("The database is busy; try again shortly.")),
    }
}

/// Whether anyone may read the dataset, so that browsers and shared caches may keep its answers.
fn is_public(dataset: &Dataset) -> bool {
    dataset.access.read == Level::Anonymous
}

/// The query string of a data GET, within the configured limits.
fn parse_query(
    state: &AppState,
    dataset: &Dataset,
    kind: QueryKind,
    raw: Option<&str>,
) -> Result<Query, ApiError> {
    Ok(Query::parse_limited(
        dataset,
        kind,
        raw.unwrap_or(""),
        &state.limits.query,
    )?)
}

/// A stored response as HTTP: 304 for a matching `If-None-Match`; the gzipped body as it is
/// stored when the client accepts gzip, decompressed otherwise. Public datasets' answers may be
/// kept by browsers and shared caches but must be revalidated (the ETag makes that cheap); the
/// others must not be kept at all.
fn cached_response(
    entry: &Arc<CachedResponse>,
    outcome: Outcome,
    call: &Call,
    public: bool,
) -> Response {
    let headers = &call.headers;
    let total_ms = call.started.elapsed().as_secs_f64() * 1000.0;
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
    let plain = || match entry.plain_body() {
        Some(plain) => Body::from(plain),
        // A large answer (an export) is decompressed as it is sent, never whole in memory.
        None => Body::from_stream(gunzip_stream(Arc::clone(entry))),
    };
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) {
        let mut response = (StatusCode::OK, stored_body(entry)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        (StatusCode::OK, plain()).into_response()
    };
    let out = response.headers_mut();
    if let (false, Ok(content_type)) = (not_modified, HeaderValue::from_str(&entry.content_type)) {
        out.insert(header::CONTENT_TYPE, content_type);
    }
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if public {
            "public, no-cache"
        } else {
            "private, no-store"
        }),
    );
    if let Ok(etag) = HeaderValue::from_str(&entry.etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        out.insert("server-timing", timing);
    }
    response
}

/// The stored (gzipped) bytes as a body that holds the entry until it is sent, so that a large
/// answer counts as in use for as long as any response is sending it.
fn stored_body(entry: &Arc<CachedResponse>) -> Body {
    if entry.is_small() {
        return Body::from(entry.gzip_body.clone());
    }
    let entry = Arc::clone(entry);
    Body::from_stream(futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(entry.gzip_body.clone())
    }))
}

/// Decompresses 64 KiB at a time, each when the connection asks for more: a slow client costs
/// no thread, and a corrupt body (from outside the process) ends the stream with an error. The
/// stream holds the entry until it ends.
fn gunzip_stream(
    entry: Arc<CachedResponse>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    use bytes::Buf as _;
    let decoder = flate2::read::GzDecoder::new(entry.gzip_body.clone().reader());
    futures_util::stream::try_unfold((decoder, entry), |(mut decoder, entry)| async move {
        use std::io::Read as _;
        let mut chunk = vec![0; 1 << 16];
        let n = decoder.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        chunk.truncate(n);
        Ok(Some((Bytes::from(chunk), (decoder, entry))))
    })
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
    let query = parse_query(&state, &dataset, QueryKind::List, raw.as_deref())?;
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
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, &cursor);
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
    let key = crate::datasets::rules::request_value(key_type, &id)
        .map_err(|e| ApiError::invalid("id", e))?;
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
    let query = parse_query(&state, &dataset, QueryKind::Facets, raw.as_deref())?;
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
        serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.into()))
    })
    .await
}

/// `GET /api/{dataset}/export`: every matching row. A cold export is computed at the database's
/// speed into its cache entry (gzipped, at most `EXPORT_MAX_BYTES`), and every client, fast or
/// slow, is served from those bytes: a slow reader holds memory that is counted, never a database
/// connection. At most `EXPORT_CONCURRENCY` cold exports run at once per instance, each holding
/// one of the read slots (503 beyond), so logins and writes always have connections left.
pub async fn export(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    client: super::ClientAddress,
    call: Call,
) -> Result<Response, ApiError> {
    let dataset = readable(&state, &path_params(path)?, &call).await?;
    let query = parse_query(&state, &dataset, QueryKind::Export, raw.as_deref())?;
    let format = query.format;
    let key = state.cache.key(&dataset, &Subject::Query(&query));
    let lookup = state
        .cache
        .lookup_streamed(&dataset, Subject::Query(&query), &key)
        .await;
    let (entry, outcome) = match lookup {
        Ok(Ok(entry)) => (entry, Outcome::Hit),
        // A cold export: one request computes it, the others wait for what it stores.
        Ok(Err(stamp)) => match state
            .cache
            .claim_streamed(&dataset, Subject::Query(&query), &key)
            .await
        {
            Claim::Served(entry) => (entry, Outcome::Hit),
            Claim::Compute(claim) => {
                let max_bytes = state.limits.export_max_bytes;
                state
                    .exports_too_large
                    .refuse_again(&key, stamp, max_bytes)?;
                let store = Some((key.as_str(), stamp, claim));
                let computed = compute_export(&state, &dataset, query, &client.0, store);
                let entry = computed.await.inspect_err(|error| {
                    if matches!(error, ApiError::TooMuch { .. }) {
                        state.exports_too_large.remember(&key, stamp, max_bytes);
                    }
                })?;
                (entry, Outcome::Miss)
            }
        },
        // The cache is unreachable: computed the same way, stored nowhere.
        Err(_) => (
            compute_export(&state, &dataset, query, &client.0, None).await?,
            Outcome::Bypass,
        ),
    };
    // Each large answer is held once however many read it (its bytes live as long as the
    // responses sending them), but many different ones at once are refused rather than held.
    if !entry.is_small() {
        state.cache.share_large(&key, &entry);
        if state.cache.large_bytes_in_use() > state.limits.export_memory_bytes {
            return Err(ApiError::Busy(
                "Too many large exports are being sent; try again shortly.",
            ));
        }
    }
    if !call.warming {
        state.cache.record_access(&call.path_and_query);
    }
    let mut response = cached_response(&entry, outcome, &call, is_public(&dataset));
    if format == ExportFormat::Csv {
        let disposition = format!("attachment; filename=\"{}.csv\"", dataset.name);
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// Cold exports being computed, by client address.
#[derive(Default)]
pub(super) struct ExportsByClient(Arc<parking_lot::Mutex<std::collections::HashSet<String>>>);

/// A client's turn to compute an export; ends when dropped.
struct ClientTurn {
    of: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    client: String,
}

impl ExportsByClient {
    /// The client's turn, unless it has one already.
    fn take(&self, client: &str) -> Option<ClientTurn> {
        self.0.lock().insert(client.to_owned()).then(|| ClientTurn {
            of: Arc::clone(&self.0),
            client: client.to_owned(),
        })
    }
}

impl Drop for ClientTurn {
    fn drop(&mut self) {
        self.of.lock().remove(&self.client);
    }
}

/// Exports found too large at a write position (and under which `EXPORT_MAX_BYTES`): asked again
/// before the dataset changes, they are refused at once instead of running the query again.
#[derive(Default)]
pub(super) struct TooLarge(parking_lot::Mutex<std::collections::HashMap<String, (Stamp, usize)>>);

/// Remembered refusals; beyond this many, the oldest knowledge is simply dropped.
const TOO_LARGE_REMEMBERED: usize = 1024;

impl TooLarge {
    fn refuse_again(&self, key: &str, stamp: Stamp, max_bytes: usize) -> Result<(), ApiError> {
        match self.0.lock().get(key) {
            Some(&(refused, over)) if refused == stamp && max_bytes <= over => {
                Err(ApiError::TooMuch {
                    parameter: "export",
                    detail:
                        "This export is larger than EXPORT_MAX_BYTES compressed; narrow it with \
                         filters."
                            .to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    fn remember(&self, key: &str, stamp: Stamp, max_bytes: usize) {
        let mut refused = self.0.lock();
        if refused.len() >= TOO_LARGE_REMEMBERED {
            refused.clear();
        }
        refused.insert(key.to_owned(), (stamp, max_bytes));
    }
}

/// Runs an export query to its end at the database's speed, gzipping the bytes on the way.
/// With `store`, the work runs in a task of its own and stores the result as the cached answer:
/// a client that leaves wastes nothing, and requests waiting for the stored answer get it.
/// Without (the cache is unreachable), it runs in the request, which a client that leaves ends.
async fn compute_export(
    state: &AppState,
    dataset: &Arc<Dataset>,
    query: Query,
    client: &str,
    store: Option<(&str, Stamp, StreamClaim)>,
) -> Result<Arc<CachedResponse>, ApiError> {
    // One at a time per client: nobody keeps every slot busy with exports of their own.
    let mine = state.exports_by_client.take(client).ok_or(ApiError::Busy(
        "An export of yours is being prepared; ask again when it is done.",
    ))?;
    let permit = Arc::clone(&state.exports)
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy("Too many exports are being prepared; try again shortly."))?;
    let slot = read_slot(state).await?;
    tables_for_query(state, dataset).await?;
    let (storage, cache) = (Arc::clone(&state.storage), Arc::clone(&state.cache));
    let (database, dataset) = (Arc::clone(&state.database), Arc::clone(dataset));
    let (max_bytes, ttl) = (state.limits.export_max_bytes, state.cache.new_ttl(&dataset));
    let store = store.map(|(key, stamp, claim)| (key.to_owned(), stamp, claim));
    let storing = store.is_some();
    let stamp = store.as_ref().map_or(Stamp::default(), |s| s.1);
    let work = async move {
        let _held = (permit, slot, mine);
        let rows = storage.export(Arc::clone(&dataset), query.clone());
        let result = encode_export(&dataset, query.format, rows, max_bytes).await;
        if matches!(result, Err(ApiError::Unavailable)) {
            database.trip();
        }
        let entry = Arc::new(result?.finish(query.format.content_type(), stamp, ttl));
        if let Some((key, _, claim)) = store {
            cache.store_streamed(&key, Arc::clone(&entry)).await;
            drop(claim); // only now may the waiting requests read the stored export
        }
        Ok(entry)
    };
    if !storing {
        // Nothing will be stored for anyone: the request does the work itself.
        return work.await;
    }
    tokio::spawn(work)
        .await
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("the export task failed: {error}")))?
}

/// Every row of `rows` in `format`, gzipped; refused once the compressed bytes pass `max_bytes`.
async fn encode_export(
    dataset: &Arc<Dataset>,
    format: ExportFormat,
    mut rows: crate::storage::RowStream,
    max_bytes: usize,
) -> Result<Capture, ApiError> {
    let started = Instant::now();
    let mut encoder = ExportEncoder::new(Arc::clone(dataset), format);
    let mut capture = Capture::new(started);
    capture.add(&encoder.head());
    while let Some(batch) = rows.next().await {
        capture.add(&encoder.rows(&batch?));
        if capture.compressed_len() > max_bytes {
            return Err(ApiError::TooMuch {
                parameter: "export",
                detail: format!(
                    "This export is larger than {max_bytes} bytes compressed (EXPORT_MAX_BYTES); \
                     narrow it with filters."
                ),
            });
        }
    }
    capture.add(&ExportEncoder::tail(format));
    Ok(capture)
}

/// An export's bytes gzipped as they are produced, with the length and CRC its ETag needs.
struct Capture {
    started: Instant,
    gzip: flate2::write::GzEncoder<Vec<u8>>,
    crc: flate2::Crc,
    len: u64,
}

impl Capture {
    fn new(started: Instant) -> Self {
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        Capture {
            started,
            gzip,
            crc: flate2::Crc::new(),
            len: 0,
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        // Writing to a Vec cannot fail.
        let _ = self.gzip.write_all(bytes);
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
    }

    fn compressed_len(&self) -> usize {
        self.gzip.get_ref().len()
    }

    fn finish(self, content_type: &str, stamp: Stamp, ttl: std::time::Duration) -> CachedResponse {
        let compute_time = self.started.elapsed();
        let mut gzip = self.gzip.finish().unwrap_or_default();
        gzip.shrink_to_fit(); // the entry holds what it counts, not the doubled buffer
        let gzip = Bytes::from(gzip);
        CachedResponse::from_gzip(
            gzip,
            self.len,
            self.crc.sum(),
            content_type,
            compute_time,
            stamp,
            ttl,
        )
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
                let neutralise = !self.dataset.csv_keep_formulas;
                for row in rows {
                    let fields = row
                        .iter()
                        .zip(&self.dataset.columns)
                        .map(|(value, column)| {
                            let text =
                                value.to_text_with(column.list_delimiter.as_deref().unwrap_or(","));
                            match value {
                                Value::Text(_) | Value::List(_) if neutralise => {
                                    neutralise_formula(text)
                                }
                                _ => text,
                            }
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

/// OWASP's rule against CSV injection: a text cell that a spreadsheet would read as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`, which
/// spreadsheets show as text. Numbers are never text cells, so `-5` stays a number.
fn neutralise_formula(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_other_text_is_not() {
        for (text, expected) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1+1", "'+1+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("Plain title", "Plain title"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralise_formula(text.to_owned()), expected, "{text:?}");
        }
    }

    #[test]
    fn a_client_computes_one_export_at_a_time() {
        let exports = ExportsByClient::default();
        let first = exports.take("203.0.113.9").expect("a first turn");
        assert!(
            exports.take("203.0.113.9").is_none(),
            "no second one meanwhile"
        );
        assert!(
            exports.take("198.51.100.1").is_some(),
            "others have their own"
        );
        drop(first);
        assert!(
            exports.take("203.0.113.9").is_some(),
            "the turn ended with the export"
        );
    }

    #[tokio::test]
    async fn corrupt_gzip_ends_the_stream_with_an_error() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &vec![b'x'; 300_000]).unwrap();
        let whole = encoder.finish().unwrap();
        let entry = |gzip: &[u8]| {
            Arc::new(CachedResponse::from_gzip(
                Bytes::copy_from_slice(gzip),
                300_000,
                0,
                "text/plain",
                std::time::Duration::ZERO,
                Stamp::default(),
                std::time::Duration::ZERO,
            ))
        };
        let chunks: Vec<_> = gunzip_stream(entry(&whole)).collect().await;
        let total: usize = chunks.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert_eq!(total, 300_000);
        let chunks: Vec<_> = gunzip_stream(entry(&whole[..whole.len() / 2]))
            .collect()
            .await;
        assert!(chunks.last().unwrap().is_err(), "a truncated body fails");
    }
}
