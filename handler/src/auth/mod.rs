//! Accounts, sign-in and roles.
//!
//! ```text
//!  signup/login ──> Auth ──> local: argon2id hashes in smartcache_users
//!                        └─> firebase: REST sign-up/sign-in, then the same table
//!               <── an HS256 access token (role as a hint)
//!  any request with a Bearer token ──> Auth::principal ──> the account as stored now
//! ```
//! The role is decided on the server: sign-up always makes a `user`; admins are made with
//! `handler users create --admin` or `handler users promote`. Every check that needs a role
//! reads the account again, so a demoted or deactivated admin loses access at once.

pub mod firebase;
pub mod limits;
pub mod password;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::config::{AuthProvider, Settings};
pub use crate::datasets::Level;
use crate::storage::{NewUser, Storage, StorageError, UserLookup, UserRecord};
use firebase::{Firebase, FirebaseError, FirebaseIdentity};
use limits::LoginLimits;
use token::{TokenError, TokenIssuer};

pub use limits::{
    ACCOUNT_SLOWDOWN_AFTER, ATTEMPT_WINDOW, ATTEMPTS_PER_ADDRESS, ATTEMPTS_PER_EMAIL,
    SIGNUPS_PER_ADDRESS,
};
/// Emails longer than this are refused (RFC 5321's limit for a path).
const MAX_EMAIL_CHARS: usize = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A signed-in caller, as the users table says now.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: i64,
    pub email: String,
    pub role: Role,
}

