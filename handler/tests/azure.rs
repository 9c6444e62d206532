//! The Azure data plane against local stand-ins: imports from Blob Storage through Azurite (the
//! real emulator, started by the test) with a SAS, with the account key, and over the admin
//! endpoint; and Redis connections authenticated with Entra ID tokens that expire and are
//! replaced, against a real Redis whose ACL plays the part of Azure Cache for Redis. Entra ID
//! itself cannot run here: a test double of the credential issues the tokens (said where used).

mod common;

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use common::TestApp;
use common::azurite;
use handler::http::BlobAccess;
use handler::identity::{AccessToken, TokenSource, Tokens};
use serde_json::json;

fn handler(datasets_dir: &std::path::Path, database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command
        .env("DATASETS_DIR", datasets_dir)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env_remove("AZURE_STORAGE_AUTH");
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn movie_count(database_url: &str) -> u64 {
    let catalog = common::catalog();
    common::row_count(&*common::open(database_url), catalog.get("movies").unwrap()).await
}

/// Movies uploaded as plain CSV and gzipped; the container name is unique per call.
async fn upload_movies(endpoint: &str) -> String {
    let container = format!("data{}", common::unique_name("c").replace('_', ""));
    azurite::create_container(endpoint, &container).await;
    let csv = std::fs::read(common::movies_csv()).unwrap();
    azurite::upload(endpoint, &container, "movies.csv", csv.clone()).await;
    azurite::upload(endpoint, &container, "movies.csv.gz", gzip(&csv)).await;
    container
}

#[tokio::test]
async fn blob_imports_with_a_sas_and_with_the_account_key() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let container = upload_movies(endpoint).await;
    let datasets = common::repo_root().join("datasets");
    let db = common::sqlite_url();

    // A SAS in the URL, given on standard input: nothing else needed.
    let sas = azurite::readable_sas(&container, "movies.csv");
    let url = format!("{endpoint}/{container}/movies.csv?{sas}");
    let mut child = handler(&datasets, &db)
        .args(["import", "--dataset", "movies", "--blob", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{url}").unwrap();
    let output = child.wait_with_output().unwrap();
    let (code, stdout, stderr) = (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("imported 17472 rows into movies"),
        "{stdout}"
    );
    assert_eq!(movie_count(&db).await, 17_472);

    // The account key from a connection string (Shared Key signing), a gzipped blob.
    let url = format!("{endpoint}/{container}/movies.csv.gz");
    let (code, stdout, stderr) = run(handler(&datasets, &db)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite::connection_string(endpoint),
        )
        .args(["import", "--dataset", "movies", "--blob", &url]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("imported 17472 rows into movies"),
        "{stdout}"
    );
    assert_eq!(movie_count(&db).await, 17_472);
}

#[tokio::test]
async fn a_missing_blob_and_a_denied_sas_are_clear_errors_that_change_nothing() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let container = upload_movies(endpoint).await;
    let datasets = common::repo_root().join("datasets");
    let db = common::sqlite_url();
    let good = format!(
        "{endpoint}/{container}/movies.csv?{}",
        azurite::readable_sas(&container, "movies.csv")
    );
    let (code, _, stderr) =
        run(handler(&datasets, &db).args(["import", "--dataset", "movies", "--blob", &good]));
    assert_eq!(code, 0, "{stderr}");

    let wrong_key = [7u8; 64];
    let cases = [
        (
            format!(
                "{endpoint}/{container}/nothing-here.csv?{}",
                azurite::readable_sas(&container, "nothing-here.csv")
            ),
            "blob not found",
            "BlobNotFound",
        ),
        (
            format!(
                "{endpoint}/{container}/movies.csv?{}",
                azurite::blob_sas(
                    &container,
                    "movies.csv",
                    "r",
                    "2030-01-01T00:00:00Z",
                    &wrong_key
                )
            ),
            "was denied",
            "Auth",
        ),
        (
            format!(
                "{endpoint}/{container}/movies.csv?{}",
                azurite::blob_sas(
                    &container,
                    "movies.csv",
                    "r",
                    "2020-01-01T00:00:00Z",
                    &base64::engine::general_purpose::STANDARD
                        .decode(azurite::KEY)
                        .unwrap()
                )
            ),
            // Azurite says AuthorizationFailure, Azure AuthenticationFailed: either names it.
            "was denied",
            "Auth",
        ),
    ];
    for (url, expected, code_name) in cases {
        let (code, stdout, stderr) =
            run(handler(&datasets, &db).args(["import", "--dataset", "movies", "--blob", &url]));
        assert_ne!(code, 0, "{url}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one clear line: {stderr}");
        assert!(lines[0].contains(expected), "{stderr}");
        assert!(lines[0].contains(code_name), "{stderr}");
        let signature = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "sig")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert!(
            !stderr.contains("sig=") && !stderr.contains(&signature),
            "the SAS never shows: {stderr}"
        );
        assert_eq!(movie_count(&db).await, 17_472, "{url}");
    }
}

