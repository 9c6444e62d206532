//! Warm-up (the `WarmCache` timer and `handler warm`): the hottest reads are asked again, so that
//! what is missing or near expiry is computed before a client asks. Reads are remembered by the
//! API path a client asks them by (`/api/movies?genres=drama`), counted once answered, and
//! replayed here by calling the reads themselves.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::{Caller, Service};
use crate::cache::Outcome;

/// Hot reads that one warm-up run considers.
pub const WARM_LIMIT: usize = 50;

/// A read as warm-up remembers it (borrowing the request's text while it is answered, owning
/// it when parsed back from a remembered path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Read<'a> {
    List {
        dataset: Cow<'a, str>,
        query: Option<Cow<'a, str>>,
    },
    Item {
        dataset: Cow<'a, str>,
        id: Cow<'a, str>,
    },
    Facets {
        dataset: Cow<'a, str>,
        column: Cow<'a, str>,
        query: Option<Cow<'a, str>>,
    },
    Export {
        dataset: Cow<'a, str>,
        query: Option<Cow<'a, str>>,
    },
    Count {
        dataset: Cow<'a, str>,
        query: Option<Cow<'a, str>>,
    },
}

impl Read<'_> {
    /// The API path a client asks this read by (built in one allocation: every answered read
    /// makes one).
    pub(super) fn path(&self) -> String {
        let mut path = String::with_capacity(128);
        let query = match self {
            Read::List { dataset, query } => {
                let _ = write!(path, "/api/{dataset}");
                query
            }
            Read::Item { dataset, id } => {
                let _ = write!(path, "/api/{dataset}/");
                url_segment_into(id, &mut path);
                &None
            }
            Read::Facets {
                dataset,
                column,
                query,
            } => {
                let _ = write!(path, "/api/{dataset}/facets/{column}");
                query
            }
            Read::Export { dataset, query } => {
                let _ = write!(path, "/api/{dataset}/export");
                query
            }
            Read::Count { dataset, query } => {
                let _ = write!(path, "/api/{dataset}/count");
                query
            }
        };
        if let Some(query) = query {
            path.push('?');
            path.push_str(query);
        }
        path
    }

    /// The read behind a path (a remembered one comes from the shared store, outside this
    /// process: anything that is not a read's path is `None`).
    pub(super) fn parse(path: &str) -> Option<Read<'static>> {
        let rest = path.strip_prefix("/api/")?;
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(Cow::Owned(query.to_owned()))),
            None => (rest, None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let dataset: Cow<'static, str> = Cow::Owned((*segments.first()?).to_owned());
        if dataset.is_empty() {
            return None;
        }
        Some(match segments[1..] {
            [] => Read::List { dataset, query },
            ["export"] => Read::Export { dataset, query },
            // Before `[id]`: the route `{dataset}/count` is matched before `{dataset}/{id}`.
            ["count"] => Read::Count { dataset, query },
            ["facets", column] => Read::Facets {
                dataset,
                column: Cow::Owned(column.to_owned()),
                query,
            },
            [id] if query.is_none() => Read::Item {
                dataset,
                id: Cow::Owned(url_decode(id)?),
            },
            _ => return None,
        })
    }
}

/// Percent-encodes what a path segment cannot hold as it is.
pub(super) fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    url_segment_into(text, &mut out);
    out
}

fn url_segment_into(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn url_decode(segment: &str) -> Option<String> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(segment.replace('+', "%2B").as_bytes())
        .next()
        .map(|(key, _)| key.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8(bytes).ok()
}

/// What a warm-up did: counts only (its log goes to whoever invoked it, and the hot reads are
/// other callers' questions).
#[derive(Debug, Default)]
pub struct WarmReport {
    pub lines: Vec<String>,
    pub refreshed: usize,
    pub fresh: usize,
    pub failed: usize,
    /// Hot paths that are not this API's reads (nothing to replay).
    pub skipped: usize,
}

impl Service {
    /// Asks the `limit` hottest reads again, refreshing what is missing or near expiry.
    #[tracing::instrument(level = "debug", name = "service.warm", skip_all)]
    pub async fn warm(&self, limit: usize) -> WarmReport {
        let mut report = WarmReport::default();
        let paths = match self.cache.hot_paths(limit, true).await {
            Ok(paths) => paths,
            Err(_) => {
                report.failed += 1;
                report
                    .lines
                    .push("the cache is unavailable: nothing warmed".to_owned());
                return report;
            }
        };
        let caller = Caller::warm_up();
        let started = std::time::Instant::now();
        for (path, _score) in paths {
            let Some(read) = Read::parse(&path) else {
                report.skipped += 1;
                continue;
            };
            let answer = match &read {
                Read::List { dataset, query } => {
                    self.list(&caller, dataset, query.as_deref()).await
                }
                Read::Item { dataset, id } => self.item(&caller, dataset, id).await,
                Read::Facets {
                    dataset,
                    column,
                    query,
                } => {
                    self.facets(&caller, dataset, column, query.as_deref())
                        .await
                }
                Read::Export { dataset, query } => {
                    self.export(&caller, dataset, query.as_deref()).await
                }
                Read::Count { dataset, query } => {
                    self.count(&caller, dataset, query.as_deref()).await
                }
            };
            match answer.map(|a| a.outcome) {
                Ok(Outcome::Hit) => report.fresh += 1,
                Ok(Outcome::Miss) => report.refreshed += 1,
                _ => report.failed += 1,
            }
        }
        report.lines.push(format!(
            "warm-up: {} refreshed, {} fresh, {} failed, {} skipped in {:.1} ms",
            report.refreshed,
            report.fresh,
            report.failed,
            report.skipped,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        crate::telemetry::metrics::warmup(
            report.refreshed as u64,
            report.fresh as u64,
            report.failed as u64,
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_their_paths_round_trip() {
        let reads = [
            Read::List {
                dataset: "movies".into(),
                query: Some("genres=drama".into()),
            },
            Read::List {
                dataset: "movies".into(),
                query: None,
            },
            Read::Item {
                dataset: "movies".into(),
                id: "a b/c%".into(),
            },
            Read::Facets {
                dataset: "movies".into(),
                column: "genres".into(),
                query: Some("countries=france".into()),
            },
            Read::Export {
                dataset: "movies".into(),
                query: Some("format=csv".into()),
            },
        ];
        for read in reads {
            assert_eq!(
                Read::parse(&read.path()),
                Some(read.clone()),
                "{}",
                read.path()
            );
        }
        assert_eq!(Read::parse("/api/movies").unwrap().path(), "/api/movies");
        for foreign in [
            "",
            "/admin",
            "/api/",
            "/api/movies/1/2",
            "/api/movies/595?x=1",
        ] {
            assert_eq!(Read::parse(foreign), None, "{foreign}");
        }
    }
}
