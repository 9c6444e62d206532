//! The answer-aware rule against a reference: thousands of random writes to a small table, and
//! whenever [`changes`] says a write leaves an answer alone, the answer computed again from the
//! rows (filter, sort, page, facet counts, as the SQL computes them) must be the same.

use std::collections::BTreeMap;

use super::*;
use crate::query::{Cursor, QueryKind};

fn movies() -> Dataset {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets");
    let catalog = crate::datasets::Catalog::load_dir(&dir).unwrap();
    (**catalog.get("movies").unwrap()).clone()
}

/// A tiny deterministic generator (xorshift), so a failure replays.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Columns {
    genres: usize,
    year: usize,
    metacritic: usize,
}

fn random_row(ds: &Dataset, c: &Columns, id: i64, random: &mut Random) -> Vec<Value> {
    let mut row = vec![Value::Null; ds.columns.len()];
    row[ds.key.column] = Value::Integer(id);
    let genres = match random.below(4) {
        0 => vec!["Drama"],
        1 => vec!["Comedy"],
        2 => vec!["Drama", "Comedy"],
        _ => vec![],
    };
    row[c.genres] = Value::List(genres.into_iter().map(str::to_owned).collect());
    row[c.year] = match random.below(6) {
        0 => Value::Null,
        n => Value::Integer(1999 + i64::try_from(n).unwrap()),
    };
    row[c.metacritic] = match random.below(5) {
        0 => Value::Null,
        n => Value::Integer(i64::try_from(n * 10).unwrap()),
    };
    row
}

/// The page the SQL would return: `limit` rows and whether another follows.
fn page(ds: &Dataset, query: &Query, rows: &[Vec<Value>]) -> (Vec<Vec<Value>>, bool) {
    let mut passing: Vec<&Vec<Value>> = rows
        .iter()
        .filter(|r| on_page_side(ds, query, Some(r)).is_some())
        .collect();
    passing.sort_by(|a, b| {
        compare(
            ds,
            query.sort,
            Place::of(ds, query.sort, a),
            Place::of(ds, query.sort, b),
        )
        .expect("integers and nulls always compare")
    });
    let limit = query.limit as usize;
    let more = passing.len() > limit;
    (passing.into_iter().take(limit).cloned().collect(), more)
}

