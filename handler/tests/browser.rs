//! `/api/docs` in a real browser: headless Chromium (Debian's `chromium`), driven by
//! `tests/browser/docs.mjs` with Playwright (`playwright-core` from npm), against `handler serve`.
//! The page authorises with a bearer token, runs a list query and a POST with "Try it out", and
//! the answers it shows are checked here against the server.

mod common;

use std::path::Path;
use std::process::Command;

use common::served::{movies_db, serve};

const ADMIN_EMAIL: &str = "docs-admin@test.example";

/// Whether node, `playwright-core` (installed in `tests/browser` by `npm ci`) and Chromium are
/// here; if not, a visible skip naming what to install (a failure under `CI=true`).
fn browser_tools(dir: &Path, chromium: &str) -> bool {
    let node = Command::new("node").arg("--version").output().is_ok();
    let playwright = dir.join("node_modules/playwright-core").is_dir();
    let browser = Path::new(chromium).exists();
    if node && playwright && browser {
        return true;
    }
    common::skip::skipped(
        "the docs page's browser test needs node, `npm ci` in handler/tests/browser, and \
         Chromium (apt-get install chromium, or CHROMIUM=path)",
        false,
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_authorises_then_lists_and_creates_from_the_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !browser_tools(&dir, &chromium) {
        return;
    }
    let db = movies_db().await;
    common::open(&db)
        .create_user(handler::storage::NewUser {
            email: ADMIN_EMAIL.into(),
            password_hash: Some(handler::auth::password::hash(common::TEST_PASSWORD).unwrap()),
            firebase_uid: None,
            role: "admin".into(),
        })
        .await
        .unwrap();
    let secret = String::from_utf8(common::TEST_JWT_SECRET.to_vec()).unwrap();
    let served = serve(&db, &[("JWT_SECRET", secret)], std::process::Stdio::null()).await;
    handler::auth::install_tls_provider();
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(served.url("/api/auth/login"))
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": common::TEST_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("a token").to_owned();

    let base = served.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("docs.mjs")
            .args([&base, &token, &chromium])
            .current_dir(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();

    assert!(
        seen["title"]
            .as_str()
            .unwrap_or("")
            .starts_with("Smartcache API"),
        "{seen}"
    );
    assert_eq!(
        seen["elsewhere"],
        serde_json::json!([]),
        "nothing loaded from elsewhere"
    );
    assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
    // The list ran from the page with its parameters, and the page shows the server's answer.
    assert_eq!(seen["list"]["status"], 200, "{seen}");
    let items = seen["list"]["body"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    for item in items {
        let genres = item["genres"].as_array().unwrap();
        assert!(genres.iter().any(|g| g == "Western"), "{item}");
    }
    // The POST needed the admin token the page was given: 201 and the new row.
    assert_eq!(seen["create"]["status"], 201, "{seen}");
    assert_eq!(seen["create"]["sent_token"], true, "{seen}");
    let id = seen["create"]["body"]["id"]
        .as_i64()
        .expect("an assigned id");
    let stored: serde_json::Value = client
        .get(served.url(&format!("/api/movies/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["title"], "Made on the docs page");
}
