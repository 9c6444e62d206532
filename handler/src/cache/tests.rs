//! The cache's rules, on the in-process store, on the real Redis at 127.0.0.1:6379 (or
//! `REDIS_URL`) and on a three-node Redis Cluster the suite starts itself: exact invalidation,
//! the stale-store race across two instances, and one computation per cold key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::datasets::parse_declaration;

#[path = "../../tests/common/redis_servers.rs"]
#[allow(dead_code)] // the standalone server helpers serve the integration tests
mod redis_servers;
#[path = "../../tests/common/skip.rs"]
mod skip;

/// A fresh key prefix per test, so tests sharing one Redis never see each other's keys.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{test}-{}-{nanos}", std::process::id())
}

/// The Redis to test against, if one answers; under `CI=true` a missing Redis fails the test.
pub(crate) async fn test_redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let reachable = async {
        let client = ::redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), reachable).await {
        Ok(Some(_)) => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis is not reachable at {url}")
        }
        _ => {
            eprintln!(
                "SKIPPED the Redis half of this test: no Redis at {url} (install redis-server)"
            );
            None
        }
    }
}

/// Two handles on one shared cache, as two instances would have: the same object in process
/// mode, two clients of the same Redis keys otherwise.
async fn instances(test: &str) -> Vec<(&'static str, Arc<Cache>, Arc<Cache>)> {
    let ttl = Duration::from_secs(60);
    let local = Arc::new(Cache::in_process("t", ttl, DEFAULT_MAX_BYTES));
    let mut out = vec![("in-process", local.clone(), local)];
    if let Some(url) = test_redis_url().await {
        let prefix = unique_prefix(test);
        out.push((
            "redis",
            Arc::new(Cache::with_redis(&url, &prefix, ttl, DEFAULT_MAX_BYTES)),
            Arc::new(Cache::with_redis(&url, &prefix, ttl, DEFAULT_MAX_BYTES)),
        ));
    }
    if let Some(nodes) = redis_servers::RedisCluster::shared() {
        let prefix = unique_prefix(test);
        out.push((
            "cluster",
            Arc::new(Cache::with_redis(nodes, &prefix, ttl, DEFAULT_MAX_BYTES)),
            Arc::new(Cache::with_redis(nodes, &prefix, ttl, DEFAULT_MAX_BYTES)),
        ));
    }
    out
}

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

fn json_body() -> Result<Computed, ()> {
    Ok(Computed::json(b"[]".to_vec()))
}

/// Reads `raw` through the cache and says how it was answered.
async fn outcome(cache: &Cache, ds: &Dataset, raw: &str) -> Outcome {
    let query = Query::parse(ds, QueryKind::List, raw).unwrap();
    let key = cache.key(ds, &Subject::Query(&query));
    cache
        .get_or_compute(ds, Subject::Query(&query), key, || async { json_body() })
        .await
        .unwrap()
        .1
}

