//! SQLite's short reads (a page, one row, a count, facets, an account) on connections of our
//! own, run on the calling thread. sqlx runs each SQLite connection on a worker thread: every
//! statement, its rows and its pool's pings cross between threads, and every value is copied out
//! of SQLite before it is decoded. Here a value is decoded straight from SQLite's row, and a
//! prepared statement is kept per connection. Write transactions have a connection of their own
//! (`sqlite_writes`); imports and exports (long streams) stay on sqlx's pool.
//!
//! Only a database in a file is read this way: an in-memory database is private to its
//! connection, so sqlx's pool reads it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, ToSql};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

use super::sql::{Decode, Statement};
use super::sqlite::{date_from_text, date_text, timestamp_from_text, timestamp_text, undecodable};
use super::{Result, Row, StorageError};
use crate::datasets::{ColumnType, Value};

/// Reads that run at once (as sqlx's SQLite pool); more wait their turn, each on its thread.
const CONCURRENT_READS: usize = 4;
/// How long a read waits for its turn before the database counts as unavailable.
const TURN_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per connection: one per shape of question, not per value.
const STATEMENTS_PER_CONNECTION: usize = 64;
/// As sqlx's connections: how long a statement waits for a lock (a WAL reader rarely meets one).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is closed after this long, as sqlx's pool retires its own: a database file
/// replaced on disk (a restore) is then read within minutes, not at the next restart.
pub(super) const CONNECTION_LIFETIME: Duration = Duration::from_secs(10 * 60);

pub struct SqliteReads {
    path: PathBuf,
    read_only: bool,
    idle: Mutex<Vec<(Connection, Instant)>>,
    turns: Semaphore,
}

impl SqliteReads {
    /// Reads of the database file at `path`, or `None` when the URL names one in memory or
    /// options that only sqlx's connections apply (which then read it all).
    pub fn for_url(url: &str, path: &Path) -> Option<Self> {
        direct_file(url, path).map(|read_only| SqliteReads {
            path: path.to_owned(),
            read_only,
            idle: Mutex::new(Vec::new()),
            turns: Semaphore::new(CONCURRENT_READS),
        })
    }

    /// Runs a read statement; `None` when no connection could be opened (the file does not
    /// exist yet: sqlx's pool creates it), for the caller to read through sqlx.
    pub async fn fetch(
        &self,
        statement: &Statement,
        decode: &[Decode],
    ) -> Option<Result<Vec<Row>>> {
        // Bounded like a pool: a burst of slow reads cannot hold every thread of the process.
        let Ok(Ok(_turn)) = tokio::time::timeout(TURN_TIMEOUT, self.turns.acquire()).await else {
            let waited = format!("no SQLite read could start within {TURN_TIMEOUT:?}");
            return Some(Err(StorageError::Unavailable(waited.into())));
        };
        blocking(|| {
            let (conn, opened) = self.connection()?;
            let rows = read(&conn, statement, decode);
            self.give_back(conn, opened);
            Some(rows)
        })
    }

    /// Runs a read of one row by its key (an item, an account), which never scans: on this
    /// thread, with a connection already open, unless SQLite would have it wait (then, or with
    /// none idle, as [`SqliteReads::fetch`] does). Taking it off the thread cost more than the
    /// read itself.
    pub async fn fetch_by_key(
        &self,
        statement: &Statement,
        decode: &[Decode],
    ) -> Option<Result<Vec<Row>>> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some((conn, opened)) = idle {
            let rows = without_waiting(&conn, |conn| read(conn, statement, decode));
            self.give_back(conn, opened);
            if let Some(rows) = rows {
                return Some(rows);
            }
        }
        self.fetch(statement, decode).await
    }

    fn connection(&self) -> Option<(Connection, Instant)> {
        if let Some(kept) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(kept);
        }
        match self.open() {
            Ok(conn) => Some((conn, Instant::now())),
            Err(error) => {
                tracing::debug!(%error, "no direct SQLite connection; reading through sqlx");
                None
            }
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Read-write without create (unless the URL says read-only): a read-only connection
        // cannot always open a WAL database whose shared-memory file is missing. `query_only`
        // keeps it from writing rows.
        let access = if self.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_PER_CONNECTION);
        Ok(conn)
    }

    fn give_back(&self, conn: Connection, opened: Instant) {
        // Connections are opened only for a turn (a read by key takes an idle one), so at most
        // one per turn and one per async thread exist: all are kept until they retire.
        if opened.elapsed() < CONNECTION_LIFETIME {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((conn, opened));
        }
    }
}

