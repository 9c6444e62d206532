//! Everything a request controls is bounded, and each breach is a 4xx problem document naming
//! what was too large; answers carry the headers a public API owes browsers; CSV exports are safe
//! to open in a spreadsheet. On the movies, imported into SQLite.

mod common;

use std::sync::Arc;

use common::TestApp;
use handler::config::{QueryLimits, RequestLimits};

fn repeated(name: &str, times: usize) -> String {
    (0..times)
        .map(|i| format!("{name}=v{i}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// One row per limit: the request over it, the status, and the name the problem gives.
#[tokio::test]
async fn every_limit_is_a_problem_naming_what_was_too_large() {
    // The default parameter count (128) is more than the movies' valid filters, sorts and
    // pages together: this app counts to 32, to show the limit named.
    let limits = QueryLimits {
        max_parameters: 32,
        ..QueryLimits::default()
    };
    let mut app = TestApp::movies_on_sqlite().await;
    app.state = app.state.clone().with_limits(RequestLimits {
        query: limits.clone(),
        ..RequestLimits::default()
    });
    // Every list filter within its repeats, and distinct scalars: over the count all together.
    let many = ["genres", "languages", "countries"]
        .map(|name| repeated(name, limits.max_filter_repeats))
        .join("&")
        + "&year.gte=1&year.lte=2&runtime.gte=1&runtime.lte=2&metacritic.gte=1&metacritic.lte=2\
           &rating=r&imdb_id=i&title=t";
    let long_value = "x".repeat(limits.max_value_chars + 1);
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("/api/movies?{many}"), 400, "query"),
        (
            format!(
                "/api/movies?{}",
                repeated("genres", limits.max_filter_repeats + 1)
            ),
            400,
            "genres",
        ),
        (
            format!("/api/movies/facets/genres?{}", repeated("countries", 9)),
            400,
            "countries",
        ),
        (
            format!("/api/movies/export?{}", repeated("languages", 9)),
            400,
            "languages",
        ),
        (
            format!("/api/movies?director={long_value}"),
            400,
            "director",
        ),
        (format!("/api/movies?title={long_value}"), 400, "title"),
        (
            format!(
                "/api/movies?cursor={}",
                "a".repeat(limits.max_cursor_bytes + 1)
            ),
            400,
            "cursor",
        ),
        (
            format!("/api/movies?title={}", "y".repeat(5000)),
            414,
            "uri",
        ),
        (format!("/api/movies/{}", "9".repeat(5000)), 414, "uri"),
    ];
    for (uri, status, name) in cases {
        let response = app.get(&uri).await;
        let shown = &uri[..uri.len().min(60)];
        assert_eq!(response.status, status, "{shown}: {}", response.text());
        assert_eq!(
            response.content_type(),
            "application/problem+json",
            "{shown}"
        );
        assert_eq!(
            response.json()["invalid_params"][0]["name"],
            name,
            "{shown}"
        );
    }
    // At the limits, everything is answered.
    let at_limit = repeated("genres", limits.max_filter_repeats);
    assert_eq!(
        app.get(&format!("/api/movies?{at_limit}")).await.status,
        200
    );

    // Bodies: over MAX_BODY_BYTES is a 413 before anything is parsed.
    let admin = app.as_admin().await;
    let huge = serde_json::json!({"title": "t".repeat(2 << 20)});
    let response = admin.send_json("PATCH", "/api/movies/595", &huge).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.content_type(), "application/problem+json");
}

/// A cold export holds one of `EXPORT_CONCURRENCY` slots while the database runs it; with none
/// free the answer is a quick 503 with `Retry-After`. An export over `EXPORT_MAX_BYTES` is refused
/// by name, and nothing half-made is stored.
#[tokio::test]
async fn exports_are_bounded_in_number_and_size() {
    let app = TestApp::movies_on_sqlite().await;
    let mut busy = app.clone();
    busy.state = busy.state.clone().with_limits(RequestLimits {
        export_concurrency: 0,
        ..RequestLimits::default()
    });
    let refused = busy.get("/api/movies/export?genres=western").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.content_type(), "application/problem+json");
    assert_eq!(TestApp::header(&refused, "retry-after"), "2");

    let mut small = app.clone();
    small.state = small.state.clone().with_limits(RequestLimits {
        export_max_bytes: 10_000,
        ..RequestLimits::default()
    });
    let too_big = small.get("/api/movies/export").await;
    assert_eq!(too_big.status, 422, "{}", too_big.text());
    assert_eq!(too_big.json()["invalid_params"][0]["name"], "export");

    let fits = small
        .get("/api/movies/export?genres=western&year.gte=2010")
        .await;
    assert_eq!(fits.status, 200, "{}", fits.text());
    // The refused export was not stored: with room for it, it is computed (a MISS).
    let whole = app.get("/api/movies/export").await;
    assert_eq!(whole.status, 200);
    assert_eq!(TestApp::header(&whole, "x-cache"), "MISS");
    assert_eq!(whole.json().as_array().unwrap().len(), 17_472);
    // Large answers held while they are sent are bounded in bytes (EXPORT_MEMORY_BYTES): the
    // whole export (1.3 MB compressed) does not fit in 1 KB, and is refused, not held.
    let mut tight = app.clone();
    tight.state = tight.state.clone().with_limits(RequestLimits {
        export_memory_bytes: 1024,
        ..RequestLimits::default()
    });
    let refused = tight.get("/api/movies/export").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        tight.get("/api/movies/export?genres=western").await.status,
        200,
        "small ones pass"
    );
}

