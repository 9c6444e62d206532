//! SQLite, the embedded default: bundled with the binary (no system library), WAL mode so readers
//! never wait for an import.

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments as _, Row as _, Sqlite};

use super::insert_import::InsertImport;
use super::sql::{Decode, Dialect};
use super::sqlite_reads::{SqliteReads, direct_file};
use super::sqlite_writes::SqliteWrites;
use super::sqlx_driver::{Engine, ImportConnection, Options, SqlxDriver};
use super::{ImportSink, Result, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

pub type SqliteDriver = SqlxDriver<Sqlite>;

#[async_trait]
impl Engine for Sqlite {
    const BACKEND: &'static str = "sqlite";
    const DIALECT: Dialect = Dialect::Sqlite;
    /// A few, since SQLite writes one at a time.
    const POOL_SIZE: usize = 4;
    const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Holds the write lock from the transaction's first read.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    /// A file has no server to close a connection: a ping is only a hand-off to the
    /// connection's worker thread.
    const PING_BEFORE_USE: bool = false;

    fn connect_options(url: &str) -> anyhow::Result<Options<Self>> {
        Ok(SqliteConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid SQLite URL (e.g. sqlite://smartcache.db)")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // Rows pass from SQLite's worker thread over a bounded channel; room for a whole
            // page (1,000 rows and the one after) lets the worker finish without waiting on
            // the reader, who is then woken a few times per page, not once per 50 rows.
            .row_buffer_size(1024))
    }

    fn direct_reads(url: &str, options: &Options<Self>) -> Option<SqliteReads> {
        SqliteReads::for_url(url, options.get_filename())
    }

    fn direct_writes(url: &str, options: &Options<Self>) -> Option<SqliteWrites> {
        let path = options.get_filename();
        let read_only = direct_file(url, path)?;
        (!read_only).then(|| SqliteWrites::new(path.to_owned()))
    }

    /// Dates and timestamps are stored as fixed-width text so that text order is time order.
    fn bind(arguments: &mut SqliteArguments, value: Value) {
        let result = match value {
            Value::Null => arguments.add(Option::<i64>::None),
            Value::Text(s) => arguments.add(s),
            Value::Integer(i) => arguments.add(i),
            Value::Float(f) => arguments.add(f),
            Value::Boolean(b) => arguments.add(b),
            Value::Date(d) => arguments.add(date_text(&d)),
            Value::Timestamp(t) => arguments.add(timestamp_text(&t)),
            Value::List(items) => arguments.add(items.join(",")),
        };
        result.expect("encoding a plain SQLite value cannot fail");
    }

    fn decode(row: &SqliteRow, index: usize, decode: &Decode) -> Result<Value> {
        // SQLite is dynamically typed: ask for the type we stored without sqlx's strict check.
        let text = |row: &SqliteRow| row.try_get_unchecked::<Option<String>, _>(index);
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
                    Some(s) => date_from_text(&s, index)?,
                },
                ColumnType::Timestamp => match text(row)? {
                    None => Value::Null,
                    Some(s) => timestamp_from_text(&s, index)?,
                },
            },
        })
    }

    /// On a pooled connection: SQLite has no lock to hold (its swap is one write transaction).
    async fn begin_import(driver: &SqliteDriver, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        let conn = driver.pool().acquire().await?;
        InsertImport::<Sqlite>::begin(ImportConnection::Pooled(conn), dataset).await
    }
}

/// A date as SQLite stores it: fixed-width text, so that text order is time order.
pub(super) fn date_text(date: &NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// A timestamp as SQLite stores it: RFC 3339 in UTC with microseconds (fixed width).
pub(super) fn timestamp_text(timestamp: &DateTime<Utc>) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn date_from_text(text: &str, column: usize) -> Result<Value> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(Value::Date)
        .map_err(|e| undecodable(column, e.to_string()))
}

pub(super) fn timestamp_from_text(text: &str, column: usize) -> Result<Value> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| Value::Timestamp(t.with_timezone(&Utc)))
        .map_err(|e| undecodable(column, e.to_string()))
}

pub(super) fn undecodable(column: usize, reason: String) -> StorageError {
    StorageError::Decode {
        column: column.to_string(),
        reason,
    }
}