/// Uploads `rows` rows of 1.1 KB as `notes.csv` and imports them with `handler import --blob`
/// into PostgreSQL (whose server keeps the rows, so the process's memory is the importer's):
/// the process's peak memory in MiB.
async fn import_notes(
    endpoint: &str,
    datasets: &std::path::Path,
    database_url: &str,
    rows: usize,
) -> u64 {
    let mut csv = Vec::with_capacity(rows * 1110 + 16);
    csv.extend_from_slice(b"id,body\n");
    let filler = "x".repeat(1100);
    for id in 1..=rows {
        writeln!(csv, "{id},{filler}").unwrap();
    }
    let container = format!("big{}", common::unique_name("c").replace('_', ""));
    azurite::create_container(endpoint, &container).await;
    azurite::upload(endpoint, &container, "notes.csv", csv).await;
    let url = format!(
        "{endpoint}/{container}/notes.csv?{}",
        azurite::readable_sas(&container, "notes.csv")
    );
    let (code, stdout, stderr) =
        run(handler(datasets, database_url).args(["import", "--dataset", "notes", "--blob", &url]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("imported {rows} rows into notes")),
        "{stdout}"
    );
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak memory: "))
        .and_then(|l| l.strip_suffix(" MiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the import reports its peak memory: {stderr}"))
}

/// 110 MB of CSV (100,000 rows of 1.1 KB) from Blob Storage takes about the same memory as 22 MB:
/// the download is a small bounded channel away from the parser, and batches are bounded in bytes.
#[tokio::test]
async fn a_blob_over_100_mb_imports_with_flat_memory() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let Some(database_url) = common::postgres_url().await else {
        return;
    };
    let dir = std::env::temp_dir().join(common::unique_name("smartcache_notes"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("notes.toml"),
        "name = \"notes\"\nkey = { column = \"id\" }\n\
         [[columns]]\nname = \"id\"\ntype = \"integer\"\n\
         [[columns]]\nname = \"body\"\ntype = \"text\"\n",
    )
    .unwrap();
    let small = import_notes(endpoint, &dir, &database_url, 20_000).await;
    let big = import_notes(endpoint, &dir, &database_url, 100_000).await;
    eprintln!("peak memory: {small} MiB for 22 MB, {big} MiB for 110 MB");
    assert!(big < 100, "peak memory {big} MiB for a 110 MB blob");
    // Five times the rows may cost a few more batches in flight on a loaded machine (the reader
    // outruns the database for a while; each batch is at most 4 MiB), never the blob: 88 MB more.
    assert!(
        big <= small + 32,
        "memory grew with the blob: {small} → {big} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_imports_run_in_the_background_and_report_their_outcome() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let container = upload_movies(endpoint).await;
    let mut app = TestApp::new(common::open(&common::sqlite_url()), common::catalog());
    app.state.blob_access = Arc::new(BlobAccess {
        connection_string: Some(handler::config::Secret::new(azurite::connection_string(
            endpoint,
        ))),
        auth: None,
    });
    let blob = format!("{endpoint}/{container}/movies.csv.gz");
    let body = json!({"dataset": "movies", "blob": blob});

    // Admins only; the body is checked field by field; the blob is opened before the answer.
    assert_eq!(app.post_json("/api/admin/imports", &body).await.status, 401);
    let user = app.as_user().await;
    assert_eq!(
        user.post_json("/api/admin/imports", &body).await.status,
        403
    );
    let admin = app.as_admin().await;
    let bad = admin
        .post_json("/api/admin/imports", &json!({"dataset": "nope"}))
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(
        bad.json()["invalid_params"][0]["name"],
        "blob",
        "{}",
        bad.text()
    );
    let missing = admin
        .post_json(
            "/api/admin/imports",
            &json!({"dataset": "movies", "blob": format!("{endpoint}/{container}/gone.csv")}),
        )
        .await;
    assert_eq!(missing.status, 422, "{}", missing.text());
    assert!(
        missing.text().contains("blob not found"),
        "{}",
        missing.text()
    );

    let started = admin.post_json("/api/admin/imports", &body).await;
    assert_eq!(started.status, 202, "{}", started.text());
    let location = TestApp::header(&started, "location").to_owned();
    assert!(location.starts_with("/api/admin/imports/"));
    assert_eq!(started.json()["state"], "running");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = admin.get(&location).await;
        assert_eq!(status.status, 200);
        let body = status.json();
        if body["state"] != "running" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the import did not finish: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["report"]["imported"], 17_472);
    assert_eq!(status["rows_staged"], 17_472);
    assert_eq!(status["bytes_read"], status["bytes_total"]);
    let page = app.get("/api/movies?genres=drama&limit=3").await;
    assert_eq!(page.json()["items"].as_array().unwrap().len(), 3);
    assert_eq!(admin.get("/api/admin/imports/unknown").await.status, 404);
    assert_eq!(user.get(&location).await.status, 403);
}

