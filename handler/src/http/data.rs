//! The data endpoints: list, item, facets and export of a dataset. Each asks the service, then
//! sends the stored answer as HTTP: a 304 for a matching `If-None-Match`, else the encoding the
//! client prefers of those the entry has (`Accept-Encoding` with q-values; brotli, then gzip,
//! then none on a tie): brotli once its copy is made, the gzipped bytes as they are stored, or
//! the plain body.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::problem;
use super::ranges::{self, Wanted};
use super::{ApiError, AppState};
use crate::cache::{CachedResponse, Outcome};
use crate::service::{Answer, Caller};

/// Path parameters that are not valid UTF-8 are the client's error, reported as problem+json.
pub(super) fn path_params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))
}

/// Header names made at compile time (a `&str` name is parsed again on every insert).
const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// What sending an answer needs of its request (read once here, so the request's headers are
/// not copied: this runs on every read).
pub struct Call {
    if_none_match: Option<HeaderValue>,
    accepted: Accepted,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
    started: Instant,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Call {
            if_none_match: parts.headers.get(header::IF_NONE_MATCH).cloned(),
            accepted: Accepted::from_headers(&parts.headers),
            range: parts.headers.get(header::RANGE).cloned(),
            if_range: parts.headers.get(header::IF_RANGE).cloned(),
            started: Instant::now(),
        })
    }
}

/// `GET /api/{dataset}`: `{"items": [...], "next_cursor": ...}`.
pub async fn list(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    caller: Caller,
    call: Call,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let answer = state.list(&caller, &name, raw.as_deref()).await?;
    Ok(answer_response(&answer, &call))
}

/// `GET /api/{dataset}/{id}`.
pub async fn item(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    caller: Caller,
    call: Call,
) -> Result<Response, ApiError> {
    let (name, id) = path_params(path)?;
    let answer = state.item(&caller, &name, &id).await?;
    Ok(answer_response(&answer, &call))
}

/// `GET /api/{dataset}/facets/{column}`: `{"column": ..., "values": [{"value", "count"}]}`.
pub async fn facets(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    caller: Caller,
    call: Call,
) -> Result<Response, ApiError> {
    let (name, column) = path_params(path)?;
    let answer = state
        .facets(&caller, &name, &column, raw.as_deref())
        .await?;
    Ok(answer_response(&answer, &call))
}

/// `GET /api/{dataset}/count`: `{"count": N}` under the same filters as a list.
pub async fn count(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    caller: Caller,
    call: Call,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let answer = state.count(&caller, &name, raw.as_deref()).await?;
    Ok(answer_response(&answer, &call))
}

/// `GET /api/{dataset}/export`: every matching row (see `service::export`).
pub async fn export(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    caller: Caller,
    call: Call,
) -> Result<Response, ApiError> {
    let name = path_params(path)?;
    let answer = state.export(&caller, &name, raw.as_deref()).await?;
    Ok(answer_response(&answer, &call))
}

