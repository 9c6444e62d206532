//! The table of synced sources, `smartcache_sources`: for each dataset whose declaration names a
//! blob, the version of that blob last imported by the `SyncDatasets` timer. Kept in the same
//! database as the rows it describes, so the two cannot disagree after a restore or a move to
//! another instance; one row per dataset, upserted.

use chrono::{DateTime, Utc};

use super::Row;
use super::sql::{Decode, Dialect, Statement};
use super::users::in_dialect;
use crate::datasets::{ColumnType, Value};

/// The table's name; dataset declarations may not use it (see `datasets`).
pub const SOURCES_TABLE: &str = "smartcache_sources";

/// A blob's version as it was when its dataset was last synced from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceVersion {
    /// The blob's URL without its query (a SAS is never stored): a declaration that names
    /// another blob syncs again, whatever the ETags.
    pub blob: String,
    pub etag: String,
    pub last_modified: Option<String>,
    pub synced_at: DateTime<Utc>,
}

const COLUMNS: &str = "\"dataset\", \"blob_url\", \"etag\", \"last_modified\", \"synced_at\"";

/// Creates the table if it is missing (one statement).
pub fn create_table(dialect: Dialect) -> String {
    let columns = match dialect {
        Dialect::Sqlite => {
            "\"dataset\" TEXT PRIMARY KEY, \"blob_url\" TEXT NOT NULL, \"etag\" TEXT NOT NULL, \
             \"last_modified\" TEXT, \"synced_at\" TEXT NOT NULL"
        }
        Dialect::Postgres => {
            "\"dataset\" TEXT PRIMARY KEY, \"blob_url\" TEXT NOT NULL, \"etag\" TEXT NOT NULL, \
             \"last_modified\" TEXT, \"synced_at\" TIMESTAMPTZ NOT NULL"
        }
        // Dataset names are at most 48 characters; ETags and HTTP dates are short.
        Dialect::MySql => {
            "\"dataset\" VARCHAR(128) NOT NULL PRIMARY KEY, \"blob_url\" VARCHAR(2048) NOT NULL, \
             \"etag\" VARCHAR(512) NOT NULL, \"last_modified\" VARCHAR(64), \
             \"synced_at\" DATETIME(6) NOT NULL"
        }
        Dialect::SqlServer => {
            "\"dataset\" NVARCHAR(128) NOT NULL PRIMARY KEY, \"blob_url\" NVARCHAR(2048) NOT NULL, \
             \"etag\" NVARCHAR(512) NOT NULL, \"last_modified\" NVARCHAR(64), \
             \"synced_at\" DATETIMEOFFSET NOT NULL"
        }
    };
    in_dialect(
        dialect,
        super::sql::create_table_if_missing(dialect, &format!("\"{SOURCES_TABLE}\""), columns),
    )
}

fn placeholders(dialect: Dialect, count: usize) -> Vec<String> {
    (1..=count).map(|n| dialect.placeholder(n)).collect()
}

/// The recorded version of `dataset`'s source (no row before its first sync).
pub fn find(dataset: &str, dialect: Dialect) -> Statement {
    let p = &placeholders(dialect, 1)[0];
    Statement {
        sql: in_dialect(
            dialect,
            format!("SELECT {COLUMNS} FROM \"{SOURCES_TABLE}\" WHERE \"dataset\" = {p}"),
        ),
        params: vec![Value::Text(dataset.to_owned())],
    }
}

/// Inserts `dataset`'s version, or replaces the one recorded: `ON CONFLICT` (SQLite,
/// PostgreSQL), `ON DUPLICATE KEY` (MySQL, MariaDB), and in T-SQL an update of the row, locked
/// to the end of the transaction (even if missing, by the range lock), then an insert if there
/// was none: two recorders of one new dataset cannot both insert.
pub fn upsert(dataset: &str, version: &SourceVersion, dialect: Dialect) -> Statement {
    let p = placeholders(dialect, 5);
    let params = vec![
        Value::Text(dataset.to_owned()),
        Value::Text(version.blob.clone()),
        Value::Text(version.etag.clone()),
        version
            .last_modified
            .clone()
            .map_or(Value::Null, Value::Text),
        Value::Timestamp(version.synced_at),
    ];
    let values = p.join(", ");
    let insert = format!("INSERT INTO \"{SOURCES_TABLE}\" ({COLUMNS}) VALUES ({values})");
    let updated = ["blob_url", "etag", "last_modified", "synced_at"];
    let sql = match dialect {
        Dialect::Sqlite | Dialect::Postgres => {
            let set: Vec<String> = updated
                .iter()
                .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
                .collect();
            format!(
                "{insert} ON CONFLICT (\"dataset\") DO UPDATE SET {}",
                set.join(", ")
            )
        }
        // `VALUES(col)`: deprecated in MySQL 8.0.20 but still there, and the only spelling
        // MariaDB knows.
        Dialect::MySql => {
            let set: Vec<String> = updated
                .iter()
                .map(|c| format!("\"{c}\" = VALUES(\"{c}\")"))
                .collect();
            format!("{insert} ON DUPLICATE KEY UPDATE {}", set.join(", "))
        }
        Dialect::SqlServer => {
            let set: Vec<String> = updated
                .iter()
                .zip(&p[1..])
                .map(|(c, placeholder)| format!("\"{c}\" = {placeholder}"))
                .collect();
            format!(
                "UPDATE \"{SOURCES_TABLE}\" WITH (UPDLOCK, SERIALIZABLE) SET {} \
                 WHERE \"dataset\" = {}; IF @@ROWCOUNT = 0 {insert}",
                set.join(", "),
                p[0]
            )
        }
    };
    Statement {
        sql: in_dialect(dialect, sql),
        params,
    }
}

