//! The in-process store (no `REDIS_URL`): write positions and logs, hot-path scores and
//! rate-limit windows in this process's memory. Entries live in the cache's memory tier, which
//! in this mode is the whole cache, and leases are not needed: one process's flights already
//! share each computation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::entry::CachedResponse;
use super::fresh::{Position, RecordedWrite};
use super::hot::LocalScores;
use super::records::{RecordKey, RecordLog};
use super::store::{InFlight, NewWrite, Store, Unavailable, tags_conflict};
use super::windows::LocalWindows;
use crate::datasets::Dataset;

#[derive(Default)]
pub struct LocalStore {
    writes: Mutex<HashMap<String, WriteLog>>,
    hot: LocalScores,
    windows: LocalWindows,
}

#[derive(Default)]
struct WriteLog {
    epoch: u64,
    seq: u64,
    /// Recent writes, oldest first.
    recent: RecordLog,
    /// Writes recorded and not yet ended, with the time they stop counting as in flight and
    /// their tag (`NewWrite::in_flight_tag`).
    in_flight: Vec<(InFlight, Instant, String)>,
}

impl WriteLog {
    fn push(&mut self, write: &NewWrite, capacity: usize) -> u64 {
        self.seq += 1;
        let record = RecordedWrite {
            seq: self.seq,
            rows: write.rows.clone(),
            everything: write.everything,
            keys: write.keys.clone(),
        };
        self.recent.push(Arc::new(record), capacity);
        self.seq
    }

    /// The log of `epoch`, if it is the current one.
    fn of_epoch(&self, epoch: u64) -> Option<&RecordLog> {
        (self.epoch == epoch).then_some(&self.recent)
    }
}

#[async_trait]
impl Store for LocalStore {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn position(&self, dataset: &str) -> Result<Position, Unavailable> {
        let mut writes = self.writes.lock();
        let Some(log) = writes.get_mut(dataset) else {
            return Ok(Position::default());
        };
        let now = Instant::now();
        log.in_flight.retain(|(_, until, _)| *until > now);
        let settled = log
            .in_flight
            .iter()
            .fold(log.seq, |settled, (write, _, _)| {
                if write.epoch == log.epoch {
                    settled.min(write.seq - 1)
                } else {
                    0 // a write of the previous epoch: nothing of this one is settled yet
                }
            });
        Ok(Position {
            epoch: log.epoch,
            seq: log.seq,
            settled,
        })
    }

    async fn begin_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
        lifetime: Duration,
    ) -> Result<InFlight, Unavailable> {
        let mut writes = self.writes.lock();
        let log = writes.entry(dataset.to_owned()).or_default();
        let seq = log.push(write, capacity);
        let now = Instant::now();
        let tag = write.in_flight_tag();
        let in_flight = InFlight {
            epoch: log.epoch,
            seq,
            alone: !log
                .in_flight
                .iter()
                .any(|(_, until, other)| *until > now && tags_conflict(other, &tag)),
        };
        log.in_flight.push((in_flight, now + lifetime, tag));
        Ok(in_flight)
    }

    async fn end_write(&self, dataset: &str, write: InFlight) -> Result<bool, Unavailable> {
        let mut writes = self.writes.lock();
        let Some(log) = writes.get_mut(dataset) else {
            return Ok(false);
        };
        let before = log.in_flight.len();
        log.in_flight.retain(|(w, _, _)| *w != write);
        Ok(log.in_flight.len() < before && write.epoch == log.epoch)
    }

    async fn record_write(
        &self,
        dataset: &str,
        write: &NewWrite,
        capacity: usize,
    ) -> Result<(), Unavailable> {
        let mut writes = self.writes.lock();
        writes
            .entry(dataset.to_owned())
            .or_default()
            .push(write, capacity);
        Ok(())
    }

    async fn writes_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        _current: u64,
    ) -> Result<Option<Vec<Arc<RecordedWrite>>>, Unavailable> {
        let writes = self.writes.lock();
        let Some(log) = writes.get(&dataset.name) else {
            return Ok(Some(Vec::new()));
        };
        Ok(log
            .of_epoch(epoch)
            .and_then(|recent| recent.after(seq, log.seq)))
    }

    async fn key_touched_since(
        &self,
        dataset: &Dataset,
        epoch: u64,
        seq: u64,
        _current: u64,
        key: &RecordKey,
    ) -> Result<Option<bool>, Unavailable> {
        let writes = self.writes.lock();
        let Some(log) = writes.get(&dataset.name) else {
            return Ok(Some(false));
        };
        Ok(log
            .of_epoch(epoch)
            .and_then(|recent| recent.touched_after(seq, log.seq, key)))
    }

    /// A new epoch that starts with a change of everything, so an answer computed in it while a
    /// write of the old epoch is still in flight (stamped 0) is never fresh.
    async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
        let mut writes = self.writes.lock();
        let log = writes.entry(dataset.to_owned()).or_default();
        log.epoch += 1;
        log.seq = 1;
        log.recent = RecordLog::default();
        log.recent.push(Arc::new(RecordedWrite::everything(1)), 1);
        Ok(())
    }

    async fn get(&self, _key: &str, _large: bool) -> Result<Option<CachedResponse>, Unavailable> {
        Ok(None)
    }

    async fn set(
        &self,
        _key: &str,
        _entry: &CachedResponse,
        _ttl: Duration,
    ) -> Result<(), Unavailable> {
        Ok(())
    }

    async fn try_lease(
        &self,
        _lease_key: &str,
        _token: &str,
        _ttl: Duration,
    ) -> Result<bool, Unavailable> {
        Ok(true)
    }

    async fn lease_exists(&self, _lease_key: &str) -> Result<bool, Unavailable> {
        Ok(false)
    }

    async fn release_lease(&self, _lease_key: &str, _token: &str) -> Result<(), Unavailable> {
        Ok(())
    }

    async fn add_hot(&self, counts: Vec<(String, u64)>, keep: usize) -> Result<(), Unavailable> {
        self.hot.add(counts, keep);
        Ok(())
    }

    async fn top_hot(&self, limit: usize, decay: bool) -> Result<Vec<(String, f64)>, Unavailable> {
        Ok(self.hot.top(limit, decay))
    }

    async fn count_in_window(
        &self,
        name: &str,
        window: Duration,
    ) -> Result<(u64, Duration), Unavailable> {
        Ok(self.windows.count(name, window))
    }

    async fn uncount_in_window(&self, name: &str) -> Result<(), Unavailable> {
        self.windows.uncount(name);
        Ok(())
    }

    async fn peek_window(&self, name: &str) -> Result<(u64, Duration), Unavailable> {
        Ok(self.windows.peek(name))
    }

    async fn ping(&self) -> Result<(), Unavailable> {
        Ok(())
    }
}
