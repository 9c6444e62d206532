//! `import --mode sync`: only the rows that differ by key change, in one transaction, recorded
//! with the cache like writes. On SQLite, PostgreSQL and MariaDB (and SQL Server with MSSQL_URL).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::TryStreamExt as _;
use handler::datasets::{Dataset, ImportMode, Row, Value, parse_declaration};
use handler::import::{ImportOptions, ImportReport, ImportSource, import, import_file};
use handler::query::{Query, QueryKind};
use handler::service::ImportFrom;
use handler::storage::{Change, CommitGate, Committing, Storage, SyncCounts, Ungated};
use parking_lot::Mutex;

use common::TestApp as App;

/// CSV columns of movies.csv.
const ID: usize = 0;
const IMDB: usize = 1;
const TITLE: usize = 2;
const YEAR: usize = 3;
const GENRE: usize = 6;
const BOX_OFFICE: usize = 14;

/// The movies declaration under another name and table.
fn movies_as(name: &str) -> Dataset {
    movies_edited_as(name, |text| text)
}

/// The movies declaration under another name and table, its text edited by `edit` (a
/// declaration that changed since the table was made).
fn movies_edited_as(name: &str, edit: impl FnOnce(String) -> String) -> Dataset {
    let text = std::fs::read_to_string(common::repo_root().join("datasets/movies.toml")).unwrap();
    let text = text
        .replacen("name = \"movies\"", &format!("name = \"{name}\""), 1)
        .replacen("table = \"movies\"", &format!("table = \"{name}\""), 1);
    parse_declaration(&edit(text), None).unwrap()
}

fn movies_records() -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut reader = csv::Reader::from_path(common::movies_csv()).unwrap();
    let headers = reader.headers().unwrap().clone();
    let records = reader.records().map(Result::unwrap).collect();
    (headers, records)
}

fn write_csv(name: &str, headers: &csv::StringRecord, records: &[csv::StringRecord]) -> PathBuf {
    let path = std::env::temp_dir().join(common::unique_name(name) + ".csv");
    let mut writer = csv::Writer::from_path(&path).unwrap();
    writer.write_record(headers).unwrap();
    for record in records {
        writer.write_record(record).unwrap();
    }
    writer.flush().unwrap();
    path
}

fn is_null(field: &str) -> bool {
    matches!(field.trim(), "" | "NA" | "N/A")
}

/// The movies file with rows removed, changed (a title, its case only, a list column, a value
/// made null) and added, and the counts a sync of it must report.
fn edited_movies() -> (PathBuf, SyncCounts) {
    let (headers, records) = movies_records();
    let mut edited = Vec::new();
    let mut counts = SyncCounts::default();
    for (i, record) in records.iter().enumerate() {
        let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
        let before = fields.clone();
        match i % 1000 {
            1 => {
                counts.removed += 1;
                continue;
            }
            2 => fields[TITLE].push_str(" (restored)"),
            3 => fields[TITLE] = fields[TITLE].to_uppercase(),
            4 => fields[GENRE] = "Sync-Test".to_owned(),
            5 => fields[BOX_OFFICE] = String::new(),
            _ => {}
        }
        let null_both = i % 1000 == 5 && is_null(&before[BOX_OFFICE]);
        if fields != before && !null_both {
            counts.changed += 1;
        }
        edited.push(csv::StringRecord::from(fields));
    }
    for n in 0..3 {
        let mut fields: Vec<String> = records[0].iter().map(str::to_owned).collect();
        fields[ID] = (990_001 + n).to_string();
        fields[IMDB] = format!("tt99{n:05}");
        fields[YEAR] = "2031".to_owned();
        edited.push(csv::StringRecord::from(fields));
        counts.added += 1;
    }
    (write_csv("movies-edited", &headers, &edited), counts)
}

