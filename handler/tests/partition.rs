//! Two instances over one PostgreSQL and one Redis, instance A reaching Redis through a proxy the
//! test cuts (what A sees of a network partition; Redis stays up for B): A's writes are refused
//! and nothing is committed, or, when A is cut off after recording a write, B never serves an
//! answer the write changed. And the answer-aware rule end to end: a write ends the answers it
//! changes and leaves the rest HITs, each answer checked against the database.

mod common;

use std::net::SocketAddr;

use common::proxy::{Link, Proxy};
use common::{TestApp, TestResponse};
use handler::cache::Cache;
use handler::datasets::Value;
use handler::storage::{Change, Ungated};
use serde_json::json;

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

/// PostgreSQL with the movies, and the Redis the tests share; `None` (with a visible line) when
/// either is missing.
async fn services() -> Option<(String, String)> {
    let (pg, redis) = (common::postgres_url().await?, common::redis_url().await?);
    common::import_movies(common::open(&pg).as_ref(), &common::catalog()).await;
    Some((pg, redis))
}

fn redis_addr(url: &str) -> SocketAddr {
    let host = url.trim_start_matches("redis://").trim_end_matches('/');
    host.parse().expect("REDIS_URL is redis://<ip>:<port>")
}

/// An instance over `pg` whose cache reaches Redis at `redis_url` under `prefix`.
fn instance(pg: &str, redis_url: &str, prefix: &str) -> TestApp {
    let ttl = std::time::Duration::from_secs(60);
    let cache = Cache::with_redis(redis_url, prefix, ttl, handler::cache::DEFAULT_MAX_BYTES);
    TestApp::with_cache(common::open(pg), common::catalog(), cache)
}

/// Polls until `app` answers `uri` from its cache again (after its breaker closes).
async fn until_cached(app: &TestApp, uri: &str) {
    for _ in 0..100 {
        if header(&app.get(uri).await, "x-cache") != "BYPASS" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the cache did not come back for {uri}");
}

fn ids(response: &TestResponse) -> Vec<i64> {
    response.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn an_instance_cut_off_from_redis_cannot_make_another_serve_a_stale_answer() {
    let Some((pg, redis)) = services().await else {
        return;
    };
    let proxy = Proxy::start(redis_addr(&redis)).await;
    let prefix = common::unique_prefix();
    let a = instance(&pg, &proxy.redis_url(), &prefix).as_admin().await;
    let b = instance(&pg, &redis, &prefix);
    let dramas = "/api/movies?genres=drama&sort=-year&limit=20";
    assert_eq!(header(&b.get(dramas).await, "x-cache"), "MISS");
    assert_eq!(header(&b.get(dramas).await, "x-cache"), "HIT");

    // A is cut off before the write: refused, rolled back, nothing committed.
    proxy.set(Link::Refused);
    let film = json!({"id": 990_001, "title": "Partition", "year": 2030, "genres": ["Drama"]});
    let refused = a.post_json("/api/movies", &film).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.content_type(), "application/problem+json");
    assert!(header(&refused, "retry-after").parse::<u64>().is_ok());
    assert_eq!(b.get("/api/movies/990001").await.status, 404);
    let unchanged = b.get(dramas).await;
    assert_eq!(header(&unchanged, "x-cache"), "HIT");
    assert!(!ids(&unchanged).contains(&990_001));
    // A still answers reads, from the database.
    assert_eq!(header(&a.get(dramas).await, "x-cache"), "BYPASS");

    // Back in touch, the same write is acknowledged, and B's next read shows it.
    proxy.set(Link::Up);
    until_cached(&a, dramas).await;
    let created = a.post_json("/api/movies", &film).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let after = b.get(dramas).await;
    assert_eq!(header(&after, "x-cache"), "MISS");
    assert_eq!(ids(&after)[0], 990_001, "the newest drama leads the list");

    // A records a write and is cut off before it can end it (the commit lands in between): the
    // record in flight alone keeps B from serving what the write changed.
    assert_eq!(header(&b.get(dramas).await, "x-cache"), "HIT");
    let movies = a.dataset("movies");
    let key = Value::Integer(990_001);
    let old = a.state.storage.get(&movies, &key).await.unwrap().unwrap();
    let mut new = old.clone();
    new[movies.column_index("year").unwrap()] = Value::Integer(1901);
    let in_flight = a
        .state
        .cache
        .begin_write(&movies, Some(old), Some(new.clone()))
        .await
        .unwrap();
    a.state
        .storage
        .write(&movies, Change::Replace(key, new), &Ungated)
        .await
        .unwrap();
    proxy.set(Link::Silent);
    assert!(a.state.cache.end_write(in_flight).await.is_err());
    let moved = b.get(dramas).await;
    assert_ne!(header(&moved, "x-cache"), "HIT");
    assert!(
        !ids(&moved).contains(&990_001),
        "the film left the newest dramas"
    );
    // Until the record lapses, nothing computed meanwhile counts as fresh for what it changed...
    assert_ne!(header(&b.get(dramas).await, "x-cache"), "HIT");
    // ... while answers it cannot change stay cached.
    let comedies = "/api/movies?genres=comedy&sort=-year&limit=20";
    assert_eq!(header(&b.get(comedies).await, "x-cache"), "MISS");
    assert_eq!(header(&b.get(comedies).await, "x-cache"), "HIT");
}

/// Each write ends exactly the answers it changes: pages it cannot reach, facets whose counts
/// it keeps, other items stay HITs; everything served equals what the database says.
#[tokio::test]
async fn a_write_ends_the_answers_it_changes_and_leaves_the_rest() {
    let Some((pg, redis)) = services().await else {
        return;
    };
    let prefix = common::unique_prefix();
    let a = instance(&pg, &redis, &prefix).as_admin().await;
    let b = instance(&pg, &redis, &prefix);
    // The top of the best-reviewed dramas, and a drama far below it (Metacritic 40).
    let top = "/api/movies?genres=drama&sort=-metacritic&limit=20";
    let low = b
        .get("/api/movies?genres=drama&metacritic=40&limit=1")
        .await
        .json()["items"][0]["id"]
        .as_i64()
        .unwrap();
    let other = b.get(top).await.json()["items"][0]["id"].as_i64().unwrap();
    let watched = [
        top.to_owned(),
        "/api/movies/facets/rating?genres=drama".to_owned(),
        "/api/movies/facets/year?genres=drama".to_owned(),
        format!("/api/movies/{other}"),
        format!("/api/movies/{low}"),
        "/api/movies?genres=drama&sort=year&limit=5".to_owned(),
    ];
    let expect = |changed: &[usize]| -> Vec<&'static str> {
        (0..watched.len())
            .map(|i| if changed.contains(&i) { "MISS" } else { "HIT" })
            .collect()
    };
    for uri in &watched {
        b.get(uri).await;
    }
    // A new year for the low drama: the year facets and the oldest-first page (if it moves onto
    // it) change; the top page and the rating facets do not. Its item changes too, but the write
    // itself kept the new one (`Cache::keep_written`): a HIT, equal to the database's answer.
    let patched = a
        .send_json(
            "PATCH",
            &format!("/api/movies/{low}"),
            &json!({"year": 1900}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let fresh = instance(&pg, &redis, &common::unique_prefix());
    let mut seen = Vec::new();
    for uri in &watched {
        let served = b.get(uri).await;
        let truth = fresh.get(uri).await;
        assert_eq!(
            served.body, truth.body,
            "{uri} must equal the database's answer"
        );
        seen.push(header(&served, "x-cache").to_owned());
    }
    assert_eq!(seen, expect(&[2, 5]), "{watched:?}");
}