/// Reads item `id` through the cache and says how it was answered.
async fn item_outcome(cache: &Cache, ds: &Dataset, id: i64) -> Outcome {
    let key_value = Value::Integer(id);
    let key = cache.key(ds, &Subject::Item(&key_value));
    cache
        .get_or_compute(ds, Subject::Item(&key_value), key, || async { json_body() })
        .await
        .unwrap()
        .1
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

#[test]
fn keys_stay_short_whatever_the_query_and_count_against_the_budget() {
    let ds = movies();
    let cache = Cache::in_process("smartcache", Duration::from_secs(60), 1 << 20);
    let long = |title: &str| {
        let raw = format!("title={title}&genres=drama&genres=war");
        let query = Query::parse(&ds, QueryKind::List, &raw).unwrap();
        cache.key(&ds, &Subject::Query(&query))
    };
    let (a, b) = (
        long(&"é".repeat(299)),
        long(&format!("{}x", "é".repeat(298))),
    );
    assert!(a.len() <= 300 && b.len() <= 300, "{} {}", a.len(), b.len());
    // A question written to read like another's cut key is longer than any cut key's text.
    let text = a.split_once(":list:").unwrap().1;
    assert!(text.len() > MAX_READABLE_QUERY, "{}", text.len());
    assert_ne!(a, b, "different questions, different keys");
    assert!(
        a.starts_with("smartcache:movies:list:genres=drama&genres=war&limit=100&title=é"),
        "{a}"
    );
    assert!(a.contains("~sha256="), "{a}");
    let short = Query::parse(&ds, QueryKind::List, "genres=drama").unwrap();
    assert!(!cache.key(&ds, &Subject::Query(&short)).contains("sha256"));

    // A key's bytes count with its entry's.
    let store = memory::MemoryStore::new(1 << 20);
    let entry = Arc::new(CachedResponse::new(
        b"{}",
        "application/json",
        Duration::ZERO,
        Stamp::default(),
        Duration::from_secs(60),
    ));
    store.insert(
        "k".repeat(10_000),
        Arc::clone(&entry),
        Duration::from_secs(60),
    );
    let (_, bytes) = store.usage();
    assert!(bytes >= 10_000 + entry.size(), "{bytes}");
}

/// The write log keeps what freshness checks read (key, filterable and sortable columns), so a
/// big value elsewhere in the row costs nothing; a write whose record would still be too big
/// ends every answer of the dataset instead of being remembered.
#[tokio::test]
async fn the_write_log_holds_what_freshness_needs_and_is_bounded() {
    let ds = movies();
    let director = ds.column_index("director").unwrap();
    for (backend, reader, writer) in instances("bounded-log").await {
        assert_eq!(outcome(&reader, &ds, "genres=comedy").await, Outcome::Miss);
        // A large value in a column nothing filters on: recorded, and exactly.
        let mut row = film(&ds, 1, &["Drama"], 2015);
        row[director] = Value::Text("d".repeat(100_000));
        writer.record_write(&ds, None, Some(row)).await.unwrap();
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Hit,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "genres=drama").await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "genres=drama").await,
            Outcome::Hit,
            "{backend}"
        );
        // A list of 20,000 genres: too large to record, so the whole dataset's answers end.
        let many: Vec<String> = (0..20_000).map(|i| format!("g{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        writer
            .record_write(&ds, None, Some(film(&ds, 2, &many, 2015)))
            .await
            .unwrap();
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Hit,
            "{backend}"
        );
    }
    let record = RecordedWrite::encode_payload(&[RowChange {
        old: None,
        new: Some(freshness_columns(&ds, {
            let mut row = film(&ds, 1, &["Drama"], 2015);
            row[director] = Value::Text("d".repeat(100_000));
            row
        })),
    }]);
    assert!(record.len() < 300, "{} bytes: {record}", record.len());
}

#[tokio::test]
async fn a_write_ends_exactly_the_answers_it_could_change() {
    let ds = movies();
    for (backend, reader, writer) in instances("exact").await {
        let lists = [
            "genres=drama",
            "genres=comedy",
            "",
            "year.gte=2010",
            "year.lt=1950",
        ];
        for raw in lists {
            assert_eq!(
                outcome(&reader, &ds, raw).await,
                Outcome::Miss,
                "{backend} {raw}"
            );
            assert_eq!(
                outcome(&reader, &ds, raw).await,
                Outcome::Hit,
                "{backend} {raw}"
            );
        }
        writer
            .record_write(&ds, None, Some(film(&ds, 1, &["Drama"], 2015)))
            .await
            .unwrap();
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Hit,
            "{backend}: a drama leaves comedies alone"
        );
        assert_eq!(
            outcome(&reader, &ds, "year.lt=1950").await,
            Outcome::Hit,
            "{backend}: a 2015 film leaves the 1940s alone"
        );
        for raw in ["genres=drama", "", "year.gte=2010"] {
            assert_eq!(
                outcome(&reader, &ds, raw).await,
                Outcome::Miss,
                "{backend} {raw}"
            );
        }
        // Moving a film from Drama to Comedy ends both lists, and only them.
        writer
            .record_write(
                &ds,
                Some(film(&ds, 1, &["Drama"], 2015)),
                Some(film(&ds, 1, &["Comedy"], 2015)),
            )
            .await
            .unwrap();
        assert_eq!(
            outcome(&reader, &ds, "genres=drama").await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "year.lt=1950").await,
            Outcome::Hit,
            "{backend}"
        );
    }
}

