//! Telemetry as Application Insights receives it. A local HTTP sink stands in for the ingestion
//! endpoint (Azure's cannot be reached from here): it records the envelopes `handler serve` POSTs,
//! gzipped JSON arrays as the real endpoint receives them.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::served::{Served, movies_db};
use serde_json::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// Envelopes received so far.
type Received = Arc<Mutex<Vec<Value>>>;

/// A stand-in for the ingestion endpoint: answers 200 to `POST /v2/track` and keeps what came.
async fn sink() -> (u16, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new().route(
        "/v2/track",
        axum::routing::post({
            let received = Arc::clone(&received);
            move |body: Bytes| async move {
                let mut json = String::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut json)
                    .expect("the body is gzip");
                let envelopes: Vec<Value> = serde_json::from_str(&json).expect("a JSON array");
                received.lock().unwrap().extend(envelopes);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, received)
}

fn http_client() -> reqwest::Client {
    handler::auth::install_tls_provider();
    reqwest::Client::new()
}

/// Where a server exports to: a port on 127.0.0.1.
enum Export {
    Nowhere,
    ApplicationInsights(u16),
    Otlp(u16),
}

/// `handler serve` over a SQLite database with the movies, exporting as told.
async fn serve(database_url: &str, export: Export) -> Served {
    serve_logging(database_url, export, &[], Stdio::null()).await
}

/// [`serve`] with more settings, its log lines (stdout) going to `log`.
async fn serve_logging(
    database_url: &str,
    export: Export,
    settings: &[(&str, &str)],
    log: Stdio,
) -> Served {
    let mut all: Vec<(&str, String)> = vec![
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
    ];
    match export {
        Export::ApplicationInsights(sink) => all.push((
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            format!(
                "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=http://127.0.0.1:{sink}/"
            ),
        )),
        Export::Otlp(collector) => all.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )),
        Export::Nowhere => {}
    }
    all.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
    common::served::serve(database_url, &all, log).await
}

fn requests(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["baseType"] == "RequestData")
        .cloned()
        .collect()
}

