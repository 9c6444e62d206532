//! SQLite, the embedded default: bundled with the binary (no system library), WAL mode so readers
//! never wait for an import.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{
    Arguments as _, AssertSqlSafe, ConnectOptions as _, Row as _, Sqlite, pool::PoolConnection,
};
use tokio::sync::mpsc;

use super::sql::{self, Decode, Dialect, Placement, Statement};
use super::store::{Driver, Transaction, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// SQLite allows 32,766 parameters per statement; stay well below it.
const MAX_PARAMS_PER_INSERT: usize = 16_000;
const STAGING_SUFFIX: &str = "__import";

/// Connections in the pool: a few, since SQLite writes one at a time.
const POOL_SIZE: usize = 4;

pub struct SqliteDriver {
    pool: SqlitePool,
}

impl SqliteDriver {
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid SQLite URL (e.g. sqlite://smartcache.db)")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE as u32)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(SqliteDriver { pool })
    }
}

/// Dates and timestamps are stored as fixed-width text so that text order is time order.
fn bind(arguments: &mut SqliteArguments, value: Value) {
    let result = match value {
        Value::Null => arguments.add(Option::<i64>::None),
        Value::Text(s) => arguments.add(s),
        Value::Integer(i) => arguments.add(i),
        Value::Float(f) => arguments.add(f),
        Value::Boolean(b) => arguments.add(b),
        Value::Date(d) => arguments.add(d.format("%Y-%m-%d").to_string()),
        Value::Timestamp(t) => arguments.add(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        Value::List(items) => arguments.add(items.join(",")),
    };
    result.expect("encoding a plain SQLite value cannot fail");
}

fn arguments(params: Vec<Value>) -> SqliteArguments {
    let mut arguments = SqliteArguments::default();
    for value in params {
        bind(&mut arguments, value);
    }
    arguments
}

fn decode_row(row: &SqliteRow, decode: &[Decode]) -> Result<Row> {
    decode
        .iter()
        .enumerate()
        .map(|(i, d)| decode_value(row, i, d))
        .collect()
}

fn decode_value(row: &SqliteRow, index: usize, decode: &Decode) -> Result<Value> {
    // SQLite is dynamically typed: ask for the type we stored without sqlx's strict check.
    let text = |row: &SqliteRow| row.try_get_unchecked::<Option<String>, _>(index);
    let bad = |reason: String| StorageError::Decode {
        column: index.to_string(),
        reason,
    };
    Ok(match decode {
        Decode::List(delimiter) => match text(row)? {
            None => Value::Null,
            Some(s) => Value::parse_list(&s, delimiter),
        },
        Decode::Scalar(ty) => match ty {
            ColumnType::Text => text(row)?.map_or(Value::Null, Value::Text),
            ColumnType::Integer => row
                .try_get_unchecked::<Option<i64>, _>(index)?
                .map_or(Value::Null, Value::Integer),
            ColumnType::Float => row
                .try_get_unchecked::<Option<f64>, _>(index)?
                .map_or(Value::Null, Value::Float),
            ColumnType::Boolean => row
                .try_get_unchecked::<Option<bool>, _>(index)?
                .map_or(Value::Null, Value::Boolean),
            ColumnType::Date => match text(row)? {
                None => Value::Null,
                Some(s) => Value::Date(
                    NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|e| bad(e.to_string()))?,
                ),
            },
            ColumnType::Timestamp => match text(row)? {
                None => Value::Null,
                Some(s) => Value::Timestamp(
                    DateTime::parse_from_rfc3339(&s)
                        .map_err(|e| bad(e.to_string()))?
                        .with_timezone(&Utc),
                ),
            },
        },
    })
}

#[async_trait]
impl Driver for SqliteDriver {
    const NAME: &'static str = "sqlite";
    const POOL_SIZE: usize = POOL_SIZE;
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn fetch(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    fn stream(
        &self,
        statement: Statement,
        decode: Vec<Decode>,
        sender: mpsc::Sender<Result<Vec<Row>>>,
    ) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let query = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params));
            forward_rows(query.fetch(&pool), |row| decode_row(row, &decode), sender).await;
        });
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn table_columns(&self, table: &str) -> Result<Option<Vec<String>>> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(&self.pool)
                .await?;
        Ok((!names.is_empty()).then_some(names))
    }

    async fn begin_write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(SqliteWrite(
            self.pool.begin_with("BEGIN IMMEDIATE").await?,
        )))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        let mut conn = self.pool.acquire().await?;
        // Index builds dominate a large import: sort in memory, on every core.
        sqlx::raw_sql(
            "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536; PRAGMA threads = 4; \
             PRAGMA analysis_limit = 2000",
        )
        .execute(&mut *conn)
        .await?;
        let staging = Placement {
            schema: None,
            suffix: STAGING_SUFFIX,
        };
        // A staging table left by an import that died is stale: start afresh.
        for table in sql::tables(dataset) {
            let drop = format!(
                "DROP TABLE IF EXISTS {}",
                staging.table(Dialect::Sqlite, &table)
            );
            sqlx::raw_sql(AssertSqlSafe(drop))
                .execute(&mut *conn)
                .await?;
        }
        for create in sql::create_tables(dataset, Dialect::Sqlite, &staging, true) {
            sqlx::raw_sql(AssertSqlSafe(create))
                .execute(&mut *conn)
                .await?;
        }
        Ok(Box::new(SqliteImport {
            conn,
            dataset: Arc::new(dataset.clone()),
            staging,
        }))
    }
}

