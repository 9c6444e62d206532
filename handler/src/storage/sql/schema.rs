//! DDL: the dataset's tables and indexes, a column a declaration gained (and the filling of a
//! normalised key it gained), and the catalog query that tells which columns a table has.

use super::builder::Builder;
use super::{
    Dialect, MYSQL_INDEX_PREFIX_CHARS, Placement, Statement, StoredColumn, stored_columns,
    stored_name, stored_type, tables,
};
use crate::datasets::{Column, ColumnType, Dataset, Value};

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
pub fn create_table_if_missing(dialect: Dialect, table: &str, columns: &str) -> String {
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

/// Adds a column that the declaration gained since the table was created (T-SQL spells it
/// `ADD`, the others `ADD COLUMN`).
pub fn add_column(dataset: &Dataset, column: StoredColumn, dialect: Dialect) -> String {
    let table = Placement::default().table(dialect, &dataset.table);
    let name = dialect.quote(&stored_name(dataset, column));
    let ty = stored_type(dataset, column, dialect);
    let add = if dialect == Dialect::SqlServer {
        "ADD"
    } else {
        "ADD COLUMN"
    };
    format!("ALTER TABLE {table} {add} {name} {ty}")
}

/// Up to `limit` rows, after key `after` in key order, whose column `column` holds text but whose
/// normalised key is null: `(key, text)`, locked until the transaction ends (so that a write
/// cannot change the text between this read and the key's fill). A declaration that makes a
/// text column a filter adds the key column to a table whose rows predate it; these are the rows
/// it has to fill.
pub fn unfilled_keys(
    dataset: &Dataset,
    column: usize,
    after: Option<&Value>,
    limit: i64,
    dialect: Dialect,
) -> Statement {
    let key = &dataset.key_column().name;
    let text = &dataset.columns[column].name;
    let mut b = Builder::new(dialect);
    b.push("SELECT ").column(key).push(", ").column(text);
    b.push(" FROM ")
        .push(&dialect.quote(&dataset.table))
        .push(" t");
    if dialect == Dialect::SqlServer {
        b.push(" WITH (UPDLOCK, ROWLOCK)");
    }
    b.push(" WHERE ");
    b.column(&stored_name(dataset, StoredColumn::NormalisedKey(column)))
        .push(" IS NULL AND ")
        .column(text)
        .push(" IS NOT NULL");
    if let Some(after) = after {
        b.push(" AND ").column(key).push(" > ").bind(after.clone());
    }
    b.push(" ORDER BY ").column(key);
    b.limit(limit);
    // SQLite's write transaction already holds the whole database.
    if matches!(dialect, Dialect::Postgres | Dialect::MySql) {
        b.push(" FOR UPDATE");
    }
    b.finish()
}

/// Sets the normalised key of column `column` in the row of key `key` to `normalised`.
pub fn fill_key(
    dataset: &Dataset,
    column: usize,
    key: Value,
    normalised: String,
    dialect: Dialect,
) -> Statement {
    let stored = StoredColumn::NormalisedKey(column);
    let mut b = Builder::new(dialect);
    b.push("UPDATE ")
        .push(&dialect.quote(&dataset.table))
        .push(" SET ")
        .push(&dialect.quote(&stored_name(dataset, stored)))
        .push(" = ");
    b.bind_as(
        Value::Text(normalised),
        &stored_type(dataset, stored, dialect),
    );
    b.push(" WHERE ")
        .push(&dialect.quote(&dataset.key_column().name))
        .push(" = ")
        .bind(key);
    b.finish()
}

/// The names of a table's columns in order, one text column (no rows: the table does not
/// exist).
pub fn table_columns(dialect: Dialect, table: &str) -> Statement {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT name FROM pragma_table_info(?) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
        Dialect::MySql => {
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position"
        }
        Dialect::SqlServer => {
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS \
             WHERE TABLE_SCHEMA = SCHEMA_NAME() AND TABLE_NAME = @P1 ORDER BY ORDINAL_POSITION"
        }
    };
    Statement {
        sql: sql.to_owned(),
        params: vec![Value::Text(table.to_owned())],
    }
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

#[cfg(test)]
mod tests {
    use super::super::tests::movies;
    use super::*;

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
}
