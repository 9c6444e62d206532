//! [`SqlStore`]: the [`Storage`] trait implemented once over any SQL [`Driver`].

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use std::time::Instant;

use super::row_writes::{changed_row, write_list_elements};
use super::sources::{self, SourceVersion};
use super::sql::{self, Decode, Dialect, Statement};
use super::users::{self, NewUser, UserLookup, UserRecord, UserUpdate};
use super::{
    Change, CommitGate, Committing, ImportSink, Migrated, Result, Row, RowStream, Storage,
    StorageError, SyncCounts, Written,
};
use crate::datasets::{ColumnType, Dataset, Value};
use crate::query::Query;
use crate::telemetry::metrics;

/// Rows per batch handed from the database task to an export's writer.
const STREAM_BATCH_ROWS: usize = 512;
/// Retries of a write rolled back to break a deadlock.
const WRITE_ATTEMPTS: u64 = 3;

/// How statements reach one database engine: run, fetched, streamed, in a write transaction or
/// as a bulk import. (The statements themselves come from `sql`, in the driver's dialect.)
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    const NAME: &'static str;
    const DIALECT: Dialect;
    /// Connections in the pool.
    const POOL_SIZE: usize;

    /// Runs a read (a `SELECT`; a statement that writes goes through a [`Transaction`]): it may
    /// run on a connection that cannot write (SQLite's direct reads).
    async fn fetch(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>>;

    /// [`Driver::fetch`] of a read of at most one row by a unique key, which never scans (some
    /// engines run it where they would not run a longer read).
    async fn fetch_by_key(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        self.fetch(statement, decode).await
    }

    /// Runs the statement in a task of its own and sends batches of rows as they arrive; the
    /// channel is bounded, so a slow client slows the query instead of filling memory.
    fn stream(
        &self,
        statement: Statement,
        decode: Vec<Decode>,
        sender: mpsc::Sender<Result<Vec<Row>>>,
    );

    async fn execute(&self, sql: &str) -> Result<()>;

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>>;

    /// A write transaction (SQLite: `BEGIN IMMEDIATE`, so it holds the write lock from its first
    /// read) whose statements reach as far as `reach` says. Dropped without
    /// [`Transaction::commit`], it rolls back.
    async fn begin_write(&self, reach: Reach) -> Result<Box<dyn Transaction>>;
}

/// How far a write transaction's statements reach, for an engine that runs short work where it
/// would not run long work (SQLite's writer: on the async thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Rows found by a key (primary or unique): a row's write, an account's.
    ByKey,
    /// Statements over a whole table (a sync's differences): they may run long.
    SetWide,
}

/// One open write transaction.
#[async_trait]
pub trait Transaction: Send {
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>>;

    async fn execute(&mut self, statement: Statement) -> Result<()>;

    async fn commit(self: Box<Self>) -> Result<()>;
}

pub struct SqlStore<D> {
    pub(super) driver: D,
    /// The accounts table is created on first use, once per instance.
    users_table: tokio::sync::OnceCell<()>,
    /// So is the table that serialises key assignment (MySQL only).
    key_locks_table: tokio::sync::OnceCell<()>,
    /// And the table of synced sources' versions.
    sources_table: tokio::sync::OnceCell<()>,
}

impl<D: Driver> SqlStore<D> {
    pub fn new(driver: D) -> Self {
        SqlStore {
            driver,
            users_table: tokio::sync::OnceCell::new(),
            key_locks_table: tokio::sync::OnceCell::new(),
            sources_table: tokio::sync::OnceCell::new(),
        }
    }

    async fn users_table(&self) -> Result<()> {
        self.users_table
            .get_or_try_init(|| async {
                for statement in users::create_table(D::DIALECT) {
                    self.driver.execute(&statement).await?;
                }
                Ok::<_, StorageError>(())
            })
            .await
            .copied()
    }

    async fn sources_table(&self) -> Result<()> {
        self.sources_table
            .get_or_try_init(|| async {
                self.driver
                    .execute(&sources::create_table(D::DIALECT))
                    .await
            })
            .await
            .copied()
    }

    async fn key_locks_table(&self) -> Result<()> {
        self.key_locks_table
            .get_or_try_init(|| async {
                if let Some(statement) = sql::key_locks_table(D::DIALECT) {
                    self.driver.execute(&statement).await?;
                }
                Ok::<_, StorageError>(())
            })
            .await
            .copied()
    }

