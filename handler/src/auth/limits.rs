//! Sign-in limits: what stops password guessing without handing a guesser the power to lock an
//! account's owner out.
//!
//! - **Per client address**: every login attempt counts ([`ATTEMPTS_PER_ADDRESS`] per window),
//!   and sign-ups apart ([`SIGNUPS_PER_ADDRESS`]): one address cannot try many accounts.
//! - **Per account and address**: failed logins ([`ATTEMPTS_PER_EMAIL`] per window) block that
//!   address for that account only. The owner, elsewhere, is not affected.
//! - **Per account, from anywhere**: failures beyond [`ACCOUNT_SLOWDOWN_AFTER`] (many addresses
//!   guessing one account) make every attempt on it wait ([`slowdown`]), which slows sequential
//!   guessing; parallel guessing stays bounded by the per-address counts. The owner still gets in.
//! - **Per IPv6 /48**: [`ATTEMPTS_PER_NETWORK`], since one site holds 65,536 /64s.
//!
//! An attempt is counted for its account and address *before* the password is checked, so
//! concurrent guesses cannot all pass under the limit at once, and handed back when the password
//! was right: what stays counted are the failures.
//!
//! Counters live in the cache's store (Redis, shared by every instance, or this process), in
//! fixed windows of [`ATTEMPT_WINDOW`]. Their names are bounded: an address as parsed, an email
//! as a hash.

use std::sync::Arc;
use std::time::Duration;

use super::AuthError;
use crate::cache::Cache;

/// Failed logins per account and client address in one window.
pub const ATTEMPTS_PER_EMAIL: u64 = 10;
/// Login attempts per client address in one window.
pub const ATTEMPTS_PER_ADDRESS: u64 = 50;
/// Sign-ups per client address in one window (each costs a password hash).
pub const SIGNUPS_PER_ADDRESS: u64 = 20;
/// Login attempts per IPv6 /48 in one window.
pub const ATTEMPTS_PER_NETWORK: u64 = 500;
/// Failed logins per account, from all addresses, before its attempts are slowed down.
pub const ACCOUNT_SLOWDOWN_AFTER: u64 = 30;
/// The longest an attempt is made to wait.
pub const MAX_SLOWDOWN: Duration = Duration::from_secs(5);
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);

pub struct LoginLimits {
    cache: Arc<Cache>,
}

impl LoginLimits {
    pub fn new(cache: Arc<Cache>) -> Self {
        LoginLimits { cache }
    }

    /// Counts a sign-up from `client`; refused beyond the address's allowance.
    pub async fn sign_up(&self, client: &str) -> Result<(), AuthError> {
        self.count(&format!("signup:{client}"), SIGNUPS_PER_ADDRESS)
            .await
    }

    /// Counts a login attempt from `client` and refuses it when the address, or this account
    /// from this address, is over its allowance; then waits as long as the account's failures
    /// from everywhere ask. `email` is already normalised (`None`: not an email at all, which
    /// only the address pays for).
    pub async fn before_login(&self, email: Option<&str>, client: &str) -> Result<(), AuthError> {
        self.count(&format!("addr:{client}"), ATTEMPTS_PER_ADDRESS)
            .await?;
        if let Some(network) = ipv6_network(client) {
            self.count(&format!("net:{network}"), ATTEMPTS_PER_NETWORK)
                .await?;
        }
        let Some(email) = email else { return Ok(()) };
        let (pair, account) = names(email, client);
        let (from_here, from_anywhere) = tokio::join!(
            self.cache.count_in_window(&pair, ATTEMPT_WINDOW),
            self.cache.peek_window(&account),
        );
        if from_here.0 > ATTEMPTS_PER_EMAIL {
            return Err(AuthError::TooManyAttempts {
                retry_after: from_here.1.max(Duration::from_secs(1)),
            });
        }
        let from_anywhere = from_anywhere.0;
        let wait = slowdown(from_anywhere);
        if !wait.is_zero() {
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "login slowed down: an account failing from many addresses"
            );
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Records a failed login of `email` (its attempt from its address is counted already).
    pub async fn failed(&self, email: &str) {
        self.cache
            .count_in_window(&account_name(email), ATTEMPT_WINDOW)
            .await;
    }

    /// Hands back the attempt of a login that succeeded: only failures stay counted.
    pub async fn succeeded(&self, email: &str, client: &str) {
        let (pair, _) = names(email, client);
        self.cache.uncount_in_window(&pair).await;
    }

    async fn count(&self, name: &str, allowed: u64) -> Result<(), AuthError> {
        let (count, left) = self
            .cache
            .count_in_window(&format!("login:{name}"), ATTEMPT_WINDOW)
            .await;
        if count > allowed {
            return Err(AuthError::TooManyAttempts {
                retry_after: left.max(Duration::from_secs(1)),
            });
        }
        Ok(())
    }
}

/// How long an attempt on an account waits after `failures` failed logins from anywhere in the
/// window: nothing up to [`ACCOUNT_SLOWDOWN_AFTER`], then half a second more per ten further
/// failures, at most [`MAX_SLOWDOWN`].
pub fn slowdown(failures: u64) -> Duration {
    let Some(beyond) = failures.checked_sub(ACCOUNT_SLOWDOWN_AFTER) else {
        return Duration::ZERO;
    };
    let steps = u32::try_from(beyond / 10 + 1).unwrap_or(u32::MAX);
    Duration::from_millis(500)
        .saturating_mul(steps)
        .min(MAX_SLOWDOWN)
}

/// `2001:db8:1::/48` for the /64 `2001:db8:1:2::/64`; `None` for IPv4.
fn ipv6_network(client: &str) -> Option<String> {
    let address: std::net::Ipv6Addr = client.strip_suffix("/64")?.parse().ok()?;
    let network = u128::from(address) & (u128::MAX << 80);
    Some(format!("{}/48", std::net::Ipv6Addr::from(network)))
}

/// The counters of failures of `email` from `client`, and from anywhere.
fn names(email: &str, client: &str) -> (String, String) {
    let pair = format!("login:pair:{}:{client}", account_key(email));
    (pair, account_name(email))
}

fn account_name(email: &str) -> String {
    format!("login:account:{}", account_key(email))
}

/// An email as a counter's name: a hash, so its length is fixed and the store never holds it.
fn account_key(email: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(email.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_under_attack_is_slowed_never_blocked() {
        let cases = [
            (0, 0),
            (ACCOUNT_SLOWDOWN_AFTER - 1, 0),
            (ACCOUNT_SLOWDOWN_AFTER, 500),
            (ACCOUNT_SLOWDOWN_AFTER + 9, 500),
            (ACCOUNT_SLOWDOWN_AFTER + 10, 1000),
            (ACCOUNT_SLOWDOWN_AFTER + 85, 4500),
            (10_000, 5000),
            (u64::MAX, 5000),
        ];
        for (failures, millis) in cases {
            assert_eq!(
                slowdown(failures),
                Duration::from_millis(millis),
                "{failures} failures"
            );
        }
    }

    #[test]
    fn ipv6_addresses_also_count_by_their_48() {
        assert_eq!(
            ipv6_network("2001:db8:1:2::/64").as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(ipv6_network("203.0.113.9"), None);
        assert_eq!(ipv6_network("unknown"), None);
    }

    #[test]
    fn counter_names_do_not_grow_with_the_email() {
        assert_eq!(account_key("a@b.c").len(), 24);
        assert_eq!(account_key(&"x".repeat(300)).len(), 24);
        assert_ne!(account_key("a@b.c"), account_key("a@b.d"));
    }
}
