//! A dataset's write log as one process holds it (the in-process log, or an instance's copy of
//! the one in Redis): consecutive records of one epoch, oldest first, bounded in records and in
//! row changes, with an index of the keys each record touched. An item's freshness check is
//! then one lookup, where it walked every write since the item was last checked: under a stream
//! of writes that walk (a few hundred records a hit) was a tenth of the CRUD mix's CPU.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::fresh::{KEPT_ROW_CHANGES, RecordedWrite};
use crate::datasets::{Value, normalise_text};

/// A row's key as item lookups compare it (`fresh::same_key`): text normalised, so that every
/// key the comparison calls the same is one index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Integer(i64),
    /// A float's bits, `-0.0` counted as `0.0` (they compare equal).
    Float(u64),
    Text(String),
    /// Any other value, as JSON (equal values write the same JSON; two that differ only where
    /// JSON cannot tell them apart share an entry, which only makes a check say "changed").
    Other(String),
}

impl RecordKey {
    pub fn of(key: &Value) -> RecordKey {
        match key {
            Value::Integer(i) => RecordKey::Integer(*i),
            Value::Float(f) => RecordKey::Float((f + 0.0).to_bits()),
            Value::Text(text) => RecordKey::Text(normalise_text(text)),
            other => RecordKey::Other(other.to_json().to_string()),
        }
    }

    /// A text that differs for different keys (a write's tag while it is in flight).
    pub fn tag(&self) -> String {
        match self {
            RecordKey::Integer(i) => format!("i{i}"),
            RecordKey::Float(bits) => format!("f{bits}"),
            RecordKey::Text(text) => format!("t{text}"),
            RecordKey::Other(json) => format!("o{json}"),
        }
    }
}

/// Consecutive records of one epoch of a dataset's write log.
#[derive(Default)]
pub struct RecordLog {
    records: VecDeque<Arc<RecordedWrite>>,
    /// Row changes in `records` (a sync's record holds many).
    rows: usize,
    /// The newest seq among `records` that touched each key (its old or its new row).
    touched: HashMap<RecordKey, u64>,
    /// The newest seq among `records` that changed everything (0: none).
    everything: u64,
}

impl RecordLog {
    pub fn first_seq(&self) -> Option<u64> {
        self.records.front().map(|record| record.seq)
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.records.back().map(|record| record.seq)
    }

    /// Adds the record after the last one (a record that does not follow on is ignored), then
    /// lets the oldest go past `capacity` records or [`KEPT_ROW_CHANGES`] row changes.
    pub fn push(&mut self, record: Arc<RecordedWrite>, capacity: usize) {
        if self.last_seq().is_some_and(|last| record.seq != last + 1) {
            return;
        }
        for key in &record.keys {
            self.touched.insert(key.clone(), record.seq);
        }
        // A record of rows whose keys were not given cannot be looked up by key: it counts as a
        // change of everything, never as a change of nothing.
        if record.everything || (record.keys.is_empty() && !record.rows.is_empty()) {
            self.everything = record.seq;
        }
        self.rows += record.rows.len();
        self.records.push_back(record);
        while self.records.len() > capacity
            || (self.rows > KEPT_ROW_CHANGES && self.records.len() > 1)
        {
            let Some(first) = self.records.pop_front() else {
                break;
            };
            self.rows -= first.rows.len();
            for key in &first.keys {
                if self.touched.get(key) == Some(&first.seq) {
                    self.touched.remove(key);
                }
            }
        }
    }

    /// Whether every record after `seq` through `current` is here.
    fn covers(&self, seq: u64, current: u64) -> bool {
        current <= seq
            || matches!(
                (self.first_seq(), self.last_seq()),
                (Some(first), Some(last)) if first <= seq + 1 && last >= current
            )
    }

