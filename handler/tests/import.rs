//! Import semantics on both backends: bad rows reported with line and reason, nothing partial or
//! duplicated, the previous rows intact when an import fails half-way.

mod common;

use std::io::Write as _;
use std::path::PathBuf;

use common::TestApp;
use handler::datasets::{Catalog, parse_declaration};
use handler::import::import_file;

const TAGS_DECLARATION: &str = r#"
    name = "things"
    key = { column = "id" }
    [[columns]]
    name = "id"
    type = "integer"
    [[columns]]
    name = "name"
    type = "text"
    nullable = false
    filter = true
    max_length = 20
    [[columns]]
    name = "tags"
    type = "text"
    list_delimiter = ","
    filter = true
    [[columns]]
    name = "score"
    type = "float"
    filter = true
    sort = true
    [[columns]]
    name = "seen"
    type = "timestamp"
    filter = true
    sort = true
"#;

fn things_catalog() -> Catalog {
    named_things_catalog("things")
}

/// The same declaration under another name, for a test whose imports must not meet another
/// test's imports of `things` (the tests of this file run at once against the same databases).
fn named_things_catalog(name: &str) -> Catalog {
    let declaration =
        TAGS_DECLARATION.replacen("name = \"things\"", &format!("name = \"{name}\""), 1);
    let mut catalog = Catalog::default();
    catalog
        .insert(parse_declaration(&declaration, None).unwrap())
        .unwrap();
    catalog
}

fn write_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("smartcache_{}_{name}", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(contents)
        .unwrap();
    path
}

async fn backends() -> Vec<String> {
    common::sql_backends().await
}

