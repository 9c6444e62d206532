//! The write log's records already read from Redis, kept in process: a record never changes once
//! written (a seq is given once per epoch), so a freshness check fetches only newer ones.

use std::sync::Arc;

use super::{RedisStore, WRITES_AHEAD};
use crate::cache::fresh::RecordedWrite;
use crate::cache::records::{RecordKey, RecordLog};
use crate::cache::store::Unavailable;
use crate::datasets::Dataset;

/// Consecutive records of one epoch of a dataset's write log, as read from Redis.
pub struct Mirror {
    pub epoch: u64,
    records: RecordLog,
}

/// Records kept per dataset: as many as a freshness check may read.
const MIRRORED: usize = 1024;

impl Mirror {
    pub fn new(epoch: u64) -> Self {
        Mirror {
            epoch,
            records: RecordLog::default(),
        }
    }

    /// The records after `seq` through at least `current`, if all are here.
    pub fn between(&self, seq: u64, current: u64) -> Option<Vec<Arc<RecordedWrite>>> {
        self.records.after(seq, current)
    }

    /// Whether a record after `seq` touched `key` (see [`RecordLog::touched_after`]), if every
    /// record through `current` is here.
    pub fn touched_between(&self, seq: u64, current: u64, key: &RecordKey) -> Option<bool> {
        self.records.touched_after(seq, current, key)
    }

    /// Where fetching may start so that the result joins these records (else at `seq`).
    pub fn newest_after(&self, seq: u64) -> u64 {
        match (self.records.first_seq(), self.records.last_seq()) {
            (Some(first), Some(last)) if first <= seq + 1 && last >= seq => last,
            _ => seq,
        }
    }

    /// Adds consecutive records read from `epoch`'s log, restarting when they do not follow on.
    pub fn extend(&mut self, epoch: u64, fetched: Vec<Arc<RecordedWrite>>) {
        let joins = self.epoch == epoch
            && match (self.records.last_seq(), fetched.first()) {
                (Some(last), Some(first)) => first.seq <= last + 1,
                _ => false,
            };
        if !joins {
            self.epoch = epoch;
            self.records = RecordLog::default();
        }
        for record in fetched {
            // Those already here are skipped (a record that does not follow on is).
            if self.records.last_seq().is_none_or(|last| record.seq > last) {
                self.records.push(record, MIRRORED);
            }
        }
    }
}

impl RedisStore {
    /// `read` of this instance's copy of the dataset's write log once it holds every record of
    /// `epoch` after `seq` through `current`, fetching the newer ones from Redis first; `None`
    /// when Redis no longer has them all (or the epoch is over).
    pub(super) async fn mirrored<T>(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        current: u64,
        read: impl Fn(&Mirror) -> Option<T>,
    ) -> Result<Option<T>, Unavailable> {
        let fetch_after = {
            let mirrors = self.mirrors.lock();
            match mirrors.get(&dataset.name) {
                Some(mirror) if mirror.epoch == epoch => {
                    if let Some(answer) = read(mirror) {
                        return Ok(Some(answer));
                    }
                    mirror.newest_after(seq)
                }
                _ => seq,
            }
        };
        // Those that landed since the position was read come too (the mirror keeps them).
        let wanted = current.saturating_sub(fetch_after) + WRITES_AHEAD;
        let Some(items) = self
            .fetch_writes(&dataset.name, epoch, fetch_after, wanted)
            .await?
        else {
            return Ok(None); // the epoch is over
        };
        let fetched: Vec<Arc<RecordedWrite>> = items
            .iter()
            .filter_map(|item| RecordedWrite::decode(dataset, item).map(Arc::new))
            .collect();
        // Every write from fetch_after + 1 on must be there (more may have landed since).
        let covered = fetched.len() == items.len()
            && fetched.first().is_some_and(|w| w.seq <= fetch_after + 1)
            && fetched
                .windows(2)
                .all(|pair| pair[1].seq == pair[0].seq + 1);
        if !covered {
            return Ok(None);
        }
        let mut mirrors = self.mirrors.lock();
        let mirror = mirrors
            .entry(dataset.name.clone())
            .or_insert_with(|| Mirror::new(epoch));
        mirror.extend(epoch, fetched);
        Ok(read(mirror))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fresh::KEPT_ROW_CHANGES;

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