async fn every_row(storage: &dyn Storage, dataset: &Dataset) -> Vec<Row> {
    let query = Query::parse(dataset, QueryKind::Export, "").unwrap();
    let batches: Vec<Vec<Row>> = storage
        .export(Arc::new(dataset.clone()), query)
        .try_collect()
        .await
        .unwrap();
    batches.into_iter().flatten().collect()
}

async fn genre_facets(storage: &dyn Storage, dataset: &Dataset) -> Vec<(String, u64)> {
    let genres = dataset.column_index("genres").unwrap();
    let query = Query::parse(dataset, QueryKind::Facets, "").unwrap();
    let mut facets: Vec<(String, u64)> = storage
        .facets(dataset, genres, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|(value, count)| (value.to_text(), count))
        .collect();
    facets.sort();
    facets
}

async fn sync_file(storage: &dyn Storage, dataset: &Dataset, path: &Path) -> ImportReport {
    let options = ImportOptions {
        mode: Some(ImportMode::Sync),
        ..ImportOptions::default()
    };
    let source = ImportSource::file(path).unwrap();
    import(storage, dataset, source, &options, None, &Ungated)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sync_leaves_the_rows_a_full_import_of_the_new_file_makes() {
    let (edited, expected) = edited_movies();
    for url in common::sql_backends().await {
        let storage = common::open(&url);
        let (synced, full) = (
            movies_as(&common::unique_name("synced").replace('-', "_")),
            movies_as(&common::unique_name("full").replace('-', "_")),
        );
        for dataset in [&synced, &full] {
            storage.migrate(dataset).await.unwrap();
        }
        import_file(storage.as_ref(), &synced, &common::movies_csv(), false)
            .await
            .unwrap();
        let report = sync_file(storage.as_ref(), &synced, &edited).await;
        assert_eq!(report.sync, Some(expected), "{url}: {}", report.summary());
        assert_eq!(
            report.unchanged(),
            Some(17_472 - expected.removed - expected.changed),
            "{url}"
        );
        import_file(storage.as_ref(), &full, &edited, false)
            .await
            .unwrap();

        let (synced_rows, full_rows) = (
            every_row(storage.as_ref(), &synced).await,
            every_row(storage.as_ref(), &full).await,
        );
        assert_eq!(synced_rows.len(), full_rows.len(), "{url}");
        assert!(synced_rows == full_rows, "{url}: the synced rows differ");
        // The list tables too: facets and element filters are read from them.
        assert_eq!(
            genre_facets(storage.as_ref(), &synced).await,
            genre_facets(storage.as_ref(), &full).await,
            "{url}"
        );
        let query = Query::parse(&synced, QueryKind::List, "genres=sync-test&limit=100").unwrap();
        let tagged = storage.list(&synced, &query).await.unwrap();
        let given_the_genre = (0..17_472).filter(|i| i % 1000 == 4).count();
        assert_eq!(
            tagged.len(),
            given_the_genre,
            "{url}: every row given the new genre"
        );

        // Syncing the same file again changes nothing.
        let again = sync_file(storage.as_ref(), &synced, &edited).await;
        assert_eq!(again.sync, Some(SyncCounts::default()), "{url}");

        // A first import in sync mode (the empty table reads made) is a replace.
        let first = movies_as(&common::unique_name("first").replace('-', "_"));
        storage.migrate(&first).await.unwrap();
        let report = sync_file(storage.as_ref(), &first, &edited).await;
        assert_eq!(report.sync, None, "{url}");
        assert!(
            every_row(storage.as_ref(), &first).await == full_rows,
            "{url}: the first sync imported the file"
        );
    }
}

/// Remembers what the sync asked to commit, and refuses when told to.
#[derive(Default)]
struct Recorder {
    refuse: bool,
    seen: Mutex<Vec<String>>,
    /// Changed rows offered with another key after than before.
    mispaired: Mutex<usize>,
}

#[async_trait]
impl CommitGate for Recorder {
    async fn before_commit(&self, change: Committing<'_>) -> Result<(), String> {
        let seen = match change {
            Committing::Row(_) => "row".to_owned(),
            Committing::Rows(rows) => {
                *self.mispaired.lock() += rows
                    .iter()
                    .filter(|w| match (&w.old, &w.new) {
                        (Some(old), Some(new)) => old[0] != new[0],
                        _ => false,
                    })
                    .count();
                format!("{} rows", rows.len())
            }
            Committing::Everything => "everything".to_owned(),
        };
        self.seen.lock().push(seen);
        if self.refuse {
            return Err("refused by the test".to_owned());
        }
        Ok(())
    }
}

/// Stages the rows of `path` and syncs them with `gate`, recording at most `record_rows`.
async fn sync_with(
    storage: &dyn Storage,
    dataset: &Dataset,
    path: &Path,
    gate: &dyn CommitGate,
    record_rows: u64,
) -> Result<Option<SyncCounts>, handler::storage::StorageError> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let rules = storage.engine_rules();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.unwrap();
        let row = dataset
            .columns
            .iter()
            .map(|column| {
                let source = column.source.as_deref().unwrap();
                let at = headers.iter().position(|h| h == source).unwrap();
                let is_key = column.name == dataset.key_column().name;
                handler::import::convert_field(column, is_key, &record[at], rules).unwrap()
            })
            .collect::<Row>();
        rows.push(row);
    }
    let mut sink = storage.begin_import(dataset).await.unwrap();
    for batch in rows.chunks(5_000) {
        sink.write(batch).await.unwrap();
    }
    storage.sync(dataset, sink, gate, record_rows).await
}

