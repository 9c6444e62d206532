//! A sync: an import's staged rows made the live rows by changing only the rows that differ by
//! key (the statements: `sql::sync`). The differences are found and applied in one transaction
//! that writers wait for and readers do not; the changed rows, read before and after, go to the
//! commit gate (the cache records them like writes), so only the answers they change end.

use super::sql::sync::{self, Kind};
use super::sql::{self, Decode, Dialect, Statement};
use super::store::{Driver, Reach, SqlStore, Transaction};
use super::{
    CommitGate, Committing, ImportSink, Result, Row, Storage as _, StorageError, SyncCounts,
    Written,
};
use crate::datasets::{ColumnType, Dataset, Value};
use crate::query::Query;

impl<D: Driver> SqlStore<D> {
    /// [`super::Storage::sync`].
    pub(super) async fn sync_staged(
        &self,
        dataset: &Dataset,
        mut sink: Box<dyn ImportSink>,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> Result<Option<SyncCounts>> {
        if let Err(error) = sink.finish_loading().await {
            discard(sink).await;
            return Err(error);
        }
        let replace = match self.must_replace(dataset).await {
            Ok(replace) => replace,
            Err(error) => {
                discard(sink).await;
                return Err(error);
            }
        };
        if replace {
            // A first import (no table yet, or the empty one reads made): the swap is faster than
            // inserting every row into indexed tables, and there is no cached answer to spare. A
            // declaration whose columns changed: every row changes.
            if let Err(reason) = gate.before_commit(Committing::Everything).await {
                discard(sink).await;
                return Err(StorageError::NotCommitted(reason));
            }
            sink.commit().await?;
            return Ok(None);
        }
        let applied = self.apply_staged(dataset, gate, record_rows).await;
        // The staged tables are dropped either way, and the import lock released with them.
        discard(sink).await;
        applied.map(Some)
    }

    /// Whether the staged rows must replace the live ones rather than be compared with them:
    /// the dataset has no rows (or no table) yet, or its tables are not those the declaration
    /// makes (a column or a list column added or removed since they were made).
    async fn must_replace(&self, dataset: &Dataset) -> Result<bool> {
        let Some(mut live) = self.table_columns(&dataset.table).await? else {
            return Ok(true);
        };
        let mut declared: Vec<String> = sql::stored_columns(dataset)
            .into_iter()
            .map(|c| sql::stored_name(dataset, c))
            .collect();
        live.sort();
        declared.sort();
        if live != declared {
            return Ok(true);
        }
        for (_, column) in dataset.list_columns() {
            if self
                .table_columns(&dataset.list_table(column))
                .await?
                .is_none()
            {
                return Ok(true);
            }
        }
        Ok(self.count(dataset, &Query::every_row(dataset)).await? == 0)
    }

    /// Finds and applies the differences, with a table of changes that lives as long as this.
    async fn apply_staged(
        &self,
        dataset: &Dataset,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> Result<SyncCounts> {
        for statement in sync::create(dataset, D::DIALECT) {
            self.driver.execute(&statement).await?;
        }
        let applied = self.apply_in_transaction(dataset, gate, record_rows).await;
        for statement in sync::discard(dataset, D::DIALECT) {
            if let Err(error) = self.driver.execute(&statement).await {
                tracing::warn!(dataset = %dataset.name, %error, "could not drop a sync's table of changes");
            }
        }
        applied
    }

    async fn apply_in_transaction(
        &self,
        dataset: &Dataset,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> Result<SyncCounts> {
        let dialect = D::DIALECT;
        let mut tx = self.driver.begin_write(Reach::SetWide).await?;
        if let Some(lock) = sync::lock_live(dataset, dialect) {
            tx.fetch(lock, &[]).await?;
        }
        for statement in sync::find_changes(dataset, dialect) {
            tx.execute(plain(statement)).await?;
        }
        let counts = count(tx.as_mut(), dataset, dialect).await?;
        if counts.total() == 0 {
            return Ok(counts); // nothing to record or apply; the transaction rolls back
        }
        let writes = if counts.total() <= record_rows {
            match changed_rows(tx.as_mut(), dataset, dialect).await {
                // Every change read, each changed row paired with itself: else answers it changes
                // would be left out of the record, so the record becomes a change of everything.
                Ok(writes) => complete(dataset, &writes, counts).then_some(writes),
                // A live row the declaration can no longer read (a column's type changed): the
                // sync replaces it all the same, recorded as a change of everything.
                Err(StorageError::Decode { .. }) => None,
                Err(error) => return Err(error),
            }
        } else {
            None
        };
        let committing = match &writes {
            Some(writes) => Committing::Rows(writes),
            None => Committing::Everything,
        };
        gate.before_commit(committing)
            .await
            .map_err(StorageError::NotCommitted)?;
        for statement in sync::apply(dataset, dialect) {
            tx.execute(plain(statement)).await?;
        }
        tx.commit().await?;
        Ok(counts)
    }
}

/// The staged tables dropped (and the import's lock released); a failure is only logged, since
/// the next import drops what is left.
async fn discard(sink: Box<dyn ImportSink>) {
    if let Err(error) = sink.abort().await {
        tracing::warn!(%error, "could not discard the staged rows");
    }
}

fn plain(sql: String) -> Statement {
    Statement {
        sql,
        params: vec![],
    }
}

async fn count(
    tx: &mut dyn Transaction,
    dataset: &Dataset,
    dialect: Dialect,
) -> Result<SyncCounts> {
    let integer = Decode::Scalar(ColumnType::Integer);
    let decode = [integer.clone(), integer.clone(), integer];
    let rows = tx
        .fetch(sync::count_changes(dataset, dialect), &decode)
        .await?;
    let number = |row: &Row, i: usize| match row.get(i) {
        Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let row = rows.first().ok_or_else(|| StorageError::Decode {
        column: "count".to_owned(),
        reason: "the count of changes returned no row".to_owned(),
    })?;
    Ok(SyncCounts {
        added: number(row, 0),
        changed: number(row, 1),
        removed: number(row, 2),
    })
}

/// Every changed row before and after: changed keys (read live and staged, in the same key
/// order, so they pair up), removed ones (live), added ones (staged).
async fn changed_rows(
    tx: &mut dyn Transaction,
    dataset: &Dataset,
    dialect: Dialect,
) -> Result<Vec<Written>> {
    let decode = Decode::row(dataset);
    let rows = |kind: Kind, staged: bool| sync::changed_rows(dataset, dialect, &[kind], staged);
    let before = tx.fetch(rows(Kind::Changed, false), &decode).await?;
    let after = tx.fetch(rows(Kind::Changed, true), &decode).await?;
    let removed = tx.fetch(rows(Kind::Removed, false), &decode).await?;
    let added = tx.fetch(rows(Kind::Added, true), &decode).await?;
    if before.len() != after.len() {
        return Err(StorageError::Decode {
            column: dataset.key_column().name.clone(),
            reason: format!(
                "{} changed keys read live but {} staged",
                before.len(),
                after.len()
            ),
        });
    }
    let mut writes = Vec::with_capacity(before.len() + removed.len() + added.len());
    writes.extend(before.into_iter().zip(after).map(|(old, new)| Written {
        old: Some(old),
        new: Some(new),
    }));
    writes.extend(removed.into_iter().map(|old| Written {
        old: Some(old),
        new: None,
    }));
    writes.extend(added.into_iter().map(|new| Written {
        old: None,
        new: Some(new),
    }));
    Ok(writes)
}

/// Whether `writes` are every change `counts` counted, with a changed row's old and new keys the
/// same.
fn complete(dataset: &Dataset, writes: &[Written], counts: SyncCounts) -> bool {
    let key = dataset.key.column;
    let complete = writes.len() as u64 == counts.total()
        && writes.iter().all(|w| match (&w.old, &w.new) {
            (Some(old), Some(new)) => old[key] == new[key],
            _ => true,
        });
    if !complete {
        tracing::warn!(dataset = %dataset.name, "a sync read other changed rows than it counted: recorded as a change of everything");
    }
    complete
}
