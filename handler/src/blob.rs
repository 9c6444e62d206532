//! Imports from Azure Blob Storage: one GET of the blob, streamed to the importer's reader thread
//! through a small bounded channel, so memory stays flat whatever the blob's size.
//!
//! Access, in this order: a SAS in the URL; the account key of `AZURE_STORAGE_CONNECTION_STRING`
//! (Shared Key signing); else an Entra ID token from the instance's credential
//! ([`crate::identity`]), or nothing at all for a public container (`AZURE_STORAGE_AUTH=anonymous`).
//! A connection that drops mid-blob is resumed where it stopped (`x-ms-range` + `If-Match`), so a
//! blob that changed meanwhile fails the import instead of mixing two versions.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::mpsc;
use url::Url;

use crate::identity::{self, Tokens};
use crate::import::ImportSource;

/// The REST API version sent with every request (Shared Key and bearer tokens need one).
pub const API_VERSION: &str = "2021-08-06";
/// Chunks in flight between the download and the CSV reader.
const CHANNEL_CHUNKS: usize = 16;
/// Resumptions of a dropped download before the import fails.
const MAX_RESUMES: u32 = 3;

/// Where a blob is and how to name it without secrets.
#[derive(Clone)]
pub struct BlobLocation {
    /// The full URL, SAS included.
    url: Url,
    /// The storage account: the first label of `<account>.blob.core.windows.net`, or the first
    /// path segment of a path-style URL (Azurite, `http://127.0.0.1:10000/devstoreaccount1/...`).
    pub account: String,
    /// The URL without its query (a SAS never reaches a log or an error message).
    pub display: String,
    pub has_sas: bool,
}

impl BlobLocation {
    pub fn parse(raw: &str) -> anyhow::Result<BlobLocation> {
        let url = Url::parse(raw).map_err(|e| {
            anyhow::anyhow!("the blob URL is not a URL ({e}); expected https://<account>.blob.core.windows.net/<container>/<blob>")
        })?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]");
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            bail!("the blob URL must be https:// (http:// only for a local emulator on 127.0.0.1)");
        }
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let path_style = !host.contains(".blob.");
        let account = if path_style {
            segments.first().copied().unwrap_or_default().to_owned()
        } else {
            host.split('.').next().unwrap_or_default().to_owned()
        };
        let needed = if path_style { 3 } else { 2 };
        if account.is_empty() || segments.len() < needed {
            bail!(
                "the blob URL must name a container and a blob: \
                 https://<account>.blob.core.windows.net/<container>/<blob>"
            );
        }
        let mut display = url.clone();
        display.set_query(None);
        display.set_fragment(None);
        let has_sas = url.query_pairs().any(|(k, _)| k == "sig");
        Ok(BlobLocation {
            display: display.to_string(),
            account,
            has_sas,
            url,
        })
    }

    /// The blob's name (the last path segment), for `.gz` detection.
    fn file_name(&self) -> &str {
        self.url.path().rsplit('/').next().unwrap_or_default()
    }
}

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

/// Why a blob could not be read; every message names the blob without its SAS.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found: {blob} ({code})")]
    NotFound { blob: String, code: String },
    #[error(
        "access to {blob} was denied ({code}): the SAS may have expired or lack read permission, \
         the account key may be wrong, or the identity may lack the Storage Blob Data Reader role"
    )]
    Denied { blob: String, code: String },
    #[error("the blob {blob} changed during the import (its ETag no longer matches)")]
    Changed { blob: String },
    #[error("Blob Storage answered {status} for {blob} ({code})")]
    Unexpected {
        blob: String,
        status: u16,
        code: String,
    },
    #[error("cannot reach Blob Storage for {blob}: {cause}")]
    Unreachable { blob: String, cause: String },
    #[error("cannot get an access token for Blob Storage: {0}")]
    Token(String),
}

/// Reads blobs over HTTP with one client (connection pool) per instance.
#[derive(Clone)]
pub struct BlobReader {
    http: reqwest::Client,
    auth: BlobAuth,
    location: BlobLocation,
}

/// What the first answer said about the blob.
struct Opened {
    response: reqwest::Response,
    size: u64,
    etag: Option<String>,
}

impl BlobReader {
    pub fn new(location: BlobLocation, auth: BlobAuth) -> anyhow::Result<BlobReader> {
        crate::tls::install_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Between two chunks, not for the whole blob.
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("cannot create the HTTP client for Blob Storage")?;
        Ok(BlobReader {
            http,
            auth,
            location,
        })
    }

