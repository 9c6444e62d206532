//! The cache over HTTP on a real SQLite database: headers, conditional requests, compression,
//! exact invalidation, and one database query per cold key however many callers ask at once.

mod common;

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use common::TestApp;
use handler::datasets::{Dataset, Value};
use handler::query::Query;
use handler::storage::{
    self, Change, CommitGate, ImportSink, NewUser, Row, RowStream, SourceVersion, Storage,
    UserLookup, UserRecord, UserUpdate, Written,
};

/// The real SQLite storage, with its list queries counted (a decorator, not a mock: every call
/// reaches the database).
struct CountingStorage {
    inner: Arc<dyn Storage>,
    lists: AtomicUsize,
    exports: AtomicUsize,
    counts: AtomicUsize,
}

#[async_trait]
impl Storage for CountingStorage {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> storage::Result<()> {
        self.inner.ping().await
    }
    async fn migrate(&self, dataset: &Dataset) -> storage::Result<storage::Migrated> {
        self.inner.migrate(dataset).await
    }
    async fn fill_keys(&self, dataset: &Dataset) -> storage::Result<storage::Migrated> {
        self.inner.fill_keys(dataset).await
    }
    async fn count(&self, dataset: &Dataset, query: &Query) -> storage::Result<u64> {
        self.counts.fetch_add(1, Ordering::SeqCst);
        self.inner.count(dataset, query).await
    }
    async fn list(&self, dataset: &Dataset, query: &Query) -> storage::Result<Vec<Row>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(dataset, query).await
    }
    async fn get(&self, dataset: &Dataset, key: &Value) -> storage::Result<Option<Row>> {
        self.inner.get(dataset, key).await
    }
    async fn facets(
        &self,
        dataset: &Dataset,
        column: usize,
        query: &Query,
    ) -> storage::Result<Vec<(Value, u64)>> {
        self.inner.facets(dataset, column, query).await
    }
    fn export(&self, dataset: Arc<Dataset>, query: Query) -> RowStream {
        self.exports.fetch_add(1, Ordering::SeqCst);
        self.inner.export(dataset, query)
    }
    async fn begin_import(&self, dataset: &Dataset) -> storage::Result<Box<dyn ImportSink>> {
        self.inner.begin_import(dataset).await
    }
    async fn sync(
        &self,
        dataset: &Dataset,
        sink: Box<dyn ImportSink>,
        gate: &dyn CommitGate,
        record_rows: u64,
    ) -> storage::Result<Option<storage::SyncCounts>> {
        self.inner.sync(dataset, sink, gate, record_rows).await
    }
    async fn write(
        &self,
        dataset: &Dataset,
        change: Change,
        gate: &dyn CommitGate,
    ) -> storage::Result<Written> {
        self.inner.write(dataset, change, gate).await
    }
    async fn create_user(&self, user: NewUser) -> storage::Result<UserRecord> {
        self.inner.create_user(user).await
    }
    async fn find_user(&self, lookup: UserLookup) -> storage::Result<Option<UserRecord>> {
        self.inner.find_user(lookup).await
    }
    async fn update_user(&self, id: i64, change: UserUpdate) -> storage::Result<UserRecord> {
        self.inner.update_user(id, change).await
    }
    async fn delete_user(&self, id: i64) -> storage::Result<()> {
        self.inner.delete_user(id).await
    }
    async fn source_version(&self, dataset: &str) -> storage::Result<Option<SourceVersion>> {
        self.inner.source_version(dataset).await
    }
    async fn record_source_version(
        &self,
        dataset: &str,
        version: &SourceVersion,
    ) -> storage::Result<()> {
        self.inner.record_source_version(dataset, version).await
    }
}

async fn movies_app() -> (TestApp, Arc<CountingStorage>) {
    let (catalog, real) = movies_db().await;
    let counting = Arc::new(CountingStorage {
        inner: real,
        lists: AtomicUsize::new(0),
        exports: AtomicUsize::new(0),
        counts: AtomicUsize::new(0),
    });
    (TestApp::new(counting.clone(), catalog), counting)
}

