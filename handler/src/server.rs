//! The listener of `handler serve`: hyper's HTTP/1 server with what a public endpoint needs and
//! `axum::serve` lacks: a cap on open connections, and timeouts that cut off clients who send
//! or read too slowly.
//!
//! - **Idle keep-alive**: a connection waiting for its next request is closed after
//!   `IDLE_TIMEOUT_SECONDS`. It is long on purpose: the Functions host keeps a pool of
//!   connections, and closing one just as the host reuses it would fail a request.
//! - **Header read**: a new connection's first request, and any later one from its first byte,
//!   must have its headers complete within `HEADER_TIMEOUT_SECONDS` (slowloris clients trickle
//!   them; others open connections and send nothing).
//! - **Write progress**: a response write that makes no progress for `WRITE_TIMEOUT_SECONDS` (the
//!   client stopped reading, or reads a few bytes now and then: the kernel wakes a blocked writer
//!   only once half its send buffer has drained) closes the connection. Timed-out
//!   connections end with a reset, not a close: the kernel would otherwise go on holding (and
//!   offering) megabytes the client does not read.
//! - **Body read**: bounded where bodies are read ([`crate::http`]'s JSON extractor).
//! - **Connections**: at most `MAX_CONNECTIONS` at once, and `MAX_CONNECTIONS_PER_ADDRESS` from
//!   one client address (an IPv6 /64; trusted proxies, such as the Functions host, are exempt);
//!   the next ones get a short 503 and are closed at once, so the ones being served keep their
//!   share.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::config::{ConnectionLimits, TrustedProxies, canonical_ip};

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refused connections being told so at once; beyond, they are closed without a word.
const MAX_REFUSALS: usize = 64;
/// After a shutdown signal, how long open connections may finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The read buffer at which hyper refuses a request head (request line and headers) with a 431.
/// It checks after each read, so a head may pass somewhat beyond it: here 100 KB passed and
/// 131 KB was refused (`tests/hostile.rs` sends 300 KB). Longer URIs are refused earlier, by the
/// router's own limit, with a problem document.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the listener serves: an axum `Router`, or any service like one (`http::Api`: the hot
/// routes before the router, with no router around them).
pub trait App:
    tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    limits: ConnectionLimits,
    trusted: TrustedProxies,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    raise_open_file_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::new(limits.max_per_address, trusted));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timers are the connection's own (`GuardedIo`): hyper's would be reset on every request.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = Arc::clone(&slots)
            .try_acquire_owned()
            .ok()
            .zip(PerAddress::admit(&per_address, peer));
        let Some((slot, address_slot)) = admitted else {
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tracker = Arc::new(RequestTracker::default());
        let io = GuardedIo::new(stream, Arc::clone(&tracker), &limits);
        let service = connection_service(app.clone(), peer, tracker);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended");
            }
            drop((slot, address_slot));
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period: closing them");
    }
    Ok(())
}

/// The app as hyper calls it for one connection: the peer address for the handlers, and the
/// start and end of every request for the connection's header timer.
fn connection_service(
    app: impl App,
    peer: SocketAddr,
    tracker: Arc<RequestTracker>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<Body>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        tracker.request_started();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let (app, tracker) = (app.clone(), Arc::clone(&tracker));
        async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|body| Body::new(TrackedBody { body, tracker })))
        }
    })
}

/// Open connections per client address (IPv6 by /64), for `MAX_CONNECTIONS_PER_ADDRESS`.
struct PerAddress {
    max: usize,
    trusted: TrustedProxies,
    open: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admitted connection of an address; gives its place back when dropped.
struct AddressSlot {
    of: Arc<PerAddress>,
    address: Option<std::net::IpAddr>,
}

impl PerAddress {
    fn new(max: usize, trusted: TrustedProxies) -> Self {
        PerAddress {
            max,
            trusted,
            open: parking_lot::Mutex::default(),
        }
    }

    /// A place for one more connection from `peer`, if its address has one left.
    fn admit(this: &Arc<PerAddress>, peer: SocketAddr) -> Option<AddressSlot> {
        let ip = canonical_ip(peer.ip());
        if this.trusted.contains(ip) {
            return Some(AddressSlot {
                of: Arc::clone(this),
                address: None,
            });
        }
        let address = match ip {
            std::net::IpAddr::V6(v6) => {
                std::net::IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into())
            }
            v4 => v4,
        };
        let mut open = this.open.lock();
        let count = open.entry(address).or_default();
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            of: Arc::clone(this),
            address: Some(address),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(address) = self.address else { return };
        let mut open = self.of.open.lock();
        if let Some(count) = open.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&address);
            }
        }
    }
}

/// Tells the header timer whether a request is being answered: bytes that arrive while none is
/// are the start of the next request's head.
#[derive(Default)]
struct RequestTracker {
    started: AtomicU64,
    in_flight: AtomicBool,
    /// Woken when a response ends: a read that waited while it was sent starts the idle timer.
    answered: futures_util::task::AtomicWaker,
}

impl RequestTracker {
    fn request_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.store(true, Ordering::Release);
    }

    fn response_finished(&self) {
        self.in_flight.store(false, Ordering::Release);
        self.answered.wake();
    }
}

/// A response body that reports when it has been sent (or dropped).
struct TrackedBody {
    body: Body,
    tracker: Arc<RequestTracker>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.tracker.response_finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.tracker.response_finished();
    }
}