fn tag<'a>(envelope: &'a Value, name: &str) -> &'a str {
    envelope["tags"][name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_their_database_calls_reach_application_insights_as_one_trace() {
    let (sink_port, received) = sink().await;
    let server = serve(&movies_db().await, Export::ApplicationInsights(sink_port)).await;
    let client = http_client();
    let url = format!("http://127.0.0.1:{}/api/movies/595", server.port);
    // The first (a miss: a database call) continues the caller's trace; the second is a hit.
    let first = client
        .get(&url)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");

    let deadline = Instant::now() + Duration::from_secs(15);
    while requests(&received).len() < 2 || !has_metric(&received) {
        assert!(
            Instant::now() < deadline,
            "the sink got: {:#?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = received.lock().unwrap().clone();
    let requests = requests(&received);
    let (miss, hit) = {
        let of = |outcome: &str| {
            requests
                .iter()
                .find(|r| r["data"]["baseData"]["properties"]["cache.outcome"] == outcome)
                .unwrap_or_else(|| panic!("a request with cache.outcome {outcome}: {requests:#?}"))
                .clone()
        };
        (of("MISS"), of("HIT"))
    };
    for request in [&miss, &hit] {
        let data = &request["data"]["baseData"];
        assert_eq!(data["name"], "GET /api/{dataset}/{id}", "{request}");
        assert_eq!(data["responseCode"], "200", "{request}");
        assert_eq!(data["properties"]["dataset"], "movies", "{request}");
    }
    // The miss continues the incoming trace, under the caller's span.
    assert_eq!(tag(&miss, "ai.operation.id"), TRACE_ID);
    assert_eq!(tag(&miss, "ai.operation.parentId"), PARENT_SPAN);
    // The hit started a trace of its own.
    assert_ne!(tag(&hit, "ai.operation.id"), TRACE_ID);
    // The database call is a dependency under the miss, and only under the miss.
    let miss_id = miss["data"]["baseData"]["id"].as_str().unwrap();
    let hit_id = hit["data"]["baseData"]["id"].as_str().unwrap();
    let dependencies: Vec<&Value> = all
        .iter()
        .filter(|e| e["data"]["baseType"] == "RemoteDependencyData")
        .collect();
    let db_get = dependencies
        .iter()
        .find(|d| d["data"]["baseData"]["name"] == "db.get")
        .unwrap_or_else(|| panic!("a db.get dependency: {dependencies:#?}"));
    assert_eq!(tag(db_get, "ai.operation.id"), TRACE_ID);
    assert_eq!(tag(db_get, "ai.operation.parentId"), miss_id);
    assert_eq!(
        db_get["data"]["baseData"]["properties"]["db.system"],
        "sqlite"
    );
    assert!(
        dependencies
            .iter()
            .all(|d| tag(d, "ai.operation.parentId") != hit_id),
        "a hit makes no database call"
    );
}

fn has_metric(received: &Received) -> bool {
    received.lock().unwrap().iter().any(|e| {
        e["data"]["baseType"] == "MetricData"
            && e.to_string().contains("http.server.request.duration")
    })
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` instead, spans and metrics go to an OTLP/HTTP collector
/// (a local stand-in here) as protobuf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_reaches_the_collector() {
    let received: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let record = |path: &'static str| {
        let received = Arc::clone(&received);
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: Bytes| async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                received
                    .lock()
                    .unwrap()
                    .push((path.to_owned(), content_type, body.len()));
                ""
            },
        )
    };
    let app = axum::Router::new()
        .route("/v1/traces", record("/v1/traces"))
        .route("/v1/metrics", record("/v1/metrics"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = serve(&movies_db().await, Export::Otlp(collector)).await;
    let response = http_client()
        .get(format!("http://127.0.0.1:{}/api/movies/595", server.port))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = received.lock().unwrap().clone();
        let has = |path: &str| {
            got.iter()
                .any(|(p, t, n)| p == path && t == "application/x-protobuf" && *n > 0)
        };
        if has("/v1/traces") && has("/v1/metrics") {
            break;
        }
        assert!(Instant::now() < deadline, "the collector got: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p99 of sequential requests, in milliseconds.
async fn p99_ms(port: u16, count: usize) -> f64 {
    let client = http_client();
    let url = format!("http://127.0.0.1:{port}/api/movies?genres=drama&limit=5");
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[count * 99 / 100]
}

/// An ingestion endpoint that accepts connections and never answers: requests are not slowed,
/// because spans only join a bounded queue that another thread drains, and drops when full; the
/// number dropped is in the log when the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_telemetry_endpoint_does_not_slow_requests() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = dead.accept().await {
            held.push(socket); // never read, never answered
        }
    });
    let db = movies_db().await;
    let baseline = serve(&db, Export::Nowhere).await;
    let without = p99_ms(baseline.port, 300).await;
    drop(baseline);
    let log_path = std::env::temp_dir().join(common::unique_name("smartcache_telemetry_log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut exporting = serve_logging(
        &db,
        Export::ApplicationInsights(dead_port),
        &[("OTEL_BSP_MAX_QUEUE_SIZE", "64")],
        Stdio::from(log),
    )
    .await;
    let with_dead_endpoint = p99_ms(exporting.port, 300).await;
    eprintln!(
        "p99: {without:.2} ms without telemetry, {with_dead_endpoint:.2} ms with a dead endpoint"
    );
    // Far below the exporter's 10 s timeout that a blocking export would add.
    assert!(
        with_dead_endpoint < without * 5.0 + 50.0,
        "p99 {with_dead_endpoint:.2} ms with a dead endpoint, {without:.2} ms without"
    );
    // 300 requests' spans against a queue of 64 and an export that never returns: the server
    // stops (after its export times out) and says how many spans it dropped.
    Command::new("kill")
        .args(["-TERM", &exporting.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while exporting.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    let dropped = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line["dropped_span_count"].as_u64())
        .unwrap_or_else(|| panic!("a dropped-span count in the log: {log}"));
    assert!(dropped > 0, "{log}");
}
