//! PostgreSQL: bulk import with `COPY` streams into tables of a staging schema, indexes built
//! in parallel, then one short transaction that moves the new tables over the old ones.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::ConnectOptions as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgCopyIn, PgPool, PgPoolCopyExt as _,
    PgPoolOptions, PgRow,
};
use sqlx::{Arguments as _, AssertSqlSafe, Connection as _, Postgres, Row as _};
use tokio::sync::mpsc;

use super::sql::{self, Decode, Dialect, Placement, Statement};
use super::store::{Driver, Transaction, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// Imports are built here, out of readers' sight, until the swap moves them.
const STAGING_SCHEMA: &str = "smartcache_import";
/// Index builds run this many at a time (each one may also use PostgreSQL's parallel workers).
const PARALLEL_INDEX_BUILDS: usize = 2;

/// Connections in the pool.
const POOL_SIZE: usize = 10;

pub struct PgDriver {
    pool: PgPool,
    options: PgConnectOptions,
}

impl PgDriver {
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid PostgreSQL URL (e.g. postgres://user@host/db)")?
            // Exports of whole datasets are long on purpose; warn only about the truly slow.
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE as u32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        Ok(PgDriver { pool, options })
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
    const POOL_SIZE: usize = POOL_SIZE;
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

    async fn begin_write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(PgWrite(self.pool.begin().await?)))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        // A connection of its own, outside the pool, holds the import lock: two imports of one
        // dataset would race for the same staging tables, and if this process dies the
        // connection closes and the lock goes with it.
        let mut lock = PgConnection::connect_with(&self.options).await?;
        let lock_name = format!("smartcache-import:{}", dataset.table);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(lock_name)
            .fetch_one(&mut lock)
            .await?;
        if !locked {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        let target_schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut lock)
            .await?;
        let staging = Placement {
            schema: Some(STAGING_SCHEMA.to_owned()),
            suffix: "",
        };
        // Tables left by an import that died are stale: start afresh. No primary key while
        // loading: keys are unique already (the importer checks) and one index build at the end
        // is much faster than maintaining it row by row.
        let mut setup = vec![format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            Dialect::Postgres.quote(STAGING_SCHEMA)
        )];
        setup.extend(sql::drop_tables(dataset, Dialect::Postgres, &staging));
        setup.extend(sql::create_tables(
            dataset,
            Dialect::Postgres,
            &staging,
            false,
        ));
        for statement in setup {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut lock)
                .await?;
        }
        // One COPY stream per table, open for the whole import: PostgreSQL ingests a batch while
        // the next one is being converted.
        let stored = sql::stored_columns(dataset);
        let names: Vec<String> = stored
            .iter()
            .map(|&c| sql::stored_name(dataset, c))
            .collect();
        let main = open_copy(
            &self.pool,
            &staging.table(Dialect::Postgres, &dataset.table),
            &names,
        )
        .await?;
        let list_names: Vec<String> = sql::LIST_TABLE_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut lists = Vec::new();
        for (index, column) in dataset.list_columns() {
            let table = staging.table(Dialect::Postgres, &dataset.list_table(column));
            lists.push((index, open_copy(&self.pool, &table, &list_names).await?));
        }
        Ok(Box::new(PgImport {
            pool: self.pool.clone(),
            lock,
            dataset: Arc::new(dataset.clone()),
            staging,
            target_schema,
            main,
            lists,
        }))
    }
}

type CopyStream = PgCopyIn<PoolConnection<Postgres>>;

async fn open_copy(pool: &PgPool, table: &str, columns: &[String]) -> Result<CopyStream> {
    let quoted: Vec<String> = columns.iter().map(|c| Dialect::Postgres.quote(c)).collect();
    Ok(pool
        .copy_in_raw(&format!("COPY {table} ({}) FROM STDIN", quoted.join(", ")))
        .await?)
}

struct PgImport {
    pool: PgPool,
    lock: PgConnection,
    dataset: Arc<Dataset>,
    staging: Placement,
    target_schema: String,
    main: CopyStream,
    lists: Vec<(usize, CopyStream)>,
}

