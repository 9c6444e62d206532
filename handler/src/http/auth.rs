//! Accounts over HTTP (`/api/auth/signup`, `/api/auth/login`, `/api/auth/me`) and the one check
//! every protected endpoint makes, [`authorize`].

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::body::JsonBody;
use super::{ApiError, AppState, json_response};
use crate::auth::{Auth, AuthError, Level, Principal, SignUp};

fn accounts(state: &AppState) -> Result<&Auth, ApiError> {
    state
        .auth
        .as_deref()
        .ok_or(ApiError::Auth(AuthError::NotConfigured))
}

/// The bearer token of the request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks that the caller may act at `level`: anyone passes `anonymous` (a token is not even
/// read); otherwise the token must be valid and the account, as stored now, active and of a
/// high enough role. 401 without a valid token, 403 with a too-low role.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    level: Level,
) -> Result<Option<Principal>, ApiError> {
    if level == Level::Anonymous {
        return Ok(None);
    }
    let auth = accounts(state)?;
    let token = bearer(headers).ok_or(ApiError::Auth(AuthError::MissingToken))?;
    let principal = auth.principal(token).await.map_err(ApiError::Auth)?;
    let allowed = match level {
        Level::Anonymous | Level::User => true,
        Level::Admin => principal.role == crate::auth::Role::Admin,
    };
    if !allowed {
        return Err(ApiError::Auth(AuthError::Forbidden));
    }
    Ok(Some(principal))
}

/// The `email` and `password` fields of a sign-up or login body; anything else (a `role`, say)
/// is ignored.
fn credentials(body: &JsonBody) -> Result<(String, String), ApiError> {
    let field = |name: &str| {
        body.fields
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match (field("email"), field("password")) {
        (Some(email), Some(password)) => Ok((email, password)),
        (email, password) => {
            let missing = [("email", email), ("password", password)]
                .into_iter()
                .filter(|(_, value)| value.is_none())
                .map(|(name, _)| (name, "must be a string".to_owned()))
                .collect();
            Err(ApiError::Auth(AuthError::InvalidFields(missing)))
        }
    }
}

/// `POST /api/auth/signup`: 201 `{id, email, role: "user"}`.
pub async fn signup(
    State(state): State<AppState>,
    client: super::ClientAddress,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let auth = accounts(&state)?;
    let (email, password) = credentials(&body)?;
    let signed_up = auth
        .sign_up(&email, &password, &client.0)
        .await
        .map_err(ApiError::Auth)?;
    let (status, body) = match signed_up {
        SignUp::Created(user) => (
            StatusCode::CREATED,
            json!({"id": user.id, "email": user.email, "role": user.role}),
        ),
        // Firebase accounts: usable once the owner follows the link sent to the address.
        SignUp::VerificationSent { email } => (
            StatusCode::ACCEPTED,
            json!({"email": email, "verification": "sent"}),
        ),
    };
    Ok(json_response(status, body.to_string().into_bytes(), ""))
}

/// `POST /api/auth/login`: `{access_token, token_type: "Bearer", expires_in}`.
pub async fn login(
    State(state): State<AppState>,
    client: super::ClientAddress,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let auth = accounts(&state)?;
    let (email, password) = credentials(&body)?;
    let token = auth
        .log_in(&email, &password, &client.0)
        .await
        .map_err(ApiError::Auth)?;
    let mut response = json_response(
        StatusCode::OK,
        serde_json::to_vec(&token).map_err(|e| ApiError::Internal(e.into()))?,
        "",
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    Ok(response)
}

/// `GET /api/auth/me`: the caller's id, email and role.
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = authorize(&state, &headers, Level::User)
        .await?
        .expect("a signed-in level yields a principal");
    let body =
        json!({"id": principal.id, "email": principal.email, "role": principal.role.as_str()});
    Ok(json_response(
        StatusCode::OK,
        body.to_string().into_bytes(),
        "",
    ))
}
