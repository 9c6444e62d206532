//! Freshness: whether a stored answer still answers its question, from the dataset's write
//! position and the writes recorded since the answer was computed (see the module documentation
//! of [`super`]), judged per answer: what a write can change of a sorted page, a facet count or
//! an item, not only whether it passes the filters.

use std::cmp::Ordering;
use std::sync::atomic::Ordering as AtomicOrdering;

use crate::datasets::{Dataset, Value};
use crate::query::order::{Place, compare};
use crate::query::{Query, QueryKind};

use super::Subject;
use super::entry::CachedResponse;
use super::records::RecordKey;
use super::store::{Store, Unavailable};

/// Writes remembered per dataset for validating entries; an entry older than the oldest
/// remembered write is treated as stale.
pub const WRITE_LOG_CAPACITY: usize = 4096;
/// The largest record of one write (the key, filterable and sortable columns of the old and new
/// rows, as JSON). A write whose record would be larger is recorded as a change of the whole
/// dataset instead, so the log stays bounded in bytes and cheap to read.
pub const WRITE_RECORD_MAX_BYTES: usize = 2048;
/// Row changes a process keeps of one dataset's write log (its in-process log, or its copy of
/// the shared one), so that a few records of many rows (syncs) bound memory too; an entry whose
/// records were let go is recomputed.
pub const KEPT_ROW_CHANGES: usize = 65_536;
/// The most writes one freshness check reads (from the instance's copy of the log, so cheap);
/// an entry with more writes since it was last checked is simply recomputed.
const MAX_WRITES_CHECKED: u64 = 1024;
/// A write log record that changes every answer of the dataset (an import, a write too large to
/// record row by row, the start of an epoch).
pub const EVERYTHING: &str = "*";

/// The write position an answer is stamped with: every write at or before it that can change
/// the answer had finished (or could no longer commit) when the answer was made (for an answer
/// computed by a query, every write at all; for a row's answer kept by its write, every write of
/// that row: `Cache::keep_written`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub epoch: u64,
    pub seq: u64,
}

/// A dataset's write position as the store reports it: the last recorded write (`seq`), and the
/// last position before any write still in flight (`settled`, at most `seq`). A write is
/// recorded before its transaction commits, so an answer computed now may or may not see the
/// writes after `settled`: it is stamped `settled`, and those writes are checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
    pub settled: u64,
}

impl Position {
    /// The stamp of an answer whose query starts now.
    pub fn stamp(self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            seq: self.settled.min(self.seq),
        }
    }

    /// Whether no write is in flight.
    pub fn is_settled(self) -> bool {
        self.settled >= self.seq
    }
}

/// One row's change as the write log keeps it (create: `old` None; delete: `new` None).
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    pub old: Option<Vec<Value>>,
    pub new: Option<Vec<Value>>,
}

/// One record of the write log: a write's row change, the row changes of a sync (recorded
/// together, so they take one position and one freshness check, like one write), or a change of
/// every answer.
#[derive(Clone, Debug)]
pub struct RecordedWrite {
    pub seq: u64,
    pub rows: Vec<RowChange>,
    /// Every answer of the dataset changed (an import, a write too large to record).
    pub everything: bool,
    /// The keys of the rows it touched ([`row_keys`]), for the log's index of them.
    pub keys: Vec<RecordKey>,
}

impl RecordedWrite {
    /// The record of one row's change (without its keys: [`changes`] reads the rows).
    #[cfg(test)]
    pub fn row(seq: u64, old: Option<Vec<Value>>, new: Option<Vec<Value>>) -> RecordedWrite {
        RecordedWrite {
            seq,
            rows: vec![RowChange { old, new }],
            everything: false,
            keys: Vec::new(),
        }
    }

