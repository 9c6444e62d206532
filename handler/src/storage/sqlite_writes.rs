//! SQLite's write transactions on one connection of our own, each statement run on the calling
//! thread. Through sqlx, every statement of a write crossed to the connection's worker thread and
//! back (a PATCH: about 27 thread wake-ups), and writers queued for SQLite's one write lock by
//! sleeping in its busy handler; the lock was held across all those hand-offs. Here the writers
//! of this process take turns on a queue, and a transaction holds the lock only while its own
//! statements run (and while the cache records it: see `CommitGate`).
//!
//! A transaction that reaches rows by key ([`Reach::ByKey`]: a row's write, an account's) runs
//! right on the async thread: its statements are index seeks into pages mostly cached, and
//! moving each off it (`block_in_place`) cost a thread hand-off apiece and halved the writes a
//! second. What may wait runs off it: a set-wide transaction (a sync's) whole; `BEGIN IMMEDIATE`
//! when another process holds the write lock (an import's swap); the commit that restarts the
//! log after a checkpoint copied all of it back (it syncs the log's header); opening the
//! connection; and checkpoints, which the writer's connection never runs itself (a checkpoint
//! fsyncs the database file): [`Checkpoints`] copies the log back on a connection and a
//! blocking thread of its own.
//!
//! Only a database in a file that sqlx's pool has opened is written this way (the reads'
//! rules: [`super::sqlite_reads::direct_file`]); otherwise, or when the connection cannot be
//! opened, writes stay on sqlx's pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::sql::{Decode, Statement};
use super::sqlite_reads::{
    BUSY_TIMEOUT, Bound, CONNECTION_LIFETIME, blocking, read_mapping, without_waiting,
};
use super::store::{Reach, Transaction};
use super::{Result, Row, StorageError};

/// Prepared statements kept: a write's few shapes per dataset.
const STATEMENTS: usize = 64;
/// Commits between two checkpoints. SQLite's own auto-checkpoint runs at 1,000 pages of log; a
/// write of one row adds about 8 (its table's and its indexes' pages).
const CHECKPOINT_EVERY: u32 = 128;

/// The writer's connection, opened on first use and retired as the reads' are.
type Kept = Option<(Connection, Instant)>;

pub struct SqliteWrites {
    path: PathBuf,
    connection: Arc<Mutex<Kept>>,
    checkpoints: Arc<Checkpoints>,
}

impl SqliteWrites {
    pub fn new(path: PathBuf) -> Self {
        SqliteWrites {
            checkpoints: Arc::new(Checkpoints::new(path.clone())),
            path,
            connection: Arc::default(),
        }
    }

    /// Opens a write transaction (`BEGIN IMMEDIATE`) once this process's earlier writers are
    /// done; `None` when no connection could be opened, for the caller to write through sqlx.
    pub async fn begin(&self, reach: Reach) -> Option<Result<DirectWrite>> {
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
            match blocking(|| open_writer(&self.path)) {
                Ok(conn) => *turn = Some((conn, Instant::now())),
                Err(error) => {
                    tracing::debug!(%error, "no direct SQLite writer; writing through sqlx");
                    return None;
                }
            }
        }
        let mut write = DirectWrite {
            turn,
            open: false,
            set_wide: reach == Reach::SetWide,
            checkpoints: self.checkpoints.clone(),
        };
        match begin_immediate(write.connection()) {
            Ok(()) => {
                write.open = true;
                Some(Ok(write))
            }
            Err(error) => Some(Err(error)),
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // No create: sqlx's pool makes the file (and sets WAL) before anything is written.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As sqlx's connections are opened (`sqlite.rs`): WAL, and a commit syncs at checkpoints.
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    Ok(conn)
}

/// The writer's connection: as any, but it never checkpoints on commit ([`Checkpoints`] does).
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// `BEGIN IMMEDIATE`, on this thread when the write lock is free (the attempt does not wait);
/// when another process holds it, waited for off the async thread, up to the busy timeout.
fn begin_immediate(conn: &Connection) -> Result<()> {
    let begin = |conn: &Connection| conn.execute_batch("BEGIN IMMEDIATE").map_err(write_error);
    without_waiting(conn, begin).unwrap_or_else(|| blocking(|| begin(conn)))
}

/// Checkpoints of the writer's log, each on a blocking thread and a connection of their own, so
/// that neither a commit nor the writers queued behind it wait for one: a passive checkpoint
/// every [`CHECKPOINT_EVERY`] commits and after every set-wide one, one at a time, writers going
/// on meanwhile (WAL lets them).
struct Checkpoints {
    path: PathBuf,
    commits: AtomicU32,
    /// A checkpoint is due; the one running (if any) runs again before it stops.
    requested: AtomicBool,
    running: AtomicBool,
    /// The last checkpoint copied the whole log back: the next commit restarts it, and syncs.
    log_copied: AtomicBool,
    connection: std::sync::Mutex<Kept>,
}

impl Checkpoints {
    fn new(path: PathBuf) -> Self {
        Checkpoints {
            path,
            commits: AtomicU32::new(0),
            requested: AtomicBool::new(false),
            running: AtomicBool::new(false),
            log_copied: AtomicBool::new(false),
            connection: std::sync::Mutex::new(None),
        }
    }

