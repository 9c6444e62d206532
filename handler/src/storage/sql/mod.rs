//! SQL text for every statement the service runs, built from the dataset declaration.
//!
//! Identifiers come only from validated declarations (`[a-z][a-z0-9_]*`), so quoting them is
//! enough; every value becomes a bound parameter of the [`Statement`].
//!
//! - [`dialect`]: the four dialects' quoting, parameters, column types and index limits;
//! - [`layout`]: how a dataset is stored (hidden key columns, list tables) and where;
//! - [`schema`]: the DDL of tables and indexes, and the catalog query of a table's columns;
//! - [`staging`]: an import's staged tables and the swap that makes them live;
//! - [`sync`]: a sync's differences between the staged rows and the live ones, and their
//!   application;
//! - [`builder`]: text and parameters written together; [`reads`] and [`writes`] use it for
//!   the queries of the API and the changes of one row.

mod builder;
mod dialect;
mod layout;
mod reads;
mod schema;
pub mod staging;
pub mod sync;
mod writes;

pub use dialect::{Dialect, MYSQL_INDEX_PREFIX_CHARS};
pub use layout::{
    LIST_TABLE_COLUMNS, Placement, StoredColumn, list_elements, stored_columns, stored_name,
    stored_type, stored_value, tables,
};
pub use reads::{count, export, facet_decode, facets, get, list};
pub use schema::{
    add_column, create_index, create_table_if_missing, create_tables, drop_tables, fill_key,
    index_columns, indexes, table_columns, unfilled_keys,
};
pub use writes::{
    delete_list_elements, delete_row, get_for_update, insert_list_elements, insert_row,
    key_locks_table, lock_for_generated_keys, next_generated_key, update_row,
};

use crate::datasets::{Column, ColumnType, Dataset, Value};

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

    /// A row as `writes::get_for_update` reads it: the declared columns, then the normalised
    /// keys as text.
    pub fn stored_row(dataset: &Dataset) -> Vec<Decode> {
        let keys = dataset.columns.iter().filter(|c| c.has_key_column());
        let keys = keys.map(|_| Decode::Scalar(ColumnType::Text));
        Decode::row(dataset).into_iter().chain(keys).collect()
    }
}

#[cfg(test)]
mod tests;
