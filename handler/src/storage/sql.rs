//! SQL text for every statement the service runs, built from the dataset declaration.
//!
//! Identifiers come only from validated declarations (`[a-z][a-z0-9_]*`), so quoting them is
//! enough; every value becomes a bound parameter of the [`Statement`].
//!
//! Storage layout of a dataset `t`:
//! - table `t`: one column per declared column, plus a hidden `<col>__key` (normalised text) for
//!   each filterable text column, so case-insensitive equality uses a plain index everywhere;
//! - table `t__<list>` per list column: `(row_id, value, value_key)`, one row per element, so
//!   "has element" is an indexed lookup and `Docudrama` never matches `drama`.

use std::fmt::Write as _;

use crate::datasets::{Column, ColumnType, Dataset, Value, normalise_text};
use crate::query::{Cursor, FilterOp, Query, Sort};

use super::Row;

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
        debug_assert!(
            ident
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        );
        match self {
            Dialect::SqlServer => format!("[{ident}]"),
            Dialect::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
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

    /// `n` rows at most, after an `ORDER BY`.
    fn limit(self, b: &mut Builder, n: i64) {
        match self {
            Dialect::SqlServer => {
                b.push(" OFFSET 0 ROWS FETCH NEXT ")
                    .bind(Value::Integer(n))
                    .push(" ROWS ONLY");
            }
            _ => {
                b.push(" LIMIT ").bind(Value::Integer(n));
            }
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

/// SQL text and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

/// How to read one result column back into a [`Value`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decode {
    Scalar(ColumnType),
    List(String),
}

impl Decode {
    pub fn of(column: &Column) -> Decode {
        match &column.list_delimiter {
            Some(delimiter) => Decode::List(delimiter.clone()),
            None => Decode::Scalar(column.ty),
        }
    }

    pub fn row(dataset: &Dataset) -> Vec<Decode> {
        dataset.columns.iter().map(Decode::of).collect()
    }
}

/// One column as stored: a declared column or the hidden normalised key of one.
#[derive(Debug, Clone, Copy)]
pub enum StoredColumn {
    Declared(usize),
    NormalisedKey(usize),
}

pub fn stored_columns(dataset: &Dataset) -> Vec<StoredColumn> {
    let declared = (0..dataset.columns.len()).map(StoredColumn::Declared);
    let keys = dataset
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.has_key_column())
        .map(|(i, _)| StoredColumn::NormalisedKey(i));
    declared.chain(keys).collect()
}

pub fn stored_name(dataset: &Dataset, column: StoredColumn) -> String {
    match column {
        StoredColumn::Declared(i) => dataset.columns[i].name.clone(),
        StoredColumn::NormalisedKey(i) => format!("{}__key", dataset.columns[i].name),
    }
}

/// The value stored for `column` of `row`; a list is stored joined with its delimiter.
pub fn stored_value(dataset: &Dataset, row: &Row, column: StoredColumn) -> Value {
    match column {
        StoredColumn::Declared(i) => match (&row[i], &dataset.columns[i].list_delimiter) {
            (Value::List(items), Some(delimiter)) => Value::Text(items.join(delimiter)),
            (value, _) => value.clone(),
        },
        StoredColumn::NormalisedKey(i) => match &row[i] {
            Value::Text(s) => Value::Text(normalise_text(s)),
            _ => Value::Null,
        },
    }
}

pub fn stored_type(dataset: &Dataset, column: StoredColumn, dialect: Dialect) -> String {
    match column {
        StoredColumn::Declared(i) => dialect.declared_type(&dataset.columns[i]),
        StoredColumn::NormalisedKey(_) => dialect.key_text_type().to_owned(),
    }
}

/// `(row_id, value, value_key)` triples of a row's list column, one per distinct element.
pub fn list_elements(row: &Row, key: usize, column: usize) -> Vec<(&Value, &str, String)> {
    let Value::List(items) = &row[column] else {
        return Vec::new();
    };
    let mut seen: Vec<String> = Vec::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let normalised = normalise_text(item);
        if !seen.contains(&normalised) {
            seen.push(normalised.clone());
            out.push((&row[key], item.as_str(), normalised));
        }
    }
    out
}

/// The dataset's main table followed by its list tables.
pub fn tables(dataset: &Dataset) -> Vec<String> {
    let mut tables = vec![dataset.table.clone()];
    tables.extend(dataset.list_columns().map(|(_, c)| dataset.list_table(c)));
    tables
}

pub const LIST_TABLE_COLUMNS: [&str; 3] = ["row_id", "value", "value_key"];

// ---- DDL -------------------------------------------------------------------------------------

/// Where a dataset's tables live: `prefix` qualifies them (a schema), `suffix` renames them (a
/// staging copy).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub schema: Option<String>,
    pub suffix: &'static str,
}

impl Placement {
    pub fn table(&self, dialect: Dialect, base: &str) -> String {
        let name = dialect.quote(&format!("{base}{}", self.suffix));
        match &self.schema {
            Some(schema) => format!("{}.{name}", dialect.quote(schema)),
            None => name,
        }
    }
}

