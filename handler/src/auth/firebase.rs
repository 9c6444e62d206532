//! Firebase Authentication: sign-up and sign-in over its REST API, and verification of the ID
//! tokens it issues (RS256, keys from Google's certificate list, cached for its `max-age`).
//!
//! With `FIREBASE_AUTH_EMULATOR_HOST` set, the REST calls go to the emulator and its unsigned
//! (`alg: none`) ID tokens are accepted; without it, they never are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Mutex;

use super::token::{LEEWAY_SECONDS, TokenError, peek_header};
use crate::config::Secret;

pub const GOOGLE_CERTS_URL: &str =
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com";
/// How long certificates are kept when the response names no `max-age`.
const DEFAULT_CERTS_MAX_AGE: Duration = Duration::from_secs(3600);
/// An unknown `kid` refetches the certificates, but not more often than this.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An account as Firebase returns it after sign-up or sign-in.
#[derive(Debug, Clone, Deserialize)]
pub struct FirebaseAccount {
    #[serde(rename = "localId")]
    pub uid: String,
    #[serde(rename = "idToken")]
    pub id_token: String,
}

/// The verified identity in an ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct FirebaseIdentity {
    pub uid: String,
    pub email: Option<String>,
    /// Whether Firebase has seen the owner of `email` follow a link sent to it (or a provider
    /// such as Google vouches for it).
    pub email_verified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FirebaseError {
    #[error("this email is already registered")]
    EmailExists,
    #[error("invalid email or password")]
    InvalidCredentials,
    /// Firebase's own reason, e.g. `WEAK_PASSWORD` or `INVALID_EMAIL`.
    #[error("refused by the identity provider: {0}")]
    Rejected(String),
    #[error("too many attempts")]
    TooManyAttempts,
    #[error("the identity provider is unavailable")]
    Unavailable(String),
}

pub struct Firebase {
    http: reqwest::Client,
    api_key: Secret,
    project_id: String,
    emulator_host: Option<String>,
    certs_url: String,
    /// The current certificates: read without waiting by every token check.
    certs: RwLock<Option<Arc<Certificates>>>,
    /// Held by the one caller fetching new certificates.
    refreshing: Mutex<()>,
    /// When a fetch last failed: expired certificates are not fetched again for a minute.
    failed_at: parking_lot::Mutex<Option<Instant>>,
}

struct Certificates {
    keys: HashMap<String, DecodingKey>,
    fetched: Instant,
    expires: Instant,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

#[derive(Debug, Deserialize)]
struct IdTokenClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    aud: String,
    iss: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    auth_time: Option<i64>,
    #[serde(default)]
    email_verified: bool,
}

