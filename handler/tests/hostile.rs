//! Hostile clients against `handler serve` (its own process, on loopback, bounded in count and
//! time): slowloris connections that trickle their headers and clients that read exports a few
//! bytes at a time, while an ordinary client reads (cached and not), signs in and writes. Every
//! ordinary request must succeed, and every hostile connection must be cut by the server's own
//! timeouts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::served::{Served, movies_db, serve, serve_plain};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// The server's timeouts in this test: short, so that a 30-second run sees many of them.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the ordinary client works under attack.
const UNDER_ATTACK: Duration = Duration::from_secs(20);
const SLOWLORIS: usize = 50;
const SLOW_READERS: usize = 20;
const ADMIN_EMAIL: &str = "admin@hostile.test";

/// How one hostile connection ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// The server closed it, this long after it was opened.
    ByServer(Duration),
    /// Still open when the attack stopped, this long after it was opened.
    StillOpen(Duration),
}

/// Trickles a request head, one header line every half second, until the server hangs up;
/// then does it again, until `stop`.
async fn slowloris(port: u16, stop: Arc<AtomicBool>) -> Vec<Ended> {
    let mut ended = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let opened = Instant::now();
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = stream
            .write_all(b"GET /api/movies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await;
        let mut buf = [0u8; 512];
        let end = loop {
            if stop.load(Ordering::Relaxed) {
                break Ended::StillOpen(opened.elapsed());
            }
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break Ended::ByServer(opened.elapsed()),
                    Ok(_) => {} // a 408, say; the close follows
                },
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break Ended::ByServer(opened.elapsed());
                    }
                }
            }
        };
        ended.push(end);
    }
    ended
}

/// Asks for an export with a small receive buffer and reads 16 bytes every 200 ms, until the
/// server hangs up; then does it again, until `stop`.
async fn slow_reader(port: u16, path: &'static str, stop: Arc<AtomicBool>) -> Vec<Ended> {
    let mut ended = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let opened = Instant::now();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let Ok(mut stream) = socket.connect(([127, 0, 0, 1], port).into()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let mut buf = [0u8; 16];
        let end = loop {
            if stop.load(Ordering::Relaxed) {
                break Ended::StillOpen(opened.elapsed());
            }
            // A reset (what the server sends when it gives up on a reader) is pending as an
            // error before the bytes still buffered here are read.
            if let Ok(Some(_)) = stream.take_error() {
                break Ended::ByServer(opened.elapsed());
            }
            // Bounded, so that a connection the server failed to cut shows as still open at the
            // end instead of hanging the test.
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Err(_) => {}
                Ok(Ok(0) | Err(_)) => break Ended::ByServer(opened.elapsed()),
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        ended.push(end);
    }
    ended
}

/// What the ordinary client saw: a status per request, and the slowest answer.
#[derive(Default)]
struct Ordinary {
    failures: Vec<String>,
    requests: usize,
    slowest: Duration,
}

impl Ordinary {
    async fn expect(&mut self, what: &str, request: reqwest::RequestBuilder) {
        let started = Instant::now();
        let response = request.send().await;
        self.requests += 1;
        self.slowest = self.slowest.max(started.elapsed());
        match response {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
            }
            Ok(response) => self.failures.push(format!("{what}: {}", response.status())),
            Err(error) => self.failures.push(format!("{what}: {error}")),
        }
    }
}