/// A stored response as HTTP: 304 for a matching `If-None-Match`; the gzipped body as it is
/// stored when the client accepts gzip, decompressed otherwise. Public datasets' answers may be
/// kept by browsers and shared caches but must be revalidated (the ETag makes that cheap); the
/// others must not be kept at all.
fn answer_response(answer: &Answer, call: &Call) -> Response {
    let Answer {
        entry,
        outcome,
        public,
        attachment,
    } = answer;
    let (outcome, public) = (*outcome, *public);
    let timing = server_timing(outcome, entry.compute_time, call.started.elapsed());
    // Any representation's tag revalidates: the content is the same.
    let not_modified = call
        .if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|tag| {
                let tag = tag.trim();
                tag == entry.etag
                    || tag == entry.gzip_etag
                    || tag == entry.brotli_etag
                    || tag == "*"
            })
        });
    // A revalidation names the representation that a 200 would send (brotli if made); a copy
    // is started only for a client that prefers brotli at least as much as gzip.
    let brotli = match call.accepted.brotli {
        q if q <= 0.0 => None,
        _ if not_modified => entry.brotli_made(),
        q if q >= call.accepted.gzip => entry.brotli_or_start(),
        _ => entry.brotli_made(),
    };
    let coding = call.accepted.choose(brotli.is_some());
    // The bytes to send when they are (or may be) held whole; beyond that a plain answer is
    // decompressed as it is sent, and served whole.
    let (etag, whole) = match coding {
        Coding::Brotli => (&entry.brotli_etag, brotli),
        Coding::Gzip => (&entry.gzip_etag, Some(entry.gzip_body.clone())),
        Coding::Identity if not_modified => (&entry.etag, None),
        Coding::Identity => (&entry.etag, entry.plain_body()),
    };
    let whole = whole.map(|bytes| held(entry, bytes));
    let wanted = match &whole {
        Some(bytes) if !not_modified => ranges::wanted(
            call.range.as_ref(),
            call.if_range.as_ref(),
            etag,
            bytes.len() as u64,
        ),
        _ => Wanted::Whole,
    };
    let mut response = match (not_modified, wanted) {
        (true, _) => StatusCode::NOT_MODIFIED.into_response(),
        (false, Wanted::Unsatisfiable) => {
            let len = whole.as_ref().map_or(0, Bytes::len);
            let mut refused = problem(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &format!("The range lies beyond the answer's {len} bytes."),
                None,
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                refused.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return refused;
        }
        (false, Wanted::Part { start, end }) => {
            let bytes = whole.expect("a range is only taken of bytes held whole");
            let len = bytes.len();
            let part = bytes.slice(start as usize..=end as usize);
            let mut response = (StatusCode::PARTIAL_CONTENT, part).into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
        (false, Wanted::Whole) => match whole {
            Some(bytes) => (StatusCode::OK, bytes).into_response(),
            // A very large answer is decompressed as it is sent, never whole in memory.
            None => (
                StatusCode::OK,
                Body::from_stream(gunzip_stream(Arc::clone(entry))),
            )
                .into_response(),
        },
    };
    let out = response.headers_mut();
    // Room for every header below at once, not grown (and rehashed) header by header.
    out.reserve(10);
    if let (false, Some(coding)) = (not_modified, coding.header()) {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    if !not_modified {
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if !not_modified {
        // Every list, item, count and facet is JSON: named without copying or checking it.
        let content_type = match entry.content_type.as_str() {
            "application/json" => Ok(HeaderValue::from_static("application/json")),
            other => HeaderValue::from_str(other),
        };
        if let Ok(content_type) = content_type {
            out.insert(header::CONTENT_TYPE, content_type);
        }
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
    if let Ok(etag) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
    if let Ok(timing) = HeaderValue::from_maybe_shared(Bytes::from(timing)) {
        out.insert(SERVER_TIMING, timing);
    }
    let disposition = attachment
        .as_ref()
        .map(|name| format!("attachment; filename=\"{name}\""));
    if let Some(Ok(value)) = disposition.map(|d| HeaderValue::from_str(&d)) {
        out.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// `Server-Timing`: the outcome, the database's time for a miss, the total, in milliseconds to
/// a tenth (truncated). Written by hand: float formatting cost ~2% of a cache hit (callgrind).
fn server_timing(
    outcome: Outcome,
    database: std::time::Duration,
    total: std::time::Duration,
) -> Vec<u8> {
    fn push_ms(out: &mut Vec<u8>, elapsed: std::time::Duration) {
        let tenths = elapsed.as_micros() / 100;
        let mut digits = [0u8; 40];
        let mut at = digits.len();
        let mut whole = tenths / 10;
        loop {
            at -= 1;
            digits[at] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
        out.push(b'.');
        out.push(b'0' + (tenths % 10) as u8);
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"cache;desc=");
    out.extend_from_slice(outcome.as_str().as_bytes());
    if outcome == Outcome::Miss {
        out.extend_from_slice(b", db;dur=");
        push_ms(&mut out, database);
    }
    out.extend_from_slice(b", total;dur=");
    push_ms(&mut out, total);
    out
}

/// Bytes of a large entry that hold the entry for as long as any part of them is alive (in
/// hyper's write queue until a slow client has read the last byte, a range of them included), so
/// the answer counts as in use (`EXPORT_MEMORY_BYTES`) until it is sent. Still plain `Bytes`: the
/// answer keeps its `Content-Length` (a stream would be sent chunked).
fn held(entry: &Arc<CachedResponse>, bytes: Bytes) -> Bytes {
    if entry.is_small() {
        return bytes;
    }
    Bytes::from_owner(Held {
        bytes,
        _entry: Arc::clone(entry),
    })
}

struct Held {
    bytes: Bytes,
    _entry: Arc<CachedResponse>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
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

/// A content coding the answer is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Brotli,
    Gzip,
    Identity,
}

impl Coding {
    fn header(self) -> Option<&'static str> {
        match self {
            Coding::Brotli => Some("br"),
            Coding::Gzip => Some("gzip"),
            Coding::Identity => None,
        }
    }
}

/// What `Accept-Encoding` allows, as q-values (RFC 9110 §12.5.3): a coding not named takes the
/// q of `*` if given, else 0; the plain body is acceptable (least preferred) unless `identity`
/// (or `*`, with no `identity` named) says `q=0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Accepted {
    brotli: f32,
    gzip: f32,
    identity: f32,
}

impl Accepted {
    pub(super) fn from_headers(headers: &HeaderMap) -> Self {
        let value = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Accepted::parse(value)
    }

    fn parse(value: &str) -> Self {
        let (mut brotli, mut gzip, mut identity, mut any) = (None, None, None, None);
        // A header is bounded by the request's limits; so is the work per part.
        for part in value.split(',').take(64) {
            let mut pieces = part.split(';').map(str::trim);
            let coding = pieces.next().unwrap_or_default();
            let q = pieces
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| {
                    q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
                });
            let Some(q) = q else { continue }; // a malformed weight: the part is ignored
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut brotli
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if coding == "*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(q);
        }
        Accepted {
            brotli: brotli.or(any).unwrap_or(0.0),
            gzip: gzip.or(any).unwrap_or(0.0),
            // Unnamed, the plain body is acceptable but the least preferred.
            identity: identity
                .or(any.filter(|&q| q == 0.0))
                .unwrap_or(f32::MIN_POSITIVE),
        }
    }

    /// The client's preferred coding among those at hand (brotli only if `brotli_ready`); on a
    /// tie the smaller bytes win. The plain body when the client refuses everything (rather
    /// than a 406, which no client handles).
    pub(super) fn choose(&self, brotli_ready: bool) -> Coding {
        let mut best = (Coding::Identity, self.identity);
        for (coding, q) in [(Coding::Gzip, self.gzip), (Coding::Brotli, self.brotli)] {
            let ready = coding != Coding::Brotli || brotli_ready;
            if ready && q > 0.0 && q >= best.1 {
                best = (coding, q);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Stamp;
    use futures_util::StreamExt as _;

    #[test]
    fn server_timing_names_the_outcome_and_milliseconds_to_a_tenth() {
        use std::time::Duration;
        let text = |outcome, db_us, total_us| {
            String::from_utf8(server_timing(
                outcome,
                Duration::from_micros(db_us),
                Duration::from_micros(total_us),
            ))
            .unwrap()
        };
        assert_eq!(text(Outcome::Hit, 0, 42), "cache;desc=HIT, total;dur=0.0");
        assert_eq!(
            text(Outcome::Miss, 12_345, 1_234_567),
            "cache;desc=MISS, db;dur=12.3, total;dur=1234.5"
        );
        assert_eq!(
            text(Outcome::Stale, 0, 100),
            "cache;desc=STALE, total;dur=0.1"
        );
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let choose = |header: &str, brotli_ready| Accepted::parse(header).choose(brotli_ready);
        // What browsers send: brotli once it is made, gzip until then.
        assert_eq!(choose("gzip, deflate, br, zstd", true), Coding::Brotli);
        assert_eq!(choose("gzip, deflate, br, zstd", false), Coding::Gzip);
        assert_eq!(choose("", true), Coding::Identity);
        assert_eq!(choose("br;q=0.5, gzip", true), Coding::Gzip);
        assert_eq!(choose("br, gzip;q=0", false), Coding::Identity);
        assert_eq!(choose("gzip;q=0.3", false), Coding::Gzip);
        assert_eq!(choose("identity, gzip;q=0.5", false), Coding::Identity);
        assert_eq!(choose("*", true), Coding::Brotli);
        assert_eq!(choose("*;q=0.2, br;q=0", true), Coding::Gzip);
        assert_eq!(choose("GZIP;Q=1", false), Coding::Gzip);
        // A weight that is not one is ignored with its coding, not read as 1.
        assert_eq!(choose("br;q=high, gzip;q=2", true), Coding::Identity);
        // Refusing everything still gets the plain body.
        assert_eq!(choose("*;q=0", true), Coding::Identity);
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

    #[test]
    fn bytes_of_a_large_entry_hold_it_while_any_part_of_them_lives() {
        use std::time::Duration;
        // Incompressible (xorshift), so that even the gzip copy is large.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let body: Vec<u8> = (0..1_200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let ttl = Duration::from_secs(60);
        let entry = |body: Vec<u8>| {
            Arc::new(CachedResponse::new(
                body,
                "application/json",
                Duration::ZERO,
                Stamp::default(),
                ttl,
            ))
        };
        let large = entry(body);
        assert!(!large.is_small());
        let bytes = held(&large, large.gzip_body.clone());
        let range = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(
            Arc::strong_count(&large),
            2,
            "a range still holds the entry"
        );
        drop(range);
        assert_eq!(Arc::strong_count(&large), 1, "released with its last byte");
        let small = entry(b"[]".to_vec());
        let _bytes = held(&small, small.gzip_body.clone());
        assert_eq!(Arc::strong_count(&small), 1, "small entries are not held");
    }
}
