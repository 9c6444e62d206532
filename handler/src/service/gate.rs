//! Between a change's transaction and its commit: the change is recorded with the cache first
//! (`Cache::begin_write`), so that once it is committed no instance can serve an answer it
//! changed, whatever happens to Redis after; if the cache cannot take it, the change rolls back
//! and nothing was written. After the commit (or its failure) the record is ended, and only then
//! is the change acknowledged. The protocol and why it is safe: ARCHITECTURE.md, "Cache".

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::cache::{COMMIT_WITHIN, Cache, RowChange, Stamp, Unavailable, WriteInFlight};
use crate::datasets::Dataset;
use crate::storage::{CommitGate, Committing};

/// How long an import's change of everything counts as in flight at most: its commit (indexes,
/// then the swap) must end well within it, or the import also purges the dataset after.
const IMPORT_IN_FLIGHT_FOR: std::time::Duration = std::time::Duration::from_secs(600);

pub(super) struct CacheGate<'a> {
    cache: &'a Cache,
    dataset: &'a Dataset,
    /// Every change recorded: one per attempt (a write retried after a deadlock records again),
    /// two where a change recorded before its transaction is recorded again in it; the last is
    /// the one that committed, if any did.
    begun: Mutex<Vec<WriteInFlight>>,
}

impl<'a> CacheGate<'a> {
    pub(super) fn new(cache: &'a Cache, dataset: &'a Dataset) -> Self {
        CacheGate {
            cache,
            dataset,
            begun: Mutex::default(),
        }
    }

    /// Ends every record this gate made. `Ok` when the last one stands (the change may be
    /// acknowledged), with the position that record was made at if it stood throughout (see
    /// [`Cache::end_write`]); `Err` when the cache could not be told.
    pub(super) async fn finish(self) -> Result<Option<Stamp>, Unavailable> {
        let begun = self.begun.into_inner();
        let mut last = Ok(None);
        for write in begun {
            // An import whose commit took longer than its record lasts: its in-flight record
            // may have lapsed before the swap, so every answer of the dataset ends once more.
            let lapsed = write.age() > IMPORT_IN_FLIGHT_FOR / 2;
            last = self.cache.end_write(write).await;
            if last.is_ok() && lapsed {
                last = self.cache.purge(&self.dataset.name).await.map(|()| None);
            }
        }
        last
    }
}

#[async_trait]
impl CommitGate for CacheGate<'_> {
    async fn before_commit(&self, change: Committing<'_>) -> Result<(), String> {
        let (write, must_commit_soon) = match change {
            Committing::Row(written) => (
                self.cache
                    .begin_write(self.dataset, written.old.clone(), written.new.clone())
                    .await,
                true,
            ),
            // A sync's changed rows: one record, in flight as long as an import's change.
            Committing::Rows(written) => (
                self.cache
                    .begin_changes(
                        self.dataset,
                        written
                            .iter()
                            .map(|w| RowChange {
                                old: w.old.clone(),
                                new: w.new.clone(),
                            })
                            .collect(),
                        IMPORT_IN_FLIGHT_FOR,
                    )
                    .await,
                false,
            ),
            Committing::Everything => (
                self.cache
                    .begin_change_of_everything(self.dataset, IMPORT_IN_FLIGHT_FOR)
                    .await,
                false,
            ),
        };
        let write = write.map_err(|Unavailable| {
            "the cache (Redis) could not record the change, so it was not made".to_owned()
        })?;
        let late = must_commit_soon && write.age() > COMMIT_WITHIN;
        self.begun.lock().push(write);
        if late {
            return Err("recording the change with the cache took too long".to_owned());
        }
        Ok(())
    }

    /// A shared store (Redis) is a round trip away.
    fn records_slowly(&self) -> bool {
        self.cache.is_shared()
    }

    /// A writer commits only within `COMMIT_WITHIN` of its record (see `cache::writes`).
    fn still_recorded(&self) -> bool {
        self.begun
            .lock()
            .last()
            .is_some_and(|write| write.age() <= COMMIT_WITHIN)
    }
}
