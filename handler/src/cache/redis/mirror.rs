//! The write log's records already read from Redis, kept in process: a record never changes once
//! written (a seq is given once per epoch), so a freshness check fetches only newer ones.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::cache::fresh::{KEPT_ROW_CHANGES, RecordedWrite};

/// Consecutive records of one epoch of a dataset's write log, as read from Redis.
pub struct Mirror {
    pub epoch: u64,
    records: VecDeque<Arc<RecordedWrite>>,
    /// Row changes in `records` (a sync's record holds many).
    rows: usize,
}

/// Records kept per dataset: as many as a freshness check may read.
const MIRRORED: usize = 1024;

impl Mirror {
    pub fn new(epoch: u64) -> Self {
        Mirror {
            epoch,
            records: VecDeque::new(),
            rows: 0,
        }
    }

    /// The records after `seq` through at least `current`, if all are here.
    pub fn between(&self, seq: u64, current: u64) -> Option<Vec<Arc<RecordedWrite>>> {
        let (first, last) = (self.records.front()?.seq, self.records.back()?.seq);
        if first > seq + 1 || last < current {
            return None;
        }
        let skip = usize::try_from(seq + 1 - first).ok()?;
        Some(
            self.records
                .range(skip.min(self.records.len())..)
                .cloned()
                .collect(),
        )
    }

    /// Where fetching may start so that the result joins these records (else at `seq`).
    pub fn newest_after(&self, seq: u64) -> u64 {
        match (self.records.front(), self.records.back()) {
            (Some(first), Some(last)) if first.seq <= seq + 1 && last.seq >= seq => last.seq,
            _ => seq,
        }
    }

    /// Adds consecutive records read from `epoch`'s log, restarting when they do not follow on.
    pub fn extend(&mut self, epoch: u64, fetched: Vec<Arc<RecordedWrite>>) {
        let joins = self.epoch == epoch
            && match (self.records.back(), fetched.first()) {
                (Some(last), Some(first)) => first.seq <= last.seq + 1,
                _ => false,
            };
        if !joins {
            self.epoch = epoch;
            self.records.clear();
            self.rows = 0;
        }
        for record in fetched {
            if self
                .records
                .back()
                .is_none_or(|last| record.seq == last.seq + 1)
            {
                self.rows += record.rows.len();
                self.records.push_back(record);
            }
        }
        while self.records.len() > MIRRORED
            || (self.rows > KEPT_ROW_CHANGES && self.records.len() > 1)
        {
            if let Some(first) = self.records.pop_front() {
                self.rows -= first.rows.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(seqs: std::ops::RangeInclusive<u64>) -> Vec<Arc<RecordedWrite>> {
        seqs.map(|seq| Arc::new(RecordedWrite::everything(seq)))
            .collect()
    }

    fn seqs(writes: Option<Vec<Arc<RecordedWrite>>>) -> Option<Vec<u64>> {
        writes.map(|w| w.iter().map(|r| r.seq).collect())
    }

    #[test]
    fn serves_what_it_holds_and_restarts_on_a_gap_or_a_new_epoch() {
        let mut mirror = Mirror::new(7);
        mirror.extend(7, records(3..=5));
        assert_eq!(seqs(mirror.between(2, 5)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(mirror.between(4, 5)), Some(vec![5]));
        assert_eq!(seqs(mirror.between(1, 5)), None, "seq 2 was never read");
        assert_eq!(seqs(mirror.between(4, 6)), None, "seq 6 is not here yet");
        assert_eq!(mirror.newest_after(4), 5, "fetch only what follows");
        assert_eq!(mirror.newest_after(0), 0, "too old: fetch from the start");
        // Overlapping records join on; a gap or another epoch starts over.
        mirror.extend(7, records(5..=6));
        assert_eq!(seqs(mirror.between(2, 6)), Some(vec![3, 4, 5, 6]));
        mirror.extend(7, records(9..=9));
        assert_eq!(seqs(mirror.between(8, 9)), Some(vec![9]));
        assert_eq!(seqs(mirror.between(2, 6)), None);
        mirror.extend(8, records(1..=2));
        assert_eq!(
            (mirror.epoch, seqs(mirror.between(0, 2))),
            (8, Some(vec![1, 2]))
        );
    }

    #[test]
    fn records_of_many_rows_are_let_go_past_the_row_budget() {
        let sync = |seq: u64| {
            let mut record = RecordedWrite::everything(seq);
            record.everything = false;
            record.rows = vec![
                crate::cache::fresh::RowChange {
                    old: None,
                    new: None
                };
                KEPT_ROW_CHANGES / 2
            ];
            Arc::new(record)
        };
        let mut mirror = Mirror::new(1);
        mirror.extend(1, vec![sync(1), sync(2)]);
        assert_eq!(seqs(mirror.between(0, 2)), Some(vec![1, 2]));
        mirror.extend(1, vec![sync(3)]);
        assert_eq!(seqs(mirror.between(0, 3)), None, "the oldest was let go");
        assert_eq!(seqs(mirror.between(1, 3)), Some(vec![2, 3]));
        // Three more at once: only the newest two fit.
        mirror.extend(1, vec![sync(4), sync(5), sync(6)]);
        assert_eq!(seqs(mirror.between(4, 6)), Some(vec![5, 6]));
    }
}
