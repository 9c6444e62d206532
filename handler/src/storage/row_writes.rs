//! A row's write: the row a change leaves of the stored one, and the rows of its list columns.

use super::sql::{self, Dialect};
use super::store::Transaction;
use super::{Change, Result, Row};
use crate::datasets::{Dataset, Value};

/// The row `change` leaves of `old` (the row with `key`): `None` for a delete. The key is the
/// one asked for, which may be spelled otherwise than the stored one where the engine's
/// comparison ignores case, width or trailing spaces: the write's record then touches both
/// spellings, so the answers cached under either end.
pub(super) fn changed_row(
    dataset: &Dataset,
    key: &Value,
    old: &Row,
    change: Change,
) -> Option<Row> {
    let mut row = match change {
        Change::Replace(_, row) | Change::Create(row) => row,
        Change::Patch(_, fields) => {
            let mut row = old.clone();
            for (index, value) in fields {
                row[index] = value;
            }
            row
        }
        Change::Delete(_) => return None,
    };
    row[dataset.key.column] = key.clone();
    Some(row)
}

/// Writes `row`'s list elements after removing those of `old` (none for a new row); a list
/// column whose value did not change is left as it is (a PATCH of a title rewrites no list).
pub(super) async fn write_list_elements(
    tx: &mut dyn Transaction,
    dataset: &Dataset,
    dialect: Dialect,
    key: &Value,
    row: Option<&Row>,
    old: Option<&Row>,
) -> Result<()> {
    for (index, column) in dataset.list_columns() {
        if let (Some(old), Some(row)) = (old, row)
            && old[index] == row[index]
        {
            continue;
        }
        if old.is_some() {
            tx.execute(sql::delete_list_elements(dataset, column, key, dialect))
                .await?;
        }
        let inserts = row.map(|r| sql::insert_list_elements(dataset, index, r, dialect));
        for insert in inserts.into_iter().flatten() {
            tx.execute(insert).await?;
        }
    }
    Ok(())
}