    /// Counts a commit (`large`: a set-wide one); starts a checkpoint when one is due.
    fn committed(self: &Arc<Self>, large: bool) {
        let count = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if large || count >= CHECKPOINT_EVERY {
            self.commits.store(0, Ordering::Relaxed);
            self.requested.store(true, Ordering::SeqCst);
            self.start();
        }
    }

    fn start(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return; // the running one sees the request
        }
        let running = Running {
            checkpoints: self.clone(),
            handed_on: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || running.work())),
            Err(_) => running.work(),
        }
    }

    fn checkpoint(&self) {
        let mut kept = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if kept
            .as_ref()
            .is_none_or(|(_, opened)| opened.elapsed() >= CONNECTION_LIFETIME)
        {
            *kept = match open(&self.path) {
                Ok(conn) => Some((conn, Instant::now())),
                Err(error) => {
                    tracing::warn!(%error, "cannot open SQLite to checkpoint its log; the next commits try again");
                    return;
                }
            };
        }
        let Some((conn, _)) = kept.as_ref() else {
            return;
        };
        // (busy, frames in the log, frames copied back); busy when another checkpoint runs.
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match checkpoint {
            Ok((frames, copied)) => {
                tracing::trace!(frames, copied, "SQLite checkpoint");
                if frames > 0 && frames == copied {
                    self.log_copied.store(true, Ordering::Release);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "an SQLite checkpoint failed; the next commits try again");
                *kept = None;
            }
        }
    }
}

/// The turn of the one checkpointer running; lets it go when dropped, so a checkpoint that
/// panicked or never ran (a runtime shutting down) does not stop the later ones.
struct Running {
    checkpoints: Arc<Checkpoints>,
    /// It ended its turn itself.
    handed_on: bool,
}

