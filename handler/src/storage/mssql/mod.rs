//! SQL Server and Azure SQL through `tiberius` (TDS over the project's rustls): a bounded `bb8`
//! pool opened lazily ([`connect`]: SQL logins or Entra ID tokens, a current token for every new
//! connection), and imports by TDS bulk load into `<table>__import`, then one transaction that
//! swaps the staged tables in with `sp_rename` ([`import`]).
//!
//! No SQL Server runs here: the statements are pinned by snapshot tests in `sql`, the value and
//! type mapping by the tests in `import`, and the storage suite (`tests/import.rs`, `api.rs`,
//! `writes.rs`, `accounts.rs`) runs on a real server when `MSSQL_URL` is set.

mod connect;
mod import;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use tiberius::{ColumnData, FromSql, Query};
use tokio::sync::mpsc;

use super::mssql_config::MssqlConfig;
use super::sql::{Decode, Dialect, Statement};
use super::store::{Driver, Reach, Transaction, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};
use crate::identity::Tokens;

pub use connect::{ConnectError, Connection, Manager};
pub use import::bulk_value;

use connect::connect_error;

/// Connections are replaced after this long, so none outlives many token lifetimes.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Unique key violations (`2627` constraint, `2601` index).
const UNIQUE_VIOLATIONS: [u32; 2] = [2627, 2601];
/// Lock timeout, and Azure SQL's transient errors: try again shortly.
const TRANSIENT: [u32; 7] = [1222, 40197, 40501, 40613, 49918, 49919, 49920];
/// Chosen as a deadlock victim.
const DEADLOCK: u32 = 1205;
/// String data would be truncated (2628 names the column, 8152 is the older message).
const TRUNCATION: [u32; 2] = [2628, 8152];

/// Connections in the pool.
const POOL_SIZE: usize = 10;

/// Opens a write transaction (and an import's swap). XACT_ABORT: any error rolls the whole
/// transaction back, never half of it.
const BEGIN: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION";

impl From<tiberius::error::Error> for StorageError {
    fn from(error: tiberius::error::Error) -> Self {
        use tiberius::error::Error as E;
        match &error {
            E::Io { .. } | E::Tls(_) | E::Routing { .. } => StorageError::Unavailable(error.into()),
            E::Server(e) if UNIQUE_VIOLATIONS.contains(&e.code()) => StorageError::Conflict,
            E::Server(e) if e.code() == DEADLOCK => StorageError::Deadlock(error.into()),
            E::Server(e) if TRUNCATION.contains(&e.code()) => {
                StorageError::ValueTooLong(error.into())
            }
            E::Server(e) if TRANSIENT.contains(&e.code()) => {
                StorageError::Unavailable(error.into())
            }
            _ => StorageError::Database(error.into()),
        }
    }
}

impl From<bb8::RunError<ConnectError>> for StorageError {
    fn from(error: bb8::RunError<ConnectError>) -> Self {
        match error {
            bb8::RunError::User(ConnectError::Tds(e)) => e.into(),
            bb8::RunError::User(e) => StorageError::Unavailable(e.into()),
            bb8::RunError::TimedOut => {
                StorageError::Unavailable("the connection pool timed out".into())
            }
        }
    }
}

pub struct MssqlDriver {
    pool: bb8::Pool<Manager>,
    manager_config: MssqlConfig,
    tokens: Option<Arc<Tokens>>,
}

impl MssqlDriver {
    /// Checks the connection string now; connects on first use.
    pub fn open(database_url: &str) -> anyhow::Result<MssqlDriver> {
        let config = super::mssql_config::parse(database_url)?;
        Ok(MssqlDriver::with_config(config, None))
    }

    /// `tokens` replaces the instance's Entra ID credential (tests).
    pub fn with_config(config: MssqlConfig, tokens: Option<Arc<Tokens>>) -> MssqlDriver {
        // No test on checkout (a round trip per query): a writer dropped mid-transaction rolls
        // back before its connection returns to the pool (see `MssqlWrite`).
        let pool = bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .connection_timeout(Duration::from_secs(5))
            .max_lifetime(Some(MAX_CONNECTION_LIFETIME))
            .test_on_check_out(false)
            .build_unchecked(Manager::new(config.clone(), tokens.clone()));
        MssqlDriver {
            pool,
            manager_config: config,
            tokens,
        }
    }

    /// A connection outside the pool (an import's, which holds its lock for the whole import).
    async fn dedicated(&self) -> Result<Connection> {
        Manager::new(self.manager_config.clone(), self.tokens.clone())
            .open()
            .await
            .map_err(connect_error)
    }
}

/// A statement's parameters bound in order (`@P1`, `@P2`, ...).
fn query(statement: Statement) -> Query<'static> {
    let mut query = Query::new(statement.sql);
    for value in statement.params {
        match value {
            // Typed NULLs are written as `CAST(NULL AS …)` by the SQL builder; a bare one is text.
            Value::Null => query.bind(Option::<String>::None),
            Value::Text(s) => query.bind(s),
            Value::Integer(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Boolean(b) => query.bind(b),
            Value::Date(d) => query.bind(d),
            Value::Timestamp(t) => query.bind(t.fixed_offset()),
            Value::List(items) => query.bind(items.join(",")),
        }
    }
    query
}