    /// The table's column names, or `None` when it does not exist.
    pub(super) async fn table_columns(&self, table: &str) -> Result<Option<Vec<String>>> {
        let statement = sql::table_columns(D::DIALECT, table);
        let rows = self
            .driver
            .fetch(statement, &[Decode::Scalar(ColumnType::Text)])
            .await?;
        let names: Vec<String> = rows
            .into_iter()
            .filter_map(|row| match row.into_iter().next() {
                Some(Value::Text(name)) => Some(name),
                _ => None,
            })
            .collect();
        Ok((!names.is_empty()).then_some(names))
    }

    async fn one_user(&self, statement: Statement) -> Result<Option<UserRecord>> {
        self.users_table().await?;
        let rows = self
            .driver
            .fetch_by_key(statement, &users::decode())
            .await?;
        Ok(rows.into_iter().next().and_then(users::record))
    }

    /// One attempt of [`Storage::write`], in one transaction.
    async fn write_once(
        &self,
        dataset: &Dataset,
        change: Change,
        gate: &dyn CommitGate,
    ) -> Result<Written> {
        let dialect = D::DIALECT;
        let decode = Decode::stored_row(dataset);
        let assigns_key =
            matches!(&change, Change::Create(row) if row[dataset.key.column].is_null());
        if assigns_key {
            self.key_locks_table().await?;
        }
        let early = self.record_early(dataset, &change, gate).await;
        let mut tx = self.driver.begin_write(Reach::ByKey).await?;
        let written = match change {
            Change::Create(mut row) => {
                // Validation leaves the key null only where the dataset assigns keys.
                if assigns_key {
                    if let Some(lock) = sql::lock_for_generated_keys(dataset, dialect) {
                        tx.execute(lock).await?;
                    }
                    let next = tx
                        .fetch(
                            sql::next_generated_key(dataset, dialect),
                            &[Decode::Scalar(ColumnType::Integer)],
                        )
                        .await?;
                    row[dataset.key.column] = next
                        .into_iter()
                        .next()
                        .and_then(|r| r.into_iter().next())
                        .unwrap_or(Value::Integer(1));
                }
                let key = row[dataset.key.column].clone();
                let existing = tx
                    .fetch(sql::get_for_update(dataset, &key, dialect), &decode)
                    .await?;
                if !existing.is_empty() {
                    return Err(StorageError::Conflict);
                }
                tx.execute(sql::insert_row(dataset, &row, dialect)).await?;
                write_list_elements(tx.as_mut(), dataset, dialect, &key, Some(&row), None).await?;
                Written {
                    old: None,
                    new: Some(row),
                }
            }
            Change::Replace(ref key, _) | Change::Patch(ref key, _) | Change::Delete(ref key) => {
                let key = key.clone();
                let stored = tx
                    .fetch(sql::get_for_update(dataset, &key, dialect), &decode)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or(StorageError::NotFound)?;
                let old: Row = stored[..dataset.columns.len()].to_vec(); // the declared columns
                let new = changed_row(dataset, &key, &old, change);
                match &new {
                    Some(row) => {
                        if let Some(update) = sql::update_row(dataset, &stored, row, dialect) {
                            tx.execute(update).await?;
                        }
                    }
                    None => tx.execute(sql::delete_row(dataset, &key, dialect)).await?,
                }
                write_list_elements(
                    tx.as_mut(),
                    dataset,
                    dialect,
                    &key,
                    new.as_ref(),
                    Some(&old),
                )
                .await?;
                Written {
                    old: Some(old),
                    new,
                }
            }
        };
        // Dropping the transaction without a commit rolls it back.
        if early.as_ref() != Some(&written) || !gate.still_recorded() {
            gate.before_commit(Committing::Row(&written))
                .await
                .map_err(StorageError::NotCommitted)?;
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Where a write locks the whole database (SQLite) and the gate records slowly (Redis), the
    /// change as it would be from the row read now, recorded before the lock is taken: writers
    /// then queue for the lock behind statements only, not behind round trips. `None` where it
    /// was not recorded, the read or the record having failed too (the transaction records it,
    /// or fails as it would have).
    async fn record_early(
        &self,
        dataset: &Dataset,
        change: &Change,
        gate: &dyn CommitGate,
    ) -> Option<Written> {
        if D::DIALECT != Dialect::Sqlite || !gate.records_slowly() {
            return None;
        }
        let key = match change {
            Change::Create(row) => &row[dataset.key.column],
            Change::Replace(key, _) | Change::Patch(key, _) | Change::Delete(key) => key,
        };
        if key.is_null() {
            return None; // a key the transaction assigns
        }
        let statement = sql::get(dataset, key, D::DIALECT);
        let decode = Decode::row(dataset);
        let stored = self.driver.fetch_by_key(statement, &decode).await.ok()?;
        let written = match (change, stored.into_iter().next()) {
            (Change::Create(row), None) => Written {
                old: None,
                new: Some(row.clone()),
            },
            (Change::Create(_), Some(_)) | (_, None) => return None, // a 409 or a 404
            (change, Some(old)) => Written {
                new: changed_row(dataset, key, &old, change.clone()),
                old: Some(old),
            },
        };
        let recorded = gate.before_commit(Committing::Row(&written)).await;
        recorded.is_ok().then_some(written)
    }

    /// Runs an insert or update of an account and returns the account as it is afterwards: from
    /// the statement itself where it returns rows, else read back in the same transaction.
    async fn change_user(
        &self,
        statement: Statement,
        read_back: UserLookup,
    ) -> Result<Option<UserRecord>> {
        self.users_table().await?;
        // In a transaction either way: `Driver::fetch` is for reads only.
        let mut tx = self.driver.begin_write(Reach::ByKey).await?;
        let rows = if users::returns_rows(D::DIALECT) {
            tx.fetch(statement, &users::decode()).await?
        } else {
            tx.execute(statement).await?;
            tx.fetch(users::find(&read_back, D::DIALECT), &users::decode())
                .await?
        };
        tx.commit().await?;
        Ok(rows.into_iter().next().and_then(users::record))
    }
}

#[async_trait]
impl<D: Driver> Storage for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::NAME
    }