#[tokio::test]
async fn an_item_ends_only_with_a_write_to_its_row() {
    let ds = movies();
    for (backend, reader, writer) in instances("item").await {
        assert_eq!(
            item_outcome(&reader, &ds, 7).await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            item_outcome(&reader, &ds, 8).await,
            Outcome::Miss,
            "{backend}"
        );
        writer
            .record_write(&ds, Some(film(&ds, 7, &["Drama"], 2000)), None)
            .await
            .unwrap();
        assert_eq!(
            item_outcome(&reader, &ds, 7).await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            item_outcome(&reader, &ds, 8).await,
            Outcome::Hit,
            "{backend}"
        );
    }
}

/// The classic race: a reader misses and reads the old row; another instance commits and records
/// the write; the reader then stores the old answer. That answer must never be served.
#[tokio::test]
async fn an_answer_computed_before_a_write_is_never_served_after_it() {
    let ds = movies();
    for (backend, reader, writer) in instances("race").await {
        let drama = Query::parse(&ds, QueryKind::List, "genres=drama").unwrap();
        let key = reader.key(&ds, &Subject::Query(&drama));
        let (_, outcome) = reader
            .get_or_compute(&ds, Subject::Query(&drama), key.clone(), || async {
                // The database answered with the old rows; now the write lands and is recorded.
                writer
                    .record_write(&ds, None, Some(film(&ds, 9, &["Drama"], 2020)))
                    .await
                    .unwrap();
                Ok::<_, ()>(Computed::json(b"old".to_vec()))
            })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Miss);
        for cache in [&reader, &writer] {
            let (entry, _) = cache
                .get_or_compute(&ds, Subject::Query(&drama), key.clone(), || async {
                    Ok::<_, ()>(Computed::json(b"new".to_vec()))
                })
                .await
                .unwrap();
            assert_eq!(
                entry.plain_body().as_deref(),
                Some(&b"new"[..]),
                "{backend}: the old answer was served"
            );
        }
    }
}

#[tokio::test]
async fn concurrent_misses_of_one_key_compute_once() {
    let ds = Arc::new(movies());
    for (backend, cache, _) in instances("flight").await {
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
                let compute = || async {
                    computations.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    json_body()
                };
                cache
                    .get_or_compute(&ds, Subject::Query(&query), key, compute)
                    .await
                    .unwrap()
                    .1
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(computations.load(Ordering::SeqCst), 1, "{backend}");
    }
}

#[tokio::test]
async fn errors_are_not_cached_and_purge_ends_everything() {
    let ds = movies();
    for (backend, reader, writer) in instances("purge").await {
        let q = Query::parse(&ds, QueryKind::List, "").unwrap();
        let key = reader.key(&ds, &Subject::Query(&q));
        let failed = reader
            .get_or_compute(&ds, Subject::Query(&q), key, || async {
                Err::<Computed, _>("db down")
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(outcome(&reader, &ds, "").await, Outcome::Miss, "{backend}");
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Miss,
            "{backend}"
        );
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Hit,
            "{backend}"
        );
        writer.purge("movies").await.unwrap();
        assert_eq!(
            outcome(&reader, &ds, "genres=comedy").await,
            Outcome::Miss,
            "{backend}"
        );
    }
}

#[tokio::test]
async fn a_dead_redis_means_bypass_not_failure() {
    let ds = movies();
    // Nothing listens on port 9 (discard).
    let cache = Cache::with_redis(
        "redis://127.0.0.1:9",
        "dead",
        Duration::from_secs(60),
        DEFAULT_MAX_BYTES,
    );
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(outcome(&cache, &ds, "genres=drama").await, Outcome::Bypass);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the breaker keeps a dead Redis cheap: {:?}",
        started.elapsed()
    );
    assert!(
        cache.record_write(&ds, None, None).await.is_err(),
        "a write learns that it was not recorded"
    );
}

#[test]
fn the_store_stays_within_its_byte_budget() {
    let store = memory::MemoryStore::new(4096);
    for i in 0..100 {
        let body = vec![b'x'; 3000 + i];
        let entry = Arc::new(CachedResponse::new(
            body.as_slice(),
            "application/json",
            Duration::ZERO,
            Stamp::default(),
            Duration::from_secs(60),
        ));
        store.insert(format!("k{i}"), entry, Duration::from_secs(60));
    }
    let (entries, bytes) = store.usage();
    assert!(
        bytes <= 4096 && entries >= 1,
        "{entries} entries, {bytes} bytes"
    );
}