/// Whether the database of a sqlx URL (whose file is `path`) can be opened by a connection of
/// our own, and if so whether read-only: a file, with no options that only sqlx's connections
/// apply. An in-memory database is private to its connection; with no file name, SQLite gives
/// each connection a private temporary one.
pub(super) fn direct_file(url: &str, path: &Path) -> Option<bool> {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let plain_mode = |pair: &str| matches!(pair, "mode=rwc" | "mode=rw" | "mode=ro");
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let plain = query.is_empty() || query.split('&').all(plain_mode);
    let file = !path.as_os_str().is_empty();
    (plain && !in_memory && file).then_some(query == "mode=ro")
}

/// Runs a short statement's work where it is asked for. It still blocks: on a multi-threaded
/// runtime the thread's other tasks move to another thread meanwhile; tests' single-threaded
/// runtimes just wait.
pub(super) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Runs `work` with SQLite's busy handler off: `None` if it met a lock (for the caller to run
/// it where it may wait), else what it gave.
pub(super) fn without_waiting<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Option<Result<T>> {
    conn.busy_timeout(Duration::ZERO).ok()?;
    let done = work(conn);
    // Cannot fail (`sqlite3_busy_timeout` always succeeds), and what `work` began (a
    // transaction) must reach the caller.
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match done {
        Err(StorageError::Unavailable(_)) => None,
        done => Some(done),
    }
}

fn read(conn: &Connection, statement: &Statement, decode: &[Decode]) -> Result<Vec<Row>> {
    read_mapping(conn, statement, decode, StorageError::from)
}

/// Runs `statement` and decodes its rows, SQLite's errors told as `sqlite_error` says.
pub(super) fn read_mapping(
    conn: &Connection,
    statement: &Statement,
    decode: &[Decode],
    sqlite_error: fn(rusqlite::Error) -> StorageError,
) -> Result<Vec<Row>> {
    let mut prepared = conn.prepare_cached(&statement.sql).map_err(sqlite_error)?;
    let params = statement.params.iter().map(Bound);
    let mut rows = prepared
        .query(rusqlite::params_from_iter(params))
        .map_err(sqlite_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        let row = decode
            .iter()
            .enumerate()
            .map(|(index, decode)| value(row.get_ref(index).map_err(sqlite_error)?, decode, index))
            .collect::<Result<Row>>()?;
        out.push(row);
    }
    Ok(out)
}

/// A parameter in SQLite's encoding, as `Engine::bind` of sqlx's SQLite binds it.
pub(super) struct Bound<'a>(pub(super) &'a Value);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Owned;
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(Owned::Null),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Integer(i) => ToSqlOutput::Owned(Owned::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Owned(Owned::Real(*f)),
            Value::Boolean(b) => ToSqlOutput::Owned(Owned::Integer(i64::from(*b))),
            Value::Date(d) => ToSqlOutput::Owned(Owned::Text(date_text(d))),
            Value::Timestamp(t) => ToSqlOutput::Owned(Owned::Text(timestamp_text(t))),
            Value::List(items) => ToSqlOutput::Owned(Owned::Text(items.join(","))),
        })
    }
}

/// Column `index` of a row, as `decode` says. Where the stored type differs (only data written
/// outside the service can do that) numbers convert as SQLite converts them, but text in a
/// number or boolean column is an error, where sqlx's unchecked read made it 0.
fn value(stored: ValueRef<'_>, decode: &Decode, index: usize) -> Result<Value> {
    if stored == ValueRef::Null {
        return Ok(Value::Null);
    }
    Ok(match decode {
        Decode::List(delimiter) => Value::parse_list(&text(stored, index)?, delimiter),
        Decode::Scalar(ty) => match ty {
            ColumnType::Text => Value::Text(text(stored, index)?.into_owned()),
            ColumnType::Integer => match stored {
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Integer(f as i64),
                _ => return Err(undecodable(index, "not an integer".into())),
            },
            ColumnType::Float => match stored {
                ValueRef::Real(f) => Value::Float(f),
                ValueRef::Integer(i) => Value::Float(i as f64),
                _ => return Err(undecodable(index, "not a number".into())),
            },
            ColumnType::Boolean => match stored {
                ValueRef::Integer(i) => Value::Boolean(i != 0),
                _ => return Err(undecodable(index, "not a boolean".into())),
            },
            ColumnType::Date => date_from_text(&text(stored, index)?, index)?,
            ColumnType::Timestamp => timestamp_from_text(&text(stored, index)?, index)?,
        },
    })
}

