//! Accounts: sign-up, login and the signed-in caller, on [`crate::auth`] (which owns the rules:
//! roles decided on the server, sign-in limits, Firebase); here they meet the caller.

use super::{Caller, Service, ServiceError};
use crate::auth::{AccessToken, Principal, SignUp};
use crate::datasets::Level;

impl Service {
    /// A new `user` account; a role the client sent is never read.
    #[tracing::instrument(level = "debug", name = "service.sign_up", skip_all)]
    pub async fn sign_up(
        &self,
        caller: &Caller,
        email: &str,
        password: &str,
    ) -> Result<SignUp, ServiceError> {
        let auth = self.accounts()?;
        Ok(auth
            .sign_up(email, password, &caller.address.to_string())
            .await?)
    }

    /// A token for these credentials (every failure looks the same to the caller).
    #[tracing::instrument(level = "debug", name = "service.log_in", skip_all)]
    pub async fn log_in(
        &self,
        caller: &Caller,
        email: &str,
        password: &str,
    ) -> Result<AccessToken, ServiceError> {
        let auth = self.accounts()?;
        Ok(auth
            .log_in(email, password, &caller.address.to_string())
            .await?)
    }

    /// The signed-in caller, as the accounts table says now.
    #[tracing::instrument(level = "debug", name = "service.me", skip_all)]
    pub async fn me(&self, caller: &Caller) -> Result<Principal, ServiceError> {
        self.authorize(caller, Level::User).await?.ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("a signed-in caller without an account"))
        })
    }
}