#[tokio::test]
async fn a_refused_sync_changes_nothing_and_a_large_one_is_recorded_as_everything() {
    let (edited, expected) = edited_movies();
    for url in common::sql_backends().await {
        let storage = common::open(&url);
        let dataset = movies_as(&common::unique_name("gated").replace('-', "_"));
        import_file(storage.as_ref(), &dataset, &common::movies_csv(), false)
            .await
            .unwrap();
        let before = every_row(storage.as_ref(), &dataset).await;

        let refusing = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        let refused = sync_with(storage.as_ref(), &dataset, &edited, &refusing, 10_000).await;
        assert!(refused.is_err(), "{url}: the gate refused");
        assert_eq!(
            *refusing.seen.lock(),
            vec![format!("{} rows", expected.total())],
            "{url}: every changed row offered to the gate"
        );
        assert_eq!(
            *refusing.mispaired.lock(),
            0,
            "{url}: old and new rows pair by key"
        );
        assert!(
            every_row(storage.as_ref(), &dataset).await == before,
            "{url}: a refused sync leaves every row as it was"
        );

        let recorder = Recorder::default();
        let counts = sync_with(storage.as_ref(), &dataset, &edited, &recorder, 10)
            .await
            .unwrap();
        assert_eq!(counts, Some(expected), "{url}");
        assert_eq!(
            *recorder.seen.lock(),
            vec!["everything".to_owned()],
            "{url}"
        );

        // And a new import may start: the sync released the import lock.
        storage
            .begin_import(&dataset)
            .await
            .unwrap()
            .abort()
            .await
            .unwrap();

        // A declaration that gained a filterable text column, migrated (as serving does): the
        // column is null in every live row, so every row differs from the staged one and is
        // rewritten, its hidden key with it. (Unmigrated, the tables are not the declaration's:
        // a replace.)
        let grown = movies_edited_as(&dataset.name, |text| {
            text + "\n[[columns]]\nname = \"title_again\"\ntype = \"text\"\nsource = \"Title\"\nfilter = true\n"
        });
        storage.migrate(&grown).await.unwrap();
        let report = sync_file(storage.as_ref(), &grown, &edited).await;
        let rows = every_row(storage.as_ref(), &grown).await.len() as u64;
        assert_eq!(
            report.sync.map(|s| s.changed),
            Some(rows),
            "{url}: {}",
            report.summary()
        );
        let title = grown.column_index("title").unwrap();
        let first_title = every_row(storage.as_ref(), &grown).await[0][title].to_text();
        let filter = format!("title_again={}", urlencode(&first_title));
        let query = Query::parse(&grown, QueryKind::List, &filter).unwrap();
        assert!(
            !storage.list(&grown, &query).await.unwrap().is_empty(),
            "{url}: the new column's hidden key was filled"
        );
    }
}

