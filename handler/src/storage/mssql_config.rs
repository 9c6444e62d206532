//! SQL Server / Azure SQL connection settings, from either form `DATABASE_URL` may take:
//!
//! - a URL: `mssql://user:password@host:1433/database?encrypt=true&trust_server_certificate=false`
//!   (`sqlserver://` too; user and password percent-encoded);
//! - an ADO.NET connection string, as the Azure portal shows it:
//!   `Server=tcp:x.database.windows.net,1433;Initial Catalog=db;User ID=u;Password=p;Encrypt=True;`
//!   `TrustServerCertificate=False;Authentication=Active Directory Default;`
//!
//! ADO.NET rules followed here: keys are case-insensitive and may contain spaces (`User ID`); a
//! value may be quoted with `'` or `"` (the quote doubled inside) or `{…}` (for passwords with `;`);
//! `tcp:` before the host and `,port` after it are optional. Passwords are kept as [`Secret`].

use anyhow::{Context as _, bail};

use crate::config::Secret;

pub const DEFAULT_PORT: u16 = 1433;

/// How the connection authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum Authentication {
    /// A SQL login from the connection string.
    SqlLogin { user: String, password: Secret },
    /// An Entra ID access token from `azure_identity` (managed identity in Azure, developer
    /// credentials locally): `Authentication=Active Directory Default` (or `…Managed Identity`).
    EntraId,
}

/// TLS for the connection. Azure SQL requires it; a local server may not have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    On,
    Off,
    /// TDS 8.0 strict encryption (`Encrypt=Strict`).
    Strict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MssqlConfig {
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub authentication: Authentication,
    pub encrypt: Encrypt,
    pub trust_server_certificate: bool,
    pub application_name: Option<String>,
}

/// Whether `database_url` names SQL Server in either form.
pub fn is_mssql(database_url: &str) -> bool {
    let lower = database_url.trim_start().to_ascii_lowercase();
    lower.starts_with("mssql://")
        || lower.starts_with("sqlserver://")
        || split_pairs(database_url)
            .map(|pairs| {
                pairs
                    .iter()
                    .any(|(k, _)| matches!(k.as_str(), "server" | "data source" | "address"))
            })
            .unwrap_or(false)
}

pub fn parse(database_url: &str) -> anyhow::Result<MssqlConfig> {
    let trimmed = database_url.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("mssql://") || lower.starts_with("sqlserver://") {
        parse_url(trimmed)
    } else {
        parse_ado(trimmed)
    }
}

fn parse_bool(key: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => bail!("{key} must be true or false, not {value:?}"),
    }
}

fn parse_encrypt(value: &str) -> anyhow::Result<Encrypt> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "mandatory" => Ok(Encrypt::On),
        "false" | "no" | "0" | "optional" => Ok(Encrypt::Off),
        "strict" => Ok(Encrypt::Strict),
        _ => bail!("Encrypt must be true, false or strict, not {value:?}"),
    }
}

fn parse_authentication(
    value: Option<&str>,
    user: Option<String>,
    password: Option<String>,
) -> anyhow::Result<Authentication> {
    let method = value.map(|v| v.trim().to_ascii_lowercase());
    match method.as_deref() {
        None | Some("sqlpassword") | Some("sql password") => match (user, password) {
            (Some(user), Some(password)) => Ok(Authentication::SqlLogin {
                user,
                password: Secret::new(password),
            }),
            _ => bail!(
                "the SQL Server connection string needs a user and a password, or \
                 Authentication=Active Directory Default"
            ),
        },
        Some(
            "active directory default"
            | "activedirectorydefault"
            | "active directory managed identity"
            | "active directory msi"
            | "activedirectorymanagedidentity",
        ) => Ok(Authentication::EntraId),
        Some(other) => bail!(
            "Authentication={other:?} is not supported; use a SQL login or Active Directory Default"
        ),
    }
}

