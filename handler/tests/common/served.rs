//! `handler serve` as its own process, started as the Functions host starts it: on a free port
//! of 127.0.0.1 given in `FUNCTIONS_CUSTOMHANDLER_PORT`, over a database and the shipped datasets.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; killed when dropped.
pub struct Served {
    pub child: Child,
    pub port: u16,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `handler serve` over `database_url` with `settings` (and no Redis or telemetry unless
/// they say so), its log lines (stdout) going to `log`; returns once it accepts connections.
pub async fn serve(database_url: &str, settings: &[(&str, String)], log: Stdio) -> Served {
    start(database_url, settings, log, "FUNCTIONS_CUSTOMHANDLER_PORT").await
}

/// [`serve`] as a plain server (`PORT`), not under the Functions host: loopback is a client
/// like any other.
pub async fn serve_plain(database_url: &str, settings: &[(&str, String)]) -> Served {
    start(database_url, settings, Stdio::null(), "PORT").await
}

async fn start(
    database_url: &str,
    settings: &[(&str, String)],
    log: Stdio,
    port_variable: &str,
) -> Served {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command
        .arg("serve")
        .env("DATASETS_DIR", super::repo_root().join("datasets"))
        .env("DATABASE_URL", database_url)
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("PORT")
        .env(port_variable, port.to_string())
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("APPLICATIONINSIGHTS_CONNECTION_STRING")
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log)
        .stderr(Stdio::null());
    let served = Served {
        child: command.spawn().unwrap(),
        port,
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served
}

/// A fresh SQLite database holding the movies.
pub async fn movies_db() -> String {
    let url = super::sqlite_url();
    super::import_movies(super::open(&url).as_ref(), &super::catalog()).await;
    url
}
