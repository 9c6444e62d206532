//! Local passwords: the length policy and argon2id hashes (PHC strings, salted per account).

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Why a password is refused, in words a user can act on.
pub fn policy_violation(password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Some(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
    }
    None
}

/// An argon2id hash with a fresh random salt and the crate's recommended parameters.
pub fn hash(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))
}

/// Whether `password` matches `stored` (the comparison inside is constant-time). A malformed
/// stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spends the time of one verification, so that "no such account" takes as long as "wrong
/// password" and timing does not reveal which emails have accounts.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("not a real password").expect("hashing works"));
    let _ = verify(password, dummy);
}

/// [`hash`] on a blocking thread: argon2 takes tens of milliseconds of CPU, which would stall
/// every request sharing an async worker.
/// Password hashes computed at once: each takes ~19 MiB and a core for a while, so a flood of
/// logins queues here instead of taking the instance's memory and threads.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

pub async fn hash_off_thread(password: &str) -> anyhow::Result<String> {
    let password = password.to_owned();
    let _turn = HASHING.acquire().await?;
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| anyhow::anyhow!("the hashing task failed: {e}"))?
}

/// [`verify`] on a blocking thread; with no stored hash, [`verify_against_nothing`] (so "no such
/// account" costs what "wrong password" costs) and `false`.
pub async fn verify_off_thread(password: &str, stored: Option<String>) -> bool {
    let password = password.to_owned();
    let Ok(_turn) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify(&password, &stored),
        None => {
            verify_against_nothing(&password);
            false
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify("correct horse", &a));
        assert!(!verify("correct horsE", &a));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[test]
    fn the_policy_counts_characters_not_bytes() {
        assert!(policy_violation("short").is_some());
        assert!(
            policy_violation("ééééééé").is_some(),
            "7 characters, 14 bytes"
        );
        assert!(policy_violation("éééééééé").is_none());
        assert!(policy_violation(&"x".repeat(129)).is_some());
        assert!(policy_violation(&"x".repeat(128)).is_none());
    }
}
