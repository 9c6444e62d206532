//! The read statements: a page, an export, one row, a count and facet counts, with the filters,
//! the keyset cursor and the sort order they share.

use super::builder::{Builder, select_from};
use super::{Decode, Dialect, Statement};
use crate::datasets::{Column, ColumnType, Dataset, Value};
use crate::query::{Cursor, FilterOp, Query, Sort};

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
                " IN (SELECT e{n}.{row_id} FROM {list_table} e{n} WHERE e{n}.{value_key}"
            ));
            equal_to_any(&filter.values, b);
            b.push(")");
        } else if column.has_key_column() && matches!(filter.op, FilterOp::Eq | FilterOp::In) {
            b.column(&format!("{}__key", column.name));
            equal_to_any(&filter.values, b);
        } else if filter.op == FilterOp::In {
            b.column(&column.name);
            equal_to_any(&filter.values, b);
        } else {
            b.column(&column.name)
                .push(" ")
                .push(filter.op.sql())
                .push(" ");
            b.bind(filter.values[0].clone());
        }
    }
    if let Some(cursor) = &query.cursor {
        and(b);
        keyset_predicate(dataset, query.sort, cursor, b);
    }
}

/// ` = ?` for one value, ` IN (?, ?, …)` for several.
fn equal_to_any(values: &[Value], b: &mut Builder) {
    if let [value] = values {
        b.push(" = ").bind(value.clone());
        return;
    }
    b.push(" IN (");
    for (n, value) in values.iter().enumerate() {
        if n > 0 {
            b.push(", ");
        }
        b.bind(value.clone());
    }
    b.push(")");
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
        // Nulls last. SQLite and PostgreSQL say so (`NULLS LAST`), which lets them read the
        // column's index in order and stop after a page (an `(x IS NULL)` term first sorted every
        // matching row); T-SQL has no boolean expressions to sort by, so a CASE there.
        match b.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                b.column(&column).push(direction).push(" NULLS LAST");
            }
            Dialect::SqlServer => {
                b.push("CASE WHEN ")
                    .column(&column)
                    .push(" IS NULL THEN 1 ELSE 0 END, ");
                b.column(&column).push(direction);
            }
            Dialect::MySql => {
                b.push("(").column(&column).push(" IS NULL), ");
                b.column(&column).push(direction);
            }
        }
        b.push(", ").column(&key).push(" ASC");
    }
}

/// One page plus one row, so the caller knows whether another page follows.
pub fn list(dataset: &Dataset, query: &Query, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    select_from(dataset, &mut b);
    where_clause(dataset, query, &mut b);
    order_by(dataset, query.sort, &mut b);
    b.limit(i64::from(query.limit) + 1);
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

/// The rows passing the query's filters (all of them when it has none).
pub fn count(dataset: &Dataset, query: &Query, dialect: Dialect) -> Statement {
    let mut b = Builder::new(dialect);
    b.push("SELECT COUNT(*) FROM ")
        .push(&dialect.quote(&dataset.table))
        .push(" t");
    where_clause(dataset, query, &mut b);
    b.finish()
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
    b.limit(i64::from(query.limit));
    b.finish()
}

/// How facet rows decode: the value column as the scalar type of its elements, then a count.
pub fn facet_decode(column: &Column) -> Vec<Decode> {
    vec![
        Decode::Scalar(column.ty),
        Decode::Scalar(ColumnType::Integer),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::tests::movies;
    use super::*;
    use crate::query::QueryKind;

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
                .ends_with("ORDER BY t.\"year\" DESC NULLS LAST, t.\"id\" ASC"),
            "{}",
            st.sql
        );
    }
}