impl Running {
    fn work(mut self) {
        let checkpoints = self.checkpoints.clone();
        loop {
            while checkpoints.requested.swap(false, Ordering::SeqCst) {
                checkpoints.checkpoint();
            }
            checkpoints.running.store(false, Ordering::SeqCst);
            // Asked for after the last look by a commit that saw this one running: run again,
            // unless another has started meanwhile.
            if !checkpoints.requested.load(Ordering::SeqCst)
                || checkpoints.running.swap(true, Ordering::SeqCst)
            {
                self.handed_on = true;
                return;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.handed_on {
            self.checkpoints.running.store(false, Ordering::SeqCst);
        }
    }
}

/// One open write transaction; rolled back if dropped uncommitted. The next writer's turn comes
/// when it is dropped.
pub struct DirectWrite {
    turn: OwnedMutexGuard<Kept>,
    open: bool,
    /// Its work may be long ([`Reach::SetWide`]): it runs off the async thread.
    set_wide: bool,
    checkpoints: Arc<Checkpoints>,
}

impl DirectWrite {
    fn connection(&self) -> &Connection {
        &self
            .turn
            .as_ref()
            .expect("opened before the transaction began")
            .0
    }

    /// Runs `work` here for a transaction by key, off the async thread for a set-wide one (or
    /// when `may_wait`).
    fn run<T>(&self, may_wait: bool, work: impl FnOnce(&Connection) -> T) -> T {
        let conn = self.connection();
        if self.set_wide || may_wait {
            blocking(|| work(conn))
        } else {
            work(conn)
        }
    }
}

#[async_trait]
impl Transaction for DirectWrite {
    /// Reads, and writes that return rows (an account's `INSERT … RETURNING`).
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        self.run(false, |conn| {
            read_mapping(conn, &statement, decode, write_error)
        })
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        self.run(false, |conn| {
            if statement.params.is_empty() {
                // A sync's or a schema's statements: run once each, not worth keeping.
                conn.execute_batch(&statement.sql)
            } else {
                let params = statement.params.iter().map(Bound);
                let mut prepared = conn.prepare_cached(&statement.sql)?;
                prepared
                    .execute(rusqlite::params_from_iter(params))
                    .map(drop)
            }
        })
        .map_err(write_error)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        // The first commit after a checkpoint copied the whole log back restarts it, and syncs.
        let restarts_log = self.checkpoints.log_copied.swap(false, Ordering::AcqRel);
        self.run(restarts_log, |conn| conn.execute_batch("COMMIT"))
            .map_err(write_error)?;
        self.open = false;
        self.checkpoints.committed(self.set_wide);
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
    use std::time::Duration;

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

        let mut tx = Box::new(writes.begin(Reach::ByKey).await.unwrap().unwrap());
        tx.execute(insert(1)).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = writes.begin(Reach::ByKey).await.unwrap().unwrap();
        tx.execute(insert(2)).await.unwrap();
        drop(tx); // uncommitted: rolled back, and the next writer's turn comes

        let mut tx = writes.begin(Reach::ByKey).await.unwrap().unwrap();
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
        let first = writes.begin(Reach::ByKey).await.unwrap().unwrap();
        let second = tokio::spawn({
            let writes = writes.clone();
            async move { writes.begin(Reach::ByKey).await.unwrap().map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the second writer began while the first was open"
        );
        drop(first);
        second.await.unwrap().unwrap();
    }

    fn text_row(id: i64, bytes: usize) -> Statement {
        statement(
            "INSERT INTO t (id, v) VALUES (?, ?)",
            vec![Value::Integer(id), Value::Text("x".repeat(bytes))],
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_for_another_process_holding_the_write_lock() {
        let database = Database::new("busy");
        let writes = SqliteWrites::new(database.0.clone());
        let (held, is_held) = std::sync::mpsc::channel();
        let path = database.0.clone();
        // Another process's write (an import's swap), as SQLite sees it: another connection.
        let other = std::thread::spawn(move || {
            let conn = Connection::open(path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (id, v) VALUES (1, 'theirs')")
                .unwrap();
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            conn.execute_batch("COMMIT").unwrap();
        });
        is_held.recv().unwrap();

        // Its first attempt does not wait; the second waits (off the async thread) and begins.
        let mut tx = Box::new(writes.begin(Reach::ByKey).await.unwrap().unwrap());
        let busy_timeout: i64 = tx
            .connection()
            .query_row("PRAGMA busy_timeout", [], |row| row.get(0))
            .unwrap();
        assert_eq!(busy_timeout, 10_000, "the busy timeout was not restored");
        tx.execute(text_row(2, 3)).await.unwrap();
        tx.commit().await.unwrap();
        other.join().unwrap();
        let conn = Connection::open(&database.0).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    async fn checkpoint_ended(writes: &SqliteWrites) {
        for _ in 0..500 {
            if !writes.checkpoints.running.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the checkpoint did not end within 5 s");
    }

    #[tokio::test]
    async fn commits_leave_checkpoints_to_a_thread_of_their_own() {
        let database = Database::new("checkpoints");
        let writes = SqliteWrites::new(database.0.clone());
        let file_size = || std::fs::metadata(&database.0).unwrap().len();
        let before = file_size();
        let commit = |id: i64, bytes: usize| {
            let writes = &writes;
            async move {
                let mut tx = Box::new(writes.begin(Reach::ByKey).await.unwrap().unwrap());
                tx.execute(text_row(id, bytes)).await.unwrap();
                tx.commit().await.unwrap();
            }
        };

        // 1,500 pages of log, past SQLite's own auto-checkpoint (1,000): the writer does not
        // copy them back to the database file.
        for id in 0..10 {
            commit(id, 600_000).await;
        }
        assert_eq!(file_size(), before, "a commit checkpointed");

        // The commit that makes a checkpoint due starts one, on a blocking thread.
        for id in 10..i64::from(CHECKPOINT_EVERY) {
            commit(id, 10).await;
        }
        checkpoint_ended(&writes).await;
        let checkpointed = file_size();
        assert!(
            checkpointed > before + 6_000_000,
            "the checkpoint did not copy the log back"
        );

        // A set-wide transaction (a sync's) is checkpointed after its commit, however few.
        let mut tx = Box::new(writes.begin(Reach::SetWide).await.unwrap().unwrap());
        tx.execute(statement(
            "INSERT INTO t (id, v) SELECT id + 1000, v FROM t WHERE id < 10",
            vec![],
        ))
        .await
        .unwrap();
        tx.commit().await.unwrap();
        checkpoint_ended(&writes).await;
        assert!(
            file_size() > checkpointed + 5_000_000,
            "a set-wide commit was not checkpointed"
        );
    }
}
