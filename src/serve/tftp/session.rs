//! One read transfer: option negotiation (RFC 2347/2348/2349/7440), then
//! DATA blocks in windows until the last short block is acknowledged.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::content::ChunkReader;
use super::packet::{self, ErrorCode, Packet};
use super::window::Window;

/// Server-side bounds on what a client may negotiate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Retransmission timeout when the client does not negotiate one.
    pub default_timeout: Duration,
    /// Retransmissions of one packet (or window) before giving up.
    pub max_retries: u32,
    pub max_blksize: usize,
    pub max_windowsize: usize,
    /// Bound of blksize × windowsize (see [`negotiate`]).
    pub max_window_bytes: usize,
    /// A client's `timeout` above this is not acknowledged (the default
    /// is used): one request must not pin a session for minutes.
    pub max_timeout: Duration,
    /// A transfer with no progress (no new block acknowledged) this long
    /// ends, however the client keeps it busy.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
            // RFC 2348's ceiling; UDP over loopback carries it fine, and a
            // client on a real network asks for what its MTU allows.
            max_blksize: 65464,
            // Large windows only pile up drops on a busy switch; 64 blocks
            // of 1468 bytes already fill a gigabit link's BDP here.
            max_windowsize: 64,
            max_window_bytes: 64 * 1024,
            max_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: usize,
    pub timeout: Duration,
    /// The options to confirm in an OACK (empty: start with DATA 1).
    pub acknowledged: Vec<(String, String)>,
}

/// Decides the transfer parameters from the client's options. Unknown or
/// out-of-range options are left out of the OACK, which RFC 2347 allows.
pub fn negotiate(options: &[(String, String)], file_size: u64, limits: &Limits) -> Negotiated {
    let mut out = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.default_timeout,
        acknowledged: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        // A repeated option counts once, as first given: an OACK never
        // grows with the request (DESIGN §10).
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let Ok(number) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if (8..=65464).contains(&number) => {
                let size = (number as usize).min(limits.max_blksize);
                out.blksize = size;
                out.acknowledged.push((name.clone(), size.to_string()));
            }
            "tsize" => out.acknowledged.push((name.clone(), file_size.to_string())),
            "timeout"
                if (1..=255).contains(&number)
                    && Duration::from_secs(number) <= limits.max_timeout =>
            {
                out.timeout = Duration::from_secs(number);
                out.acknowledged.push((name.clone(), number.to_string()));
            }
            "windowsize" if (1..=65535).contains(&number) => {
                // Sized after blksize is known (it may come later).
                out.windowsize = (number as usize).min(limits.max_windowsize);
                out.acknowledged.push((name.clone(), String::new()));
            }
            _ => {}
        }
    }
    // A window must fit the client's socket buffer: on Linux a 212 KiB
    // default holds about twelve 8 KiB datagrams, and every datagram beyond
    // that is dropped and costs a full retransmission timeout.
    let byte_cap = (limits.max_window_bytes / out.blksize).max(1);
    out.windowsize = out.windowsize.min(byte_cap);
    for (name, value) in &mut out.acknowledged {
        if name == "windowsize" {
            *value = out.windowsize.to_string();
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every block was acknowledged.
    Completed { bytes: u64 },
    /// The client sent an ERROR (e.g. code 8 after a `tsize` probe).
    ClientAborted { code: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("client stopped answering after {0} retransmissions")]
    TimedOut(u32),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// Its session was ended from outside: replaced by the client's new
    /// request, or cut at shutdown.
    #[error("session ended")]
    Ended,
}

/// Runs the transfer on `socket`, which is connected to the client, so the
/// kernel already drops packets from any other transfer ID.
pub async fn transfer(
    socket: &UdpSocket,
    mut reader: ChunkReader,
    neg: &Negotiated,
    limits: &Limits,
) -> Result<Outcome, TransferError> {
    let mut recv_buf = vec![0u8; 1024];
    if !neg.acknowledged.is_empty() {
        let oack = packet::option_ack(&neg.acknowledged);
        if let Some(code) = await_ack(socket, &oack, 0, neg.timeout, limits, &mut recv_buf).await? {
            return Ok(Outcome::ClientAborted { code });
        }
    }

    let mut window = Window::new(neg.windowsize, neg.blksize);
    let mut retries = 0u32;
    let mut last_progress = Instant::now();
    // One timer for the whole transfer, re-armed only when it fires: each
    // round just moves `round_deadline`, which costs no timer-wheel update
    // per block.
    let timer = tokio::time::sleep(neg.timeout);
    tokio::pin!(timer);
    loop {
        window.fill(&mut reader).await?;
        if window.is_empty() {
            return Ok(Outcome::Completed {
                bytes: window.bytes(),
            });
        }
        // Every wait below ends in a timeout or an ACK; either way, what is
        // left in the window was not received and goes (again) in full.
        super::batch::send_all(socket, &window.packets()).await?;

        let round_deadline = Instant::now() + neg.timeout;
        loop {
            let len = tokio::select! {
                biased;
                received = socket.recv(&mut recv_buf) => received?,
                () = &mut timer => {
                    if Instant::now() < round_deadline {
                        timer.as_mut().reset(round_deadline);
                        continue;
                    }
                    // A datagram no event announced (see `expect_quiet`)
                    // is read before anything is sent again.
                    if let Some(len) = queued(socket, &mut recv_buf) {
                        len
                    } else {
                    timer.as_mut().reset(round_deadline + neg.timeout);
                    retries += 1;
                    crate::metrics::metrics().tftp.retransmissions.inc();
                    if retries > limits.max_retries
                        || last_progress.elapsed() > limits.stall_timeout
                    {
                        send_error(socket, ErrorCode::NotDefined, "timed out").await;
                        return Err(TransferError::TimedOut(limits.max_retries));
                    }
                    break;
                    }
                }
            };
            match Packet::parse(&recv_buf[..len]) {
                Ok(Packet::Ack { block }) => {
                    // An ACK for a block in the window acknowledges it and
                    // everything before it; anything after it was lost and
                    // is sent again (RFC 7440). Stale ACKs are ignored, never
                    // answered, to avoid the Sorcerer's Apprentice bug.
                    if let Some(pos) = window.position(block) {
                        window.acknowledge(pos);
                        retries = 0;
                        last_progress = Instant::now();
                        expect_quiet(socket);
                        break;
                    }
                }
                Ok(Packet::Error { code, .. }) => return Ok(Outcome::ClientAborted { code }),
                _ => {}
            }
        }
    }
}

/// After the ACK a window waited for, the client sends nothing until the
/// next window arrives: the socket is marked not readable, so the next
/// `recv` waits for the kernel's event instead of first asking the kernel
/// and hearing "would block" (one system call less per window; a lockstep
/// transfer made five per block). Safe: tokio clears the mark only if no
/// event came after the one this `recv` was woken by, and anything still
/// queued (a duplicate ACK) is read with the next datagram's event.
fn expect_quiet(socket: &UdpSocket) {
    let _ = socket.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
}

/// A datagram waiting on the socket, read straight from the kernel
/// whatever tokio believes of its readiness.
fn queued(socket: &UdpSocket, buf: &mut [u8]) -> Option<usize> {
    // SAFETY of the cast: `recv` only writes initialised bytes into the
    // buffer it is given, and `u8` has no invalid values.
    let uninit = unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            buf.len(),
        )
    };
    socket2::SockRef::from(socket)
        .recv_with_flags(uninit, libc::MSG_DONTWAIT)
        .ok()
}