    /// Opens the blob and starts streaming it; errors about the blob itself (missing, denied)
    /// come back here, before any database work.
    pub async fn open(&self) -> Result<ImportSource, BlobError> {
        let opened = self.get(0, None).await?;
        let size = opened.size;
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(self.clone().pump(opened, sender));
        Ok(ImportSource {
            name: self.location.display.clone(),
            size,
            gzipped: self.location.file_name().ends_with(".gz"),
            reader: Box::new(ChannelReader {
                receiver,
                current: Bytes::new(),
            }),
        })
    }

    /// One GET from `offset` (with `If-Match` when resuming).
    async fn get(&self, offset: u64, etag: Option<&str>) -> Result<Opened, BlobError> {
        let blob = || self.location.display.clone();
        let date = httpdate::fmt_http_date(SystemTime::now());
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let mut ms_headers = vec![("x-ms-date", date.as_str()), ("x-ms-version", API_VERSION)];
        if let Some(range) = &range {
            ms_headers.push(("x-ms-range", range.as_str()));
        }
        let mut request = self.http.get(self.location.url.clone());
        for (name, value) in &ms_headers {
            request = request.header(*name, *value);
        }
        if let Some(etag) = etag {
            request = request.header("If-Match", etag);
        }
        match &self.auth {
            BlobAuth::UrlOnly => {}
            BlobAuth::SharedKey { account, key } => {
                let standard = StandardHeaders {
                    if_match: etag,
                    ..Default::default()
                };
                let signature = shared_key_signature(
                    key,
                    "GET",
                    &standard,
                    &ms_headers,
                    account,
                    &self.location.url,
                );
                request =
                    request.header("Authorization", format!("SharedKey {account}:{signature}"));
            }
            BlobAuth::Identity(tokens) => {
                let token = tokens
                    .get(identity::STORAGE_SCOPE)
                    .await
                    .map_err(|e| BlobError::Token(format!("{e:#}")))?;
                request = request.bearer_auth(token.secret);
            }
        }
        let response = request.send().await.map_err(|e| BlobError::Unreachable {
            blob: blob(),
            // Without the URL (it may carry a SAS), with the causes (refused, DNS, TLS).
            cause: format!("{:#}", anyhow::Error::new(e.without_url())),
        })?;
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no error code")
            .to_owned();
        let resumed_at = response
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        match status {
            200 if offset == 0 => {}
            // A resumed read must continue exactly where the last one stopped.
            206 if offset > 0 && resumed_at == Some(offset) => {}
            200 | 206 => {
                return Err(BlobError::Unexpected {
                    blob: blob(),
                    status,
                    code: format!("asked for bytes from {offset}, got {resumed_at:?}"),
                });
            }
            404 => return Err(BlobError::NotFound { blob: blob(), code }),
            401 | 403 => return Err(BlobError::Denied { blob: blob(), code }),
            412 => return Err(BlobError::Changed { blob: blob() }),
            _ => {
                return Err(BlobError::Unexpected {
                    blob: blob(),
                    status,
                    code,
                });
            }
        }
        let size = response.content_length().unwrap_or(0) + offset;
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Opened {
            response,
            size,
            etag,
        })
    }

    /// Sends the blob's bytes to the reader, resuming after a dropped connection; ends when the
    /// blob is read, a resume fails, or the reader goes away (the import stopped).
    async fn pump(self, opened: Opened, sender: mpsc::Sender<std::io::Result<Bytes>>) {
        let Opened {
            mut response,
            size,
            etag,
        } = opened;
        let mut offset = 0u64;
        let mut resumes = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    offset += chunk.len() as u64;
                    if sender.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                // Complete (a reset after the last byte included).
                Ok(None) if size == 0 => return,
                Ok(None) | Err(_) if offset >= size => return,
                Ok(None) | Err(_) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    tracing::warn!(blob = %self.location.display, offset, resumes, "the blob download broke off; resuming");
                    match self.get(offset, etag.as_deref()).await {
                        Ok(next) => response = next.response,
                        Err(error) => {
                            let _ = sender.send(Err(std::io::Error::other(error))).await;
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    let error = BlobError::Unreachable {
                        blob: self.location.display.clone(),
                        cause: format!("the download broke off at byte {offset} of {size}"),
                    };
                    let _ = sender.send(Err(std::io::Error::other(error))).await;
                    return;
                }
            }
        }
    }
}