    /// The records after `seq` (through at least `current`), if all are here.
    pub fn after(&self, seq: u64, current: u64) -> Option<Vec<Arc<RecordedWrite>>> {
        if !self.covers(seq, current) {
            return None;
        }
        // Found by seq (records are consecutive), not by a walk from the oldest.
        let skip = self.records.partition_point(|record| record.seq <= seq);
        Some(self.records.range(skip..).cloned().collect())
    }

    /// Whether a record after `seq` touched `key` or changed everything, if every record after
    /// `seq` through `current` is here. (A record after `current` counts too: it errs on the
    /// side of "changed", as freshness does.)
    pub fn touched_after(&self, seq: u64, current: u64, key: &RecordKey) -> Option<bool> {
        if !self.covers(seq, current) {
            return None;
        }
        Some(self.everything > seq || self.touched.get(key).is_some_and(|&at| at > seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fresh::RowChange;

    fn write(seq: u64, keys: &[i64]) -> Arc<RecordedWrite> {
        let row = |key: i64| Some(vec![Value::Integer(key)]);
        Arc::new(RecordedWrite {
            seq,
            rows: keys
                .iter()
                .map(|&key| RowChange {
                    old: row(key),
                    new: row(key),
                })
                .collect(),
            everything: false,
            keys: keys.iter().map(|&key| RecordKey::Integer(key)).collect(),
        })
    }

    fn key(key: i64) -> RecordKey {
        RecordKey::Integer(key)
    }

    #[test]
    fn a_key_is_touched_after_a_seq_only_by_a_later_record_of_it() {
        let mut log = RecordLog::default();
        for (seq, keys) in [(1, &[10][..]), (2, &[20]), (3, &[10, 30])] {
            log.push(write(seq, keys), 8);
        }
        assert_eq!(log.touched_after(0, 3, &key(20)), Some(true));
        assert_eq!(log.touched_after(2, 3, &key(20)), Some(false));
        assert_eq!(log.touched_after(2, 3, &key(10)), Some(true));
        assert_eq!(log.touched_after(3, 3, &key(10)), Some(false));
        assert_eq!(log.touched_after(0, 3, &key(99)), Some(false));
        assert_eq!(log.touched_after(3, 4, &key(99)), None, "seq 4 is not here");
        log.push(Arc::new(RecordedWrite::everything(4)), 8);
        assert_eq!(log.touched_after(3, 4, &key(99)), Some(true));
        assert_eq!(log.touched_after(4, 4, &key(99)), Some(false));
        log.push(write(9, &[99]), 8);
        assert_eq!(
            log.last_seq(),
            Some(4),
            "a record that does not follow on is ignored"
        );
    }

    #[test]
    fn records_let_go_take_their_keys_with_them() {
        let mut log = RecordLog::default();
        for seq in 1..=4 {
            log.push(write(seq, &[i64::try_from(seq).unwrap(), 100]), 2);
        }
        assert_eq!(log.first_seq(), Some(3));
        assert_eq!(log.touched_after(0, 4, &key(1)), None, "seq 1 was let go");
        assert_eq!(log.touched_after(2, 4, &key(1)), Some(false));
        assert_eq!(log.touched_after(2, 4, &key(100)), Some(true));
        assert_eq!(log.touched.len(), 3, "keys 3, 4 and 100 only");
        assert_eq!(log.after(2, 4).map(|r| r.len()), Some(2));
        assert_eq!(log.after(3, 4).map(|r| r.len()), Some(1));
        assert!(log.after(1, 4).is_none());
    }

    #[test]
    fn keys_are_compared_as_item_lookups_compare_them() {
        let text = |s: &str| RecordKey::of(&Value::Text(s.into()));
        assert_eq!(text(" Alien "), text("alien"));
        assert_eq!(
            RecordKey::of(&Value::Float(-0.0)),
            RecordKey::of(&Value::Float(0.0))
        );
        assert_ne!(RecordKey::of(&Value::Integer(1)), text("1"));
    }
}