impl Firebase {
    pub fn new(
        api_key: Secret,
        project_id: String,
        emulator_host: Option<String>,
        certs_url: Option<String>,
    ) -> anyhow::Result<Self> {
        crate::tls::install_provider();
        if let Some(host) = &emulator_host {
            tracing::warn!(
                %host,
                project = %project_id,
                "FIREBASE_AUTH_EMULATOR_HOST is set: accounts live in the Auth emulator and its \
                 unsigned ID tokens are accepted (for demo- projects only); never set it in production"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Firebase {
            http,
            api_key,
            project_id,
            emulator_host,
            certs_url: certs_url.unwrap_or_else(|| GOOGLE_CERTS_URL.to_owned()),
            certs: RwLock::new(None),
            refreshing: Mutex::new(()),
            failed_at: parking_lot::Mutex::new(None),
        })
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    pub fn emulated(&self) -> bool {
        self.emulator_host.is_some()
    }

    /// Unsigned tokens count only from the emulator, and only for a `demo-` project: Firebase's
    /// own convention for projects that exist nowhere but in an emulator.
    fn accepts_unsigned_tokens(&self) -> bool {
        self.emulated() && self.project_id.starts_with("demo-")
    }

    fn endpoint(&self, method: &str) -> String {
        let base = match &self.emulator_host {
            Some(host) => format!("http://{host}/identitytoolkit.googleapis.com/v1"),
            None => "https://identitytoolkit.googleapis.com/v1".to_owned(),
        };
        format!("{base}/accounts:{method}")
    }

    /// POSTs to `accounts:<method>`. The API key travels as a query parameter (as Google's API
    /// requires) and is never logged: errors carry Firebase's message only.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        body: serde_json::Value,
    ) -> Result<T, FirebaseError> {
        let response = self
            .http
            .post(self.endpoint(method))
            .query(&[("key", self.api_key.expose())])
            .json(&body)
            .send()
            .await
            .map_err(|e| FirebaseError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| FirebaseError::Unavailable(e.without_url().to_string()));
        }
        let message = response
            .json::<ErrorBody>()
            .await
            .map(|b| b.error.message)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        let code = message.split([' ', ':']).next().unwrap_or_default();
        Err(match code {
            "EMAIL_EXISTS" => FirebaseError::EmailExists,
            "EMAIL_NOT_FOUND"
            | "INVALID_PASSWORD"
            | "INVALID_LOGIN_CREDENTIALS"
            | "USER_DISABLED" => FirebaseError::InvalidCredentials,
            "TOO_MANY_ATTEMPTS_TRY_LATER" => FirebaseError::TooManyAttempts,
            _ if status.is_client_error() => FirebaseError::Rejected(message),
            _ => FirebaseError::Unavailable(message),
        })
    }

    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
    ) -> Result<FirebaseAccount, FirebaseError> {
        self.call(
            "signUp",
            serde_json::json!({"email": email, "password": password, "returnSecureToken": true}),
        )
        .await
    }

    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
    ) -> Result<FirebaseAccount, FirebaseError> {
        self.call(
            "signInWithPassword",
            serde_json::json!({"email": email, "password": password, "returnSecureToken": true}),
        )
        .await
    }

    /// Removes the account the ID token belongs to (undoing a sign-up whose database insert
    /// failed).
    pub async fn delete(&self, id_token: &str) -> Result<(), FirebaseError> {
        self.call::<serde_json::Value>("delete", serde_json::json!({"idToken": id_token}))
            .await
            .map(|_| ())
    }

    /// Verifies an ID token: RS256 with a key from the certificate list (or, only in emulator
    /// mode, the emulator's unsigned tokens), then `aud`, `iss`, `exp`, `iat`, `auth_time` and
    /// `sub`.
    pub async fn verify_id_token(&self, token: &str) -> Result<FirebaseIdentity, TokenError> {
        let header = peek_header(token)?;
        let claims: IdTokenClaims = match header.alg.as_str() {
            "RS256" => {
                let kid = header
                    .kid
                    .ok_or_else(|| TokenError::Refused("no kid".into()))?;
                let key = self.key(&kid).await?;
                let mut validation = Validation::new(Algorithm::RS256);
                validation.leeway = LEEWAY_SECONDS;
                validation.set_audience(&[&self.project_id]);
                validation.set_issuer(&[self.issuer()]);
                validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
                jsonwebtoken::decode::<IdTokenClaims>(token, &key, &validation)
                    .map_err(|e| TokenError::Refused(e.to_string()))?
                    .claims
            }
            "none" if self.accepts_unsigned_tokens() => {
                let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
                let bytes = URL_SAFE_NO_PAD
                    .decode(payload)
                    .map_err(|_| TokenError::Malformed)?;
                serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?
            }
            other => {
                return Err(TokenError::Refused(format!(
                    "algorithm {other:?} is not accepted"
                )));
            }
        };
        self.check_claims(&claims)?;
        Ok(FirebaseIdentity {
            uid: claims.sub,
            email: claims.email,
            email_verified: claims.email_verified,
        })
    }

    /// Asks Firebase to send the account's owner a link that verifies its email.
    pub async fn send_verification_email(&self, id_token: &str) -> Result<(), FirebaseError> {
        self.call::<serde_json::Value>(
            "sendOobCode",
            serde_json::json!({"requestType": "VERIFY_EMAIL", "idToken": id_token}),
        )
        .await
        .map(|_| ())
    }

    fn issuer(&self) -> String {
        format!("https://securetoken.google.com/{}", self.project_id)
    }

    /// The checks Firebase documents, repeated here so the unsigned emulator path gets them too.
    fn check_claims(&self, claims: &IdTokenClaims) -> Result<(), TokenError> {
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(30);
        let refuse = |why: &str| Err(TokenError::Refused(why.to_owned()));
        if claims.aud != self.project_id {
            return refuse("wrong audience");
        }
        if claims.iss != self.issuer() {
            return refuse("wrong issuer");
        }
        if claims.exp + leeway < now {
            return refuse("expired");
        }
        if claims.iat - leeway > now || claims.auth_time.is_some_and(|t| t - leeway > now) {
            return refuse("issued in the future");
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return refuse("bad subject");
        }
        Ok(())
    }

    /// The key for `kid`. Token checks read the current certificates without waiting; only a
    /// check that needs new ones (none yet, or an unknown `kid`, since Google rotates keys) waits
    /// for one fetch, shared with the others that need it. Expired certificates are refreshed by
    /// whoever finds them expired first while the others go on with them.
    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let asked = Instant::now();
        let current = self.certs.read().clone();
        if let Some(certs) = &current {
            if let Some(key) = certs.keys.get(kid) {
                let failed_lately = self
                    .failed_at
                    .lock()
                    .is_some_and(|at| asked.duration_since(at) < MIN_REFETCH_INTERVAL);
                if certs.expires <= asked
                    && !failed_lately
                    && let Ok(_turn) = self.refreshing.try_lock()
                {
                    // A failed refresh keeps the old list: Google's keys outlive its max-age.
                    let _ = self.refresh().await;
                }
                return Ok(key.clone());
            }
            if asked.duration_since(certs.fetched) < MIN_REFETCH_INTERVAL {
                return Err(TokenError::Refused("unknown kid".into()));
            }
        }
        let _turn = self.refreshing.lock().await;
        let fetched_meanwhile = self
            .certs
            .read()
            .clone()
            .filter(|certs| certs.fetched >= asked);
        let certs = match fetched_meanwhile {
            Some(certs) => certs,
            None => self.refresh().await?,
        };
        certs
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::Refused("unknown kid".into()))
    }

    /// Fetches the certificates and makes them the current ones.
    async fn refresh(&self) -> Result<Arc<Certificates>, TokenError> {
        let fetched = self.fetch_certificates().await;
        *self.failed_at.lock() = fetched.is_err().then(Instant::now);
        let certs = Arc::new(fetched?);
        *self.certs.write() = Some(Arc::clone(&certs));
        Ok(certs)
    }

    async fn fetch_certificates(&self) -> Result<Certificates, TokenError> {
        let response = self
            .http
            .get(&self.certs_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot fetch the Firebase signing certificates");
                TokenError::KeysUnavailable
            })?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_CERTS_MAX_AGE);
        let pems: HashMap<String, String> = response
            .json()
            .await
            .map_err(|_| TokenError::KeysUnavailable)?;
        let keys = pems
            .into_iter()
            .filter_map(
                |(kid, pem)| match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    Ok(key) => Some((kid, key)),
                    Err(error) => {
                        tracing::warn!(%kid, %error, "skipping an unreadable signing certificate");
                        None
                    }
                },
            )
            .collect();
        let now = Instant::now();
        Ok(Certificates {
            keys,
            fetched: now,
            expires: now + max_age,
        })
    }
}