/// Facet counts by value, as the SQL groups them (nulls not counted; list elements each).
fn facets(
    ds: &Dataset,
    query: &Query,
    column: usize,
    rows: &[Vec<Value>],
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for row in rows.iter().filter(|r| query.matches(ds, r)) {
        let values = match &row[column] {
            Value::Null => vec![],
            Value::List(items) => items.clone(),
            other => vec![other.to_text()],
        };
        for value in values {
            *counts.entry(value).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn a_write_left_alone_never_changes_the_answer() {
    let ds = movies();
    let c = Columns {
        genres: ds.column_index("genres").unwrap(),
        year: ds.column_index("year").unwrap(),
        metacritic: ds.column_index("metacritic").unwrap(),
    };
    let mut random = Random(0x5eed_1234_abcd_ef01);
    let mut rows: Vec<Vec<Value>> = (1..=40)
        .map(|id| random_row(&ds, &c, id, &mut random))
        .collect();
    let mut next_id = 41;
    let raw_queries = [
        "genres=drama&sort=-metacritic&limit=5",
        "sort=year&limit=7",
        "sort=-year&limit=3&genres=comedy",
        "limit=10",
        "sort=metacritic&limit=4&year.gte=2001",
        "genres=drama&sort=-metacritic&limit=50",
        // Few rows pass these: pages with one row after them, and rows leaving that tail.
        "genres=drama&year.gte=2004&sort=year&limit=2",
        "year.gte=2004&sort=-metacritic&limit=3",
        "genres=comedy&year=2003&limit=1",
    ];
    let mut queries: Vec<Query> = raw_queries
        .iter()
        .map(|raw| Query::parse(&ds, QueryKind::List, raw).unwrap())
        .collect();
    // Second pages, after the first pages' last rows.
    for raw in &raw_queries[..3] {
        let mut second = Query::parse(&ds, QueryKind::List, raw).unwrap();
        let (first, _) = page(&ds, &second, &rows);
        let last = first.last().unwrap();
        second.cursor = Some(Cursor {
            sort_value: last[second.sort.column].clone(),
            key: last[ds.key.column].clone(),
        });
        queries.push(second);
    }
    let facet_query = Query::parse(&ds, QueryKind::Facets, "genres=drama").unwrap();
    let (mut left_alone, mut changed) = (0, 0);
    for seq in 1..=3000 {
        // A random create, update or delete.
        let index = random.below(rows.len() as u64) as usize;
        let (old, new) = match random.below(5) {
            0 => {
                next_id += 1;
                (None, Some(random_row(&ds, &c, next_id, &mut random)))
            }
            1 if rows.len() > 10 => (Some(rows[index].clone()), None),
            _ => {
                let id = match &rows[index][ds.key.column] {
                    Value::Integer(id) => *id,
                    _ => unreachable!(),
                };
                (
                    Some(rows[index].clone()),
                    Some(random_row(&ds, &c, id, &mut random)),
                )
            }
        };
        let mut after = rows.clone();
        match (&old, &new) {
            (Some(_), Some(row)) => after[index] = row.clone(),
            (Some(_), None) => {
                after.remove(index);
            }
            (None, Some(row)) => after.push(row.clone()),
            (None, None) => unreachable!(),
        }
        let write = RecordedWrite::row(seq, old, new);
        for query in &queries {
            let (before_rows, before_more) = page(&ds, query, &rows);
            let limited: Vec<Vec<Value>> = rows
                .iter()
                .filter(|r| on_page_side(&ds, query, Some(r)).is_some())
                .cloned()
                .collect();
            let mut sorted = limited;
            sorted.sort_by(|a, b| {
                compare(
                    &ds,
                    query.sort,
                    Place::of(&ds, query.sort, a),
                    Place::of(&ds, query.sort, b),
                )
                .unwrap()
            });
            let end = PageEnd::of(
                &ds,
                query,
                &sorted[..sorted.len().min(query.limit as usize + 1)],
            );
            let subject = Subject::Query(query);
            if changes(&ds, &subject, end.as_ref(), &write) {
                changed += 1;
            } else {
                left_alone += 1;
                assert_eq!(
                    (before_rows, before_more),
                    page(&ds, query, &after),
                    "write {seq} was left alone but changes {query:?}: {write:?}"
                );
            }
        }
        for column in [c.year, c.genres, c.metacritic] {
            let subject = Subject::Facets {
                query: &facet_query,
                column,
            };
            if !changes(&ds, &subject, None, &write) {
                assert_eq!(
                    facets(&ds, &facet_query, column, &rows),
                    facets(&ds, &facet_query, column, &after),
                    "write {seq} was left alone but changes facets of {column}"
                );
            }
        }
        rows = after;
    }
    // The rule is not only safe but useful: most pages outlive most writes.
    assert!(
        left_alone > changed,
        "left alone {left_alone}, changed {changed}"
    );
}

#[test]
fn removing_the_only_row_after_a_page_ends_it_and_others_do_not() {
    let ds = movies();
    let year = ds.column_index("year").unwrap();
    let query = Query::parse(&ds, QueryKind::List, "sort=year&limit=2").unwrap();
    let row = |id: i64, y: i64| {
        let mut row = vec![Value::Null; ds.columns.len()];
        row[ds.key.column] = Value::Integer(id);
        row[year] = Value::Integer(y);
        row
    };
    let rows = vec![row(1, 2000), row(2, 2001), row(3, 2002)];
    let end = PageEnd::of(&ds, &query, &rows);
    assert!(end.is_some(), "a full page followed by another has an end");
    let subject = Subject::Query(&query);
    let write = |old: Option<Vec<Value>>, new: Option<Vec<Value>>| RecordedWrite::row(1, old, new);
    // A new row after the page, or the next row moving further: the page stays.
    assert!(!changes(
        &ds,
        &subject,
        end.as_ref(),
        &write(None, Some(row(9, 2010)))
    ));
    assert!(!changes(
        &ds,
        &subject,
        end.as_ref(),
        &write(Some(row(3, 2002)), Some(row(3, 2011)))
    ));
    // The only row after the page deleted: the page loses its next link.
    assert!(changes(
        &ds,
        &subject,
        end.as_ref(),
        &write(Some(row(3, 2002)), None)
    ));
    // A row moving onto the page, or one on it changing.
    assert!(changes(
        &ds,
        &subject,
        end.as_ref(),
        &write(Some(row(3, 2002)), Some(row(3, 1990)))
    ));
    assert!(changes(
        &ds,
        &subject,
        end.as_ref(),
        &write(Some(row(2, 2001)), Some(row(2, 2001)))
    ));
    // A last page (no end): any row passing the filters.
    assert!(changes(
        &ds,
        &subject,
        None,
        &write(None, Some(row(9, 2010)))
    ));
}

/// A write record and a page's end keep values as the database compares them: floats exactly
/// (3.3 * 3 is not 9.9), timestamps to the microsecond (what every engine stores).
#[test]
fn records_keep_values_as_the_database_compares_them() {
    let ds = movies();
    let box_office = ds.column_index("box_office").unwrap();
    let mut row = vec![Value::Null; ds.columns.len()];
    row[ds.key.column] = Value::Integer(7);
    row[box_office] = Value::Float(3.3 * 3.0);
    let payload = RecordedWrite::encode_payload(&[RowChange {
        old: Some(row.clone()),
        new: None,
    }]);
    let decoded = RecordedWrite::decode(&ds, &format!("1 {payload}")).unwrap();
    assert_eq!(
        decoded.rows[0].old.as_ref().unwrap()[box_office],
        Value::Float(3.3 * 3.0)
    );
    let export = Query::parse(&ds, QueryKind::Export, "box_office.lt=9.9").unwrap();
    let write = RecordedWrite::decode(&ds, &format!("1 {payload}")).unwrap();
    assert!(
        changes(&ds, &Subject::Query(&export), None, &write),
        "9.899999999999999 < 9.9: deleting it changes the export"
    );

    let at = |raw: &str| Value::parse_scalar(crate::datasets::ColumnType::Timestamp, raw).unwrap();
    assert_eq!(
        at("2026-01-01T12:00:01.00000004Z"),
        at("2026-01-01T12:00:01Z"),
        "nanoseconds are not stored, so they do not count"
    );
    assert_ne!(
        at("2026-01-01T12:00:01.000001Z"),
        at("2026-01-01T12:00:01Z")
    );
}

/// A sync's record of many rows reads back as the same row changes, and changes an answer when
/// any one of them would.
#[test]
fn a_record_of_many_rows_round_trips_and_counts_each_row() {
    let ds = movies();
    let year = ds.column_index("year").unwrap();
    let film = |id: i64, y: i64| {
        let mut row = vec![Value::Null; ds.columns.len()];
        row[ds.key.column] = Value::Integer(id);
        row[year] = Value::Integer(y);
        row
    };
    let rows = vec![
        RowChange {
            old: Some(film(1, 1990)),
            new: Some(film(1, 1991)),
        },
        RowChange {
            old: None,
            new: Some(film(2, 2005)),
        },
        RowChange {
            old: Some(film(3, 1970)),
            new: None,
        },
    ];
    let payload = RecordedWrite::encode_payload(&rows);
    let decoded = RecordedWrite::decode(&ds, &format!("7 {payload}")).unwrap();
    assert_eq!((decoded.seq, decoded.everything), (7, false));
    assert_eq!(decoded.rows, rows);
    let count = |filter: &str| Query::parse(&ds, QueryKind::Count, filter).unwrap();
    for (filter, changed) in [
        ("year=1991", true),
        ("year=2005", true),
        ("year=1970", true),
        ("year=1980", false),
    ] {
        let query = count(filter);
        assert_eq!(
            changes(&ds, &Subject::Query(&query), None, &decoded),
            changed,
            "{filter}"
        );
    }
    // A record that does not fit the dataset is not trusted.
    assert!(RecordedWrite::decode(&ds, "8 {\"rows\": [[null]]}").is_none());
    assert!(RecordedWrite::decode(&ds, "8 {\"rows\": 3}").is_none());
}

/// A record is written as JSON by hand (not through `serde_json::Value`): text that needs
/// escaping, lists, floats and nulls read back as they were written.
#[test]
fn a_record_of_awkward_values_round_trips() {
    let ds = movies();
    let mut row = vec![Value::Null; ds.columns.len()];
    row[ds.key.column] = Value::Integer(-3);
    row[ds.column_index("title").unwrap()] = Value::Text("\"Q\" \\ tab\t nl\n \u{1} é 🎬".into());
    row[ds.column_index("genres").unwrap()] =
        Value::List(vec!["Sci\"Fi".into(), String::new(), "a,b".into()]);
    row[ds.column_index("box_office").unwrap()] = Value::Float(-1.5e-7);
    let rows = [
        RowChange {
            old: None,
            new: Some(row.clone()),
        },
        RowChange {
            old: Some(row),
            new: None,
        },
    ];
    for rows in [&rows[..1], &rows[..]] {
        let payload = RecordedWrite::encode_payload(rows);
        let decoded = RecordedWrite::decode(&ds, &format!("2 {payload}")).unwrap();
        assert_eq!(decoded.rows, rows, "{payload}");
    }
}
