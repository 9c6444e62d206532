//! [`Builder`]: SQL text and its bound parameters written together, so the placeholders are
//! numbered in the dialect's style and no value is ever spliced into the text.

use super::{Dialect, Statement};
use crate::datasets::{Dataset, Value};

pub(super) struct Builder {
    pub(super) dialect: Dialect,
    sql: String,
    params: Vec<Value>,
}

impl Builder {
    pub(super) fn new(dialect: Dialect) -> Self {
        Builder {
            dialect,
            sql: String::with_capacity(256),
            params: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    pub(super) fn bind(&mut self, value: Value) -> &mut Self {
        self.params.push(value);
        let placeholder = self.dialect.placeholder(self.params.len());
        self.sql.push_str(&placeholder);
        self
    }

    /// A value stored into a column of type `sql_type`. A null is written as the keyword, not
    /// bound: a NULL parameter is typed as text, and a prepared statement reused with a number in
    /// that place would then receive the number's bytes as text. (The statement text differs with
    /// the null pattern, so each pattern gets its own prepared statement.)
    pub(super) fn bind_as(&mut self, value: Value, sql_type: &str) -> &mut Self {
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

    pub(super) fn column(&mut self, name: &str) -> &mut Self {
        self.sql.push_str("t.");
        self.dialect.push_quoted(&mut self.sql, name);
        self
    }

    /// `n` rows at most, after an `ORDER BY`.
    pub(super) fn limit(&mut self, n: i64) -> &mut Self {
        match self.dialect {
            Dialect::SqlServer => self
                .push(" OFFSET 0 ROWS FETCH NEXT ")
                .bind(Value::Integer(n))
                .push(" ROWS ONLY"),
            _ => self.push(" LIMIT ").bind(Value::Integer(n)),
        }
    }

    pub(super) fn finish(self) -> Statement {
        Statement {
            sql: self.sql,
            params: self.params,
        }
    }
}

/// `SELECT <every declared column> FROM <table> t`.
pub(super) fn select_from(dataset: &Dataset, b: &mut Builder) {
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
