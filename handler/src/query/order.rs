//! The order of rows in a sorted answer, as the SQL of `storage::sql::reads` orders them:
//! non-null sort values first in the requested direction, then nulls, ties broken by ascending
//! key. Evaluated in Rust so the cache can tell whether a write reaches a sorted page.

use std::cmp::Ordering;

use super::Sort;
use crate::datasets::{Dataset, Value};

/// Where a row sits in a sort: its sort value and its key.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub sort_value: &'a Value,
    pub key: &'a Value,
}

impl<'a> Place<'a> {
    /// The place of `row` in `sort`.
    pub fn of(dataset: &Dataset, sort: Sort, row: &'a [Value]) -> Place<'a> {
        Place {
            sort_value: &row[sort.column],
            key: &row[dataset.key.column],
        }
    }
}

/// How `a` compares with `b` in `sort` (`Less`: `a` comes first), or `None` where Rust cannot
/// be sure to agree with the database: two different texts (their order is the database's
/// collation), or values of different types. Callers treat `None` as "could be anywhere".
pub fn compare(dataset: &Dataset, sort: Sort, a: Place<'_>, b: Place<'_>) -> Option<Ordering> {
    if sort.column == dataset.key.column {
        let ordering = compare_values(a.key, b.key)?;
        return Some(if sort.descending {
            ordering.reverse()
        } else {
            ordering
        });
    }
    let by_value = match (a.sort_value.is_null(), b.sort_value.is_null()) {
        (true, true) => Ordering::Equal,
        // Nulls last, whatever the direction.
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => {
            let ordering = compare_values(a.sort_value, b.sort_value)?;
            if sort.descending {
                ordering.reverse()
            } else {
                ordering
            }
        }
    };
    match by_value {
        Ordering::Equal => compare_values(a.key, b.key),
        decided => Some(decided),
    }
}

/// The order of two non-null values where it cannot depend on a collation.
fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
        (Value::Integer(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
        (Value::Float(a), Value::Integer(b)) => a.partial_cmp(&(*b as f64)),
        (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Boolean(a), Value::Boolean(b)) => Some(a.cmp(b)),
        // Equal texts are equal under every collation; different ones are the collation's call.
        (Value::Text(a), Value::Text(b)) if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movies() -> Dataset {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets");
        let catalog = crate::datasets::Catalog::load_dir(&dir).unwrap();
        (**catalog.get("movies").unwrap()).clone()
    }

    #[test]
    fn nulls_come_last_in_both_directions_and_ties_go_by_key() {
        let movies = movies();
        let year = movies.column_index("year").unwrap();
        let (k1, k2) = (Value::Integer(1), Value::Integer(2));
        let (y2000, null) = (Value::Integer(2000), Value::Null);
        let place = |sort_value, key| Place { sort_value, key };
        for descending in [false, true] {
            let sort = Sort {
                column: year,
                descending,
            };
            assert_eq!(
                compare(&movies, sort, place(&null, &k1), place(&y2000, &k2)),
                Some(Ordering::Greater)
            );
            assert_eq!(
                compare(&movies, sort, place(&y2000, &k1), place(&y2000, &k2)),
                Some(Ordering::Less)
            );
        }
        let newest_first = Sort {
            column: year,
            descending: true,
        };
        let y1990 = Value::Integer(1990);
        assert_eq!(
            compare(
                &movies,
                newest_first,
                place(&y2000, &k2),
                place(&y1990, &k1)
            ),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn different_texts_are_left_to_the_database() {
        let movies = movies();
        let title = movies.column_index("title").unwrap();
        let sort = Sort {
            column: title,
            descending: false,
        };
        let (a, b, k) = (
            Value::Text("Alien".into()),
            Value::Text("alien".into()),
            Value::Integer(1),
        );
        let place = |sort_value| Place {
            sort_value,
            key: &k,
        };
        assert_eq!(compare(&movies, sort, place(&a), place(&b)), None);
        assert_eq!(
            compare(&movies, sort, place(&a), place(&a)),
            Some(Ordering::Equal)
        );
    }
}