/// `CREATE TABLE` statements for the dataset's main and list tables.
pub fn create_tables(
    dataset: &Dataset,
    dialect: Dialect,
    placement: &Placement,
    primary_key: bool,
) -> Vec<String> {
    let key = dataset.key_column();
    let mut columns = Vec::new();
    for stored in stored_columns(dataset) {
        let (ty, not_null) = match stored {
            StoredColumn::Declared(i) => {
                let c = &dataset.columns[i];
                (dialect.declared_type(c), !c.nullable)
            }
            StoredColumn::NormalisedKey(_) => (dialect.key_text_type().to_owned(), false),
        };
        let name = dialect.quote(&stored_name(dataset, stored));
        let mut def = format!("{name} {ty}");
        if not_null {
            def.push_str(" NOT NULL");
        }
        if primary_key && matches!(stored, StoredColumn::Declared(i) if i == dataset.key.column) {
            def.push_str(" PRIMARY KEY");
        }
        columns.push(def);
    }
    let mut statements = vec![create_table_if_missing(
        dialect,
        &placement.table(dialect, &dataset.table),
        &columns.join(", "),
    )];
    for (_, column) in dataset.list_columns() {
        let q = |name: &str| dialect.quote(name);
        statements.push(create_table_if_missing(
            dialect,
            &placement.table(dialect, &dataset.list_table(column)),
            &format!(
                "{} {} NOT NULL, {} {} NOT NULL, {} {} NOT NULL",
                q("row_id"),
                dialect.declared_type(key),
                q("value"),
                dialect.column_type(ColumnType::Text),
                q("value_key"),
                dialect.key_text_type(),
            ),
        ));
    }
    statements
}

/// `CREATE TABLE IF NOT EXISTS`, which T-SQL spells with `OBJECT_ID`. MySQL tables are InnoDB
/// in `utf8mb4` with byte order, as SQLite compares (the server's defaults vary).
pub(crate) fn create_table_if_missing(dialect: Dialect, table: &str, columns: &str) -> String {
    match dialect {
        Dialect::SqlServer => {
            format!("IF OBJECT_ID(N'{table}', N'U') IS NULL CREATE TABLE {table} ({columns})")
        }
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {table} ({columns}) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        ),
        _ => format!("CREATE TABLE IF NOT EXISTS {table} ({columns})"),
    }
}

/// `DROP TABLE IF EXISTS` for each of the dataset's tables where `placement` puts them (T-SQL
/// checks `OBJECT_ID` first).
pub fn drop_tables(dataset: &Dataset, dialect: Dialect, placement: &Placement) -> Vec<String> {
    tables(dataset)
        .iter()
        .map(|table| {
            let name = placement.table(dialect, table);
            match dialect {
                Dialect::SqlServer => {
                    format!("IF OBJECT_ID(N'{name}', N'U') IS NOT NULL DROP TABLE {name}")
                }
                _ => format!("DROP TABLE IF EXISTS {name}"),
            }
        })
        .collect()
}

/// An index: its name (derived from the final table name) and definition.
#[derive(Debug, Clone)]
pub struct IndexDef {
    pub name: String,
    pub table: String,
    pub columns: Vec<String>,
    /// Columns MySQL can index only by a prefix (`MEDIUMTEXT`, long `VARCHAR`).
    pub prefixed: Vec<String>,
}

/// The indexes that serve the declared filters and sorts. They end with the key, so a filtered
/// or sorted page walks the index in key order without a sort. (In SQLite an integer key is the
/// rowid, which every index ends with already: naming it again would only store it twice.)
pub fn indexes(dataset: &Dataset, dialect: Dialect) -> Vec<IndexDef> {
    let implicit_key = dialect == Dialect::Sqlite && dataset.key_column().ty == ColumnType::Integer;
    let key: Vec<String> = if implicit_key {
        vec![]
    } else {
        vec![dataset.key_column().name.clone()]
    };
    let with_key = |column: String| [vec![column], key.clone()].concat();
    let long_text = |column: &Column| {
        dialect == Dialect::MySql && dialect.declared_type(column).ends_with("TEXT")
    };
    let prefixed: Vec<String> = dataset
        .columns
        .iter()
        .filter(|c| !c.is_list() && long_text(c))
        .map(|c| c.name.clone())
        .collect();
    let mut out = Vec::new();
    let mut add = |table: &str, suffix: &str, columns: Vec<String>| {
        let prefixed = prefixed
            .iter()
            .filter(|p| table == dataset.table && columns.contains(p))
            .cloned()
            .collect();
        out.push(IndexDef {
            name: format!("{table}__{suffix}__idx"),
            table: table.to_owned(),
            columns,
            prefixed,
        })
    };
    for (i, column) in dataset.columns.iter().enumerate() {
        if i == dataset.key.column {
            continue;
        }
        if column.is_list() {
            let table = dataset.list_table(column);
            add(
                &table,
                "value_key",
                vec!["value_key".into(), "row_id".into()],
            );
            add(&table, "row_id", vec!["row_id".into()]);
            continue;
        }
        if column.has_key_column() {
            let key_column = format!("{}__key", column.name);
            add(&dataset.table, &key_column, with_key(key_column.clone()));
        }
        if column.sortable || (column.filterable && !column.has_key_column()) {
            add(&dataset.table, &column.name, with_key(column.name.clone()));
        }
    }
    out
}