    fn engine_rules(&self) -> crate::datasets::rules::EngineRules {
        D::DIALECT.engine_rules()
    }

    fn pool_size(&self) -> usize {
        D::POOL_SIZE
    }

    async fn ping(&self) -> Result<()> {
        self.driver.execute("SELECT 1").await
    }

    #[tracing::instrument(name = "db.migrate", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn migrate(&self, dataset: &Dataset) -> Result<Migrated> {
        self.migrate_tables(dataset).await
    }

    #[tracing::instrument(name = "db.fill_keys", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn fill_keys(&self, dataset: &Dataset) -> Result<Migrated> {
        self.fill_every_key(dataset).await
    }

    async fn count(&self, dataset: &Dataset, query: &Query) -> Result<u64> {
        if self.table_columns(&dataset.table).await?.is_none() {
            return Ok(0);
        }
        let statement = sql::count(dataset, query, D::DIALECT);
        let rows = self
            .driver
            .fetch(statement, &[Decode::Scalar(ColumnType::Integer)])
            .await?;
        Ok(match rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        })
    }

    #[tracing::instrument(name = "db.list", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn list(&self, dataset: &Dataset, query: &Query) -> Result<Vec<Row>> {
        let statement = sql::list(dataset, query, D::DIALECT);
        let started = Instant::now();
        let rows = self.driver.fetch(statement, &Decode::row(dataset)).await;
        metrics::db_call(D::NAME, "list", started.elapsed());
        rows
    }

    #[tracing::instrument(name = "db.get", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn get(&self, dataset: &Dataset, key: &Value) -> Result<Option<Row>> {
        let statement = sql::get(dataset, key, D::DIALECT);
        let started = Instant::now();
        let rows = self
            .driver
            .fetch_by_key(statement, &Decode::row(dataset))
            .await;
        metrics::db_call(D::NAME, "get", started.elapsed());
        Ok(rows?.into_iter().next())
    }

    #[tracing::instrument(name = "db.facets", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn facets(
        &self,
        dataset: &Dataset,
        column: usize,
        query: &Query,
    ) -> Result<Vec<(Value, u64)>> {
        let statement = sql::facets(dataset, column, query, D::DIALECT);
        let started = Instant::now();
        let rows = self
            .driver
            .fetch(statement, &sql::facet_decode(&dataset.columns[column]))
            .await;
        metrics::db_call(D::NAME, "facets", started.elapsed());
        let rows = rows?;
        Ok(rows
            .into_iter()
            .map(|mut row| {
                let count = match row.pop() {
                    Some(Value::Integer(n)) => u64::try_from(n).unwrap_or(0),
                    _ => 0,
                };
                (row.pop().unwrap_or(Value::Null), count)
            })
            .collect())
    }

    fn export(&self, dataset: Arc<Dataset>, query: Query) -> RowStream {
        let statement = sql::export(&dataset, &query, D::DIALECT);
        let (sender, receiver) = mpsc::channel(4);
        self.driver.stream(statement, Decode::row(&dataset), sender);
        ReceiverStream::new(receiver).boxed()
    }

    #[tracing::instrument(name = "db.import", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        self.driver.begin_import(dataset).await
    }

    #[tracing::instrument(name = "db.sync", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn sync(
        &self,
        dataset: &Dataset,
        sink: Box<dyn ImportSink>,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> Result<Option<SyncCounts>> {
        self.sync_staged(dataset, sink, gate, record_rows).await
    }

    #[tracing::instrument(name = "db.write", skip_all, fields(otel.kind = "client", db.system = D::NAME, dataset = %dataset.name))]
    async fn write(
        &self,
        dataset: &Dataset,
        change: Change,
        gate: &dyn CommitGate,
    ) -> Result<Written> {
        // A deadlock victim was rolled back whole: trying again is safe, and usually succeeds
        // (or meets the other writer's row: a 409 rather than a 503).
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            let result = self.write_once(dataset, change.clone(), gate).await;
            metrics::db_call(D::NAME, "write", started.elapsed());
            match result {
                Err(StorageError::Deadlock(cause)) if attempt < WRITE_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %cause, attempt, "deadlock; trying the write again");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn create_user(&self, user: NewUser) -> Result<UserRecord> {
        let statement = users::insert(&user, chrono::Utc::now(), D::DIALECT);
        let read_back = UserLookup::Email(user.email.clone());
        self.change_user(statement, read_back)
            .await?
            .ok_or_else(|| StorageError::Decode {
                column: "smartcache_users".into(),
                reason: "the insert returned no row".into(),
            })
    }

    async fn find_user(&self, lookup: UserLookup) -> Result<Option<UserRecord>> {
        self.one_user(users::find(&lookup, D::DIALECT)).await
    }

    async fn update_user(&self, id: i64, change: UserUpdate) -> Result<UserRecord> {
        let account = match users::update(id, &change, D::DIALECT) {
            Some(statement) => self.change_user(statement, UserLookup::Id(id)).await?,
            None => {
                self.one_user(users::find(&UserLookup::Id(id), D::DIALECT))
                    .await?
            }
        };
        account.ok_or(StorageError::NotFound)
    }

    async fn delete_user(&self, id: i64) -> Result<()> {
        self.users_table().await?;
        let mut tx = self.driver.begin_write(Reach::ByKey).await?;
        tx.execute(users::delete(id, D::DIALECT)).await?;
        tx.commit().await
    }

    async fn source_version(&self, dataset: &str) -> Result<Option<SourceVersion>> {
        self.sources_table().await?;
        let statement = sources::find(dataset, D::DIALECT);
        let rows = self.driver.fetch(statement, &sources::decode()).await?;
        Ok(rows.into_iter().next().and_then(sources::record))
    }

    async fn record_source_version(&self, dataset: &str, version: &SourceVersion) -> Result<()> {
        self.sources_table().await?;
        let mut tx = self.driver.begin_write(Reach::ByKey).await?;
        tx.execute(sources::upsert(dataset, version, D::DIALECT))
            .await?;
        tx.commit().await
    }
}

/// Decodes a database row stream into batches and sends them until the stream ends, fails, or the
/// receiver (an export being written to a client) goes away.
pub async fn forward_rows<S, R, E>(
    mut rows: S,
    decode: impl Fn(&R) -> Result<Row>,
    sender: mpsc::Sender<Result<Vec<Row>>>,
) where
    S: Stream<Item = std::result::Result<R, E>> + Unpin,
    StorageError: From<E>,
{
    let mut batch = Vec::with_capacity(STREAM_BATCH_ROWS);
    loop {
        let next = match rows.try_next().await {
            Ok(Some(row)) => decode(&row),
            Ok(None) => break,
            Err(error) => Err(error.into()),
        };
        match next {
            Ok(row) => batch.push(row),
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        }
        if batch.len() == STREAM_BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(STREAM_BATCH_ROWS));
            if sender.send(Ok(full)).await.is_err() {
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.send(Ok(batch)).await;
    }
}