/// Answers in steady use survive a stream of one-off answers larger than the whole budget (with
/// first-in-first-out, every one-off pushed them out: a key asked for every few hundred requests
/// never hit).
#[test]
fn answers_in_steady_use_outlive_a_scan_of_one_off_answers() {
    let entry = || {
        Arc::new(CachedResponse::new(
            [b'x'; 2000],
            "application/json",
            Duration::ZERO,
            Stamp::default(),
            Duration::from_secs(60),
        ))
    };
    let store = memory::MemoryStore::new(100 * 2600);
    let (mut hits, mut asks) = (0, 0);
    for round in 0..30 {
        for hot in 0..20 {
            let key = format!("hot{hot}");
            asks += usize::from(round >= 5);
            match store.get(&key) {
                Some(_) => hits += usize::from(round >= 5),
                None => store.insert(key, entry(), Duration::from_secs(60)),
            }
        }
        // 200 answers asked for once each: twice what the budget holds.
        for scan in 0..200 {
            let key = format!("once{round}-{scan}");
            if store.get(&key).is_none() {
                store.insert(key, entry(), Duration::from_secs(60));
            }
        }
        let _ = store.usage(); // let pending evictions run, as time would
    }
    assert!(hits * 10 >= asks * 9, "{hits} hits of {asks}");
    let (_, bytes) = store.usage();
    assert!(bytes <= 100 * 2600, "{bytes} bytes");
}

/// A large answer (gzipped as it streamed) keeps its plain body once a client without gzip asks
/// for it, and the memory tier counts the bytes it then holds, evicting to stay in its budget.
#[test]
fn a_plain_body_decompressed_later_is_counted() {
    let body: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let (gzip, crc) = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&body).unwrap();
        let mut check = flate2::Crc::new();
        check.update(&body);
        (encoder.finish().unwrap(), check.sum())
    };
    let large = || {
        Arc::new(CachedResponse::from_gzip(
            bytes::Bytes::from(gzip.clone()),
            body.len() as u64,
            crc,
            "application/json",
            Duration::ZERO,
            Stamp::default(),
            Duration::from_secs(60),
        ))
    };
    let store = memory::MemoryStore::new(64 << 20);
    let entry = large();
    store.insert("export".into(), Arc::clone(&entry), Duration::from_secs(60));
    let (_, before) = store.usage();
    assert!(
        before < body.len(),
        "only the gzip counted so far: {before}"
    );
    assert_eq!(entry.plain_body().as_deref(), Some(&body[..]));
    let again = store.get("export").unwrap();
    assert!(
        Arc::ptr_eq(&again, &entry),
        "the same copy, not decompressed again"
    );
    let (_, after) = store.usage();
    assert!(after >= before + body.len(), "{before} -> {after}");
    // A budget that cannot hold both: the grown entry is evicted rather than exceeding it.
    let small = memory::MemoryStore::new(before + 1024);
    let entry = large();
    small.insert("export".into(), Arc::clone(&entry), Duration::from_secs(60));
    let _ = entry.plain_body();
    let _ = small.get("export");
    assert!(small.usage().1 <= before + 1024);
}

