//! Private Redis servers the tests start from the installed `redis-server`: a three-node
//! cluster and a standalone server that can be killed and restarted. Shared by the
//! integration tests and the cache's unit suite (included there by path), so it uses only
//! the standard library.

use std::path::PathBuf;

static NEXT_CLUSTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A private three-node Redis Cluster on loopback, started from the installed `redis-server`
/// and stopped on drop.
pub struct RedisCluster {
    processes: Vec<std::process::Child>,
    dir: PathBuf,
    pub url: String,
}

/// Whether `redis-server` and `redis-cli` are installed; `false` with a visible line when not,
/// and a failure under `CI=true`.
fn installed() -> bool {
    let installed = ["redis-server", "redis-cli"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !installed {
        let message =
            "redis-server and redis-cli are needed for the cluster tests: install redis-server";
        super::skip::skipped(message, false);
    }
    installed
}

impl RedisCluster {
    /// `None`, with a visible line, when `redis-server`/`redis-cli` are not installed (a failure
    /// under `CI=true`).
    pub async fn start() -> Option<RedisCluster> {
        installed().then(RedisCluster::launch)
    }

    /// One cluster for the whole test process, started on first use. A watchdog shell stops its
    /// nodes when the process exits, since statics are never dropped.
    #[allow(dead_code)] // used by the cache's unit suite, not by every test binary
    pub fn shared() -> Option<&'static str> {
        static SHARED: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
        let cluster = SHARED.get_or_init(|| {
            let cluster = installed().then(RedisCluster::launch)?;
            let pids: Vec<String> = cluster
                .processes
                .iter()
                .map(|p| p.id().to_string())
                .collect();
            let script = format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; kill {}; sleep 1; rm -rf '{}'",
                std::process::id(),
                pids.join(" "),
                cluster.dir.display()
            );
            // The watchdog outlives this process on purpose: nothing waits for it.
            #[allow(clippy::zombie_processes)]
            std::process::Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("sh starts");
            Some(cluster)
        });
        cluster.as_ref().map(|c| c.url.as_str())
    }

    fn launch() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "smartcache_cluster_{}_{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let mut processes = Vec::new();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let node_dir = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                ])
                .args([
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            processes.push(child);
            nodes.push(format!("127.0.0.1:{port}"));
        }
        let cluster = RedisCluster {
            processes,
            dir,
            url: nodes.join(","),
        };
        for node in &nodes {
            let port = node.rsplit(':').next().unwrap();
            wait_for(|| redis_cli(port, &["ping"]).contains("PONG"));
        }
        let mut create = std::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]).args(&nodes).args([
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]);
        let output = create.output().unwrap();
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for node in &nodes {
            let port = node.rsplit(':').next().unwrap();
            wait_for(|| redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok"));
        }
        cluster
    }
}

fn redis_cli(port: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for(ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the Redis cluster did not get ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private standalone `redis-server` on a given port, for tests that kill and restart it.
pub struct PrivateRedis {
    process: std::process::Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        PrivateRedis::start_with(port, &["--save", "", "--appendonly", "no"])
    }

    /// Keeps its data in `dir` (append-only file, synced on every write), so a restart brings it
    /// back as it was.
    pub fn start_persistent(port: u16, dir: &std::path::Path) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_str().unwrap();
        PrivateRedis::start_with(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ],
        )
    }

    /// Whether `redis-server` and `redis-cli` are installed; `false` with a visible line when
    /// not, and a failure under `CI=true`.
    pub fn available() -> bool {
        installed()
    }

    /// Keeps its data in `dir/dump.rdb` only when [`PrivateRedis::save`] writes it: no automatic
    /// saves and none at exit (it is killed), and a start loads whatever dump `dir` holds. So a
    /// restart can bring back data older than the latest writes, as a server restored from an
    /// old snapshot (or a replica that missed the last writes) would.
    pub fn start_snapshots(port: u16, dir: &std::path::Path) -> PrivateRedis {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_str().unwrap();
        PrivateRedis::start_with(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir,
                "--dbfilename",
                "dump.rdb",
            ],
        )
    }

    /// [`PrivateRedis::start_snapshots`] again on the same port and `dir`, `down` after killing
    /// this one: with the data of `dump` (a copy of an earlier `dump.rdb`), or empty without one.
    pub fn restart_snapshots(
        self,
        dir: &std::path::Path,
        dump: Option<&std::path::Path>,
        down: std::time::Duration,
    ) -> PrivateRedis {
        let port = self.port;
        self.kill();
        std::thread::sleep(down);
        let target = dir.join("dump.rdb");
        match dump {
            Some(dump) => {
                std::fs::copy(dump, &target).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&target);
            }
        }
        PrivateRedis::start_snapshots(port, dir)
    }

    /// Writes the data to its `dump.rdb` now (`SAVE`) and copies that file to `to`.
    pub fn save(&self, dir: &std::path::Path, to: &std::path::Path) {
        let answer = redis_cli(&self.port.to_string(), &["SAVE"]);
        assert!(answer.contains("OK"), "SAVE answered {answer:?}");
        std::fs::copy(dir.join("dump.rdb"), to).unwrap();
    }

    /// Stops the process (`SIGSTOP`): its connections stay open and nothing is answered, as
    /// a server stalled by a long fork, a swap storm or a VM pause.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process go on (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.process.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    fn start_with(port: u16, options: &[&str]) -> PrivateRedis {
        let process = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(options)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let port_text = port.to_string();
        wait_for(|| redis_cli(&port_text, &["ping"]).contains("PONG"));
        PrivateRedis { process, port }
    }

    pub fn kill(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