impl Principal {
    fn from_record(record: &UserRecord) -> Option<Principal> {
        Some(Principal {
            id: record.id,
            email: record.email.clone(),
            role: Role::parse(&record.role)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Accounts are off: no `JWT_SECRET`.
    #[error("accounts are not configured on this server")]
    NotConfigured,
    #[error("sign in first")]
    MissingToken,
    #[error("invalid or expired token")]
    InvalidToken,
    /// The same answer for "no such account", "wrong password" and "deactivated".
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("this account may not do this")]
    Forbidden,
    /// The password (or ID token) is right, but the email has not been verified yet.
    #[error("the email address is not verified")]
    EmailNotVerified,
    #[error("too many attempts")]
    TooManyAttempts { retry_after: Duration },
    #[error("this email is already registered")]
    EmailTaken,
    /// A field of the request body is unacceptable: `(field, reason)`.
    #[error("invalid {0}: {1}")]
    InvalidField(&'static str, String),
    /// Several fields are.
    #[error("invalid fields")]
    InvalidFields(Vec<(&'static str, String)>),
    #[error("the identity provider is unavailable")]
    ProviderUnavailable,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The token a login returns.
#[derive(Debug, Serialize)]
pub struct AccessToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

pub struct Auth {
    provider: AuthProvider,
    issuer: TokenIssuer,
    firebase: Option<Firebase>,
    /// A Firebase account makes or links a row here only once its email is verified (unless
    /// `FIREBASE_ALLOW_UNVERIFIED_EMAIL`): otherwise anyone could register someone else's address
    /// and inherit a later `users promote` of it.
    require_verified_email: bool,
    storage: Arc<dyn Storage>,
    limits: LoginLimits,
}

/// What a sign-up did.
pub enum SignUp {
    /// The account exists (role `user`).
    Created(UserRecord),
    /// Firebase made the account and sent a link to verify its email; the account is usable
    /// once that is done (the first login then makes the row).
    VerificationSent { email: String },
}

impl Auth {
    /// `None` when accounts are off (no `JWT_SECRET`): reads still work, writes and accounts
    /// answer 503.
    pub fn from_settings(
        settings: &Settings,
        storage: Arc<dyn Storage>,
        cache: Arc<Cache>,
    ) -> anyhow::Result<Option<Auth>> {
        let Some(secret) = &settings.jwt_secret else {
            return Ok(None);
        };
        let firebase = match settings.auth_provider {
            AuthProvider::Local => None,
            AuthProvider::Firebase => Some(Firebase::new(
                settings
                    .firebase_api_key
                    .clone()
                    .unwrap_or_else(|| crate::config::Secret::new("emulator")),
                settings.firebase_project_id.clone().unwrap_or_default(),
                settings.firebase_auth_emulator_host.clone(),
                settings.firebase_certs_url.clone(),
            )?),
        };
        Ok(Some(Auth {
            provider: settings.auth_provider,
            issuer: TokenIssuer::new(secret.expose().as_bytes(), settings.jwt_ttl),
            firebase,
            require_verified_email: !settings.firebase_allow_unverified_email,
            storage,
            limits: LoginLimits::new(cache),
        }))
    }

    /// Local accounts with tokens signed by `secret` (what `JWT_SECRET` gives).
    pub fn local(
        secret: &[u8],
        ttl: Duration,
        storage: Arc<dyn Storage>,
        cache: Arc<Cache>,
    ) -> Auth {
        Auth {
            provider: AuthProvider::Local,
            issuer: TokenIssuer::new(secret, ttl),
            firebase: None,
            require_verified_email: true,
            storage,
            limits: LoginLimits::new(cache),
        }
    }

    pub fn provider(&self) -> AuthProvider {
        self.provider
    }

    /// A new `user` account. Any role the client sent was dropped before this point.
    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        client: &str,
    ) -> Result<SignUp, AuthError> {
        self.limits.sign_up(client).await?;
        self.register(email, password, self.require_verified_email)
            .await
    }

    /// An account made by an operator (`handler users create`), who vouches for its email: with
    /// Firebase, it is made there and linked at once.
    pub async fn create_vouched(
        &self,
        email: &str,
        password: &str,
    ) -> Result<UserRecord, AuthError> {
        match self.register(email, password, false).await? {
            SignUp::Created(record) => Ok(record),
            SignUp::VerificationSent { .. } => Err(AuthError::Internal(anyhow::anyhow!(
                "a vouched account was not created"
            ))),
        }
    }

    async fn register(
        &self,
        email: &str,
        password: &str,
        verify_email_first: bool,
    ) -> Result<SignUp, AuthError> {
        let checked_email = check_email(email);
        let password_problem = password::policy_violation(password);
        let email = match (checked_email, password_problem) {
            (Ok(email), None) => email,
            (Ok(_), Some(reason)) => return Err(AuthError::InvalidField("password", reason)),
            (Err(_), None) => {
                return Err(AuthError::InvalidField(
                    "email",
                    "must be an email address".into(),
                ));
            }
            (Err(_), Some(reason)) => {
                return Err(AuthError::InvalidFields(vec![
                    ("email", "must be an email address".into()),
                    ("password", reason),
                ]));
            }
        };
        let Some(firebase) = &self.firebase else {
            let hash = password::hash_off_thread(password).await?;
            return self
                .create(NewUser {
                    email,
                    password_hash: Some(hash),
                    firebase_uid: None,
                    role: Role::User.as_str().to_owned(),
                })
                .await
                .map(SignUp::Created);
        };
        let account = firebase
            .sign_up(&email, password)
            .await
            .map_err(provider_error)?;
        if verify_email_first {
            if let Err(error) = firebase.send_verification_email(&account.id_token).await {
                // No account whose owner was never told how to use it (a retry would meet
                // EMAIL_EXISTS otherwise).
                if let Err(cleanup) = firebase.delete(&account.id_token).await {
                    tracing::error!(error = %cleanup, uid = %account.uid, "could not remove the Firebase account of a failed sign-up");
                }
                return Err(provider_error(error));
            }
            return Ok(SignUp::VerificationSent { email });
        }
        let created = self
            .create(NewUser {
                email,
                password_hash: None,
                firebase_uid: Some(account.uid.clone()),
                role: Role::User.as_str().to_owned(),
            })
            .await;
        if created.is_err() {
            // Leave no Firebase account without its row here.
            if let Err(error) = firebase.delete(&account.id_token).await {
                tracing::error!(%error, uid = %account.uid, "could not remove the Firebase account of a failed sign-up");
            }
        }
        created.map(SignUp::Created)
    }

    async fn create(&self, user: NewUser) -> Result<UserRecord, AuthError> {
        match self.storage.create_user(user).await {
            Err(StorageError::Conflict) => Err(AuthError::EmailTaken),
            other => Ok(other?),
        }
    }

    /// Checks the credentials (rate-limited: see [`limits`]) and issues a token. Every failure
    /// looks the same to the client.
    pub async fn log_in(
        &self,
        email: &str,
        password: &str,
        client: &str,
    ) -> Result<AccessToken, AuthError> {
        // An email that is not one (too long, say) cannot be an account: only the address pays.
        let email = check_email(email).ok();
        let account = email.as_deref().map(crate::datasets::normalise_text);
        self.limits.before_login(account.as_deref(), client).await?;
        let (Some(email), Some(account)) = (email, account) else {
            return Err(AuthError::InvalidCredentials);
        };
        if password.chars().count() > password::MAX_PASSWORD_CHARS {
            self.limits.failed(&account).await;
            return Err(AuthError::InvalidCredentials);
        }
        let record = match &self.firebase {
            None => {
                let record = self
                    .storage
                    .find_user(UserLookup::Email(email.clone()))
                    .await?;
                let hash = record.as_ref().and_then(|r| r.password_hash.clone());
                // No account costs one verification too, so timing does not tell them apart.
                let matches = password::verify_off_thread(password, hash).await;
                if matches { record } else { None }
            }
            Some(firebase) => match firebase.sign_in(&email, password).await {
                Ok(signed_in) => {
                    // The ID token Firebase just returned says whether the email is verified.
                    let identity = firebase
                        .verify_id_token(&signed_in.id_token)
                        .await
                        .map_err(|error| match error {
                            TokenError::KeysUnavailable => AuthError::ProviderUnavailable,
                            other => AuthError::Internal(anyhow::anyhow!(
                                "Firebase returned an ID token that does not verify: {other}"
                            )),
                        })?;
                    Some(self.account_for_firebase(&identity, Some(&email)).await?)
                }
                Err(FirebaseError::InvalidCredentials) => None,
                Err(other) => return Err(provider_error(other)),
            },
        };
        let Some(record) = record.filter(|r| r.active) else {
            self.limits.failed(&account).await;
            return Err(AuthError::InvalidCredentials);
        };
        self.limits.succeeded(&account, client).await;
        let principal = Principal::from_record(&record).ok_or(AuthError::InvalidCredentials)?;
        Ok(AccessToken {
            access_token: self
                .issuer
                .issue(principal.id, &principal.email, principal.role)?,
            token_type: "Bearer",
            expires_in: self.issuer.ttl().as_secs(),
        })
    }

    /// The row of a Firebase account, created (as a `user`) the first time it is seen, and then
    /// only if its email is verified: a row carries the email that `users promote` names.
    async fn account_for_firebase(
        &self,
        identity: &FirebaseIdentity,
        email: Option<&str>,
    ) -> Result<UserRecord, AuthError> {
        let uid = identity.uid.as_str();
        if let Some(record) = self
            .storage
            .find_user(UserLookup::FirebaseUid(uid.to_owned()))
            .await?
        {
            return Ok(record);
        }
        if self.require_verified_email && !identity.email_verified {
            return Err(AuthError::EmailNotVerified);
        }
        let email = email
            .or(identity.email.as_deref())
            .ok_or(AuthError::InvalidToken)?;
        match self
            .create(NewUser {
                email: email.to_owned(),
                password_hash: None,
                firebase_uid: Some(uid.to_owned()),
                role: Role::User.as_str().to_owned(),
            })
            .await
        {
            // A concurrent first request created it.
            Err(AuthError::EmailTaken) => self
                .storage
                .find_user(UserLookup::FirebaseUid(uid.to_owned()))
                .await?
                .ok_or(AuthError::InvalidToken),
            other => other,
        }
    }

    /// The caller behind a bearer token, read from the users table now: a token of a deleted or
    /// deactivated account is refused, and the role is the stored one, not the token's.
    pub async fn principal(&self, bearer: &str) -> Result<Principal, AuthError> {
        let record = match self.issuer.verify(bearer) {
            Ok(claims) => {
                let id: i64 = claims.sub.parse().map_err(|_| AuthError::InvalidToken)?;
                self.storage.find_user(UserLookup::Id(id)).await?
            }
            Err(TokenError::Refused(_)) if self.firebase.is_some() => {
                let firebase = self.firebase.as_ref().expect("checked");
                let identity =
                    firebase
                        .verify_id_token(bearer)
                        .await
                        .map_err(|error| match error {
                            TokenError::KeysUnavailable => AuthError::ProviderUnavailable,
                            other => {
                                tracing::debug!(error = %other, "refused an ID token");
                                AuthError::InvalidToken
                            }
                        })?;
                Some(self.account_for_firebase(&identity, None).await?)
            }
            Err(error) => {
                tracing::debug!(%error, "refused a token");
                return Err(AuthError::InvalidToken);
            }
        };
        record
            .filter(|r| r.active)
            .as_ref()
            .and_then(Principal::from_record)
            .ok_or(AuthError::InvalidToken)
    }
}

/// Trims and checks an email: one `@` with something on both sides, no spaces, not too long.
pub fn check_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim();
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if !valid {
        return Err(AuthError::InvalidField(
            "email",
            "must be an email address".into(),
        ));
    }
    Ok(email.to_owned())
}

fn provider_error(error: FirebaseError) -> AuthError {
    match error {
        FirebaseError::EmailExists => AuthError::EmailTaken,
        FirebaseError::InvalidCredentials => AuthError::InvalidCredentials,
        FirebaseError::TooManyAttempts => AuthError::TooManyAttempts {
            retry_after: Duration::from_secs(60),
        },
        // The project's own configuration (a bad API key, sign-in method off): not the client's
        // fault, and nothing it can fix.
        FirebaseError::Rejected(reason)
            if reason.starts_with("API key")
                || reason.starts_with("OPERATION_NOT_ALLOWED")
                || reason.starts_with("CONFIGURATION_NOT_FOUND")
                || reason.starts_with("PROJECT_NOT_FOUND") =>
        {
            tracing::error!(%reason, "Firebase Authentication refused the project's configuration");
            AuthError::ProviderUnavailable
        }
        FirebaseError::Rejected(reason) if reason.contains("EMAIL") => {
            AuthError::InvalidField("email", reason)
        }
        FirebaseError::Rejected(reason) => AuthError::InvalidField("password", reason),
        FirebaseError::Unavailable(reason) => {
            tracing::warn!(%reason, "Firebase Authentication call failed");
            AuthError::ProviderUnavailable
        }
    }
}

pub use crate::tls::install_provider as install_tls_provider;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_trimmed() {
        assert_eq!(check_email(" Ada@Example.com ").unwrap(), "Ada@Example.com");
        for bad in [
            "",
            "ada",
            "@x",
            "ada@",
            "a b@c.d",
            "a@b@c",
            &format!("{}@x.y", "a".repeat(300)),
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn levels_order_from_anyone_to_admin() {
        assert!(Level::Anonymous < Level::User && Level::User < Level::Admin);
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("Admin"), None);
    }
}
