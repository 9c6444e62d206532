//! `migrate`: a dataset's tables brought to its declaration (created, given the columns and indexes
//! it gained) and the hidden normalised keys a text column gained with its filter filled in.

use super::Result;
use super::sql::{self, Decode, Placement};
use super::store::{Driver, Reach, SqlStore};
use crate::datasets::{ColumnType, Dataset, Value, normalise_text};

impl<D: Driver> SqlStore<D> {
    pub(super) async fn migrate_tables(&self, dataset: &Dataset) -> Result<()> {
        let placement = Placement::default();
        for statement in sql::create_tables(dataset, D::DIALECT, &placement, true) {
            self.driver.execute(&statement).await?;
        }
        // A declaration may have gained columns since the table was created.
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
            }
        }
        for index in sql::indexes(dataset, D::DIALECT) {
            self.driver
                .execute(&sql::create_index(D::DIALECT, &index, &placement))
                .await?;
        }
        // A key column just added (or left part-filled by a migration cut short) is null in the
        // rows stored before it: a filter on its column would find none of them.
        for column in (0..dataset.columns.len()).filter(|&i| dataset.columns[i].has_key_column()) {
            self.fill_normalised_keys(dataset, column).await?;
        }
        Ok(())
    }

    /// Fills the null normalised keys of text column `column`, a batch of rows per transaction,
    /// in key order (so it ends, whatever the rows hold). Text longer than the engine's key type
    /// holds (MySQL 512, SQL Server 450 characters), which an import would have refused for a
    /// filter, keeps a null key: its row is left out of the column's filters, and counted.
    async fn fill_normalised_keys(&self, dataset: &Dataset, column: usize) -> Result<()> {
        const BATCH: i64 = 1_000;
        let longest = D::DIALECT.engine_rules().indexed_text_chars;
        let mut too_long = 0u64;
        let decode = [
            Decode::Scalar(dataset.key_column().ty),
            Decode::Scalar(ColumnType::Text),
        ];
        let (mut after, mut filled) = (None, 0);
        loop {
            let statement = sql::unfilled_keys(dataset, column, after.as_ref(), BATCH, D::DIALECT);
            let rows = self.driver.fetch(statement, &decode).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last[0].clone());
            let full = rows.len() as i64 == BATCH;
            let mut transaction = self.driver.begin_write(Reach::SetWide).await?;
            for row in rows {
                let mut cells = row.into_iter();
                let (Some(key), Some(Value::Text(text))) = (cells.next(), cells.next()) else {
                    continue;
                };
                let normalised = normalise_text(&text);
                if longest.is_some_and(|max| normalised.chars().count() > max) {
                    too_long += 1;
                    continue;
                }
                let statement = sql::fill_key(dataset, column, key, normalised, D::DIALECT);
                transaction.execute(statement).await?;
                filled += 1;
            }
            transaction.commit().await?;
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
        Ok(())
    }
}
