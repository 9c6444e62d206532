//! Accounts over HTTP: `/api/auth/signup`, `/api/auth/login`, `/api/auth/me`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::body::JsonBody;
use super::{ApiError, AppState, json_response};
use crate::auth::{AuthError, SignUp};
use crate::service::Caller;

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
            Err(AuthError::InvalidFields(missing).into())
        }
    }
}

/// `POST /api/auth/signup`: 201 `{id, email, role: "user"}`, or 202 when Firebase has sent a
/// verification link first.
pub async fn signup(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    state.accounts()?;
    let (email, password) = credentials(&body)?;
    let (status, body) = match state.sign_up(&caller, &email, &password).await? {
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
    caller: Caller,
    body: JsonBody,
) -> Result<Response, ApiError> {
    state.accounts()?;
    let (email, password) = credentials(&body)?;
    let token = state.log_in(&caller, &email, &password).await?;
    let mut response = json_response(
        StatusCode::OK,
        serde_json::to_vec(&token)
            .map_err(|e| ApiError::Service(crate::service::ServiceError::Internal(e.into())))?,
        "",
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    Ok(response)
}

/// `GET /api/auth/me`: the caller's id, email and role.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let principal = state.me(&caller).await?;
    let body =
        json!({"id": principal.id, "email": principal.email, "role": principal.role.as_str()});
    Ok(json_response(
        StatusCode::OK,
        body.to_string().into_bytes(),
        "",
    ))
}
