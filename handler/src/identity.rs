//! Microsoft Entra ID access tokens for the Azure services the handler talks to without keys:
//! Blob Storage (imports), Azure SQL and Azure Cache for Redis.
//!
//! One [`Tokens`] per instance, created on first use ([`azure`]): nothing of `azure_identity` is
//! touched unless a setting asks for a token. Tokens are cached per scope and fetched again a
//! while before they expire, one fetch at a time, so callers never wait on an expired token and a
//! burst of new connections costs one request to the identity endpoint.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_trait::async_trait;
use base64::Engine as _;

/// Scope of Azure Blob Storage tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Scope of Azure SQL Database tokens.
pub const SQL_SCOPE: &str = "https://database.windows.net/.default";
/// Scope of Azure Cache for Redis tokens.
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// A bearer token and when it stops being valid. `Debug` never prints the token.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: String,
    pub expires_at: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AccessToken {
    /// The `oid` claim (the identity's object id): the user name Azure Cache for Redis expects
    /// with a token as the password. Read without verifying: the token is ours, from Entra ID.
    pub fn object_id(&self) -> Option<String> {
        let payload = self.secret.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        claims.get("oid")?.as_str().map(str::to_owned)
    }
}

/// Where tokens come from: `azure_identity` in production, a test double in tests.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    async fn fetch(&self, scope: &str) -> anyhow::Result<AccessToken>;
}

/// Tokens cached per scope, refreshed before they expire.
pub struct Tokens {
    source: Arc<dyn TokenSource>,
    scopes: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    clock: Clock,
}

/// The wall clock tokens' lifetimes are read against (tests pass one that follows tokio's
/// paused clock, so they advance time instead of waiting for it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: SystemTime,
}

/// A fetch that takes longer than this fails (the identity endpoint or `az` is stuck).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

impl Tokens {
    pub fn new(source: Arc<dyn TokenSource>) -> Arc<Tokens> {
        Tokens::with_clock(source, Arc::new(SystemTime::now))
    }

    pub fn with_clock(source: Arc<dyn TokenSource>, clock: Clock) -> Arc<Tokens> {
        Arc::new(Tokens {
            source,
            scopes: parking_lot::Mutex::default(),
            clock,
        })
    }

    /// A token for `scope` with some life left in it: the cached one until it enters its
    /// refresh window, else a new one (callers for the same scope wait for that one fetch).
    pub async fn get(&self, scope: &str) -> anyhow::Result<AccessToken> {
        Ok(self.current(scope).await?.0)
    }

    /// The token for `scope` and when it will be replaced.
    ///
    /// The fetch runs in a task of its own, so a caller that gives up (a connect timeout) does
    /// not waste it: the token is cached for the next caller all the same. A failed refresh falls
    /// back to the cached token while it is still valid.
    pub async fn current(&self, scope: &str) -> anyhow::Result<(AccessToken, SystemTime)> {
        let slot = Arc::clone(self.scopes.lock().entry(scope.to_owned()).or_default());
        let source = Arc::clone(&self.source);
        let (scope, clock) = (scope.to_owned(), Arc::clone(&self.clock));
        let fetch = tokio::spawn(async move {
            let mut cached = slot.lock().await;
            let now = clock();
            if let Some(c) = cached.as_ref()
                && now < c.refresh_at
            {
                return Ok((c.token.clone(), c.refresh_at));
            }
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, source.fetch(&scope))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}")));
            match fetched {
                Ok(token) => {
                    let refresh_at = refresh_at(&token, now);
                    *cached = Some(Cached {
                        token: token.clone(),
                        refresh_at,
                    });
                    Ok((token, refresh_at))
                }
                Err(error) => match cached.as_mut() {
                    Some(c) if now < c.token.expires_at => {
                        tracing::warn!(%scope, error = format!("{error:#}"), "token refresh failed; the current token is still valid");
                        // Try again in a while, not on every call.
                        c.refresh_at = (now + Duration::from_secs(10)).min(c.token.expires_at);
                        Ok((c.token.clone(), c.refresh_at))
                    }
                    _ => Err(error),
                },
            }
        });
        fetch
            .await
            .map_err(|e| anyhow::anyhow!("the token fetch crashed: {e}"))?
    }
}

