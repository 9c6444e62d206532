//! One [`Driver`] for the three engines that sqlx speaks (SQLite, PostgreSQL, MySQL/MariaDB):
//! the pool, statements with bound parameters, streamed rows and write transactions are written
//! once here. An [`Engine`] says only what differs: connecting, binding a value, decoding a
//! column, an error that means "done already", and how an import loads its rows.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection, Database, Executor, IntoArguments, Pool,
};
use tokio::sync::mpsc;

use super::sql::{Decode, Dialect, Statement};
use super::sqlite_reads::SqliteReads;
use super::sqlite_writes::SqliteWrites;
use super::store::{Driver, Reach, Transaction, forward_rows};
use super::{ImportSink, Result, Row};
use crate::datasets::{Dataset, Value};

/// What a connection is opened with.
pub type Options<DB> = <<DB as Database>::Connection as Connection>::Options;

/// What differs between the engines that sqlx drives.
#[async_trait]
pub trait Engine: Database<Arguments: IntoArguments<Self>> {
    /// `sqlite`, `postgres`, `mysql`: the backend's name in spans and metrics.
    const BACKEND: &'static str;
    const DIALECT: Dialect;
    /// Connections in the pool.
    const POOL_SIZE: usize = 10;
    /// How long a statement waits for a pooled connection.
    const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
    /// What opens a write transaction (and an import's swap).
    const BEGIN: &'static str = "BEGIN";
    /// Whether a pooled connection is pinged each time it is handed out: a server's may have
    /// been closed under it (a restart, a failover), and the ping keeps that from a request.
    const PING_BEFORE_USE: bool = true;
    /// What releases the session's import lock, run before its connection closes: the server
    /// releases a closed session's locks only once it has noticed the close, so an import that
    /// followed at once could find the lock still held ("another import … is running").
    const RELEASE_IMPORT_LOCK: Option<&'static str> = None;

    /// The connection options that `DATABASE_URL` names, with the engine's own settings.
    fn connect_options(url: &str) -> anyhow::Result<Options<Self>>;

    /// Appends one parameter in the engine's encoding of `value`.
    fn bind(arguments: &mut Self::Arguments, value: Value);

    /// Column `index` of a row, read as `decode` says.
    fn decode(row: &Self::Row, index: usize, decode: &Decode) -> Result<Value>;

    /// Where short reads can run past sqlx's pool, faster (SQLite: [`SqliteReads`]).
    fn direct_reads(_url: &str, _options: &Options<Self>) -> Option<SqliteReads> {
        None
    }

    /// Where write transactions can run past sqlx's pool, faster (SQLite: [`SqliteWrites`]).
    fn direct_writes(_url: &str, _options: &Options<Self>) -> Option<SqliteWrites> {
        None
    }

    /// Whether a failed statement's work was done already (MySQL's "duplicate key name" for a
    /// `CREATE INDEX`, which it cannot make conditional).
    fn already_done(_error: &sqlx::Error) -> bool {
        false
    }

    /// Stages an import (see `sql::staging`) and returns what loads its rows.
    async fn begin_import(
        driver: &SqlxDriver<Self>,
        dataset: &Dataset,
    ) -> Result<Box<dyn ImportSink>>;
}

/// Where connections are not pinged before each use, one idle this long still is.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(30);

pub struct SqlxDriver<DB: Database> {
    pool: Pool<DB>,
    options: Options<DB>,
    direct: Option<SqliteReads>,
    direct_writes: Option<SqliteWrites>,
}

impl<DB: Engine> SqlxDriver<DB> {
    /// Checks the URL now; connects on first use.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        // Exports of whole datasets are long on purpose; warn only about the truly slow.
        let options = DB::connect_options(url)?
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        let mut pool = PoolOptions::<DB>::new()
            .max_connections(DB::POOL_SIZE as u32)
            .acquire_timeout(DB::ACQUIRE_TIMEOUT);
        if !DB::PING_BEFORE_USE {
            pool = pool
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_WHEN_IDLE_FOR {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                });
        }
        let pool = pool.connect_lazy_with(options.clone());
        let direct = DB::direct_reads(url, &options);
        let direct_writes = DB::direct_writes(url, &options);
        Ok(SqlxDriver {
            pool,
            options,
            direct,
            direct_writes,
        })
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// A connection outside the pool: an import's, which holds its lock for the whole import
    /// and lets it go when closed (or when this process dies).
    pub async fn dedicated(&self) -> Result<DB::Connection> {
        Ok(DB::Connection::connect_with(&self.options).await?)
    }
}

