//! Recording writes with the store before they commit: the record in flight, its end, and the
//! record made again when the store lost it (the protocol: ARCHITECTURE.md, "Cache").

use std::time::Duration;

use super::flight::Computed;
use super::fresh::{self, RowChange, Stamp, WRITE_LOG_CAPACITY, WRITE_RECORD_MAX_BYTES};
use super::store::{InFlight, NewWrite};
use super::{Cache, Subject, Unavailable};
use crate::datasets::{Dataset, Value};

/// How long a write counts as in flight at most: past it, a writer that died is forgotten. A
/// writer commits only within [`COMMIT_WITHIN`] of recording its write, so its commit lands well
/// inside this.
pub const WRITE_IN_FLIGHT_FOR: Duration = Duration::from_secs(15);
/// How soon after its record a write must commit (else it rolls back).
pub const COMMIT_WITHIN: Duration = Duration::from_secs(5);

/// A change recorded with the store before its commit, to be ended by [`Cache::end_write`].
pub struct WriteInFlight {
    dataset: String,
    write: NewWrite,
    at: InFlight,
    began: tokio::time::Instant,
}

impl WriteInFlight {
    /// How long ago it was recorded (from before the store was asked).
    pub fn age(&self) -> Duration {
        self.began.elapsed()
    }

    /// The position it was recorded at, if no other write of its row was in flight then.
    fn stamp_if_alone(&self) -> Option<Stamp> {
        self.at.alone.then_some(Stamp {
            epoch: self.at.epoch,
            seq: self.at.seq,
        })
    }
}

/// The most a record of many rows' changes (a sync) may hold, encoded. Each instance reads it
/// once and keeps it with its copy of the log (`redis/mirror.rs` counts the rows it keeps).
pub const CHANGES_RECORD_MAX_BYTES: usize = 4 << 20;

/// The record of a change of every answer.
fn everything() -> NewWrite {
    NewWrite {
        rows: Vec::new(),
        everything: true,
        payload: fresh::EVERYTHING.to_owned(),
        keys: Vec::new(),
    }
}

/// The record of these rows' changes, each cut to what freshness checks read; a change of every
/// answer when its encoding would exceed `max_bytes`.
fn recorded(dataset: &Dataset, changes: Vec<RowChange>, max_bytes: usize) -> NewWrite {
    let rows: Vec<RowChange> = changes
        .into_iter()
        .map(|RowChange { old, new }| RowChange {
            old: old.map(|row| fresh::freshness_columns(dataset, row)),
            new: new.map(|row| fresh::freshness_columns(dataset, row)),
        })
        .collect();
    let payload = fresh::RecordedWrite::encode_payload(&rows);
    if payload.len() > max_bytes {
        tracing::info!(dataset = %dataset.name, rows = rows.len(), bytes = payload.len(), "a change too large to record row by row: the dataset's answers end");
        return everything();
    }
    NewWrite {
        keys: fresh::row_keys(dataset, &rows),
        rows,
        everything: false,
        payload,
    }
}

impl Cache {
    /// Records a change of one row (create: `old` None; delete: `new` None) before its
    /// transaction commits; [`Cache::end_write`] once it has. Until then answers computed count
    /// as unsettled: a reader's query may or may not see the change. Only what freshness checks
    /// read is kept of each row (its key and its filterable and sortable columns); a write too
    /// large to remember that way ends every cached answer of the dataset instead. `Err`: the
    /// store cannot take it, and the change must not commit.
    pub async fn begin_write(
        &self,
        dataset: &Dataset,
        old: Option<Vec<Value>>,
        new: Option<Vec<Value>>,
    ) -> Result<WriteInFlight, Unavailable> {
        let write = recorded(
            dataset,
            vec![RowChange { old, new }],
            WRITE_RECORD_MAX_BYTES,
        );
        self.begin(dataset, write, WRITE_IN_FLIGHT_FOR).await
    }