    /// The changes as a shared write log stores them (after `"<seq> "`): `[old, new]` for one
    /// row, `{"rows": [[old, new], ...]}` for several.
    pub fn encode_payload(rows: &[RowChange]) -> String {
        // Written straight out: through `serde_json::Value`s it was most of a write's record.
        let mut out = Vec::new();
        let row = |out: &mut Vec<u8>, row: &Option<Vec<Value>>| match row {
            Some(values) => {
                out.push(b'[');
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    value.write_json(out);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        };
        let pair = |out: &mut Vec<u8>, change: &RowChange| {
            out.push(b'[');
            row(out, &change.old);
            out.push(b',');
            row(out, &change.new);
            out.push(b']');
        };
        match rows {
            [one] => pair(&mut out, one),
            many => {
                out.extend_from_slice(br#"{"rows":["#);
                for (i, change) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    pair(&mut out, change);
                }
                out.extend_from_slice(b"]}");
            }
        }
        String::from_utf8(out).expect("write_json writes UTF-8")
    }

    /// A `"<seq> [old, new]"`, `"<seq> {"rows": ...}"` or `"<seq> *"` item of a shared write
    /// log; `None` when it does not fit `dataset` (the caller then treats the answer as stale).
    pub fn decode(dataset: &Dataset, item: &str) -> Option<RecordedWrite> {
        let (seq, payload) = item.split_once(' ')?;
        let seq = seq.parse().ok()?;
        if payload == EVERYTHING {
            return Some(RecordedWrite::everything(seq));
        }
        let json: serde_json::Value = serde_json::from_str(payload).ok()?;
        let row = |v: &serde_json::Value| -> Option<Option<Vec<Value>>> {
            match v {
                serde_json::Value::Null => Some(None),
                serde_json::Value::Array(cells) if cells.len() == dataset.columns.len() => {
                    Some(Some(
                        cells
                            .iter()
                            .zip(&dataset.columns)
                            .map(|(cell, column)| Value::from_json(column, cell))
                            .collect::<Option<_>>()?,
                    ))
                }
                _ => None,
            }
        };
        let pair = |v: &serde_json::Value| -> Option<RowChange> {
            Some(RowChange {
                old: row(v.get(0)?)?,
                new: row(v.get(1)?)?,
            })
        };
        let rows = match json.get("rows") {
            Some(serde_json::Value::Array(pairs)) => {
                pairs.iter().map(pair).collect::<Option<Vec<_>>>()?
            }
            Some(_) => return None,
            None => vec![pair(&json)?],
        };
        Some(RecordedWrite {
            seq,
            keys: row_keys(dataset, &rows),
            rows,
            everything: false,
        })
    }

    pub fn everything(seq: u64) -> RecordedWrite {
        RecordedWrite {
            seq,
            rows: Vec::new(),
            everything: true,
            keys: Vec::new(),
        }
    }
}

/// Where a full page ends, kept with the page's entry: the last row's sort value and key, and
/// the key of the row after it (the page fetched one more than its limit). A write whose rows
/// all sort after the last one cannot change the page, unless it removes the only row after it
/// (which would end the next page's link): hence the next row's key.
#[derive(Debug, Clone, PartialEq)]
pub struct PageEnd {
    pub sort_value: serde_json::Value,
    pub key: serde_json::Value,
    pub next_key: serde_json::Value,
}

impl PageEnd {
    /// The end of a page of `limit` rows out of `rows` (which hold one more when a next page
    /// exists); `None` when the page is not followed by another.
    pub fn of(dataset: &Dataset, query: &Query, rows: &[Vec<Value>]) -> Option<PageEnd> {
        let limit = usize::try_from(query.limit).ok()?;
        let (last, next) = (rows.get(limit.checked_sub(1)?)?, rows.get(limit)?);
        Some(PageEnd {
            sort_value: last[query.sort.column].to_json(),
            key: last[dataset.key.column].to_json(),
            next_key: next[dataset.key.column].to_json(),
        })
    }
}

/// Whether `entry` still answers `subject` correctly: nothing was written since its stamp, or
/// every write since is remembered and none of them can change this answer.
pub async fn is_fresh(
    store: &dyn Store,
    dataset: &Dataset,
    subject: &Subject<'_>,
    entry: &CachedResponse,
) -> Result<bool, Unavailable> {
    let stamp = entry.stamp;
    let current = store.position(&dataset.name).await?;
    if current.epoch != stamp.epoch || current.seq < stamp.seq {
        return Ok(false);
    }
    // Writes up to `checked` were found not to change this copy on an earlier read.
    let checked = entry
        .checked_through
        .load(AtomicOrdering::Relaxed)
        .max(stamp.seq);
    if current.seq <= checked {
        return Ok(true);
    }
    if current.seq - checked > MAX_WRITES_CHECKED {
        return Ok(false);
    }
    let unchanged = match subject {
        // One lookup in the log's index of keys, not a walk over every write since.
        Subject::Item(key) => store
            .key_touched_since(
                dataset,
                stamp.epoch,
                checked,
                current.seq,
                &RecordKey::of(key),
            )
            .await?
            .map(|touched| !touched),
        _ => store
            .writes_since(dataset, stamp.epoch, checked, current.seq)
            .await?
            .map(|writes| {
                !writes
                    .iter()
                    .any(|write| changes(dataset, subject, entry.page_end.as_ref(), write))
            }),
    };
    let fresh = unchanged.unwrap_or(false);
    if fresh {
        entry
            .checked_through
            .fetch_max(current.seq, AtomicOrdering::Relaxed);
    }
    Ok(fresh)
}

/// Whether `write` can change the answer about `subject` (`page_end`: where a stored page
/// ends, if it is followed by another). Errs on the side of "yes" wherever it cannot be sure.
pub fn changes(
    dataset: &Dataset,
    subject: &Subject<'_>,
    page_end: Option<&PageEnd>,
    write: &RecordedWrite,
) -> bool {
    if write.everything {
        return true;
    }
    // Read back once per record, not once per row of a sync's record.
    let page_end = match subject {
        Subject::Query(query) if query.kind == QueryKind::List => {
            page_end.and_then(|end| PageEndValues::decode(dataset, query, end))
        }
        _ => None,
    };
    write
        .rows
        .iter()
        .any(|row| row_changes(dataset, subject, page_end.as_ref(), row))
}

/// Whether one row's change can change the answer (see [`changes`]).
fn row_changes(
    dataset: &Dataset,
    subject: &Subject<'_>,
    page_end: Option<&PageEndValues>,
    change: &RowChange,
) -> bool {
    let (old, new) = (change.old.as_deref(), change.new.as_deref());
    match subject {
        Subject::Item(key) => [old, new]
            .into_iter()
            .flatten()
            .any(|row| same_key(&row[dataset.key.column], key)),
        Subject::Facets { query, column } => {
            match (passing(dataset, query, old), passing(dataset, query, new)) {
                (None, None) => false,
                // The same row counted under the same value: every count and label stays.
                (Some(old), Some(new)) => old[*column] != new[*column],
                _ => true,
            }
        }
        Subject::Query(query) if query.kind == QueryKind::List => {
            changes_page(dataset, query, page_end, old, new)
        }
        // A count changes only when a row enters or leaves the filters.
        Subject::Query(query) if query.kind == QueryKind::Count => {
            passing(dataset, query, old).is_some() != passing(dataset, query, new).is_some()
        }
        Subject::Query(query) => [old, new]
            .into_iter()
            .flatten()
            .any(|row| query.matches(dataset, row)),
    }
}

/// A page of a sorted list: the rows passing the filters after the cursor, up to the limit.
fn changes_page(
    dataset: &Dataset,
    query: &Query,
    end: Option<&PageEndValues>,
    old: Option<&[Value]>,
    new: Option<&[Value]>,
) -> bool {
    let sort = query.sort;
    let (old, new) = (
        on_page_side(dataset, query, old),
        on_page_side(dataset, query, new),
    );
    if old.is_none() && new.is_none() {
        return false;
    }
    // A page that ends the list (or whose end cannot be read back): any eligible row is on it,
    // or would be.
    let Some(end) = end else {
        return true;
    };
    let beyond = |row: &[Value]| {
        compare(dataset, sort, Place::of(dataset, sort, row), end.place())
            == Some(Ordering::Greater)
    };
    if old.is_some_and(|r| !beyond(r)) || new.is_some_and(|r| !beyond(r)) {
        return true;
    }
    // Both after the page: only a row leaving the rest of the list can matter, and only if it
    // was the one row after the page.
    match (old, new) {
        (Some(old), None) => same_key(&old[dataset.key.column], &end.next_key),
        _ => false,
    }
}

/// `row`, if it passes the query's filters.
fn passing<'r>(dataset: &Dataset, query: &Query, row: Option<&'r [Value]>) -> Option<&'r [Value]> {
    row.filter(|r| query.matches(dataset, r))
}

