//! Writes over HTTP, end to end: admin-only changes on SQLite with the in-process cache and on
//! PostgreSQL with Redis, each seen by a second instance; exactly the affected cache entries end;
//! bad input never a 500 and never a changed row; concurrent writers and readers on two instances
//! never see data older than the last acknowledged write.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::{TestApp, TestResponse};
use handler::cache::Cache;
use handler::datasets::{Dataset, Value};
use handler::storage::{
    Change, CommitGate, Committing, Storage, Ungated, UserLookup, UserUpdate, Written,
};
use serde_json::json;

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

fn ids(response: &TestResponse) -> Vec<i64> {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_i64().unwrap())
        .collect()
}

fn export_ids(response: &TestResponse) -> Vec<i64> {
    assert_eq!(response.status, 200);
    response
        .text()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// Beyond every id of the bundled data (the largest is 114,397,746), so it sorts first by `-id`.
const FILM: i64 = 900_000_001;

#[tokio::test]
async fn an_admin_write_ends_exactly_the_answers_it_changes_on_every_instance() {
    for (backend, a, b) in common::movies_backends().await {
        let admin = a.as_admin().await;
        let drama = "/api/movies?genres=drama&sort=-id&limit=5";
        let comedy = "/api/movies?genres=comedy&sort=-id&limit=5";
        let item = format!("/api/movies/{FILM}");
        for uri in [drama, comedy] {
            assert_eq!(
                header(&b.get(uri).await, "x-cache"),
                "MISS",
                "{backend} {uri}"
            );
            assert_eq!(
                header(&b.get(uri).await, "x-cache"),
                "HIT",
                "{backend} {uri}"
            );
        }
        assert_eq!(b.get(&item).await.status, 404, "{backend}");

        let film =
            json!({"id": FILM, "title": "Smartcache: The Film", "year": 2026, "genres": ["Drama"]});
        let created = admin.send_json("POST", "/api/movies", &film).await;
        assert_eq!(created.status, 201, "{backend}: {}", created.text());
        assert_eq!(header(&created, "location"), item, "{backend}");
        assert_eq!(created.json()["genres"], json!(["Drama"]), "{backend}");

        // The other instance: the drama list and the item show it, the comedy list stays a hit.
        let listed = b.get(drama).await;
        assert_eq!(header(&listed, "x-cache"), "MISS", "{backend}");
        assert_eq!(ids(&listed)[0], FILM, "{backend}");
        assert_eq!(header(&b.get(comedy).await, "x-cache"), "HIT", "{backend}");
        assert_eq!(
            b.get(&item).await.json()["title"],
            "Smartcache: The Film",
            "{backend}"
        );
        let export = "/api/movies/export?genres=drama&format=ndjson";
        assert!(
            export_ids(&b.get(export).await).contains(&FILM),
            "{backend}"
        );

        // Drama → Comedy ends both lists.
        let moved = admin
            .send_json("PATCH", &item, &json!({"genres": ["Comedy"]}))
            .await;
        assert_eq!(moved.status, 200, "{backend}: {}", moved.text());
        let drama_now = b.get(drama).await;
        assert_eq!(header(&drama_now, "x-cache"), "MISS", "{backend}");
        assert!(!ids(&drama_now).contains(&FILM), "{backend}");
        let comedy_now = b.get(comedy).await;
        assert_eq!(header(&comedy_now, "x-cache"), "MISS", "{backend}");
        assert_eq!(ids(&comedy_now)[0], FILM, "{backend}");
        assert_eq!(
            b.get(&item).await.json()["genres"],
            json!(["Comedy"]),
            "{backend}"
        );
        assert!(
            !export_ids(&b.get(export).await).contains(&FILM),
            "{backend}"
        );

        // A replace keeps the key and sets every column.
        let replaced = admin
            .send_json(
                "PUT",
                &item,
                &json!({"title": "Renamed", "genres": ["Comedy", "War"]}),
            )
            .await;
        assert_eq!(replaced.status, 200, "{backend}: {}", replaced.text());
        assert_eq!(
            replaced.json()["year"],
            serde_json::Value::Null,
            "{backend}"
        );
        assert_eq!(b.get(&item).await.json()["title"], "Renamed", "{backend}");

        // Delete: gone from the item, the lists and the export.
        let deleted = admin.request("DELETE", &item).await;
        assert_eq!(deleted.status, 204, "{backend}");
        assert!(deleted.body.is_empty());
        assert_eq!(b.get(&item).await.status, 404, "{backend}");
        assert!(!ids(&b.get(comedy).await).contains(&FILM), "{backend}");
        let everything = export_ids(&b.get("/api/movies/export?format=ndjson").await);
        assert_eq!(everything.len(), 17_472, "{backend}");
        assert!(!everything.contains(&FILM), "{backend}");

        // The key is the row's identity: a second create with it is a conflict.
        assert_eq!(
            admin.send_json("POST", "/api/movies", &film).await.status,
            201
        );
        let again = admin.send_json("POST", "/api/movies", &film).await;
        assert_eq!(again.status, 409, "{backend}");
        assert_eq!(again.content_type(), "application/problem+json");
        assert_eq!(admin.request("DELETE", &item).await.status, 204);
        assert_eq!(
            admin.request("DELETE", &item).await.status,
            404,
            "{backend}"
        );
    }
}

/// A write keeps the answer about the row it wrote (`Cache::keep_written`): the row's next read,
/// on any instance, is a HIT, and that answer is byte for byte what the database gives once the
/// cache is emptied: for every kind of value a client can send (an integer for a float column,
/// text with spaces and accents, a list, a null), for a create, a patch and a replace. A write
/// made while an import's change of everything is in flight keeps nothing.
#[tokio::test]
async fn a_written_row_is_read_from_the_cache_exactly_as_the_database_gives_it() {
    const KEPT: i64 = 990_077;
    for (backend, a, b) in common::movies_backends().await {
        let admin = a.as_admin().await;
        let item = format!("/api/movies/{KEPT}");
        let created = json!({"id": KEPT, "title": "Kept", "year": 2026, "box_office": 12.5});
        let writes = [
            ("POST", "/api/movies".to_owned(), created),
            ("PATCH", item.clone(), json!({"metacritic": 77})),
            ("PATCH", item.clone(), json!({"box_office": 5})),
            ("PATCH", item.clone(), json!({"box_office": 1_234_567.25})),
            (
                "PATCH",
                item.clone(),
                json!({"title": "  Ünïcödé — «kept» title  "}),
            ),
            (
                "PATCH",
                item.clone(),
                json!({"genres": ["War", "Drama"], "director": "Ann Lee"}),
            ),
            (
                "PATCH",
                item.clone(),
                json!({"director": null, "year": null}),
            ),
            (
                "PUT",
                item.clone(),
                json!({"title": "Replaced", "countries": ["France"]}),
            ),
        ];
        for (method, uri, body) in writes {
            let written = admin.send_json(method, &uri, &body).await;
            assert!(
                matches!(written.status.as_u16(), 200 | 201),
                "{backend} {method} {body}: {}",
                written.text()
            );
            let kept = b.get(&item).await;
            assert_eq!(header(&kept, "x-cache"), "HIT", "{backend} {method} {body}");
            assert_eq!(kept.body, written.body, "{backend} {method} {body}");
            a.state.cache.purge("movies").await.unwrap();
            let truth = b.get(&item).await;
            assert_eq!(
                header(&truth, "x-cache"),
                "MISS",
                "{backend} {method} {body}"
            );
            assert_eq!(
                kept.text(),
                truth.text(),
                "{backend} {method} {body}: the kept answer must be the database's"
            );
            assert_eq!(header(&kept, "etag"), header(&truth, "etag"), "{backend}");
        }
        // While an import's change of everything is in flight, a write keeps nothing: the swap
        // may replace the row after the write commits, and what it puts there must be served.
        let movies = a.dataset("movies");
        let import = a
            .state
            .cache
            .begin_change_of_everything(&movies, std::time::Duration::from_secs(600))
            .await
            .unwrap();
        let during = admin
            .send_json("PATCH", &item, &json!({"metacritic": 11}))
            .await;
        assert_eq!(during.status, 200, "{backend}: {}", during.text());
        let metacritic = movies.column_index("metacritic").unwrap();
        let swapped = Change::Patch(Value::Integer(KEPT), vec![(metacritic, Value::Integer(22))]);
        a.state
            .storage
            .write(&movies, swapped, &Ungated)
            .await
            .unwrap();
        a.state.cache.end_write(import).await.unwrap();
        let after = b.get(&item).await;
        assert_eq!(
            after.json()["metacritic"],
            22,
            "{backend}: the database's row"
        );
        assert_eq!(admin.request("DELETE", &item).await.status, 204);
        assert_eq!(b.get(&item).await.status, 404, "{backend}");
    }
}

/// A dataset whose key is generated (flights) gets the next key from the server.
#[tokio::test]
async fn a_generated_key_comes_from_the_server() {
    let catalog = common::catalog();
    let app = TestApp::new(common::open(&common::sqlite_url()), catalog)
        .as_admin()
        .await;
    let flight = json!({"year": 2013, "month": 1, "day": 1, "carrier": "UA", "origin": "EWR", "dest": "IAH"});
    let first = app.send_json("POST", "/api/flights", &flight).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(header(&first, "location"), "/api/flights/1");
    let second = app.send_json("POST", "/api/flights", &flight).await;
    assert_eq!(header(&second, "location"), "/api/flights/2");
    let named = app
        .send_json("POST", "/api/flights", &json!({"id": 7, "carrier": "UA"}))
        .await;
    assert_eq!(named.status, 422, "a client may not choose a generated key");
    let ancient = app
        .send_json(
            "POST",
            "/api/flights",
            &json!({"time_hour": "-5000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(ancient.status, 422, "{}", ancient.text());
    assert_eq!(ancient.json()["invalid_params"][0]["name"], "time_hour");
}

#[tokio::test]
async fn only_admins_write_and_a_demoted_or_deactivated_admin_stops_at_once() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = TestApp::new(storage.clone(), catalog.clone());
    let patch = json!({"year": 1999});
    let anonymous = app.send_json("PATCH", "/api/movies/595", &patch).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(header(&anonymous, "www-authenticate"), "Bearer");
    // The token is checked before the body is read: no 413/415/422 for anonymous callers.
    for (content_type, body) in [
        ("text/plain", b"x".to_vec()),
        ("application/json", vec![b' '; 2 << 20]),
    ] {
        let response = app
            .send_raw("POST", "/api/movies", content_type, body)
            .await;
        assert_eq!(response.status, 401, "{content_type}");
    }
    let user = app.as_user().await;
    assert_eq!(
        user.send_json("PATCH", "/api/movies/595", &patch)
            .await
            .status,
        403
    );
    assert_eq!(user.request("DELETE", "/api/movies/595").await.status, 403);
    let forged = app.with_token("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIn0.");
    assert_eq!(
        forged
            .send_json("PATCH", "/api/movies/595", &patch)
            .await
            .status,
        401
    );

    let (email, token) = app.account_token("admin").await;
    let admin = app.with_token(&token);
    assert_eq!(
        admin
            .send_json("PATCH", "/api/movies/595", &patch)
            .await
            .status,
        200
    );
    let account = storage
        .find_user(UserLookup::Email(email))
        .await
        .unwrap()
        .unwrap();
    let demote = UserUpdate {
        role: Some("user".into()),
        active: None,
    };
    storage.update_user(account.id, demote).await.unwrap();
    assert_eq!(
        admin
            .send_json("PATCH", "/api/movies/595", &patch)
            .await
            .status,
        403,
        "same token, new role"
    );
    let deactivate = UserUpdate {
        role: Some("admin".into()),
        active: Some(false),
    };
    storage.update_user(account.id, deactivate).await.unwrap();
    assert_eq!(
        admin
            .send_json("PATCH", "/api/movies/595", &patch)
            .await
            .status,
        401,
        "deactivated"
    );
    assert_eq!(admin.get("/api/auth/me").await.status, 401);

    // Without JWT_SECRET the API is read-only.
    let cache = Cache::in_process("ro", std::time::Duration::from_secs(60), 1 << 20);
    let read_only = handler::http::AppState::new(Arc::new(catalog), storage, Arc::new(cache));
    let read_only = TestApp {
        state: read_only,
        bearer: Some(token),
        peer: None,
    };
    let refused = read_only
        .send_json("PATCH", "/api/movies/595", &patch)
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(read_only.get("/api/movies/595").await.status, 200);
}

/// Every kind of bad input: a 4xx problem document, never a 500, and no row changed.
#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = TestApp::new(storage.clone(), catalog).as_admin().await;
    let before = app.get("/api/movies/595").await.body;
    let json = "application/json";
    let big = format!(
        "{{\"id\": 1, \"title\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 1)
    );
    // (what, method, content type, body, expected status, fields the problem must name)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            "POST",
            json,
            b"{\"id\": 1,".to_vec(),
            400,
            &[],
        ),
        ("not JSON", "POST", "text/plain", b"id=1".to_vec(), 415, &[]),
        ("no content type", "PATCH", "", b"{}".to_vec(), 415, &[]),
        ("oversized", "POST", json, big.into_bytes(), 413, &[]),
        ("an array", "POST", json, b"[1, 2]".to_vec(), 422, &["body"]),
        (
            "wrong types",
            "POST",
            json,
            br#"{"id": "x", "title": 5, "year": "1999", "genres": "Drama"}"#.to_vec(),
            422,
            &["id", "title", "year", "genres"],
        ),
        (
            "unknown columns",
            "POST",
            json,
            br#"{"id": 5, "title": "t", "budget": 1, "role": "admin"}"#.to_vec(),
            422,
            &["budget", "role"],
        ),
        (
            "a number beyond i64",
            "POST",
            json,
            br#"{"id": 99999999999999999999, "title": "t"}"#.to_vec(),
            422,
            &["id"],
        ),
        (
            "a number beyond f64",
            "POST",
            json,
            br#"{"id": 1e400, "title": "t"}"#.to_vec(),
            400,
            &[],
        ),
        (
            "invalid UTF-8",
            "POST",
            json,
            b"{\"id\": 5, \"title\": \"\xff\xfe\"}".to_vec(),
            400,
            &[],
        ),
        (
            "a NUL character",
            "POST",
            json,
            br#"{"id": 5, "title": "a\u0000b"}"#.to_vec(),
            422,
            &["title"],
        ),
        (
            "a list element with the delimiter",
            "POST",
            json,
            br#"{"id": 5, "title": "t", "genres": ["Drama,Comedy"]}"#.to_vec(),
            422,
            &["genres"],
        ),
        (
            "too long",
            "POST",
            json,
            format!(r#"{{"id": 5, "title": "{}"}}"#, "t".repeat(301)).into_bytes(),
            422,
            &["title"],
        ),
        (
            "a required column null",
            "PATCH",
            json,
            br#"{"title": null}"#.to_vec(),
            422,
            &["title"],
        ),
        (
            "a changed key",
            "PATCH",
            json,
            br#"{"id": 596}"#.to_vec(),
            422,
            &["id"],
        ),
        (
            "a repeated key in a patch",
            "PATCH",
            json,
            br#"{"id": 595, "runtime": 100}"#.to_vec(),
            422,
            &["id"],
        ),
        (
            "an empty patch",
            "PATCH",
            json,
            b"{}".to_vec(),
            422,
            &["body"],
        ),
        (
            "a duplicate key",
            "POST",
            json,
            br#"{"id": 595, "title": "t"}"#.to_vec(),
            409,
            &[],
        ),
    ];
    for (what, method, content_type, body, status, fields) in cases {
        let uri = if method == "POST" {
            "/api/movies"
        } else {
            "/api/movies/595"
        };
        let response = app.send_raw(method, uri, content_type, body).await;
        assert_eq!(
            response.status.as_u16(),
            status,
            "{what}: {}",
            response.text()
        );
        assert_eq!(
            response.content_type(),
            "application/problem+json",
            "{what}"
        );
        let names: Vec<String> = response.json()["invalid_params"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for field in fields {
            assert!(
                names.iter().any(|n| n == field),
                "{what}: {field} not named in {names:?}"
            );
        }
    }
    for (what, method, uri) in [
        ("missing row", "PUT", "/api/movies/123456789"),
        ("non-integer id", "PATCH", "/api/movies/abc"),
        ("unknown dataset", "PATCH", "/api/nope/1"),
    ] {
        let response = app.send_json(method, uri, &json!({"title": "t"})).await;
        assert_eq!(response.status, 404, "{what}: {}", response.text());
    }
    assert_eq!(
        app.request("DELETE", "/api/movies/123456789").await.status,
        404
    );

    // SQL in a JSON field is stored as text, and in a filter it is a value like any other.
    let sql = "x'); DROP TABLE movies; --";
    let created = app
        .send_json("POST", "/api/movies", &json!({"id": 5, "title": sql}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(app.get("/api/movies/5").await.json()["title"], sql);
    let filtered = app
        .get("/api/movies?title=x%27%29%3B%20DROP%20TABLE%20movies%3B%20--")
        .await;
    assert_eq!(ids(&filtered), vec![5]);

    let movies = app.dataset("movies");
    assert_eq!(
        common::row_count(&*storage, &movies).await,
        17_473,
        "only the one valid create"
    );
    assert_eq!(
        app.get("/api/movies/595").await.body,
        before,
        "row 595 unchanged"
    );
    assert!(
        storage
            .get(&movies, &Value::Integer(1))
            .await
            .unwrap()
            .is_none()
    );
}

/// Two writers and four readers over two instances: every read shows at least the last write
/// acknowledged before the read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_data_older_than_an_acknowledged_write() {
    const WRITES: i64 = 25;
    for (backend, a, b) in common::movies_backends().await {
        let writers = [(a.as_admin().await, 595_i64), (b.as_admin().await, 593_i64)];
        let acknowledged: Arc<[AtomicI64; 2]> = Arc::new([AtomicI64::new(0), AtomicI64::new(0)]);
        // Set once both writers have ended (even by failing), so the readers always stop.
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (n, (writer, film)) in writers.into_iter().enumerate() {
            let acknowledged = Arc::clone(&acknowledged);
            tasks.push(tokio::spawn(async move {
                for version in 1..=WRITES {
                    let uri = format!("/api/movies/{film}");
                    let response = writer
                        .send_json("PATCH", &uri, &json!({"metacritic": 1000 + version}))
                        .await;
                    assert_eq!(response.status, 200, "{}", response.text());
                    acknowledged[n].store(version, Ordering::SeqCst);
                }
            }));
        }
        let mut readers = Vec::new();
        for r in 0..4 {
            let instance = if r % 2 == 0 { a.clone() } else { b.clone() };
            let acknowledged = Arc::clone(&acknowledged);
            let finished = Arc::clone(&finished);
            readers.push(tokio::spawn(async move {
                let mut reads = 0;
                while !finished.load(Ordering::SeqCst) {
                    for (n, (film, imdb)) in [(595_i64, "tt1675434"), (593, "tt1741542")]
                        .into_iter()
                        .enumerate()
                    {
                        // Versions are written as 1000 + n, above any real Metacritic score.
                        let floor = match acknowledged[n].load(Ordering::SeqCst) {
                            0 => 0,
                            version => 1000 + version,
                        };
                        let item = instance.get(&format!("/api/movies/{film}")).await;
                        let seen = item.json()["metacritic"].as_i64().unwrap_or(0);
                        assert!(
                            seen >= floor,
                            "item {film}: saw {seen} after {floor} was acknowledged"
                        );
                        let list = instance.get(&format!("/api/movies?imdb_id={imdb}")).await;
                        let seen = list.json()["items"][0]["metacritic"].as_i64().unwrap_or(0);
                        assert!(
                            seen >= floor,
                            "list of {film}: saw {seen} after {floor} was acknowledged"
                        );
                        reads += 2;
                        // Cache hits complete without waiting: let the writers run.
                        tokio::task::yield_now().await;
                    }
                }
                reads
            }));
        }
        let mut writer_results = Vec::new();
        for task in tasks {
            writer_results.push(task.await);
        }
        finished.store(true, Ordering::SeqCst);
        for result in writer_results {
            result.unwrap();
        }
        let mut reads = 0;
        for reader in readers {
            reads += reader.await.unwrap();
        }
        assert!(reads > 0, "{backend}: the readers ran");
        eprintln!(
            "{backend}: {reads} reads checked against {} acknowledged writes",
            2 * WRITES
        );
    }
}

/// A gate that records slowly (as Redis does) and whose records hold; when it `interferes`, its
/// first record lets another writer change the same row before this write takes SQLite's lock.
struct Interloper {
    storage: Arc<dyn Storage>,
    dataset: Arc<Dataset>,
    title: usize,
    interferes: bool,
    seen: parking_lot::Mutex<Vec<Written>>,
}

#[async_trait::async_trait]
impl CommitGate for Interloper {
    async fn before_commit(&self, change: Committing<'_>) -> Result<(), String> {
        let Committing::Row(written) = change else {
            return Err("only a row's write was expected".to_owned());
        };
        let first = {
            let mut seen = self.seen.lock();
            seen.push(written.clone());
            seen.len() == 1
        };
        if first && self.interferes {
            let key = written.old.as_ref().ok_or("an update was expected")?[0].clone();
            let title = Value::Text("Interloper's title".to_owned());
            let other = Change::Patch(key, vec![(self.title, title)]);
            let write = self.storage.write(&self.dataset, other, &Ungated);
            tokio::time::timeout(std::time::Duration::from_secs(5), write)
                .await
                .map_err(|_| "the other writer waited for a lock this write held".to_owned())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn records_slowly(&self) -> bool {
        true
    }

    fn still_recorded(&self) -> bool {
        true
    }
}

/// On SQLite with a gate that records slowly, a row's write is recorded before it takes the
/// database's write lock, from the row as read then, and only then if nothing came in between.
/// A row changed in between is recorded again under the lock, as found there: what the commit
/// makes is what was recorded last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_between_an_early_record_and_the_lock_is_recorded_again() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let dataset = catalog.get("movies").unwrap();
    let (title, year) = (
        dataset.column_index("title").unwrap(),
        dataset.column_index("year").unwrap(),
    );
    let first = handler::query::Query::parse(dataset, handler::query::QueryKind::List, "limit=1");
    let key = storage.list(dataset, &first.unwrap()).await.unwrap()[0][0].clone();
    let gate = |interferes| Interloper {
        storage: storage.clone(),
        dataset: dataset.clone(),
        title,
        interferes,
        seen: parking_lot::Mutex::default(),
    };
    let quiet = gate(false);
    let change = Change::Patch(key.clone(), vec![(year, Value::Integer(1998))]);
    storage.write(dataset, change, &quiet).await.unwrap();
    assert_eq!(quiet.seen.lock().len(), 1, "recorded once, before the lock");

    let gate = gate(true);
    let change = Change::Patch(key.clone(), vec![(year, Value::Integer(1999))]);
    storage.write(dataset, change, &gate).await.unwrap();

    let seen = gate.seen.lock().clone();
    assert_eq!(seen.len(), 2, "recorded early, then again under the lock");
    let interloper = Value::Text("Interloper's title".to_owned());
    let (early, locked) = (&seen[0], &seen[1]);
    assert_ne!(early.old.as_ref().unwrap()[title], interloper);
    assert_eq!(locked.old.as_ref().unwrap()[title], interloper);
    let new = locked.new.as_ref().unwrap();
    assert_eq!(
        (&new[title], &new[year]),
        (&interloper, &Value::Integer(1999))
    );
    let stored = storage.get(dataset, &key).await.unwrap().unwrap();
    assert_eq!(&stored, new, "the commit made what was recorded last");
}