/// A declaration that makes an existing text column a filter gives it a normalised key, which the
/// rows stored before lack: `migrate` fills it (in batches, so past the first thousand rows too),
/// and a filter on the column finds every row it should at once, in any letter case. A write of
/// such a row keeps it filled.
#[tokio::test]
async fn a_migration_fills_the_normalised_key_of_a_column_made_a_filter() {
    for url in common::sql_backends().await {
        let storage = common::open(&url);
        let dataset = movies_as(&common::unique_name("refiltered").replace('-', "_"));
        import_file(storage.as_ref(), &dataset, &common::movies_csv(), false)
            .await
            .unwrap();
        let grown = movies_edited_as(&dataset.name, |text| {
            let director = "name = \"director\"\ntype = \"text\"";
            text.replacen(director, &format!("{director}\nfilter = true"), 1)
        });
        let migrated = storage.migrate(&grown).await.unwrap();

        let director = grown.column_index("director").unwrap();
        let year = grown.column_index("year").unwrap();
        let mut directed: Vec<Row> = every_row(storage.as_ref(), &grown)
            .await
            .into_iter()
            .filter(|r| !r[director].is_null())
            .collect();
        assert!(directed.len() > 2_000, "{url}: more rows than a batch");
        // Every directed row, but at most the two longest on the engines that cannot key them.
        let filled = migrated.keys_filled;
        assert!(
            (directed.len() as u64 - 2..=directed.len() as u64).contains(&filled),
            "{url}: {filled} keys filled of {}",
            directed.len()
        );
        directed.sort_by_key(|r| match r[0] {
            Value::Integer(id) => id,
            _ => panic!("movies have integer ids"),
        });
        let count = |name: String| {
            let (storage, grown, directed) = (storage.clone(), grown.clone(), &directed);
            async move {
                let expected = directed
                    .iter()
                    .filter(|r| {
                        r[director].to_text().trim().to_lowercase() == name.trim().to_lowercase()
                    })
                    .count() as u64;
                // In capitals: the filter compares normalised text.
                let filter = format!("director={}", urlencode(&name.to_uppercase()));
                let query = Query::parse(&grown, QueryKind::Count, &filter).unwrap();
                (storage.count(&grown, &query).await.unwrap(), expected)
            }
        };
        // Directors of rows spread over key order, the last included: every batch was filled.
        // (Two directors of the file are longer than SQL Server's and MySQL's key types hold:
        // those engines leave them out of the filter, as an import with the filter refuses them,
        // and the migration goes on.)
        let step = directed.len() / 10;
        let samples = directed.iter().step_by(step).chain(directed.last());
        for row in samples.filter(|r| r[director].to_text().chars().count() <= 450) {
            let name = row[director].to_text();
            let (found, expected) = count(name.clone()).await;
            assert_eq!(
                found, expected,
                "{url}: the rows of {name:?} after the migration"
            );
        }

        // Migrating again fills nothing, nor does finishing the fill.
        assert_eq!(
            storage.migrate(&grown).await.unwrap().keys_filled,
            0,
            "{url}"
        );
        assert_eq!(
            storage.fill_keys(&grown).await.unwrap().keys_filled,
            0,
            "{url}"
        );
        // A fill cut short (keys emptied again behind the service's back) is finished by
        // `fill_keys` (what `handler migrate` runs), not by a serving instance's `migrate`.
        if let Some(emptied) = execute_raw(
            &url,
            &format!("UPDATE {} SET director__key = NULL", grown.table),
        )
        .await
        {
            assert_eq!(
                storage.migrate(&grown).await.unwrap().keys_filled,
                0,
                "{emptied}"
            );
            let refilled = storage.fill_keys(&grown).await.unwrap().keys_filled;
            assert_eq!(refilled, filled, "{emptied}");
        }
        let sample = &directed[directed.len() / 2];
        let (found, expected) = count(sample[director].to_text()).await;
        assert_eq!(found, expected, "{url}: after the fill was finished");

        // A write keeps the key.
        let row = directed.last().unwrap();
        let change = Change::Patch(row[0].clone(), vec![(year, Value::Integer(1999))]);
        storage.write(&grown, change, &Ungated).await.unwrap();
        let (found, expected) = count(row[director].to_text()).await;
        assert_eq!(found, expected, "{url}");
        assert!(found >= 1, "{url}");
    }
}

