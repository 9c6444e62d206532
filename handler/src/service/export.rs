//! Exports: every matching row. A cold export is computed at the database's speed into its
//! cache entry (gzipped, at most `EXPORT_MAX_BYTES`), and every client, fast or slow, is served
//! from those bytes: a slow reader holds memory that is counted, never a database connection.
//! At most `EXPORT_CONCURRENCY` cold exports run at once per instance, one per client address,
//! each holding one of the read slots, so logins and writes always have connections left.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt as _;

use super::encode::{Capture, ExportEncoder};
use super::reads::Answer;
use super::warm::Read;
use super::{Caller, ClientAddress, Service, ServiceError};
use crate::cache::{CachedResponse, Claim, Outcome, Stamp, StreamClaim, Subject};
use crate::datasets::{Dataset, Level};
use crate::query::{ExportFormat, Query, QueryKind};

impl Service {
    /// `GET /api/{dataset}/export`: every matching row, in `format` (JSON, NDJSON or CSV).
    #[tracing::instrument(level = "debug", name = "service.export", skip_all, fields(dataset = name))]
    pub async fn export(
        &self,
        caller: &Caller,
        name: &str,
        raw_query: Option<&str>,
    ) -> Result<Answer, ServiceError> {
        let dataset = self.readable(caller, name).await?;
        let question = self.question(&dataset, QueryKind::Export, None, raw_query)?;
        let (query, key) = (&question.query, &question.key);
        let format = query.format;
        let lookup = self
            .cache
            .lookup_streamed(&dataset, Subject::Query(query), key)
            .await;
        let (entry, outcome) = match lookup {
            Ok(Ok(entry)) => (entry, Outcome::Hit),
            // A cold export: one request computes it, the others wait for what it stores.
            Ok(Err(stamp)) => match self
                .cache
                .claim_streamed(&dataset, Subject::Query(query), key)
                .await
            {
                Claim::Served(entry) => (entry, Outcome::Hit),
                Claim::Compute(claim) => {
                    let max_bytes = self.limits.export_max_bytes;
                    self.exports_too_large.refuse_again(key, stamp, max_bytes)?;
                    let store = Some((key.as_str(), stamp, claim));
                    let computed =
                        self.compute_export(&dataset, query.clone(), caller.address, store);
                    let entry = computed.await.inspect_err(|error| {
                        if matches!(error, ServiceError::TooMuch { .. }) {
                            self.exports_too_large.remember(key, stamp, max_bytes);
                        }
                    })?;
                    (entry, Outcome::Miss)
                }
            },
            // The cache is unreachable: computed the same way, stored nowhere.
            Err(_) => (
                self.compute_export(&dataset, query.clone(), caller.address, None)
                    .await?,
                Outcome::Bypass,
            ),
        };
        // Each large answer is held once however many read it (its bytes live as long as the
        // responses sending them), but many different ones at once are refused, not held.
        if !entry.is_small() {
            self.cache.share_large(key, &entry);
            if self.cache.large_bytes_in_use() > self.limits.export_memory_bytes {
                return Err(ServiceError::Busy(
                    "Too many large exports are being sent; try again shortly.",
                ));
            }
        }
        self.answered(
            caller,
            &Read::Export {
                dataset: name.into(),
                query: raw_query.map(Into::into),
            },
        );
        Ok(Answer {
            entry,
            outcome,
            public: dataset.access.read == Level::Anonymous,
            attachment: (format == ExportFormat::Csv).then(|| format!("{}.csv", dataset.name)),
        })
    }

