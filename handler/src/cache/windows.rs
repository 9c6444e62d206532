//! Fixed-window counters kept in this process: the in-process store's, and the fallback of a
//! shared store that does not answer. Names come from clients (addresses, emails), so the map is
//! bounded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::spread::random_unit;

/// Windows kept before ended ones are swept out.
const PRUNE_AT: usize = 4096;
/// At most this many windows; beyond it one chosen at random is forgotten.
const MAX_WINDOWS: usize = 65_536;

#[derive(Default)]
pub struct LocalWindows {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

impl LocalWindows {
    /// Counts one event under `name`, opening a window of `window` if there is none.
    pub fn count(&self, name: &str, window: Duration) -> (u64, Duration) {
        self.add(name, window, 1)
    }

    /// The count of `name`'s current window and the time left in it.
    pub fn peek(&self, name: &str) -> (u64, Duration) {
        self.add(name, Duration::ZERO, 0)
    }

    pub fn uncount(&self, name: &str) {
        if let Some((count, _)) = self.windows.lock().get_mut(name) {
            *count = count.saturating_sub(1);
        }
    }

    /// Adds `by` to `name`'s window (opening one of `window` if there is none).
    fn add(&self, name: &str, window: Duration, by: u64) -> (u64, Duration) {
        let now = Instant::now();
        let mut windows = self.windows.lock();
        // Ended windows are dropped now and then, not on every call.
        if windows.len() >= PRUNE_AT {
            windows.retain(|_, (_, ends)| *ends > now);
        }
        match windows.get(name) {
            Some((_, ends)) if *ends <= now => {
                windows.remove(name);
            }
            Some(_) => {}
            None if by == 0 => return (0, Duration::ZERO),
            None => {
                // When full, forget a window chosen at random (a chosen one could be a victim's).
                if windows.len() >= MAX_WINDOWS {
                    let skip = (random_unit() * windows.len() as f64) as usize;
                    let forgotten = windows.keys().nth(skip.min(windows.len() - 1)).cloned();
                    if let Some(forgotten) = forgotten {
                        windows.remove(&forgotten);
                    }
                }
            }
        }
        let (count, ends) = windows.entry(name.to_owned()).or_insert((0, now + window));
        *count += by;
        (*count, ends.saturating_duration_since(now))
    }
}
