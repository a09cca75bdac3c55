//! Read-only TFTP server on tokio.
//!
//! siteboot's own engine, used instead of `async-tftp` (see README,
//! "TFTP engine"): async-tftp 0.4 ignores a client's ERROR packets (so the
//! UEFI `tsize` probe leaves sessions retransmitting), serialises file opens
//! behind one mutex and trails tftpd-hpa in throughput. Everything outside
//! this module sees only [`TftpServer`] and [`FileProvider`].

mod batch;
pub mod content;
pub mod packet;
pub mod session;
mod threaded;
mod window;
use crate::logsafe as shown;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use packet::{ErrorCode, Packet};
use session::{Limits, Outcome};

use crate::ratelimit::RefusalLog;

/// A file opened for one transfer.
pub struct OpenedFile {
    pub content: content::Content,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Io(String),
}

/// Where the server gets its files from.
pub trait FileProvider: Send + Sync + 'static {
    /// Opens `filename` for client `peer` whose request reached `local`
    /// (the server address it used, for files that embed a URL).
    fn open(
        &self,
        filename: &str,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<OpenedFile, OpenError>> + Send;
}

type SessionTable = Mutex<HashMap<SocketAddr, (u64, AbortHandle)>>;

/// Requests that may be opening (waiting for a fill) per transfer slot.
const OPENINGS_PER_SLOT: usize = 4;

pub struct TftpServer<P: FileProvider> {
    socket: Arc<UdpSocket>,
    /// Where `socket` is bound.
    addr: SocketAddr,
    provider: Arc<P>,
    max_sessions: usize,
    max_sessions_per_client: usize,
    /// Transfers under way (`tftp.max_sessions`). Taken once the file is
    /// open: a request waiting for a content-cache fill holds none
    /// (DESIGN §12), so such waits cannot lock out nodes asking for files
    /// that are here.
    slots: Arc<Semaphore>,
    /// Requests being opened (a fill may keep one waiting): a bound of
    /// their own, larger than the transfers', on tasks and sockets.
    openings: Arc<Semaphore>,
    sessions: Arc<SessionTable>,
    next_id: AtomicU64,
    limits: Limits,
    executors: Executors,
    /// Refusals are logged once per peer and interval (with a count), so a
    /// flood of bad requests cannot flood the log.
    log_throttle: Arc<RefusalLog<std::net::IpAddr>>,
}

/// Single-threaded runtimes, one per core, that run the transfers.
///
/// A lockstep transfer is a ping-pong of one datagram each way; on tokio's
/// work-stealing scheduler every wake-up may hop threads and wake idle
/// workers, which costs more than the transfer's own system calls. Pinning
/// each session to one single-threaded runtime keeps it on one thread.
struct Executors {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicU64,
}

impl Executors {
    fn start() -> std::io::Result<Executors> {
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("siteboot-tftp-{index}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        }
        Ok(Executors {
            handles,
            next: AtomicU64::new(0),
        })
    }

    fn next(&self) -> &tokio::runtime::Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.handles.len();
        &self.handles[index]
    }
}