/// Loads into `<table>__import` in one transaction per batch, then swaps it in.
struct SqliteImport {
    conn: PoolConnection<Sqlite>,
    dataset: Arc<Dataset>,
    staging: Placement,
}

impl SqliteImport {
    /// Multi-row `INSERT ... VALUES (...), (...)`: one statement per many rows.
    async fn insert(
        &mut self,
        table: &str,
        columns: &[String],
        values: Vec<Vec<Value>>,
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let quoted: Vec<String> = columns.iter().map(|c| Dialect::Sqlite.quote(c)).collect();
        let tuple = format!("({})", vec!["?"; columns.len()].join(","));
        let per_statement = (MAX_PARAMS_PER_INSERT / columns.len()).max(1);
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            self.staging.table(Dialect::Sqlite, table),
            quoted.join(",")
        );
        for chunk in values.chunks(per_statement) {
            let mut sql = String::with_capacity(head.len() + chunk.len() * (tuple.len() + 1));
            sql.push_str(&head);
            let mut args = SqliteArguments::default();
            args.reserve(chunk.len() * columns.len(), 0);
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&tuple);
                for value in row {
                    bind(&mut args, value.clone());
                }
            }
            sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ImportSink for SqliteImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
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
        sqlx::raw_sql("BEGIN").execute(&mut *self.conn).await?;
        let result = async {
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
            Ok::<_, StorageError>(())
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::raw_sql(end).execute(&mut *self.conn).await?;
        result
    }

    /// One write transaction drops the old tables, renames the staged ones and builds the
    /// indexes; WAL readers keep seeing the old rows until it commits.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let mut statements = Vec::new();
        for table in sql::tables(&dataset) {
            statements.push(format!(
                "DROP TABLE IF EXISTS {}",
                Dialect::Sqlite.quote(&table)
            ));
            statements.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                self.staging.table(Dialect::Sqlite, &table),
                Dialect::Sqlite.quote(&table)
            ));
        }
        for index in sql::indexes(&dataset, Dialect::Sqlite) {
            statements.push(sql::create_index(
                Dialect::Sqlite,
                &index,
                &Placement::default(),
            ));
        }
        // Fresh statistics, so the planner picks the filter indexes from the first query on.
        statements.extend(
            sql::tables(&dataset)
                .iter()
                .map(|t| format!("ANALYZE {}", Dialect::Sqlite.quote(t))),
        );
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *self.conn)
            .await?;
        for statement in statements {
            let started = std::time::Instant::now();
            let result = sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&mut *self.conn)
                .await;
            tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import swap step");
            if let Err(error) = result {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await;
                return Err(error.into());
            }
        }
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        for table in sql::tables(&self.dataset) {
            let drop = format!(
                "DROP TABLE IF EXISTS {}",
                self.staging.table(Dialect::Sqlite, &table)
            );
            sqlx::raw_sql(AssertSqlSafe(drop))
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }
}

/// A write transaction; sqlx rolls it back if it is dropped uncommitted.
struct SqliteWrite(sqlx::Transaction<'static, Sqlite>);

#[async_trait]
impl Transaction for SqliteWrite {
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}