/// `nosniff` on every answer; public data may be kept by browsers and CDNs but revalidated,
/// data that needs a sign-in must not be kept at all.
#[tokio::test]
async fn answers_carry_the_headers_a_public_api_owes_browsers() {
    let app = TestApp::movies_on_sqlite().await;
    for uri in [
        "/api/movies?limit=1",
        "/api/movies/595",
        "/api/nope",
        "/api/health",
    ] {
        let response = app.get(uri).await;
        assert_eq!(
            TestApp::header(&response, "x-content-type-options"),
            "nosniff",
            "{uri}"
        );
    }
    let public = app.get("/api/movies/595").await;
    assert_eq!(
        TestApp::header(&public, "cache-control"),
        "public, no-cache"
    );
    let etag = TestApp::header(&public, "etag").to_owned();
    let revalidated = app
        .get_with("/api/movies/595", &[("if-none-match", etag.as_str())])
        .await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(
        TestApp::header(&revalidated, "cache-control"),
        "public, no-cache"
    );

    // The same data behind a sign-in.
    let mut catalog = common::catalog();
    let mut private = (**catalog.get("movies").unwrap()).clone();
    private.access.read = handler::datasets::Level::User;
    catalog = {
        let mut restricted = handler::datasets::Catalog::default();
        restricted.insert(private).unwrap();
        restricted
    };
    let mut restricted = app.clone();
    restricted.state.catalog = Arc::new(catalog);
    let user = restricted.as_user().await;
    let answer = user.get("/api/movies/595").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        TestApp::header(&answer, "cache-control"),
        "private, no-store"
    );
    assert_eq!(restricted.get("/api/movies/595").await.status, 401);
}

/// Text cells a spreadsheet would run as formulas are neutralised in CSV exports (OWASP's
/// rule); JSON keeps them as they are; a dataset may keep them raw for trusted consumers.
#[tokio::test]
async fn csv_exports_neutralise_formula_cells() {
    let app = TestApp::movies_on_sqlite().await;
    let admin = app.as_admin().await;
    let title = "=HYPERLINK(\"http://evil.example\",\"Click\")";
    let created = admin
        .post_json(
            "/api/movies",
            &serde_json::json!({"id": 990001, "title": title, "year": 2026, "genres": ["-Drama", "+War"], "rating": "@R"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let csv = app.get("/api/movies/export?format=csv&year=2026").await;
    assert_eq!(csv.status, 200);
    let mut reader = csv::Reader::from_reader(csv.body.as_ref());
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let row = reader
        .records()
        .map(Result::unwrap)
        .find(|r| &r[column("id")] == "990001")
        .expect("the film is exported");
    assert_eq!(&row[column("title")], format!("'{title}"));
    assert_eq!(&row[column("genres")], "'-Drama,+War");
    assert_eq!(&row[column("rating")], "'@R");
    assert_eq!(
        &row[column("year")],
        "2026",
        "numbers are never neutralised"
    );
    let json = app.get("/api/movies/990001").await.json();
    assert_eq!(json["title"], title, "JSON keeps the text as it is");

    let mut catalog = handler::datasets::Catalog::default();
    let mut trusted = (**app.state.catalog.get("movies").unwrap()).clone();
    trusted.csv_keep_formulas = true;
    catalog.insert(trusted).unwrap();
    let mut raw = app.clone();
    raw.state.catalog = Arc::new(catalog);
    // (Another question: the cache holds answers, not settings; a changed declaration is
    // followed by a purge of the dataset's answers.)
    let csv = raw.get("/api/movies/export?format=csv&year.gte=2026").await;
    let text = csv.text();
    assert!(
        text.contains("\"=HYPERLINK(\"\"http://evil.example\"\",\"\"Click\"\")\""),
        "{text}"
    );
}
