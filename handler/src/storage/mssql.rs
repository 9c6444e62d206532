//! SQL Server and Azure SQL through `tiberius` (TDS over the project's rustls): a bounded `bb8`
//! pool opened lazily, SQL logins or Entra ID tokens (a current token for every new connection),
//! bulk import with TDS bulk load into `<table>__import`, then one transaction that swaps the
//! staged tables in with `sp_rename`.
//!
//! No SQL Server runs here: the statements are pinned by snapshot tests in `sql`, the value and
//! type mapping by the tests below, and the storage suite (`tests/import.rs`, `api.rs`,
//! `writes.rs`, `accounts.rs`) runs on a real server when `MSSQL_URL` is set.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel, FromSql, IntoSql, Query};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt as _};

use super::mssql_config::{Authentication, Encrypt, MssqlConfig};
use super::sql::{self, Decode, Dialect, Placement, Statement, StoredColumn, staging};
use super::store::{Driver, Transaction, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};
use crate::identity::{self, Tokens};

pub type Connection = Client<Compat<TcpStream>>;

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

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach SQL Server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tds(#[from] tiberius::error::Error),
    #[error("cannot get an Entra ID token for Azure SQL: {0}")]
    Token(String),
}

/// Connections in the pool.
const POOL_SIZE: usize = 10;

/// Opens a write transaction (and an import's swap). XACT_ABORT: any error rolls the whole
/// transaction back, never half of it.
const BEGIN: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION";

/// Opens connections for the pool: configuration, TLS, authentication, Azure SQL's redirect.
pub struct Manager {
    config: MssqlConfig,
    tokens: Option<Arc<Tokens>>,
}

impl Manager {
    pub fn new(config: MssqlConfig, tokens: Option<Arc<Tokens>>) -> Manager {
        Manager { config, tokens }
    }

    /// The tiberius configuration for a new connection, with a current token when the
    /// connection string asks for Entra ID.
    pub async fn tiberius_config(&self) -> std::result::Result<Config, ConnectError> {
        let c = &self.config;
        let mut config = Config::new();
        config.host(&c.host);
        config.port(c.port);
        if let Some(database) = &c.database {
            config.database(database);
        }
        config.application_name(c.application_name.as_deref().unwrap_or("smartcache"));
        config.encryption(match c.encrypt {
            Encrypt::On => EncryptionLevel::Required,
            Encrypt::Off => EncryptionLevel::Off,
            Encrypt::Strict => EncryptionLevel::Strict,
        });
        if c.trust_server_certificate {
            config.trust_cert();
        } else {
            // The same roots on every host, including a minimal container image.
            config.trust_webpki_roots();
        }
        config.authentication(self.auth_method().await?);
        Ok(config)
    }

    /// The SQL login, or an Entra ID token with life left in it (cached per instance).
    pub async fn auth_method(&self) -> std::result::Result<AuthMethod, ConnectError> {
        Ok(match &self.config.authentication {
            Authentication::SqlLogin { user, password } => {
                AuthMethod::sql_server(user, password.expose())
            }
            Authentication::EntraId => {
                let tokens = self.tokens.clone().unwrap_or_else(identity::azure);
                let token = tokens
                    .get(identity::SQL_SCOPE)
                    .await
                    .map_err(|e| ConnectError::Token(format!("{e:#}")))?;
                AuthMethod::aad_token(token.secret)
            }
        })
    }

