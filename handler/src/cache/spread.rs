//! Cheap randomness (not cryptographic, just spread): early refreshes, TTL jitter, lease tokens
//! and which local window a full map forgets.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A number in (0, 1].
pub fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(since_epoch().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
}

/// ±10% on the TTL, so entries computed together do not all expire together.
pub fn jittered(ttl: Duration) -> Duration {
    let nanos = since_epoch().subsec_nanos();
    let factor = 0.9 + f64::from(nanos % 1000) / 1000.0 * 0.2;
    ttl.mul_f64(factor)
}

/// A token naming one lease holder (this process, now).
pub fn lease_token() -> String {
    format!("{}-{}", std::process::id(), since_epoch().as_nanos())
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