fn parse_url(text: &str) -> anyhow::Result<MssqlConfig> {
    let url = url::Url::parse(text).context("DATABASE_URL is not a valid mssql:// URL")?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .context("the mssql:// URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let decode = |s: &str| {
        percent_decode(s).context("the user or password in the mssql:// URL is not valid UTF-8")
    };
    let user = (!url.username().is_empty())
        .then(|| decode(url.username()))
        .transpose()?;
    let password = url.password().map(decode).transpose()?;
    let database = url
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|d| !d.is_empty())
        .map(decode)
        .transpose()?;
    let mut encrypt = Encrypt::On;
    let mut trust_server_certificate = false;
    let mut authentication = None;
    let mut application_name = None;
    for (key, value) in url.query_pairs() {
        match key.to_ascii_lowercase().replace('_', "").as_str() {
            "encrypt" => encrypt = parse_encrypt(&value)?,
            "trustservercertificate" => {
                trust_server_certificate = parse_bool("trust_server_certificate", &value)?
            }
            "authentication" => authentication = Some(value.into_owned()),
            "applicationname" | "appname" => application_name = Some(value.into_owned()),
            other => bail!("unknown mssql:// URL parameter {other:?}"),
        }
    }
    Ok(MssqlConfig {
        host,
        port: url.port().unwrap_or(DEFAULT_PORT),
        database,
        authentication: parse_authentication(authentication.as_deref(), user, password)?,
        encrypt,
        trust_server_certificate,
        application_name,
    })
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    Ok(
        url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default(),
    )
}