/// Runs `sql` on the database at `url` over a connection of its own, to set up what the service
/// itself would never leave; `None` (nothing run) for SQL Server, which sqlx does not speak.
async fn execute_raw(url: &str, sql: &str) -> Option<String> {
    use sqlx::Connection as _;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    } else if url.starts_with("postgres") {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    } else if url.starts_with("mysql") {
        let mut connection = sqlx::MySqlConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    } else {
        return None;
    }
    Some(url.to_owned())
}

/// A live row the declaration can no longer read (here text where it declares an integer, as a
/// column whose type changed would leave it) does not stop a sync: it is replaced by the file's,
/// and the sync is recorded as a change of everything. (SQLite: it alone stores such a value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_replaces_live_rows_the_declaration_can_no_longer_read() {
    let (edited, expected) = edited_movies();
    let url = common::sqlite_url();
    let storage = common::open(&url);
    let dataset = movies_as(&common::unique_name("unreadable").replace('-', "_"));
    import_file(storage.as_ref(), &dataset, &common::movies_csv(), false)
        .await
        .unwrap();
    // Record 2 is one the edited file changes (its title), so the sync reads it back.
    let (_, records) = movies_records();
    let id: i64 = records[2][ID].parse().unwrap();
    let file = url.trim_start_matches("sqlite://");
    rusqlite::Connection::open(file)
        .unwrap()
        .execute(
            &format!(
                "UPDATE \"{}\" SET \"year\" = 'nineteen' WHERE \"id\" = ?1",
                dataset.table
            ),
            [id],
        )
        .unwrap();

    let recorder = Recorder::default();
    let counts = sync_with(storage.as_ref(), &dataset, &edited, &recorder, 10_000)
        .await
        .unwrap();
    assert_eq!(counts, Some(expected));
    assert_eq!(*recorder.seen.lock(), vec!["everything".to_owned()]);
    let year = dataset.column_index("year").unwrap();
    let row = every_row(storage.as_ref(), &dataset)
        .await
        .into_iter()
        .find(|row| row[0] == Value::Integer(id))
        .unwrap();
    assert_eq!(row[year].to_text(), records[2][YEAR].trim_end_matches(".0"));
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn x_cache(response: &common::TestResponse) -> String {
    App::header(response, "x-cache").to_owned()
}