fn text<'a>(stored: ValueRef<'a>, index: usize) -> Result<Cow<'a, str>> {
    match stored {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| undecodable(index, e.to_string())),
        ValueRef::Integer(i) => Ok(Cow::Owned(i.to_string())),
        ValueRef::Real(f) => Ok(Cow::Owned(f.to_string())),
        ValueRef::Null => Ok(Cow::Borrowed("")),
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        let busy = matches!(
            error.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen)
        );
        // Busy or locked past the busy timeout (an import's swap): try again shortly, as
        // sqlx's errors of the same codes say.
        if busy {
            StorageError::Unavailable(error.into())
        } else {
            StorageError::Database(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_databases_in_files_are_read_directly() {
        let path = Path::new("x.db");
        assert!(SqliteReads::for_url("sqlite://x.db", path).is_some());
        assert!(SqliteReads::for_url("sqlite://x.db?mode=rwc", path).is_some());
        assert!(SqliteReads::for_url("sqlite::memory:", path).is_none());
        assert!(SqliteReads::for_url("sqlite://x.db?mode=memory", path).is_none());
        assert!(SqliteReads::for_url("sqlite://x.db?immutable=true", path).is_none());
        assert!(SqliteReads::for_url("sqlite://", Path::new("")).is_none());
        let read_only = SqliteReads::for_url("sqlite://x.db?mode=ro", path).unwrap();
        assert!(read_only.read_only);
    }

    #[test]
    fn values_decode_as_stored_and_as_sqlite_converts_them() {
        let text = Decode::Scalar(ColumnType::Text);
        let integer = Decode::Scalar(ColumnType::Integer);
        let float = Decode::Scalar(ColumnType::Float);
        let list = Decode::List("|".into());
        assert_eq!(
            value(ValueRef::Text(b"Drama"), &text, 0).unwrap(),
            Value::Text("Drama".into())
        );
        assert_eq!(
            value(ValueRef::Integer(7), &text, 0).unwrap(),
            Value::Text("7".into())
        );
        assert_eq!(
            value(ValueRef::Real(2.0), &integer, 0).unwrap(),
            Value::Integer(2)
        );
        assert_eq!(
            value(ValueRef::Integer(3), &float, 0).unwrap(),
            Value::Float(3.0)
        );
        assert_eq!(value(ValueRef::Null, &integer, 0).unwrap(), Value::Null);
        assert_eq!(
            value(ValueRef::Text(b"a|b"), &list, 0).unwrap(),
            Value::parse_list("a|b", "|")
        );
        assert!(value(ValueRef::Text(b"x"), &integer, 3).is_err());
        assert!(value(ValueRef::Text(&[0xff, 0xfe]), &text, 0).is_err());
        let date = Decode::Scalar(ColumnType::Date);
        assert!(value(ValueRef::Text(b"2024-02-30"), &date, 0).is_err());
    }

    #[test]
    fn a_read_that_meets_a_lock_is_handed_back_to_run_where_it_may_wait() {
        let conn = Connection::open_in_memory().unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        let busy_timeout = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA busy_timeout", [], |row| row.get(0))
                .unwrap()
        };
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let waited = without_waiting(&conn, |conn| {
            assert_eq!(busy_timeout(conn), 0, "it would have waited");
            Err::<(), _>(StorageError::from(busy))
        });
        assert!(waited.is_none(), "a busy read was not handed back");
        assert_eq!(
            busy_timeout(&conn),
            10_000,
            "the busy timeout was not restored"
        );
        let failed = without_waiting(&conn, |_| {
            Err::<(), _>(StorageError::Decode {
                column: "c".into(),
                reason: "r".into(),
            })
        });
        assert!(matches!(failed, Some(Err(StorageError::Decode { .. }))));
    }
}
