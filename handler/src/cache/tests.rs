//! The cache's rules, on the in-process store: exact invalidation, the stale-store race, and one
//! computation per cold key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::datasets::parse_declaration;

fn movies() -> Dataset {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/movies.toml");
    parse_declaration(&std::fs::read_to_string(path).unwrap(), None).unwrap()
}

fn film(ds: &Dataset, id: i64, genres: &[&str], year: i64) -> Vec<Value> {
    let mut row = vec![Value::Null; ds.columns.len()];
    row[ds.key.column] = Value::Integer(id);
    row[ds.column_index("genres").unwrap()] =
        Value::List(genres.iter().map(|g| g.to_string()).collect());
    row[ds.column_index("year").unwrap()] = Value::Integer(year);
    row
}

/// Fills the cache for `raw` and reports whether the next read is a hit.
async fn warm(cache: &Cache, ds: &Dataset, raw: &str) -> Query {
    let query = Query::parse(ds, QueryKind::List, raw).unwrap();
    let key = cache.key(ds, &Subject::Query(&query));
    cache
        .get_or_compute(ds, Subject::Query(&query), key, || async {
            Ok::<_, ()>((b"[]".to_vec(), "application/json"))
        })
        .await
        .unwrap();
    query
}

async fn outcome(cache: &Cache, ds: &Dataset, query: &Query) -> Outcome {
    let key = cache.key(ds, &Subject::Query(query));
    let (_, outcome) = cache
        .get_or_compute(ds, Subject::Query(query), key, || async {
            Ok::<_, ()>((b"[]".to_vec(), "application/json"))
        })
        .await
        .unwrap();
    outcome
}

#[test]
fn keys_are_readable_and_canonical() {
    let ds = movies();
    let cache = Cache::in_process("smartcache", Duration::from_secs(60), DEFAULT_MAX_BYTES);
    let q = Query::parse(&ds, QueryKind::List, "year.gte=2000&genres=Drama").unwrap();
    assert_eq!(
        cache.key(&ds, &Subject::Query(&q)),
        "smartcache:movies:list:genres=drama&limit=100&year.gte=2000"
    );
    assert_eq!(
        cache.key(&ds, &Subject::Item(&Value::Integer(7))),
        "smartcache:movies:item:7"
    );
}

#[tokio::test]
async fn a_write_ends_exactly_the_answers_it_could_change() {
    let ds = movies();
    let cache = Cache::in_process("t", Duration::from_secs(60), DEFAULT_MAX_BYTES);
    let drama = warm(&cache, &ds, "genres=drama").await;
    let comedy = warm(&cache, &ds, "genres=comedy").await;
    let all = warm(&cache, &ds, "").await;
    let recent = warm(&cache, &ds, "year.gte=2010").await;
    let old = warm(&cache, &ds, "year.lt=1950").await;
    for q in [&drama, &comedy, &all, &recent, &old] {
        assert_eq!(outcome(&cache, &ds, q).await, Outcome::Hit);
    }
    cache.record_write("movies", None, Some(film(&ds, 1, &["Drama"], 2015)));
    assert_eq!(
        outcome(&cache, &ds, &comedy).await,
        Outcome::Hit,
        "a drama leaves comedies alone"
    );
    assert_eq!(
        outcome(&cache, &ds, &old).await,
        Outcome::Hit,
        "a 2015 film leaves the 1940s alone"
    );
    assert_eq!(outcome(&cache, &ds, &drama).await, Outcome::Miss);
    assert_eq!(outcome(&cache, &ds, &all).await, Outcome::Miss);
    assert_eq!(outcome(&cache, &ds, &recent).await, Outcome::Miss);
    // Moving a film from Drama to Comedy ends both lists.
    cache.record_write(
        "movies",
        Some(film(&ds, 1, &["Drama"], 2015)),
        Some(film(&ds, 1, &["Comedy"], 2015)),
    );
    assert_eq!(outcome(&cache, &ds, &drama).await, Outcome::Miss);
    assert_eq!(outcome(&cache, &ds, &comedy).await, Outcome::Miss);
    assert_eq!(outcome(&cache, &ds, &old).await, Outcome::Hit);
}

/// Reads item `id` through the cache and says how it was answered.
async fn item_outcome(cache: &Cache, ds: &Dataset, id: i64) -> Outcome {
    let key_value = Value::Integer(id);
    let key = cache.key(ds, &Subject::Item(&key_value));
    let compute = || async { Ok::<_, ()>((b"{}".to_vec(), "application/json")) };
    cache
        .get_or_compute(ds, Subject::Item(&key_value), key, compute)
        .await
        .unwrap()
        .1
}