fn decode_row(row: &tiberius::Row, decode: &[Decode]) -> Result<Row> {
    row.cells()
        .zip(decode)
        .map(|((column, data), decode)| {
            decode_value(data, decode).map_err(|reason| StorageError::Decode {
                column: column.name().to_owned(),
                reason,
            })
        })
        .collect()
}

/// One cell as a [`Value`]: integers of any width (`COUNT(*)` is an `int`), floats of either
/// width, text, and dates and times through tiberius's chrono conversions.
pub fn decode_value(
    data: &ColumnData<'static>,
    decode: &Decode,
) -> std::result::Result<Value, String> {
    let wrong = || format!("unexpected {data:?} for {decode:?}");
    Ok(match (decode, data) {
        (Decode::List(delimiter), ColumnData::String(s)) => s
            .as_deref()
            .map_or(Value::Null, |s| Value::parse_list(s, delimiter)),
        (Decode::List(_), _) => return Err(wrong()),
        (Decode::Scalar(ty), data) => match (ty, data) {
            (ColumnType::Text, ColumnData::String(s)) => s
                .as_deref()
                .map_or(Value::Null, |s| Value::Text(s.to_owned())),
            (ColumnType::Integer, ColumnData::I64(v)) => v.map_or(Value::Null, Value::Integer),
            (ColumnType::Integer, ColumnData::I32(v)) => {
                v.map_or(Value::Null, |v| Value::Integer(v.into()))
            }
            (ColumnType::Integer, ColumnData::I16(v)) => {
                v.map_or(Value::Null, |v| Value::Integer(v.into()))
            }
            (ColumnType::Integer, ColumnData::U8(v)) => {
                v.map_or(Value::Null, |v| Value::Integer(v.into()))
            }
            (ColumnType::Float, ColumnData::F64(v)) => v.map_or(Value::Null, Value::Float),
            (ColumnType::Float, ColumnData::F32(v)) => {
                v.map_or(Value::Null, |v| Value::Float(v.into()))
            }
            (ColumnType::Boolean, ColumnData::Bit(v)) => v.map_or(Value::Null, Value::Boolean),
            (ColumnType::Date, data) => NaiveDate::from_sql(data)
                .map_err(|e| e.to_string())?
                .map_or(Value::Null, Value::Date),
            (ColumnType::Timestamp, data) => DateTime::<FixedOffset>::from_sql(data)
                .map_err(|e| e.to_string())?
                .map_or(Value::Null, |t| Value::Timestamp(t.with_timezone(&Utc))),
            _ => return Err(wrong()),
        },
    })
}

async fn run(conn: &mut Connection, sql: &str) -> Result<()> {
    conn.simple_query(sql).await?.into_results().await?;
    Ok(())
}

#[async_trait]
impl Driver for MssqlDriver {
    const NAME: &'static str = "mssql";
    const POOL_SIZE: usize = POOL_SIZE;
    const DIALECT: Dialect = Dialect::SqlServer;

    async fn fetch(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let mut conn = self.pool.get().await?;
        let rows = query(statement)
            .query(&mut conn)
            .await?
            .into_first_result()
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    fn stream(
        &self,
        statement: Statement,
        decode: Vec<Decode>,
        sender: mpsc::Sender<Result<Vec<Row>>>,
    ) {
        // A connection of its own: a client that hangs up leaves unread rows behind, which the
        // next user of a pooled connection would have to drain. This one is simply closed.
        let manager = Manager::new(self.manager_config.clone(), self.tokens.clone());
        tokio::spawn(async move {
            let mut conn = match manager.open().await {
                Ok(conn) => conn,
                Err(error) => {
                    let _ = sender.send(Err(connect_error(error))).await;
                    return;
                }
            };
            let rows = match query(statement).query(&mut conn).await {
                Ok(results) => results.into_row_stream(),
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            };
            forward_rows(rows, |row| decode_row(row, &decode), sender).await;
        });
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        run(&mut conn, sql).await
    }

    async fn begin_write(&self, _reach: Reach) -> Result<Box<dyn Transaction>> {
        let mut conn = self.pool.get_owned().await?;
        run(&mut conn, BEGIN).await?;
        Ok(Box::new(MssqlWrite { conn: Some(conn) }))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        import::begin(self, dataset).await
    }
}

/// A write transaction on a pooled connection. Dropped uncommitted, it rolls back: at once in a
/// task of its own, and in any case when the pool checks the connection out again.
struct MssqlWrite {
    conn: Option<bb8::PooledConnection<'static, Manager>>,
}

impl MssqlWrite {
    fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("the transaction is open")
    }
}

#[async_trait]
impl Transaction for MssqlWrite {
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = query(statement)
            .query(self.conn())
            .await?
            .into_first_result()
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        query(statement).execute(self.conn()).await?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        run(self.conn(), "COMMIT TRANSACTION").await?;
        self.conn = None;
        Ok(())
    }
}

impl Drop for MssqlWrite {
    fn drop(&mut self) {
        // The connection goes back to the pool only once the rollback is done.
        if let (Some(mut conn), Ok(runtime)) =
            (self.conn.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = run(&mut conn, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
            });
        }
    }
}
