//! PostgreSQL: bulk import with `COPY`, in one transaction that builds the new tables in a
//! staging schema and moves them over the old ones at the end.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Arguments as _, AssertSqlSafe, Postgres, Row as _, Transaction};
use tokio::sync::mpsc;

use super::sql::{self, Decode, Dialect, Placement, Statement};
use super::store::{Driver, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// Imports are built here, invisible to readers until their transaction commits.
const STAGING_SCHEMA: &str = "smartcache_import";

pub struct PgDriver {
    pool: PgPool,
}

impl PgDriver {
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid PostgreSQL URL (e.g. postgres://user@host/db)")?
            // Exports of whole datasets are long on purpose; warn only about the truly slow.
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(PgDriver { pool })
    }
}

fn arguments(params: Vec<Value>) -> PgArguments {
    let mut arguments = PgArguments::default();
    for value in params {
        let result = match value {
            Value::Null => arguments.add(Option::<String>::None),
            Value::Text(s) => arguments.add(s),
            Value::Integer(i) => arguments.add(i),
            Value::Float(f) => arguments.add(f),
            Value::Boolean(b) => arguments.add(b),
            Value::Date(d) => arguments.add(d),
            Value::Timestamp(t) => arguments.add(t),
            Value::List(items) => arguments.add(items.join(",")),
        };
        result.expect("encoding a plain PostgreSQL value cannot fail");
    }
    arguments
}

fn decode_row(row: &PgRow, decode: &[Decode]) -> Result<Row> {
    decode
        .iter()
        .enumerate()
        .map(|(i, d)| decode_value(row, i, d))
        .collect()
}

fn decode_value(row: &PgRow, i: usize, decode: &Decode) -> Result<Value> {
    Ok(match decode {
        Decode::List(delimiter) => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, |s| Value::parse_list(&s, delimiter)),
        Decode::Scalar(ty) => match ty {
            ColumnType::Text => row
                .try_get::<Option<String>, _>(i)?
                .map_or(Value::Null, Value::Text),
            ColumnType::Integer => row
                .try_get::<Option<i64>, _>(i)?
                .map_or(Value::Null, Value::Integer),
            ColumnType::Float => row
                .try_get::<Option<f64>, _>(i)?
                .map_or(Value::Null, Value::Float),
            ColumnType::Boolean => row
                .try_get::<Option<bool>, _>(i)?
                .map_or(Value::Null, Value::Boolean),
            ColumnType::Date => row
                .try_get::<Option<NaiveDate>, _>(i)?
                .map_or(Value::Null, Value::Date),
            ColumnType::Timestamp => row
                .try_get::<Option<DateTime<Utc>>, _>(i)?
                .map_or(Value::Null, Value::Timestamp),
        },
    })
}

#[async_trait]
impl Driver for PgDriver {
    const NAME: &'static str = "postgres";
    const DIALECT: Dialect = Dialect::Postgres;

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
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        Ok((!names.is_empty()).then_some(names))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        let mut tx = self.pool.begin().await?;
        // Two imports of one dataset would race for the same staging tables: the second waits
        // for nothing and reports instead. The lock ends with the transaction, even on a crash.
        let lock_name = format!("smartcache-import:{}", dataset.table);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(lock_name)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        let target_schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *tx)
            .await?;
        let staging = Placement {
            schema: Some(STAGING_SCHEMA.to_owned()),
            suffix: "",
        };
        let mut setup = vec![
            // Index builds dominate a large import; give them memory for this transaction only.
            "SET LOCAL maintenance_work_mem = '256MB'".to_owned(),
            format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                Dialect::Postgres.quote(STAGING_SCHEMA)
            ),
        ];
        for table in sql::tables(dataset) {
            setup.push(format!(
                "DROP TABLE IF EXISTS {}",
                staging.table(Dialect::Postgres, &table)
            ));
        }
        // No primary key while loading: keys are unique already (the importer checks) and one
        // index build at the end is much faster than maintaining it row by row.
        setup.extend(sql::create_tables(
            dataset,
            Dialect::Postgres,
            &staging,
            false,
        ));
        for statement in setup {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        Ok(Box::new(PgImport {
            tx,
            dataset: Arc::new(dataset.clone()),
            staging,
            target_schema,
        }))
    }
}

