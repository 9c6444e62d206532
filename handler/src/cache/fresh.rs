//! Freshness: whether a stored answer still answers its question, from the dataset's write
//! position and the writes recorded since the answer was computed (see the module documentation
//! of [`super`]).

use crate::datasets::{Dataset, Value, normalise_text};
use crate::query::{ExportFormat, Filter, FilterOp, Query, QueryKind, Sort};

use super::Subject;
use super::store::{Store, Unavailable};

/// Writes remembered per dataset for validating entries; an entry older than the oldest
/// remembered write is treated as stale.
pub const WRITE_LOG_CAPACITY: usize = 4096;
/// The largest record of one write (the key, filterable and sortable columns of the old and new
/// rows, as JSON). A write whose record would be larger is recorded as a change of the whole
/// dataset instead, so the log stays bounded in bytes and cheap to read.
pub const WRITE_RECORD_MAX_BYTES: usize = 2048;
/// The most writes one freshness check reads; an entry with more writes since it was computed
/// is simply recomputed.
const MAX_WRITES_CHECKED: u64 = 256;

/// A dataset's write position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub epoch: u64,
    pub seq: u64,
}

/// One write as the write log remembers it (create: `old` None; delete: `new` None).
#[derive(Clone)]
pub struct RecordedWrite {
    pub seq: u64,
    pub old: Option<Vec<Value>>,
    pub new: Option<Vec<Value>>,
}

impl RecordedWrite {
    /// `[old, new]` as JSON, as a shared write log stores it (after `"<seq> "`).
    pub fn encode_payload(old: &Option<Vec<Value>>, new: &Option<Vec<Value>>) -> String {
        let row = |r: &Option<Vec<Value>>| match r {
            Some(values) => serde_json::Value::Array(values.iter().map(Value::to_json).collect()),
            None => serde_json::Value::Null,
        };
        serde_json::Value::Array(vec![row(old), row(new)]).to_string()
    }

    /// A `"<seq> [old, new]"` item of a shared write log; `None` when it does not fit `dataset`
    /// (the caller then treats the answer as stale).
    pub fn decode(dataset: &Dataset, item: &str) -> Option<RecordedWrite> {
        let (seq, payload) = item.split_once(' ')?;
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
        Some(RecordedWrite {
            seq: seq.parse().ok()?,
            old: row(json.get(0)?)?,
            new: row(json.get(1)?)?,
        })
    }
}

/// Whether an entry stamped `stamp` still answers `subject` correctly: nothing was written
/// since, or every write since is remembered and none of them touches the answer.
pub async fn is_fresh(
    store: &dyn Store,
    dataset: &Dataset,
    subject: &Subject<'_>,
    stamp: Stamp,
) -> Result<bool, Unavailable> {
    let current = store.stamp(&dataset.name).await?;
    if current.epoch != stamp.epoch || current.seq < stamp.seq {
        return Ok(false);
    }
    if current.seq == stamp.seq {
        return Ok(true);
    }
    if current.seq - stamp.seq > MAX_WRITES_CHECKED {
        return Ok(false);
    }
    Ok(
        match store.writes_since(dataset, stamp.seq, current.seq).await? {
            Some(writes) => !touched_by(dataset, subject, writes.iter()),
            None => false,
        },
    )
}

/// Whether any of `writes` (old or new row) passes the filters of `subject`.
fn touched_by<'w>(
    dataset: &Dataset,
    subject: &Subject<'_>,
    mut writes: impl Iterator<Item = &'w RecordedWrite>,
) -> bool {
    let item_filter;
    let query = match subject {
        Subject::Query(query) => *query,
        Subject::Item(key) => {
            item_filter = item_query(dataset, key);
            &item_filter
        }
    };
    let touches =
        |row: &Option<Vec<Value>>| row.as_ref().is_some_and(|r| query.matches(dataset, r));
    writes.any(|w| touches(&w.old) || touches(&w.new))
}

/// The filter an item answer depends on: its own key.
fn item_query(dataset: &Dataset, key: &Value) -> Query {
    let value = match key {
        Value::Text(text) => Value::Text(normalise_text(text)),
        other => other.clone(),
    };
    Query {
        kind: QueryKind::List,
        filters: vec![Filter {
            column: dataset.key.column,
            op: FilterOp::Eq,
            value,
        }],
        sort: Sort {
            column: dataset.key.column,
            descending: false,
        },
        limit: 1,
        cursor: None,
        format: ExportFormat::Json,
    }
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
