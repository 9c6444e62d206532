//! The `handler` binary as a user runs it: configuration errors end with one clear sentence, the
//! import prints its summary, and `serve` answers on the Functions port.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn handler() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command.env("DATASETS_DIR", common::repo_root().join("datasets"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("PORT");
    command.env("RUST_LOG", "warn");
    command
}

/// Runs the command and returns (exit code, stdout, stderr).
fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn assert_one_clear_sentence(stderr: &str, expected: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not a backtrace: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(expected), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn configuration_errors_are_one_sentence() {
    let (code, _, stderr) = run(handler()
        .arg("migrate")
        .env("DATABASE_URL", "oracle://scott:tiger@db"));
    assert_eq!(code, 2);
    assert_one_clear_sentence(
        &stderr,
        "DATABASE_URL must start with sqlite://, postgres://, mysql://, mariadb:// or mssql://",
    );
    assert!(!stderr.contains("tiger"), "the password leaked: {stderr}");

    let (code, _, stderr) = run(handler()
        .arg("migrate")
        .env("DATABASE_URL", "postgres://app:s3cret@127.0.0.1:9/x"));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "cannot create the tables");
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");

    let (code, _, stderr) = run(handler().args([
        "import",
        "--dataset",
        "movies",
        "--blob",
        "https://acct.blob.core.windows.net/only-a-container?sig=SECRET",
    ]));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "the blob URL must name a container and a blob");
    assert!(!stderr.contains("SECRET"), "the SAS leaked: {stderr}");

    let (code, _, stderr) = run(handler()
        .arg("serve")
        .env("DATASETS_DIR", "/nonexistent/datasets"));
    assert_eq!(code, 2);
    assert_one_clear_sentence(
        &stderr,
        "cannot read the datasets directory /nonexistent/datasets",
    );

    let (code, _, stderr) = run(handler()
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "eighty"));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "FUNCTIONS_CUSTOMHANDLER_PORT must be a TCP port");

    let url = common::sqlite_url();
    let (code, _, stderr) = run(handler()
        .args([
            "import",
            "--dataset",
            "movies",
            "--file",
            "/nonexistent.csv",
        ])
        .env("DATABASE_URL", &url));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "cannot open /nonexistent.csv");

    let (code, _, stderr) = run(handler()
        .args(["import", "--dataset", "films", "--file", "/dev/null"])
        .env("DATABASE_URL", &url));
    assert_eq!(code, 2);
    assert_one_clear_sentence(
        &stderr,
        "there is no dataset named \"films\"; declared: flights, movies",
    );

    let dir = std::env::temp_dir().join(format!("smartcache_unreadable_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, _, stderr) = run(handler()
        .args(["import", "--dataset", "movies", "--file"])
        .arg(&dir)
        .env("DATABASE_URL", &url));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "cannot import");
}

#[test]
fn import_groups_rejections_by_reason_and_writes_every_line_to_rejects() {
    let url = common::sqlite_url();
    let dir = std::env::temp_dir();
    let path = dir.join(format!("smartcache_cli_{}.csv", std::process::id()));
    let rejects = dir.join(format!("smartcache_cli_{}.rejects.csv", std::process::id()));
    let mut movies = std::fs::read_to_string(common::movies_csv()).unwrap();
    // One systematic problem (a decimal year) on 7 lines, a short line and a duplicate key.
    for n in 0..7 {
        movies.push_str(&format!(
            "{},tt9,Broken {n},1999.5,,,,,,,,0,,,\n",
            900_000 + n
        ));
    }
    movies.push_str("99,too,short\n");
    movies.push_str("372,tt1,\"Again, the first film's key\",2009,,,,,,,,0,,,\n");
    std::fs::write(&path, movies).unwrap();
    let (code, stdout, stderr) = run(handler()
        .args(["import", "--dataset", "movies", "--file"])
        .arg(&path)
        .arg("--rejects")
        .arg(&rejects)
        .env("DATABASE_URL", &url));
    assert_eq!(code, 0, "{stderr}");
    // One line per reason, largest first, with the first line numbers; no line per rejection.
    let expected = [
        "rejected 9 lines, by reason:",
        "  7 lines: column \"year\": is not a valid integer (first on lines 17474, 17475, \
         17476, 17477, 17478)",
        "  1 line: expected 15 fields, found 3 (first on line 17481)",
        "  1 line: column \"id\": duplicate key (first on line 17482)",
    ];
    for line in expected {
        assert!(
            stderr.lines().any(|l| l == line),
            "{line:?} not in\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("rejected line 1"),
        "no line per rejection: {stderr}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("imported 17472 rows into movies, rejected 9, "),
        "{summary}"
    );
    assert!(summary.ends_with(" rows/s"), "{summary}");

    // Every rejected line, as CSV: where, why, the value, then the record under its header.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&rejects)
        .unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[..5], ["line", "column", "reason", "detail", "ID"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 9);
    assert_eq!(&rows[0][0], "17474");
    assert_eq!(&rows[0][2], "is not a valid integer");
    assert_eq!(&rows[0][3], "value \"1999.5\"");
    assert_eq!(&rows[0][6], "Broken 0");
    assert_eq!(&rows[7][2], "expected 15 fields, found 3");
    assert_eq!(&rows[8][1], "id");
    assert_eq!(&rows[8][3], "372 is first on line 2");
    assert_eq!(
        &rows[8][6], "Again, the first film's key",
        "quoted fields survive"
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rejects);
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn serve_listens_on_the_functions_port_and_is_ready_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = handler()
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("PORT", "1") // the Functions variable wins
        .env("DATABASE_URL", common::sqlite_url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut answer = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Some(response) = http_get(port, "/api/health") {
            answer = Some(response);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.expect("serve never answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
}

/// Runs `command` with `input` on standard input.
fn run_with_input(command: &mut Command, input: &str) -> (i32, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The first admin is made on the command line; the password comes from stdin and never shows.
#[test]
fn users_are_created_promoted_and_deactivated_from_the_command_line() {
    let db = common::sqlite_url();
    let users = |args: &[&str]| {
        let mut command = handler();
        command.env("DATABASE_URL", &db).arg("users").args(args);
        command
    };
    let (code, stdout, stderr) = run_with_input(
        &mut users(&[
            "create",
            "--email",
            "Root@Example.com",
            "--password-stdin",
            "--admin",
        ]),
        "hunter2 is long\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("created admin Root@Example.com"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));

    let (code, _, stderr) = run_with_input(
        &mut users(&["create", "--email", "root@example.com", "--password-stdin"]),
        "another password\n",
    );
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "exists already");

    let (code, _, stderr) = run_with_input(
        &mut users(&["create", "--email", "short@example.com", "--password-stdin"]),
        "short\n",
    );
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "at least 8 characters");
    assert!(!stderr.contains("short\n"));

    let (code, stdout, _) = run(&mut users(&["demote", "--email", "ROOT@example.com"]));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "Root@Example.com is now user (active)");
    let (_, stdout, _) = run(&mut users(&["promote", "--email", "root@example.com"]));
    assert_eq!(stdout.trim(), "Root@Example.com is now admin (active)");
    let (_, stdout, _) = run(&mut users(&["deactivate", "--email", "root@example.com"]));
    assert_eq!(stdout.trim(), "Root@Example.com is now admin (deactivated)");
    let (code, _, stderr) = run(&mut users(&["promote", "--email", "nobody@example.com"]));
    assert_eq!(code, 2);
    assert_one_clear_sentence(&stderr, "no account with the email nobody@example.com");
}
