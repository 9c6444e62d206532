//! PostgreSQL: bulk import with `COPY` streams into tables of a staging schema, indexes built
//! in parallel, then one short transaction that moves the new tables over the old ones.

use std::str::FromStr as _;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgCopyIn, PgPool, PgPoolCopyExt as _, PgRow,
};
use sqlx::{Arguments as _, AssertSqlSafe, Postgres, Row as _};

use super::sql::{self, Decode, Dialect, staging};
use super::sqlx_driver::{
    Engine, Options, SqlxDriver, close_releasing_lock, run, run_in_transaction,
};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// Index builds run this many at a time (each one may also use PostgreSQL's parallel workers).
const PARALLEL_INDEX_BUILDS: usize = 2;

pub type PgDriver = SqlxDriver<Postgres>;

#[async_trait]
impl Engine for Postgres {
    const BACKEND: &'static str = "postgres";
    const DIALECT: Dialect = Dialect::Postgres;
    const RELEASE_IMPORT_LOCK: Option<&'static str> = Some("SELECT pg_advisory_unlock_all()");

    fn connect_options(url: &str) -> anyhow::Result<Options<Self>> {
        PgConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid PostgreSQL URL (e.g. postgres://user@host/db)")
    }

    fn bind(arguments: &mut PgArguments, value: Value) {
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

    fn decode(row: &PgRow, i: usize, decode: &Decode) -> Result<Value> {
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

    async fn begin_import(driver: &PgDriver, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        // A connection of its own, outside the pool, holds the import lock: two imports of one
        // dataset would race for the same staging tables, and if this process dies the
        // connection closes and the lock goes with it.
        let mut lock = driver.dedicated().await?;
        let lock_name = format!("smartcache-import:{}", dataset.table);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(lock_name)
            .fetch_one(&mut lock)
            .await?;
        if !locked {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        let live_schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut lock)
            .await?;
        for statement in staging::create(dataset, Dialect::Postgres) {
            run::<Postgres>(&mut lock, &statement).await?;
        }
        // One COPY stream per table, open for the whole import: PostgreSQL ingests a batch while
        // the next one is being converted.
        let staging = staging::placement(Dialect::Postgres);
        let stored = sql::stored_columns(dataset);
        let names: Vec<String> = stored
            .iter()
            .map(|&c| sql::stored_name(dataset, c))
            .collect();
        let main = open_copy(
            driver.pool(),
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
            lists.push((index, open_copy(driver.pool(), &table, &list_names).await?));
        }
        Ok(Box::new(PgImport {
            pool: driver.pool().clone(),
            lock,
            dataset: Arc::new(dataset.clone()),
            live_schema,
            copies: Some(Copies { main, lists }),
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
    /// Where the staged tables move to: the schema the import's connection works in.
    live_schema: String,
    /// The open COPY streams, until loading ends.
    copies: Option<Copies>,
}

struct Copies {
    main: CopyStream,
    lists: Vec<(usize, CopyStream)>,
}

impl Copies {
    fn into_streams(self) -> Vec<CopyStream> {
        let mut streams = vec![self.main];
        streams.extend(self.lists.into_iter().map(|(_, copy)| copy));
        streams
    }

    /// Ends every stream, keeping its rows; after a failure the rest are aborted.
    async fn finish(self) -> Result<()> {
        let mut failed = None;
        for copy in self.into_streams() {
            if failed.is_some() {
                let _ = copy.abort("import abandoned").await;
                continue;
            }
            if let Err(error) = copy.finish().await {
                failed = Some(error);
            }
        }
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

impl PgImport {
    /// Ends the COPY streams without keeping their rows, and drops the staging tables.
    async fn discard(
        mut lock: PgConnection,
        copies: Vec<CopyStream>,
        dataset: &Dataset,
    ) -> Result<()> {
        for copy in copies {
            // The stream may have failed already; either way it is over.
            let _ = copy.abort("import abandoned").await;
        }
        for statement in staging::discard(dataset, Dialect::Postgres) {
            run::<Postgres>(&mut lock, &statement).await?;
        }
        close_releasing_lock::<Postgres>(lock).await?;
        Ok(())
    }
}

#[async_trait]
impl ImportSink for PgImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let Some(copies) = self.copies.as_mut() else {
            return Err(StorageError::NotCommitted(
                "rows written after the import's loading ended".to_owned(),
            ));
        };
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
        copies.main.send(data).await?;
        for (index, copy) in &mut copies.lists {
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

    async fn finish_loading(&mut self) -> Result<()> {
        match self.copies.take() {
            Some(copies) => copies.finish().await,
            None => Ok(()),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Err(error) = self.finish_loading().await {
            let PgImport { lock, dataset, .. } = *self;
            PgImport::discard(lock, Vec::new(), &dataset).await?;
            return Err(error);
        }
        let PgImport {
            pool,
            mut lock,
            dataset,
            live_schema,
            ..
        } = *self;
        // Key and indexes on the staged tables, several at a time; readers are not affected.
        let plan = staging::swap(&dataset, Dialect::Postgres, Some(&live_schema));
        let built = futures_util::stream::iter(plan.build)
            .map(|statement| {
                let pool = pool.clone();
                async move {
                    let started = std::time::Instant::now();
                    let result = sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                        .execute(&pool)
                        .await;
                    tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import index step");
                    result
                }
            })
            .buffer_unordered(PARALLEL_INDEX_BUILDS)
            .try_collect::<Vec<_>>()
            .await;
        if let Err(error) = built {
            PgImport::discard(lock, Vec::new(), &dataset).await?;
            return Err(error.into());
        }

        // The swap: readers of the old tables wait only for this short transaction.
        run_in_transaction::<Postgres>(&mut lock, &plan.swap).await?;
        close_releasing_lock::<Postgres>(lock).await?;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let PgImport {
            lock,
            dataset,
            copies,
            ..
        } = *self;
        let streams = copies.map(Copies::into_streams).unwrap_or_default();
        PgImport::discard(lock, streams, &dataset).await
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
