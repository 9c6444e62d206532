//! A circuit breaker: after a failure, a dependency (Redis, the database) is skipped for a
//! moment, so that each request does not wait out a timeout of its own while it is down.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

pub struct Breaker {
    open_for: Duration,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub fn new(open_for: Duration) -> Self {
        Breaker {
            open_for,
            open_until: Mutex::new(None),
        }
    }

    /// Whether calls should be skipped now.
    pub fn is_open(&self) -> bool {
        self.open_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    /// A call failed: skip the dependency for a while.
    pub fn trip(&self) {
        *self.open_until.lock() = Some(Instant::now() + self.open_for);
    }

    /// A call succeeded.
    pub fn close(&self) {
        *self.open_until.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trip_opens_for_a_while_and_a_success_closes() {
        let breaker = Breaker::new(Duration::from_millis(50));
        assert!(!breaker.is_open());
        breaker.trip();
        assert!(breaker.is_open());
        breaker.close();
        assert!(!breaker.is_open());
        breaker.trip();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!breaker.is_open(), "it reopens the way by itself");
    }
}
