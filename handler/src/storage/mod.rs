//! Storage: one [`Storage`] trait, implemented once over SQL ([`SqlStore`]) for any `Driver`,
//! the one thing that differs between database engines.
//!
//! ```text
//!  http / import ──> dyn Storage ──> SqlStore<D> ──(sql::Statement)──> D: Driver
//!      D = SqlxDriver<Sqlite | Postgres | MySql> (sqlx) or MssqlDriver (tiberius)
//! ```
//! - `store`: [`SqlStore`] (reads, writes in one transaction, accounts) and the `Driver` and
//!   `Transaction` traits it runs statements through; `row_writes`: the row a change leaves of
//!   the stored one, and its list columns' rows; `migrate`: tables brought to the declaration,
//!   hidden keys a column gained filled in;
//! - `sql/`: the SQL text of every statement, built from the dataset declaration only (every
//!   value from a request or a CSV file travels as a bound parameter): `dialect`, `layout`,
//!   `schema`, `staging` (an import's staged tables and swap), `builder`, `reads`, `writes`;
//! - `sqlx_driver`: one `Driver` for the engines sqlx speaks, with a small `Engine` trait for
//!   what differs (connecting, binding a value, decoding a column, starting an import);
//!   `sqlite`, `postgres` and `mysql` implement it; `insert_import` is the multi-row `INSERT`
//!   import that SQLite and MySQL share (PostgreSQL's uses `COPY`); `sqlite_reads` runs
//!   SQLite's short reads (pages, rows, counts, facets) on connections of its own, past sqlx;
//!   `sqlite_writes` its write transactions, on one connection whose writers take turns, with
//!   checkpoints of its own off the writers' way;
//! - `mssql/`: SQL Server's driver over tiberius (`connect`: its pool's connections; `import`:
//!   TDS bulk load); `mssql_config` parses its connection strings;
//! - `users`: the accounts table's statements; `sources`: those of the synced sources' versions.

mod insert_import;
mod migrate;
pub mod mssql;
pub mod mssql_config;
mod mysql;
mod postgres;
mod row_writes;
pub mod sources;
mod sql;
mod sqlite;
mod sqlite_reads;
mod sqlite_writes;
mod sqlx_driver;
mod store;
mod sync;
pub mod users;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::datasets::{Dataset, Value};
use crate::query::Query;

pub use sources::SourceVersion;
pub use sql::Dialect;
pub use store::SqlStore;
pub use users::{NewUser, UserLookup, UserRecord, UserUpdate};

pub use crate::datasets::Row;

/// A stream of row batches (batched so that streaming an export costs one channel hop per
/// batch, not per row).
pub type RowStream = BoxStream<'static, Result<Vec<Row>, StorageError>>;