/// `key=value;` pairs with ADO.NET quoting, keys lower-cased and trimmed.
fn split_pairs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            bail!("the connection string has a value without a key");
        }
        if key.contains(';') {
            bail!(
                "a part of the connection string has no '=': a value with ';' (a password?) must be \
                 quoted, e.g. Password={{…}}"
            );
        }
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        let mut value = String::new();
        match chars.peek().copied() {
            Some(quote @ ('\'' | '"')) => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(c) if c == quote => {
                            if chars.peek() == Some(&quote) {
                                chars.next();
                                value.push(quote);
                            } else {
                                break;
                            }
                        }
                        Some(c) => value.push(c),
                        None => bail!("a quoted value in the connection string is not closed"),
                    }
                }
            }
            Some('{') => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('}') if chars.peek() == Some(&'}') => {
                            chars.next();
                            value.push('}');
                        }
                        Some('}') => break,
                        Some(c) => value.push(c),
                        None => bail!("a {{…}} value in the connection string is not closed"),
                    }
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn parse_ado(text: &str) -> anyhow::Result<MssqlConfig> {
    let pairs = split_pairs(text)?;
    let get = |names: &[&str]| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let server = get(&[
        "server",
        "data source",
        "address",
        "addr",
        "network address",
    ])
    .context("the SQL Server connection string has no Server=")?;
    let server = server
        .strip_prefix("tcp:")
        .or_else(|| server.strip_prefix("TCP:"))
        .unwrap_or(&server);
    let (host, port) = match server.rsplit_once(',') {
        Some((host, port)) => (
            host.trim(),
            port.trim()
                .parse()
                .with_context(|| format!("the port in Server= must be a number, not {port:?}"))?,
        ),
        None => (server.trim(), DEFAULT_PORT),
    };
    if host.is_empty() {
        bail!("the SQL Server connection string has an empty Server=");
    }
    let encrypt = get(&["encrypt"])
        .map(|v| parse_encrypt(&v))
        .transpose()?
        .unwrap_or(Encrypt::On);
    let trust_server_certificate = get(&["trustservercertificate", "trust server certificate"])
        .map(|v| parse_bool("TrustServerCertificate", &v))
        .transpose()?
        .unwrap_or(false);
    Ok(MssqlConfig {
        host: host.to_owned(),
        port,
        database: get(&["database", "initial catalog"]).filter(|d| !d.is_empty()),
        authentication: parse_authentication(
            get(&["authentication"]).as_deref(),
            get(&["user id", "uid", "user", "username"]),
            get(&["password", "pwd"]),
        )?,
        encrypt,
        trust_server_certificate,
        application_name: get(&["application name", "app"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(config: &MssqlConfig) -> (&str, &str) {
        match &config.authentication {
            Authentication::SqlLogin { user, password } => (user.as_str(), password.expose()),
            other => panic!("not a SQL login: {other:?}"),
        }
    }

    #[test]
    fn the_azure_portal_string_parses() {
        let c = parse(
            "Server=tcp:smartcache.database.windows.net,1433;Initial Catalog=movies;\
             Persist Security Info=False;User ID=app;Password=p@ss;w0rd;MultipleActiveResultSets=False;\
             Encrypt=True;TrustServerCertificate=False;Connection Timeout=30;",
        );
        // An unquoted ';' ends the value, leaving "w0rd" as a part without '=': refused, unprinted.
        let err = format!("{:#}", c.unwrap_err());
        assert!(
            err.contains("must be quoted") && !err.contains("w0rd"),
            "{err}"
        );
        let c = parse(
            "Server=tcp:smartcache.database.windows.net,1433;Initial Catalog=movies;User ID=app;\
             Password={p@ss;w0rd}};x};Encrypt=True;TrustServerCertificate=False;Connection Timeout=30;",
        )
        .unwrap();
        assert_eq!(c.host, "smartcache.database.windows.net");
        assert_eq!(c.port, 1433);
        assert_eq!(c.database.as_deref(), Some("movies"));
        assert_eq!(login(&c), ("app", "p@ss;w0rd};x"));
        assert_eq!(
            (c.encrypt, c.trust_server_certificate),
            (Encrypt::On, false)
        );
        assert!(
            !format!("{c:?}").contains("w0rd"),
            "the password never prints"
        );
    }

    #[test]
    fn quoting_ports_and_keys_follow_ado_net() {
        let c = parse(
            "data source = db.local ; DATABASE='it''s';uid=\"sa\";pwd='a;b';encrypt=false;\
             TrustServerCertificate=yes",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("db.local", 1433));
        assert_eq!(c.database.as_deref(), Some("it's"));
        assert_eq!(login(&c), ("sa", "a;b"));
        assert_eq!(
            (c.encrypt, c.trust_server_certificate),
            (Encrypt::Off, true)
        );
        let strict = parse("Server=h,14330;User ID=u;Password=p;Encrypt=Strict").unwrap();
        assert_eq!((strict.port, strict.encrypt), (14330, Encrypt::Strict));
    }

    #[test]
    fn entra_id_needs_no_password() {
        let c = parse(
            "Server=tcp:x.database.windows.net;Database=d;Authentication=Active Directory Default",
        )
        .unwrap();
        assert_eq!(c.authentication, Authentication::EntraId);
        let c = parse("mssql://x.database.windows.net/d?authentication=ActiveDirectoryDefault")
            .unwrap();
        assert_eq!(c.authentication, Authentication::EntraId);
    }

    #[test]
    fn urls_parse_with_encoded_credentials() {
        let c = parse(
            "mssql://app%40corp:p%3Bw%2Bd@[::1]:14330/movies?encrypt=false&trust_server_certificate=true",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 14330));
        assert_eq!(login(&c), ("app@corp", "p;w+d"));
        assert_eq!(c.database.as_deref(), Some("movies"));
        assert_eq!(
            (c.encrypt, c.trust_server_certificate),
            (Encrypt::Off, true)
        );
        let c = parse("sqlserver://u:p@db").unwrap();
        assert_eq!((c.port, c.encrypt, c.database), (1433, Encrypt::On, None));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expected) in [
            ("Server=;User ID=u;Password=p", "empty Server"),
            ("Database=d;User ID=u;Password=p", "no Server"),
            ("Server=h,port;User ID=u;Password=p", "port in Server"),
            ("Server=h;User ID=u", "needs a user and a password"),
            ("Server=h;User ID=u;Password='open", "not closed"),
            (
                "Server=h;User ID=u;Password=p;Encrypt=maybe",
                "Encrypt must be",
            ),
            (
                "Server=h;Authentication=Active Directory Password",
                "not supported",
            ),
            (
                "mssql://u:p@h/d?colour=blue",
                "unknown mssql:// URL parameter",
            ),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("=p;") && !err.contains(":p@"), "{err}");
        }
    }

    #[test]
    fn both_forms_are_recognised() {
        assert!(is_mssql("mssql://u:p@h/d"));
        assert!(is_mssql("Server=tcp:x,1433;Database=d"));
        assert!(is_mssql("Data Source=x;Initial Catalog=d"));
        assert!(!is_mssql("postgres://u@h/d"));
        assert!(!is_mssql("sqlite://smartcache.db"));
    }
}