/// The index's column list, `(a, b)`, with MySQL's prefix lengths where needed.
pub fn index_columns(dialect: Dialect, index: &IndexDef) -> String {
    let columns: Vec<String> = index
        .columns
        .iter()
        .map(|c| match index.prefixed.contains(c) {
            true => format!("{}({MYSQL_INDEX_PREFIX_CHARS})", dialect.quote(c)),
            false => dialect.quote(c),
        })
        .collect();
    format!("({})", columns.join(", "))
}

pub fn create_index(dialect: Dialect, index: &IndexDef, placement: &Placement) -> String {
    let columns = index_columns(dialect, index);
    // An index lives in its table's schema, so only the table is qualified.
    let table = placement.table(dialect, &index.table);
    let name = dialect.quote(&index.name);
    match dialect {
        Dialect::SqlServer => format!(
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{}' AND object_id = \
             OBJECT_ID(N'{table}')) CREATE INDEX {name} ON {table} {columns}",
            index.name,
        ),
        // MySQL has no `IF NOT EXISTS` here: its driver treats "duplicate key name" as done.
        Dialect::MySql => format!("CREATE INDEX {name} ON {table} {columns}"),
        _ => format!("CREATE INDEX IF NOT EXISTS {name} ON {table} {columns}"),
    }
}

// ---- queries ---------------------------------------------------------------------------------

struct Builder {
    dialect: Dialect,
    sql: String,
    params: Vec<Value>,
}