/// The driver's own error (sqlx or tiberius), kept as the source of a [`StorageError`].
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database cannot be reached (down, refusing connections, pool timed out), or it
    /// rolled the transaction back to break a deadlock: try again shortly.
    #[error("the database is unavailable")]
    Unavailable(#[source] DriverError),
    /// Another import of the same dataset holds the import lock.
    #[error("another import of dataset {0:?} is running")]
    ImportRunning(String),
    /// The row (or account) to change does not exist.
    #[error("not found")]
    NotFound,
    /// A row or account with this key (or email) exists already.
    #[error("already exists")]
    Conflict,
    /// The database broke a deadlock by rolling this transaction back; a write is retried.
    #[error("the transaction was rolled back to break a deadlock")]
    Deadlock(#[source] DriverError),
    /// A text value is longer than the engine's column can hold (an indexed text column on
    /// MySQL or SQL Server): the client's value, not the server, is at fault.
    #[error("a text value is longer than this database stores in an indexed column")]
    ValueTooLong(#[source] DriverError),
    #[error("database error")]
    Database(#[source] DriverError),
    #[error("unexpected value in column {column:?}: {reason}")]
    Decode { column: String, reason: String },
    /// The [`CommitGate`] refused the commit: the change was rolled back, nothing was written.
    #[error("the change was not committed: {0}")]
    NotCommitted(String),
}

/// What is about to be committed: one row's change, the changes of many (a sync), or every row
/// of a dataset (an import, or a sync that changed too many rows to list).
pub enum Committing<'a> {
    Row(&'a Written),
    Rows(&'a [Written]),
    Everything,
}

/// What a sync changed, by key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

impl SyncCounts {
    pub fn total(&self) -> u64 {
        self.added + self.changed + self.removed
    }
}

/// Asked before a change commits whether it may. The service records the change with the cache
/// here, so that once it is committed no instance can serve an answer it changed; a gate that
/// refuses (`Err` with the reason) rolls it back. Asked inside the change's transaction, just
/// before its `COMMIT`; or, for a row's write where the engine locks the whole database to write
/// (SQLite) and the gate records slowly (over the network), before the transaction begins, from
/// the row as read then, and asked again inside it only if the row turned out different or that
/// record is too old to commit under ([`CommitGate::still_recorded`]).
#[async_trait]
pub trait CommitGate: Send + Sync {
    async fn before_commit(&self, change: Committing<'_>) -> Result<(), String>;

    /// Whether recording takes a round trip (so is worth making before a lock is taken).
    fn records_slowly(&self) -> bool {
        false
    }

    /// Whether the last change recorded may still commit now (a gate that records early must
    /// say how long its record holds: until it does, a change is recorded again in the
    /// transaction).
    fn still_recorded(&self) -> bool {
        false
    }
}

/// A gate that lets everything commit (tools and tests that write without a cache).
pub struct Ungated;

#[async_trait]
impl CommitGate for Ungated {
    async fn before_commit(&self, _change: Committing<'_>) -> Result<(), String> {
        Ok(())
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            // A connection that broke off while it was being set up (a server restarting, or
            // something in between cutting it): nothing was done, try again shortly.
            | sqlx::Error::Protocol(_) => StorageError::Unavailable(error.into()),
            // Connection exceptions (class 08), the server shutting down or starting (57P01-3),
            // too many connections: the database is not there for now.
            sqlx::Error::Database(ref e)
                if e.code().is_some_and(|code| {
                    code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
                }) =>
            {
                StorageError::Unavailable(error.into())
            }
            sqlx::Error::Database(ref e) if e.is_unique_violation() => StorageError::Conflict,
            // A deadlock or serialisation failure (PostgreSQL, MySQL): the transaction was
            // rolled back and may simply be tried again.
            sqlx::Error::Database(ref e)
                if matches!(e.code().as_deref(), Some("40001" | "40P01")) =>
            {
                StorageError::Deadlock(error.into())
            }
            // "String data, right truncation": MySQL's strict mode, PostgreSQL's VARCHAR(n).
            sqlx::Error::Database(ref e) if e.code().as_deref() == Some("22001") => {
                StorageError::ValueTooLong(error.into())
            }
            // SQLite's "busy"/"locked" (a write lock held past the busy timeout, e.g. by an
            // import's swap): try again shortly, like a database that is down.
            sqlx::Error::Database(ref e)
                if matches!(e.code().as_deref(), Some("5" | "6" | "261" | "517")) =>
            {
                StorageError::Unavailable(error.into())
            }
            other => StorageError::Database(other.into()),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One change to one row, checked against the declaration by the caller.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new row; a null key (where the dataset assigns keys) becomes one past the largest.
    Create(Row),
    /// Every column of the row with this key.
    Replace(Value, Row),
    /// Some columns (by index) of the row with this key.
    Patch(Value, Vec<(usize, Value)>),
    Delete(Value),
}

/// The row before and after a committed change (`None` where it did not exist).
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub old: Option<Row>,
    pub new: Option<Row>,
}

/// Everything the service asks of a database. Connections open lazily on first use.
/// What a [`Storage::migrate`] or [`Storage::fill_keys`] changed that answers depend on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Rows whose hidden key (of a text column made a filter) was filled: an answer filtering on
    /// that column, computed before, may have left them out.
    pub keys_filled: u64,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// `sqlite`, `postgres`, ...
    fn backend(&self) -> &'static str;

    /// Connections in the pool (what concurrent queries can use at most).
    fn pool_size(&self) -> usize {
        10
    }

    /// What this engine adds to the declarations' value rules (text it can index); nothing
    /// unless it says otherwise.
    fn engine_rules(&self) -> crate::datasets::rules::EngineRules {
        crate::datasets::rules::EngineRules::default()
    }

    /// A cheap round trip, for `/api/health`.
    async fn ping(&self) -> Result<()>;

    /// Creates the dataset's tables and indexes, or adds what a changed declaration needs; a
    /// hidden key it adds (a text column made a filter) is filled in the rows stored before.
    async fn migrate(&self, dataset: &Dataset) -> Result<Migrated>;

    /// Fills every hidden key still null where its column holds text: what a [`Storage::migrate`]
    /// cut short left (`handler migrate` runs both).
    async fn fill_keys(&self, dataset: &Dataset) -> Result<Migrated>;

    /// Rows passing the query's filters (0 when the dataset's table does not exist yet).
    async fn count(&self, dataset: &Dataset, query: &Query) -> Result<u64>;

    /// One page: at most `query.limit + 1` rows, so the caller can tell whether a next page exists.
    async fn list(&self, dataset: &Dataset, query: &Query) -> Result<Vec<Row>>;

    async fn get(&self, dataset: &Dataset, key: &Value) -> Result<Option<Row>>;

    /// Value counts of one column under the query's filters, most frequent first.
    async fn facets(
        &self,
        dataset: &Dataset,
        column: usize,
        query: &Query,
    ) -> Result<Vec<(Value, u64)>>;

    /// Every matching row, streamed in the query's sort order.
    fn export(&self, dataset: Arc<Dataset>, query: Query) -> RowStream;

    /// Starts a bulk import into a staging area; nothing is visible until [`ImportSink::commit`].
    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>>;

    /// Makes the rows staged by `sink` (every batch written) the dataset's rows by changing only
    /// those that differ by key, in one transaction that writers wait for; `gate` is asked just
    /// before its commit, with every changed row when there are at most `record_rows`, else as a
    /// change of everything. `None`: the dataset had no rows (or no table) yet, so the staged rows
    /// replaced them. On any error the previous rows stay as they were. The sink is discarded either way.
    async fn sync(
        &self,
        dataset: &Dataset,
        sink: Box<dyn ImportSink>,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> Result<Option<SyncCounts>>;

    /// Applies one change in one transaction (the row locked from read to write) and returns the
    /// row before and after; `gate` is asked just before the commit. [`StorageError::NotFound`],
    /// [`StorageError::Conflict`] and [`StorageError::NotCommitted`] leave everything as it was.
    async fn write(
        &self,
        dataset: &Dataset,
        change: Change,
        gate: &dyn CommitGate,
    ) -> Result<Written>;

    /// Creates an account; [`StorageError::Conflict`] when the email (or Firebase uid) is taken.
    async fn create_user(&self, user: NewUser) -> Result<UserRecord>;

    async fn find_user(&self, lookup: UserLookup) -> Result<Option<UserRecord>>;

    /// [`StorageError::NotFound`] when there is no such account.
    async fn update_user(&self, id: i64, change: UserUpdate) -> Result<UserRecord>;

    async fn delete_user(&self, id: i64) -> Result<()>;

    /// The version of `dataset`'s source blob that it was last synced from (`None` before the
    /// first sync).
    async fn source_version(&self, dataset: &str) -> Result<Option<SourceVersion>>;

    /// Records the version of `dataset`'s source blob that it was just synced from.
    async fn record_source_version(&self, dataset: &str, version: &SourceVersion) -> Result<()>;
}

/// Receives an import's rows. Dropping it without `commit` leaves the previous data in place.
#[async_trait]
pub trait ImportSink: Send {
    async fn write(&mut self, rows: &[Row]) -> Result<()>;

    /// Ends loading: every row written is in the staged tables, readable by other connections
    /// (PostgreSQL ends its `COPY` streams; the others commit each batch already).
    async fn finish_loading(&mut self) -> Result<()> {
        Ok(())
    }

    /// Makes the imported rows the dataset's rows, replacing the previous ones atomically.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards the staged rows.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Opens the storage named by `DATABASE_URL` without connecting yet.
pub fn open(database_url: &str) -> anyhow::Result<Arc<dyn Storage>> {
    let scheme = database_url
        .split_once(':')
        .map(|(s, _)| s)
        .unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Arc::new(SqlStore::new(sqlite::SqliteDriver::open(
            database_url,
        )?))),
        "postgres" | "postgresql" => Ok(Arc::new(SqlStore::new(postgres::PgDriver::open(
            database_url,
        )?))),
        // Checked now, so a mistake in the connection string is named precisely.
        _ if mssql_config::is_mssql(database_url) => Ok(Arc::new(SqlStore::new(
            mssql::MssqlDriver::open(database_url)?,
        ))),
        "mysql" | "mariadb" => Ok(Arc::new(SqlStore::new(mysql::MySqlDriver::open(
            database_url,
        )?))),
        _ => anyhow::bail!(
            "DATABASE_URL must start with sqlite://, postgres://, mysql://, mariadb:// or \
             mssql://, or be an ADO.NET SQL Server connection string (got a value starting \
             with {:?})",
            scheme.chars().take(16).collect::<String>()
        ),
    }
}