#[tokio::test]
async fn an_item_ends_only_with_a_write_to_its_row() {
    let ds = movies();
    let cache = Cache::in_process("t", Duration::from_secs(60), DEFAULT_MAX_BYTES);
    assert_eq!(item_outcome(&cache, &ds, 7).await, Outcome::Miss);
    assert_eq!(item_outcome(&cache, &ds, 8).await, Outcome::Miss);
    cache.record_write("movies", Some(film(&ds, 7, &["Drama"], 2000)), None);
    assert_eq!(item_outcome(&cache, &ds, 7).await, Outcome::Miss);
    assert_eq!(item_outcome(&cache, &ds, 8).await, Outcome::Hit);
}

/// The classic race: a reader misses and reads the old row; the writer commits and records the
/// write; the reader then stores the old answer. That answer must never be served.
#[tokio::test]
async fn an_answer_computed_before_a_write_is_never_served_after_it() {
    let ds = movies();
    let cache = Cache::in_process("t", Duration::from_secs(60), DEFAULT_MAX_BYTES);
    let drama = Query::parse(&ds, QueryKind::List, "genres=drama").unwrap();
    let key = cache.key(&ds, &Subject::Query(&drama));
    let (_, outcome) = cache
        .get_or_compute(&ds, Subject::Query(&drama), key.clone(), || async {
            // The database answered with the old rows; now the write lands.
            cache.record_write("movies", None, Some(film(&ds, 9, &["Drama"], 2020)));
            Ok::<_, ()>((b"old".to_vec(), "application/json"))
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Miss);
    let (entry, outcome) = cache
        .get_or_compute(&ds, Subject::Query(&drama), key, || async {
            Ok::<_, ()>((b"new".to_vec(), "application/json"))
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Miss,
        "the old answer was stored but must not be served"
    );
    assert_eq!(entry.plain_body().as_ref(), b"new");
}

#[tokio::test]
async fn concurrent_misses_of_one_key_compute_once() {
    let ds = Arc::new(movies());
    let cache = Arc::new(Cache::in_process(
        "t",
        Duration::from_secs(60),
        DEFAULT_MAX_BYTES,
    ));
    let computations = Arc::new(AtomicUsize::new(0));
    let query = Arc::new(Query::parse(&ds, QueryKind::List, "genres=drama").unwrap());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (ds, cache, computations, query) = (
            ds.clone(),
            cache.clone(),
            computations.clone(),
            query.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let key = cache.key(&ds, &Subject::Query(&query));
            cache
                .get_or_compute(&ds, Subject::Query(&query), key, || async {
                    computations.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>((b"[]".to_vec(), "application/json"))
                })
                .await
                .unwrap()
                .0
                .etag
                .clone()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(computations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn errors_are_not_cached_and_purge_ends_everything() {
    let ds = movies();
    let cache = Cache::in_process("t", Duration::from_secs(60), DEFAULT_MAX_BYTES);
    let q = Query::parse(&ds, QueryKind::List, "").unwrap();
    let key = cache.key(&ds, &Subject::Query(&q));
    let failed = cache
        .get_or_compute(&ds, Subject::Query(&q), key.clone(), || async {
            Err::<(Vec<u8>, &str), _>("db down")
        })
        .await;
    assert!(failed.is_err());
    let comedy = warm(&cache, &ds, "genres=comedy").await;
    assert_eq!(outcome(&cache, &ds, &comedy).await, Outcome::Hit);
    cache.purge("movies");
    assert_eq!(outcome(&cache, &ds, &comedy).await, Outcome::Miss);
}

#[test]
fn the_store_stays_within_its_byte_budget() {
    let store = memory::MemoryStore::new(4096);
    for i in 0..100 {
        let body = vec![b'x'; 3000 + i];
        let entry = Arc::new(CachedResponse::new(
            &body,
            "application/json",
            Duration::ZERO,
            Stamp::default(),
        ));
        store.insert(format!("k{i}"), entry, Duration::from_secs(60));
    }
    let (entries, bytes) = store.usage();
    assert!(
        bytes <= 4096 && entries >= 1,
        "{entries} entries, {bytes} bytes"
    );
    assert!(store.get("k99").is_some(), "the newest entry stays");
}

#[test]
fn entries_round_trip_and_have_stable_etags() {
    let body = br#"{"items":[]}"#;
    let a = CachedResponse::new(body, "application/json", Duration::ZERO, Stamp::default());
    let b = CachedResponse::new(body, "application/json", Duration::ZERO, Stamp::default());
    assert_eq!(a.plain_body().as_ref(), body);
    assert_eq!(a.etag, b.etag);
    assert!(a.etag.starts_with("\"12-"), "{}", a.etag);
}