/// A test double of the Entra ID credential (Entra ID cannot run here): JWT-shaped tokens with an
/// `oid` claim that live `life`. Each token it issues is added to the Redis user's passwords
/// first, as Azure Cache for Redis accepts exactly the tokens Entra ID issued.
struct IssuingTokens {
    issued: AtomicU32,
    life: Duration,
    /// One connection, authenticated once: the test's own AUTHs never add to the count.
    admin: redis::aio::MultiplexedConnection,
    user: String,
}

impl IssuingTokens {
    fn token(&self, n: u32) -> String {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"oid": self.user}).to_string());
        format!("eyJhbGciOiJub25lIn0.{payload}.token-{n}")
    }
}

#[async_trait]
impl TokenSource for IssuingTokens {
    async fn fetch(&self, _scope: &str) -> anyhow::Result<AccessToken> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let secret = self.token(n);
        let mut admin = self.admin.clone();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.user)
            .arg(format!(">{secret}"))
            .query_async::<()>(&mut admin)
            .await?;
        Ok(AccessToken {
            secret,
            expires_at: SystemTime::now() + self.life,
        })
    }
}

/// AUTH commands the server has run (the test's admin connection authenticated before counting
/// starts and never again).
async fn auth_calls(admin: &redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin.clone())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_authenticate_with_entra_tokens_and_renew_them() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _redis = common::PrivateRedis::start(port);
    // Only named users with a password: the default user is off, as keys are in Azure.
    let open = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut setup = open.get_multiplexed_async_connection().await.unwrap();
    for args in [
        vec![
            "SETUSER",
            "admin",
            "on",
            ">admin-password",
            "~*",
            "&*",
            "+@all",
        ],
        vec!["SETUSER", "oid-1234", "on", "~*", "&*", "+@all"],
        vec!["SETUSER", "default", "off"],
    ] {
        redis::cmd("ACL")
            .arg(&args)
            .query_async::<()>(&mut setup)
            .await
            .unwrap();
    }
    let admin = redis::Client::open(format!("redis://admin:admin-password@127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let source = Arc::new(IssuingTokens {
        issued: AtomicU32::new(0),
        life: Duration::from_secs(2),
        admin: admin.clone(),
        user: "oid-1234".into(),
    });
    let cache = handler::cache::Cache::with_redis(
        &format!("redis://127.0.0.1:{port}"),
        &common::unique_prefix(),
        Duration::from_secs(60),
        handler::cache::DEFAULT_MAX_BYTES,
    )
    .with_entra_tokens(Tokens::new(source.clone()));
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = TestApp::with_cache(storage, catalog, cache);

    let first = app.get("/api/movies?year=1999").await;
    assert_eq!(
        TestApp::header(&first, "x-cache"),
        "MISS",
        "{}",
        first.text()
    );
    let again = app.get("/api/movies?year=1999").await;
    assert_eq!(TestApp::header(&again, "x-cache"), "HIT");
    // The connection's first AUTHs (at connect, and as its subscription starts) are done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = auth_calls(&admin).await;

    // Two-second tokens: over four seconds the live connection authenticates again with new ones.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let issued = source.issued.load(Ordering::SeqCst);
    assert!(
        issued >= 3,
        "tokens were renewed before expiry ({issued} issued)"
    );
    assert!(
        auth_calls(&admin).await >= before + 2,
        "the live connection sent AUTH with each new token (refreshed at 1.5 s of 2)"
    );

    // Old tokens revoked and the connection cut: the reconnect uses the current token.
    let current = source.token(source.issued.load(Ordering::SeqCst));
    let mut control = admin.clone();
    redis::cmd("ACL")
        .arg(&["SETUSER", "oid-1234", "resetpass"][..])
        .arg(format!(">{current}"))
        .query_async::<()>(&mut control)
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "oid-1234"][..])
        .query_async::<()>(&mut control)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.get("/api/movies?year=1999").await;
        assert_eq!(response.status, 200);
        if TestApp::header(&response, "x-cache") == "HIT" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis was not reached again with a current token"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