impl Builder {
    fn new(dialect: Dialect) -> Self {
        Builder {
            dialect,
            sql: String::with_capacity(256),
            params: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    fn bind(&mut self, value: Value) -> &mut Self {
        self.params.push(value);
        let placeholder = self.dialect.placeholder(self.params.len());
        self.sql.push_str(&placeholder);
        self
    }

    /// A value stored into a column of type `sql_type`. A null is written as the keyword, not
    /// bound: a NULL parameter is typed as text, and a prepared statement reused with a number in
    /// that place would then receive the number's bytes as text. (The statement text differs with
    /// the null pattern, so each pattern gets its own prepared statement.)
    fn bind_as(&mut self, value: Value, sql_type: &str) -> &mut Self {
        let base = sql_type.split(" COLLATE").next().unwrap_or(sql_type);
        match (self.dialect, value) {
            // Both send a parameter's type with each execution: no cast needed.
            (Dialect::Sqlite | Dialect::MySql, Value::Null) => self.push("NULL"),
            (Dialect::Sqlite | Dialect::MySql, value) => self.bind(value),
            (Dialect::Postgres | Dialect::SqlServer, Value::Null) => {
                self.push("CAST(NULL AS ").push(base).push(")")
            }
            (Dialect::Postgres | Dialect::SqlServer, value) => self
                .push("CAST(")
                .bind(value)
                .push(" AS ")
                .push(base)
                .push(")"),
        }
    }

    fn column(&mut self, name: &str) -> &mut Self {
        let quoted = self.dialect.quote(name);
        write!(self.sql, "t.{quoted}").expect("writing to a String cannot fail");
        self
    }

    fn finish(self) -> Statement {
        Statement {
            sql: self.sql,
            params: self.params,
        }
    }
}

fn select_from(dataset: &Dataset, b: &mut Builder) {
    b.push("SELECT ");
    for (i, column) in dataset.columns.iter().enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.column(&column.name);
    }
    let table = b.dialect.quote(&dataset.table);
    b.push(" FROM ").push(&table).push(" t");
}

/// Appends ` WHERE ...` for the query's filters and cursor (nothing when there are none).
fn where_clause(dataset: &Dataset, query: &Query, b: &mut Builder) {
    let mut first = true;
    let mut and = |b: &mut Builder| {
        b.push(if first { " WHERE " } else { " AND " });
        first = false;
    };
    for (n, filter) in query.filters.iter().enumerate() {
        let column = &dataset.columns[filter.column];
        and(b);
        if column.is_list() {
            let key = dataset.key_column().name.clone();
            let list_table = b.dialect.quote(&dataset.list_table(column));
            b.column(&key);
            let (row_id, value_key) = (b.dialect.quote("row_id"), b.dialect.quote("value_key"));
            b.push(&format!(
                " IN (SELECT e{n}.{row_id} FROM {list_table} e{n} WHERE e{n}.{value_key} = "
            ));
            b.bind(filter.value.clone()).push(")");
        } else if column.has_key_column() && filter.op == FilterOp::Eq {
            b.column(&format!("{}__key", column.name))
                .push(" = ")
                .bind(filter.value.clone());
        } else {
            b.column(&column.name)
                .push(" ")
                .push(filter.op.sql())
                .push(" ");
            b.bind(filter.value.clone());
        }
    }
    if let Some(cursor) = &query.cursor {
        and(b);
        keyset_predicate(dataset, query.sort, cursor, b);
    }
}

/// Rows strictly after the cursor in the order of [`order_by`]: non-null sort values first (in
/// the requested direction), then nulls, ties broken by ascending key.
fn keyset_predicate(dataset: &Dataset, sort: Sort, cursor: &Cursor, b: &mut Builder) {
    let key = dataset.key_column().name.clone();
    let after = if sort.descending { " < " } else { " > " };
    if sort.column == dataset.key.column {
        b.column(&key).push(after).bind(cursor.key.clone());
        return;
    }
    let column = dataset.columns[sort.column].name.clone();
    if cursor.sort_value.is_null() {
        b.push("(")
            .column(&column)
            .push(" IS NULL AND ")
            .column(&key)
            .push(" > ");
        b.bind(cursor.key.clone()).push(")");
    } else {
        b.push("(")
            .column(&column)
            .push(after)
            .bind(cursor.sort_value.clone());
        b.push(" OR (")
            .column(&column)
            .push(" = ")
            .bind(cursor.sort_value.clone());
        b.push(" AND ")
            .column(&key)
            .push(" > ")
            .bind(cursor.key.clone())
            .push(")");
        b.push(" OR ").column(&column).push(" IS NULL)");
    }
}

fn order_by(dataset: &Dataset, sort: Sort, b: &mut Builder) {
    let key = dataset.key_column().name.clone();
    let direction = if sort.descending { " DESC" } else { " ASC" };
    b.push(" ORDER BY ");
    if sort.column == dataset.key.column {
        b.column(&key).push(direction);
    } else {
        let column = dataset.columns[sort.column].name.clone();
        // Nulls last: T-SQL has no boolean expressions to sort by, so a CASE there.
        if b.dialect == Dialect::SqlServer {
            b.push("CASE WHEN ")
                .column(&column)
                .push(" IS NULL THEN 1 ELSE 0 END, ");
        } else {
            b.push("(").column(&column).push(" IS NULL), ");
        }
        b.column(&column).push(direction);
        b.push(", ").column(&key).push(" ASC");
    }
}

/// One page plus one row, so the caller knows whether another page follows.
pub fn list(dataset: &Dataset, query: &Query, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    select_from(dataset, &mut b);
    where_clause(dataset, query, &mut b);
    order_by(dataset, query.sort, &mut b);
    dialect.limit(&mut b, i64::from(query.limit) + 1);
    b.finish()
}

pub fn export(dataset: &Dataset, query: &Query, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    select_from(dataset, &mut b);
    where_clause(dataset, query, &mut b);
    order_by(dataset, query.sort, &mut b);
    b.finish()
}

pub fn get(dataset: &Dataset, key: &Value, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    select_from(dataset, &mut b);
    b.push(" WHERE ")
        .column(&dataset.key_column().name)
        .push(" = ")
        .bind(key.clone());
    b.finish()
}

pub fn count(dataset: &Dataset, dialect: Dialect) -> Statement {
    Statement {
        sql: format!("SELECT COUNT(*) FROM {}", dialect.quote(&dataset.table)),
        params: vec![],
    }
}

/// `(value, count)` rows for a column under the query's filters. Text groups by its normalised
/// form (as equality compares) and shows one spelling of it; nulls are not a facet value.
pub fn facets(
    dataset: &Dataset,
    column_index: usize,
    query: &Query,
    dialect: Dialect,
) -> Statement {
    let column = &dataset.columns[column_index];
    let mut b = Builder::new(dialect);
    let table = dialect.quote(&dataset.table);
    if column.is_list() {
        let list_table = dialect.quote(&dataset.list_table(column));
        let (row_id, value, value_key) = (
            dialect.quote("row_id"),
            dialect.quote("value"),
            dialect.quote("value_key"),
        );
        b.push(&format!("SELECT MIN(l.{value}), COUNT(*) AS n FROM "))
            .push(&list_table)
            .push(" l");
        if !query.filters.is_empty() {
            let key = dataset.key_column().name.clone();
            b.push(&format!(" WHERE l.{row_id} IN (SELECT "))
                .column(&key)
                .push(" FROM ");
            b.push(&table).push(" t");
            where_clause(dataset, query, &mut b);
            b.push(")");
        }
        b.push(&format!(
            " GROUP BY l.{value_key} ORDER BY n DESC, MIN(l.{value})"
        ));
    } else {
        let group = if column.has_key_column() {
            format!("{}__key", column.name)
        } else {
            column.name.clone()
        };
        b.push("SELECT MIN(")
            .column(&column.name)
            .push("), COUNT(*) AS n FROM ");
        b.push(&table).push(" t");
        where_clause(dataset, query, &mut b);
        b.push(if query.filters.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        b.column(&column.name)
            .push(" IS NOT NULL GROUP BY ")
            .column(&group);
        b.push(" ORDER BY n DESC, MIN(")
            .column(&column.name)
            .push(")");
    }
    dialect.limit(&mut b, i64::from(query.limit));
    b.finish()
}

/// How facet rows decode: the value column as the scalar type of its elements, then a count.
pub fn facet_decode(column: &Column) -> Vec<Decode> {
    vec![
        Decode::Scalar(column.ty),
        Decode::Scalar(ColumnType::Integer),
    ]
}

// ---- writes --------------------------------------------------------------------------------

/// The row as it is now, locked until the transaction ends where the engine locks rows
/// (SQLite's `BEGIN IMMEDIATE` already holds the whole database).
pub fn get_for_update(dataset: &Dataset, key: &Value, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    select_from(dataset, &mut b);
    if dialect == Dialect::SqlServer {
        // HOLDLOCK also locks the gap where a missing key would go, against a concurrent create.
        b.push(" WITH (UPDLOCK, HOLDLOCK, ROWLOCK)");
    }
    b.push(" WHERE ")
        .column(&dataset.key_column().name)
        .push(" = ")
        .bind(key.clone());
    if matches!(dialect, Dialect::Postgres | Dialect::MySql) {
        b.push(" FOR UPDATE");
    }
    b.finish()
}

/// The next generated key: one past the largest. Callers hold a write lock on the table (on
/// MySQL this read takes it: InnoDB locks the last key and the gap after it until commit).
pub fn next_generated_key(dataset: &Dataset, dialect: Dialect) -> Statement {
    // SQL Server locks the whole table in this read, until the transaction ends.
    let (hint, lock) = match dialect {
        Dialect::SqlServer => (" WITH (TABLOCKX, HOLDLOCK)", ""),
        Dialect::MySql => ("", " FOR UPDATE"),
        _ => ("", ""),
    };
    Statement {
        sql: format!(
            "SELECT COALESCE(MAX({}), 0) + 1 FROM {}{hint}{lock}",
            dialect.quote(&dataset.key_column().name),
            dialect.quote(&dataset.table)
        ),
        params: vec![],
    }
}

/// Serialises inserts that generate keys on PostgreSQL (SQLite's write transaction already does;
/// MySQL's and SQL Server's read of the largest key takes the lock itself).
pub fn lock_for_generated_keys(dataset: &Dataset, dialect: Dialect) -> Option<Statement> {
    let table = dialect.quote(&dataset.table);
    let sql = match dialect {
        Dialect::Sqlite | Dialect::MySql | Dialect::SqlServer => return None,
        Dialect::Postgres => format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"),
    };
    Some(Statement {
        sql,
        params: vec![],
    })
}

pub fn insert_row(dataset: &Dataset, row: &Row, dialect: Dialect) -> Statement {
    let stored = stored_columns(dataset);
    let mut b = Builder::new(dialect);
    b.push("INSERT INTO ")
        .push(&dialect.quote(&dataset.table))
        .push(" (");
    for (i, &column) in stored.iter().enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.push(&dialect.quote(&stored_name(dataset, column)));
    }
    b.push(") VALUES (");
    for (i, &column) in stored.iter().enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.bind_as(
            stored_value(dataset, row, column),
            &stored_type(dataset, column, dialect),
        );
    }
    b.push(")");
    b.finish()
}