/// A connection's socket with the header and write-progress timers.
struct GuardedIo {
    stream: TcpStream,
    tracker: Arc<RequestTracker>,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// Armed by the first bytes of a request head (or the connection's start): the request
    /// count then, and the deadline.
    header_deadline: Option<(u64, Instant)>,
    /// Since when the connection has waited for a next request with nothing of it arrived.
    idle_since: Option<Instant>,
    /// Armed when a write cannot proceed: its deadline; cleared by any progress.
    write_deadline: Option<Instant>,
    /// The one timer of the connection, set to whichever deadline a pending read or write
    /// waits for. A head that arrives in one read, or a write that goes through, never touches
    /// it: the timers cost only the connections that are slow.
    timer: Pin<Box<Sleep>>,
}

impl GuardedIo {
    fn new(stream: TcpStream, tracker: Arc<RequestTracker>, limits: &ConnectionLimits) -> Self {
        // A new connection has the header timeout for its first request, from the start: one
        // that sends nothing holds a slot no longer than one that trickles.
        let first_request = Instant::now() + limits.header_timeout;
        GuardedIo {
            stream,
            tracker,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            header_deadline: Some((0, first_request)),
            idle_since: None,
            write_deadline: None,
            timer: Box::pin(tokio::time::sleep_until(first_request)),
        }
    }

    /// Whether `deadline` has passed; if not, the timer wakes this connection by the earliest
    /// armed deadline (a read and a write may both be waiting), and each checks its own then.
    /// The timer is moved only when it must ring sooner than it would, or has rung: one that
    /// rings early costs a check, while moving it on every request would cost every request.
    fn expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        if Instant::now() >= deadline {
            return true;
        }
        let earliest = [self.header_deadline.map(|(_, at)| at), self.write_deadline]
            .into_iter()
            .flatten()
            .fold(deadline, Instant::min);
        // A deadline already past (rung or not: a timer never polled has not rung) would wake
        // nobody again.
        if self.timer.deadline() > earliest || self.timer.deadline() <= Instant::now() {
            self.timer.as_mut().reset(earliest);
        }
        let _ = self.timer.as_mut().poll(cx); // registers the wake-up
        false
    }

    /// Passes a write's result on, failing it once writes have made no progress for the write
    /// timeout.
    fn guard_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_deadline = None;
            return polled;
        }
        let deadline = *self
            .write_deadline
            .get_or_insert_with(|| Instant::now() + self.write_timeout);
        if self.expired(cx, deadline) {
            return Poll::Ready(Err(self.abort("the client stopped reading the response")));
        }
        Poll::Pending
    }

    /// Makes the connection end with a reset when it is dropped, so that the kernel does not
    /// keep sending what the client would not read, and returns the error that drops it.
    fn abort(&self, why: &'static str) -> io::Error {
        let _ = self.stream.set_zero_linger();
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.tracker.started.load(Ordering::Acquire);
        if this
            .header_deadline
            .as_ref()
            .is_some_and(|(armed_at, _)| *armed_at != started)
        {
            this.header_deadline = None; // that head arrived: the request is being answered
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let answering = this.tracker.in_flight.load(Ordering::Acquire);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.idle_since = None;
                if this.header_deadline.is_none() && !answering {
                    this.header_deadline = Some((started, Instant::now() + this.header_timeout));
                }
            }
            Poll::Pending => match this.header_deadline {
                Some((_, deadline)) => {
                    if this.expired(cx, deadline) {
                        return Poll::Ready(Err(
                            this.abort("the request headers did not arrive in time")
                        ));
                    }
                }
                None => {
                    if answering {
                        this.idle_since = None;
                        this.tracker.answered.register(cx.waker());
                    }
                    // Asked again once registered: a response that ended meanwhile woke nobody.
                    if !this.tracker.in_flight.load(Ordering::Acquire) {
                        let since = *this.idle_since.get_or_insert_with(Instant::now);
                        if this.expired(cx, since + this.idle_timeout) {
                            // An idle connection ends as if the client had closed it: gracefully.
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            },
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.guard_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.guard_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.guard_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.guard_write(cx, polled)
    }
}

/// Every connection is a file descriptor: the soft limit (often 1024) is raised to the hard one,
/// and the log says so when `MAX_CONNECTIONS` (and the database, Redis and log files besides)
/// would still not fit, since accepting then fails for everyone instead of the cap refusing a
/// few.
#[cfg(unix)]
fn raise_open_file_limit(max_connections: usize) {
    /// Descriptors besides connections: pools, Redis, files, the runtime's own.
    const OTHERS: u64 = 128;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` only read and write the struct passed to them.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                limit = wanted;
            }
        }
        limit.rlim_cur
    };
    let needed = max_connections as u64 + OTHERS;
    if raised < needed {
        tracing::warn!(
            open_files = raised,
            max_connections,
            "the open-file limit is below MAX_CONNECTIONS plus what the service needs besides: \
             lower MAX_CONNECTIONS or raise the limit"
        );
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit(_max_connections: usize) {}

/// What a connection over the cap is told before it is closed.
fn busy_response() -> Vec<u8> {
    let body = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"Too many open connections; try again shortly."}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn refuse(mut stream: TcpStream) {
    tracing::warn!("connection limit reached: refusing a connection");
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&busy_response()).await?;
        stream.shutdown().await
    })
    .await;
}
