//! A sync's statements: the differences, by key, between an import's staged rows and the live
//! ones, kept in a table of changes; the rows they change, read before and after; and the
//! changes applied to the live tables, in one transaction that writers wait for.
//!
//! Rows are compared on their declared columns, null-safely and byte for byte (MySQL's and
//! SQL Server's text comparisons ignore trailing spaces, and SQL Server's default collation case),
//! so a row differs exactly when a client reading it would see a difference. The hidden
//! normalised keys and the list tables follow from the declared columns.

use super::staging::placement;
use super::{Dialect, Placement, Statement, StoredColumn, stored_columns, stored_name};
use crate::datasets::{ColumnType, Dataset};

/// What happened to a key: in the staged rows only, in both but different, in the live ones only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Added,
    Changed,
    Removed,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Added => "a",
            Kind::Changed => "c",
            Kind::Removed => "r",
        }
    }
}

/// The table of changes, beside the staged tables. `<table>___sync` cannot be a list table's name
/// (`<table>__<column>`, and a column starts with a letter), and stays within MySQL's 64
/// characters with the staging suffix for any table name a declaration allows.
fn changes_table(dataset: &Dataset, dialect: Dialect) -> String {
    placement(dialect).table(dialect, &format!("{}___sync", dataset.table))
}

fn drop_changes(dataset: &Dataset, dialect: Dialect) -> String {
    let table = changes_table(dataset, dialect);
    match dialect {
        Dialect::SqlServer => {
            format!("IF OBJECT_ID(N'{table}', N'U') IS NOT NULL DROP TABLE {table}")
        }
        _ => format!("DROP TABLE IF EXISTS {table}"),
    }
}

/// An empty table of changes (one left by a sync that died is dropped first). Created outside
/// the transaction: MySQL's DDL would commit it.
pub fn create(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    let key = dialect.declared_type(dataset.key_column());
    let columns = format!(
        "{} {key} NOT NULL PRIMARY KEY, {} CHAR(1) NOT NULL",
        dialect.quote("k"),
        dialect.quote("kind")
    );
    vec![
        drop_changes(dataset, dialect),
        super::create_table_if_missing(dialect, &changes_table(dataset, dialect), &columns),
    ]
}

/// Drops the table of changes.
pub fn discard(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    vec![drop_changes(dataset, dialect)]
}

/// The transaction's first statement: writers of the live rows wait until it ends, readers do
/// not. PostgreSQL's `EXCLUSIVE` mode conflicts with a writer's `FOR UPDATE` (under a weaker mode
/// a writer locked a row first, then found it deleted by the sync, or deadlocked with it) and not
/// with plain reads; MySQL reads every row of the primary key (the clustered index: a secondary index's
/// shared locks would not stop a writer's `FOR UPDATE`) with a shared lock, whose next-key locks
/// also stop inserts; SQL Server holds a shared table lock; SQLite's write transaction already
/// holds the database.
pub fn lock_live(dataset: &Dataset, dialect: Dialect) -> Option<Statement> {
    let live = dialect.quote(&dataset.table);
    let sql = match dialect {
        Dialect::Sqlite => return None,
        Dialect::Postgres => format!("LOCK TABLE {live} IN EXCLUSIVE MODE"),
        Dialect::MySql => {
            format!("SELECT COUNT(*) FROM {live} FORCE INDEX (PRIMARY) LOCK IN SHARE MODE")
        }
        Dialect::SqlServer => format!("SELECT COUNT(*) FROM {live} WITH (TABLOCK, HOLDLOCK)"),
    };
    Some(Statement {
        sql,
        params: vec![],
    })
}

/// `a` and `b` hold the same value, nulls included, byte for byte: true or false, never unknown
/// (under `NOT`, an unknown would hide the change).
fn same(dialect: Dialect, ty: ColumnType, a: &str, b: &str) -> String {
    let text = ty == ColumnType::Text;
    match dialect {
        Dialect::Postgres => format!("{a} IS NOT DISTINCT FROM {b}"),
        Dialect::Sqlite => format!("{a} IS {b}"),
        Dialect::MySql if text => format!("BINARY {a} <=> BINARY {b}"),
        Dialect::MySql => format!("{a} <=> {b}"),
        Dialect::SqlServer if text => format!(
            "(({a} IS NULL AND {b} IS NULL) OR ({a} IS NOT NULL AND {b} IS NOT NULL \
             AND {a} = {b} COLLATE Latin1_General_100_BIN2 \
             AND DATALENGTH({a}) = DATALENGTH({b})))"
        ),
        Dialect::SqlServer => format!(
            "(({a} IS NULL AND {b} IS NULL) OR ({a} IS NOT NULL AND {b} IS NOT NULL AND {a} = {b}))"
        ),
    }
}

