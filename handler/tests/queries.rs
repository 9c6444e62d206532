//! Counts, any-of filters and server-assigned keys on every backend that answers (SQLite with an
//! in-process cache, PostgreSQL with Redis shared by two instances, MariaDB): answers checked
//! against the CSV read independently, cached like any read and ended exactly by the writes that
//! change them.

mod common;

use std::collections::HashSet;

use common::{MoviesCsv, TestApp, TestResponse};
use serde_json::json;

fn count(response: &TestResponse) -> u64 {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["count"].as_u64().expect("a count")
}

fn x_cache(response: &TestResponse) -> &str {
    TestApp::header(response, "x-cache")
}

#[tokio::test]
async fn counts_and_any_of_filters_match_the_csv_on_every_backend() {
    let csv = MoviesCsv::load();
    let rated = |wanted: &[&str]| {
        csv.count_where(|field| {
            wanted
                .iter()
                .any(|w| field("Rating").eq_ignore_ascii_case(w))
        }) as u64
    };
    let with_any_genre = |wanted: &[&str]| {
        csv.count_where(|field| {
            field("Genre")
                .split(',')
                .any(|g| wanted.iter().any(|w| g.trim().eq_ignore_ascii_case(w)))
        }) as u64
    };
    for (backend, app, _) in common::movies_backends().await {
        let all = app.get("/api/movies/count").await;
        assert_eq!(count(&all), csv.rows as u64, "{backend}");

        let pg = app.get("/api/movies/count?rating.in=PG,PG-13").await;
        assert_eq!(count(&pg), rated(&["PG", "PG-13"]), "{backend}");
        assert_eq!(count(&pg), 644 + 525, "{backend}: the CSV's own figures");
        // The same set in another order and case is the same question: the same cache entry.
        let again = app.get("/api/movies/count?rating.in=pg-13,Pg,PG").await;
        assert_eq!(count(&again), count(&pg), "{backend}");
        assert_eq!(x_cache(&again), "HIT", "{backend}");

        // A list column: films with any of the genres.
        let genres = app
            .get("/api/movies/count?genres.in=Western,Film-Noir")
            .await;
        assert_eq!(
            count(&genres),
            with_any_genre(&["Western", "Film-Noir"]),
            "{backend}"
        );
        // With other filters, ANDed; and the list and export agree with the count.
        let recent = "genres.in=Western,Film-Noir&year.gte=2000&rating.in=R,PG-13";
        let n = count(&app.get(&format!("/api/movies/count?{recent}")).await);
        let export = app
            .get(&format!("/api/movies/export?{recent}&format=ndjson"))
            .await;
        assert_eq!(export.text().lines().count() as u64, n, "{backend}");
        assert!(n > 0, "{backend}");
        let page = app.get(&format!("/api/movies?{recent}&limit=1000")).await;
        let items = page.json()["items"].as_array().unwrap().clone();
        assert_eq!(items.len() as u64, n, "{backend}");
        for item in &items {
            assert!(["R", "PG-13"].contains(&item["rating"].as_str().unwrap()));
            assert!(item["year"].as_i64().unwrap() >= 2000);
        }

        // A comma inside a value is escaped with a backslash.
        let titled = app
            .get("/api/movies/count?title.in=The%20Good%5C,%20the%20Bad%20and%20the%20Ugly,Heat")
            .await;
        let expected = csv.count_where(|field| {
            let title = field("Title").to_lowercase();
            title == "the good, the bad and the ugly" || title == "heat"
        }) as u64;
        assert_eq!(count(&titled), expected, "{backend}");
        assert!(expected >= 2, "{backend}");

        // Integers, and a facet and a list under an any-of filter.
        let years = count(&app.get("/api/movies/count?year.in=1999,2001").await);
        let by_year = csv.count_where(|field| ["1999", "2001"].contains(&field("Year").as_str()));
        assert_eq!(years, by_year as u64, "{backend}");
        let facets = app
            .get("/api/movies/facets/rating?rating.in=PG,G")
            .await
            .json();
        let values: Vec<&str> = facets["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["value"].as_str().unwrap())
            .collect();
        assert_eq!(values, ["PG", "G"], "{backend}");
    }
}

#[tokio::test]
async fn bad_counts_and_any_of_filters_are_named_400s() {
    let app = TestApp::movies_on_sqlite().await;
    let too_many = (0..65).map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    for (uri, parameter) in [
        ("/api/movies/count?year.in=1999,abc", "year.in"),
        ("/api/movies/count?year.in=", "year.in"),
        ("/api/movies/count?limit=5", "limit"),
        ("/api/movies/count?sort=year", "sort"),
        ("/api/movies/count?director.in=x", "director.in"),
        ("/api/movies/count?rating.in=PG&rating.in=R", "rating.in"),
        (&format!("/api/movies/count?year.in={too_many}"), "year.in"),
        ("/api/movies?rating.nope=PG", "rating.nope"),
    ] {
        let response = app.get(uri).await;
        assert_eq!(response.status, 400, "{uri}: {}", response.text());
        assert_eq!(
            response.json()["invalid_params"][0]["name"],
            parameter,
            "{uri}"
        );
    }
    assert_eq!(app.get("/api/nothing/count").await.status, 404);
}

/// A write ends the counts and any-of answers its row enters or leaves, on the other instance
/// at once, and leaves the others cached.
#[tokio::test]
async fn writes_end_exactly_the_counts_and_any_of_answers_they_change() {
    for (backend, a, b) in common::movies_backends().await {
        let admin = a.as_admin().await;
        let questions = [
            "/api/movies/count?rating.in=PG,PG-13",
            "/api/movies/count?genres.in=Western,Film-Noir",
            "/api/movies?genres.in=Western,Film-Noir&sort=-id&limit=3",
            "/api/movies/count?rating=NC-17",
            "/api/movies/count?genres.in=Animation",
        ];
        let mut before = Vec::new();
        for uri in questions {
            let first = b.get(uri).await;
            assert_eq!(first.status, 200, "{backend} {uri}");
            assert_eq!(x_cache(&b.get(uri).await), "HIT", "{backend} {uri}");
            before.push(first.json());
        }

        let created = admin
            .send_json(
                "POST",
                "/api/movies",
                &json!({"title": "A Western", "year": 2026, "rating": "PG", "genres": ["Western"]}),
            )
            .await;
        assert_eq!(created.status, 201, "{backend}: {}", created.text());
        let id = created.json()["id"].as_i64().unwrap();

        let after: Vec<TestResponse> = get_all(&b, &questions).await;
        let n = |i: usize| before[i]["count"].as_u64().unwrap();
        assert_eq!(count(&after[0]), n(0) + 1, "{backend}: rating.in counts it");
        assert_eq!(count(&after[1]), n(1) + 1, "{backend}: genres.in counts it");
        assert_eq!(
            after[2].json()["items"][0]["id"].as_i64(),
            Some(id),
            "{backend}: the list shows it first"
        );
        assert_eq!(x_cache(&after[3]), "HIT", "{backend}: another rating");
        assert_eq!(x_cache(&after[4]), "HIT", "{backend}: another genre");
        assert_eq!(after[3].json(), before[3]);

        // A change inside the filters (the year) keeps the counts; leaving them ends them.
        let patched = admin
            .send_json(
                "PATCH",
                &format!("/api/movies/{id}"),
                &json!({"year": 2025}),
            )
            .await;
        assert_eq!(patched.status, 200, "{backend}: {}", patched.text());
        let kept = b.get(questions[0]).await;
        assert_eq!(x_cache(&kept), "HIT", "{backend}: the row stayed PG");
        let left = admin
            .send_json(
                "PATCH",
                &format!("/api/movies/{id}"),
                &json!({"rating": "NC-17"}),
            )
            .await;
        assert_eq!(left.status, 200, "{backend}");
        assert_eq!(count(&b.get(questions[0]).await), n(0), "{backend}");
        assert_eq!(count(&b.get(questions[3]).await), n(3) + 1, "{backend}");
        let deleted = admin.request("DELETE", &format!("/api/movies/{id}")).await;
        assert_eq!(deleted.status, 204, "{backend}");
        assert_eq!(count(&b.get(questions[1]).await), n(1), "{backend}");
        assert_eq!(count(&b.get(questions[3]).await), n(3), "{backend}");
    }
}

async fn get_all(app: &TestApp, uris: &[&str]) -> Vec<TestResponse> {
    let mut out = Vec::new();
    for uri in uris {
        out.push(app.get(uri).await);
    }
    out
}

/// Movies assign their key: concurrent creates without one get distinct keys past the largest,
/// with no error, on every backend; a client may still give one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_without_a_key_get_distinct_next_keys() {
    const CREATES: usize = 24;
    let largest = *MoviesCsv::load().ids.iter().max().unwrap();
    for (backend, a, b) in common::movies_backends().await {
        let (admin_a, admin_b) = (a.as_admin().await, b.as_admin().await);
        let creates: Vec<_> = (0..CREATES)
            .map(|n| {
                let admin = if n % 2 == 0 { &admin_a } else { &admin_b }.clone();
                let body = json!({"title": format!("Film {n}"), "year": 2026});
                tokio::spawn(async move { admin.send_json("POST", "/api/movies", &body).await })
            })
            .collect();
        let mut responses = Vec::new();
        for create in creates {
            responses.push(create.await.unwrap());
        }
        let mut ids = HashSet::new();
        for response in &responses {
            assert_eq!(response.status, 201, "{backend}: {}", response.text());
            let id = response.json()["id"].as_i64().unwrap();
            assert_eq!(
                TestApp::header(response, "location"),
                format!("/api/movies/{id}")
            );
            ids.insert(id);
        }
        assert_eq!(ids.len(), CREATES, "{backend}: no key given twice");
        let expected: HashSet<i64> = (1..=CREATES as i64).map(|n| largest + n).collect();
        assert_eq!(ids, expected, "{backend}: the next keys, without gaps");
        // Every one is readable on the other instance.
        for id in &ids {
            assert_eq!(b.get(&format!("/api/movies/{id}")).await.status, 200);
        }
        let named = admin_a
            .send_json(
                "POST",
                "/api/movies",
                &json!({"id": largest + 1000, "title": "Named"}),
            )
            .await;
        assert_eq!(named.status, 201, "{backend}: {}", named.text());
        let taken = admin_a
            .send_json(
                "POST",
                "/api/movies",
                &json!({"id": largest + 1000, "title": "Named"}),
            )
            .await;
        assert_eq!(taken.status, 409, "{backend}");
    }
}