pub fn decode() -> Vec<Decode> {
    [
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Timestamp,
    ]
    .into_iter()
    .map(Decode::Scalar)
    .collect()
}

/// A decoded row of [`decode`]'s shape as a version (the dataset's name dropped).
pub fn record(row: Row) -> Option<SourceVersion> {
    let mut values = row.into_iter().skip(1);
    let mut next = || values.next().unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::Text(s) => Some(s),
        _ => None,
    };
    let blob = text(next())?;
    let etag = text(next())?;
    let last_modified = text(next());
    let Value::Timestamp(synced_at) = next() else {
        return None;
    };
    Some(SourceVersion {
        blob,
        etag,
        last_modified,
        synced_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> SourceVersion {
        SourceVersion {
            blob: "https://acct.blob.core.windows.net/data/movies.csv.gz".into(),
            etag: "\"0x8DC0FFEE\"".into(),
            last_modified: None,
            synced_at: Utc::now(),
        }
    }

    #[test]
    fn each_dialect_upserts_with_every_value_a_parameter() {
        let sqlite = upsert("movies", &version(), Dialect::Sqlite);
        assert_eq!(
            sqlite.sql,
            "INSERT INTO \"smartcache_sources\" (\"dataset\", \"blob_url\", \"etag\", \
             \"last_modified\", \"synced_at\") VALUES (?, ?, ?, ?, ?) ON CONFLICT (\"dataset\") \
             DO UPDATE SET \"blob_url\" = excluded.\"blob_url\", \"etag\" = excluded.\"etag\", \
             \"last_modified\" = excluded.\"last_modified\", \"synced_at\" = excluded.\"synced_at\""
        );
        assert_eq!(sqlite.params.len(), 5);
        assert_eq!(sqlite.params[3], Value::Null);
        let postgres = upsert("movies", &version(), Dialect::Postgres);
        assert!(
            postgres
                .sql
                .contains("VALUES ($1, $2, $3, $4, $5) ON CONFLICT"),
            "{}",
            postgres.sql
        );
        let mysql = upsert("movies", &version(), Dialect::MySql);
        assert!(
            mysql
                .sql
                .starts_with("INSERT INTO `smartcache_sources` (`dataset`, `blob_url`,"),
            "{}",
            mysql.sql
        );
        assert!(
            mysql
                .sql
                .ends_with("ON DUPLICATE KEY UPDATE `blob_url` = VALUES(`blob_url`), `etag` = VALUES(`etag`), `last_modified` = VALUES(`last_modified`), `synced_at` = VALUES(`synced_at`)"),
            "{}",
            mysql.sql
        );
        let mssql = upsert("movies", &version(), Dialect::SqlServer);
        assert_eq!(
            mssql.sql,
            "UPDATE [smartcache_sources] WITH (UPDLOCK, SERIALIZABLE) SET [blob_url] = @P2, \
             [etag] = @P3, [last_modified] = @P4, [synced_at] = @P5 WHERE [dataset] = @P1; \
             IF @@ROWCOUNT = 0 INSERT INTO [smartcache_sources] ([dataset], [blob_url], [etag], \
             [last_modified], [synced_at]) VALUES (@P1, @P2, @P3, @P4, @P5)"
        );
        for dialect in [Dialect::MySql, Dialect::SqlServer] {
            assert!(!upsert("m", &version(), dialect).sql.contains('"'));
            assert!(!create_table(dialect).contains('"'), "{dialect:?}");
        }
    }

    #[test]
    fn a_found_row_reads_back_as_the_version() {
        let st = find("movies", Dialect::SqlServer);
        assert_eq!(
            st.sql,
            "SELECT [dataset], [blob_url], [etag], [last_modified], [synced_at] \
             FROM [smartcache_sources] WHERE [dataset] = @P1"
        );
        let recorded = version();
        let row = vec![
            Value::Text("movies".into()),
            Value::Text(recorded.blob.clone()),
            Value::Text(recorded.etag.clone()),
            Value::Null,
            Value::Timestamp(recorded.synced_at),
        ];
        assert_eq!(record(row), Some(recorded));
        assert_eq!(decode().len(), 5);
    }
}
