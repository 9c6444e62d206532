//! Imports from Azure Blob Storage: one GET of the blob, streamed to the importer's reader thread
//! through a small bounded channel, so memory stays flat whatever the blob's size; and a HEAD for
//! its version (`ETag`, `Last-Modified`), which the `SyncDatasets` timer compares.
//!
//! Access, in this order: a SAS in the URL; the account key of `AZURE_STORAGE_CONNECTION_STRING`
//! (Shared Key signing); else an Entra ID token from the instance's credential
//! ([`crate::identity`]), or nothing at all for a public container (`AZURE_STORAGE_AUTH=anonymous`).
//! A connection that drops mid-blob is resumed where it stopped (`x-ms-range` + `If-Match`), so a
//! blob that changed meanwhile fails the import instead of mixing two versions.

use std::io::Read;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::sync::mpsc;
use url::Url;

use crate::identity;
use crate::import::ImportSource;

mod auth;

pub use auth::{
    BlobAuth, StandardHeaders, StorageAccount, account_key, shared_key_signature, string_to_sign,
};

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

/// A blob's version: its `ETag` (which any change of the blob changes) and `Last-Modified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobVersion {
    pub etag: String,
    pub last_modified: Option<String>,
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

    /// The blob's current version, from a HEAD (nothing of its content is read): what the
    /// `SyncDatasets` timer compares with the version it last imported.
    pub async fn version(&self) -> Result<BlobVersion, BlobError> {
        let request = self.request(reqwest::Method::HEAD, None, None).await?;
        let response = self.send(request).await?;
        if response.status().as_u16() != 200 {
            return Err(self.refusal(&response));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag").ok_or_else(|| BlobError::Unexpected {
            blob: self.location.display.clone(),
            status: 200,
            code: "the answer has no ETag".into(),
        })?;
        Ok(BlobVersion {
            etag,
            last_modified: header("last-modified"),
        })
    }

    /// One GET from `offset` (with `If-Match` when resuming).
    async fn get(&self, offset: u64, etag: Option<&str>) -> Result<Opened, BlobError> {
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let request = self
            .request(reqwest::Method::GET, range.as_deref(), etag)
            .await?;
        let response = self.send(request).await?;
        let status = response.status().as_u16();
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
                    blob: self.location.display.clone(),
                    status,
                    code: format!("asked for bytes from {offset}, got {resumed_at:?}"),
                });
            }
            _ => return Err(self.refusal(&response)),
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

    /// A request for the blob, authorised as [`BlobAuth`] says: nothing to add for a SAS, a
    /// Shared Key signature of this very verb and these headers, or a bearer token.
    async fn request(
        &self,
        method: reqwest::Method,
        range: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<reqwest::Request, BlobError> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut ms_headers = vec![("x-ms-date", date.as_str()), ("x-ms-version", API_VERSION)];
        if let Some(range) = range {
            ms_headers.push(("x-ms-range", range));
        }
        let mut request = self.http.request(method.clone(), self.location.url.clone());
        for (name, value) in &ms_headers {
            request = request.header(*name, *value);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        match &self.auth {
            BlobAuth::UrlOnly => {}
            BlobAuth::SharedKey { account, key } => {
                let standard = StandardHeaders {
                    if_match,
                    ..Default::default()
                };
                let signature = shared_key_signature(
                    key,
                    method.as_str(),
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
        request.build().map_err(|e| self.unreachable(e))
    }

    async fn send(&self, request: reqwest::Request) -> Result<reqwest::Response, BlobError> {
        self.http
            .execute(request)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// A request that got no answer, said without its URL (it may carry a SAS) but with its
    /// causes (refused, DNS, TLS).
    fn unreachable(&self, error: reqwest::Error) -> BlobError {
        BlobError::Unreachable {
            blob: self.location.display.clone(),
            cause: format!("{:#}", anyhow::Error::new(error.without_url())),
        }
    }

    /// What an answer other than the one asked for means (a HEAD's as well as a GET's: Blob
    /// Storage puts its reason in `x-ms-error-code`, which a HEAD's answer keeps).
    fn refusal(&self, response: &reqwest::Response) -> BlobError {
        let blob = self.location.display.clone();
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no error code")
            .to_owned();
        match status {
            404 => BlobError::NotFound { blob, code },
            401 | 403 => BlobError::Denied { blob, code },
            412 => BlobError::Changed { blob },
            _ => BlobError::Unexpected { blob, status, code },
        }
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
mod tests;
