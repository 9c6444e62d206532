//! A service started for one test process (an emulator from npm): its own process group, stopped
//! with its children by a watchdog shell once the test process exits, its scratch folder removed.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` is installed; if not, a visible line naming what to install, or a failure
/// under `CI=true`.
pub fn installed(program: &str, install: &str) -> bool {
    if Command::new(program).arg("--version").output().is_ok() {
        return true;
    }
    super::skip::skipped(&format!("{program} is needed: {install}"), false);
    false
}

/// A scratch folder for one service of this test process.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("smartcache_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `command` in `dir` and waits until it accepts connections on `127.0.0.1:port`.
pub fn start(mut command: Command, dir: &Path, port: u16, what: &str, within: Duration) {
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -TERM -{} 2>/dev/null; sleep 2; rm -rf '{}'",
        std::process::id(),
        child.id(),
        dir.display()
    );
    #[allow(clippy::zombie_processes)] // the watchdog outlives this process on purpose
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("sh starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < within, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The watchdog stops it; this process must not wait for it.
    std::mem::forget(child);
}
