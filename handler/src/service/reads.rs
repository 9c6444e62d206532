//! Reads: a page of rows, one row, facet counts, a row count. Each is answered from the cache, or computed
//! once (however many ask at once) behind a read slot and stored; when the database is down or
//! busy, the last good answer is better than an error (`STALE`).

use std::future::Future;
use std::sync::Arc;

use super::warm::Read;
use super::{Caller, Service, ServiceError, encode, questions};
use crate::cache::{CachedResponse, Computed, Outcome, PageEnd, Subject};
use crate::datasets::{Dataset, Level, rules};
use crate::query::{Query, QueryKind};

/// A read's answer: the stored bytes and how they were found.
pub struct Answer {
    pub entry: Arc<CachedResponse>,
    pub outcome: Outcome,
    /// Whether anyone may read the dataset, so that browsers and shared caches may keep it.
    pub public: bool,
    /// For a CSV export: the file name to offer.
    pub attachment: Option<String>,
}

impl Service {
    /// `GET /api/{dataset}`: `{"items": [...], "next_cursor": ...}`.
    #[tracing::instrument(level = "debug", name = "service.list", skip_all, fields(dataset = name))]
    pub async fn list(
        &self,
        caller: &Caller,
        name: &str,
        raw_query: Option<&str>,
    ) -> Result<Answer, ServiceError> {
        let dataset = self.readable(caller, name).await?;
        let question = self.question(&dataset, QueryKind::List, None, raw_query)?;
        let (query, key) = (&question.query, question.key.clone());
        let read = Read::List {
            dataset: name.into(),
            query: raw_query.map(Into::into),
        };
        self.cached(
            caller,
            &dataset,
            Subject::Query(query),
            key,
            read,
            || async {
                let rows = self.storage.list(&dataset, query).await?;
                let page_end = PageEnd::of(&dataset, query, &rows);
                Ok(Computed {
                    page_end,
                    ..Computed::json(encode::list_body(&dataset, query, rows))
                })
            },
        )
        .await
    }

    /// `GET /api/{dataset}/{id}`.
    #[tracing::instrument(level = "debug", name = "service.item", skip_all, fields(dataset = name))]
    pub async fn item(
        &self,
        caller: &Caller,
        name: &str,
        id: &str,
    ) -> Result<Answer, ServiceError> {
        let dataset = self.readable(caller, name).await?;
        let key = rules::request_value(dataset.key_column().ty, id)
            .map_err(|reason| ServiceError::invalid("id", reason))?;
        let cache_key = self.cache.key(&dataset, &Subject::Item(&key));
        let read = Read::Item {
            dataset: name.into(),
            id: id.into(),
        };
        self.cached(
            caller,
            &dataset,
            Subject::Item(&key),
            cache_key,
            read,
            || async {
                let row = self.storage.get(&dataset, &key).await?.ok_or_else(|| {
                    ServiceError::NotFound(format!("{name} has no row with id {id:?}."))
                })?;
                let mut body = Vec::with_capacity(512);
                encode::write_row_json(&dataset, &row, &mut body);
                Ok(Computed::json(body))
            },
        )
        .await
    }

    /// `GET /api/{dataset}/facets/{column}`: value counts of one column under the filters.
    #[tracing::instrument(level = "debug", name = "service.facets", skip_all, fields(dataset = name))]
    pub async fn facets(
        &self,
        caller: &Caller,
        name: &str,
        column_name: &str,
        raw_query: Option<&str>,
    ) -> Result<Answer, ServiceError> {
        let dataset = self.readable(caller, name).await?;
        let column = dataset
            .column_index(column_name)
            .filter(|&i| dataset.columns[i].filterable)
            .ok_or_else(|| {
                let names: Vec<_> = dataset
                    .columns
                    .iter()
                    .filter(|c| c.filterable)
                    .map(|c| c.name.as_str())
                    .collect();
                ServiceError::invalid(
                    "column",
                    format!(
                        "{column_name:?} has no facets; use one of {}",
                        names.join(", ")
                    ),
                )
            })?;
        let question = self.question(&dataset, QueryKind::Facets, Some(column), raw_query)?;
        let (query, key) = (&question.query, question.key.clone());
        let subject = Subject::Facets { query, column };
        let read = Read::Facets {
            dataset: name.into(),
            column: column_name.into(),
            query: raw_query.map(Into::into),
        };
        self.cached(caller, &dataset, subject, key, read, || async {
            let values = self.storage.facets(&dataset, column, query).await?;
            Ok(Computed::json(encode::facets_body(column_name, values)))
        })
        .await
    }