#[test]
fn entries_round_trip_and_have_stable_etags() {
    let body = br#"{"items":[]}"#;
    let a = CachedResponse::new(
        body,
        "application/json",
        Duration::from_micros(1234),
        Stamp { epoch: 2, seq: 5 },
        Duration::from_secs(60),
    );
    let b = CachedResponse::new(
        body,
        "application/json",
        Duration::ZERO,
        Stamp::default(),
        Duration::ZERO,
    );
    assert_eq!(a.plain_body().as_deref(), Some(&body[..]));
    assert_eq!(a.etag, b.etag);
    assert!(a.etag.starts_with("\"12-"), "{}", a.etag);
    let decoded = CachedResponse::decode(a.encode()).unwrap();
    assert_eq!(
        (decoded.etag.as_str(), decoded.stamp, decoded.compute_time),
        (a.etag.as_str(), a.stamp, a.compute_time)
    );
    assert_eq!(decoded.plain_body().as_deref(), Some(&body[..]));
    assert!(CachedResponse::decode(b"garbage".to_vec()).is_none());
    // Bytes from Redis are input: a truncated value, or one whose body is not what its header
    // says, is no entry (a miss, recomputed and overwritten), never a panic.
    let encoded = a.encode();
    for cut in [1, 8, encoded.len() / 2, encoded.len() - 1] {
        assert!(
            CachedResponse::decode(encoded[..cut].to_vec()).is_none(),
            "cut at {cut}"
        );
    }
    let mut flipped = encoded.clone();
    let last = flipped.len() - 12;
    flipped[last] ^= 0xff;
    assert!(CachedResponse::decode(flipped).is_none(), "a changed byte");
    let foreign = [b"SC1 {\"etag\":\"\\\"5-00000000\\\"\",\"content_type\":\"x\",\"epoch\":1,\"seq\":1,\"compute_us\":1,\"expires_at_ms\":1}\n".as_slice(), b"not gzip"].concat();
    assert!(CachedResponse::decode(foreign).is_none(), "not gzip at all");
}

#[test]
fn early_refresh_grows_as_expiry_nears() {
    let slow = |ttl_ms: u64| {
        CachedResponse::new(
            b"x",
            "application/json",
            Duration::from_millis(100),
            Stamp::default(),
            Duration::from_millis(ttl_ms),
        )
    };
    let far = slow(60_000);
    let near = slow(50);
    let refreshes = |entry: &CachedResponse| {
        (1..=1000)
            .filter(|i| entry.should_refresh_early(*i as f64 / 1000.0))
            .count()
    };
    assert_eq!(
        refreshes(&far),
        0,
        "a minute away, nobody refreshes a 100 ms answer"
    );
    let share = refreshes(&near);
    assert!(
        share > 300 && share < 1000,
        "50 ms before expiry some, not all, refresh: {share}"
    );
}

/// A freshness check on Redis reads the write log from the record after the seq it checked
/// through, whatever landed after its position was read. Asking Redis for "the newest n" (n the
/// writes up to that position) missed the oldest wanted as soon as one more write had landed:
/// under a stream of writes most checks failed, and fresh answers were computed again.
#[tokio::test]
async fn a_log_read_starts_after_the_checked_seq_whatever_landed_since() {
    let Some(url) = test_redis_url().await else {
        return;
    };
    let dataset = movies();
    let store = redis::RedisStore::new(&url, &unique_prefix("log-read"));
    let record = || async {
        let write = store::NewWrite {
            rows: Vec::new(),
            everything: true,
            payload: fresh::EVERYTHING.to_owned(),
            keys: Vec::new(),
        };
        store
            .record_write(&dataset.name, &write, fresh::WRITE_LOG_CAPACITY)
            .await
            .unwrap();
    };
    for _ in 0..10 {
        record().await;
    }
    let position = store.position(&dataset.name).await.unwrap();
    for _ in 0..5 {
        record().await; // after the reader's position
    }
    let checked = position.seq - 4;
    let writes = store
        .writes_since(&dataset, position.epoch, checked, position.seq)
        .await
        .unwrap()
        .expect("every record after the checked seq is in the log");
    let seqs: Vec<u64> = writes.iter().map(|w| w.seq).collect();
    let expected: Vec<u64> = (checked + 1..=position.seq + 5).collect();
    assert_eq!(seqs, expected);
}

