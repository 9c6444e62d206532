//! The read API end to end on real databases: `movies.csv` imported into SQLite and PostgreSQL,
//! every answer checked against counts computed independently from the CSV.

mod common;

use std::collections::HashSet;

use common::{MoviesCsv, TestApp};

/// Follows `next_cursor` from `first` to the end; returns every id in page order.
async fn walk_pages(app: &TestApp, first: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut uri = first.to_owned();
    let mut pages = 0;
    loop {
        let response = app.get(&uri).await;
        assert_eq!(response.status, 200, "{uri}: {}", response.text());
        let page = response.json();
        let items = page["items"].as_array().unwrap();
        ids.extend(items.iter().map(|row| row["id"].as_i64().unwrap()));
        pages += 1;
        assert!(pages < 1000, "pagination does not end");
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert!(!items.is_empty(), "a page with a cursor must not be empty");
                uri = format!("{first}&cursor={cursor}");
            }
            None => return ids,
        }
    }
}

fn assert_each_once(ids: &[i64], expected: &HashSet<i64>, what: &str) {
    let seen: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(seen.len(), ids.len(), "{what}: some row came twice");
    assert_eq!(&seen, expected, "{what}: not every row was visited");
}

async fn check_movies_api(url: &str) {
    let csv = MoviesCsv::load();
    let catalog = common::catalog();
    let storage = common::open(url);
    let report = common::import_movies(storage.as_ref(), &catalog).await;
    assert_eq!((report.imported, report.rejected), (csv.rows as u64, 0));
    let app = TestApp::new(storage.clone(), catalog);
    let movies = app.dataset("movies");
    assert_eq!(common::row_count(&*storage, &movies).await, 17_472);
    let all_ids: HashSet<i64> = csv.ids.iter().copied().collect();

    // A list filter against the count computed from the CSV, in any case.
    let drama = csv.count_with_element("Genre", "drama");
    assert!(drama > 8000, "the CSV has {drama} dramas");
    let drama_ids = walk_pages(&app, "/api/movies?genres=Drama&limit=1000").await;
    assert_eq!(drama_ids.len(), drama);
    assert_eq!(
        walk_pages(&app, "/api/movies?genres=dRAMA&limit=1000").await,
        drama_ids
    );

    // Two elements: both required.
    let both = csv.count_where(|f| {
        let genres = f("Genre").to_lowercase();
        let has = |g: &str| genres.split(',').any(|e| e.trim() == g);
        has("comedy") && has("drama")
    });
    assert_eq!(
        walk_pages(&app, "/api/movies?genres=comedy&genres=drama&limit=1000")
            .await
            .len(),
        both
    );

    // Range filters on a number, combined with a list filter.
    let french_recent = csv.count_where(|f| {
        f("Year").parse::<i64>().unwrap() >= 2000
            && f("Language").split(',').any(|l| l.trim() == "French")
    });
    assert_eq!(
        walk_pages(&app, "/api/movies?languages=french&year.gte=2000&limit=500")
            .await
            .len(),
        french_recent
    );

    // Pagination visits every row exactly once, whatever the sort (metacritic is mostly null).
    for sort in [
        "",
        "&sort=-year",
        "&sort=metacritic",
        "&sort=-box_office",
        "&sort=title",
    ] {
        let ids = walk_pages(&app, &format!("/api/movies?limit=997{sort}")).await;
        assert_each_once(&ids, &all_ids, sort);
    }

    // Sorted pages really are in order, with nulls last.
    let page = app
        .get("/api/movies?sort=-metacritic&limit=1000")
        .await
        .json();
    let scores: Vec<Option<i64>> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metacritic"].as_i64())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1] || w[1].is_none()),
        "descending"
    );

    // Exports: every format has every matching row.
    let json = app.get("/api/movies/export").await;
    assert_eq!(json.content_type(), "application/json");
    assert_eq!(json.json().as_array().unwrap().len(), csv.rows);
    let ndjson = app.get("/api/movies/export?format=ndjson").await;
    let lines: Vec<&str> = std::str::from_utf8(&ndjson.body).unwrap().lines().collect();
    assert_eq!(lines.len(), csv.rows);
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    let csv_export = app.get("/api/movies/export?format=csv").await;
    assert!(csv_export.content_type().starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(csv_export.body.as_ref());
    assert_eq!(reader.headers().unwrap().iter().next(), Some("id"));
    assert_eq!(reader.records().map(Result::unwrap).count(), csv.rows);
    let filtered = app
        .get("/api/movies/export?format=ndjson&genres=drama")
        .await;
    assert_eq!(
        std::str::from_utf8(&filtered.body).unwrap().lines().count(),
        drama
    );

    // Facets: the Drama count matches the CSV, and a filter narrows the counts.
    let facets = app.get("/api/movies/facets/genres?limit=50").await.json();
    let drama_facet = facets["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "Drama")
        .unwrap();
    assert_eq!(drama_facet["count"].as_u64().unwrap() as usize, drama);
    let rating = app
        .get("/api/movies/facets/rating?genres=drama")
        .await
        .json();
    let r_dramas = csv
        .count_where(|f| f("Rating") == "R" && f("Genre").split(',').any(|g| g.trim() == "Drama"));
    let r = rating["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "R")
        .unwrap();
    assert_eq!(r["count"].as_u64().unwrap() as usize, r_dramas);

    // One row, with typed values and lists as arrays.
    let item = app.get("/api/movies/595").await;
    assert_eq!(item.status, 200);
    let item = item.json();
    assert_eq!(item["title"], "The Intouchables");
    assert_eq!(
        item["genres"],
        serde_json::json!(["Biography", "Comedy", "Drama"])
    );
    assert_eq!(item["runtime"], 112);
    assert_eq!(item["director"], "Olivier Nakache, Éric Toledano");
    assert_eq!(app.get("/api/movies/1").await.status, 404);

    // Re-running the same import leaves the same rows.
    let again = common::import_movies(storage.as_ref(), &app.state.catalog).await;
    assert_eq!(again.imported, csv.rows as u64);
    assert_eq!(common::row_count(&*storage, &movies).await, 17_472);
    assert_eq!(
        walk_pages(&app, "/api/movies?genres=drama&limit=1000")
            .await
            .len(),
        drama
    );
}

#[tokio::test]
async fn sqlite_serves_the_imported_movies() {
    check_movies_api(&common::sqlite_url()).await;
}

#[tokio::test]
async fn postgres_serves_the_imported_movies() {
    let Some(url) = common::postgres_url().await else {
        return;
    };
    check_movies_api(&url).await;
}

#[tokio::test]
async fn sql_server_serves_the_imported_movies() {
    let Some(url) = common::mssql_url().await else {
        return;
    };
    check_movies_api(&url).await;
}

#[tokio::test]
async fn mariadb_serves_the_imported_movies() {
    let Some(url) = common::mysql_url().await else {
        return;
    };
    check_movies_api(&url).await;
}

/// Client mistakes are 400 problem+json naming the parameter; unknown things are 404.
#[tokio::test]
async fn bad_requests_get_problem_details_naming_the_parameter() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    let app = TestApp::new(storage.clone(), catalog);
    for dataset in app.state.catalog.iter() {
        storage.migrate(dataset).await.unwrap();
    }
    let cases = [
        ("/api/movies?colour=red", "colour"),
        ("/api/movies?year=nineteen", "year"),
        ("/api/movies?year.gte=1e999", "year.gte"),
        ("/api/movies?box_office.lt=NaN", "box_office.lt"),
        ("/api/movies?limit=0", "limit"),
        ("/api/movies?limit=5000", "limit"),
        ("/api/movies?limit=-1", "limit"),
        ("/api/movies?sort=director", "sort"),
        ("/api/movies?cursor=bm9wZQ", "cursor"),
        ("/api/movies?genres.gt=a", "genres.gt"),
        ("/api/movies?director=x", "director"),
        ("/api/movies/export?format=xml", "format"),
        ("/api/movies/export?limit=5", "limit"),
        ("/api/movies/facets/director", "column"),
        ("/api/movies/abc", "id"),
        ("/api/movies/99999999999999999999999", "id"),
        ("/api/flights?time_hour.gte=yesterday", "time_hour.gte"),
    ];
    for (uri, parameter) in cases {
        let response = app.get(uri).await;
        assert_eq!(response.status, 400, "{uri}: {}", response.text());
        assert_eq!(response.content_type(), "application/problem+json", "{uri}");
        let body = response.json();
        assert_eq!(
            body["invalid_params"][0]["name"], parameter,
            "{uri}: {body}"
        );
        assert_eq!(body["status"], 400);
    }
    // SQL in a filter value is just a value that matches nothing.
    let injection = app.get("/api/movies?title=x%27%20OR%20%271%27=%271").await;
    assert_eq!(injection.status, 200);
    assert_eq!(injection.json()["items"], serde_json::json!([]));
    for uri in [
        "/api/nope",
        "/api/nope/export",
        "/api/movies/1/2/3",
        "/elsewhere",
    ] {
        let response = app.get(uri).await;
        assert_eq!(response.status, 404, "{uri}");
        assert_eq!(response.content_type(), "application/problem+json", "{uri}");
    }
    let response = app.request("POST", "/api/health").await;
    assert_eq!(response.status, 405);
    assert_eq!(response.content_type(), "application/problem+json");
}

#[tokio::test]
async fn health_reports_a_database_that_is_down() {
    // Nothing listens on port 9 (discard): the check must answer 503 quickly, not hang.
    let storage = common::open("postgres://nobody@127.0.0.1:9/none");
    let app = TestApp::new(storage, common::catalog());
    let response = app.get("/api/health").await;
    assert_eq!(response.status, 503);
    let body = response.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["database"]["status"], "down");
    // Data requests say the database is unavailable: 503 problem+json, not a 500.
    let list = app.get("/api/movies").await;
    assert_eq!(list.status, 503, "{}", list.text());
    assert_eq!(list.content_type(), "application/problem+json");
}

