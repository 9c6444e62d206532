//! The Azure Functions contract: every `functions/*/function.json` is served by the router exactly
//! as the host forwards it, and every endpoint the router serves is declared as a function.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::TestApp;
use handler::http::{ENDPOINTS, TimerAccess};
use serde_json::Value;

struct Declared {
    function: String,
    methods: Vec<String>,
    route: String,
    auth_level: String,
}

/// Functions with another trigger (a timer): the host POSTs their invocation to `/<name>`.
fn invoked_functions() -> Vec<String> {
    let dir = common::repo_root().join("functions");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("function.json")).unwrap())
                .unwrap();
        if doc["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "timerTrigger")
        {
            out.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

fn declared_functions() -> Vec<Declared> {
    let dir = common::repo_root().join("functions");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let function = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path.join("function.json"))
            .unwrap_or_else(|e| panic!("{function}: no function.json ({e})"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{function}: {e}"));
        let bindings = doc["bindings"].as_array().unwrap();
        if let Some(timer) = bindings.iter().find(|b| b["type"] == "timerTrigger") {
            // A timer is invoked, not forwarded: one binding, its schedule from an app setting.
            assert_eq!(
                bindings.len(),
                1,
                "{function}: a timer function has only its trigger"
            );
            // Each timer's schedule is an app setting of its own.
            let schedule = match function.as_str() {
                "WarmCache" => "%WARMUP_SCHEDULE%",
                "SyncDatasets" => "%SYNC_SCHEDULE%",
                other => panic!("{other}: which setting holds its schedule?"),
            };
            assert_eq!(timer["schedule"], schedule, "{function}");
            assert_eq!(
                timer["runOnStartup"], false,
                "{function}: runOnStartup fires on every scale-out"
            );
            continue;
        }
        // The host forwards the original HTTP request only for exactly one httpTrigger in and one
        // http out; anything else would arrive as a JSON invocation instead.
        assert_eq!(bindings.len(), 2, "{function}: bindings");
        let trigger = bindings
            .iter()
            .find(|b| b["type"] == "httpTrigger")
            .unwrap_or_else(|| panic!("{function}: no httpTrigger"));
        assert_eq!(trigger["direction"], "in");
        let output = bindings
            .iter()
            .find(|b| b["type"] == "http")
            .unwrap_or_else(|| panic!("{function}: no http output"));
        assert_eq!(output["direction"], "out");
        assert!(trigger["authLevel"].is_string(), "{function}: authLevel");
        let methods = trigger["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_uppercase())
            .collect();
        let route = trigger["route"]
            .as_str()
            .unwrap_or_else(|| panic!("{function}: no route"))
            .to_owned();
        out.push(Declared {
            function,
            methods,
            route,
            auth_level: trigger["authLevel"].as_str().unwrap_or_default().to_owned(),
        });
    }
    out
}

fn fill_route(route: &str) -> String {
    route
        .replace("{dataset}", "movies")
        .replace("{id}", "595")
        .replace("{column}", "genres")
        .replace("{asset}", "docs.js")
}

#[test]
fn host_json_forwards_http_requests_under_api() {
    let host: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_root().join("host.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(host["version"], "2.0");
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "handler"
    );
    assert_eq!(
        host["customHandler"]["description"]["arguments"],
        serde_json::json!(["serve"])
    );
    assert_eq!(host["extensions"]["http"]["routePrefix"], "api");
    let settings: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_root().join("local.settings.example.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(settings["Values"]["FUNCTIONS_WORKER_RUNTIME"], "Custom");
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "CACHE_PREFIX",
        "CACHE_TTL_SECONDS",
        "JWT_SECRET",
        "JWT_TTL_SECONDS",
        "AUTH_PROVIDER",
        "FIREBASE_API_KEY",
        "FIREBASE_PROJECT_ID",
        "FIREBASE_AUTH_EMULATOR_HOST",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "DATASETS_DIR",
        "WARMUP_SCHEDULE",
        "SYNC_SCHEDULE",
        "REDIS_AUTH",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_AUTH",
        "AZURE_CLIENT_ID",
        "TRUSTED_PROXIES",
        "TIMER_SECRET",
        "CACHE_MAX_BYTES",
        "FIREBASE_ALLOW_UNVERIFIED_EMAIL",
        "MAX_CONNECTIONS",
        "HEADER_TIMEOUT_SECONDS",
        "IDLE_TIMEOUT_SECONDS",
        "WRITE_TIMEOUT_SECONDS",
        "BODY_TIMEOUT_SECONDS",
        "MAX_BODY_BYTES",
        "MAX_URI_BYTES",
        "MAX_QUERY_PARAMETERS",
        "MAX_FILTER_REPEATS",
        "MAX_VALUE_CHARS",
        "MAX_CURSOR_BYTES",
        "EXPORT_CONCURRENCY",
        "EXPORT_MAX_BYTES",
        "EXPORT_MEMORY_BYTES",
        "MAX_CONNECTIONS_PER_ADDRESS",
        "MAX_DATABASE_READS",
    ] {
        assert!(
            settings["Values"][name].is_string(),
            "local.settings.example.json lacks {name}"
        );
    }
}

#[test]
fn every_served_endpoint_is_declared_and_every_declaration_is_served() {
    let declared: BTreeSet<(String, String, String, String)> = declared_functions()
        .into_iter()
        .flat_map(|d| {
            d.methods
                .into_iter()
                .map(move |m| (d.function.clone(), m, d.route.clone(), d.auth_level.clone()))
        })
        .collect();
    // Admin-only endpoints also declare `authLevel: function`, so the host demands a key too.
    let served: BTreeSet<(String, String, String, String)> = ENDPOINTS
        .iter()
        .map(|e| {
            (
                e.function.to_owned(),
                e.method.to_owned(),
                e.route.to_owned(),
                e.auth_level.to_owned(),
            )
        })
        .collect();
    assert_eq!(
        declared, served,
        "functions/ and the router's endpoint table differ"
    );
    let mut invocations: Vec<String> = handler::http::INVOCATIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    invocations.sort();
    assert_eq!(
        invoked_functions(),
        invocations,
        "timer functions and the router's invocations differ"
    );
}

/// Sends each declared function's request to the router, as the host would, and expects it answered
/// by that endpoint (not by the not-found fallback).
#[tokio::test]
async fn the_router_answers_every_declared_function() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = TestApp::new(storage, catalog).as_admin().await;
    let mut calls: Vec<(String, String, String)> = declared_functions()
        .into_iter()
        .flat_map(|f| {
            f.methods
                .into_iter()
                .map(move |m| (f.function.clone(), m, f.route.clone()))
        })
        .collect();
    // Deleting row 595 last, so that every other call still finds it.
    calls.sort_by_key(|(_, method, _)| method == "DELETE");
    for (function, method, route) in calls {
        let uri = format!("/api/{}", fill_route(&route));
        let response = app.request(&method, &uri).await;
        // Each answer is the endpoint's own (not the not-found fallback): bodiless writes are
        // 415, DELETE /api/admin/cache without ?dataset= a 400 naming it, an unknown import
        // the endpoint's own 404 (its detail names the import).
        let expected = match (method.as_str(), route.as_str()) {
            ("DELETE", "admin/cache") => 400,
            ("GET", "admin/imports/{id}") => {
                assert!(String::from_utf8_lossy(&response.body).contains("no import"));
                404
            }
            ("DELETE", _) => 204,
            ("POST" | "PUT" | "PATCH", _) => 415,
            _ => 200,
        };
        assert_eq!(
            response.status,
            expected,
            "{function} {method} {uri}: {}",
            String::from_utf8_lossy(&response.body)
        );
    }
}

/// The timer invocation as the host sends it: JSON in, `{Outputs, Logs, ReturnValue}` out,
/// the logs counting what was done without naming anyone's queries.
#[tokio::test]
async fn the_warm_cache_timer_answers_as_the_host_expects() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let mut app = TestApp::new(storage, catalog);
    // As under the Functions host: the host is the loopback peer.
    app.state.timers = Arc::new(TimerAccess {
        host_on_loopback: true,
        secret: None,
    });
    let host = app.calling_from("127.0.0.1");
    for uri in [
        "/api/movies?genres=drama",
        "/api/movies?genres=drama",
        "/api/movies/595",
    ] {
        assert_eq!(app.get(uri).await.status, 200);
    }
    let response = host.post_json("/WarmCache", &invocation()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["Outputs"], serde_json::json!({}));
    let logs: Vec<&str> = body["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("warm-up: 0 refreshed, 2 fresh, 0 failed")),
        "{logs:?}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("/api/") || l.contains("drama")),
        "other callers' queries never leave the server: {logs:?}"
    );
    assert!(
        body["ReturnValue"].is_object(),
        "an object, never a string the host might base64-decode"
    );
    assert_eq!(body["ReturnValue"]["fresh"], 2);
}

fn invocation() -> serde_json::Value {
    serde_json::json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "2026-11-22T10:00:00Z", "Next": "2026-11-22T10:05:00Z", "LastUpdated": "2026-11-22T10:00:00Z"}, "IsPastDue": "false"}},
        "Metadata": {"sys": {"MethodName": "WarmCache", "UtcNow": "2026-11-22T10:05:00Z", "RandGuid": "0f6a7b4e-0000-0000-0000-000000000000"}},
    })
}