/// The blocking side of the download: `Read` over the chunks the pump sends.
struct ChannelReader {
    receiver: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_their_account_and_never_show_the_sas() {
        let azure = BlobLocation::parse(
            "https://acct.blob.core.windows.net/data/flights.csv.gz?sv=2021-08-06&sig=c2VjcmV0",
        )
        .unwrap();
        assert_eq!(azure.account, "acct");
        assert!(azure.has_sas);
        assert_eq!(
            azure.display,
            "https://acct.blob.core.windows.net/data/flights.csv.gz"
        );
        assert_eq!(azure.file_name(), "flights.csv.gz");
        let azurite =
            BlobLocation::parse("http://127.0.0.1:10000/devstoreaccount1/data/movies.csv").unwrap();
        assert_eq!(azurite.account, "devstoreaccount1");
        assert!(!azurite.has_sas);
        for bad in [
            "ftp://acct.blob.core.windows.net/c/b",
            "https://acct.blob.core.windows.net/only-container",
            "http://127.0.0.1:10000/devstoreaccount1/container",
            "not a url",
        ] {
            assert!(BlobLocation::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_strings_give_the_account_and_its_key() {
        let (account, key) = account_key(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5cw==;\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(
            (account.as_str(), key.as_slice()),
            ("devstoreaccount1", &b"keys"[..])
        );
        assert!(account_key("AccountName=x").is_err());
        let error = account_key("AccountName=x;AccountKey=not base64!").unwrap_err();
        assert!(!error.to_string().contains("not base64!"), "{error}");
    }

    /// Each field in its documented slot: an upload (length and type) and a resumed read
    /// (If-Match, x-ms-range), with the query parameters sorted by name.
    #[test]
    fn shared_key_strings_to_sign_put_each_field_in_its_slot() {
        let date = ("x-ms-date", "Mon, 23 Nov 2026 00:00:00 GMT");
        let version = ("x-ms-version", API_VERSION);
        let upload = string_to_sign(
            "PUT",
            &StandardHeaders {
                content_length: Some(12),
                content_type: Some("text/csv"),
                if_match: None,
            },
            &[version, ("x-ms-blob-type", "BlockBlob"), date],
            "devstoreaccount1",
            &Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/b.csv?timeout=30&comp=x")
                .unwrap(),
        );
        assert_eq!(
            upload,
            "PUT\n\n\n12\n\ntext/csv\n\n\n\n\n\n\n\
             x-ms-blob-type:BlockBlob\nx-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\n\
             x-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/c/b.csv\ncomp:x\ntimeout:30"
        );
        let resumed = string_to_sign(
            "GET",
            &StandardHeaders {
                content_length: Some(0),
                content_type: None,
                if_match: Some("\"0x8D\""),
            },
            &[date, ("x-ms-range", "bytes=100-"), version],
            "acct",
            &Url::parse("https://acct.blob.core.windows.net/data/flights.csv").unwrap(),
        );
        assert_eq!(
            resumed,
            "GET\n\n\n\n\n\n\n\n\"0x8D\"\n\n\n\n\
             x-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\nx-ms-range:bytes=100-\n\
             x-ms-version:2021-08-06\n/acct/data/flights.csv"
        );
        // The signature is HMAC-SHA256 of that string under the key, base64.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(resumed.as_bytes());
        assert_eq!(
            shared_key_signature(
                b"key",
                "GET",
                &StandardHeaders {
                    content_length: Some(0),
                    content_type: None,
                    if_match: Some("\"0x8D\""),
                },
                &[date, ("x-ms-range", "bytes=100-"), version],
                "acct",
                &Url::parse("https://acct.blob.core.windows.net/data/flights.csv").unwrap(),
            ),
            STANDARD.encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn keys_and_tokens_go_only_to_their_own_endpoints() {
        let azurite = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5cw==;\
                       BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
        let cloud = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5cw==;EndpointSuffix=core.windows.net";
        let auth = |url: &str, connection: Option<&str>, forced: Option<&str>| {
            BlobAuth::for_location(&BlobLocation::parse(url).unwrap(), connection, forced)
        };
        assert!(matches!(
            auth(
                "http://127.0.0.1:10000/devstoreaccount1/c/b.csv",
                Some(azurite),
                None
            ),
            Ok(BlobAuth::SharedKey { .. })
        ));
        assert!(matches!(
            auth(
                "https://acct.blob.core.windows.net/c/b.csv",
                Some(cloud),
                None
            ),
            Ok(BlobAuth::SharedKey { .. })
        ));
        // Another host with the same account name gets no signature, nor a token.
        for url in [
            "https://acct.blob.evil.example/c/b.csv",
            "https://evil.example/acct/c/b.csv",
        ] {
            assert!(auth(url, Some(cloud), None).is_err(), "{url}");
            assert!(auth(url, None, None).is_err(), "{url}");
        }
        assert!(matches!(
            auth("https://acct.blob.core.windows.net/c/b.csv", None, None),
            Ok(BlobAuth::Identity(_))
        ));
        // A SAS needs nothing else; plain http only on loopback.
        assert!(matches!(
            auth(
                "https://acct.blob.evil.example/c/b.csv?sv=1&sig=x",
                None,
                None
            ),
            Ok(BlobAuth::UrlOnly)
        ));
        assert!(BlobLocation::parse("http://acct.blob.core.windows.net/c/b.csv").is_err());
    }
}