/// `row`, if it passes the query's filters and is after its cursor (if any), or may be.
fn on_page_side<'r>(
    dataset: &Dataset,
    query: &Query,
    row: Option<&'r [Value]>,
) -> Option<&'r [Value]> {
    passing(dataset, query, row).filter(|r| {
        query.cursor.as_ref().is_none_or(|cursor| {
            let from = Place {
                sort_value: &cursor.sort_value,
                key: &cursor.key,
            };
            let place = Place::of(dataset, query.sort, r);
            !matches!(
                compare(dataset, query.sort, place, from),
                Some(Ordering::Less | Ordering::Equal)
            )
        })
    })
}

/// A [`PageEnd`] read back as values of the dataset's columns.
struct PageEndValues {
    sort_value: Value,
    key: Value,
    next_key: Value,
}

impl PageEndValues {
    fn decode(dataset: &Dataset, query: &Query, end: &PageEnd) -> Option<PageEndValues> {
        let key_column = dataset.key_column();
        Some(PageEndValues {
            sort_value: Value::from_json(&dataset.columns[query.sort.column], &end.sort_value)?,
            key: Value::from_json(key_column, &end.key)?,
            next_key: Value::from_json(key_column, &end.next_key)?,
        })
    }

    fn place(&self) -> Place<'_> {
        Place {
            sort_value: &self.sort_value,
            key: &self.key,
        }
    }
}

