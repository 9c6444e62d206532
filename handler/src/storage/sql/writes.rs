//! The write statements: a row read under lock, generated keys, a row inserted, updated or
//! deleted, and the elements of its list columns.

use super::builder::Builder;
use super::{
    Dialect, Statement, StoredColumn, list_elements, stored_columns, stored_name, stored_type,
    stored_value,
};
use crate::datasets::{Column, Dataset, Row, Value};

/// The row as it is now, locked until the transaction ends where the engine locks rows
/// (SQLite's `BEGIN IMMEDIATE` already holds the whole database).
/// Every stored column: the declared ones, then the normalised keys (see [`super::Decode::stored_row`]),
/// so that a write can tell which stored values its row changes.
pub fn get_for_update(dataset: &Dataset, key: &Value, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    b.push("SELECT ");
    for (i, column) in stored_columns(dataset).into_iter().enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.column(&stored_name(dataset, column));
    }
    b.push(" FROM ")
        .push(&dialect.quote(&dataset.table))
        .push(" t");
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

/// The next assigned key: one past the largest. Callers hold [`lock_for_generated_keys`]'s lock
/// (a locking read on MySQL: it reads the latest committed rows, whatever the snapshot).
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

/// MySQL's table of one row per dataset whose keys are assigned, locked by each assignment.
pub const KEY_LOCKS_TABLE: &str = "smartcache_key_locks";

/// The table [`lock_for_generated_keys`] needs, where it needs one (MySQL).
pub fn key_locks_table(dialect: Dialect) -> Option<String> {
    (dialect == Dialect::MySql).then(|| {
        super::create_table_if_missing(
            dialect,
            &dialect.quote(KEY_LOCKS_TABLE),
            "`name` VARCHAR(128) NOT NULL PRIMARY KEY, `assigned` BIGINT NOT NULL",
        )
    })
}

/// Serialises the inserts that assign keys, until the transaction ends. PostgreSQL locks the
/// table against other writers; MySQL locks the dataset's row of [`KEY_LOCKS_TABLE`] (the read
/// of the largest key alone takes only gap locks, which concurrent creators share and then
/// deadlock on when both insert); SQLite's write transaction already serialises, and SQL
/// Server's read of the largest key locks the table itself.
pub fn lock_for_generated_keys(dataset: &Dataset, dialect: Dialect) -> Option<Statement> {
    let table = dialect.quote(&dataset.table);
    match dialect {
        Dialect::Sqlite | Dialect::SqlServer => None,
        Dialect::Postgres => Some(Statement {
            sql: format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"),
            params: vec![],
        }),
        Dialect::MySql => Some(Statement {
            sql: format!(
                "INSERT INTO {} (`name`, `assigned`) VALUES (?, 1) \
                 ON DUPLICATE KEY UPDATE `assigned` = `assigned` + 1",
                dialect.quote(KEY_LOCKS_TABLE)
            ),
            params: vec![Value::Text(dataset.table.clone())],
        }),
    }
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
/// Sets the stored columns whose value differs from what is stored now (`stored`: the row as
/// [`get_for_update`] reads it, normalised keys included), or `None` when none does: the index
/// of an unchanged column is left alone (SQLite rewrites the index of every column an `UPDATE`
/// sets, even to the same value). A normalised key is compared as stored, so one left null by a
/// declaration that gained it is written by the row's next write.
pub fn update_row(
    dataset: &Dataset,
    stored: &Row,
    row: &Row,
    dialect: Dialect,
) -> Option<Statement> {
    let columns = stored_columns(dataset);
    let assigned: Vec<StoredColumn> = columns
        .iter()
        .enumerate()
        .filter(|&(at, &column)| match column {
            StoredColumn::Declared(i) => i != dataset.key.column && stored[i] != row[i],
            StoredColumn::NormalisedKey(_) => {
                stored.get(at) != Some(&stored_value(dataset, row, column))
            }
        })
        .map(|(_, &column)| column)
        .collect();
    if assigned.is_empty() {
        return None;
    }
    let mut b = Builder::new(dialect);
    b.push("UPDATE ")
        .push(&dialect.quote(&dataset.table))
        .push(" SET ");
    for (i, &column) in assigned.iter().enumerate() {
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
    Some(b.finish())
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
    use super::super::tests::{as_stored, movies};
    use super::*;

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
        let mut old = row.clone();
        old[ds.column_index("title").unwrap()] = Value::Text("Down".into());
        let update = update_row(&ds, &as_stored(&ds, &old), &row, Dialect::Sqlite).unwrap();
        assert_eq!(
            update.sql,
            "UPDATE \"movies\" SET \"title\" = ?, \"title__key\" = ? WHERE \"id\" = ?"
        );
        assert_eq!(update.params.last(), Some(&Value::Integer(9)));
        assert!(update_row(&ds, &as_stored(&ds, &row), &row, Dialect::Sqlite).is_none());
        // A normalised key left null (its column gained a filter since the row was stored) is
        // written by the row's next write, whatever that write changes.
        let mut stale = as_stored(&ds, &row);
        let title_key = stored_columns(&ds)
            .iter()
            .position(|c| stored_name(&ds, *c) == "title__key")
            .unwrap();
        stale[title_key] = Value::Null;
        let repair = update_row(&ds, &stale, &row, Dialect::Sqlite).unwrap();
        assert_eq!(
            repair.sql,
            "UPDATE \"movies\" SET \"title__key\" = ? WHERE \"id\" = ?"
        );
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
}
