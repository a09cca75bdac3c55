//! The HTTP connection loop (DESIGN §10): hyper under the agent's routes ([`Routes`]),
//! with the limits `axum::serve` does not have.
//!
//! * A request's head must arrive within `http.header_timeout`, counted
//!   from its first byte (or, on a new connection, from the accept).
//! * A keep-alive connection waiting for its next request is closed after
//!   `http.idle_timeout`; so is one with a request under way but no bytes
//!   in either direction for that long (a client that stopped reading).
//! * At most `http.max_connections` are open, well under the process's
//!   file limit. When a new client comes and the cap is reached, the
//!   connection that has waited longest for a request is closed to make
//!   room (as nginx does with keep-alive connections): slow and idle
//!   clients never keep a booting node out. Only when every connection
//!   has a request under way does the next one wait to be accepted.
//!
//! On shutdown, accepting stops, idle connections close, and requests
//! under way finish (the caller bounds how long).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::routes::Routes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ratelimit::{LOG_INTERVAL, LogThrottle};
use crate::serve::listener::Listener;
use futures_util::future::BoxFuture;

#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The default connection cap: half the process's open-file limit (the
/// rest is for the database, TFTP sessions, controller calls and files
/// being served), within 16..=8192.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 2).unwrap_or(8192).clamp(16, 8192)
}

/// Milliseconds since the server started (atomics hold these).
///
/// Read from the coarse monotonic clock: every read and write of every
/// connection notes the time, three or more times per request, and the
/// limits it serves are seconds long, so the few milliseconds of the
/// coarse clock's tick cost nothing while its read is a plain load.
#[derive(Clone, Copy)]
struct Clock(u64);

impl Clock {
    fn started() -> Clock {
        Clock(coarse_millis())
    }

    fn now(self) -> u64 {
        coarse_millis().saturating_sub(self.0)
    }
}

/// `CLOCK_MONOTONIC_COARSE` in milliseconds.
fn coarse_millis() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0 {
        // Not on this kernel (it has been in Linux since 2.6.32): the
        // precise clock, from a fixed origin.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        return ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64;
    }
    (now.tv_sec as u64) * 1000 + (now.tv_nsec as u64) / 1_000_000
}

/// One connection, as the accept loop and its watchdog see it.
struct Connection {
    /// Last byte read or written.
    last_io: AtomicU64,
    /// Requests whose answers are not finished (hyper serves one at a time).
    in_flight: AtomicUsize,
    /// When it last began waiting for a request (accept, or an answer's end).
    waiting_since: AtomicU64,
    /// First byte of the next request's head, +1 (0: none yet).
    head_started: AtomicU64,
    /// Has it sent a whole request head yet?
    served: AtomicBool,
    /// Closed to make room for a new client.
    evict: Notify,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head that did not arrive within `header_timeout`.
    SlowHead,
    /// A new connection that sent no request within `header_timeout`.
    Silent,
    /// Between requests for `idle_timeout`.
    Idle,
    /// A request under way, no bytes either way for `idle_timeout`.
    Stalled,
}

impl Connection {
    fn new(now: u64) -> Connection {
        Connection {
            last_io: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn waiting(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// When the connection expires if nothing happens meanwhile, and why.
    fn deadline(&self, limits: &ServerLimits) -> (u64, Expiry) {
        let header = limits.header_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        if !self.waiting() {
            return (self.last_io.load(Ordering::SeqCst) + idle, Expiry::Stalled);
        }
        let head = self.head_started.load(Ordering::SeqCst);
        if head > 0 {
            return (head - 1 + header, Expiry::SlowHead);
        }
        let since = self.waiting_since.load(Ordering::SeqCst);
        if self.served.load(Ordering::SeqCst) {
            (since + idle, Expiry::Idle)
        } else {
            (since + header, Expiry::Silent)
        }
    }

    fn request_started(&self) {
        self.served.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(0, Ordering::SeqCst);
    }

    fn request_ended(&self, now: u64) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.waiting_since.store(now, Ordering::SeqCst);
        }
    }
}

/// The open connections.
struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    /// A connection ended.
    freed: Notify,
}

