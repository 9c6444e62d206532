//! The API's own access tokens: HS256 JWTs signed with `JWT_SECRET`, the algorithm pinned, with
//! issuer, audience, lifetime and 30 s of leeway for clock skew.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Role;

pub const ISSUER: &str = "smartcache";
pub const AUDIENCE: &str = "smartcache-api";
pub const LEEWAY_SECONDS: u64 = 30;

/// What an access token says. The role is informative: every check that matters reads the
/// account again (see `auth::Auth::principal`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The account id.
    pub sub: String,
    pub email: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Why a token is refused. The client only ever sees "invalid or expired token".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token refused: {0}")]
    Refused(String),
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

/// A token's header, read before any verification to decide which verifier applies.
#[derive(Debug, Deserialize)]
pub struct RawHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// Splits a compact JWS and parses its header; anything but three base64url parts is malformed.
pub fn peek_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// Verified tokens kept with their claims ([`TokenIssuer::verify`]); past this many, all are
/// let go at once (and verified again on their next use).
const VERIFIED_KEPT: usize = 1024;

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    /// Tokens that passed verification, by their whole text: the same bytes pass again, so only
    /// their lifetime is checked on the next use. (A verification, an HMAC and two JSON parses,
    /// was a fifth of an admin write's instructions.) Only tokens that passed are kept, so a
    /// client sending forged ones adds nothing.
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        TokenIssuer {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, account_id: i64, email: &str, role: Role) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: account_id.to_string(),
            email: email.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            nbf: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies signature (HS256 only: a token naming any other algorithm is refused before its
    /// signature is looked at), issuer, audience, `exp` and `nbf`. A token that passed before is
    /// found by its text among those kept, and only its `exp` and `nbf` are checked again.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// [`TokenIssuer::verify`] at `now` (seconds since the epoch) for a token verified before;
    /// a new one is verified at the system clock's now.
    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if let Some(claims) = self.verified.lock().get(token) {
            let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(0);
            return if claims.exp >= now - leeway && claims.nbf <= now + leeway {
                Ok(claims.clone())
            } else {
                Err(TokenError::Refused(
                    "the token is expired or not yet valid".into(),
                ))
            };
        }
        let claims = self.verify_signed(token)?;
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let header = peek_header(token)?;
        if header.alg != "HS256" {
            return Err(TokenError::Refused(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Refused(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn claims(shift: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "sub": "1", "email": "a@b.c", "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 600,
        });
        shift(&mut claims);
        claims
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(600));
        let token = issuer.issue(42, "ada@example.com", Role::Admin).unwrap();
        let claims = issuer.verify(&token).unwrap();
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.exp - claims.iat, 600);
        assert_eq!(peek_header(&token).unwrap().alg, "HS256");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(600));
        let now = chrono::Utc::now().timestamp();
        let good = sign(&claims(|_| {}), SECRET);
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(|c| c["sub"] = "2".into())).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(|_| {})).unwrap());
        let cases = [
            (
                "other secret",
                sign(&claims(|_| {}), b"another secret of at least 32 bytes!!"),
            ),
            (
                "expired",
                sign(&claims(|c| c["exp"] = (now - 31).into()), SECRET),
            ),
            (
                "not yet valid",
                sign(&claims(|c| c["nbf"] = (now + 120).into()), SECRET),
            ),
            (
                "wrong audience",
                sign(&claims(|c| c["aud"] = "someone-else".into()), SECRET),
            ),
            (
                "wrong issuer",
                sign(&claims(|c| c["iss"] = "evil".into()), SECRET),
            ),
            (
                "tampered payload",
                format!("{head}.{forged_payload}.{signature}"),
            ),
            ("alg none", format!("{none_header}.{payload}.")),
            ("not a JWT", "abc".to_owned()),
            (
                "header not JSON",
                format!("{}.{payload}.{signature}", URL_SAFE_NO_PAD.encode(b"{")),
            ),
        ];
        for (what, token) in cases {
            assert!(issuer.verify(&token).is_err(), "{what} was accepted");
        }
        // Within the leeway, a just-expired token still passes.
        assert!(
            issuer
                .verify(&sign(&claims(|c| c["exp"] = (now - 5).into()), SECRET))
                .is_ok()
        );
    }

    /// A token verified once is not verified again, but its lifetime still counts on every use;
    /// one that failed is never kept.
    #[test]
    fn a_verified_token_is_kept_for_its_lifetime_only() {
        let issuer = TokenIssuer::new(SECRET, Duration::from_secs(600));
        let token = issuer.issue(7, "kept@example.com", Role::User).unwrap();
        let claims = issuer.verify(&token).unwrap();
        assert_eq!(issuer.verified.lock().len(), 1);
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap();
        assert_eq!(
            issuer.verify_at(&token, claims.exp + leeway).unwrap(),
            claims
        );
        assert!(
            issuer.verify_at(&token, claims.exp + leeway + 1).is_err(),
            "expired"
        );
        assert!(
            issuer.verify_at(&token, claims.nbf - leeway - 1).is_err(),
            "not yet valid"
        );
        let tampered = format!("{token}x");
        assert!(issuer.verify(&tampered).is_err());
        assert_eq!(
            issuer.verified.lock().len(),
            1,
            "a refused token is not kept"
        );
        for id in 0..VERIFIED_KEPT {
            let other = issuer.issue(i64::try_from(id).unwrap(), "m@example.com", Role::User);
            issuer.verify(&other.unwrap()).unwrap();
        }
        assert!(issuer.verified.lock().len() <= VERIFIED_KEPT, "bounded");
        assert_eq!(issuer.verify(&token).unwrap(), claims, "verified again");
    }
}