/// When a token fetched at `fetched_at` should be replaced: 5 minutes before it expires, or
/// with a quarter of its life left if it is short (tests issue tokens that live seconds).
pub fn refresh_at(token: &AccessToken, fetched_at: SystemTime) -> SystemTime {
    let life = token
        .expires_at
        .duration_since(fetched_at)
        .unwrap_or(Duration::ZERO);
    let margin = (life / 4).min(Duration::from_secs(300));
    token.expires_at - margin
}

/// The instance's tokens from `azure_identity`, created on first use.
pub fn azure() -> Arc<Tokens> {
    static TOKENS: OnceLock<Arc<Tokens>> = OnceLock::new();
    TOKENS
        .get_or_init(|| Tokens::new(Arc::new(AzureIdentity::default())))
        .clone()
}

/// `azure_identity`'s credential for where the process runs, made on the first fetch:
/// workload identity (AKS) when `AZURE_FEDERATED_TOKEN_FILE` is set, managed identity where the
/// platform offers one (`IDENTITY_ENDPOINT`: App Service, Functions, Container Apps; a
/// user-assigned one when `AZURE_CLIENT_ID` is set), else the developer's `az`/`azd` login.
#[derive(Default)]
struct AzureIdentity {
    credential: tokio::sync::OnceCell<Arc<dyn azure_core::credentials::TokenCredential>>,
}

impl AzureIdentity {
    fn create() -> anyhow::Result<Arc<dyn azure_core::credentials::TokenCredential>> {
        use azure_identity::{
            DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
            UserAssignedId, WorkloadIdentityCredential,
        };
        // The HTTP client of azure_core is reqwest on rustls: ring must be the process's provider.
        crate::tls::install_provider();
        let settings = crate::config::IdentitySettings::from_env();
        if settings.workload_identity {
            return Ok(WorkloadIdentityCredential::new(None)
                .context("cannot create the workload identity credential")?);
        }
        if settings.managed_identity {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: settings.client_id.map(UserAssignedId::ClientId),
                ..Default::default()
            };
            return Ok(ManagedIdentityCredential::new(Some(options))
                .context("cannot create the managed identity credential")?);
        }
        Ok(DeveloperToolsCredential::new(None)
            .context("cannot create a developer credential (is `az login` done?)")?)
    }
}

