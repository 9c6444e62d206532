//! The `SyncDatasets` timer against Azurite (the real Blob Storage emulator, started by the test)
//! on SQLite, PostgreSQL and MySQL/MariaDB: a dataset declaring a blob is imported when the blob
//! changed since its last sync (once), and skipped while it has not; a dataset whose blob is
//! missing fails on its own; the invocation answers as the Functions host expects, and
//! `handler sync` does the same from the command line, remembering across processes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::TestApp;
use common::azurite;
use handler::datasets::{Catalog, Value};
use handler::http::{BlobAccess, TimerAccess};
use handler::storage::{Change, Ungated};
use serde_json::Value as Json;

/// Declarations of `things` (read with the account key), `shared` (a SAS in its URL) and `gone`
/// (a blob that does not exist), in a folder of their own.
fn declarations(endpoint: &str, container: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique_name("smartcache_sync"));
    std::fs::create_dir_all(&dir).unwrap();
    let sas = azurite::readable_sas(container, "shared.csv");
    let blobs = [
        ("things", format!("{endpoint}/{container}/things.csv")),
        ("shared", format!("{endpoint}/{container}/shared.csv?{sas}")),
        ("gone", format!("{endpoint}/{container}/gone.csv")),
    ];
    for (name, blob) in blobs {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nkey = {{ column = \"id\" }}\n\
                 [[columns]]\nname = \"id\"\ntype = \"integer\"\n\
                 [[columns]]\nname = \"label\"\ntype = \"text\"\n\
                 [import]\nmode = \"sync\"\nblob = \"{blob}\"\n"
            ),
        )
        .unwrap();
    }
    dir
}

/// The app over `database_url` and the declarations in `dir`, reading blobs with Azurite's
/// account key, invoked as the Functions host invokes it (from loopback).
fn app(dir: &Path, database_url: &str, endpoint: &str) -> TestApp {
    let catalog = Catalog::load_dir(dir).unwrap();
    let mut app = TestApp::new(common::open(database_url), catalog);
    app.state.blob_access = Arc::new(BlobAccess {
        connection_string: Some(handler::config::Secret::new(azurite::connection_string(
            endpoint,
        ))),
        auth: None,
    });
    app.state.timers = Arc::new(TimerAccess {
        host_on_loopback: true,
        secret: None,
    });
    app.calling_from("127.0.0.1")
}

/// One timer invocation, as the host sends it: the run's `(Logs, ReturnValue)`.
async fn invoke(app: &TestApp) -> (Vec<String>, Json) {
    let invocation = serde_json::json!({
        "Data": {"timer": {"IsPastDue": "false"}},
        "Metadata": {"sys": {"MethodName": "SyncDatasets", "UtcNow": "2026-11-22T10:15:00Z"}},
    });
    let response = app.post_json("/SyncDatasets", &invocation).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["Outputs"], serde_json::json!({}));
    assert!(body["ReturnValue"].is_object(), "an object, never a string");
    let logs = body["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    (logs, body["ReturnValue"].clone())
}

/// The run's outcome for one dataset.
fn outcome<'a>(report: &'a Json, dataset: &str) -> &'a Json {
    report["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == dataset)
        .unwrap_or_else(|| panic!("no outcome for {dataset}: {report}"))
}

/// The rows of a dataset, `(id, label)` in key order.
async fn rows(app: &TestApp, name: &str) -> Vec<(i64, String)> {
    let dataset = app.dataset(name);
    let query = handler::query::Query::every_row(&dataset);
    let mut rows: Vec<(i64, String)> = app
        .state
        .storage
        .list(&dataset, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|row| match (&row[0], &row[1]) {
            (Value::Integer(id), Value::Text(label)) => (*id, label.clone()),
            other => panic!("unexpected row {other:?}"),
        })
        .collect();
    rows.sort();
    rows
}

fn labelled(rows: &[(i64, &str)]) -> Vec<(i64, String)> {
    rows.iter().map(|(id, l)| (*id, (*l).to_owned())).collect()
}

