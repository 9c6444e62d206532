//! `handler datasets init` on three real CSVs it was not written for (see
//! `tests/fixtures/init/README.md`): the declaration it writes is the committed one, parses, and
//! imports every row of its file on SQLite with no rejection and no edit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use handler::datasets::parse_declaration;
use handler::import::import_file;

const FIXTURES: &[(&str, u64)] = &[
    ("flights_jan", 1599),
    ("countries", 249),
    ("pg_settings", 356),
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/init")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `handler datasets init` with `args`; (exit code, stdout, stderr).
fn init(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["datasets", "init"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn three_real_files_are_declared_and_imported_without_edits() {
    let dir = scratch("init");
    for (name, rows) in FIXTURES {
        let csv = fixtures().join(format!("{name}.csv"));
        let out = dir.join(format!("{name}.toml"));
        let (code, stdout, stderr) = init(&["--file", path(&csv), "--out", path(&out)]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(
            stdout.contains(&format!("rows of {}", csv.display())),
            "{stdout}"
        );
        let written = std::fs::read_to_string(&out).unwrap();

        // The committed declaration is what the command writes: a change shows in the diff.
        // `UPDATE_FIXTURES=1` rewrites them.
        let committed = fixtures().join(format!("{name}.toml"));
        if std::env::var_os("UPDATE_FIXTURES").is_some() {
            std::fs::write(&committed, &written).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&committed).unwrap(),
            written,
            "{name}: the declaration changed; UPDATE_FIXTURES=1 rewrites it"
        );

        let dataset = parse_declaration(&written, None).unwrap();
        assert_eq!(dataset.name, *name);
        let storage = common::open(&common::sqlite_url());
        let report = import_file(storage.as_ref(), &dataset, &csv, false)
            .await
            .unwrap();
        assert_eq!(
            (report.imported, report.rejected),
            (*rows, 0),
            "{name}: {:?}",
            report.rejections
        );
        assert_eq!(common::row_count(storage.as_ref(), &dataset).await, *rows);
    }
}

#[test]
fn the_guesses_are_the_ones_the_files_call_for() {
    let read = |name: &str| {
        let text = std::fs::read_to_string(fixtures().join(format!("{name}.toml"))).unwrap();
        (parse_declaration(&text, None).unwrap(), text)
    };
    use handler::datasets::ColumnType::*;
    let (flights, text) = read("flights_jan");
    assert!(flights.key.generated, "no flights column is unique");
    let dep_time = flights.column("dep_time").unwrap();
    assert_eq!(dep_time.ty, Integer);
    assert!(dep_time.nullable && dep_time.is_null_marker("NA"), "{text}");
    assert_eq!(flights.column("time_hour").unwrap().ty, Timestamp);
    assert!(flights.column("carrier").unwrap().filterable);

    let (countries, text) = read("countries");
    assert_eq!(countries.key_column().name, "code", "{text}");
    assert_eq!(countries.key_column().source.as_deref(), Some("Code"));
    // Namibia's code is "NA": not missing in a text column.
    assert!(!countries.key_column().is_null_marker("NA"));
    assert_eq!(
        countries
            .column("regions")
            .unwrap()
            .list_delimiter
            .as_deref(),
        Some(",")
    );
    assert_eq!(countries.column("latitude").unwrap().ty, Float);
    assert_eq!(countries.column("zone_count").unwrap().ty, Integer);
    assert!(countries.column("first_zone_comment").unwrap().nullable);

    let (settings, text) = read("pg_settings");
    assert_eq!(settings.key_column().name, "name", "{text}");
    // Mostly whole numbers, and 1.79769e+308 for the float settings.
    assert_eq!(settings.column("max_val").unwrap().ty, Float, "{text}");
    assert!(text.contains("made this float, not integer"), "{text}");
    assert_eq!(settings.column("pending_restart").unwrap().ty, Boolean);
}

#[test]
fn gzip_names_defaults_and_no_overwrite_without_force() {
    use std::io::Write as _;
    let dir = scratch("init_gz");
    let csv = std::fs::read(fixtures().join("countries.csv")).unwrap();
    let gz = dir.join("World Countries.csv.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(&csv).unwrap();
    encoder.finish().unwrap();

    // Run in `dir`: the default output is datasets/<name>.toml, the name made from the file's.
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_handler"))
            .current_dir(&dir)
            .args(["datasets", "init", "--file", path(&gz)])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(run(&[]).0, Some(0));
    let out = dir.join("datasets/world_countries.toml");
    let written = std::fs::read_to_string(&out).unwrap();
    let committed = std::fs::read_to_string(fixtures().join("countries.toml")).unwrap();
    let body = |t: &str| t.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert_eq!(
        body(&written)
            .replace("world_countries", "countries")
            .replace("World countries", "Countries"),
        body(&committed)
    );

    std::fs::write(&out, "mine").unwrap();
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("exists already: give --force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
    assert_eq!(run(&["--force"]).0, Some(0));
    assert_ne!(std::fs::read_to_string(&out).unwrap(), "mine");

    let (code, stderr) = run(&["--name", "health"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("reserved"), "{stderr}");
}