/// The timer routes answer the Functions host (loopback, when it started this process) or a
/// caller with `TIMER_SECRET`; anyone else gets a 403 and causes no work.
#[tokio::test]
async fn the_timer_route_refuses_everyone_but_the_host() {
    let secret = "a timer secret, a timer secret, 32+";
    let app = TestApp::new(common::open(&common::sqlite_url()), common::catalog());
    // (under the host, TIMER_SECRET, peer, secret sent, status)
    type Case<'a> = (bool, Option<&'a str>, &'a str, Option<&'a str>, u16);
    let cases: [Case; 7] = [
        (false, None, "127.0.0.1", None, 403),
        (false, None, "203.0.113.9", None, 403),
        (true, None, "127.0.0.1", None, 200),
        (true, None, "203.0.113.9", None, 403),
        (false, Some(secret), "203.0.113.9", Some(secret), 200),
        (
            false,
            Some(secret),
            "203.0.113.9",
            Some("a wrong secret, a wrong secret, 32"),
            403,
        ),
        (true, Some(secret), "203.0.113.9", None, 403),
    ];
    for route in ["/WarmCache", "/SyncDatasets"] {
        for (under_host, configured, peer, sent, expected) in cases {
            let mut app = app.calling_from(peer);
            app.state.timers = Arc::new(TimerAccess {
                host_on_loopback: under_host,
                secret: configured.map(handler::config::Secret::new),
            });
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(sent.map(|s| (handler::http::TIMER_SECRET_HEADER, s)));
            let response = app
                .send_raw_with(
                    "POST",
                    route,
                    &headers,
                    invocation().to_string().into_bytes(),
                )
                .await;
            assert_eq!(
                response.status, expected,
                "{route}: host {under_host}, secret {configured:?}, peer {peer}, sent {sent:?}"
            );
            if expected == 403 {
                assert_eq!(response.content_type(), "application/problem+json");
            } else {
                assert!(response.json()["ReturnValue"].is_object(), "{route}");
            }
        }
    }
}
