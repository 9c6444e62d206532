//! MySQL and MariaDB: bulk import with multi-row `INSERT`s into `<table>__import` (keyed, no
//! secondary indexes), one `ALTER TABLE` that builds every index in one pass, then one atomic
//! `RENAME TABLE` that swaps the staged tables in.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions,
    MySqlRow,
};
use sqlx::{Arguments as _, AssertSqlSafe, ConnectOptions as _, Connection as _, Row as _};
use tokio::sync::mpsc;

use super::sql::{self, Decode, Dialect, Placement, Statement};
use super::store::{Driver, Transaction, forward_rows};
use super::{ImportSink, Result, Row, StorageError};
use crate::datasets::{ColumnType, Dataset, Value};

/// A prepared statement takes at most 65,535 parameters; a few thousand rows per `INSERT` is
/// where the gain from fewer round trips levels off.
const MAX_PARAMS_PER_INSERT: usize = 16_000;
const STAGING_SUFFIX: &str = "__import";
/// The live tables are renamed to this during the swap, then dropped.
const RETIRED_SUFFIX: &str = "__retired";
/// MySQL's "duplicate key name": the index a `CREATE INDEX` asks for exists already.
const ER_DUP_KEYNAME: u16 = 1061;

/// Connections in the pool.
const POOL_SIZE: usize = 10;

pub struct MySqlDriver {
    pool: MySqlPool,
    options: MySqlConnectOptions,
}

impl MySqlDriver {
    /// `mysql://` or `mariadb://` (the same protocol).
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let url = match url.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => url.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url)
            .context("DATABASE_URL is not a valid MySQL URL (e.g. mysql://user@host:3306/db)")?
            // Sessions in UTC, so DATETIME columns hold UTC; utf8mb4 for every character.
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4")
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30));
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE as u32)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        Ok(MySqlDriver { pool, options })
    }
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

fn arguments(params: Vec<Value>) -> MySqlArguments {
    let mut arguments = MySqlArguments::default();
    for value in params {
        bind(&mut arguments, value);
    }
    arguments
}

fn decode_row(row: &MySqlRow, decode: &[Decode]) -> Result<Row> {
    decode
        .iter()
        .enumerate()
        .map(|(i, d)| decode_value(row, i, d))
        .collect()
}

fn decode_value(row: &MySqlRow, i: usize, decode: &Decode) -> Result<Value> {
    // Text in `utf8mb4_bin` is flagged binary by the server, which sqlx's type check reads as
    // VARBINARY: the bytes are UTF-8 all the same, so they are checked here instead.
    let text = |row: &MySqlRow| -> Result<Option<String>> {
        match row.try_get_unchecked::<Option<Vec<u8>>, _>(i)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|e| StorageError::Decode {
                    column: i.to_string(),
                    reason: e.to_string(),
                }),
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

/// Whether the error says the index exists already (MySQL has no `CREATE INDEX IF NOT EXISTS`).
fn is_duplicate_index(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| e.number() == ER_DUP_KEYNAME))
}