/// Repeats a GET (every answer a 200) until it is answered by the cache again, not bypassed.
async fn until_the_cache_answers(app: &TestApp, uri: &str) -> common::TestResponse {
    let started = std::time::Instant::now();
    loop {
        let response = app.get(uri).await;
        assert_eq!(response.status, 200);
        if header(&response, "x-cache") != "BYPASS" {
            return response;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the cache never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends `n` concurrent GETs of `uri`, spread over `apps`; every answer must be a 200.
async fn fire(
    apps: &[Arc<TestApp>],
    uri: &str,
    n: usize,
) -> std::collections::HashSet<bytes::Bytes> {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let (app, uri) = (apps[i % apps.len()].clone(), uri.to_owned());
            tokio::spawn(async move { app.get(&uri).await })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status, 200);
        bodies.insert(response.body);
    }
    bodies
}

/// A fresh SQLite database with the movies imported, and the catalog.
async fn movies_db() -> (handler::datasets::Catalog, Arc<dyn Storage>) {
    let catalog = common::catalog();
    let real = common::open(&common::sqlite_url());
    common::import_movies(real.as_ref(), &catalog).await;
    (catalog, real)
}

/// A cache in Redis at `redis`, or in process when it is `None`.
fn shared_cache(
    redis: Option<&str>,
    prefix: &str,
    ttl: std::time::Duration,
) -> handler::cache::Cache {
    match redis {
        Some(url) => {
            handler::cache::Cache::with_redis(url, prefix, ttl, handler::cache::DEFAULT_MAX_BYTES)
        }
        None => handler::cache::Cache::in_process(prefix, ttl, handler::cache::DEFAULT_MAX_BYTES),
    }
}

fn header<'a>(response: &'a common::TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

#[tokio::test]
async fn hits_are_served_from_the_cache_with_validators() {
    let (app, db) = movies_app().await;
    let first = app.get("/api/movies?genres=Drama&year.gte=2000").await;
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "x-cache"), "MISS");
    assert!(header(&first, "server-timing").starts_with("cache;desc=MISS, db;dur="));
    let etag = header(&first, "etag").to_owned();
    assert!(etag.starts_with('"'), "{etag}");

    // The same question in another order and case is the same entry.
    let second = app.get("/api/movies?year.gte=2000&genres=drama").await;
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(header(&second, "etag"), etag);
    assert_eq!(db.lists.load(Ordering::SeqCst), 1);

    let conditional = app
        .get_with(
            "/api/movies?genres=drama&year.gte=2000",
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(conditional.status, 304);
    assert!(conditional.body.is_empty());
    assert_eq!(header(&conditional, "etag"), etag);

    let gzipped = app
        .get_with(
            "/api/movies?genres=drama&year.gte=2000",
            &[("accept-encoding", "br, gzip;q=0.8")],
        )
        .await;
    assert_eq!(header(&gzipped, "content-encoding"), "gzip");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(gzipped.body.as_ref())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, first.body.as_ref());
    let refused = app
        .get_with(
            "/api/movies?genres=drama&year.gte=2000",
            &[("accept-encoding", "gzip;q=0")],
        )
        .await;
    assert_eq!(header(&refused, "content-encoding"), "");
    assert_eq!(refused.body, first.body);

    let item = app.get("/api/movies/595").await;
    assert_eq!(header(&item, "x-cache"), "MISS");
    assert_eq!(header(&app.get("/api/movies/595").await, "x-cache"), "HIT");
    assert_eq!(
        header(&app.get("/api/movies/facets/genres").await, "x-cache"),
        "MISS"
    );
    assert_eq!(
        header(&app.get("/api/movies/facets/genres").await, "x-cache"),
        "HIT"
    );
    // Errors are not cached.
    assert_eq!(app.get("/api/movies/1").await.status, 404);
    assert_eq!(header(&app.get("/api/movies/1").await, "x-cache"), "");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_for_a_cold_key_make_one_query() {
    let (app, db) = movies_app().await;
    let bodies = fire(
        &[Arc::new(app)],
        "/api/movies?genres=comedy&sort=-year",
        200,
    )
    .await;
    assert_eq!(
        db.lists.load(Ordering::SeqCst),
        1,
        "one database query for 200 callers"
    );
    assert_eq!(bodies.len(), 1);
}

