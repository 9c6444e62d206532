//! The import of SQLite and MySQL: multi-row `INSERT`s into the staged tables, one transaction
//! per batch, then the swap that `sql::staging` writes for the engine.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::{Arguments as _, AssertSqlSafe, Database, Executor};

use super::sql::{self, Placement, staging};
use super::sqlx_driver::{Engine, ImportConnection, run, run_in_transaction};
use super::{ImportSink, Result, Row};
use crate::datasets::{Dataset, Value};

/// Parameters per `INSERT`: SQLite takes at most 32,766 per statement and MySQL 65,535 per
/// prepared statement; a few thousand rows per `INSERT` is where the gain from fewer round
/// trips levels off.
const MAX_PARAMS_PER_INSERT: usize = 16_000;

/// Loads into the staged tables, invisible to readers until the swap.
pub struct InsertImport<DB: Database> {
    conn: ImportConnection<DB>,
    dataset: Arc<Dataset>,
    staging: Placement,
}

impl<DB: Engine> InsertImport<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Sets up the import's connection and creates the empty staged tables.
    pub async fn begin(
        mut conn: ImportConnection<DB>,
        dataset: &Dataset,
    ) -> Result<Box<dyn ImportSink>> {
        if let Some(session) = staging::session(DB::DIALECT) {
            run::<DB>(conn.get(), session).await?;
        }
        for statement in staging::create(dataset, DB::DIALECT) {
            run::<DB>(conn.get(), &statement).await?;
        }
        Ok(Box::new(InsertImport {
            conn,
            dataset: Arc::new(dataset.clone()),
            staging: staging::placement(DB::DIALECT),
        }))
    }

    /// Multi-row `INSERT ... VALUES (...), (...)`: one statement per many rows. (Both engines
    /// number parameters by position, `?`.)
    async fn insert(
        &mut self,
        table: &str,
        columns: &[String],
        values: Vec<Vec<Value>>,
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let dialect = DB::DIALECT;
        let quoted: Vec<String> = columns.iter().map(|c| dialect.quote(c)).collect();
        let tuple = format!("({})", vec!["?"; columns.len()].join(","));
        let per_statement = (MAX_PARAMS_PER_INSERT / columns.len()).max(1);
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            self.staging.table(dialect, table),
            quoted.join(",")
        );
        for chunk in values.chunks(per_statement) {
            let mut sql = String::with_capacity(head.len() + chunk.len() * (tuple.len() + 1));
            sql.push_str(&head);
            let mut arguments = DB::Arguments::default();
            arguments.reserve(chunk.len() * columns.len(), 0);
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&tuple);
                for value in row {
                    DB::bind(&mut arguments, value.clone());
                }
            }
            sqlx::query_with(AssertSqlSafe(sql), arguments)
                .execute(self.conn.get())
                .await?;
        }
        Ok(())
    }

    /// The batch's rows into the main table, their elements into the list tables.
    async fn insert_batch(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
        let names: Vec<String> = stored
            .iter()
            .map(|&c| sql::stored_name(&dataset, c))
            .collect();
        let values = rows
            .iter()
            .map(|row| {
                stored
                    .iter()
                    .map(|&c| sql::stored_value(&dataset, row, c))
                    .collect()
            })
            .collect();
        self.insert(&dataset.table, &names, values).await?;
        let list_columns: Vec<String> = sql::LIST_TABLE_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (index, column) in dataset.list_columns() {
            let elements = rows
                .iter()
                .flat_map(|row| sql::list_elements(row, dataset.key.column, index))
                .map(|(key, value, value_key)| {
                    vec![
                        key.clone(),
                        Value::Text(value.to_owned()),
                        Value::Text(value_key),
                    ]
                })
                .collect();
            self.insert(&dataset.list_table(column), &list_columns, elements)
                .await?;
        }
        Ok(())
    }

    /// Drops the staged tables and ends the connection (which releases MySQL's import lock).
    async fn discard(mut self) -> Result<()> {
        for statement in staging::discard(&self.dataset, DB::DIALECT) {
            run::<DB>(self.conn.get(), &statement).await?;
        }
        self.conn.close().await
    }
}

#[async_trait]
impl<DB: Engine> ImportSink for InsertImport<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// One transaction per batch: one commit (and disk flush) per batch, not one per statement.
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        run::<DB>(self.conn.get(), "BEGIN").await?;
        let result = self.insert_batch(rows).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        run::<DB>(self.conn.get(), end).await?;
        result
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let plan = staging::swap(&dataset, DB::DIALECT, None);
        for statement in &plan.build {
            let started = Instant::now();
            let result = run::<DB>(self.conn.get(), statement).await;
            tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import index step");
            if let Err(error) = result {
                self.discard().await?;
                return Err(error);
            }
        }
        if plan.transaction {
            run_in_transaction::<DB>(self.conn.get(), &plan.swap).await?;
        } else {
            for statement in &plan.swap {
                run::<DB>(self.conn.get(), statement).await?;
            }
        }
        for statement in &plan.cleanup {
            if let Err(error) = run::<DB>(self.conn.get(), statement).await {
                tracing::warn!(dataset = %dataset.name, %error, "could not drop the replaced tables");
            }
        }
        // The new rows are live; closing also releases the lock.
        let _ = self.conn.close().await;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}