/// Reads cached and uncached pages and rows, signs in and writes, until `duration` is over.
async fn ordinary_client(served: &Served, duration: Duration) -> Ordinary {
    handler::auth::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut seen = Ordinary::default();
    let login = serde_json::json!({"email": ADMIN_EMAIL, "password": common::TEST_PASSWORD});
    let ids = common::MoviesCsv::load().ids;
    let started = Instant::now();
    let mut round = 0u32;
    // A login and a write every two seconds: a person's pace, well within the login limits.
    let mut next_write = started;
    while started.elapsed() < duration {
        round += 1;
        let cached = served.url("/api/movies?genres=drama&limit=20");
        seen.expect("cached list", client.get(cached)).await;
        // Every round asks a question not asked before: a database query.
        let uncached = served.url(&format!(
            "/api/movies?year.gte={}&limit={}",
            1930 + round % 90,
            1 + round / 90
        ));
        seen.expect("uncached list", client.get(uncached)).await;
        let item = served.url(&format!("/api/movies/{}", ids[round as usize % ids.len()]));
        seen.expect("item", client.get(item)).await;
        seen.expect("health", client.get(served.url("/api/health")))
            .await;
        if Instant::now() >= next_write {
            next_write += Duration::from_secs(2);
            let response = client
                .post(served.url("/api/auth/login"))
                .json(&login)
                .send()
                .await;
            let token = match response {
                Ok(response) if response.status().is_success() => response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["access_token"].as_str().map(str::to_owned)),
                other => {
                    seen.failures.push(format!("login: {other:?}"));
                    None
                }
            };
            seen.requests += 1;
            if let Some(token) = token {
                let write = client
                    .patch(served.url("/api/movies/595"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({"runtime": 100 + round}));
                seen.expect("write", write).await;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_requests_succeed_while_hostile_clients_are_cut_off() {
    let db = movies_db().await;
    common::open(&db)
        .create_user(handler::storage::NewUser {
            email: ADMIN_EMAIL.into(),
            password_hash: Some(handler::auth::password::hash(common::TEST_PASSWORD).unwrap()),
            firebase_uid: None,
            role: "admin".into(),
        })
        .await
        .unwrap();
    let settings = [
        (
            "JWT_SECRET",
            String::from_utf8(common::TEST_JWT_SECRET.to_vec()).unwrap(),
        ),
        (
            "HEADER_TIMEOUT_SECONDS",
            HEADER_TIMEOUT.as_secs().to_string(),
        ),
        ("WRITE_TIMEOUT_SECONDS", WRITE_TIMEOUT.as_secs().to_string()),
        ("IDLE_TIMEOUT_SECONDS", IDLE_TIMEOUT.as_secs().to_string()),
        ("BODY_TIMEOUT_SECONDS", "3".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut served = serve(&db, &settings, std::process::Stdio::null()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut slowlorises = Vec::new();
    for _ in 0..SLOWLORIS {
        slowlorises.push(tokio::spawn(slowloris(served.port, Arc::clone(&stop))));
    }
    let mut readers = Vec::new();
    // Answers of 5 MB: more than the kernel's buffers take (tcp_wmem's 4 MB at most), so the
    // server's own writes stall.
    let exports = ["/api/movies/export", "/api/movies/export?format=ndjson"];
    for i in 0..SLOW_READERS {
        let path = exports[i % exports.len()];
        readers.push(tokio::spawn(slow_reader(
            served.port,
            path,
            Arc::clone(&stop),
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ordinary = ordinary_client(&served, UNDER_ATTACK).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ended, mut readers_cut) = (Vec::new(), 0);
    for slowloris in slowlorises {
        ended.extend(slowloris.await.unwrap());
    }
    for reader in readers {
        let reader = reader.await.unwrap();
        readers_cut += reader
            .iter()
            .filter(|e| matches!(e, Ended::ByServer(_)))
            .count();
        ended.extend(reader);
    }

    assert!(served.is_running(), "the server survived");
    assert!(
        ordinary.failures.is_empty(),
        "{} of {} ordinary requests failed under attack, the first: {:?}",
        ordinary.failures.len(),
        ordinary.requests,
        &ordinary.failures[..ordinary.failures.len().min(10)]
    );
    // The server's timeouts, not the end of the test, ended every connection that outlived them
    // (a few seconds of slack for a busy machine).
    let longest_allowed = WRITE_TIMEOUT.max(IDLE_TIMEOUT) + Duration::from_secs(6);
    let by_server = ended
        .iter()
        .filter(|e| matches!(e, Ended::ByServer(_)))
        .count();
    let overdue: Vec<_> = ended
        .iter()
        .filter(|e| matches!(e, Ended::StillOpen(age) if *age > longest_allowed))
        .collect();
    let too_long: Vec<_> = ended
        .iter()
        .filter(|e| matches!(e, Ended::ByServer(age) if *age > longest_allowed + Duration::from_secs(2)))
        .collect();
    eprintln!(
        "{} ordinary requests, slowest {:?}; {} hostile connections, {by_server} cut by the \
         server ({readers_cut} slow readers)",
        ordinary.requests,
        ordinary.slowest,
        ended.len()
    );
    assert!(
        overdue.is_empty(),
        "connections left open too long: {overdue:?}"
    );
    assert!(
        too_long.is_empty(),
        "connections cut too late: {too_long:?}"
    );
    assert!(
        by_server >= SLOWLORIS * 3,
        "every slowloris connection is cut within seconds and opened again: {by_server}"
    );
    assert!(
        readers_cut >= SLOW_READERS,
        "every slow reader is cut by the write timeout: {readers_cut}"
    );
    assert!(ordinary.requests > 100, "{} requests", ordinary.requests);
}

/// At most `MAX_CONNECTIONS` connections are open at once; the next is told so (a 503 problem
/// document) and closed, and a slot that frees up is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_and_are_closed() {
    let db = movies_db().await;
    let settings = [("MAX_CONNECTIONS", "4".to_owned())];
    let served = serve(&db, &settings, std::process::Stdio::null()).await;
    // `serve` probed the port once; give that connection a moment to be let go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            TcpStream::connect(("127.0.0.1", served.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", served.port))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("the extra connection is answered and closed at once")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("retry-after: 1"));
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    handler::auth::install_tls_provider();
    let response = reqwest::get(served.url("/api/health")).await.unwrap();
    assert_eq!(response.status(), 200, "a freed slot is used again");
}

/// One address may hold at most `MAX_CONNECTIONS_PER_ADDRESS` connections (here, a plain server:
/// loopback is an ordinary client); a connection that sends nothing is cut by the header timeout
/// like one that trickles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let db = movies_db().await;
    let settings = [
        ("MAX_CONNECTIONS_PER_ADDRESS", "3".to_owned()),
        ("HEADER_TIMEOUT_SECONDS", "1".to_owned()),
    ];
    let served = serve_plain(&db, &settings).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            TcpStream::connect(("127.0.0.1", served.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", served.port))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"));
    // Silent connections are cut after the header timeout, freeing the address's places.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    for mut silent in held {
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a silent connection is cut: {read:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    handler::auth::install_tls_provider();
    let response = reqwest::get(served.url("/api/health")).await.unwrap();
    assert_eq!(response.status(), 200);
}

/// A kept-alive connection with no request under way is closed after the idle timeout, the
/// way a client closing it would be: gracefully, not reset.
/// A request head is bounded: ordinary large headers (16 KiB of cookies, say) pass; a head of
/// 300 KB is refused with a 431 and its connection closed, however it is sent, and the server
/// goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_with_a_431() {
    let db = movies_db().await;
    let served = serve(&db, &[], std::process::Stdio::null()).await;
    let ask = |header_bytes: usize| async move {
        let mut stream = TcpStream::connect(("127.0.0.1", served.port))
            .await
            .unwrap();
        let head = format!(
            "GET /api/movies?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "h".repeat(header_bytes)
        );
        // The server may answer and close before it has read everything: a reset is fine then.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered and closed");
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(ask(16 * 1024).await, "HTTP/1.1 200 OK");
    assert_eq!(
        ask(300_000).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(ask(10).await, "HTTP/1.1 200 OK", "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let db = movies_db().await;
    let settings = [("IDLE_TIMEOUT_SECONDS", "1".to_owned())];
    let served = serve(&db, &settings, std::process::Stdio::null()).await;
    let mut stream = TcpStream::connect(("127.0.0.1", served.port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("closed within the idle timeout and some slack");
    assert!(ended.is_ok(), "a graceful close, not a reset: {ended:?}");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
}

/// The idle timer also runs for a connection whose first answer ended after its header deadline
/// had passed (here: a body sent slowly, within the body timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_slow_to_its_first_answer_still_closes_when_idle() {
    let db = movies_db().await;
    let settings = [
        ("HEADER_TIMEOUT_SECONDS", "1".to_owned()),
        ("IDLE_TIMEOUT_SECONDS", "2".to_owned()),
        ("BODY_TIMEOUT_SECONDS", "5".to_owned()),
    ];
    let served = serve(&db, &settings, std::process::Stdio::null()).await;
    let mut stream = TcpStream::connect(("127.0.0.1", served.port))
        .await
        .unwrap();
    let body = br#"{"email":"a@b.c","password":"slow slow"}"#;
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(&body[10..]).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("closed once idle, not held open");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 "));
}
