//! The four SQL dialects: how each quotes, numbers its parameters and types its columns, and the
//! limits of what its indexes can hold.

use crate::datasets::{Column, ColumnType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// SQL Server and Azure SQL (T-SQL): `[brackets]`, `@P1` parameters, `OFFSET … FETCH`.
    SqlServer,
    /// MySQL and MariaDB: `` `backticks` ``, `?` parameters, InnoDB tables in `utf8mb4`.
    MySql,
}

/// Text columns SQL Server can index: an index key holds at most 1,700 bytes (850 UTF-16
/// characters); 450 leaves room for the key column after it.
pub const SQL_SERVER_INDEXABLE_CHARS: usize = 450;

/// MySQL's longest normalised key (an index key holds at most 3,072 bytes, 4 per character in
/// `utf8mb4`), and the longest declared text kept as `VARCHAR`: longer text is `MEDIUMTEXT` and
/// indexed by its first [`MYSQL_INDEX_PREFIX_CHARS`] characters.
pub const MYSQL_KEY_CHARS: usize = 512;
pub const MYSQL_INDEX_PREFIX_CHARS: usize = 255;

impl Dialect {
    pub fn quote(self, ident: &str) -> String {
        let mut quoted = String::with_capacity(ident.len() + 2);
        self.push_quoted(&mut quoted, ident);
        quoted
    }

    /// [`Dialect::quote`] onto the end of `sql` (statements quote every column they name).
    pub fn push_quoted(self, sql: &mut String, ident: &str) {
        debug_assert!(
            ident
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        );
        let (open, close) = match self {
            Dialect::SqlServer => ('[', ']'),
            Dialect::MySql => ('`', '`'),
            _ => ('"', '"'),
        };
        sql.push(open);
        sql.push_str(ident);
        sql.push(close);
    }

    pub(crate) fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite | Dialect::MySql => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
            Dialect::SqlServer => format!("@P{n}"),
        }
    }

    /// The type of normalised keys (hidden `__key` and list `value_key` columns): compared for
    /// equality only, so byte order is enough, and much faster to index than a locale's order.
    pub fn key_text_type(self) -> &'static str {
        match self {
            Dialect::Sqlite => "TEXT",
            Dialect::Postgres => "TEXT COLLATE \"C\"",
            Dialect::SqlServer => "NVARCHAR(450) COLLATE Latin1_General_100_BIN2",
            Dialect::MySql => "VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        }
    }

    /// The longest text this engine's indexes take, for the value rules (see `declared_type`
    /// and `key_text_type`).
    pub fn engine_rules(self) -> crate::datasets::rules::EngineRules {
        let (indexed, sorted) = match self {
            Dialect::Sqlite | Dialect::Postgres => (None, None),
            Dialect::MySql => (Some(MYSQL_KEY_CHARS), None),
            Dialect::SqlServer => (
                Some(SQL_SERVER_INDEXABLE_CHARS),
                Some(SQL_SERVER_INDEXABLE_CHARS),
            ),
        };
        crate::datasets::rules::EngineRules {
            indexed_text_chars: indexed,
            sorted_text_chars: sorted,
            counts_utf16_units: self == Dialect::SqlServer,
        }
    }

    /// The type of a declared column. SQL Server cannot index `NVARCHAR(MAX)`: text that is
    /// sorted, or short by declaration, gets a bounded type there.
    pub fn declared_type(self, column: &Column) -> String {
        let bounded_text = column.ty == ColumnType::Text && !column.is_list();
        if self == Dialect::MySql && bounded_text {
            // VARCHAR counts against the 64 KiB row limit, so only short text is VARCHAR.
            return match column.max_length {
                Some(n) if n <= MYSQL_KEY_CHARS => format!("VARCHAR({n})"),
                _ => "MEDIUMTEXT".to_owned(),
            };
        }
        if self != Dialect::SqlServer || !bounded_text {
            return self.column_type(column.ty).to_owned();
        }
        match column.max_length {
            Some(n) if n <= 4000 => format!("NVARCHAR({n})"),
            _ if column.sortable => format!("NVARCHAR({SQL_SERVER_INDEXABLE_CHARS})"),
            _ => "NVARCHAR(MAX)".to_owned(),
        }
    }

    pub fn column_type(self, ty: ColumnType) -> &'static str {
        match (self, ty) {
            (Dialect::SqlServer, ColumnType::Text) => "NVARCHAR(MAX)",
            (Dialect::SqlServer, ColumnType::Integer) => "BIGINT",
            (Dialect::SqlServer, ColumnType::Float) => "FLOAT",
            (Dialect::SqlServer, ColumnType::Boolean) => "BIT",
            (Dialect::SqlServer, ColumnType::Date) => "DATE",
            (Dialect::SqlServer, ColumnType::Timestamp) => "DATETIMEOFFSET",
            (Dialect::MySql, ColumnType::Text) => "MEDIUMTEXT",
            (Dialect::MySql, ColumnType::Integer) => "BIGINT",
            (Dialect::MySql, ColumnType::Float) => "DOUBLE",
            (Dialect::MySql, ColumnType::Boolean) => "BOOLEAN",
            (Dialect::MySql, ColumnType::Date) => "DATE",
            // Kept in UTC (the driver sets the session's time zone); microseconds as elsewhere.
            (Dialect::MySql, ColumnType::Timestamp) => "DATETIME(6)",
            (_, ColumnType::Text) => "TEXT",
            (Dialect::Sqlite, ColumnType::Integer | ColumnType::Boolean) => "INTEGER",
            (Dialect::Sqlite, ColumnType::Float) => "REAL",
            // SQLite keeps dates and timestamps as fixed-width ISO text, which sorts correctly.
            (Dialect::Sqlite, ColumnType::Date | ColumnType::Timestamp) => "TEXT",
            (Dialect::Postgres, ColumnType::Integer) => "BIGINT",
            (Dialect::Postgres, ColumnType::Float) => "DOUBLE PRECISION",
            (Dialect::Postgres, ColumnType::Boolean) => "BOOLEAN",
            (Dialect::Postgres, ColumnType::Date) => "DATE",
            (Dialect::Postgres, ColumnType::Timestamp) => "TIMESTAMPTZ",
        }
    }
}