async fn run(conn: &mut MySqlConnection, statement: String) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Driver for MySqlDriver {
    const NAME: &'static str = "mysql";
    const POOL_SIZE: usize = POOL_SIZE;
    const DIALECT: Dialect = Dialect::MySql;

    async fn fetch(&self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    fn stream(
        &self,
        statement: Statement,
        decode: Vec<Decode>,
        sender: mpsc::Sender<Result<Vec<Row>>>,
    ) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let query = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params));
            forward_rows(query.fetch(&pool), |row| decode_row(row, &decode), sender).await;
        });
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        match sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
        {
            Err(error) if is_duplicate_index(&error) => Ok(()),
            result => result.map(drop).map_err(Into::into),
        }
    }

    async fn table_columns(&self, table: &str) -> Result<Option<Vec<String>>> {
        let rows = sqlx::query(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        let names = rows
            .iter()
            .map(|row| decode_value(row, 0, &Decode::Scalar(ColumnType::Text)))
            .filter_map(|value| match value {
                Ok(Value::Text(name)) => Some(Ok(name)),
                Ok(_) => None,
                Err(error) => Some(Err(error)),
            })
            .collect::<Result<Vec<String>>>()?;
        Ok((!names.is_empty()).then_some(names))
    }

    async fn begin_write(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(MySqlWrite(self.pool.begin().await?)))
    }

    async fn begin_import(&self, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
        // A connection of its own holds a named lock for the whole import: two imports of one
        // dataset would share the staging tables, and the lock dies with the connection if this
        // process does. (Lock names are server-wide, hence the database in the hashed name.)
        let mut conn = MySqlConnection::connect_with(&self.options).await?;
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(SHA1(CONCAT(DATABASE(), '.', ?)), 0)")
                .bind(&dataset.table)
                .fetch_one(&mut conn)
                .await?;
        if locked != Some(1) {
            return Err(StorageError::ImportRunning(dataset.name.clone()));
        }
        // Keys are unique already (the importer checks), so InnoDB need not check them again.
        // The swap waits at most 30 s for readers and writers of the live tables (the default
        // is a year, and every new reader would queue behind it).
        run(
            &mut conn,
            "SET SESSION unique_checks = 0, lock_wait_timeout = 30".to_owned(),
        )
        .await?;
        let staging = Placement {
            schema: None,
            suffix: STAGING_SUFFIX,
        };
        // Tables left by an import that died are stale: start afresh. The staged tables have
        // their primary key (InnoDB stores rows in key order) but no other index yet.
        for statement in sql::drop_tables(dataset, Dialect::MySql, &staging) {
            run(&mut conn, statement).await?;
        }
        for statement in sql::create_tables(dataset, Dialect::MySql, &staging, true) {
            run(&mut conn, statement).await?;
        }
        Ok(Box::new(MySqlImport {
            conn,
            dataset: Arc::new(dataset.clone()),
            staging,
        }))
    }
}

struct MySqlImport {
    conn: MySqlConnection,
    dataset: Arc<Dataset>,
    staging: Placement,
}

impl MySqlImport {
    /// Multi-row `INSERT ... VALUES (...), (...)` (the staged tables are invisible until the
    /// swap, so nothing half-loaded can be read).
    async fn insert(
        &mut self,
        table: &str,
        columns: &[String],
        values: Vec<Vec<Value>>,
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let quoted: Vec<String> = columns.iter().map(|c| Dialect::MySql.quote(c)).collect();
        let tuple = format!("({})", vec!["?"; columns.len()].join(","));
        let per_statement = (MAX_PARAMS_PER_INSERT / columns.len()).max(1);
        let head = format!(
            "INSERT INTO {} ({}) VALUES ",
            self.staging.table(Dialect::MySql, table),
            quoted.join(",")
        );
        for chunk in values.chunks(per_statement) {
            let mut sql = String::with_capacity(head.len() + chunk.len() * (tuple.len() + 1));
            sql.push_str(&head);
            let mut args = MySqlArguments::default();
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&tuple);
                for value in row {
                    bind(&mut args, value.clone());
                }
            }
            sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    /// Drops the staged tables and ends the connection, which releases the import lock.
    async fn discard(mut self) -> Result<()> {
        for statement in sql::drop_tables(&self.dataset, Dialect::MySql, &self.staging) {
            run(&mut self.conn, statement).await?;
        }
        self.conn.close().await?;
        Ok(())
    }

    /// Every index of the staged tables, one `ALTER TABLE` per table: InnoDB reads the table
    /// once and sorts each index, instead of updating them row by row during the load.
    async fn build_indexes(&mut self) -> Result<()> {
        let indexes = sql::indexes(&self.dataset, Dialect::MySql);
        for table in sql::tables(&self.dataset) {
            let additions: Vec<String> = indexes
                .iter()
                .filter(|index| index.table == table)
                .map(|index| {
                    format!(
                        "ADD INDEX {} {}",
                        Dialect::MySql.quote(&index.name),
                        sql::index_columns(Dialect::MySql, index)
                    )
                })
                .collect();
            if additions.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let statement = format!(
                "ALTER TABLE {} {}",
                self.staging.table(Dialect::MySql, &table),
                additions.join(", ")
            );
            run(&mut self.conn, statement).await?;
            tracing::debug!(%table, elapsed_ms = started.elapsed().as_millis() as u64, "import indexes built");
        }
        Ok(())
    }
}

