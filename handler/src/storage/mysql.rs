//! MySQL and MariaDB: bulk import with multi-row `INSERT`s into `<table>__import` (keyed, no
//! secondary indexes), one `ALTER TABLE` that builds every index in one pass, then one atomic
//! `RENAME TABLE` that swaps the staged tables in.

use std::str::FromStr as _;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlRow};
use sqlx::{Arguments as _, Row as _};

use super::insert_import::InsertImport;
use super::sql::{Decode, Dialect};
use super::sqlx_driver::{Engine, ImportConnection, Options, SqlxDriver};
use super::{ImportSink, Result, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// MySQL's "duplicate key name": the index a `CREATE INDEX` asks for exists already.
const ER_DUP_KEYNAME: u16 = 1061;

pub type MySqlDriver = SqlxDriver<MySql>;

#[async_trait]
impl Engine for MySql {
    const BACKEND: &'static str = "mysql";
    const DIALECT: Dialect = Dialect::MySql;
    const RELEASE_IMPORT_LOCK: Option<&'static str> = Some("SELECT RELEASE_ALL_LOCKS()");

    /// `mysql://` or `mariadb://` (the same protocol).
    fn connect_options(url: &str) -> anyhow::Result<Options<Self>> {
        let url = match url.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => url.to_owned(),
        };
        Ok(MySqlConnectOptions::from_str(&url)
            .context("DATABASE_URL is not a valid MySQL URL (e.g. mysql://user@host:3306/db)")?
            // Sessions in UTC, so DATETIME columns hold UTC; utf8mb4 for every character.
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4"))
    }

    fn bind(arguments: &mut MySqlArguments, value: Value) {
        let result = match value {
            Value::Null => arguments.add(Option::<String>::None),
            Value::Text(s) => arguments.add(s),
            Value::Integer(i) => arguments.add(i),
            Value::Float(f) => arguments.add(f),
            Value::Boolean(b) => arguments.add(b),
            Value::Date(d) => arguments.add(d),
            Value::Timestamp(t) => arguments.add(t.naive_utc()),
            Value::List(items) => arguments.add(items.join(",")),
        };
        result.expect("encoding a plain MySQL value cannot fail");
    }

    fn decode(row: &MySqlRow, i: usize, decode: &Decode) -> Result<Value> {
        // Text in `utf8mb4_bin` is flagged binary by the server, which sqlx's type check reads as
        // VARBINARY: the bytes are UTF-8 all the same, so they are checked here instead.
        let text = |row: &MySqlRow| -> Result<Option<String>> {
            match row.try_get_unchecked::<Option<Vec<u8>>, _>(i)? {
                None => Ok(None),
                Some(bytes) => {
                    String::from_utf8(bytes)
                        .map(Some)
                        .map_err(|e| StorageError::Decode {
                            column: i.to_string(),
                            reason: e.to_string(),
                        })
                }
            }
        };
        Ok(match decode {
            Decode::List(delimiter) => {
                text(row)?.map_or(Value::Null, |s| Value::parse_list(&s, delimiter))
            }
            Decode::Scalar(ty) => match ty {
                ColumnType::Text => text(row)?.map_or(Value::Null, Value::Text),
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
                    .try_get::<Option<chrono::NaiveDateTime>, _>(i)?
                    .map_or(Value::Null, |t| {
                        Value::Timestamp(DateTime::<Utc>::from_naive_utc_and_offset(t, Utc))
                    }),
            },
        })
    }

    /// The index exists already (MySQL has no `CREATE INDEX IF NOT EXISTS`).
    fn already_done(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(e)
            if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| e.number() == ER_DUP_KEYNAME))
    }

    async fn begin_import(driver: &MySqlDriver, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        // A connection of its own holds a named lock for the whole import: two imports of one
        // dataset would share the staging tables, and the lock dies with the connection if this
        // process does. (Lock names are server-wide, hence the database in the hashed name.)
        let mut conn = driver.dedicated().await?;
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(SHA1(CONCAT(DATABASE(), '.', ?)), 0)")
                .bind(&dataset.table)
                .fetch_one(&mut conn)
                .await?;
        if locked != Some(1) {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        InsertImport::<MySql>::begin(ImportConnection::Dedicated(conn), dataset).await
    }
}
