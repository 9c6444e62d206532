//! A circuit breaker: after a failure, a dependency (Redis, the database) is skipped for a
//! moment, so that each request does not wait out a timeout of its own while it is down.

use parking_lot::Mutex;
use std::time::Duration;

// tokio's clock (the system's outside a test that pauses it), so tests advance time instead of
// sleeping.
use tokio::time::Instant;

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

    #[tokio::test(start_paused = true)]
    async fn a_trip_opens_for_a_while_and_a_success_closes() {
        let breaker = Breaker::new(Duration::from_millis(50));
        assert!(!breaker.is_open());
        breaker.trip();
        assert!(breaker.is_open());
        breaker.close();
        assert!(!breaker.is_open());
        breaker.trip();
        tokio::time::advance(Duration::from_millis(49)).await;
        assert!(breaker.is_open(), "still open just before its time");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!breaker.is_open(), "it reopens the way by itself");
    }
}
