//! Helpers shared by the integration tests: real databases, the real router, the real data.
#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use handler::cache::Cache;
use handler::datasets::{Catalog, Dataset};
use handler::http::{AppState, router};
use handler::storage::{self, Storage};
use http_body_util::BodyExt as _;
use sqlx::AssertSqlSafe;
use tower::ServiceExt as _;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn catalog() -> Catalog {
    Catalog::load_dir(&repo_root().join("datasets")).expect("the shipped declarations load")
}

pub fn movies_csv() -> PathBuf {
    repo_root().join("datasets/movies.csv")
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh SQLite database file in the temp directory.
pub fn sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("smartcache_test")));
    format!("sqlite://{}", path.display())
}

/// A fresh PostgreSQL database on the local server (`SMARTCACHE_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`). `None`, with a visible line, when no server is
/// reachable; under `CI=true` a missing server fails the test instead.
pub async fn postgres_url() -> Option<String> {
    let admin = std::env::var("SMARTCACHE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = match sqlx::PgPool::connect(&admin).await {
        Ok(pool) => pool,
        Err(error) => {
            let message = format!(
                "PostgreSQL is not reachable at {admin} ({error}): install and start postgresql"
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            return None;
        }
    };
    let name = unique_name("smartcache_test");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap();
    Some(format!("{base}/{name}"))
}

pub fn open(url: &str) -> Arc<dyn Storage> {
    storage::open(url).expect("the URL is valid")
}

pub async fn import_movies(
    storage: &dyn Storage,
    catalog: &Catalog,
) -> handler::import::ImportReport {
    let movies = catalog.get("movies").unwrap();
    handler::import::import_file(storage, movies, &movies_csv(), false)
        .await
        .expect("movies import")
}

/// The router over a storage, called in-process as the Functions host would over HTTP.
pub struct TestApp {
    pub state: AppState,
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl TestApp {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        let cache = Cache::in_process(
            "test",
            std::time::Duration::from_secs(60),
            handler::cache::DEFAULT_MAX_BYTES,
        );
        TestApp::with_cache(storage, catalog, cache)
    }

    /// The app over `storage` with a given cache (e.g. one shared through Redis); the admin
    /// endpoints are enabled.
    pub fn with_cache(storage: Arc<dyn Storage>, catalog: Catalog, cache: Cache) -> Self {
        let cache = Arc::new(cache);
        TestApp {
            state: AppState {
                catalog: Arc::new(catalog),
                storage,
                cache,
                admin_enabled: true,
            },
        }
    }

    /// A GET with extra request headers.
    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> TestResponse {
        let mut request = Request::builder().method("GET").uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    pub fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub async fn post_json(&self, uri: &str, body: &serde_json::Value) -> TestResponse {
        let request = Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-type", "application/json");
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn request(&self, method: &str, uri: &str) -> TestResponse {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Through the router, in process, as the Functions host would send it over HTTP.
    async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> TestResponse {
        self.request("GET", uri).await
    }

    pub fn dataset(&self, name: &str) -> Arc<Dataset> {
        self.state.catalog.get(name).unwrap().clone()
    }
}

/// The Redis at `REDIS_URL` or 127.0.0.1:6379, if it answers; `None` with a visible line
/// otherwise, and a failure under `CI=true`.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let ping = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Some(_)) => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis is not reachable at {url}")
        }
        _ => {
            eprintln!("SKIPPED: no Redis at {url} (install redis-server)");
            None
        }
    }
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    unique_name("test")
}

/// Counts computed straight from the CSV with the csv crate, independently of the importer.
pub struct MoviesCsv {
    pub rows: usize,
    pub ids: Vec<i64>,
    records: Vec<csv::StringRecord>,
    headers: csv::StringRecord,
}

impl MoviesCsv {
    pub fn load() -> Self {
        let mut reader = csv::Reader::from_path(movies_csv()).unwrap();
        let headers = reader.headers().unwrap().clone();
        let records: Vec<_> = reader.records().map(Result::unwrap).collect();
        let id = headers.iter().position(|h| h == "ID").unwrap();
        let ids = records.iter().map(|r| r[id].parse().unwrap()).collect();
        MoviesCsv {
            rows: records.len(),
            ids,
            records,
            headers,
        }
    }

    fn field<'a>(&self, record: &'a csv::StringRecord, header: &str) -> &'a str {
        &record[self.headers.iter().position(|h| h == header).unwrap()]
    }

    /// Films whose comma-separated `header` field has `element` (case-insensitive).
    pub fn count_with_element(&self, header: &str, element: &str) -> usize {
        self.records
            .iter()
            .filter(|r| {
                self.field(r, header)
                    .split(',')
                    .any(|e| e.trim().eq_ignore_ascii_case(element))
            })
            .count()
    }

    pub fn count_where(&self, predicate: impl Fn(&dyn Fn(&str) -> String) -> bool) -> usize {
        self.records
            .iter()
            .filter(|r| predicate(&|h: &str| self.field(r, h).to_owned()))
            .count()
    }
}

/// A private three-node Redis Cluster on loopback, started from the installed `redis-server`
/// and stopped on drop.
pub struct RedisCluster {
    processes: Vec<std::process::Child>,
    dir: PathBuf,
    pub url: String,
}

impl RedisCluster {
    /// `None`, with a visible line, when `redis-server`/`redis-cli` are not installed (a failure
    /// under `CI=true`).
    pub async fn start() -> Option<RedisCluster> {
        let installed = ["redis-server", "redis-cli"].iter().all(|tool| {
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok()
        });
        if !installed {
            let message =
                "redis-server and redis-cli are needed for the cluster tests: install redis-server";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            return None;
        }
        let dir = std::env::temp_dir().join(unique_name("smartcache_cluster"));
        let mut processes = Vec::new();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let node_dir = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .args([
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            processes.push(child);
            nodes.push(format!("127.0.0.1:{port}"));
        }
        let cluster = RedisCluster {
            processes,
            dir,
            url: nodes.join(","),
        };
        for node in &nodes {
            let port = node.rsplit(':').next().unwrap();
            wait_for(|| redis_cli(port, &["ping"]).contains("PONG"));
        }
        let mut create = std::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]).args(&nodes).args([
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]);
        let output = create.output().unwrap();
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for node in &nodes {
            let port = node.rsplit(':').next().unwrap();
            wait_for(|| redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok"));
        }
        Some(cluster)
    }
}

fn redis_cli(port: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for(ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the Redis cluster did not get ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private standalone `redis-server` on a given port, for tests that kill and restart it.
pub struct PrivateRedis {
    process: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        PrivateRedis::start_with(port, &["--save", "", "--appendonly", "no"])
    }

    /// Keeps its data in `dir` (append-only file, synced on every write), so a restart brings it
    /// back as it was.
    pub fn start_persistent(port: u16, dir: &std::path::Path) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_str().unwrap();
        PrivateRedis::start_with(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ],
        )
    }

    fn start_with(port: u16, options: &[&str]) -> PrivateRedis {
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(options)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let port_text = port.to_string();
        wait_for(|| redis_cli(&port_text, &["ping"]).contains("PONG"));
        PrivateRedis { process, port }
    }

    pub fn kill(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