    /// Records the changes of many rows (a sync) as one record, before their transaction
    /// commits, in flight for at most `lifetime`: to freshness, as if each were a write of its
    /// own, at the cost of one. Larger than [`CHANGES_RECORD_MAX_BYTES`], it is a change of
    /// every answer instead.
    pub async fn begin_changes(
        &self,
        dataset: &Dataset,
        changes: Vec<RowChange>,
        lifetime: Duration,
    ) -> Result<WriteInFlight, Unavailable> {
        let write = recorded(dataset, changes, CHANGES_RECORD_MAX_BYTES);
        self.begin(dataset, write, lifetime).await
    }

    /// Records a change of every row of the dataset (an import) before it commits, in flight for
    /// at most `lifetime`.
    pub async fn begin_change_of_everything(
        &self,
        dataset: &Dataset,
        lifetime: Duration,
    ) -> Result<WriteInFlight, Unavailable> {
        self.begin(dataset, everything(), lifetime).await
    }

    async fn begin(
        &self,
        dataset: &Dataset,
        write: NewWrite,
        lifetime: Duration,
    ) -> Result<WriteInFlight, Unavailable> {
        let began = tokio::time::Instant::now();
        let at = self
            .store
            .begin_write(&dataset.name, &write, WRITE_LOG_CAPACITY, lifetime)
            .await?;
        Ok(WriteInFlight {
            dataset: dataset.name.clone(),
            write,
            at,
            began,
        })
    }

    /// Ends a write begun by [`Cache::begin_write`] (committed or not). `Ok`: its record stands
    /// (or was made again, if the store lost it), so the write may be acknowledged; with the
    /// position it was recorded at when that record stood throughout and no other write of its
    /// row was in flight when it was made (the stamp [`Cache::keep_written`] needs; `None`
    /// otherwise). `Err`: the store could not be told; this instance then serves none of the
    /// dataset's cached answers until it has purged them, and the write must not be acknowledged
    /// as visible everywhere.
    pub async fn end_write(&self, write: WriteInFlight) -> Result<Option<Stamp>, Unavailable> {
        let dataset = write.dataset.as_str();
        let stamp = write.stamp_if_alone();
        let ended = match self.store.end_write(dataset, write.at).await {
            Ok(true) => Ok(stamp),
            // Lost (Redis restarted or the dataset was purged meanwhile): recorded again, after
            // the commit, so answers computed before it cannot stay fresh.
            Ok(false) => self
                .store
                .record_write(dataset, &write.write, WRITE_LOG_CAPACITY)
                .await
                .map(|_| None),
            Err(unavailable) => Err(unavailable),
        };
        if ended.is_err() {
            self.unrecorded.lock().insert(dataset.to_owned());
        }
        ended
    }

    /// Keeps the answer about the row a write has just committed (`body`, made from the row as
    /// written), stamped with the write's own position, so that the row's next read is a hit
    /// rather than a query. `stamp` must come from [`Cache::end_write`], which gives one only for
    /// a record that stood through the commit and was made while no other write of the same row
    /// (nor one of many rows or of everything) was in flight. Then every such write recorded
    /// before it had committed or failed before it was recorded, so it is in the row this one
    /// read under the row's lock; every write recorded after it is in the log after the stamp.
    /// Writes of other rows cannot change the answer (ARCHITECTURE.md, "Cache").
    pub async fn keep_written(&self, dataset: &Dataset, key: &Value, stamp: Stamp, body: Vec<u8>) {
        let key = self.key(dataset, &Subject::Item(key));
        // Computed by no query: no early refresh (XFetch weighs an answer's compute time).
        self.store_computed(dataset, &key, stamp, Computed::json(body), Duration::ZERO)
            .await;
    }

    /// Records a write made outside [`Cache::begin_write`]: begun and ended at once.
    pub async fn record_write(
        &self,
        dataset: &Dataset,
        old: Option<Vec<Value>>,
        new: Option<Vec<Value>>,
    ) -> Result<(), Unavailable> {
        let write = self.begin_write(dataset, old, new).await;
        match write {
            Ok(write) => self.end_write(write).await.map(drop),
            Err(unavailable) => {
                self.unrecorded.lock().insert(dataset.name.clone());
                Err(unavailable)
            }
        }
    }
}
