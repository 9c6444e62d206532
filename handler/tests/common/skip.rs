//! Suites that cannot run for a missing tool say so where it is seen: the test harness captures
//! `eprintln!` of passing tests, so the line is written to the process's stderr directly and,
//! under `scripts/test` (the README's test command), appended to the log it lists at the end.

use std::io::Write as _;

/// Records that the calling test skipped what `message` names (it says what to install). Under
/// `CI=true` a missing tool is a failure instead, unless `even_in_ci` (SQL Server, which no
/// machine here can run).
pub fn skipped(message: &str, even_in_ci: bool) {
    if !even_in_ci && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let line = format!("SKIPPED {}::{test}: {message}\n", env!("CARGO_CRATE_NAME"));
    // Not `eprintln!`: that goes to the harness's capture, which a passing test never shows.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Ok(log) = std::env::var("SMARTCACHE_SKIPPED_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        // One write per line: appends of a short line from parallel tests do not interleave.
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }
}