impl PgImport {
    /// Ends the COPY streams without keeping their rows, and drops the staging tables.
    async fn discard(
        mut lock: PgConnection,
        copies: Vec<CopyStream>,
        dataset: &Dataset,
        staging: &Placement,
    ) -> Result<()> {
        for copy in copies {
            // The stream may have failed already; either way it is over.
            let _ = copy.abort("import abandoned").await;
        }
        for statement in sql::drop_tables(dataset, Dialect::Postgres, staging) {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut lock)
                .await?;
        }
        lock.close().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportSink for PgImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
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
        self.main.send(data).await?;
        for (index, copy) in &mut self.lists {
            let mut data = Vec::new();
            for row in rows {
                for (key, value, value_key) in sql::list_elements(row, dataset.key.column, *index) {
                    write_copy_value(&mut data, key);
                    data.push(b'\t');
                    write_copy_text(&mut data, value);
                    data.push(b'\t');
                    write_copy_text(&mut data, &value_key);
                    data.push(b'\n');
                }
            }
            if !data.is_empty() {
                copy.send(data).await?;
            }
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let PgImport {
            pool,
            mut lock,
            dataset,
            staging,
            target_schema,
            main,
            lists,
        } = *self;
        let mut copies = vec![main];
        copies.extend(lists.into_iter().map(|(_, copy)| copy));
        let mut finishing = Vec::new();
        let mut failed = None;
        for copy in copies {
            if failed.is_some() {
                finishing.push(copy);
                continue;
            }
            if let Err(error) = copy.finish().await {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            PgImport::discard(lock, finishing, &dataset, &staging).await?;
            return Err(error.into());
        }

        // Key and indexes on the staged tables, several at a time; readers are not affected.
        let key_index = format!("{}_pkey", dataset.table);
        let mut builds = vec![format!(
            "CREATE UNIQUE INDEX {} ON {} ({})",
            Dialect::Postgres.quote(&key_index),
            staging.table(Dialect::Postgres, &dataset.table),
            Dialect::Postgres.quote(&dataset.key_column().name)
        )];
        builds.extend(
            sql::indexes(&dataset, Dialect::Postgres)
                .iter()
                .map(|i| sql::create_index(Dialect::Postgres, i, &staging)),
        );
        builds.extend(
            sql::tables(&dataset)
                .iter()
                .map(|t| format!("ANALYZE {}", staging.table(Dialect::Postgres, t))),
        );
        let built = futures_util::stream::iter(builds)
            .map(|statement| {
                let pool = pool.clone();
                async move {
                    let started = std::time::Instant::now();
                    // Sorting in memory makes index builds several times faster; SET LOCAL keeps
                    // the setting to this statement's transaction, not the pooled connection.
                    let sql = format!("BEGIN; SET LOCAL maintenance_work_mem = '256MB'; {statement}; COMMIT");
                    let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await;
                    tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import index step");
                    result
                }
            })
            .buffer_unordered(PARALLEL_INDEX_BUILDS)
            .try_collect::<Vec<_>>()
            .await;
        if let Err(error) = built {
            PgImport::discard(lock, Vec::new(), &dataset, &staging).await?;
            return Err(error.into());
        }

        // The swap: readers of the old tables wait only for this short transaction.
        let target = Placement {
            schema: Some(target_schema.clone()),
            suffix: "",
        };
        let mut swap = vec![format!(
            "ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}",
            staging.table(Dialect::Postgres, &dataset.table),
            Dialect::Postgres.quote(&key_index),
            Dialect::Postgres.quote(&key_index)
        )];
        swap.extend(sql::drop_tables(&dataset, Dialect::Postgres, &target));
        for table in sql::tables(&dataset) {
            swap.push(format!(
                "ALTER TABLE {} SET SCHEMA {}",
                staging.table(Dialect::Postgres, &table),
                Dialect::Postgres.quote(&target_schema)
            ));
        }
        let mut tx = lock.begin().await?;
        for statement in swap {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        lock.close().await?;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let PgImport {
            lock,
            dataset,
            staging,
            main,
            lists,
            ..
        } = *self;
        let mut copies = vec![main];
        copies.extend(lists.into_iter().map(|(_, copy)| copy));
        PgImport::discard(lock, copies, &dataset, &staging).await
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

/// A write transaction; sqlx rolls it back if it is dropped uncommitted.
struct PgWrite(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl Transaction for PgWrite {
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