/// A statement with its parameters bound in the engine's encoding.
fn query<DB: Engine>(statement: Statement) -> sqlx::query::Query<'static, DB, DB::Arguments> {
    let mut arguments = DB::Arguments::default();
    for value in statement.params {
        DB::bind(&mut arguments, value);
    }
    sqlx::query_with(AssertSqlSafe(statement.sql), arguments)
}

fn decode_row<DB: Engine>(row: &DB::Row, decode: &[Decode]) -> Result<Row> {
    decode
        .iter()
        .enumerate()
        .map(|(i, d)| DB::decode(row, i, d))
        .collect()
}

/// Runs SQL text without parameters (DDL, session settings; several statements at once where
/// the engine allows).
pub async fn run<DB: Engine>(conn: &mut DB::Connection, sql: &str) -> Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs an import's steps in one transaction (each timed in the debug log); the first failure
/// rolls it back.
pub async fn run_in_transaction<DB: Engine>(
    conn: &mut DB::Connection,
    statements: &[String],
) -> Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    run::<DB>(conn, DB::BEGIN).await?;
    for statement in statements {
        let started = std::time::Instant::now();
        let result = run::<DB>(conn, statement).await;
        tracing::debug!(%statement, elapsed_ms = started.elapsed().as_millis() as u64, "import swap step");
        if let Err(error) = result {
            let _ = run::<DB>(conn, "ROLLBACK").await;
            return Err(error);
        }
    }
    run::<DB>(conn, "COMMIT").await
}

impl<DB: Engine> SqlxDriver<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn fetch_pooled(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = query::<DB>(statement).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| decode_row::<DB>(row, decode))
            .collect()
    }
}

#[async_trait]
impl<DB: Engine> Driver for SqlxDriver<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    const NAME: &'static str = DB::BACKEND;
    const DIALECT: Dialect = DB::DIALECT;
    const POOL_SIZE: usize = DB::POOL_SIZE;

    async fn fetch(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        if let Some(direct) = &self.direct
            && let Some(rows) = direct.fetch(&statement, decode).await
        {
            return rows;
        }
        self.fetch_pooled(statement, decode).await
    }

    async fn fetch_by_key(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        if let Some(direct) = &self.direct
            && let Some(rows) = direct.fetch_by_key(&statement, decode).await
        {
            return rows;
        }
        self.fetch_pooled(statement, decode).await
    }

    fn stream(
        &self,
        statement: Statement,
        decode: Vec<Decode>,
        sender: mpsc::Sender<Result<Vec<Row>>>,
    ) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let rows = query::<DB>(statement).fetch(&pool);
            forward_rows(rows, |row| decode_row::<DB>(row, &decode), sender).await;
        });
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        match sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
        {
            Err(error) if DB::already_done(&error) => Ok(()),
            result => result.map(drop).map_err(Into::into),
        }
    }

    async fn begin_write(&self, reach: Reach) -> Result<Box<dyn Transaction>> {
        if let Some(direct) = &self.direct_writes
            && let Some(write) = direct.begin(reach).await
        {
            return Ok(Box::new(write?));
        }
        Ok(Box::new(SqlxWrite(self.pool.begin_with(DB::BEGIN).await?)))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        DB::begin_import(self, dataset).await
    }
}

/// A write transaction; sqlx rolls it back if it is dropped uncommitted.
struct SqlxWrite<DB: Database>(sqlx::Transaction<'static, DB>);

#[async_trait]
impl<DB: Engine> Transaction for SqlxWrite<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = query::<DB>(statement).fetch_all(&mut *self.0).await?;
        rows.iter()
            .map(|row| decode_row::<DB>(row, decode))
            .collect()
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        query::<DB>(statement).execute(&mut *self.0).await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}

/// An import's connection: one from the pool, or one of its own that holds the import lock.
pub enum ImportConnection<DB: Database> {
    Pooled(PoolConnection<DB>),
    Dedicated(DB::Connection),
}

impl<DB: Database> ImportConnection<DB> {
    pub fn get(&mut self) -> &mut DB::Connection {
        match self {
            ImportConnection::Pooled(conn) => conn,
            ImportConnection::Dedicated(conn) => conn,
        }
    }
}

impl<DB: Engine> ImportConnection<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Ends the connection: a dedicated one releases its lock and closes, a pooled one goes
    /// back to the pool.
    pub async fn close(self) -> Result<()> {
        if let ImportConnection::Dedicated(conn) = self {
            close_releasing_lock::<DB>(conn).await?;
        }
        Ok(())
    }
}

/// Releases an import's lock ([`Engine::RELEASE_IMPORT_LOCK`]) on its dedicated connection, then
/// closes it.
pub async fn close_releasing_lock<DB: Engine>(mut conn: DB::Connection) -> Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    if let Some(release) = DB::RELEASE_IMPORT_LOCK {
        sqlx::raw_sql(AssertSqlSafe(release))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}
