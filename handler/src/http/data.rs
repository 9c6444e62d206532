//! The data endpoints: list, item, facets and export of a dataset. Each asks the service, then
//! sends the stored answer as HTTP: a 304 for a matching `If-None-Match`, the gzipped bytes as
//! they are stored when the client accepts gzip, decompressed otherwise.

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

/// What sending an answer needs of its request (read once here, so the request's headers are
/// not copied: this runs on every read).
pub struct Call {
    if_none_match: Option<HeaderValue>,
    accepts_gzip: bool,
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
            accepts_gzip: accepts_gzip(&parts.headers),
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
    let total_ms = call.started.elapsed().as_secs_f64() * 1000.0;
    let timing = match outcome {
        Outcome::Miss => format!(
            "cache;desc=MISS, db;dur={:.1}, total;dur={total_ms:.1}",
            entry.compute_time.as_secs_f64() * 1000.0
        ),
        _ => format!("cache;desc={}, total;dur={total_ms:.1}", outcome.as_str()),
    };
    // Either representation's tag revalidates: the content is the same.
    let not_modified = call
        .if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|tag| {
                let tag = tag.trim();
                tag == entry.etag || tag == entry.gzip_etag || tag == "*"
            })
        });
    // The plain bytes, when they are (or may be) held whole; beyond that an answer is
    // decompressed as it is sent, and served whole.
    let plain = if call.accepts_gzip || not_modified {
        None
    } else {
        entry.plain_body()
    };
    let (etag, whole) = match (call.accepts_gzip, &plain) {
        (true, _) => (&entry.gzip_etag, Some(entry.gzip_body.clone())),
        (false, plain) => (&entry.etag, plain.clone()),
    };
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
        (false, Wanted::Whole) => match (call.accepts_gzip, plain) {
            (true, _) => (StatusCode::OK, stored_body(entry)).into_response(),
            (false, Some(plain)) => (StatusCode::OK, Body::from(plain)).into_response(),
            // A very large answer is decompressed as it is sent, never whole in memory.
            (false, None) => (
                StatusCode::OK,
                Body::from_stream(gunzip_stream(Arc::clone(entry))),
            )
                .into_response(),
        },
    };
    let out = response.headers_mut();
    if call.accepts_gzip && !not_modified {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if !not_modified {
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
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
    if let Ok(etag) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, etag);
    }
    out.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        out.insert("server-timing", timing);
    }
    let disposition = attachment
        .as_ref()
        .map(|name| format!("attachment; filename=\"{name}\""));
    if let Some(Ok(value)) = disposition.map(|d| HeaderValue::from_str(&d)) {
        out.insert(header::CONTENT_DISPOSITION, value);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Stamp;
    use futures_util::StreamExt as _;

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
