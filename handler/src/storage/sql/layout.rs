//! How a dataset is stored, whatever the dialect:
//! - table `t`: one column per declared column, plus a hidden `<col>__key` (normalised text) for
//!   each filterable text column, so case-insensitive equality uses a plain index everywhere;
//! - table `t__<list>` per list column: `(row_id, value, value_key)`, one row per element, so
//!   "has element" is an indexed lookup and `Docudrama` never matches `drama`.

use super::Dialect;
use crate::datasets::{Dataset, Row, Value, normalise_text};

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

/// Where a dataset's tables live: `schema` qualifies them, `suffix` renames them (a staging
/// copy).
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

#[cfg(test)]
mod tests {
    use super::*;

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