/// Sets every stored column but the key to the row's values.
pub fn update_row(dataset: &Dataset, row: &Row, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    b.push("UPDATE ")
        .push(&dialect.quote(&dataset.table))
        .push(" SET ");
    let stored = stored_columns(dataset);
    let assigned = stored
        .iter()
        .filter(|c| !matches!(c, StoredColumn::Declared(i) if *i == dataset.key.column));
    for (i, &column) in assigned.enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.push(&dialect.quote(&stored_name(dataset, column)))
            .push(" = ");
        b.bind_as(
            stored_value(dataset, row, column),
            &stored_type(dataset, column, dialect),
        );
    }
    b.push(" WHERE ")
        .push(&dialect.quote(&dataset.key_column().name))
        .push(" = ");
    b.bind(row[dataset.key.column].clone());
    b.finish()
}

pub fn delete_row(dataset: &Dataset, key: &Value, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    b.push("DELETE FROM ")
        .push(&dialect.quote(&dataset.table))
        .push(" WHERE ")
        .push(&dialect.quote(&dataset.key_column().name))
        .push(" = ");
    b.bind(key.clone());
    b.finish()
}

pub fn delete_list_elements(
    dataset: &Dataset,
    column: &Column,
    key: &Value,
    dialect: Dialect,
) -> Statement {
    let mut b = Builder::new(dialect);
    b.push("DELETE FROM ")
        .push(&dialect.quote(&dataset.list_table(column)))
        .push(" WHERE ")
        .push(&dialect.quote("row_id"))
        .push(" = ");
    b.bind(key.clone());
    b.finish()
}

/// Elements per `INSERT`: SQL Server takes at most 2,100 parameters and 1,000 rows per statement.
pub const LIST_ELEMENTS_PER_INSERT: usize = 500;

