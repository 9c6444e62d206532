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
        if !matches!(url.scheme(), "https" | "http") {
            bail!("the blob URL must be https:// (or http:// for a local emulator)");
        }
        let host = url.host_str().unwrap_or_default().to_owned();
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
        match auth_setting.map(str::trim).filter(|s| !s.is_empty()) {
            Some("anonymous") | Some("sas") => return Ok(BlobAuth::UrlOnly),
            Some("identity") => return Ok(BlobAuth::Identity(identity::azure())),
            Some("key") | None => {}
            Some(other) => {
                bail!("AZURE_STORAGE_AUTH must be sas, key, identity or anonymous (got {other:?})")
            }
        }
        if location.has_sas {
            return Ok(BlobAuth::UrlOnly);
        }
        if let Some(connection_string) = connection_string.filter(|s| !s.trim().is_empty()) {
            let (account, key) = account_key(connection_string)?;
            if account != location.account {
                bail!(
                    "AZURE_STORAGE_CONNECTION_STRING is for account {account:?}, the blob is in {:?}",
                    location.account
                );
            }
            return Ok(BlobAuth::SharedKey {
                account,
                key: key.into(),
            });
        }
        if auth_setting == Some("key") {
            bail!(
                "AZURE_STORAGE_AUTH=key needs AZURE_STORAGE_CONNECTION_STRING with an AccountKey"
            );
        }
        Ok(BlobAuth::Identity(identity::azure()))
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
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
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
        crate::auth::install_tls_provider();
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
            // Without the URL: it may carry a SAS.
            cause: e.without_url().to_string(),
        })?;
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no error code")
            .to_owned();
        match status {
            200 | 206 => {}
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
                Ok(None) if size == 0 || offset >= size => return,
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

    /// The example of Microsoft's "Authorize with Shared Key" page, reproduced with a known key:
    /// the string to sign has the verb, twelve standard header slots, the sorted `x-ms-*`
    /// headers and the resource, with the query parameters sorted by name.
    #[test]
    fn shared_key_signatures_cover_the_documented_fields() {
        let key = b"key";
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/b.csv").unwrap();
        let headers = [
            ("x-ms-version", API_VERSION),
            ("x-ms-date", "Mon, 23 Nov 2026 00:00:00 GMT"),
        ];
        let signature = shared_key_signature(
            key,
            "GET",
            &StandardHeaders::default(),
            &headers,
            "devstoreaccount1",
            &url,
        );
        let expected_to_sign = "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\n\
                                x-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/c/b.csv";
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(expected_to_sign.as_bytes());
        assert_eq!(signature, STANDARD.encode(mac.finalize().into_bytes()));
        // If-Match takes its own slot; a different header changes the signature.
        let resumed = shared_key_signature(
            key,
            "GET",
            &StandardHeaders {
                if_match: Some("\"0x1\""),
                ..Default::default()
            },
            &headers,
            "devstoreaccount1",
            &url,
        );
        assert_ne!(resumed, signature);
    }
}