    /// Runs an export query to its end at the database's speed, gzipping the bytes on the way.
    /// With `store`, the work runs in a task of its own and stores the result as the cached
    /// answer: a client that leaves wastes nothing, and requests waiting for the stored answer
    /// get it. Without (the cache is unreachable), it runs in the request, which a client that
    /// leaves ends.
    async fn compute_export(
        &self,
        dataset: &Arc<Dataset>,
        query: Query,
        client: ClientAddress,
        store: Option<(&str, Stamp, StreamClaim)>,
    ) -> Result<Arc<CachedResponse>, ServiceError> {
        // One at a time per client: nobody keeps every slot busy with exports of their own.
        let mine = self
            .exports_by_client
            .take(client)
            .ok_or(ServiceError::Busy(
                "An export of yours is being prepared; ask again when it is done.",
            ))?;
        let permit = Arc::clone(&self.exports).try_acquire_owned().map_err(|_| {
            ServiceError::Busy("Too many exports are being prepared; try again shortly.")
        })?;
        let slot = self.read_slot().await?;
        self.tables_for_query(dataset).await?;
        let (storage, cache) = (Arc::clone(&self.storage), Arc::clone(&self.cache));
        let (database, dataset) = (Arc::clone(&self.database), Arc::clone(dataset));
        let (max_bytes, ttl) = (self.limits.export_max_bytes, self.cache.new_ttl(&dataset));
        let store = store.map(|(key, stamp, claim)| (key.to_owned(), stamp, claim));
        let storing = store.is_some();
        let stamp = store.as_ref().map_or(Stamp::default(), |s| s.1);
        let work = async move {
            let _held = (permit, slot, mine);
            let rows = storage.export(Arc::clone(&dataset), query.clone());
            let result = encode_export(&dataset, query.format, rows, max_bytes).await;
            if matches!(result, Err(ServiceError::Unavailable)) {
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
        tokio::spawn(work).await.map_err(|error| {
            ServiceError::Internal(anyhow::anyhow!("the export task failed: {error}"))
        })?
    }
}

/// Every row of `rows` in `format`, gzipped; refused once the compressed bytes pass `max_bytes`.
async fn encode_export(
    dataset: &Arc<Dataset>,
    format: ExportFormat,
    mut rows: crate::storage::RowStream,
    max_bytes: usize,
) -> Result<Capture, ServiceError> {
    let started = Instant::now();
    let mut encoder = ExportEncoder::new(Arc::clone(dataset), format);
    let mut capture = Capture::new(started);
    capture.add(&encoder.head());
    while let Some(batch) = rows.next().await {
        capture.add(&encoder.rows(&batch?));
        if capture.compressed_len() > max_bytes {
            return Err(ServiceError::TooMuch {
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

/// Cold exports being computed, by client address.
#[derive(Default)]
pub(super) struct ExportsByClient(Arc<parking_lot::Mutex<HashSet<ClientAddress>>>);

/// A client's turn to compute an export; ends when dropped.
struct ClientTurn {
    of: Arc<parking_lot::Mutex<HashSet<ClientAddress>>>,
    client: ClientAddress,
}

impl ExportsByClient {
    /// The client's turn, unless it has one already.
    fn take(&self, client: ClientAddress) -> Option<ClientTurn> {
        self.0.lock().insert(client).then(|| ClientTurn {
            of: Arc::clone(&self.0),
            client,
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
    fn refuse_again(&self, key: &str, stamp: Stamp, max_bytes: usize) -> Result<(), ServiceError> {
        match self.0.lock().get(key) {
            Some(&(refused, over)) if refused == stamp && max_bytes <= over => {
                Err(ServiceError::TooMuch {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> ClientAddress {
        ClientAddress::of(address.parse().unwrap())
    }

    #[test]
    fn a_client_computes_one_export_at_a_time() {
        let exports = ExportsByClient::default();
        let first = exports.take(client("203.0.113.9")).expect("a first turn");
        assert!(
            exports.take(client("203.0.113.9")).is_none(),
            "no second one meanwhile"
        );
        assert!(
            exports.take(client("198.51.100.1")).is_some(),
            "others have their own"
        );
        drop(first);
        assert!(
            exports.take(client("203.0.113.9")).is_some(),
            "the turn ended with the export"
        );
    }
}