/// The three statements that fill the table of changes: keys only staged (added), only live
/// (removed), and in both with any stored column different (changed; the hidden normalised keys
/// too, so a row whose key column a migration added as null is rewritten).
pub fn find_changes(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    let q = |name: &str| dialect.quote(name);
    let key = q(&dataset.key_column().name);
    let (live, staged) = (
        Placement::default().table(dialect, &dataset.table),
        placement(dialect).table(dialect, &dataset.table),
    );
    let changes = changes_table(dataset, dialect);
    let into = format!("INSERT INTO {changes} ({}, {})", q("k"), q("kind"));
    let differs = stored_columns(dataset)
        .into_iter()
        .map(|stored| {
            let ty = match stored {
                StoredColumn::Declared(i) if !dataset.columns[i].is_list() => dataset.columns[i].ty,
                // A list is stored joined; a normalised key is text.
                _ => ColumnType::Text,
            };
            let name = q(&stored_name(dataset, stored));
            same(dialect, ty, &format!("l.{name}"), &format!("s.{name}"))
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    vec![
        format!(
            "{into} SELECT s.{key}, '{}' FROM {staged} s \
             WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE l.{key} = s.{key})",
            Kind::Added.code()
        ),
        format!(
            "{into} SELECT l.{key}, '{}' FROM {live} l \
             WHERE NOT EXISTS (SELECT 1 FROM {staged} s WHERE s.{key} = l.{key})",
            Kind::Removed.code()
        ),
        format!(
            "{into} SELECT s.{key}, '{}' FROM {staged} s JOIN {live} l ON l.{key} = s.{key} \
             WHERE NOT ({differs})",
            Kind::Changed.code()
        ),
    ]
}

/// How many keys were added, changed and removed: one row of three counts (`COUNT`, which is
/// a 64-bit integer on every engine, unlike MySQL's `SUM`).
pub fn count_changes(dataset: &Dataset, dialect: Dialect) -> Statement {
    let kind = dialect.quote("kind");
    let count = |k: Kind| format!("COUNT(CASE WHEN {kind} = '{}' THEN 1 END)", k.code());
    Statement {
        sql: format!(
            "SELECT {}, {}, {} FROM {}",
            count(Kind::Added),
            count(Kind::Changed),
            count(Kind::Removed),
            changes_table(dataset, dialect)
        ),
        params: vec![],
    }
}

/// The rows of the given kinds as they are live (`staged: false`) or staged, every declared
/// column, in key order (so the old and new rows of changed keys pair up).
pub fn changed_rows(
    dataset: &Dataset,
    dialect: Dialect,
    kinds: &[Kind],
    staged: bool,
) -> Statement {
    let q = |name: &str| dialect.quote(name);
    let key = q(&dataset.key_column().name);
    let table = if staged {
        placement(dialect).table(dialect, &dataset.table)
    } else {
        Placement::default().table(dialect, &dataset.table)
    };
    let columns = dataset
        .columns
        .iter()
        .map(|c| format!("t.{}", q(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    Statement {
        sql: format!(
            "SELECT {columns} FROM {table} t JOIN {} c ON c.{} = t.{key} \
             WHERE c.{} IN ({}) ORDER BY c.{}",
            changes_table(dataset, dialect),
            q("k"),
            q("kind"),
            quoted_kinds(kinds),
            q("k"),
        ),
        params: vec![],
    }
}

fn quoted_kinds(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| format!("'{}'", k.code()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The changes applied: the live rows of changed and removed keys deleted (list elements
/// first), then the staged rows of added and changed keys copied in (main row first).
pub fn apply(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    let q = |name: &str| dialect.quote(name);
    let (live, staged) = (Placement::default(), placement(dialect));
    let changes = changes_table(dataset, dialect);
    let keys_of = |kinds: &[Kind]| {
        format!(
            "(SELECT c.{} FROM {changes} c WHERE c.{} IN ({}))",
            q("k"),
            q("kind"),
            quoted_kinds(kinds)
        )
    };
    let gone = keys_of(&[Kind::Changed, Kind::Removed]);
    let arriving = keys_of(&[Kind::Added, Kind::Changed]);
    let key = q(&dataset.key_column().name);
    let lists: Vec<String> = dataset
        .list_columns()
        .map(|(_, column)| dataset.list_table(column))
        .collect();
    let list_columns = super::LIST_TABLE_COLUMNS
        .iter()
        .map(|c| q(c))
        .collect::<Vec<_>>()
        .join(", ");
    let main_columns = stored_columns(dataset)
        .into_iter()
        .map(|c| q(&stored_name(dataset, c)))
        .collect::<Vec<_>>()
        .join(", ");
    // MySQL before 8.0.21 and MariaDB before 11.1 run `DELETE … WHERE x IN (SELECT …)` as a
    // dependent subquery over every row of the table: there it is a join.
    let delete = |table: &str, column: &str| match dialect {
        Dialect::MySql => format!(
            "DELETE t FROM {} t JOIN {changes} c ON c.{} = t.{column} WHERE c.{} IN ({})",
            live.table(dialect, table),
            q("k"),
            q("kind"),
            quoted_kinds(&[Kind::Changed, Kind::Removed])
        ),
        _ => format!(
            "DELETE FROM {} WHERE {column} IN {gone}",
            live.table(dialect, table)
        ),
    };
    let mut statements = Vec::new();
    for list in &lists {
        statements.push(delete(list, &q("row_id")));
    }
    statements.push(delete(&dataset.table, &key));
    statements.push(format!(
        "INSERT INTO {} ({main_columns}) SELECT {main_columns} FROM {} WHERE {key} IN {arriving}",
        live.table(dialect, &dataset.table),
        staged.table(dialect, &dataset.table)
    ));
    for list in &lists {
        statements.push(format!(
            "INSERT INTO {} ({list_columns}) SELECT {list_columns} FROM {} WHERE {} IN {arriving}",
            live.table(dialect, list),
            staged.table(dialect, list),
            q("row_id")
        ));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::parse_declaration;

    fn things() -> Dataset {
        parse_declaration(
            r#"
            name = "things"
            key = { column = "id" }
            [[columns]]
            name = "id"
            type = "integer"
            [[columns]]
            name = "name"
            type = "text"
            filter = true
            [[columns]]
            name = "tags"
            type = "text"
            list_delimiter = ","
            filter = true
            "#,
            None,
        )
        .unwrap()
    }

    #[test]
    fn text_compares_byte_for_byte_where_the_engine_would_not() {
        let ds = things();
        let [_, _, changed] = find_changes(&ds, Dialect::MySql).try_into().unwrap();
        assert!(
            changed.contains("BINARY l.`name` <=> BINARY s.`name`"),
            "{changed}"
        );
        assert!(changed.contains("l.`id` <=> s.`id`"), "{changed}");
        let [_, _, changed] = find_changes(&ds, Dialect::Postgres).try_into().unwrap();
        assert!(
            changed.contains(r#"l."tags" IS NOT DISTINCT FROM s."tags""#),
            "{changed}"
        );
        let [_, _, changed] = find_changes(&ds, Dialect::SqlServer).try_into().unwrap();
        assert!(changed.contains("DATALENGTH(l.[name])"), "{changed}");
    }

    #[test]
    fn list_elements_go_before_their_rows_and_come_after_them() {
        let ds = things();
        let statements = apply(&ds, Dialect::Sqlite);
        let position = |needle: &str| {
            statements
                .iter()
                .position(|s| s.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle}: {statements:#?}"))
        };
        assert!(position(r#"DELETE FROM "things__tags""#) < position(r#"DELETE FROM "things""#));
        assert!(position(r#"INSERT INTO "things" "#) < position(r#"INSERT INTO "things__tags""#));
        assert!(
            statements[0].contains(r#"IN ('c', 'r')"#),
            "{}",
            statements[0]
        );
    }
}