#[async_trait]
impl TokenSource for AzureIdentity {
    async fn fetch(&self, scope: &str) -> anyhow::Result<AccessToken> {
        let credential = self
            .credential
            .get_or_try_init(|| async { Self::create() })
            .await?;
        let token = credential
            .get_token(&[scope], None)
            .await
            .with_context(|| format!("cannot get an Entra ID token for {scope}"))?;
        let expires_at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0));
        Ok(AccessToken {
            secret: token.token.secret().to_owned(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The wall clock as of now, moving with tokio's (paused) clock.
    fn paused_clock() -> Clock {
        let (wall, start) = (SystemTime::now(), tokio::time::Instant::now());
        Arc::new(move || wall + start.elapsed())
    }

    /// A test double of the credential: tokens that live `life`, numbered in order.
    struct Counting {
        fetched: AtomicU32,
        life: Duration,
        clock: Clock,
    }

    #[async_trait]
    impl TokenSource for Counting {
        async fn fetch(&self, _scope: &str) -> anyhow::Result<AccessToken> {
            let n = self.fetched.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(AccessToken {
                secret: format!("token-{n}"),
                expires_at: (self.clock)() + self.life,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_its_refresh_window_then_replaced() {
        let clock = paused_clock();
        let source = Arc::new(Counting {
            fetched: AtomicU32::new(0),
            life: Duration::from_millis(800),
            clock: clock.clone(),
        });
        let tokens = Tokens::with_clock(source.clone(), clock);
        assert_eq!(tokens.get(STORAGE_SCOPE).await.unwrap().secret, "token-1");
        assert_eq!(tokens.get(STORAGE_SCOPE).await.unwrap().secret, "token-1");
        // Another scope is another token.
        assert_eq!(tokens.get(SQL_SCOPE).await.unwrap().secret, "token-2");
        // Within the last quarter of its life (600 ms of 800), the token is replaced.
        tokio::time::sleep(Duration::from_millis(650)).await;
        assert_eq!(tokens.get(STORAGE_SCOPE).await.unwrap().secret, "token-3");
        assert_eq!(source.fetched.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let source = Arc::new(Counting {
            fetched: AtomicU32::new(0),
            life: Duration::from_secs(3600),
            clock: Arc::new(SystemTime::now),
        });
        let tokens = Tokens::new(source.clone());
        let calls = (0..50).map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.get(REDIS_SCOPE).await.unwrap().secret })
        });
        for call in calls {
            assert_eq!(call.await.unwrap(), "token-1");
        }
        assert_eq!(source.fetched.load(Ordering::SeqCst), 1);
    }

    /// A test double that fails after its first token, or answers slowly.
    struct Flaky {
        fetched: AtomicU32,
        delay: Duration,
        clock: Clock,
    }

    #[async_trait]
    impl TokenSource for Flaky {
        async fn fetch(&self, _scope: &str) -> anyhow::Result<AccessToken> {
            tokio::time::sleep(self.delay).await;
            if self.fetched.fetch_add(1, Ordering::SeqCst) > 0 {
                anyhow::bail!("the identity endpoint is down");
            }
            Ok(AccessToken {
                secret: "first".into(),
                expires_at: (self.clock)() + Duration::from_millis(800),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_a_valid_token_and_a_cancelled_caller_wastes_no_fetch() {
        let clock = paused_clock();
        let source = Arc::new(Flaky {
            fetched: AtomicU32::new(0),
            delay: Duration::from_millis(100),
            clock: clock.clone(),
        });
        let tokens = Tokens::with_clock(source.clone(), clock);
        // A caller that gives up after 20 ms: the fetch goes on and its token is cached.
        let impatient = tokio::time::timeout(Duration::from_millis(20), tokens.get(REDIS_SCOPE));
        assert!(impatient.await.is_err());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(tokens.get(REDIS_SCOPE).await.unwrap().secret, "first");
        assert_eq!(source.fetched.load(Ordering::SeqCst), 1);
        // In the refresh window the endpoint fails: the still-valid token is used meanwhile.
        tokio::time::sleep(Duration::from_millis(550)).await;
        assert_eq!(tokens.get(REDIS_SCOPE).await.unwrap().secret, "first");
        assert_eq!(source.fetched.load(Ordering::SeqCst), 2);
        // Once it has expired, the failure shows.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(tokens.get(REDIS_SCOPE).await.is_err());
    }

    #[test]
    fn refresh_margins_and_object_ids() {
        let now = SystemTime::now();
        let hour = AccessToken {
            secret: String::new(),
            expires_at: now + Duration::from_secs(3600),
        };
        assert_eq!(refresh_at(&hour, now), now + Duration::from_secs(3300));
        let short = AccessToken {
            secret: String::new(),
            expires_at: now + Duration::from_secs(8),
        };
        assert_eq!(refresh_at(&short, now), now + Duration::from_secs(6));
        // {"oid":"1234-abcd"} as a JWT payload; the token never shows in Debug.
        let token = AccessToken {
            secret: "e30.eyJvaWQiOiIxMjM0LWFiY2QifQ.sig".into(),
            expires_at: now,
        };
        assert_eq!(token.object_id().as_deref(), Some("1234-abcd"));
        assert!(!format!("{token:?}").contains("eyJ"));
        let opaque = AccessToken {
            secret: "opaque".into(),
            expires_at: now,
        };
        assert_eq!(opaque.object_id(), None);
    }
}