/// Whether a recorded key is the key an answer is about: as the log's index compares keys
/// ([`RecordKey`]: text normalised, as the item lookup does), so a walk over the records and a
/// lookup in the index can never disagree.
fn same_key(recorded: &Value, key: &Value) -> bool {
    match (recorded, key) {
        (Value::Integer(a), Value::Integer(b)) => a == b,
        (a, b) => RecordKey::of(a) == RecordKey::of(b),
    }
}

/// The keys of the rows that `changes` touch (old and new), as the log's index keeps them.
pub fn row_keys(dataset: &Dataset, changes: &[RowChange]) -> Vec<RecordKey> {
    let mut keys: Vec<RecordKey> = changes
        .iter()
        .flat_map(|change| [&change.old, &change.new])
        .flatten()
        .map(|row| RecordKey::of(&row[dataset.key.column]))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The row as the write log keeps it: the key and the columns a cached answer can depend on
/// (filters, sorts); the others are nulls that nothing reads.
pub fn freshness_columns(dataset: &Dataset, row: Vec<Value>) -> Vec<Value> {
    row.into_iter()
        .zip(&dataset.columns)
        .enumerate()
        .map(|(index, (value, column))| {
            if index == dataset.key.column || column.filterable || column.sortable {
                value
            } else {
                Value::Null
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "fresh_tests.rs"]
mod tests;