#[tokio::test]
async fn a_recorded_write_ends_exactly_the_answers_it_touches() {
    let (app, db) = movies_app().await;
    let movies = app.dataset("movies");
    for uri in [
        "/api/movies?genres=drama",
        "/api/movies?genres=comedy",
        "/api/movies",
        "/api/movies/595",
    ] {
        app.get(uri).await;
    }
    let queries = db.lists.load(Ordering::SeqCst);
    // The Intouchables (Biography, Comedy, Drama) loses its Comedy genre.
    let old = app
        .state
        .storage
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap();
    let mut new = old.clone();
    new[movies.column_index("genres").unwrap()] =
        Value::List(vec!["Biography".into(), "Drama".into()]);
    app.state
        .cache
        .record_write(&movies, Some(old), Some(new))
        .await
        .unwrap();
    assert_eq!(
        header(&app.get("/api/movies?genres=horror").await, "x-cache"),
        "MISS"
    );
    assert_eq!(
        header(&app.get("/api/movies?genres=horror").await, "x-cache"),
        "HIT",
        "untouched by the write"
    );
    for uri in [
        "/api/movies?genres=drama",
        "/api/movies?genres=comedy",
        "/api/movies",
        "/api/movies/595",
    ] {
        assert_eq!(header(&app.get(uri).await, "x-cache"), "MISS", "{uri}");
    }
    assert_eq!(db.lists.load(Ordering::SeqCst), queries + 4);
}

/// Two instances over one movies database, sharing the Redis at `url` under a prefix of their
/// own; and the database itself.
async fn two_instances_on_redis(url: &str) -> (TestApp, TestApp, Arc<dyn Storage>) {
    let (catalog, real) = movies_db().await;
    let prefix = common::unique_prefix();
    let ttl = std::time::Duration::from_secs(60);
    let cache =
        || handler::cache::Cache::with_redis(url, &prefix, ttl, handler::cache::DEFAULT_MAX_BYTES);
    let a = TestApp::with_cache(real.clone(), catalog.clone(), cache());
    let b = TestApp::with_cache(real.clone(), catalog, cache());
    (a, b, real)
}

/// Two instances sharing one Redis: what one computed, the other serves; what one writes, the
/// other never serves stale.
#[tokio::test]
async fn two_instances_share_entries_and_writes_through_redis() {
    let Some(url) = common::redis_url().await else {
        return;
    };
    let (a, b, real) = two_instances_on_redis(&url).await;

    let first = a.get("/api/movies?genres=western&sort=-year").await;
    assert_eq!(header(&first, "x-cache"), "MISS");
    let shared = b.get("/api/movies?sort=-year&genres=Western").await;
    assert_eq!(
        header(&shared, "x-cache"),
        "HIT",
        "computed by the other instance"
    );
    assert_eq!(shared.body, first.body);
    assert_eq!(header(&shared, "etag"), header(&first, "etag"));

    let movies = a.dataset("movies");
    let old = real
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap();
    let mut new = old.clone();
    new[movies.column_index("genres").unwrap()] = Value::List(vec!["Western".into()]);
    b.state
        .cache
        .record_write(&movies, Some(old), Some(new))
        .await
        .unwrap();
    assert_eq!(
        header(
            &a.get("/api/movies?genres=western&sort=-year").await,
            "x-cache"
        ),
        "MISS"
    );
    assert_eq!(
        header(
            &a.get("/api/movies?genres=western&sort=-year").await,
            "x-cache"
        ),
        "HIT"
    );
}

