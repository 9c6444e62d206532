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

#[allow(dead_code)] // used by the Azure tests only
pub mod azurite;
#[allow(dead_code)] // used by the emulator helpers only
mod background;
#[allow(dead_code)] // used by the account tests only
pub mod firebase;
#[allow(dead_code)] // used by the partition and chaos tests only
pub mod proxy;
mod redis_servers;
#[allow(dead_code)] // used by the tests that run the binary
pub mod served;
pub mod skip;
#[allow(unused_imports)] // not every test binary starts its own Redis
pub use redis_servers::{PrivateRedis, RedisCluster};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every row of `dataset` in `storage` (0 before its table exists).
pub async fn row_count(storage: &dyn Storage, dataset: &Dataset) -> u64 {
    let every_row = handler::query::Query::every_row(dataset);
    storage.count(dataset, &every_row).await.unwrap()
}

pub fn catalog() -> Catalog {
    Catalog::load_dir(&repo_root().join("datasets")).expect("the shipped declarations load")
}

pub fn movies_csv() -> PathBuf {
    repo_root().join("datasets/movies.csv")
}

pub fn unique_name(prefix: &str) -> String {
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
            skip::skipped(&message, false);
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

/// A fresh database on the local MySQL or MariaDB server (`SMARTCACHE_TEST_MYSQL_URL`, default
/// `mysql://root@127.0.0.1:3306/test`). `None`, with a visible line, when no server is reachable;
/// under `CI=true` a missing server fails the test instead.
pub async fn mysql_url() -> Option<String> {
    let admin = std::env::var("SMARTCACHE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let mut connection = match <sqlx::MySqlConnection as sqlx::Connection>::connect(&admin).await {
        Ok(connection) => connection,
        Err(error) => {
            let message = format!(
                "MySQL/MariaDB is not reachable at {admin} ({error}): install and start mariadb-server"
            );
            skip::skipped(&message, false);
            return None;
        }
    };
    let name = unique_name("smartcache_test");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap();
    Some(format!("{base}/{name}"))
}

/// A fresh database on the SQL Server that `MSSQL_URL` names, in URL form
/// (`mssql://sa:…@127.0.0.1:1433/master?encrypt=false&trust_server_certificate=true`). No SQL
/// Server can run on this project's machines, so without `MSSQL_URL` the SQL Server suite is
/// skipped with a visible line, under `CI=true` too.
pub async fn mssql_url() -> Option<String> {
    let Ok(admin) = std::env::var("MSSQL_URL") else {
        skip::skipped(
            "the SQL Server suite needs MSSQL_URL (a SQL Server or Azure SQL database)",
            true,
        );
        return None;
    };
    let config = handler::storage::mssql_config::parse(&admin).expect("MSSQL_URL parses");
    let mut connection = handler::storage::mssql::Manager::new(config, None)
        .open()
        .await
        .expect("MSSQL_URL is reachable");
    let name = unique_name("smartcache_test");
    connection
        .simple_query(format!("CREATE DATABASE [{name}]"))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).expect("MSSQL_URL in URL form");
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

/// Every SQL backend that answers: SQLite, and PostgreSQL, MariaDB and SQL Server when found.
pub async fn sql_backends() -> Vec<String> {
    let mut urls = vec![sqlite_url()];
    urls.extend(postgres_url().await);
    urls.extend(mysql_url().await);
    urls.extend(mssql_url().await);
    urls
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
#[derive(Clone)]
pub struct TestApp {
    pub state: AppState,
    /// Sent as `Authorization: Bearer …` with every request that has none.
    pub bearer: Option<String>,
    /// The peer address requests come from, as a listener would see it (none by default).
    pub peer: Option<std::net::SocketAddr>,
}

/// The `JWT_SECRET` of test apps.
pub const TEST_JWT_SECRET: &[u8] = b"test secret, test secret, test secret";
/// The password of accounts the tests make.
pub const TEST_PASSWORD: &str = "correct horse battery";

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
    /// The movies imported into a new SQLite file, served with the in-process cache.
    pub async fn movies_on_sqlite() -> Self {
        let catalog = catalog();
        let storage = open(&sqlite_url());
        import_movies(storage.as_ref(), &catalog).await;
        TestApp::new(storage, catalog)
    }

    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        let cache = Cache::in_process(
            "test",
            std::time::Duration::from_secs(60),
            handler::cache::DEFAULT_MAX_BYTES,
        );
        TestApp::with_cache(storage, catalog, cache)
    }

    /// The app over `storage` with a given cache (e.g. one shared through Redis), with local
    /// accounts. Requests are anonymous until [`TestApp::as_admin`] or [`TestApp::as_user`].
    pub fn with_cache(storage: Arc<dyn Storage>, catalog: Catalog, cache: Cache) -> Self {
        let cache = Arc::new(cache);
        let auth = handler::auth::Auth::local(
            TEST_JWT_SECRET,
            std::time::Duration::from_secs(600),
            Arc::clone(&storage),
            Arc::clone(&cache),
        );
        TestApp {
            state: AppState::new(Arc::new(catalog), storage, cache).with_auth(Some(auth)),
            bearer: None,
            peer: None,
        }
    }

    /// The same app, sending `token` with every request.
    pub fn with_token(&self, token: &str) -> TestApp {
        TestApp {
            bearer: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same app, its requests coming from `address` (as a listener would report the peer).
    pub fn calling_from(&self, address: &str) -> TestApp {
        TestApp {
            peer: Some(std::net::SocketAddr::new(address.parse().unwrap(), 40000)),
            ..self.clone()
        }
    }

    /// Makes an account with [`TEST_PASSWORD`] directly in storage (as `handler users create`
    /// does) and signs it in over HTTP: the token.
    pub async fn account_token(&self, role: &str) -> (String, String) {
        let email = format!("{}@test.example", unique_name(role));
        self.state
            .storage
            .create_user(handler::storage::NewUser {
                email: email.clone(),
                password_hash: Some(handler::auth::password::hash(TEST_PASSWORD).unwrap()),
                firebase_uid: None,
                role: role.to_owned(),
            })
            .await
            .expect("create the account");
        let login = self
            .post_json(
                "/api/auth/login",
                &serde_json::json!({"email": email, "password": TEST_PASSWORD}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text());
        (
            email,
            login.json()["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// This app, signed in as a new admin.
    pub async fn as_admin(&self) -> TestApp {
        let (_, token) = self.account_token("admin").await;
        self.with_token(&token)
    }

    /// This app, signed in as a new plain user.
    pub async fn as_user(&self) -> TestApp {
        let (_, token) = self.account_token("user").await;
        self.with_token(&token)
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

    /// A request with a JSON body.
    pub async fn send_json(
        &self,
        method: &str,
        uri: &str,
        body: &serde_json::Value,
    ) -> TestResponse {
        self.send_raw(
            method,
            uri,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// A request with any body and content type.
    pub async fn send_raw(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> TestResponse {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type);
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    /// A request with a body and the given headers.
    pub async fn send_raw_with(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> TestResponse {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
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
    async fn send(&self, mut request: Request<Body>) -> TestResponse {
        if let Some(token) = &self.bearer
            && !request.headers().contains_key("authorization")
        {
            let value = format!("Bearer {token}").parse().unwrap();
            request.headers_mut().insert("authorization", value);
        }
        if let Some(peer) = self.peer {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
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
        _ => {
            skip::skipped(&format!("no Redis at {url} (install redis-server)"), false);
            None
        }
    }
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    unique_name("test")
}

/// A database with the movies imported, and a cache shared by two instances over it: SQLite
/// with one in-process cache (two handles on it), and, when they answer, SQLite and PostgreSQL
/// each with Redis.
pub async fn movies_backends() -> Vec<(&'static str, TestApp, TestApp)> {
    let catalog = catalog();
    let ttl = std::time::Duration::from_secs(60);
    let sqlite = open(&sqlite_url());
    import_movies(sqlite.as_ref(), &catalog).await;
    let a = TestApp::new(sqlite, catalog.clone());
    let mut out: Vec<(&'static str, TestApp, TestApp)> = vec![("sqlite+in-process", a.clone(), a)];
    if let Some(redis) = redis_url().await {
        // Two instances on one database and one Redis, under a prefix of their own.
        let pair = |storage: Arc<dyn Storage>| {
            let prefix = unique_prefix();
            let instance = || {
                let cache =
                    Cache::with_redis(&redis, &prefix, ttl, handler::cache::DEFAULT_MAX_BYTES);
                TestApp::with_cache(storage.clone(), catalog.clone(), cache)
            };
            (instance(), instance())
        };
        // SQLite with Redis: a row's write is recorded before it takes the database's lock.
        let sqlite = open(&sqlite_url());
        import_movies(sqlite.as_ref(), &catalog).await;
        let (a, b) = pair(sqlite);
        out.push(("sqlite+redis", a, b));
        if let Some(pg) = postgres_url().await {
            import_movies(open(&pg).as_ref(), &catalog).await;
            let (a, b) = pair(open(&pg));
            out.push(("postgres+redis", a, b));
        }
    }
    let others = [
        ("mariadb+in-process", mysql_url().await),
        ("sqlserver+in-process", mssql_url().await),
    ];
    for (name, url) in others {
        let Some(url) = url else { continue };
        import_movies(open(&url).as_ref(), &catalog).await;
        let a = TestApp::new(open(&url), catalog.clone());
        out.push((name, a.clone(), a));
    }
    out
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