impl Registry {
    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn add(&self, connection: Arc<Connection>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, connection);
        id
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.freed.notify_one();
    }

    /// Closes the connection that has waited longest for a request; false
    /// if every connection has a request under way.
    fn evict_longest_waiting(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = open
            .iter()
            .filter(|(_, c)| c.waiting())
            .min_by_key(|(_, c)| c.waiting_since.load(Ordering::SeqCst))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(connection) => {
                connection.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The HTTP server as a [`Listener`]: the bound socket, the routes and
/// the connection limits.
pub struct HttpListener {
    listener: TcpListener,
    addr: std::net::SocketAddr,
    app: Routes,
    limits: ServerLimits,
}

impl HttpListener {
    /// `app` on `listener` (bound before the router is built: the
    /// router needs to know the port).
    pub fn new(
        listener: TcpListener,
        app: Routes,
        limits: ServerLimits,
    ) -> std::io::Result<HttpListener> {
        Ok(HttpListener {
            addr: listener.local_addr()?,
            listener,
            app,
            limits,
        })
    }
}

impl Listener for HttpListener {
    fn protocol(&self) -> &'static str {
        "http"
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    fn serve(self: Box<Self>, stop: CancellationToken, grace: Duration) -> BoxFuture<'static, ()> {
        let HttpListener {
            listener,
            app,
            limits,
            ..
        } = *self;
        Box::pin(async move {
            let mut connections = crate::tasks::spawn(serve(listener, app, limits, stop.clone()));
            let ended = tokio::select! {
                ended = &mut connections => Some(ended),
                // Answers in flight get the grace period, then are cut.
                _ = stop.cancelled() => tokio::time::timeout(grace, &mut connections).await.ok(),
            };
            match ended {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::error!(error = %e, "http server task failed"),
                None => {
                    connections.abort();
                    tracing::warn!("http answers still in flight after the grace period; cut");
                }
            }
        })
    }
}

/// Serves `app` on `listener` until `stop`, then waits for the
/// connections to finish their requests.
async fn serve(listener: TcpListener, app: Routes, limits: ServerLimits, stop: CancellationToken) {
    let clock = Clock::started();
    let registry = Arc::new(Registry {
        open: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        freed: Notify::new(),
    });
    let tasks = TaskTracker::new();
    let accept_errors: LogThrottle<()> = LogThrottle::new(LOG_INTERVAL);
    'accepting: loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE) or the like: wait a
                // moment rather than spin; connections ending free some.
                if let Some(left_out) = accept_errors.admit(()) {
                    tracing::warn!(error = %e, left_out, "http accept failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        while registry.len() >= limits.max_connections {
            if registry.evict_longest_waiting() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break 'accepting,
                _ = registry.freed.notified() => {}
            }
        }
        let connection = Arc::new(Connection::new(clock.now()));
        let id = registry.add(connection.clone());
        let registry = registry.clone();
        let app = app.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            serve_connection(stream, peer, app, connection, limits, clock, stop).await;
            registry.remove(id);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: Routes,
    connection: Arc<Connection>,
    limits: ServerLimits,
    clock: Clock,
    stop: CancellationToken,
) {
    let io = TokioIo::new(Watched {
        inner: stream,
        connection: connection.clone(),
        clock,
    });
    let service_connection = connection.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = RequestGuard {
            connection: service_connection.clone(),
            clock,
        };
        guard.connection.request_started();
        let app = app.clone();
        async move {
            let response = app.answer(request, peer).await;
            let (parts, body) = response.into_parts();
            Ok::<_, Infallible>(hyper::Response::from_parts(
                parts,
                GuardedBody {
                    inner: body,
                    _guard: guard,
                },
            ))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // The watchdog below times heads and idleness; hyper's own header
    // timer is left off so that it does not cut keep-alive waits short.
    http.timer(TokioTimer::new()).header_read_timeout(None);
    let served = http.serve_connection(io, service);
    let mut served = std::pin::pin!(served);
    let mut shutting_down = false;
    loop {
        let (deadline, why) = connection.deadline(&limits);
        let now = clock.now();
        if now >= deadline {
            tracing::debug!(reason = ?why, "http connection closed");
            return;
        }
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !shutting_down => {
                served.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = connection.evict.notified() => {
                tracing::debug!("http connection closed to make room for a new client");
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
        }
    }
}

/// Counts a request as under way until its answer is finished (or
/// dropped: the client went away).
struct RequestGuard {
    connection: Arc<Connection>,
    clock: Clock,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.connection.request_ended(self.clock.now());
    }
}

/// An answer's body, holding its request's guard until hyper is done
/// with it.
struct GuardedBody {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream, noting when bytes move (for the watchdog).
struct Watched {
    inner: TcpStream,
    connection: Arc<Connection>,
    clock: Clock,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.clock.now();
            let connection = &self.connection;
            connection.last_io.store(now, Ordering::SeqCst);
            if connection.waiting() {
                // The first byte of a request head starts its clock.
                let _ = connection.head_started.compare_exchange(
                    0,
                    now + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
        polled
    }
}

impl Watched {
    /// Bytes went out: the connection is not idle.
    fn note_written(&self, polled: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            self.connection
                .last_io
                .store(self.clock.now(), Ordering::SeqCst);
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        }
    }

    #[test]
    fn each_phase_of_a_connection_has_its_deadline() {
        let c = Connection::new(1_000);
        assert_eq!(c.deadline(&limits()), (11_000, Expiry::Silent));
        c.head_started.store(2_000 + 1, Ordering::SeqCst);
        assert_eq!(c.deadline(&limits()), (12_000, Expiry::SlowHead));
        c.request_started();
        c.last_io.store(3_000, Ordering::SeqCst);
        assert_eq!(c.deadline(&limits()), (63_000, Expiry::Stalled));
        c.request_ended(4_000);
        assert_eq!(c.deadline(&limits()), (64_000, Expiry::Idle));
    }

    #[test]
    fn room_is_made_by_closing_the_longest_waiting_connection() {
        let registry = Registry {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            freed: Notify::new(),
        };
        let busy = Arc::new(Connection::new(0));
        busy.request_started();
        let old = Arc::new(Connection::new(10));
        let young = Arc::new(Connection::new(20));
        registry.add(busy.clone());
        let old_id = registry.add(old.clone());
        registry.add(young.clone());
        assert!(registry.evict_longest_waiting());
        assert!(!registry.open.lock().unwrap().contains_key(&old_id));
        assert!(registry.evict_longest_waiting());
        assert!(!registry.evict_longest_waiting(), "the busy one stays");
        assert_eq!(registry.len(), 1);
    }
}
