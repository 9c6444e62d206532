//! Reading typed variables, each error naming its variable.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// The variables of one lookup (the environment, or a test's list).
pub struct Vars<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    pub fn new(lookup: F) -> Self {
        Vars { lookup }
    }

    /// The variable as set, even when blank.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// The variable, unless it is unset or blank.
    pub fn non_empty(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|v| !v.trim().is_empty())
    }

    /// A positive whole number, or `default` when unset.
    pub fn positive(&self, name: &str, default: u64) -> anyhow::Result<u64> {
        match self.non_empty(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .ok()
                .filter(|&n: &u64| n > 0)
                .with_context(|| format!("{name} must be a positive number, not {value:?}")),
        }
    }

    /// A positive count (of bytes, connections, ...), or `default` when unset.
    pub fn count(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        self.positive(name, default as u64)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A positive number of seconds, or `default` when unset.
    pub fn seconds(&self, name: &str, default: Duration) -> anyhow::Result<Duration> {
        self.positive(name, default.as_secs())
            .map(Duration::from_secs)
    }

    /// `true`/`1`/`yes` or `false`/`0`/`no`; unset is false.
    pub fn flag(&self, name: &str) -> anyhow::Result<bool> {
        match self.non_empty(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(v) => bail!("{name} must be true or false, not {v:?}"),
        }
    }
}
