//! SQLite's write transactions on one connection of our own, each statement run on the calling
//! thread. Through sqlx, every statement of a write crossed to the connection's worker thread and
//! back (a PATCH: about 27 thread wake-ups), and writers queued for SQLite's one write lock by
//! sleeping in its busy handler; the lock was held across all those hand-offs. Here the writers
//! of this process take turns on a queue, and a transaction holds the lock only while its own
//! statements run (and while the cache records it: see `CommitGate`).
//!
//! Only a database in a file that sqlx's pool has opened is written this way (the reads'
//! rules: [`super::sqlite_reads::direct_file`]); otherwise, or when the connection cannot be
//! opened, writes stay on sqlx's pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::sql::{Decode, Statement};
use super::sqlite_reads::{BUSY_TIMEOUT, Bound, CONNECTION_LIFETIME, blocking, read_mapping};
use super::store::Transaction;
use super::{Result, Row, StorageError};

/// Prepared statements kept: a write's few shapes per dataset.
const STATEMENTS: usize = 64;

/// The writer's connection, opened on first use and retired as the reads' are.
type Kept = Option<(Connection, Instant)>;

pub struct SqliteWrites {
    path: PathBuf,
    connection: Arc<Mutex<Kept>>,
}

impl SqliteWrites {
    pub fn new(path: PathBuf) -> Self {
        SqliteWrites {
            path,
            connection: Arc::default(),
        }
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE`) once this process's earlier writers are
    /// done; `None` when no connection could be opened, for the caller to write through sqlx.
    pub async fn begin(&self) -> Option<Result<DirectWrite>> {
        let turn = self.connection.clone().lock_owned();
        let Ok(mut turn) = tokio::time::timeout(BUSY_TIMEOUT, turn).await else {
            let waited = format!("no SQLite write could start within {BUSY_TIMEOUT:?}");
            return Some(Err(StorageError::Unavailable(waited.into())));
        };
        if turn
            .as_ref()
            .is_none_or(|(_, opened)| opened.elapsed() >= CONNECTION_LIFETIME)
        {
            *turn = None;
            // Setting WAL may wait for another process's lock, up to the busy timeout.
            match blocking(|| open(&self.path)) {
                Ok(conn) => *turn = Some((conn, Instant::now())),
                Err(error) => {
                    tracing::debug!(%error, "no direct SQLite writer; writing through sqlx");
                    return None;
                }
            }
        }
        let mut write = DirectWrite { turn, open: false };
        // Waits for another process's write (an import's swap) up to the busy timeout.
        match blocking(|| write.connection().execute_batch("BEGIN IMMEDIATE")) {
            Ok(()) => {
                write.open = true;
                Some(Ok(write))
            }
            Err(error) => Some(Err(error.into())),
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    // No create: sqlx's pool makes the file (and sets WAL) before anything is written.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As sqlx's connections are opened (`sqlite.rs`): WAL, and a commit syncs at checkpoints.
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// One open write transaction; rolled back if dropped uncommitted. The next writer's turn comes
/// when it is dropped.
pub struct DirectWrite {
    turn: OwnedMutexGuard<Kept>,
    open: bool,
}

impl DirectWrite {
    fn connection(&self) -> &Connection {
        &self
            .turn
            .as_ref()
            .expect("opened before the transaction began")
            .0
    }
}

#[async_trait]
impl Transaction for DirectWrite {
    /// Reads, and writes that return rows (an account's `INSERT … RETURNING`).
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        blocking(|| read_mapping(self.connection(), &statement, decode, write_error))
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        blocking(|| {
            let conn = self.connection();
            if statement.params.is_empty() {
                // A sync's or a schema's statements: run once each, not worth keeping.
                conn.execute_batch(&statement.sql)
            } else {
                let mut prepared = conn.prepare_cached(&statement.sql)?;
                let params = statement.params.iter().map(Bound);
                prepared
                    .execute(rusqlite::params_from_iter(params))
                    .map(drop)
            }
        })
        .map_err(write_error)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        blocking(|| self.connection().execute_batch("COMMIT")).map_err(write_error)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        if self.open && self.connection().execute_batch("ROLLBACK").is_err() {
            // A connection that cannot end its transaction is not used again.
            *self.turn = None;
        }
    }
}

/// A key already taken is a conflict, as sqlx's unique violation is; the rest as a read's.
fn write_error(error: rusqlite::Error) -> StorageError {
    let duplicate = matches!(
        &error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == ErrorCode::ConstraintViolation
                && matches!(
                    failure.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
    );
    if duplicate {
        StorageError::Conflict
    } else {
        error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Value;

    /// A new database file with table `t`, removed when the test ends.
    struct Database(PathBuf);

    impl Database {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "smartcache_writes_{name}_{}.db",
                std::process::id()
            ));
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode=wal; DROP TABLE IF EXISTS t; \
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
            )
            .unwrap();
            Database(path)
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    fn statement(sql: &str, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    #[tokio::test]
    async fn writes_commit_roll_back_when_dropped_and_name_a_taken_key() {
        let database = Database::new("commit");
        let writes = SqliteWrites::new(database.0.clone());
        let insert = |id: i64| {
            statement(
                "INSERT INTO t (id, v) VALUES (?, ?)",
                vec![Value::Integer(id), Value::Text(format!("v{id}"))],
            )
        };

        let mut tx = Box::new(writes.begin().await.unwrap().unwrap());
        tx.execute(insert(1)).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = writes.begin().await.unwrap().unwrap();
        tx.execute(insert(2)).await.unwrap();
        drop(tx); // uncommitted: rolled back, and the next writer's turn comes

        let mut tx = writes.begin().await.unwrap().unwrap();
        assert!(matches!(
            tx.execute(insert(1)).await,
            Err(StorageError::Conflict)
        ));
        let returning = statement(
            "INSERT INTO t (id, v) VALUES (?, 'again') RETURNING id",
            vec![Value::Integer(1)],
        );
        let integer = [Decode::Scalar(crate::datasets::ColumnType::Integer)];
        assert!(matches!(
            tx.fetch(returning, &integer).await,
            Err(StorageError::Conflict)
        ));
        let rows = tx
            .fetch(statement("SELECT id FROM t ORDER BY id", vec![]), &integer)
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Value::Integer(1)]]);
    }

    #[tokio::test]
    async fn a_writer_waits_for_the_one_before_it() {
        let database = Database::new("turns");
        let writes = Arc::new(SqliteWrites::new(database.0.clone()));
        let first = writes.begin().await.unwrap().unwrap();
        let second = tokio::spawn({
            let writes = writes.clone();
            async move { writes.begin().await.unwrap().map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the second writer began while the first was open"
        );
        drop(first);
        second.await.unwrap().unwrap();
    }
}
