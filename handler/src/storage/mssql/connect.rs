//! Connections to SQL Server and Azure SQL: configuration, TLS, SQL logins or Entra ID tokens
//! (a current token for every new connection), and Azure SQL's redirect to the database's node.

use std::sync::Arc;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt as _};

use super::super::StorageError;
use super::super::mssql_config::{Authentication, Encrypt, MssqlConfig};
use crate::identity::{self, Tokens};

pub type Connection = Client<Compat<TcpStream>>;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach SQL Server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tds(#[from] tiberius::error::Error),
    #[error("cannot get an Entra ID token for Azure SQL: {0}")]
    Token(String),
}

/// Opens connections for the pool: configuration, TLS, authentication, Azure SQL's redirect.
pub struct Manager {
    config: MssqlConfig,
    tokens: Option<Arc<Tokens>>,
}

impl Manager {
    pub fn new(config: MssqlConfig, tokens: Option<Arc<Tokens>>) -> Manager {
        Manager { config, tokens }
    }

    /// The tiberius configuration for a new connection, with a current token when the
    /// connection string asks for Entra ID.
    pub async fn tiberius_config(&self) -> std::result::Result<Config, ConnectError> {
        let c = &self.config;
        let mut config = Config::new();
        config.host(&c.host);
        config.port(c.port);
        if let Some(database) = &c.database {
            config.database(database);
        }
        config.application_name(c.application_name.as_deref().unwrap_or("smartcache"));
        config.encryption(match c.encrypt {
            Encrypt::On => EncryptionLevel::Required,
            Encrypt::Off => EncryptionLevel::Off,
            Encrypt::Strict => EncryptionLevel::Strict,
        });
        if c.trust_server_certificate {
            config.trust_cert();
        } else {
            // The same roots on every host, including a minimal container image.
            config.trust_webpki_roots();
        }
        config.authentication(self.auth_method().await?);
        Ok(config)
    }

    /// The SQL login, or an Entra ID token with life left in it (cached per instance).
    pub async fn auth_method(&self) -> std::result::Result<AuthMethod, ConnectError> {
        Ok(match &self.config.authentication {
            Authentication::SqlLogin { user, password } => {
                AuthMethod::sql_server(user, password.expose())
            }
            Authentication::EntraId => {
                let tokens = self.tokens.clone().unwrap_or_else(identity::azure);
                let token = tokens
                    .get(identity::SQL_SCOPE)
                    .await
                    .map_err(|e| ConnectError::Token(format!("{e:#}")))?;
                AuthMethod::aad_token(token.secret)
            }
        })
    }

    /// A new connection (the pool's, or one of its own for an import or a test's setup).
    pub async fn open(&self) -> std::result::Result<Connection, ConnectError> {
        let config = self.tiberius_config().await?;
        let tcp = TcpStream::connect(config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        match Client::connect(config, tcp.compat_write()).await {
            // Azure SQL inside Azure redirects to the node that holds the database.
            Err(tiberius::error::Error::Routing { host, port }) => {
                let mut config = self.tiberius_config().await?;
                config.host(&host);
                config.port(port);
                let tcp = TcpStream::connect(config.get_addr()).await?;
                tcp.set_nodelay(true)?;
                Ok(Client::connect(config, tcp.compat_write()).await?)
            }
            other => Ok(other?),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = ConnectError;

    async fn connect(&self) -> std::result::Result<Connection, ConnectError> {
        self.open().await
    }

    async fn is_valid(&self, conn: &mut Connection) -> std::result::Result<(), ConnectError> {
        conn.simple_query("SELECT 1").await?.into_results().await?;
        Ok(())
    }

    fn has_broken(&self, _: &mut Connection) -> bool {
        false
    }
}

/// A connection that could not be opened, as the storage reports it.
pub(super) fn connect_error(error: ConnectError) -> StorageError {
    match error {
        ConnectError::Tds(e) => e.into(),
        other => StorageError::Unavailable(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::mssql_config;
    use super::*;
    use crate::config::Secret;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, SystemTime};

    /// A test double of the Entra ID credential (no Entra ID here): numbered tokens that live
    /// 400 ms. Each new connection's configuration carries a token with life left in it.
    struct ShortLived(AtomicU32);

    #[async_trait]
    impl identity::TokenSource for ShortLived {
        async fn fetch(&self, scope: &str) -> anyhow::Result<identity::AccessToken> {
            assert_eq!(scope, identity::SQL_SCOPE);
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(identity::AccessToken {
                secret: format!("sql-token-{n}"),
                expires_at: SystemTime::now() + Duration::from_millis(400),
            })
        }
    }

    #[tokio::test]
    async fn new_connections_get_a_current_entra_token() {
        let config = mssql_config::parse(
            "Server=tcp:x.database.windows.net,1433;Database=db;Authentication=Active Directory Default",
        )
        .unwrap();
        let source = Arc::new(ShortLived(AtomicU32::new(0)));
        let manager = Manager::new(config, Some(Tokens::new(source.clone())));
        let first = manager.auth_method().await.unwrap();
        assert_eq!(first, AuthMethod::aad_token("sql-token-1"));
        manager.tiberius_config().await.unwrap();
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            1,
            "a fresh token is reused"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let later = manager.auth_method().await.unwrap();
        assert_eq!(
            later,
            AuthMethod::aad_token("sql-token-2"),
            "a token near expiry is replaced"
        );
        // A SQL login needs no token; the password never prints.
        let login =
            mssql_config::parse("mssql://app:s3cret%21@127.0.0.1:1433/db?encrypt=false").unwrap();
        let manager = Manager::new(login, None);
        assert_eq!(
            manager.auth_method().await.unwrap(),
            AuthMethod::sql_server("app", Secret::new("s3cret!").expose())
        );
        let config = manager.tiberius_config().await.unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