impl<P: FileProvider> TftpServer<P> {
    pub async fn bind(addr: SocketAddr, max_sessions: usize, provider: P) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(TftpServer {
            addr: socket.local_addr()?,
            socket: Arc::new(socket),
            provider: Arc::new(provider),
            max_sessions,
            max_sessions_per_client: 16,
            slots: Arc::new(Semaphore::new(max_sessions)),
            openings: Arc::new(Semaphore::new(
                max_sessions.saturating_mul(OPENINGS_PER_SLOT),
            )),
            sessions: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            limits: Limits::default(),
            log_throttle: Arc::new(RefusalLog::new(
                crate::ratelimit::LOG_INTERVAL,
                crate::ratelimit::REFUSALS_LOGGED_PER_INTERVAL,
            )),
            executors: Executors::start()?,
        })
    }

    /// Bounds on what clients may negotiate and hold (defaults otherwise).
    pub fn with_limits(mut self, limits: Limits, max_sessions_per_client: usize) -> Self {
        self.limits = limits;
        self.max_sessions_per_client = max_sessions_per_client.max(1);
        self
    }

    /// Serves requests until `shutdown` is cancelled; then takes no new
    /// request, lets transfers under way finish for up to `grace`, and
    /// ends the rest.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        // A request with every option is still well under 1 KiB; 64 KiB
        // keeps an oversized datagram from being silently truncated into
        // something that parses.
        let mut buf = vec![0u8; 65536];
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => received,
            };
            let (len, peer) = match received {
                Ok(received) => received,
                // ICMP errors from earlier sends surface here on Linux; they
                // concern one client, not the server.
                Err(e) => {
                    tracing::debug!(error = %e, "tftp receive error");
                    continue;
                }
            };
            // No request fits in under 5 bytes, and the smallest ERROR is
            // 5: an answer would be larger than what caused it (DESIGN
            // §10), so such a datagram is dropped unanswered.
            if len < packet::MIN_ERROR_LEN {
                continue;
            }
            match Packet::parse(&buf[..len]) {
                Ok(Packet::ReadRequest(request)) => self.start_session(peer, request),
                Ok(Packet::WriteRequest(request)) => {
                    if let Some(suppressed) = self.log_throttle.admit(peer.ip()) {
                        tracing::warn!(%peer, file = %shown::shown(&request.filename),
                            suppressed, "tftp write request refused");
                    }
                    self.reply_error(peer, ErrorCode::AccessViolation, "read-only", len)
                        .await;
                }
                Ok(_) => {} // stray DATA/ACK/ERROR for a finished session
                Err(e) => {
                    if let Some(suppressed) = self.log_throttle.admit(peer.ip()) {
                        tracing::debug!(%peer, error = %shown::shown(&e.to_string()),
                            suppressed, "malformed tftp request");
                    }
                    self.reply_error(
                        peer,
                        ErrorCode::IllegalOperation,
                        &format!("malformed request: {e}"),
                        len,
                    )
                    .await;
                }
            }
        }
        self.drain(grace).await;
    }

    /// Waits for the sessions under way (every slot free again), at most
    /// `grace`; aborts those still running then.
    async fn drain(&self, grace: Duration) {
        let all = u32::try_from(self.max_sessions).unwrap_or(u32::MAX);
        let openings =
            u32::try_from(self.max_sessions.saturating_mul(OPENINGS_PER_SLOT)).unwrap_or(u32::MAX);
        let everything = async {
            let transfers = self.slots.acquire_many(all).await;
            let opening = self.openings.acquire_many(openings).await;
            (transfers, opening)
        };
        match tokio::time::timeout(grace, everything).await {
            Ok(_) => tracing::debug!("tftp: every transfer finished"),
            Err(_) => {
                let table = match self.sessions.lock() {
                    Ok(table) => table,
                    Err(poisoned) => poisoned.into_inner(),
                };
                tracing::warn!(
                    sessions = table.len(),
                    "tftp transfers still running after the grace period; ended"
                );
                for (_, handle) in table.values() {
                    handle.abort();
                }
            }
        }
    }

    /// Answers a request of `limit` bytes with an ERROR no larger (the
    /// server's own messages are kept short so that they fit).
    async fn reply_error(&self, peer: SocketAddr, code: ErrorCode, message: &str, limit: usize) {
        if limit < packet::MIN_ERROR_LEN {
            return;
        }
        let _ = self
            .socket
            .send_to(&packet::error_within(code, message, limit), peer)
            .await;
    }

    fn start_session(&self, peer: SocketAddr, request: packet::Request) {
        // netascii would have to be translated (RFC 1350); bootloaders
        // and images are binary, so it is refused rather than served raw.
        if request.mode != "octet" {
            let socket = self.socket.clone();
            crate::tasks::spawn(async move {
                let _ = socket
                    .send_to(
                        &packet::error_within(
                            ErrorCode::IllegalOperation,
                            "octet mode only",
                            request.wire_len,
                        ),
                        peer,
                    )
                    .await;
            });
            return;
        }
        // One client address may hold only its share of the sessions (a
        // new request from a port it already uses replaces that session).
        let crowded = {
            let table = match self.sessions.lock() {
                Ok(table) => table,
                Err(poisoned) => poisoned.into_inner(),
            };
            table
                .keys()
                .filter(|addr| addr.ip() == peer.ip() && **addr != peer)
                .count()
                >= self.max_sessions_per_client
        };
        let opening = if crowded {
            None
        } else {
            self.openings.clone().try_acquire_owned().ok()
        };
        let Some(opening) = opening else {
            if let Some(suppressed) = self.log_throttle.admit(peer.ip()) {
                tracing::warn!(%peer, suppressed, crowded,
                    "tftp session limit reached; request refused");
            }
            let socket = self.socket.clone();
            let limit = request.wire_len;
            crate::tasks::spawn(async move {
                let _ = socket
                    .send_to(
                        &packet::error_within(ErrorCode::NotDefined, "busy, retry", limit),
                        peer,
                    )
                    .await;
            });
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slots = self.slots.clone();
        let provider = self.provider.clone();
        let sessions = self.sessions.clone();
        let limits = self.limits;
        let log_throttle = self.log_throttle.clone();
        let bind_ip = self.addr.ip();
        // The table lock is held across spawn so the session cannot finish
        // (and remove itself) before it is registered.
        let mut table = match sessions.lock() {
            Ok(table) => table,
            Err(poisoned) => poisoned.into_inner(),
        };
        let handle = self.executors.next().spawn({
            let sessions = sessions.clone();
            async move {
                serve_one(
                    provider.as_ref(),
                    Permits { opening, slots },
                    peer,
                    bind_ip,
                    request,
                    &limits,
                    &log_throttle,
                )
                .await;
                let mut table = match sessions.lock() {
                    Ok(table) => table,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if table.get(&peer).is_some_and(|(current, _)| *current == id) {
                    table.remove(&peer);
                }
            }
        });
        // A new request from the same client port replaces its old session:
        // that is a client that restarted (firmware re-requesting after a
        // `tsize` probe, or a retransmitted RRQ), never a second transfer.
        if let Some((_, old)) = table.insert(peer, (id, handle.abort_handle())) {
            old.abort();
        }
    }
}

/// A session's place: while its file is opened, then as a transfer.
struct Permits {
    opening: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
}

async fn serve_one<P: FileProvider>(
    provider: &P,
    permits: Permits,
    peer: SocketAddr,
    bind_ip: IpAddr,
    request: packet::Request,
    limits: &Limits,
    log_throttle: &RefusalLog<std::net::IpAddr>,
) {
    let started = Instant::now();
    let socket = match session_socket(bind_ip, peer).await {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a tftp session socket");
            return;
        }
    };
    let local = socket.local_addr().unwrap_or(SocketAddr::new(bind_ip, 0));
    let counters = crate::metrics::metrics();
    let outcome = |outcome: &str| counters.tftp_outcome(outcome);
    let file = match provider.open(&request.filename, local, peer).await {
        Ok(file) => file,
        Err(e) => {
            outcome("refused");
            counters.tftp.errors.inc();
            let code = match e {
                OpenError::NotFound(_) => ErrorCode::FileNotFound,
                OpenError::Forbidden(_) => ErrorCode::AccessViolation,
                OpenError::Io(_) => ErrorCode::NotDefined,
            };
            if let Some(suppressed) = log_throttle.admit(peer.ip()) {
                tracing::info!(%peer, file = %shown::shown(&request.filename),
                    error = %shown::shown(&e.to_string()), suppressed, "tftp request refused");
            }
            session::refuse_request(&socket, code, &e.to_string(), request.wire_len).await;
            return;
        }
    };
    // Open: now it needs a transfer slot (and no longer an opening).
    let Permits { opening, slots } = permits;
    drop(opening);
    let Ok(_transfer) = slots.try_acquire_owned() else {
        outcome("refused");
        if let Some(suppressed) = log_throttle.admit(peer.ip()) {
            tracing::warn!(%peer, suppressed, "tftp session limit reached; request refused");
        }
        session::refuse_request(
            &socket,
            ErrorCode::NotDefined,
            "busy, retry",
            request.wire_len,
        )
        .await;
        return;
    };
    let neg = session::negotiate(&request.options, file.size, limits);
    counters.tftp.sessions.inc();
    let reader = content::ChunkReader::new(file.content);
    let result = match threaded::place_for(&neg) {
        Some(place) => threaded::transfer(socket, reader, &neg, limits, place).await,
        None => session::transfer(&socket, reader, &neg, limits).await,
    };
    counters.tftp.sessions.dec();
    match result {
        Ok(Outcome::Completed { bytes }) => {
            outcome("completed");
            counters.tftp.bytes.inc_by(bytes);
            tracing::info!(
            %peer, file = %shown::shown(&request.filename), bytes, blksize = neg.blksize,
            windowsize = neg.windowsize, ms = started.elapsed().as_millis() as u64,
            "tftp transfer complete"
            )
        }
        Ok(Outcome::ClientAborted { code }) => {
            outcome("aborted");
            tracing::debug!(
                %peer, file = %shown::shown(&request.filename), code, "tftp transfer ended by client"
            )
        }
        Err(e) => {
            outcome("failed");
            counters.tftp.errors.inc();
            tracing::warn!(%peer, file = %shown::shown(&request.filename),
                error = %shown::shown(&e.to_string()), "tftp transfer failed")
        }
    }
}

/// A socket of the session's own (its transfer ID), connected to the client
/// so that the kernel filters strays and picks the source address that
/// reaches the client.
async fn session_socket(bind_ip: IpAddr, peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let ip = match (bind_ip, peer) {
        (IpAddr::V4(ip), _) if !ip.is_unspecified() => IpAddr::V4(ip),
        (IpAddr::V6(ip), _) if !ip.is_unspecified() => IpAddr::V6(ip),
        (_, SocketAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, SocketAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

impl<P: FileProvider + 'static> crate::serve::listener::Listener for TftpServer<P> {
    fn protocol(&self) -> &'static str {
        "tftp"
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(
        self: Box<Self>,
        stop: CancellationToken,
        grace: Duration,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.run(stop, grace))
    }
}
