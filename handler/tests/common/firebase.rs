//! The Firebase Authentication emulator (npm `firebase-tools`), started once per test process on
//! free loopback ports, with its UI off (it would download assets). A watchdog stops it when the
//! test process exits.

use std::time::Duration;

/// The project id the tests use; `demo-` projects need no credentials.
pub const PROJECT: &str = "demo-smartcache";

/// `host:port` of a running emulator (`FIREBASE_AUTH_EMULATOR_HOST` if set, else one started
/// here); `None`, with a line naming what to install, when `firebase` is missing (a failure under
/// `CI=true`).
pub fn emulator() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(start).as_deref()
}

fn start() -> Option<String> {
    if let Ok(host) = std::env::var("FIREBASE_AUTH_EMULATOR_HOST") {
        return Some(host);
    }
    if !super::background::installed("firebase", "npm install -g firebase-tools") {
        return None;
    }
    let dir = super::background::scratch("firebase");
    let port = super::served::free_port();
    let config = serde_json::json!({"emulators": {
        "auth": {"host": "127.0.0.1", "port": port},
        "hub": {"host": "127.0.0.1", "port": super::served::free_port()},
        "logging": {"host": "127.0.0.1", "port": super::served::free_port()},
        "ui": {"enabled": false},
    }});
    std::fs::write(dir.join("firebase.json"), config.to_string()).unwrap();
    let mut command = std::process::Command::new("firebase");
    command.args(["emulators:start", "--only", "auth", "--project", PROJECT]);
    super::background::start(
        command,
        &dir,
        port,
        "the Firebase Auth emulator",
        Duration::from_secs(90),
    );
    let host = format!("127.0.0.1:{port}");
    Some(host)
}