/// Runs 1–4 of the issue on one database: synced, unchanged (no import: a row deleted directly
/// stays deleted), synced once after the blob changed (the rows are the new file's), unchanged.
async fn a_changed_blob_is_synced_once(endpoint: &str, database_url: &str) {
    let container = format!("sync{}", common::unique_name("c").replace('_', ""));
    azurite::create_container(endpoint, &container).await;
    let first = b"id,label\n1,one\n2,two\n3,three\n".to_vec();
    azurite::upload(endpoint, &container, "things.csv", first).await;
    azurite::upload(
        endpoint,
        &container,
        "shared.csv",
        b"id,label\n7,seven\n".to_vec(),
    )
    .await;
    let dir = declarations(endpoint, &container);
    let app = app(&dir, database_url, endpoint);
    let storage = Arc::clone(&app.state.storage);

    // Run 1: never synced, so imported; a missing blob fails on its own.
    let (logs, report) = invoke(&app).await;
    assert_eq!(logs.len(), 3, "one line per dataset: {logs:?}");
    assert_eq!(
        (&report["synced"], &report["unchanged"], &report["failed"]),
        (&Json::from(2), &Json::from(0), &Json::from(1)),
        "{report}"
    );
    let things = outcome(&report, "things");
    assert_eq!(things["action"], "synced", "{report}");
    assert_eq!(things["blob"], format!("{endpoint}/{container}/things.csv"));
    assert_eq!(things["mode"], "sync");
    let first_etag = things["etag"].as_str().unwrap().to_owned();
    assert!(!first_etag.is_empty());
    assert!(
        things["summary"]
            .as_str()
            .unwrap()
            .contains("imported 3 rows"),
        "{things}"
    );
    let gone = outcome(&report, "gone");
    assert_eq!(gone["action"], "failed");
    assert!(
        gone["error"].as_str().unwrap().contains("blob not found"),
        "{gone}"
    );
    assert_eq!(outcome(&report, "shared")["action"], "synced", "{report}");
    assert!(
        !report.to_string().contains("sig=") && !logs.concat().contains("sig="),
        "the SAS never shows: {report} {logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("sync things: synced")),
        "{logs:?}"
    );
    assert_eq!(
        rows(&app, "things").await,
        labelled(&[(1, "one"), (2, "two"), (3, "three")])
    );
    let recorded = storage.source_version("things").await.unwrap().unwrap();
    assert_eq!(recorded.etag, first_etag);
    assert!(storage.source_version("gone").await.unwrap().is_none());

    // Run 2: unchanged, so nothing is imported: a row deleted behind the timer's back stays
    // deleted, and the recorded sync is the first one.
    let dataset = app.dataset("things");
    storage
        .write(&dataset, Change::Delete(Value::Integer(3)), &Ungated)
        .await
        .unwrap();
    let (logs, report) = invoke(&app).await;
    let things = outcome(&report, "things");
    assert_eq!(things["action"], "unchanged", "{report}");
    assert_eq!(things["etag"], first_etag.as_str());
    assert!(things.get("summary").is_none(), "{things}");
    assert!(
        logs.iter().any(|l| l.starts_with("sync things: unchanged")),
        "{logs:?}"
    );
    assert_eq!(outcome(&report, "shared")["action"], "unchanged");
    assert_eq!(
        rows(&app, "things").await,
        labelled(&[(1, "one"), (2, "two")])
    );
    assert_eq!(
        storage.source_version("things").await.unwrap().unwrap(),
        recorded
    );

    // Run 3: the blob changed: synced, once, to the new file's rows.
    let second = b"id,label\n1,uno\n2,two\n4,four\n5,five\n".to_vec();
    azurite::upload(endpoint, &container, "things.csv", second).await;
    let (_, report) = invoke(&app).await;
    let things = outcome(&report, "things");
    assert_eq!(things["action"], "synced", "{report}");
    let second_etag = things["etag"].as_str().unwrap().to_owned();
    assert_ne!(second_etag, first_etag);
    assert_eq!(report["synced"], 1, "only the changed blob: {report}");
    assert_eq!(
        rows(&app, "things").await,
        labelled(&[(1, "uno"), (2, "two"), (4, "four"), (5, "five")])
    );
    let resynced = storage.source_version("things").await.unwrap().unwrap();
    assert_eq!(resynced.etag, second_etag);
    assert!(resynced.synced_at > recorded.synced_at);

    // Run 4: unchanged again.
    let (_, report) = invoke(&app).await;
    assert_eq!(
        outcome(&report, "things")["action"],
        "unchanged",
        "{report}"
    );
    assert_eq!(report["synced"], 0, "{report}");
    assert_eq!(
        storage.source_version("things").await.unwrap().unwrap(),
        resynced
    );

    // `handler sync`, another process on the same database: the versions were kept there.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("sync")
        .env("DATASETS_DIR", &dir)
        .env("DATABASE_URL", database_url)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite::connection_string(endpoint),
        )
        .env_remove("AZURE_STORAGE_AUTH")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed dataset fails the command: {stdout} {stderr}"
    );
    assert!(
        stdout.contains("sync things: unchanged") && stdout.contains("sync gone: failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sync: 0 synced, 2 unchanged, 1 failed"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn sync_datasets_on_sqlite_imports_a_changed_blob_once_and_skips_an_unchanged_one() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    a_changed_blob_is_synced_once(endpoint, &common::sqlite_url()).await;
}

#[tokio::test]
async fn sync_datasets_on_postgres_imports_a_changed_blob_once_and_skips_an_unchanged_one() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let Some(database_url) = common::postgres_url().await else {
        return;
    };
    a_changed_blob_is_synced_once(endpoint, &database_url).await;
}

#[tokio::test]
async fn sync_datasets_on_mysql_imports_a_changed_blob_once_and_skips_an_unchanged_one() {
    let Some(endpoint) = azurite::endpoint() else {
        return;
    };
    let Some(database_url) = common::mysql_url().await else {
        return;
    };
    a_changed_blob_is_synced_once(endpoint, &database_url).await;
}