/// The position read is sent prebuilt (`EVALSHA` of a script loaded once): a Redis that has
/// forgotten its scripts (`SCRIPT FLUSH`, as after a restart) still answers every read, and a
/// write recorded meanwhile still ends the answers it changes.
#[tokio::test]
async fn a_redis_that_forgot_its_scripts_still_answers_and_invalidates() {
    let Some(url) = common::redis_url().await else {
        return;
    };
    let (a, b, real) = two_instances_on_redis(&url).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut forget_scripts = async || {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    let uri = "/api/movies?genres=western&sort=-year";
    assert_eq!(header(&a.get(uri).await, "x-cache"), "MISS");
    forget_scripts().await;
    assert_eq!(header(&a.get(uri).await, "x-cache"), "HIT");

    let movies = a.dataset("movies");
    let old = real
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap();
    let mut new = old.clone();
    new[movies.column_index("genres").unwrap()] = Value::List(vec!["Western".into()]);
    forget_scripts().await;
    b.state
        .cache
        .record_write(&movies, Some(old), Some(new))
        .await
        .unwrap();
    forget_scripts().await;
    assert_eq!(
        header(&a.get(uri).await, "x-cache"),
        "MISS",
        "the write ended it"
    );
    assert_eq!(header(&a.get(uri).await, "x-cache"), "HIT");
}

/// The same sharing and invalidation on a three-node Redis Cluster the test starts itself, also
/// after every node has forgotten its scripts.
#[tokio::test]
async fn a_redis_cluster_shares_entries_and_writes_too() {
    let Some(cluster) = common::RedisCluster::start().await else {
        return;
    };
    let (catalog, real) = movies_db().await;
    let ttl = std::time::Duration::from_secs(60);
    let cache = || {
        handler::cache::Cache::with_redis(
            &cluster.url,
            "cluster",
            ttl,
            handler::cache::DEFAULT_MAX_BYTES,
        )
    };
    let a = TestApp::with_cache(real.clone(), catalog.clone(), cache());
    let b = TestApp::with_cache(real.clone(), catalog, cache());
    // Keys of many slots, spread over the three nodes.
    let uris: Vec<String> = ["drama", "comedy", "horror", "western", "war", "music"]
        .iter()
        .map(|g| format!("/api/movies?genres={g}"))
        .collect();
    for uri in &uris {
        assert_eq!(header(&a.get(uri).await, "x-cache"), "MISS", "{uri}");
        assert_eq!(header(&b.get(uri).await, "x-cache"), "HIT", "{uri}");
    }
    let movies = a.dataset("movies");
    let old = real
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap(); // Biography, Comedy, Drama
    let mut new = old.clone();
    new[movies.column_index("genres").unwrap()] = Value::List(vec!["War".into()]);
    a.state
        .cache
        .record_write(&movies, Some(old), Some(new))
        .await
        .unwrap();
    // Every node forgets its scripts: the position read loads it again on the node it reaches.
    for node in cluster.url.split(',') {
        let (host, port) = node.rsplit_once(':').unwrap();
        let flushed = std::process::Command::new("redis-cli")
            .args(["-h", host, "-p", port, "SCRIPT", "FLUSH"])
            .output()
            .unwrap();
        assert!(flushed.status.success(), "{node}: {flushed:?}");
    }
    for (uri, expected) in uris
        .iter()
        .zip(["MISS", "MISS", "HIT", "HIT", "MISS", "HIT"])
    {
        assert_eq!(header(&b.get(uri).await, "x-cache"), expected, "{uri}");
    }
}

/// Redis killed in the middle of a run and restarted: every request is still answered (BYPASS,
/// never a 5xx), and no answer from before is served after a write made while it was down.
#[tokio::test]
async fn redis_killed_and_restarted_costs_no_errors_and_no_stale_answers() {
    if common::redis_url().await.is_none() {
        return; // the same skip rule: no redis-server here
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = common::PrivateRedis::start(port);
    let (catalog, real) = movies_db().await;
    let url = format!("redis://127.0.0.1:{port}");
    let ttl = std::time::Duration::from_secs(60);
    let app = TestApp::with_cache(
        real.clone(),
        catalog,
        handler::cache::Cache::with_redis(&url, "restart", ttl, 1 << 20),
    );
    let uri = "/api/movies?genres=drama&sort=-year&limit=5";
    assert_eq!(header(&app.get(uri).await, "x-cache"), "MISS");
    let before = app.get(uri).await;
    assert_eq!(header(&before, "x-cache"), "HIT");

    redis.kill();
    for _ in 0..50 {
        let response = app.get(uri).await;
        assert_eq!(response.status, 200);
        assert_eq!(header(&response, "x-cache"), "BYPASS");
    }
    // A write while Redis is down: the database changes, recording it fails (the writer learns).
    let movies = app.dataset("movies");
    let first_id = before.json()["items"][0]["id"].as_i64().unwrap();
    let row = real
        .get(&movies, &Value::Integer(first_id))
        .await
        .unwrap()
        .unwrap();
    assert!(
        app.state
            .cache
            .record_write(&movies, Some(row.clone()), Some(row))
            .await
            .is_err()
    );

    let _redis = common::PrivateRedis::start(port);
    // The cache comes back by itself (the breaker retries, the connection reconnects) ...
    let after = until_the_cache_answers(&app, uri).await;
    // ... and its first answer is computed afresh, not the copy from before the write.
    assert_eq!(
        header(&after, "x-cache"),
        "MISS",
        "nothing from before the restart is served"
    );
    assert_eq!(header(&app.get(uri).await, "x-cache"), "HIT");
}

/// 200 concurrent requests for one cold key, split over two instances sharing Redis: one query.
#[tokio::test]
async fn one_query_per_cold_key_across_two_instances() {
    let Some(url) = common::redis_url().await else {
        return;
    };
    let (catalog, real) = movies_db().await;
    let counting = Arc::new(CountingStorage {
        inner: real,
        lists: AtomicUsize::new(0),
        exports: AtomicUsize::new(0),
        counts: AtomicUsize::new(0),
    });
    let prefix = common::unique_prefix();
    let ttl = std::time::Duration::from_secs(60);
    let cache =
        || handler::cache::Cache::with_redis(&url, &prefix, ttl, handler::cache::DEFAULT_MAX_BYTES);
    let apps = [
        Arc::new(TestApp::with_cache(
            counting.clone(),
            catalog.clone(),
            cache(),
        )),
        Arc::new(TestApp::with_cache(counting.clone(), catalog, cache())),
    ];
    let bodies = fire(&apps, "/api/movies?genres=crime&sort=-box_office", 200).await;
    assert_eq!(
        counting.lists.load(Ordering::SeqCst),
        1,
        "one database query for 200 callers on 2 instances"
    );
    assert_eq!(bodies.len(), 1);
    // A count is a read like any other: one query for its cold key too.
    let counted = fire(&apps, "/api/movies/count?genres.in=crime,western", 100).await;
    assert_eq!(counting.counts.load(Ordering::SeqCst), 1);
    assert_eq!(counted.len(), 1);
}

/// The database goes away: the last good answer is served, marked STALE, instead of a 503.
#[tokio::test]
async fn a_dead_database_gets_the_last_good_answer_marked_stale() {
    let Some(url) = common::redis_url().await else {
        return;
    };
    let mut movies = (**common::catalog().get("movies").unwrap()).clone();
    movies.cache_ttl_seconds = Some(1);
    let mut catalog = handler::datasets::Catalog::default();
    catalog.insert(movies).unwrap();
    let real = common::open(&common::sqlite_url());
    common::import_movies(real.as_ref(), &catalog).await;
    let prefix = common::unique_prefix();
    let ttl = std::time::Duration::from_secs(1);
    let cache =
        || handler::cache::Cache::with_redis(&url, &prefix, ttl, handler::cache::DEFAULT_MAX_BYTES);
    let healthy = TestApp::with_cache(real, catalog.clone(), cache());
    let uri = "/api/movies?genres=sport";
    let good = healthy.get(uri).await;
    assert_eq!(header(&good, "x-cache"), "MISS");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await; // past freshness

    // Another instance whose database is unreachable (nothing listens on port 9).
    let broken = TestApp::with_cache(
        common::open("postgres://nobody@127.0.0.1:9/none"),
        catalog,
        cache(),
    );
    let stale = broken.get(uri).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(header(&stale, "x-cache"), "STALE");
    assert_eq!(stale.body, good.body);
    // Without any stored answer, the 503 stands.
    let nothing = broken.get("/api/movies?genres=western").await;
    assert_eq!(nothing.status, 503);
}

#[tokio::test]
async fn the_admin_view_reports_and_purges_and_warm_up_refreshes_what_is_hot() {
    let (app, db) = movies_app().await;
    let app = app.as_admin().await;
    for uri in [
        "/api/movies?genres=drama",
        "/api/movies?genres=drama",
        "/api/movies?genres=drama",
        "/api/movies/595",
    ] {
        app.get(uri).await;
    }
    let view = app.get("/api/admin/cache").await;
    assert_eq!(view.status, 200, "{}", view.text());
    let view = view.json();
    assert_eq!(view["backend"], "in-process");
    assert_eq!(
        (view["hits"].as_u64(), view["misses"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(view["hot_keys"][0]["path"], "/api/movies?genres=drama");
    assert_eq!(view["hot_keys"][0]["score"], 3.0);
    let movies = view["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "movies")
        .unwrap()
        .clone();
    assert_eq!(movies["near_entries"], 2);

    let purged = app
        .request("DELETE", "/api/admin/cache?dataset=movies")
        .await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(
        app.request("DELETE", "/api/admin/cache?dataset=nope")
            .await
            .status,
        400
    );

    // Warm-up recomputes the hot answers the purge ended, so the next reader hits.
    let queries = db.lists.load(Ordering::SeqCst);
    let report = handler::http::warm(&app.state, 10).await;
    assert_eq!(
        (report.refreshed, report.failed),
        (2, 0),
        "{:?}",
        report.lines
    );
    assert_eq!(db.lists.load(Ordering::SeqCst), queries + 1);
    assert_eq!(
        header(&app.get("/api/movies?genres=drama").await, "x-cache"),
        "HIT"
    );
    // A second run finds them fresh and leaves them.
    let again = handler::http::warm(&app.state, 10).await;
    assert_eq!((again.refreshed, again.fresh), (0, 2), "{:?}", again.lines);
}

/// Anonymous callers get a 401, signed-in users a 403: only admins see or purge the cache.
#[tokio::test]
async fn admin_endpoints_need_an_admin() {
    let (app, _) = movies_app().await;
    let user = app.as_user().await;
    for method in ["GET", "DELETE"] {
        let uri = "/api/admin/cache?dataset=movies";
        let anonymous = app.request(method, uri).await;
        assert_eq!(anonymous.status, 401, "{method}");
        assert_eq!(anonymous.content_type(), "application/problem+json");
        assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
        assert_eq!(user.request(method, uri).await.status, 403, "{method}");
    }
}

#[tokio::test]
async fn health_says_degraded_but_serves_when_redis_is_down() {
    let (app, _) = movies_app().await;
    let ttl = std::time::Duration::from_secs(60);
    let dead = handler::cache::Cache::with_redis("redis://127.0.0.1:9", "dead", ttl, 1 << 20);
    let app = TestApp::with_cache(
        app.state.storage.clone(),
        (*app.state.catalog).clone(),
        dead,
    );
    let health = app.get("/api/health").await;
    assert_eq!(health.status, 200, "the instance stays in service");
    let body = health.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["cache"]["status"], "down");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    let list = app.get("/api/movies?genres=drama").await;
    assert_eq!(
        (list.status.as_u16(), header(&list, "x-cache")),
        (200, "BYPASS")
    );
}

/// Redis goes away, a write is made, and Redis comes back *with its old data* (persistence): the
/// writing instance purges the dataset before serving anything, so the old answers never return.
#[tokio::test]
async fn a_write_redis_missed_never_lets_old_answers_return() {
    if common::redis_url().await.is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("{}-aof", common::unique_prefix()));
    let redis = common::PrivateRedis::start_persistent(port, &dir);
    let (app, _) = movies_app().await;
    let url = format!("redis://127.0.0.1:{port}");
    let ttl = std::time::Duration::from_secs(60);
    let cache = || handler::cache::Cache::with_redis(&url, "persist", ttl, 1 << 20);
    let writer = TestApp::with_cache(
        app.state.storage.clone(),
        (*app.state.catalog).clone(),
        cache(),
    );
    let reader = TestApp::with_cache(
        app.state.storage.clone(),
        (*app.state.catalog).clone(),
        cache(),
    );
    let uri = "/api/movies?genres=drama";
    assert_eq!(header(&writer.get(uri).await, "x-cache"), "MISS");
    assert_eq!(header(&reader.get(uri).await, "x-cache"), "HIT");

    redis.kill();
    let movies = writer.dataset("movies");
    let row = writer
        .state
        .storage
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap();
    assert!(
        writer
            .state
            .cache
            .record_write(&movies, Some(row.clone()), Some(row))
            .await
            .is_err()
    );
    let _redis = common::PrivateRedis::start_persistent(port, &dir); // the old entries are back

    let first = until_the_cache_answers(&writer, uri).await;
    assert_eq!(
        header(&first, "x-cache"),
        "MISS",
        "the writer purged before serving"
    );
    // The purge reached Redis, so the other instance's copy is over too (and its near copy).
    let other = until_the_cache_answers(&reader, uri).await;
    assert_ne!(header(&other, "x-cache"), "STALE");
    assert_eq!(other.body, first.body);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Exports are cached too: gzipped while they stream, stored when the last byte is sent, served
/// from the stored bytes (decompressed on the way for clients that do not take gzip).
#[tokio::test]
async fn exports_are_cached_and_invalidated_like_everything_else() {
    let mut backends = vec![None];
    backends.extend(common::redis_url().await.map(Some));
    for redis in backends {
        let (catalog, real) = movies_db().await;
        let ttl = std::time::Duration::from_secs(60);
        let prefix = common::unique_prefix();
        let cache = || shared_cache(redis.as_deref(), &prefix, ttl);
        let a = TestApp::with_cache(real.clone(), catalog.clone(), cache());
        // With Redis, a second instance reads what the first stored; in process, the same one.
        let b = if redis.is_some() {
            TestApp::with_cache(real.clone(), catalog, cache())
        } else {
            a.clone()
        };
        let backend = if redis.is_some() {
            "redis"
        } else {
            "in-process"
        };
        for format in ["json", "ndjson", "csv"] {
            let uri = format!("/api/movies/export?format={format}");
            let first = a.get(&uri).await;
            assert_eq!(
                (first.status.as_u16(), header(&first, "x-cache")),
                (200, "MISS"),
                "{backend} {uri}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await; // stored after the last byte
            let plain = b.get(&uri).await;
            assert_eq!(header(&plain, "x-cache"), "HIT", "{backend} {uri}");
            assert_eq!(
                plain.body, first.body,
                "{backend} {uri}: the stored export is the streamed one"
            );
            assert!(!header(&plain, "etag").is_empty());
            let zipped = b.get_with(&uri, &[("accept-encoding", "gzip")]).await;
            assert_eq!(header(&zipped, "content-encoding"), "gzip");
            let mut unzipped = Vec::new();
            flate2::read::GzDecoder::new(zipped.body.as_ref())
                .read_to_end(&mut unzipped)
                .unwrap();
            assert_eq!(unzipped, first.body.as_ref());
        }
        let drama = "/api/movies/export?format=ndjson&genres=drama";
        let horror = "/api/movies/export?format=ndjson&genres=horror";
        for uri in [drama, horror] {
            a.get(uri).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let movies = a.dataset("movies");
        let old = real
            .get(&movies, &Value::Integer(595))
            .await
            .unwrap()
            .unwrap();
        a.state
            .cache
            .record_write(&movies, Some(old.clone()), Some(old))
            .await
            .unwrap();
        assert_eq!(
            header(&b.get(drama).await, "x-cache"),
            "MISS",
            "{backend}: the film is a drama"
        );
        assert_eq!(
            header(&b.get(horror).await, "x-cache"),
            "HIT",
            "{backend}: and not a horror film"
        );
    }
}

/// Concurrent requests for one cold export make one database query: the others wait for the
/// stored answer (in one instance, and across two sharing Redis).
#[tokio::test]
async fn concurrent_cold_exports_make_one_query() {
    let mut backends = vec![None];
    backends.extend(common::redis_url().await.map(Some));
    for redis in backends {
        let (catalog, real) = movies_db().await;
        let counting = Arc::new(CountingStorage {
            inner: real,
            lists: AtomicUsize::new(0),
            exports: AtomicUsize::new(0),
            counts: AtomicUsize::new(0),
        });
        let prefix = common::unique_prefix();
        let ttl = std::time::Duration::from_secs(60);
        let cache = || shared_cache(redis.as_deref(), &prefix, ttl);
        let first = Arc::new(TestApp::with_cache(
            counting.clone(),
            catalog.clone(),
            cache(),
        ));
        let apps = match &redis {
            Some(_) => vec![
                first,
                Arc::new(TestApp::with_cache(counting.clone(), catalog, cache())),
            ],
            None => vec![first],
        };
        let bodies = fire(&apps, "/api/movies/export?format=ndjson&sort=-year", 20).await;
        assert_eq!(bodies.len(), 1, "every caller got the same export");
        assert_eq!(
            counting.exports.load(Ordering::SeqCst),
            1,
            "redis: {}",
            redis.is_some()
        );
    }
}

/// Bytes in Redis are input like any other: a value cut short, or a stranger's, under an entry's
/// key is a miss (never a panic or a broken answer), and the answer computed instead overwrites
/// it. Near caches are small here, so every read goes to Redis.
#[tokio::test]
async fn a_corrupt_value_in_redis_is_a_miss_and_is_repaired() {
    let Some(url) = common::redis_url().await else {
        return;
    };
    let (catalog, real) = movies_db().await;
    let prefix = common::unique_prefix();
    let ttl = std::time::Duration::from_secs(60);
    let app = TestApp::with_cache(
        real,
        catalog,
        handler::cache::Cache::with_redis(&url, &prefix, ttl, 1),
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for uri in [
        "/api/movies?genres=western&limit=50",
        "/api/movies/595",
        "/api/movies/export?genres=western",
    ] {
        let first = app.get(uri).await;
        assert_eq!(header(&first, "x-cache"), "MISS", "{uri}");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:movies:*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        let entries: Vec<&String> = keys.iter().filter(|k| !k.contains(":lease:")).collect();
        assert_eq!(entries.len(), 1, "{uri}: one entry in Redis: {keys:?}");
        let key = entries[0].clone();
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        for garbage in [
            stored[..stored.len() / 2].to_vec(),
            stored[..stored.len() - 3].to_vec(),
            b"SC1 {\"etag\":1}\nnot gzip".to_vec(),
            vec![0xff; 64],
        ] {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(garbage)
                .query_async(&mut redis)
                .await
                .unwrap();
            let again = app.get(uri).await;
            assert_eq!(again.status, 200, "{uri}");
            assert_eq!(
                header(&again, "x-cache"),
                "MISS",
                "{uri}: garbage is a miss"
            );
            assert_eq!(again.body, first.body, "{uri}: the right answer");
            let repaired = app.get(uri).await;
            assert_eq!(
                header(&repaired, "x-cache"),
                "HIT",
                "{uri}: and was overwritten"
            );
            assert_eq!(repaired.body, first.body);
        }
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

/// An export found too large is refused again without running its query, until the dataset
/// changes.
#[tokio::test]
async fn an_export_too_large_is_not_run_again_until_the_dataset_changes() {
    let (app, db) = movies_app().await;
    let mut small = app.clone();
    small.state = small
        .state
        .clone()
        .with_limits(handler::config::RequestLimits {
            export_max_bytes: 10_000,
            ..Default::default()
        });
    for _ in 0..3 {
        assert_eq!(small.get("/api/movies/export").await.status, 422);
    }
    assert_eq!(
        db.exports.load(Ordering::SeqCst),
        1,
        "one query, then refusals"
    );
    let movies = app.dataset("movies");
    let row = db
        .get(&movies, &Value::Integer(595))
        .await
        .unwrap()
        .unwrap();
    app.state
        .cache
        .record_write(&movies, Some(row.clone()), Some(row))
        .await
        .unwrap();
    assert_eq!(small.get("/api/movies/export").await.status, 422);
    assert_eq!(
        db.exports.load(Ordering::SeqCst),
        2,
        "run again once the dataset changed"
    );
}
