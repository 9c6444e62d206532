//! The in-process store (no `REDIS_URL`): write positions and logs, hot-path scores and
//! rate-limit windows in this process's memory. Entries live in the cache's memory tier, which
//! in this mode is the whole cache, and leases are not needed: one process's flights already
//! share each computation.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::entry::CachedResponse;
use super::fresh::{RecordedWrite, Stamp};
use super::hot::LocalScores;
use super::store::{NewWrite, Store, Unavailable};
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
    stamp: Stamp,
    /// Recent writes, oldest first.
    recent: VecDeque<RecordedWrite>,
}

#[async_trait]
impl Store for LocalStore {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn stamp(&self, dataset: &str) -> Result<Stamp, Unavailable> {
        let writes = self.writes.lock();
        Ok(writes.get(dataset).map(|log| log.stamp).unwrap_or_default())
    }

    async fn record_write(
        &self,
        dataset: &str,
        write: NewWrite,
        capacity: usize,
    ) -> Result<(), Unavailable> {
        let mut writes = self.writes.lock();
        let log = writes.entry(dataset.to_owned()).or_default();
        log.stamp.seq += 1;
        log.recent.push_back(RecordedWrite {
            seq: log.stamp.seq,
            old: write.old,
            new: write.new,
        });
        while log.recent.len() > capacity {
            log.recent.pop_front();
        }
        Ok(())
    }

    async fn writes_since(
        &self,
        dataset: &Dataset,
        seq: u64,
        _current: u64,
    ) -> Result<Option<Vec<RecordedWrite>>, Unavailable> {
        let writes = self.writes.lock();
        let Some(log) = writes.get(&dataset.name) else {
            return Ok(Some(Vec::new()));
        };
        // Every write since `seq` must still be remembered.
        let remembered_from = log.recent.front().map_or(log.stamp.seq + 1, |w| w.seq);
        if remembered_from > seq + 1 {
            return Ok(None);
        }
        Ok(Some(
            log.recent.iter().filter(|w| w.seq > seq).cloned().collect(),
        ))
    }

    async fn purge(&self, dataset: &str) -> Result<(), Unavailable> {
        let mut writes = self.writes.lock();
        let log = writes.entry(dataset.to_owned()).or_default();
        log.stamp = Stamp {
            epoch: log.stamp.epoch + 1,
            seq: 0,
        };
        log.recent.clear();
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