#[tokio::test]
async fn bad_rows_are_rejected_with_line_and_reason_and_good_rows_kept() {
    let csv = "id,name,tags,score,seen\n\
               1,Alpha,\"Drama, Comedy\",1.5,2013-01-01T10:00:00Z\n\
               2,Beta,Docudrama,NA,\n\
               x,Gamma,Drama,2,2013-01-01T10:00:00Z\n\
               1,Delta,Drama,3,2013-01-01T10:00:00Z\n\
               4,,Drama,3,2013-01-01T10:00:00Z\n\
               5,Epsilon,Drama,3\n\
               6,\"Multi\nline\",drama,4.25,2013-06-01T12:30:00+02:00\n\
               7,Eta,Drama,inf,2013-01-01T10:00:00Z\n\
               8,Theta is a name far too long,Drama,1,2013-01-01T10:00:00Z\n";
    let path = write_file("rejects.csv", csv.as_bytes());
    for url in backends().await {
        let storage = common::open(&url);
        let catalog = things_catalog();
        let things = catalog.get("things").unwrap().clone();
        let report = import_file(storage.as_ref(), &things, &path, false)
            .await
            .unwrap();
        let messages: Vec<(u64, String)> = report
            .rejections
            .iter()
            .map(|r| (r.line, r.message()))
            .collect();
        let lines: Vec<(u64, &str)> = messages.iter().map(|(l, m)| (*l, m.as_str())).collect();
        assert_eq!(report.imported, 3, "{url}: {lines:?}");
        assert_eq!(report.rejected, 6, "{url}: {lines:?}");
        assert_eq!(
            lines[0],
            (4, "column \"id\": is not a valid integer (value \"x\")")
        );
        assert_eq!(
            lines[1],
            (5, "column \"id\": duplicate key (1 is first on line 2)")
        );
        assert_eq!(lines[2], (6, "column \"name\": is required (value \"\")"));
        assert_eq!(lines[3], (7, "expected 5 fields, found 4"));
        assert_eq!(
            lines[4],
            (
                10,
                "column \"score\": is not a valid number (value \"inf\")"
            )
        );
        assert_eq!(
            lines[5],
            (
                11,
                "column \"name\": longer than 20 characters (value \"Theta is a name far too long\")"
            )
        );
        // Grouped: one group per (column, reason), each with its lines.
        let groups: Vec<(Option<&str>, &str, u64)> = report
            .groups
            .iter()
            .map(|g| (g.column.as_deref(), g.reason.as_str(), g.count))
            .collect();
        assert_eq!(groups.len(), 6, "{url}: {groups:?}");
        assert!(
            groups.contains(&(Some("name"), "is required", 1)),
            "{groups:?}"
        );

        // A list filter matches whole elements only: "Docudrama" is not "drama".
        let app = TestApp::new(storage.clone(), catalog);
        let dramas = app.get("/api/things?tags=drama").await.json();
        let ids: Vec<i64> = dramas["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 6], "{url}");
        let row = app.get("/api/things/6").await.json();
        assert_eq!(row["name"], "Multi\nline");
        assert_eq!(
            row["seen"], "2013-06-01T10:30:00Z",
            "{url}: timestamps are stored in UTC"
        );
        assert_eq!(row["score"], 4.25);
        let nulls = app.get("/api/things/2").await.json();
        assert_eq!(nulls["score"], serde_json::Value::Null);
        let range = app
            .get("/api/things?seen.gte=2013-03-01T00:00:00Z")
            .await
            .json();
        assert_eq!(range["items"].as_array().unwrap().len(), 1, "{url}");
    }
}

#[tokio::test]
async fn a_failed_import_leaves_the_previous_rows() {
    // The movies file gzipped and cut off at 60%: the reader fails after batches were staged.
    let movies = std::fs::read(common::movies_csv()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&movies).unwrap();
    let gz = gz.finish().unwrap();
    let whole = write_file("movies.csv.gz", &gz);
    let truncated = write_file("truncated.csv.gz", &gz[..gz.len() * 6 / 10]);
    let garbage = write_file("garbage.csv", b"ID,imdbID,Title,Year,Rating,Runtime,Genre,Director,Language,Country,Metacritic,Oscars,Meter,Reviews,BoxOffice\nnot,a,movie,at,all,,,,,,,,,,\n");
    let wrong_header = write_file("header.csv", b"id,name\n1,x\n");

    for url in backends().await {
        let catalog = common::catalog();
        let storage = common::open(&url);
        let dataset = catalog.get("movies").unwrap();
        let report = import_file(storage.as_ref(), dataset, &whole, false)
            .await
            .unwrap();
        assert_eq!(
            report.imported, 17_472,
            "{url}: gzipped files import directly"
        );

        let error = import_file(storage.as_ref(), dataset, &truncated, false)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot read"),
            "{url}: {error:#}"
        );
        assert_eq!(
            common::row_count(&*storage, dataset).await,
            17_472,
            "{url}: old rows survive a half-way failure"
        );

        let error = import_file(storage.as_ref(), dataset, &garbage, false)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("no row of"),
            "{url}: {error:#}"
        );
        assert_eq!(
            common::row_count(&*storage, dataset).await,
            17_472,
            "{url}: old rows survive an empty import"
        );

        let error = import_file(storage.as_ref(), dataset, &wrong_header, false)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("no column \"ID\""),
            "{url}: {error:#}"
        );

        // And the data is still served.
        let app = TestApp::new(storage.clone(), catalog.clone());
        assert_eq!(
            app.get("/api/movies/595").await.json()["title"],
            "The Intouchables"
        );
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_adds_new_columns() {
    for url in backends().await {
        let storage = common::open(&url);
        let catalog = things_catalog();
        let things = catalog.get("things").unwrap();
        storage.migrate(things).await.unwrap();
        storage.migrate(things).await.unwrap();
        let grown = TAGS_DECLARATION.to_owned()
            + "\n[[columns]]\nname = \"extra\"\ntype = \"integer\"\nfilter = true\n";
        let grown = parse_declaration(&grown, None).unwrap();
        storage.migrate(&grown).await.unwrap();
        let mut catalog = Catalog::default();
        catalog.insert(grown).unwrap();
        let app = TestApp::new(storage.clone(), catalog);
        let response = app.get("/api/things?extra=1").await;
        assert_eq!(response.status, 200, "{url}: {}", response.text());
    }
}