#[async_trait]
impl ImportSink for MySqlImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
        let names: Vec<String> = stored
            .iter()
            .map(|&c| sql::stored_name(&dataset, c))
            .collect();
        let values = rows
            .iter()
            .map(|row| {
                stored
                    .iter()
                    .map(|&c| sql::stored_value(&dataset, row, c))
                    .collect()
            })
            .collect();
        // One transaction per batch: one redo-log flush per batch, not one per statement.
        run(&mut self.conn, "START TRANSACTION".to_owned()).await?;
        self.insert(&dataset.table, &names, values).await?;
        let list_columns: Vec<String> = sql::LIST_TABLE_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (index, column) in dataset.list_columns() {
            let elements = rows
                .iter()
                .flat_map(|row| sql::list_elements(row, dataset.key.column, index))
                .map(|(key, value, value_key)| {
                    vec![
                        key.clone(),
                        Value::Text(value.to_owned()),
                        Value::Text(value_key),
                    ]
                })
                .collect();
            self.insert(&dataset.list_table(column), &list_columns, elements)
                .await?;
        }
        // On an error the connection is dropped with the import, which rolls back.
        run(&mut self.conn, "COMMIT".to_owned()).await
    }

    /// Indexes on the staged tables (readers are not affected), then one `RENAME TABLE` that
    /// swaps every table of the dataset at once: a reader sees the old rows or the new ones.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Err(error) = self.build_indexes().await {
            self.discard().await?;
            return Err(error);
        }
        let dataset = Arc::clone(&self.dataset);
        // RENAME needs a live table to move aside: a first import has none yet.
        let live = Placement::default();
        for statement in sql::create_tables(&dataset, Dialect::MySql, &live, true) {
            run(&mut self.conn, statement).await?;
        }
        let retired = Placement {
            schema: None,
            suffix: RETIRED_SUFFIX,
        };
        for statement in sql::drop_tables(&dataset, Dialect::MySql, &retired) {
            run(&mut self.conn, statement).await?;
        }
        let q = |placement: &Placement, table: &str| placement.table(Dialect::MySql, table);
        let renames: Vec<String> = sql::tables(&dataset)
            .iter()
            .flat_map(|table| {
                [
                    format!("{} TO {}", q(&live, table), q(&retired, table)),
                    format!("{} TO {}", q(&self.staging, table), q(&live, table)),
                ]
            })
            .collect();
        run(
            &mut self.conn,
            format!("RENAME TABLE {}", renames.join(", ")),
        )
        .await?;
        // The new rows are live: what follows is cleanup, and its failure is only logged (the
        // next import drops leftover tables).
        for statement in sql::drop_tables(&dataset, Dialect::MySql, &retired) {
            if let Err(error) = run(&mut self.conn, statement).await {
                tracing::warn!(dataset = %dataset.name, %error, "could not drop the replaced tables");
            }
        }
        let _ = self.conn.close().await;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}

/// A write transaction; sqlx rolls it back if it is dropped uncommitted.
struct MySqlWrite(sqlx::Transaction<'static, MySql>);

#[async_trait]
impl Transaction for MySqlWrite {
    async fn fetch(&mut self, statement: Statement, decode: &[Decode]) -> Result<Vec<Row>> {
        let rows = sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(|row| decode_row(row, decode)).collect()
    }

    async fn execute(&mut self, statement: Statement) -> Result<()> {
        sqlx::query_with(AssertSqlSafe(statement.sql), arguments(statement.params))
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}