    /// `GET /api/{dataset}/count`: `{"count": N}`, the rows passing the filters.
    #[tracing::instrument(level = "debug", name = "service.count", skip_all, fields(dataset = name))]
    pub async fn count(
        &self,
        caller: &Caller,
        name: &str,
        raw_query: Option<&str>,
    ) -> Result<Answer, ServiceError> {
        let dataset = self.readable(caller, name).await?;
        let question = self.question(&dataset, QueryKind::Count, None, raw_query)?;
        let (query, key) = (&question.query, question.key.clone());
        let read = Read::Count {
            dataset: name.into(),
            query: raw_query.map(Into::into),
        };
        self.cached(
            caller,
            &dataset,
            Subject::Query(query),
            key,
            read,
            || async {
                let count = self.storage.count(&dataset, query).await?;
                Ok(Computed::json(
                    format!("{{\"count\":{count}}}").into_bytes(),
                ))
            },
        )
        .await
    }

    /// The dataset, if the caller may read it (its `[access] read` level; anyone by default).
    pub(super) async fn readable(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Arc<Dataset>, ServiceError> {
        let dataset = self.dataset(name)?;
        if !caller.warming {
            self.authorize(caller, dataset.access.read).await?;
        }
        Ok(dataset)
    }

    /// A list's, facets' (`column`) or export's question, parsed within the configured limits,
    /// with its cache key; parsed once while it is asked again (see [`questions`]).
    pub(super) fn question(
        &self,
        dataset: &Dataset,
        kind: QueryKind,
        column: Option<usize>,
        raw: Option<&str>,
    ) -> Result<Arc<questions::Question>, ServiceError> {
        let memo_key = questions::memo_key(&dataset.name, kind, column, raw.unwrap_or(""));
        self.questions.get_or_parse(memo_key, || {
            let query = self.query(dataset, kind, raw)?;
            let key = match column {
                Some(column) => self.cache.key(
                    dataset,
                    &Subject::Facets {
                        query: &query,
                        column,
                    },
                ),
                None => self.cache.key(dataset, &Subject::Query(&query)),
            };
            Ok(questions::Question { query, key })
        })
    }

    /// A read's query string, within the configured limits.
    pub(super) fn query(
        &self,
        dataset: &Dataset,
        kind: QueryKind,
        raw: Option<&str>,
    ) -> Result<Query, ServiceError> {
        Ok(Query::parse_limited(
            dataset,
            kind,
            raw.unwrap_or(""),
            &self.limits.query,
        )?)
    }

    /// Answers from the cache, computing the body (once, however many callers wait) on a miss.
    async fn cached<F, Fut>(
        &self,
        caller: &Caller,
        dataset: &Dataset,
        subject: Subject<'_>,
        key: String,
        read: Read<'_>,
        compute: F,
    ) -> Result<Answer, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed, ServiceError>>,
    {
        // When the database is down or busy, the last good answer is better than an error
        // (STALE). After a failure the breaker skips the database for a moment, so that every
        // request does not wait out a connect timeout first.
        let database_down = |error: &ServiceError| {
            matches!(error, ServiceError::Unavailable | ServiceError::Busy(_))
        };
        let compute = || async {
            let _slot = self.read_slot().await?;
            self.tables_for_query(dataset).await?;
            let result = compute().await;
            if matches!(result, Err(ServiceError::Unavailable)) {
                self.database.trip();
            }
            result
        };
        let (entry, outcome) = self
            .cache
            .get_or_compute_or_stale(
                dataset,
                subject,
                key,
                compute,
                database_down,
                caller.warming,
            )
            .await?;
        self.answered(caller, &read);
        Ok(Answer {
            entry,
            outcome,
            public: dataset.access.read == Level::Anonymous,
            attachment: None,
        })
    }

    /// Counts an answered read for warm-up (its own reads do not count): reads that fail never
    /// become hot.
    pub(super) fn answered(&self, caller: &Caller, read: &Read<'_>) {
        if !caller.warming {
            self.cache.record_access(&read.path());
        }
    }
}
