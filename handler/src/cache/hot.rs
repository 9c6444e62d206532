//! Hot keys: accesses counted in process (a map increment per request), flushed to the shared
//! store now and then, and halved at every warm-up so old popularity fades.

use parking_lot::Mutex;
use std::collections::HashMap;

/// Distinct paths remembered between flushes; beyond it new ones are not counted (the hot ones
/// are already in).
const MAX_TRACKED: usize = 10_000;
/// Paths longer than this are not counted: warm-up replays whole paths, and a path is the
/// client's to make long.
pub const MAX_PATH_BYTES: usize = 512;
/// Scores kept between warm-ups (locally, and in Redis's sorted set).
pub const MAX_SCORED: usize = 1_000;

/// Accesses counted since the last flush.
#[derive(Default)]
pub struct HotKeys {
    pending: Mutex<HashMap<String, u64>>,
}

impl HotKeys {
    /// Counts one access to `path` (the request's path and query, which warm-up replays).
    pub fn record(&self, path: &str) {
        if path.len() > MAX_PATH_BYTES {
            return;
        }
        let mut pending = self.pending.lock();
        if let Some(count) = pending.get_mut(path) {
            *count += 1;
        } else if pending.len() < MAX_TRACKED {
            pending.insert(path.to_owned(), 1);
        }
    }

    pub fn drain(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// Scores kept in this process (the in-process store's; Redis keeps them in a sorted set).
#[derive(Default)]
pub struct LocalScores {
    scores: Mutex<HashMap<String, f64>>,
}

impl LocalScores {
    /// Adds `counts`, keeping the `keep` highest scores.
    pub fn add(&self, counts: Vec<(String, u64)>, keep: usize) {
        let mut scores = self.scores.lock();
        for (path, count) in counts {
            *scores.entry(path).or_default() += count as f64;
        }
        if keep > 0 && scores.len() > keep {
            let mut ranked: Vec<f64> = scores.values().copied().collect();
            ranked.sort_by(|a, b| b.total_cmp(a));
            let floor = ranked[keep - 1];
            scores.retain(|_, score| *score >= floor);
        }
    }

    /// The `limit` highest scores; with `decay`, halves every score after.
    pub fn top(&self, limit: usize, decay: bool) -> Vec<(String, f64)> {
        let mut scores = self.scores.lock();
        let mut top: Vec<(String, f64)> = scores.iter().map(|(p, s)| (p.clone(), *s)).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        if decay {
            scores.retain(|_, score| {
                *score /= 2.0;
                *score >= 0.5
            });
        }
        top
    }
}