    /// A new connection (the pool's, or one of its own for an import or a test's setup).
    pub async fn open(&self) -> std::result::Result<Connection, ConnectError> {
        let config = self.tiberius_config().await?;
        let tcp = TcpStream::connect(config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        match Client::connect(config, tcp.compat_write()).await {
            // Azure SQL inside Azure redirects to the node that holds the database.
            Err(tiberius::error::Error::Routing { host, port }) => {
                let mut config = self.tiberius_config().await?;
                config.host(&host);
                config.port(port);
                let tcp = TcpStream::connect(config.get_addr()).await?;
                tcp.set_nodelay(true)?;
                Ok(Client::connect(config, tcp.compat_write()).await?)
            }
            other => Ok(other?),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = ConnectError;

    async fn connect(&self) -> std::result::Result<Connection, ConnectError> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut Connection) -> std::result::Result<(), ConnectError> {
        conn.simple_query("SELECT 1").await?.into_results().await?;
        Ok(())
    }

    fn has_broken(&self, _: &mut Connection) -> bool {
        false
    }
}

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

fn connect_error(error: ConnectError) -> StorageError {
    match error {
        ConnectError::Tds(e) => e.into(),
        other => StorageError::Unavailable(other.into()),
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

/// A value for TDS bulk load, which wants the column's exact type even for a NULL.
pub fn bulk_value(value: Value, ty: ColumnType) -> ColumnData<'static> {
    match (value, ty) {
        (Value::Null, ColumnType::Text) => ColumnData::String(None),
        (Value::Null, ColumnType::Integer) => ColumnData::I64(None),
        (Value::Null, ColumnType::Float) => ColumnData::F64(None),
        (Value::Null, ColumnType::Boolean) => ColumnData::Bit(None),
        (Value::Null, ColumnType::Date) => Option::<NaiveDate>::None.into_sql(),
        (Value::Null, ColumnType::Timestamp) => Option::<DateTime<FixedOffset>>::None.into_sql(),
        (Value::Text(s), _) => ColumnData::String(Some(Cow::Owned(s))),
        (Value::Integer(i), _) => ColumnData::I64(Some(i)),
        (Value::Float(f), _) => ColumnData::F64(Some(f)),
        (Value::Boolean(b), _) => ColumnData::Bit(Some(b)),
        (Value::Date(d), _) => d.into_sql(),
        (Value::Timestamp(t), _) => t.fixed_offset().into_sql(),
        (Value::List(items), _) => ColumnData::String(Some(Cow::Owned(items.join(",")))),
    }
}

/// The type a stored column is bulk-loaded as.
fn stored_type(dataset: &Dataset, column: StoredColumn) -> ColumnType {
    match column {
        StoredColumn::Declared(i) if dataset.columns[i].is_list() => ColumnType::Text,
        StoredColumn::Declared(i) => dataset.columns[i].ty,
        StoredColumn::NormalisedKey(_) => ColumnType::Text,
    }
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

    async fn begin_write(&self) -> Result<Box<dyn Transaction>> {
        let mut conn = self.pool.get_owned().await?;
        run(&mut conn, BEGIN).await?;
        Ok(Box::new(MssqlWrite { conn: Some(conn) }))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        // The lock belongs to this connection's session: two imports of one dataset would share
        // the staging tables, and the lock ends with the session if this process dies.
        let mut conn = self.dedicated().await?;
        if let Some(session) = staging::session(Dialect::SqlServer) {
            run(&mut conn, session).await?;
        }
        let lock = Statement {
            sql: "DECLARE @granted int; EXEC @granted = sp_getapplock @Resource = @P1, \
                  @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; \
                  SELECT @granted"
                .to_owned(),
            params: vec![Value::Text(format!("smartcache-import:{}", dataset.table))],
        };
        let granted = query(lock).query(&mut conn).await?.into_row().await?;
        let granted = granted
            .and_then(|row| row.try_get::<i32, _>(0).ok().flatten())
            .unwrap_or(-1);
        if granted < 0 {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        for statement in staging::create(dataset, Dialect::SqlServer) {
            run(&mut conn, &statement).await?;
        }
        Ok(Box::new(MssqlImport {
            conn,
            dataset: Arc::new(dataset.clone()),
            staging: staging::placement(Dialect::SqlServer),
        }))
    }
}

struct MssqlImport {
    conn: Connection,
    dataset: Arc<Dataset>,
    staging: Placement,
}

impl MssqlImport {
    /// One bulk load (`INSERT BULK`) of these rows into a staged table.
    async fn bulk_load(&mut self, table: &str, rows: Vec<Vec<ColumnData<'static>>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = self.staging.table(Dialect::SqlServer, table);
        let mut load = self.conn.bulk_insert(&table).await?;
        for row in rows {
            let mut token = tiberius::TokenRow::with_capacity(row.len());
            for value in row {
                token.push(value);
            }
            load.send(token).await?;
        }
        load.finalize().await?;
        Ok(())
    }

    async fn discard(mut self) -> Result<()> {
        for statement in staging::discard(&self.dataset, Dialect::SqlServer) {
            run(&mut self.conn, &statement).await?;
        }
        self.conn.close().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportSink for MssqlImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
        let main = rows
            .iter()
            .map(|row| {
                stored
                    .iter()
                    .map(|&c| {
                        bulk_value(
                            sql::stored_value(&dataset, row, c),
                            stored_type(&dataset, c),
                        )
                    })
                    .collect()
            })
            .collect();
        self.bulk_load(&dataset.table, main).await?;
        for (index, column) in dataset.list_columns() {
            let key_type = dataset.key_column().ty;
            let elements = rows
                .iter()
                .flat_map(|row| sql::list_elements(row, dataset.key.column, index))
                .map(|(key, value, value_key)| {
                    vec![
                        bulk_value(key.clone(), key_type),
                        ColumnData::String(Some(Cow::Owned(value.to_owned()))),
                        ColumnData::String(Some(Cow::Owned(value_key))),
                    ]
                })
                .collect();
            self.bulk_load(&dataset.list_table(column), elements)
                .await?;
        }
        Ok(())
    }

    /// Indexes on the staged tables, then one batch, one transaction, that drops the old tables
    /// and renames the staged ones: readers see the old rows or the new ones.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let plan = staging::swap(&self.dataset, Dialect::SqlServer, None);
        for statement in &plan.build {
            if let Err(error) = run(&mut self.conn, statement).await {
                self.discard().await?;
                return Err(error);
            }
        }
        let mut batch = vec![BEGIN.to_owned()];
        batch.extend(plan.swap);
        batch.push("COMMIT TRANSACTION".to_owned());
        run(&mut self.conn, &batch.join("; ")).await?;
        // The new rows are live; closing also releases the lock.
        let _ = self.conn.close().await;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.discard().await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    #[test]
    fn cells_decode_whatever_width_the_server_sends() {
        let int = Decode::Scalar(ColumnType::Integer);
        assert_eq!(
            decode_value(&ColumnData::I32(Some(7)), &int),
            Ok(Value::Integer(7))
        );
        assert_eq!(
            decode_value(&ColumnData::I64(Some(-7)), &int),
            Ok(Value::Integer(-7))
        );
        assert_eq!(decode_value(&ColumnData::I64(None), &int), Ok(Value::Null));
        let float = Decode::Scalar(ColumnType::Float);
        assert_eq!(
            decode_value(&ColumnData::F32(Some(0.5)), &float),
            Ok(Value::Float(0.5))
        );
        let list = Decode::List(", ".into());
        assert_eq!(
            decode_value(&ColumnData::String(Some("Drama, Crime".into())), &list),
            Ok(Value::List(vec!["Drama".into(), "Crime".into()]))
        );
        assert!(decode_value(&ColumnData::String(Some("x".into())), &int).is_err());
        // Round trips through the bulk-load form, the types SQL Server stores.
        let date = NaiveDate::from_ymd_opt(2013, 1, 1).unwrap();
        let when = DateTime::parse_from_rfc3339("2013-01-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for (value, ty) in [
            (Value::Date(date), ColumnType::Date),
            (Value::Timestamp(when), ColumnType::Timestamp),
            (Value::Boolean(true), ColumnType::Boolean),
            (Value::Text("Up".into()), ColumnType::Text),
            (Value::Null, ColumnType::Timestamp),
        ] {
            let data = bulk_value(value.clone(), ty);
            assert_eq!(
                decode_value(&data, &Decode::Scalar(ty)),
                Ok(value),
                "{ty:?}"
            );
        }
        assert!(matches!(
            bulk_value(Value::Null, ColumnType::Integer),
            ColumnData::I64(None)
        ));
        assert!(matches!(
            bulk_value(Value::Timestamp(when), ColumnType::Timestamp),
            ColumnData::DateTimeOffset(Some(_))
        ));
    }

    /// A test double of the Entra ID credential (no Entra ID here): numbered tokens that live
    /// 400 ms. Each new connection's configuration carries a token with life left in it.
    struct ShortLived(AtomicU32);

    #[async_trait]
    impl identity::TokenSource for ShortLived {
        async fn fetch(&self, scope: &str) -> anyhow::Result<identity::AccessToken> {
            assert_eq!(scope, identity::SQL_SCOPE);
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(identity::AccessToken {
                secret: format!("sql-token-{n}"),
                expires_at: SystemTime::now() + Duration::from_millis(400),
            })
        }
    }

    #[tokio::test]
    async fn new_connections_get_a_current_entra_token() {
        let config = super::super::mssql_config::parse(
            "Server=tcp:x.database.windows.net,1433;Database=db;Authentication=Active Directory Default",
        )
        .unwrap();
        let source = Arc::new(ShortLived(AtomicU32::new(0)));
        let manager = Manager::new(config, Some(Tokens::new(source.clone())));
        let first = manager.auth_method().await.unwrap();
        assert_eq!(first, AuthMethod::aad_token("sql-token-1"));
        manager.tiberius_config().await.unwrap();
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            1,
            "a fresh token is reused"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let later = manager.auth_method().await.unwrap();
        assert_eq!(
            later,
            AuthMethod::aad_token("sql-token-2"),
            "a token near expiry is replaced"
        );
        // A SQL login needs no token; the password never prints.
        let login = super::super::mssql_config::parse(
            "mssql://app:s3cret%21@127.0.0.1:1433/db?encrypt=false",
        )
        .unwrap();
        let manager = Manager::new(login, None);
        assert_eq!(
            manager.auth_method().await.unwrap(),
            AuthMethod::sql_server("app", Secret::new("s3cret!").expose())
        );
        let config = manager.tiberius_config().await.unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
