//! `migrate`: a dataset's tables brought to its declaration (created, given the columns and indexes
//! it gained) and the hidden normalised keys a text column gained with its filter filled in.

use super::sql::{self, Decode, Placement, StoredColumn};
use super::store::{Driver, Reach, SqlStore};
use super::{Migrated, Result};
use crate::datasets::{ColumnType, Dataset, Value, normalise_text};

/// Rows whose keys are filled in one transaction.
const FILL_BATCH: i64 = 1_000;

impl<D: Driver> SqlStore<D> {
    pub(super) async fn migrate_tables(&self, dataset: &Dataset) -> Result<Migrated> {
        let placement = Placement::default();
        for statement in sql::create_tables(dataset, D::DIALECT, &placement, true) {
            self.driver.execute(&statement).await?;
        }
        // A declaration may have gained columns since the table was created.
        let mut added_keys = Vec::new();
        if let Some(existing) = self.table_columns(&dataset.table).await? {
            for stored in sql::stored_columns(dataset) {
                let name = sql::stored_name(dataset, stored);
                if existing.iter().any(|e| e == &name) {
                    continue;
                }
                self.driver
                    .execute(&sql::add_column(dataset, stored, D::DIALECT))
                    .await?;
                tracing::info!(dataset = %dataset.name, column = %name, "added a column");
                if let StoredColumn::NormalisedKey(column) = stored {
                    added_keys.push(column);
                }
            }
        }
        for index in sql::indexes(dataset, D::DIALECT) {
            self.driver
                .execute(&sql::create_index(D::DIALECT, &index, &placement))
                .await?;
        }
        // A key column just added is null in the rows stored before it: a filter on its column
        // would find none of them. (Only the added ones: this runs on every instance's first
        // query of the dataset; `fill_keys` finishes a fill that was cut short.)
        let mut migrated = Migrated::default();
        for column in added_keys {
            migrated.keys_filled += self.fill_normalised_keys(dataset, column).await?;
        }
        Ok(migrated)
    }

    /// Fills every hidden key still null where its text is not (`handler migrate`).
    pub(super) async fn fill_every_key(&self, dataset: &Dataset) -> Result<Migrated> {
        let mut migrated = Migrated::default();
        if self.table_columns(&dataset.table).await?.is_none() {
            return Ok(migrated);
        }
        for column in (0..dataset.columns.len()).filter(|&i| dataset.columns[i].has_key_column()) {
            migrated.keys_filled += self.fill_normalised_keys(dataset, column).await?;
        }
        Ok(migrated)
    }

    /// Fills the null normalised keys of text column `column`, in key order (so it ends, whatever
    /// the rows hold), a batch of rows per transaction, read under lock in it (a write between
    /// the read and the fill would otherwise get the key of the text it replaced). Text longer
    /// than the engine's key type holds (MySQL 512, SQL Server 450 characters), which an import
    /// would have refused for a filter, keeps a null key: its row is left out of the column's
    /// filters, and counted. Returns how many keys it filled.
    async fn fill_normalised_keys(&self, dataset: &Dataset, column: usize) -> Result<u64> {
        let engine = D::DIALECT.engine_rules();
        let decode = [
            Decode::Scalar(dataset.key_column().ty),
            Decode::Scalar(ColumnType::Text),
        ];
        let (mut after, mut filled, mut too_long) = (None, 0, 0);
        loop {
            let mut transaction = self.driver.begin_write(Reach::SetWide).await?;
            let statement =
                sql::unfilled_keys(dataset, column, after.as_ref(), FILL_BATCH, D::DIALECT);
            let rows = transaction.fetch(statement, &decode).await?;
            // Dropped without a commit (nothing written): rolled back.
            let Some(last) = rows.last() else { break };
            after = Some(last[0].clone());
            let full = rows.len() as i64 == FILL_BATCH;
            let mut written = 0;
            for row in rows {
                let mut cells = row.into_iter();
                let (Some(key), Some(Value::Text(text))) = (cells.next(), cells.next()) else {
                    continue;
                };
                let normalised = normalise_text(&text);
                if (engine.indexed_text_chars)
                    .is_some_and(|max| engine.text_length(&normalised) > max)
                {
                    too_long += 1;
                    continue;
                }
                let statement = sql::fill_key(dataset, column, key, normalised, D::DIALECT);
                transaction.execute(statement).await?;
                written += 1;
            }
            if written > 0 {
                transaction.commit().await?;
                filled += written;
            }
            if !full {
                break;
            }
        }
        let name = &dataset.columns[column].name;
        if filled > 0 {
            tracing::info!(dataset = %dataset.name, column = %name, rows = filled, "filled a normalised key");
        }
        if too_long > 0 {
            tracing::warn!(
                dataset = %dataset.name, column = %name, rows = too_long,
                "rows hold text too long to filter on here; a re-import applies the value rules"
            );
        }
        Ok(filled)
    }
}