/// Sends `packet` until the client acknowledges `block`; `Some(code)` if the
/// client answered with an ERROR instead.
async fn await_ack(
    socket: &UdpSocket,
    packet: &[u8],
    block: u16,
    timeout: Duration,
    limits: &Limits,
    buf: &mut [u8],
) -> Result<Option<u16>, TransferError> {
    for attempt in 0..=limits.max_retries {
        if attempt > 0 {
            crate::metrics::metrics().tftp.retransmissions.inc();
        }
        socket.send(packet).await?;
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(buf)).await {
                Err(_elapsed) => break,
                Ok(result) => match Packet::parse(&buf[..result?]) {
                    Ok(Packet::Ack { block: b }) if b == block => return Ok(None),
                    Ok(Packet::Error { code, .. }) => return Ok(Some(code)),
                    _ => {}
                },
            }
        }
    }
    send_error(socket, ErrorCode::NotDefined, "timed out").await;
    Err(TransferError::TimedOut(limits.max_retries))
}

pub async fn send_error(socket: &UdpSocket, code: ErrorCode, message: &str) {
    // Best effort: the client may already be gone.
    let _ = socket.send(&packet::error(code, message)).await;
}

/// Answers a request with an ERROR no larger than the request (`limit`).
pub async fn refuse_request(socket: &UdpSocket, code: ErrorCode, message: &str, limit: usize) {
    let _ = socket
        .send(&packet::error_within(code, message, limit))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_timeout_above_the_cap_is_not_acknowledged() {
        let limits = Limits::default();
        let n = negotiate(&opts(&[("timeout", "255"), ("tsize", "0")]), 5, &limits);
        assert_eq!(n.timeout, limits.default_timeout);
        assert_eq!(n.acknowledged, opts(&[("tsize", "5")]));
        let n = negotiate(&opts(&[("timeout", "5")]), 5, &limits);
        assert_eq!(n.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_repeated_option_is_used_once_as_first_given() {
        let limits = Limits::default();
        let mut many = vec![("blksize", "1468"), ("blksize", "512")];
        many.extend(std::iter::repeat_n(("tsize", "0"), 1000));
        let n = negotiate(&opts(&many), 10, &limits);
        assert_eq!(n.blksize, 1468);
        assert_eq!(
            n.acknowledged,
            opts(&[("blksize", "1468"), ("tsize", "10")])
        );
    }

    #[test]
    fn negotiation_accepts_valid_options_and_drops_the_rest() {
        let limits = Limits::default();
        let n = negotiate(
            &opts(&[
                ("blksize", "1468"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "16"),
                ("multicast", ""),
            ]),
            74213,
            &limits,
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.acknowledged,
            opts(&[
                ("blksize", "1468"),
                ("tsize", "74213"),
                ("timeout", "3"),
                ("windowsize", "16")
            ])
        );
        let n = negotiate(
            &opts(&[("blksize", "4"), ("timeout", "0"), ("windowsize", "x")]),
            1,
            &limits,
        );
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert!(n.acknowledged.is_empty());
        let n = negotiate(&opts(&[("windowsize", "65535")]), 1, &limits);
        assert_eq!(n.windowsize, limits.max_windowsize);
        // 16 blocks of 8 KiB would overflow a default socket buffer.
        let n = negotiate(
            &opts(&[("windowsize", "16"), ("blksize", "8192")]),
            1,
            &limits,
        );
        assert_eq!(n.windowsize, 8);
        assert_eq!(
            n.acknowledged,
            opts(&[("windowsize", "8"), ("blksize", "8192")])
        );
    }

    fn reader(bytes: Vec<u8>) -> ChunkReader {
        ChunkReader::new(crate::serve::tftp::content::Content::Memory(bytes.into()))
    }

    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (a, b)
    }

    /// A minimal in-test client: acks every block, drops the first copy of
    /// block 3 to force a retransmission.
    #[tokio::test]
    async fn lockstep_transfer_with_a_lost_block() {
        let (server, client) = pair().await;
        let data: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let limits = Limits {
            default_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let neg = negotiate(&opts(&[("blksize", "512")]), data.len() as u64, &limits);
        let body = data.clone();
        let srv = tokio::spawn(async move { transfer(&server, reader(body), &neg, &limits).await });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut dropped = false;
        loop {
            let n = client.recv(&mut buf).await.unwrap();
            match Packet::parse(&buf[..n]).unwrap() {
                Packet::OptionAck { .. } => client.send(&packet::ack(0)).await.map(|_| ()).unwrap(),
                Packet::Data { block, payload } => {
                    if block == 3 && !dropped {
                        dropped = true;
                        continue;
                    }
                    if block as usize == got.len() / 512 + 1 {
                        got.extend_from_slice(&payload);
                    }
                    client.send(&packet::ack(block)).await.unwrap();
                    if payload.len() < 512 {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, data);
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::Completed { bytes: 2000 }
        );
    }

    #[tokio::test]
    async fn client_error_after_oack_ends_the_session_at_once() {
        let (server, client) = pair().await;
        let limits = Limits::default();
        let neg = negotiate(&opts(&[("tsize", "0")]), 10, &limits);
        let srv = tokio::spawn(async move {
            transfer(&server, reader(b"0123456789".to_vec()), &neg, &limits).await
        });
        let mut buf = vec![0u8; 512];
        let n = client.recv(&mut buf).await.unwrap();
        assert!(matches!(
            Packet::parse(&buf[..n]).unwrap(),
            Packet::OptionAck { .. }
        ));
        client
            .send(&packet::error(ErrorCode::OptionNegotiation, "tsize only"))
            .await
            .unwrap();
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::ClientAborted { code: 8 }
        );
    }

    /// An ERROR that arrives right behind the ACK a window waited for is
    /// still read (at the latest when the retransmission timer fires, see
    /// `expect_quiet` and `queued`): the session ends as aborted, not as
    /// timed out after every retry.
    #[tokio::test]
    async fn an_error_queued_behind_an_ack_ends_the_transfer() {
        let (server, client) = pair().await;
        let limits = Limits {
            default_timeout: Duration::from_millis(50),
            max_retries: 2,
            ..Limits::default()
        };
        let neg = negotiate(&[], 2000, &limits);
        let data = vec![7u8; 2000];
        let srv = tokio::spawn(async move { transfer(&server, reader(data), &neg, &limits).await });
        let mut buf = vec![0u8; 1024];
        let n = client.recv(&mut buf).await.unwrap();
        assert!(matches!(
            Packet::parse(&buf[..n]).unwrap(),
            Packet::Data { block: 1, .. }
        ));
        client.send(&packet::ack(1)).await.unwrap();
        client
            .send(&packet::error(ErrorCode::NotDefined, "user abort"))
            .await
            .unwrap();
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::ClientAborted { code: 0 }
        );
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (server, _client) = pair().await;
        let limits = Limits {
            default_timeout: Duration::from_millis(10),
            max_retries: 2,
            ..Limits::default()
        };
        let neg = negotiate(&[], 3, &limits);
        let err = transfer(&server, reader(b"abc".to_vec()), &neg, &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::TimedOut(2)), "{err}");
    }
}