/// `max-age=N` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        (name.eq_ignore_ascii_case("max-age"))
            .then(|| value.trim().parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=19204, must-revalidate, no-transform"),
            Some(Duration::from_secs(19204))
        );
        assert_eq!(max_age("no-cache"), None);
    }

    #[tokio::test]
    async fn unsigned_tokens_pass_only_in_emulator_mode() {
        let now = chrono::Utc::now().timestamp();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({
                "sub": "uid1", "email": "a@b.c", "aud": "demo-p",
                "iss": "https://securetoken.google.com/demo-p",
                "iat": now, "exp": now + 600, "auth_time": now,
            }))
            .unwrap(),
        );
        let token = format!("{header}.{payload}.");
        let secret = Secret::new("any");
        let emulated = Firebase::new(
            secret.clone(),
            "demo-p".into(),
            Some("127.0.0.1:1".into()),
            None,
        )
        .unwrap();
        assert_eq!(emulated.verify_id_token(&token).await.unwrap().uid, "uid1");
        let real = Firebase::new(secret, "demo-p".into(), None, None).unwrap();
        assert!(real.verify_id_token(&token).await.is_err());
        let other_project =
            Firebase::new(Secret::new("any"), "other".into(), Some("h:1".into()), None).unwrap();
        assert!(other_project.verify_id_token(&token).await.is_err());
        // A project that is not a demo- one never takes unsigned tokens, emulator or not.
        let real_name = token_for("real-p", now);
        let real_project = Firebase::new(
            Secret::new("any"),
            "real-p".into(),
            Some("h:1".into()),
            None,
        )
        .unwrap();
        assert!(real_project.verify_id_token(&real_name).await.is_err());
        let demo = token_for("demo-q", now);
        let demo_project = Firebase::new(
            Secret::new("any"),
            "demo-q".into(),
            Some("h:1".into()),
            None,
        )
        .unwrap();
        assert!(demo_project.verify_id_token(&demo).await.is_ok());
    }

    fn token_for(project: &str, now: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({
                "sub": "uid1", "email": "a@b.c", "aud": project, "email_verified": true,
                "iss": format!("https://securetoken.google.com/{project}"),
                "iat": now, "exp": now + 600, "auth_time": now,
            }))
            .unwrap(),
        );
        format!("{header}.{payload}.")
    }
}
