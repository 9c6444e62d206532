//! Azurite, the Blob Storage emulator (npm `azurite`), started once per test process on a free
//! loopback port with in-memory storage; a watchdog stops it when the test process exits. Blobs
//! are uploaded with Shared Key requests and read with service SAS tokens made here, signed with
//! the emulator's well-known development key.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The blob endpoint of a running Azurite (`http://127.0.0.1:<port>/devstoreaccount1`), or `None`
/// with a line naming what to install (a failure under `CI=true`).
pub fn endpoint() -> Option<&'static str> {
    static ENDPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(start).as_deref()
}

pub fn connection_string(endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"
    )
}

fn start() -> Option<String> {
    if !super::background::installed("azurite-blob", "npm install -g azurite") {
        return None;
    }
    let dir = super::background::scratch("azurite");
    let port = super::served::free_port();
    let mut command = std::process::Command::new("azurite-blob");
    command.args([
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        &port.to_string(),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]);
    super::background::start(command, &dir, port, "Azurite", Duration::from_secs(60));
    let host = format!("127.0.0.1:{port}");
    Some(format!("http://{host}/{ACCOUNT}"))
}

fn key() -> Vec<u8> {
    STANDARD.decode(KEY).unwrap()
}

/// A Shared Key request to Azurite (container creation, uploads).
async fn signed(
    method: reqwest::Method,
    url: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let parsed = url::Url::parse(url).unwrap();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut ms = vec![
        ("x-ms-date", date.as_str()),
        ("x-ms-version", handler::blob::API_VERSION),
    ];
    ms.extend_from_slice(extra);
    let content_type = "application/octet-stream";
    let standard = handler::blob::StandardHeaders {
        content_length: Some(body.len() as u64),
        content_type: (!body.is_empty()).then_some(content_type),
        if_match: None,
    };
    let signature = handler::blob::shared_key_signature(
        &key(),
        method.as_str(),
        &standard,
        &ms,
        ACCOUNT,
        &parsed,
    );
    handler::auth::install_tls_provider();
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("Authorization", format!("SharedKey {ACCOUNT}:{signature}"));
    for (name, value) in &ms {
        request = request.header(*name, *value);
    }
    if !body.is_empty() {
        request = request.header("Content-Type", content_type);
    }
    request
        .header("Content-Length", body.len())
        .body(body)
        .send()
        .await
        .unwrap()
}

pub async fn create_container(endpoint: &str, container: &str) {
    let response = signed(
        reqwest::Method::PUT,
        &format!("{endpoint}/{container}?restype=container"),
        Vec::new(),
        &[],
    )
    .await;
    let status = response.status().as_u16();
    assert!(
        status == 201 || status == 409,
        "create container: {status} {}",
        response.text().await.unwrap()
    );
}

pub async fn upload(endpoint: &str, container: &str, blob: &str, body: Vec<u8>) {
    let response = signed(
        reqwest::Method::PUT,
        &format!("{endpoint}/{container}/{blob}"),
        body,
        &[("x-ms-blob-type", "BlockBlob")],
    )
    .await;
    assert_eq!(
        response.status().as_u16(),
        201,
        "upload: {}",
        response.text().await.unwrap()
    );
}

/// A service SAS for one blob (version 2021-08-06 fields), signed with `key`.
pub fn blob_sas(
    container: &str,
    blob: &str,
    permissions: &str,
    expiry: &str,
    key: &[u8],
) -> String {
    let version = "2021-08-06";
    let resource = format!("/blob/{ACCOUNT}/{container}/{blob}");
    let fields = [
        permissions,
        "",
        expiry,
        &resource,
        "",
        "",
        "",
        version,
        "b",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ];
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(fields.join("\n").as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("sr", "b")
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("sig", &signature)
        .finish();
    query
}

/// A SAS signed with the real key, read permission, valid for an hour.
pub fn readable_sas(container: &str, blob: &str) -> String {
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    blob_sas(container, blob, "r", &expiry, &key())
}