/// Cached answers that no changed row can affect stay HITs on every instance; those a changed
/// row affects are fresh at once on the other instance.
#[tokio::test]
async fn a_sync_ends_only_the_answers_its_rows_change() {
    let (headers, records) = movies_records();
    let field = |i: usize, column: usize| records[i][column].to_owned();
    // Film 10 renamed, film 20 removed, a film of 2031 added.
    let (renamed, removed) = (field(10, ID), field(20, ID));
    let mut edited: Vec<csv::StringRecord> = records.clone();
    let mut title_changed: Vec<String> = edited[10].iter().map(str::to_owned).collect();
    title_changed[TITLE] = "A Title Changed By The Sync".to_owned();
    edited[10] = csv::StringRecord::from(title_changed);
    edited.remove(20);
    let mut added: Vec<String> = records[0].iter().map(str::to_owned).collect();
    added[ID] = "990100".to_owned();
    added[IMDB] = "tt9900100".to_owned();
    added[YEAR] = "2031".to_owned();
    edited.push(csv::StringRecord::from(added));
    let path = write_csv("movies-sync-cache", &headers, &edited);

    // Questions no changed row touches: other films, and years none of them has.
    let touched_years = [field(10, YEAR), field(20, YEAR), "2031".to_owned()];
    let untouched: Vec<String> = (100..110)
        .map(|i| format!("/api/movies/{}", field(i, ID)))
        .chain(
            ["1950", "1960", "1970", "1980"]
                .into_iter()
                .filter(|y| !touched_years.iter().any(|t| t == y))
                .flat_map(|y| {
                    [
                        format!("/api/movies?year={y}"),
                        format!("/api/movies/count?year={y}"),
                        format!("/api/movies/facets/genres?year={y}"),
                    ]
                }),
        )
        .collect();
    let touched = [
        format!("/api/movies/{renamed}"),
        format!("/api/movies/{removed}"),
        format!("/api/movies/count?year={}", field(20, YEAR)),
        "/api/movies/count?year=2031".to_owned(),
        format!("/api/movies?year={}&limit=500", field(10, YEAR)),
    ];

    for (backend, a, b) in common::movies_backends().await {
        for uri in untouched.iter().chain(&touched) {
            let first = a.get(uri).await;
            assert!(
                first.status.is_success(),
                "{backend} {uri}: {}",
                first.status
            );
            assert_eq!(x_cache(&a.get(uri).await), "HIT", "{backend} {uri}");
        }
        let options = ImportOptions {
            mode: Some(ImportMode::Sync),
            ..ImportOptions::default()
        };
        let report = a
            .state
            .service
            .import("movies", ImportFrom::File(path.clone()), &options)
            .await
            .unwrap();
        assert_eq!(
            report.sync,
            Some(SyncCounts {
                added: 1,
                changed: 1,
                removed: 1
            }),
            "{backend}"
        );

        for uri in &untouched {
            assert_eq!(x_cache(&b.get(uri).await), "HIT", "{backend} {uri}");
        }
        let renamed_now = b.get(&touched[0]).await;
        assert_eq!(x_cache(&renamed_now), "MISS", "{backend}");
        assert_eq!(renamed_now.json()["title"], "A Title Changed By The Sync");
        assert_eq!(b.get(&touched[1]).await.status, 404, "{backend}");
        let removed_year = b.get(&touched[2]).await;
        assert_eq!(x_cache(&removed_year), "MISS", "{backend}");
        let fresh_count = a
            .state
            .storage
            .count(
                &a.dataset("movies"),
                &Query::parse(
                    &a.dataset("movies"),
                    QueryKind::Count,
                    &format!("year={}", field(20, YEAR)),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(removed_year.json()["count"], fresh_count, "{backend}");
        assert_eq!(b.get(&touched[3]).await.json()["count"], 1, "{backend}");
        let page = b.get(&touched[4]).await;
        assert_eq!(x_cache(&page), "MISS", "{backend}");
        assert!(
            page.text().contains("A Title Changed By The Sync"),
            "{backend}"
        );
    }
}

/// `POST /api/admin/imports` takes a `mode`; anything but replace or sync is named in a 422
/// before any blob is opened.
#[tokio::test]
async fn an_http_import_names_a_wrong_mode() {
    let app = App::movies_on_sqlite().await.as_admin().await;
    for mode in [serde_json::json!("fast"), serde_json::json!(3)] {
        let response = app
            .post_json(
                "/api/admin/imports",
                &serde_json::json!({
                    "dataset": "movies",
                    "blob": "https://account.blob.core.windows.net/data/movies.csv",
                    "mode": mode,
                }),
            )
            .await;
        assert_eq!(response.status, 422, "{}", response.text());
        let problem = response.json();
        assert_eq!(problem["invalid_params"][0]["name"], "mode", "{problem}");
    }
}

/// API writes during a sync wait for it or go first, on rows it changes and rows it does not:
/// neither fails (no deadlock between a writer's row lock and the sync's delete), and each row
/// ends as the file has it or as the last write left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_sync_neither_fail_nor_deadlock() {
    let (edited, _) = edited_movies();
    let (_, records) = movies_records();
    // Row 2 is changed by the file, row 7 is not.
    let (changed, untouched): (i64, i64) = (
        records[2][ID].parse().unwrap(),
        records[7][ID].parse().unwrap(),
    );
    for url in common::sql_backends().await {
        let storage = common::open(&url);
        let dataset = movies_as(&common::unique_name("busy").replace('-', "_"));
        import_file(storage.as_ref(), &dataset, &common::movies_csv(), false)
            .await
            .unwrap();
        let runtime = dataset.column_index("runtime").unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (storage, dataset, done) =
                (Arc::clone(&storage), dataset.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                // Until the sync is over (bounded): before, during and after its transaction.
                for n in 0..5_000 {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(n);
                    }
                    for key in [changed, untouched] {
                        let change = handler::storage::Change::Patch(
                            handler::datasets::Value::Integer(key),
                            vec![(runtime, handler::datasets::Value::Integer(1000 + n))],
                        );
                        storage.write(&dataset, change, &Ungated).await?;
                    }
                }
                Ok::<_, handler::storage::StorageError>(5_000)
            })
        };
        let synced = sync_file(storage.as_ref(), &dataset, &edited).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{url}: a write failed: {e}"));
        assert!(writes > 10, "{url}: only {writes} writes overlapped");
        assert!(synced.sync.is_some(), "{url}");
        let get = |key: i64| {
            let (storage, dataset) = (Arc::clone(&storage), dataset.clone());
            async move {
                storage
                    .get(&dataset, &handler::datasets::Value::Integer(key))
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        for key in [changed, untouched] {
            let value = get(key).await[runtime].clone();
            let from_file = records
                .iter()
                .find(|r| r[ID] == key.to_string())
                .map(|r| r[5].trim().parse::<f64>().ok().map(|f| f as i64))
                .unwrap();
            let ok = match value {
                handler::datasets::Value::Integer(n) => n >= 1000 || Some(n) == from_file,
                handler::datasets::Value::Null => from_file.is_none(),
                _ => false,
            };
            assert!(ok, "{url}: row {key} ends as {value:?}");
        }
    }
}