/// The inserts of a row's list elements (none when its list is empty or null).
pub fn insert_list_elements(
    dataset: &Dataset,
    index: usize,
    row: &Row,
    dialect: Dialect,
) -> Vec<Statement> {
    let elements = list_elements(row, dataset.key.column, index);
    elements
        .chunks(LIST_ELEMENTS_PER_INSERT)
        .map(|chunk| {
            let mut b = Builder::new(dialect);
            b.push("INSERT INTO ")
                .push(&dialect.quote(&dataset.list_table(&dataset.columns[index])))
                .push(&format!(
                    " ({}, {}, {}) VALUES ",
                    dialect.quote("row_id"),
                    dialect.quote("value"),
                    dialect.quote("value_key")
                ));
            for (i, (key, value, value_key)) in chunk.iter().enumerate() {
                if i > 0 {
                    b.push(", ");
                }
                b.push("(").bind((*key).clone()).push(", ");
                b.bind(Value::Text((*value).to_owned())).push(", ");
                b.bind(Value::Text(value_key.clone())).push(")");
            }
            b.finish()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{Catalog, parse_declaration};
    use crate::query::QueryKind;

    fn movies() -> Dataset {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/movies.toml");
        parse_declaration(&std::fs::read_to_string(path).unwrap(), None).unwrap()
    }

    #[test]
    fn filter_values_are_parameters_never_sql() {
        let ds = movies();
        let q = Query::parse(&ds, QueryKind::List, "title=x'%20OR%201=1--&genres=Drama").unwrap();
        let st = list(&ds, &q, Dialect::Postgres);
        assert!(!st.sql.contains("OR 1=1"), "{}", st.sql);
        assert_eq!(st.params[0], Value::Text("x' or 1=1--".into()));
        assert!(st.sql.contains("t.\"title__key\" = $1"), "{}", st.sql);
        assert!(st.sql.contains("e1.\"value_key\" = $2"), "{}", st.sql);
        assert!(st.sql.ends_with("LIMIT $3"), "{}", st.sql);
    }

    #[test]
    fn sorting_puts_nulls_last_and_breaks_ties_by_key() {
        let ds = movies();
        let q = Query::parse(&ds, QueryKind::Export, "sort=-year").unwrap();
        let st = export(&ds, &q, Dialect::Sqlite);
        assert!(
            st.sql
                .ends_with("ORDER BY (t.\"year\" IS NULL), t.\"year\" DESC, t.\"id\" ASC"),
            "{}",
            st.sql
        );
    }

    #[test]
    fn every_filterable_column_has_an_index() {
        let ds = movies();
        let idx = indexes(&ds, Dialect::Postgres);
        let names: Vec<_> = idx.iter().map(|i| i.name.as_str()).collect();
        assert!(
            names.contains(&"movies__genres__value_key__idx"),
            "{names:?}"
        );
        assert!(names.contains(&"movies__rating__key__idx"), "{names:?}");
        assert!(names.contains(&"movies__year__idx"), "{names:?}");
    }

    #[test]
    fn writes_bind_every_value_and_keep_hidden_keys_in_step() {
        let ds = movies();
        let mut row = vec![Value::Null; ds.columns.len()];
        row[ds.key.column] = Value::Integer(9);
        row[ds.column_index("title").unwrap()] = Value::Text("It's \"Quoted\"".into());
        row[ds.column_index("genres").unwrap()] = Value::List(vec!["Drama".into(), "War".into()]);
        let insert = insert_row(&ds, &row, Dialect::Postgres);
        assert!(
            insert.sql.starts_with("INSERT INTO \"movies\" (\"id\", "),
            "{}",
            insert.sql
        );
        assert!(
            insert
                .sql
                .contains("VALUES (CAST($1 AS BIGINT), CAST(NULL AS TEXT), CAST($2 AS TEXT)"),
            "{}",
            insert.sql
        );
        // Nulls are keywords, never parameters (a text-typed NULL parameter would poison the
        // prepared statement for a later non-null value of another type).
        assert!(!insert.params.contains(&Value::Null));
        assert!(!insert.sql.contains("Quoted"), "{}", insert.sql);
        assert!(
            insert
                .params
                .contains(&Value::Text("it's \"quoted\"".into()))
        );
        assert!(insert.params.contains(&Value::Text("Drama,War".into())));
        let update = update_row(&ds, &row, Dialect::Sqlite);
        assert!(update.sql.contains("\"title__key\" = ?"), "{}", update.sql);
        assert!(update.sql.ends_with("WHERE \"id\" = ?"), "{}", update.sql);
        assert!(!update.sql.contains("SET \"id\""), "{}", update.sql);
        assert_eq!(update.params.last(), Some(&Value::Integer(9)));
        let genres = ds.column_index("genres").unwrap();
        let elements = insert_list_elements(&ds, genres, &row, Dialect::Postgres);
        assert_eq!(elements.len(), 1);
        assert_eq!(
            elements[0].sql,
            "INSERT INTO \"movies__genres\" (\"row_id\", \"value\", \"value_key\") VALUES ($1, $2, $3), ($4, $5, $6)"
        );
        assert!(
            get_for_update(&ds, &Value::Integer(9), Dialect::Postgres)
                .sql
                .ends_with("FOR UPDATE")
        );
        assert!(
            !get_for_update(&ds, &Value::Integer(9), Dialect::Sqlite)
                .sql
                .contains("FOR UPDATE")
        );
    }

    /// SQL Server has no server here: its statements are pinned as text (reviewed against the
    /// T-SQL reference) so that a change to them is a visible change to this test.
    #[test]
    fn t_sql_statements_for_every_query_shape() {
        let ds = movies();
        let d = Dialect::SqlServer;
        let columns = "t.[id], t.[imdb_id], t.[title], t.[year], t.[rating], t.[runtime], \
            t.[genres], t.[director], t.[languages], t.[countries], t.[metacritic], t.[oscars], \
            t.[meter], t.[reviews], t.[box_office]";
        let q = Query::parse(
            &ds,
            QueryKind::List,
            "genres=Drama&year.gte=2000&title=Up&sort=-year&limit=5",
        )
        .unwrap();
        let st = list(&ds, &q, d);
        assert_eq!(
            st.sql,
            format!(
                "SELECT {columns} FROM [movies] t WHERE t.[id] IN (SELECT e0.[row_id] FROM \
                 [movies__genres] e0 WHERE e0.[value_key] = @P1) AND t.[year] >= @P2 AND \
                 t.[title__key] = @P3 ORDER BY CASE WHEN t.[year] IS NULL THEN 1 ELSE 0 END, \
                 t.[year] DESC, t.[id] ASC OFFSET 0 ROWS FETCH NEXT @P4 ROWS ONLY"
            )
        );
        assert_eq!(
            st.params,
            vec![
                Value::Text("drama".into()),
                Value::Integer(2000),
                Value::Text("up".into()),
                Value::Integer(6)
            ]
        );
        let export_query = Query::parse(&ds, QueryKind::Export, "sort=title").unwrap();
        assert!(export(&ds, &export_query, d).sql.ends_with(
            "FROM [movies] t ORDER BY CASE WHEN t.[title] IS NULL THEN 1 ELSE 0 END, \
             t.[title] ASC, t.[id] ASC"
        ));
        assert_eq!(
            get_for_update(&ds, &Value::Integer(9), d).sql,
            format!(
                "SELECT {columns} FROM [movies] t WITH (UPDLOCK, HOLDLOCK, ROWLOCK) WHERE t.[id] = @P1"
            )
        );
        let by_year = Query::parse(&ds, QueryKind::Facets, "year=2001").unwrap();
        assert_eq!(
            facets(&ds, ds.column_index("genres").unwrap(), &by_year, d).sql,
            "SELECT MIN(l.[value]), COUNT(*) AS n FROM [movies__genres] l WHERE l.[row_id] IN \
             (SELECT t.[id] FROM [movies] t WHERE t.[year] = @P1) GROUP BY l.[value_key] \
             ORDER BY n DESC, MIN(l.[value]) OFFSET 0 ROWS FETCH NEXT @P2 ROWS ONLY"
        );
        assert_eq!(
            delete_list_elements(&ds, ds.column("genres").unwrap(), &Value::Integer(9), d).sql,
            "DELETE FROM [movies__genres] WHERE [row_id] = @P1"
        );
        assert!(lock_for_generated_keys(&ds, d).is_none());
        assert_eq!(
            next_generated_key(&ds, d).sql,
            "SELECT COALESCE(MAX([id]), 0) + 1 FROM [movies] WITH (TABLOCKX, HOLDLOCK)"
        );
        // A long list is inserted 500 elements per statement (at most 1,500 parameters).
        let mut long = vec![Value::Null; ds.columns.len()];
        long[0] = Value::Integer(9);
        let genres = ds.column_index("genres").unwrap();
        long[genres] = Value::List((0..1200).map(|i| format!("g{i}")).collect());
        let inserts = insert_list_elements(&ds, genres, &long, d);
        assert_eq!(inserts.len(), 3);
        assert!(inserts.iter().all(|i| i.params.len() <= 1500));
        assert_eq!(inserts.iter().map(|i| i.params.len()).sum::<usize>(), 3600);
        let mut row = vec![Value::Null; ds.columns.len()];
        row[0] = Value::Integer(9);
        row[ds.column_index("title").unwrap()] = Value::Text("Up".into());
        let insert = insert_row(&ds, &row, d);
        assert!(
            insert.sql.contains(
                "VALUES (CAST(@P1 AS BIGINT), CAST(NULL AS NVARCHAR(16)), CAST(@P2 AS NVARCHAR(300))"
            ),
            "{}",
            insert.sql
        );
        assert!(
            update_row(&ds, &row, d)
                .sql
                .ends_with("[title__key] = CAST(@P2 AS NVARCHAR(450)), [rating__key] = CAST(NULL AS NVARCHAR(450)) WHERE [id] = @P3")
        );
        // Types: indexable text is bounded, dates and times are native, keys compare by bytes.
        let ddl = create_tables(&ds, d, &Placement::default(), true);
        assert!(ddl[0].starts_with(
            "IF OBJECT_ID(N'[movies]', N'U') IS NULL CREATE TABLE [movies] ([id] BIGINT NOT NULL PRIMARY KEY, \
             [imdb_id] NVARCHAR(16), [title] NVARCHAR(300) NOT NULL, [year] BIGINT"
        ));
        assert!(ddl[0].contains("[title__key] NVARCHAR(450) COLLATE Latin1_General_100_BIN2"));
        assert!(ddl[0].contains("[box_office] FLOAT"));
        assert_eq!(
            ddl[1],
            "IF OBJECT_ID(N'[movies__genres]', N'U') IS NULL CREATE TABLE [movies__genres] \
             ([row_id] BIGINT NOT NULL, [value] NVARCHAR(MAX) NOT NULL, \
             [value_key] NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL)"
        );
        let index = &indexes(&ds, d)[1];
        assert_eq!(
            create_index(d, index, &Placement::default()),
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'movies__title__key__idx' AND \
             object_id = OBJECT_ID(N'[movies]')) CREATE INDEX [movies__title__key__idx] ON [movies] \
             ([title__key], [id])"
        );
        let flights = Catalog::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets"),
        )
        .unwrap();
        let flights = flights.get("flights").unwrap();
        let timestamp = flights
            .columns
            .iter()
            .find(|c| c.ty == ColumnType::Timestamp);
        if let Some(column) = timestamp {
            assert_eq!(d.declared_type(column), "DATETIMEOFFSET");
        }
    }

    #[test]
    fn mysql_statements_for_every_query_shape() {
        let ds = movies();
        let d = Dialect::MySql;
        let q = Query::parse(
            &ds,
            QueryKind::List,
            "genres=Drama&year.gte=2000&title=Up&sort=-year&limit=5",
        )
        .unwrap();
        let st = list(&ds, &q, d);
        assert!(
            st.sql.ends_with(
                "FROM `movies` t WHERE t.`id` IN (SELECT e0.`row_id` FROM `movies__genres` e0 \
                 WHERE e0.`value_key` = ?) AND t.`year` >= ? AND t.`title__key` = ? \
                 ORDER BY (t.`year` IS NULL), t.`year` DESC, t.`id` ASC LIMIT ?"
            ),
            "{}",
            st.sql
        );
        assert_eq!(st.params.len(), 4);
        assert!(
            get_for_update(&ds, &Value::Integer(9), d)
                .sql
                .ends_with("WHERE t.`id` = ? FOR UPDATE")
        );
        // Generated keys: the locking read of the largest key serialises inserts (no LOCK TABLES,
        // which would end the transaction).
        assert!(lock_for_generated_keys(&ds, d).is_none());
        assert_eq!(
            next_generated_key(&ds, d).sql,
            "SELECT COALESCE(MAX(`id`), 0) + 1 FROM `movies` FOR UPDATE"
        );
        // Nulls are keywords, values plain parameters (MySQL types each parameter as it is sent).
        let mut row = vec![Value::Null; ds.columns.len()];
        row[0] = Value::Integer(9);
        row[ds.column_index("title").unwrap()] = Value::Text("Up".into());
        let insert = insert_row(&ds, &row, d);
        assert!(
            insert.sql.contains("VALUES (?, NULL, ?, NULL"),
            "{}",
            insert.sql
        );
        // Types: short text is VARCHAR, long text MEDIUMTEXT, keys compare by bytes; InnoDB in
        // utf8mb4 whatever the server's defaults.
        let ddl = create_tables(&ds, d, &Placement::default(), true);
        assert!(
            ddl[0].starts_with(
                "CREATE TABLE IF NOT EXISTS `movies` (`id` BIGINT NOT NULL PRIMARY KEY, \
                 `imdb_id` VARCHAR(16), `title` VARCHAR(300) NOT NULL, `year` BIGINT"
            ),
            "{}",
            ddl[0]
        );
        assert!(
            ddl[0].contains("`title__key` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        );
        assert!(ddl[0].ends_with(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"));
        assert!(ddl[1].contains("`value` MEDIUMTEXT NOT NULL"), "{}", ddl[1]);
        // No `IF NOT EXISTS` for indexes (the driver takes "duplicate key name" as done); text
        // too long for an index key is indexed by its prefix.
        let all = indexes(&ds, d);
        let title = all.iter().find(|i| i.name == "movies__title__idx").unwrap();
        assert_eq!(
            create_index(d, title, &Placement::default()),
            "CREATE INDEX `movies__title__idx` ON `movies` (`title`, `id`)"
        );
        let mut long = ds.clone();
        let title_index = long.column_index("title").unwrap();
        long.columns[title_index].max_length = None;
        let all = indexes(&long, d);
        let title = all.iter().find(|i| i.name == "movies__title__idx").unwrap();
        assert_eq!(
            create_index(d, title, &Placement::default()),
            "CREATE INDEX `movies__title__idx` ON `movies` (`title`(255), `id`)"
        );
        assert_eq!(d.declared_type(&long.columns[title_index]), "MEDIUMTEXT");
    }

    #[test]
    fn list_elements_are_distinct_per_row() {
        let row = vec![
            Value::Integer(7),
            Value::List(vec!["Drama".into(), "drama ".into()]),
        ];
        let elements = list_elements(&row, 0, 1);
        assert_eq!(elements.len(), 1);
        assert_eq!(elements[0].2, "drama");
    }
}