#[tokio::test]
async fn the_openapi_document_describes_every_dataset() {
    let app = TestApp::new(common::open(&common::sqlite_url()), common::catalog());
    let doc = app.get("/api/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let movies = &doc["paths"]["/movies"]["get"];
    let names: Vec<&str> = movies["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in ["genres", "year", "year.gte", "sort", "limit", "cursor"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(doc["paths"]["/flights/facets/{column}"]["get"].is_object());
    assert!(doc["components"]["schemas"]["MoviesRow"]["properties"]["genres"].is_object());
    // Writes: a body, a bearer token, their own success status; operation ids stay unique.
    let create = &doc["paths"]["/movies"]["post"];
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["additionalProperties"], false);
    // Movies assign their key: a create may leave it out; the title is required and not blank.
    let required = body["required"].as_array().unwrap();
    assert!(!required.contains(&"id".into()) && required.contains(&"title".into()));
    assert_eq!(body["properties"]["title"]["minLength"], 1);
    assert_eq!(body["properties"]["year"]["format"], "int64");
    let patch = &doc["paths"]["/movies/{id}"]["patch"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert!(
        patch["properties"]["id"].is_null(),
        "a patch never names the key"
    );
    assert_eq!(patch["minProperties"], 1);
    let flights =
        &doc["paths"]["/flights"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        flights["properties"]["id"].is_null(),
        "a generated key is never given"
    );
    assert!(create["responses"]["201"].is_object() && create["responses"]["422"].is_object());
    assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));
    assert!(doc["paths"]["/movies/{id}"]["delete"]["responses"]["204"].is_object());
    assert!(doc["paths"]["/auth/login"]["post"]["responses"]["429"].is_object());
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids must be unique");
    let docs = app.get("/api/docs").await;
    assert_eq!(docs.status, 200);
    let html = docs.text();
    assert!(html.contains("openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the docs page must not fetch from the internet"
    );
    let csp = TestApp::header(&docs, "content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    // Its assets: gzipped for clients that take it, revalidated by ETag, unknown ones a 404.
    let bundle = app
        .get_with(
            "/api/docs/swagger-ui-bundle.js",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(bundle.status, 200);
    assert_eq!(TestApp::header(&bundle, "content-encoding"), "gzip");
    assert!(bundle.body.len() < 700_000, "{} bytes", bundle.body.len());
    let plain = app.get("/api/docs/swagger-ui.css").await;
    assert!(TestApp::header(&plain, "content-type").starts_with("text/css"));
    let etag = TestApp::header(&plain, "etag").to_owned();
    let again = app
        .get_with("/api/docs/swagger-ui.css", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    let unknown = app.get("/api/docs/..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        TestApp::header(&unknown, "content-type"),
        "application/problem+json"
    );
}

/// Over HTTP the listener serves `http::Api`: the hot routes with no router around them, or with
/// CORS configured the router for everything. Either way a list, a row, another route, an unknown
/// path and a HEAD answer as the router does, and CORS headers come only where configured.
#[tokio::test]
async fn the_listener_answers_as_the_router_with_and_without_cors() {
    let database = common::served::movies_db().await;
    handler::tls::install_provider();
    let client = reqwest::Client::new();
    for cors in [false, true] {
        let settings = match cors {
            true => vec![("CORS_ALLOWED_ORIGINS", "https://app.example".to_owned())],
            false => vec![],
        };
        let served = common::served::serve(&database, &settings, std::process::Stdio::null()).await;
        let get = |path: &str| {
            client
                .get(served.url(path))
                .header("origin", "https://app.example")
                .send()
        };
        let list = get("/api/movies?limit=2").await.unwrap();
        assert_eq!(list.status(), 200, "cors {cors}");
        let allowed = list
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allowed.as_deref(), cors.then_some("https://app.example"));
        let page: serde_json::Value = list.json().await.unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 2, "cors {cors}");
        let row: serde_json::Value = get("/api/movies/372").await.unwrap().json().await.unwrap();
        assert_eq!(row["id"], 372, "cors {cors}");
        let count: serde_json::Value = get("/api/movies/count")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(count["count"], 17_472, "cors {cors}");
        let unknown = get("/api/movies/1/2/3").await.unwrap();
        assert_eq!(unknown.status(), 404, "cors {cors}");
        assert_eq!(
            unknown.headers()["content-type"],
            "application/problem+json",
            "cors {cors}"
        );
        let head = client
            .head(served.url("/api/movies?limit=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "cors {cors}");
    }
}

/// CORS is off unless origins are configured, and then only for them.
#[tokio::test]
async fn cors_answers_only_configured_origins() {
    let app = TestApp::new(common::open(&common::sqlite_url()), common::catalog());
    let preflight = |app: &TestApp, origin: &'static str| {
        let app = app.clone();
        async move {
            app.send_raw_with(
                "OPTIONS",
                "/api/movies",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                Vec::new(),
            )
            .await
        }
    };
    let closed = preflight(&app, "https://app.example").await;
    assert!(closed.headers.get("access-control-allow-origin").is_none());
    let plain = app
        .get_with("/api/movies?limit=1", &[("origin", "https://app.example")])
        .await;
    assert!(plain.headers.get("access-control-allow-origin").is_none());

    let mut open = app.clone();
    open.state.cors_allowed_origins = std::sync::Arc::new(vec!["https://app.example".into()]);
    let allowed = preflight(&open, "https://app.example").await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        TestApp::header(&allowed, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(TestApp::header(&allowed, "access-control-allow-headers").contains("authorization"));
    let other = preflight(&open, "https://evil.example").await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
    let read = open
        .get_with("/api/movies?limit=1", &[("origin", "https://app.example")])
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(
        TestApp::header(&read, "access-control-allow-origin"),
        "https://app.example"
    );
}

/// The hot routes (lists and rows, matched by hand before the router) answer exactly as the
/// router alone does: the same status, headers (but the cache outcome and timing) and body, for
/// the requests they take and for those they must leave to the router.
#[tokio::test]
async fn the_hot_routes_answer_as_the_router_does() {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let app = TestApp::movies_on_sqlite().await;
    let long = format!("/api/movies?title={}", "x".repeat(20_000));
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let mut asks: Vec<(&str, &str, Headers)> = vec![
        ("GET", "/api/movies?genres=drama&limit=3", vec![]),
        (
            "GET",
            "/api/movies?genres=drama&limit=3",
            vec![("accept-encoding", "gzip")],
        ),
        (
            "GET",
            "/api/movies?genres=drama&limit=3",
            vec![("range", "bytes=0-9")],
        ),
        ("GET", "/api/movies?year=abc", vec![]),
        (
            "GET",
            "/api/movies?sort=-metacritic&limit=2&cursor=nonsense",
            vec![],
        ),
        ("GET", long.as_str(), vec![]),
        ("GET", "/api/movies/595", vec![]),
        ("GET", "/api/movies/595", vec![("if-none-match", "*")]),
        ("GET", "/api/movies/99999999", vec![]),
        ("GET", "/api/movies/abc", vec![]),
        ("GET", "/api/nothing", vec![]),
        ("GET", "/api/nothing/1", vec![]),
        ("GET", "/api/mo%76ies/595", vec![]),
        ("GET", "/api/movies/5%2095", vec![]),
        ("GET", "/api/movies/", vec![]),
        ("GET", "/api/movies/count?genres=drama", vec![]),
        ("GET", "/api/movies/facets", vec![]),
        ("GET", "/api/movies/facets/genres", vec![]),
        ("GET", "/api/version", vec![]),
        ("GET", "/api/auth/me", vec![]),
        ("GET", "/api/auth", vec![]),
        ("GET", "/api/admin", vec![]),
        ("GET", "/api/docs", vec![]),
        ("GET", "/api/docs/nothing.js", vec![]),
        ("GET", "/api/health/x", vec![]),
        ("GET", "/api/openapi.json", vec![]),
        ("GET", "/api//595", vec![]),
        ("GET", "/api/movies/595/", vec![]),
        ("GET", "/api/", vec![]),
        ("GET", "/api/Movies", vec![]),
        (
            "GET",
            "/api/movies/595",
            vec![("authorization", "Bearer forged")],
        ),
        (
            "GET",
            "/api/movies/595",
            vec![("x-forwarded-for", "203.0.113.9")],
        ),
        (
            "GET",
            "/api/movies/595",
            vec![("accept-encoding", "br;q=1, gzip;q=0.5")],
        ),
        ("GET", "/api/movies/export?genres=Western", vec![]),
        ("GET", "/api/movies/export", vec![("range", "bytes=0-99")]),
        ("HEAD", "/api/movies/595", vec![]),
        ("OPTIONS", "/api/movies/595", vec![]),
        ("POST", "/api/movies", vec![]),
        ("DELETE", "/api/movies/595", vec![]),
    ];
    let long_item = format!("/api/movies/{}", "9".repeat(20_000));
    asks.push(("GET", long_item.as_str(), vec![]));
    let etag = TestApp::header(&app.get("/api/movies/595").await, "etag").to_owned();
    asks.push((
        "GET",
        "/api/movies/595",
        vec![("if-none-match", etag.as_str())],
    ));
    for (method, uri, headers) in &asks {
        let mut answers = Vec::new();
        for hot in [true, false] {
            let router = if hot {
                handler::http::router(app.state.clone())
            } else {
                handler::http::endpoint_router(app.state.clone())
            };
            let mut request = axum::http::Request::builder().method(*method).uri(*uri);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = router
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let mut headers = response.headers().clone();
            headers.remove("x-cache");
            headers.remove("server-timing");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, headers, body));
        }
        let shown = &uri[..uri.len().min(60)];
        assert_eq!(answers[0].0, answers[1].0, "{method} {shown}: status");
        assert_eq!(answers[0].1, answers[1].1, "{method} {shown}: headers");
        assert_eq!(answers[0].2, answers[1].2, "{method} {shown}: body");
    }
    // The hot routes do answer from the cache.
    let uri = "/api/movies?genres=comedy&limit=2";
    for expected in ["MISS", "HIT"] {
        let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let response = handler::http::router(app.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()["x-cache"], expected);
    }
}