struct PgImport {
    tx: Transaction<'static, Postgres>,
    dataset: Arc<Dataset>,
    staging: Placement,
    target_schema: String,
}

impl PgImport {
    async fn copy(&mut self, table: &str, columns: &[String], data: Vec<u8>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let quoted: Vec<String> = columns.iter().map(|c| Dialect::Postgres.quote(c)).collect();
        let statement = format!(
            "COPY {} ({}) FROM STDIN",
            self.staging.table(Dialect::Postgres, table),
            quoted.join(", ")
        );
        let mut copy = self.tx.copy_in_raw(&statement).await?;
        copy.send(data).await?;
        copy.finish().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportSink for PgImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
        let names: Vec<String> = stored
            .iter()
            .map(|&c| sql::stored_name(&dataset, c))
            .collect();
        let mut data = Vec::with_capacity(rows.len() * 128);
        for row in rows {
            for (i, &column) in stored.iter().enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                write_copy_value(&mut data, &sql::stored_value(&dataset, row, column));
            }
            data.push(b'\n');
        }
        self.copy(&dataset.table, &names, data).await?;

        let list_columns: Vec<String> = sql::LIST_TABLE_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (index, column) in dataset.list_columns() {
            let mut data = Vec::new();
            for row in rows {
                for (key, value, value_key) in sql::list_elements(row, dataset.key.column, index) {
                    write_copy_value(&mut data, key);
                    data.push(b'\t');
                    write_copy_text(&mut data, value);
                    data.push(b'\t');
                    write_copy_text(&mut data, &value_key);
                    data.push(b'\n');
                }
            }
            self.copy(&dataset.list_table(column), &list_columns, data)
                .await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let key = Dialect::Postgres.quote(&dataset.key_column().name);
        let mut statements = vec![format!(
            "ALTER TABLE {} ADD PRIMARY KEY ({key})",
            self.staging.table(Dialect::Postgres, &dataset.table)
        )];
        for index in sql::indexes(&dataset) {
            statements.push(sql::create_index(Dialect::Postgres, &index, &self.staging));
        }
        let target = Placement {
            schema: Some(self.target_schema.clone()),
            suffix: "",
        };
        for table in sql::tables(&dataset) {
            statements.push(format!(
                "ANALYZE {}",
                self.staging.table(Dialect::Postgres, &table)
            ));
        }
        // The swap: readers of the old tables wait only from here to the commit.
        for table in sql::tables(&dataset) {
            statements.push(format!(
                "DROP TABLE IF EXISTS {}",
                target.table(Dialect::Postgres, &table)
            ));
            statements.push(format!(
                "ALTER TABLE {} SET SCHEMA {}",
                self.staging.table(Dialect::Postgres, &table),
                Dialect::Postgres.quote(&self.target_schema)
            ));
        }
        for statement in statements {
            let started = std::time::Instant::now();
            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&mut *self.tx)
                .await?;
            tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import swap step");
        }
        self.tx.commit().await?;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// A value in `COPY ... FROM STDIN` text format (`\N` is null).
fn write_copy_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Text(s) => write_copy_text(out, s),
        Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Float(f) => out.extend_from_slice(f.to_string().as_bytes()),
        Value::Boolean(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Date(d) => out.extend_from_slice(d.format("%Y-%m-%d").to_string().as_bytes()),
        Value::Timestamp(t) => {
            out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes())
        }
        Value::List(items) => write_copy_text(out, &items.join(",")),
    }
}

fn write_copy_text(out: &mut Vec<u8>, s: &str) {
    for &byte in s.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_the_format_characters() {
        let mut out = Vec::new();
        write_copy_value(&mut out, &Value::Text("a\tb\\c\nd".into()));
        assert_eq!(out, b"a\\tb\\\\c\\nd");
        out.clear();
        write_copy_value(&mut out, &Value::Null);
        assert_eq!(out, b"\\N");
    }
}