/// PostgreSQL, MariaDB and SQL Server lock a dataset's import (SQLite does not yet).
#[tokio::test]
async fn a_second_concurrent_import_of_a_dataset_is_refused() {
    let mut urls = Vec::new();
    urls.extend(common::postgres_url().await);
    urls.extend(common::mysql_url().await);
    urls.extend(common::mssql_url().await);
    for url in urls {
        let storage = common::open(&url);
        // Its own name: the other tests here import `things` at the same time.
        let catalog = named_things_catalog("lock_things");
        let things = catalog.get("lock_things").unwrap();
        storage.migrate(things).await.unwrap();
        let first = storage.begin_import(things).await.unwrap();
        let second = storage.begin_import(things).await;
        let error = second
            .err()
            .expect("the second import must not start")
            .to_string();
        assert_eq!(
            error, "another import of dataset \"lock_things\" is running",
            "{url}"
        );
        first.abort().await.unwrap();
        // The lock went with the first import: a new one may start.
        storage
            .begin_import(things)
            .await
            .unwrap()
            .abort()
            .await
            .unwrap();
    }
}

/// An import's lock is released when it ends, not when the server notices its connection has
/// closed: imports of one dataset back to back (an import, then a sync) never find it held.
#[tokio::test]
async fn an_import_may_start_as_soon_as_the_one_before_it_ended() {
    let mut urls = Vec::new();
    urls.extend(common::postgres_url().await);
    urls.extend(common::mysql_url().await);
    for url in urls {
        let storage = common::open(&url);
        let catalog = named_things_catalog("relock_things");
        let things = catalog.get("relock_things").unwrap();
        storage.migrate(things).await.unwrap();
        for attempt in 0..40 {
            let import = storage.begin_import(things).await;
            let import = import.unwrap_or_else(|e| panic!("{url}, attempt {attempt}: {e}"));
            import.abort().await.unwrap();
        }
    }
}

/// One set of value rules for imports and writes: a NUL byte in one field of the real movies
/// file is that line's problem, reported with its own line number, on every engine; every other
/// row imports (PostgreSQL's COPY would have refused the whole import).
#[tokio::test]
async fn a_nul_byte_rejects_its_line_and_every_other_row_imports() {
    let original = std::fs::read(common::movies_csv()).unwrap();
    let mut reader = csv::Reader::from_reader(original.as_slice());
    let title = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "Title")
        .unwrap();
    let record = reader.records().nth(1796).unwrap().unwrap();
    let offset = usize::try_from(record.position().unwrap().byte()).unwrap();
    let field = record[title].to_owned();
    let at = offset
        + original[offset..]
            .windows(field.len())
            .position(|w| w == field.as_bytes())
            .unwrap();
    // The damaged field's line in the file, counted here.
    let line = 1 + original[..at].iter().filter(|&&b| b == b'\n').count() as u64;
    let mut damaged = original[..at + 1].to_vec();
    damaged.push(0);
    damaged.extend_from_slice(&original[at + 1..]);
    let path = write_file("nul.csv", &damaged);
    for url in backends().await {
        let storage = common::open(&url);
        let catalog = common::catalog();
        let movies = catalog.get("movies").unwrap().clone();
        let report = import_file(storage.as_ref(), &movies, &path, false)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert_eq!((report.imported, report.rejected), (17_471, 1), "{url}");
        let rejection = &report.rejections[0];
        assert_eq!(rejection.line, line, "{url}: the CSV line, not a COPY line");
        assert_eq!(rejection.column.as_deref(), Some("title"), "{url}");
        assert_eq!(rejection.reason, "must not contain NUL characters", "{url}");
        assert_eq!(common::row_count(&*storage, &movies).await, 17_471, "{url}");
    }
}