/// Records of many rows are bounded in bytes in Redis's write log too: past 16 MiB the oldest go,
/// the newest stays.
#[tokio::test]
async fn redis_keeps_a_bounded_number_of_bytes_of_sync_records() {
    let Some(redis_url) = common::redis_url().await else {
        return;
    };
    let dataset = movies_as("movies");
    let prefix = common::unique_prefix();
    let cache = handler::cache::Cache::with_redis(
        &redis_url,
        &prefix,
        std::time::Duration::from_secs(60),
        handler::cache::DEFAULT_MAX_BYTES,
    );
    let title = dataset.column_index("title").unwrap();
    let row = |id: i64| {
        let mut row = vec![handler::datasets::Value::Null; dataset.columns.len()];
        row[dataset.key.column] = handler::datasets::Value::Integer(id);
        row[title] = handler::datasets::Value::Text("t".repeat(1_000));
        row
    };
    for _ in 0..6 {
        let changes = (0..3_000)
            .map(|id| handler::cache::RowChange {
                old: Some(row(id)),
                new: None,
            })
            .collect();
        let write = cache
            .begin_changes(&dataset, changes, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        cache.end_write(write).await.unwrap();
    }
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix}:{{movies}}:writes"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let bytes: usize = log.iter().map(String::len).sum();
    let large = log.iter().filter(|r| r.len() > 1_000_000).count();
    assert!(bytes <= 16 << 20, "{bytes} bytes in the log");
    assert!((3..6).contains(&large), "{large} records of 3 MB kept");
    assert!(
        log.last().unwrap().len() > 1_000_000,
        "the newest record stays"
    );
}
