//! Who may read a blob: a SAS in the URL, Shared Key signing with the account key, or an
//! Entra ID token.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use url::Url;

use super::BlobLocation;
use crate::identity::{self, Tokens};

/// How requests are authorised.
#[derive(Clone)]
pub enum BlobAuth {
    /// The SAS in the URL (or a public container): nothing to add.
    UrlOnly,
    /// Shared Key: each request signed with the account key.
    SharedKey { account: String, key: Arc<[u8]> },
    /// An Entra ID bearer token for Storage.
    Identity(Arc<Tokens>),
}

impl BlobAuth {
    /// The access the settings give for this blob: see the module documentation.
    pub fn for_location(
        location: &BlobLocation,
        connection_string: Option<&str>,
        auth_setting: Option<&str>,
    ) -> anyhow::Result<BlobAuth> {
        let forced = auth_setting.map(str::trim).filter(|s| !s.is_empty());
        match forced {
            Some("anonymous") | Some("sas") => return Ok(BlobAuth::UrlOnly),
            Some("identity") => return BlobAuth::identity_for(location),
            Some("key") | None => {}
            Some(other) => {
                bail!("AZURE_STORAGE_AUTH must be sas, key, identity or anonymous (got {other:?})")
            }
        }
        if location.has_sas && forced.is_none() {
            return Ok(BlobAuth::UrlOnly);
        }
        if let Some(connection_string) = connection_string.filter(|s| !s.trim().is_empty()) {
            let account = StorageAccount::parse(connection_string)?;
            // Signed requests go only to the account's own endpoint: a URL naming another host
            // would hand it a replayable signature.
            if !account.serves(&location.url) {
                bail!(
                    "the blob URL is not in the storage account of AZURE_STORAGE_CONNECTION_STRING \
                     ({}): refusing to sign a request to another host",
                    account.endpoint()
                );
            }
            return Ok(BlobAuth::SharedKey {
                account: account.name,
                key: account.key.into(),
            });
        }
        if forced == Some("key") {
            bail!(
                "AZURE_STORAGE_AUTH=key needs AZURE_STORAGE_CONNECTION_STRING with an AccountKey"
            );
        }
        BlobAuth::identity_for(location)
    }

    /// A bearer token is valid for every account the identity may read: it goes only to Azure
    /// Blob Storage endpoints, over TLS.
    fn identity_for(location: &BlobLocation) -> anyhow::Result<BlobAuth> {
        let host = location.url.host_str().unwrap_or_default();
        let azure = AZURE_BLOB_SUFFIXES
            .iter()
            .any(|suffix| host.ends_with(&format!(".blob.{suffix}")));
        if location.url.scheme() != "https" || !azure {
            bail!(
                "an Entra ID token is sent only to https://<account>.blob.core.windows.net (or a \
                 sovereign cloud's blob endpoint); give a SAS or AZURE_STORAGE_CONNECTION_STRING for {}",
                location.display
            );
        }
        Ok(BlobAuth::Identity(identity::azure()))
    }
}

/// Blob endpoints of the public and sovereign Azure clouds.
const AZURE_BLOB_SUFFIXES: [&str; 3] = [
    "core.windows.net",
    "core.chinacloudapi.cn",
    "core.usgovcloudapi.net",
];

/// A storage account from its connection string.
pub struct StorageAccount {
    pub name: String,
    pub key: Vec<u8>,
    /// `BlobEndpoint`, when the string names one (an emulator, a custom domain).
    pub blob_endpoint: Option<String>,
    /// `EndpointSuffix` (default `core.windows.net`).
    pub endpoint_suffix: String,
}

impl StorageAccount {
    pub fn parse(connection_string: &str) -> anyhow::Result<StorageAccount> {
        let (name, key) = account_key(connection_string)?;
        let field = |wanted: &str| {
            connection_string.split(';').find_map(|part| {
                let (name, value) = part.split_once('=')?;
                (name.trim().eq_ignore_ascii_case(wanted)).then(|| value.trim().to_owned())
            })
        };
        Ok(StorageAccount {
            name,
            key,
            blob_endpoint: field("BlobEndpoint").map(|e| e.trim_end_matches('/').to_owned()),
            endpoint_suffix: field("EndpointSuffix").unwrap_or_else(|| "core.windows.net".into()),
        })
    }

    /// Where the account's blobs are.
    pub fn endpoint(&self) -> String {
        self.blob_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.{}", self.name, self.endpoint_suffix))
    }

    /// Whether `url` is a blob of this account.
    pub fn serves(&self, url: &Url) -> bool {
        let endpoint = self.endpoint();
        let mut bare = url.clone();
        bare.set_query(None);
        bare.set_fragment(None);
        bare.as_str().starts_with(&format!("{endpoint}/"))
    }
}

/// `AccountName` and the decoded `AccountKey` of a storage connection string.
pub fn account_key(connection_string: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut account = None;
    let mut key = None;
    for part in connection_string.split(';') {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "accountname" => account = Some(value.trim().to_owned()),
            // A base64 key ends in '=': only the first '=' separates the name.
            "accountkey" => key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let account = account.context("AZURE_STORAGE_CONNECTION_STRING has no AccountName")?;
    let key = key.context("AZURE_STORAGE_CONNECTION_STRING has no AccountKey")?;
    let key = STANDARD.decode(key).map_err(|_| {
        anyhow::anyhow!("the AccountKey of AZURE_STORAGE_CONNECTION_STRING is not base64")
    })?;
    Ok((account, key))
}

/// The Shared Key signature of a blob request (`Authorization: SharedKey <account>:<this>`):
/// HMAC-SHA256 over the verb, the standard headers that are set, the `x-ms-*` headers sorted,
/// and the resource (`/<account><path>`, then the query's parameters sorted by name).
pub fn shared_key_signature(
    key: &[u8],
    verb: &str,
    standard: &StandardHeaders,
    ms_headers: &[(&str, &str)],
    account: &str,
    url: &Url,
) -> String {
    let to_sign = string_to_sign(verb, standard, ms_headers, account, url);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// What a Shared Key signature signs: the verb, then twelve standard header slots
/// (Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since, If-Match,
/// If-None-Match, If-Unmodified-Since, Range), then the `x-ms-*` headers sorted, then the resource.
pub fn string_to_sign(
    verb: &str,
    standard: &StandardHeaders,
    ms_headers: &[(&str, &str)],
    account: &str,
    url: &Url,
) -> String {
    let mut ms: Vec<(String, &str)> = ms_headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim()))
        .collect();
    ms.sort();
    let content_length = match standard.content_length {
        Some(0) | None => String::new(),
        Some(n) => n.to_string(),
    };
    let mut to_sign = format!(
        "{verb}\n\n\n{content_length}\n\n{}\n\n\n{}\n\n\n\n",
        standard.content_type.unwrap_or_default(),
        standard.if_match.unwrap_or_default(),
    );
    for (name, value) in ms {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(&format!("/{account}{}", url.path()));
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    query.sort();
    for (name, value) in query {
        to_sign.push_str(&format!("\n{name}:{value}"));
    }
    to_sign
}

/// The standard headers a Shared Key signature covers that requests here may set.
#[derive(Debug, Default, Clone, Copy)]
pub struct StandardHeaders<'a> {
    pub content_length: Option<u64>,
    pub content_type: Option<&'a str>,
    pub if_match: Option<&'a str>,
}