/// An item's freshness check asks the log's index of keys; it must answer as the walk over the
/// records it replaced does, for every seq an entry may have been checked through, on every
/// store (the second instance reads Redis's log into a copy of its own).
#[tokio::test]
async fn the_index_of_keys_answers_as_the_walk_over_the_writes_does() {
    let dataset = movies();
    for (name, writer, reader) in instances("key-index").await {
        let write = |old: Option<Vec<Value>>, new: Option<Vec<Value>>| {
            let writer = writer.clone();
            let dataset = &dataset;
            async move {
                let write = writer.begin_write(dataset, old, new).await.unwrap();
                writer.end_write(write).await.unwrap();
            }
        };
        write(None, Some(film(&dataset, 1, &["Drama"], 2000))).await;
        write(
            Some(film(&dataset, 1, &["Drama"], 2000)),
            Some(film(&dataset, 1, &["Drama"], 2001)),
        )
        .await;
        write(None, Some(film(&dataset, 2, &["Comedy"], 1990))).await;
        write(Some(film(&dataset, 1, &["Drama"], 2001)), None).await;
        write(None, Some(film(&dataset, 3, &[], 1980))).await;
        let position = reader.store.position(&dataset.name).await.unwrap();
        for key in [1, 2, 3, 4] {
            let key = Value::Integer(key);
            for seq in 0..position.seq {
                let walked = reader
                    .store
                    .writes_since(&dataset, position.epoch, seq, position.seq)
                    .await
                    .unwrap()
                    .map(|writes| {
                        writes.iter().any(|write| {
                            fresh::changes(&dataset, &Subject::Item(&key), None, write)
                        })
                    });
                let indexed = reader
                    .store
                    .key_touched_since(
                        &dataset,
                        position.epoch,
                        seq,
                        position.seq,
                        &records::RecordKey::of(&key),
                    )
                    .await
                    .unwrap();
                assert_eq!(indexed, walked, "{name}: key {key:?} after seq {seq}");
                assert!(indexed.is_some(), "{name}: every write is remembered");
            }
        }
    }
}

/// A write's answer may be kept (`Cache::keep_written`) only at the position of a record made
/// while no other write of its row (nor of many rows) was in flight, and that stood through its
/// end: a row
/// changed A→B by a write whose early record waits while two others change it to C and back to
/// A must not leave A's answer fresh; nor a write made while an import's change of everything
/// is in flight (the swap may replace the row after the write commits).
#[tokio::test]
async fn a_kept_answer_is_stamped_only_by_a_write_recorded_alone() {
    let ds = movies();
    for (backend, writer, reader) in instances("kept").await {
        let (a, b, c) = (
            film(&ds, 9, &["Drama"], 2000),
            film(&ds, 9, &["Drama"], 2001),
            film(&ds, 9, &["Drama"], 2002),
        );
        let begin = |old: Option<Vec<Value>>, new: Vec<Value>| {
            let writer = writer.clone();
            let ds = &ds;
            async move { writer.begin_write(ds, old, Some(new)).await.unwrap() }
        };
        let keep = |stamp| writer.keep_written(&ds, &Value::Integer(9), stamp, b"{}".to_vec());
        let w1 = begin(Some(a.clone()), b).await;
        let w2 = begin(Some(a.clone()), c.clone()).await;
        assert_eq!(writer.end_write(w2).await.unwrap(), None, "{backend}");
        let w3 = begin(Some(c), a.clone()).await;
        assert_eq!(writer.end_write(w3).await.unwrap(), None, "{backend}");
        let stamp = writer.end_write(w1).await.unwrap().expect("recorded alone");
        keep(stamp).await;
        // Kept at w1's position, before the two writes after it: not fresh.
        assert_eq!(
            item_outcome(&reader, &ds, 9).await,
            Outcome::Miss,
            "{backend}"
        );

        let import = writer
            .begin_change_of_everything(&ds, Duration::from_secs(600))
            .await
            .unwrap();
        let during = begin(Some(a.clone()), film(&ds, 9, &[], 2003)).await;
        assert_eq!(writer.end_write(during).await.unwrap(), None, "{backend}");
        writer.end_write(import).await.unwrap();

        // Alone for its row (another row's write in flight does not count): kept, and a hit on
        // the other instance until the row's next write.
        let elsewhere = begin(None, film(&ds, 10, &[], 1990)).await;
        let alone = begin(Some(a.clone()), film(&ds, 9, &[], 2004)).await;
        let stamp = writer
            .end_write(alone)
            .await
            .unwrap()
            .expect("recorded alone");
        writer.end_write(elsewhere).await.unwrap();
        keep(stamp).await;
        assert_eq!(
            item_outcome(&reader, &ds, 9).await,
            Outcome::Hit,
            "{backend}"
        );
        writer.record_write(&ds, Some(a), None).await.unwrap();
        assert_eq!(
            item_outcome(&reader, &ds, 9).await,
            Outcome::Miss,
            "{backend}"
        );
    }
}
