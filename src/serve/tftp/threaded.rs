//! Transfers on a thread of their own, waiting for each ACK in a
//! blocking `recv`, as tftpd-hpa's process per transfer does: lock-step
//! ones (windowsize 1, what firmware asks for) and windowed ones (a window
//! by one `sendmmsg`, then the wait).
//!
//! On the async engine every ACK is a readiness wait (epoll, then
//! `recvfrom`): a fifth of a lock-step transfer's CPU, and ~10 % of its
//! rate at blksize 8192 (docs/benchmarks.md). Every transfer past
//! [`MAX_THREADS`] stays on the async engine: a storm of hundreds of
//! transfers must not queue behind a pool of threads.
//!
//! A thread cannot be aborted as a task is; the task that waits for it
//! sets a flag when it is dropped (its session replaced by the client's
//! new request, or cut at shutdown), and the thread looks at the flag
//! between receive slices of at most [`END_CHECK`].

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::content::ChunkReader;
use super::packet::{self, ErrorCode, Packet};
use super::session::{Limits, Negotiated, Outcome, TransferError};
use super::window::Window;

/// Lock-step transfers on threads of their own at once, at most.
pub const MAX_THREADS: usize = 32;
/// Longest a thread waits before looking whether its session was ended.
const END_CHECK: Duration = Duration::from_millis(100);

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_THREADS`] places, given back when dropped.
pub struct Place(());

impl Drop for Place {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A place for a transfer of `neg` on a thread, if one is free.
pub fn place_for(_neg: &Negotiated) -> Option<Place> {
    RUNNING
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |running| {
            (running < MAX_THREADS).then_some(running + 1)
        })
        .ok()
        .map(|_| Place(()))
}

/// Sets the flag when dropped: the waiting task is gone.
struct EndOnDrop(Arc<AtomicBool>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the transfer on a blocking thread and waits for it.
pub async fn transfer(
    socket: tokio::net::UdpSocket,
    reader: ChunkReader,
    neg: &Negotiated,
    limits: &Limits,
    place: Place,
) -> Result<Outcome, TransferError> {
    let socket = socket.into_std()?;
    let ended = Arc::new(AtomicBool::new(false));
    let _end_on_drop = EndOnDrop(ended.clone());
    let runtime = tokio::runtime::Handle::current();
    let (neg, limits) = (neg.clone(), *limits);
    tokio::task::spawn_blocking(move || {
        let _place = place;
        transfer_blocking(&socket, reader, &neg, &limits, &ended, &runtime)
    })
    .await
    .map_err(|e| std::io::Error::other(format!("tftp transfer thread failed: {e}")))?
}

fn transfer_blocking(
    socket: &UdpSocket,
    mut reader: ChunkReader,
    neg: &Negotiated,
    limits: &Limits,
    ended: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> Result<Outcome, TransferError> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(neg.timeout.min(END_CHECK)))?;
    let mut wait = Wait {
        socket,
        neg,
        limits,
        ended,
        last_progress: Instant::now(),
        buf: [0u8; 1024],
    };
    if !neg.acknowledged.is_empty() {
        let oack = packet::option_ack(&neg.acknowledged);
        if let Some(code) = wait.exchange(&oack, 0)? {
            return Ok(Outcome::ClientAborted { code });
        }
    }
    if neg.windowsize > 1 {
        return windowed(&mut wait, reader, runtime);
    }
    let mut data = vec![0u8; 4 + neg.blksize];
    let mut block: u16 = 0;
    let mut bytes: u64 = 0;
    loop {
        // Block numbers on the wire wrap from 65535 to 0.
        block = block.wrapping_add(1);
        // The reader only waits when the file is not in the page cache
        // (its read then runs on the blocking pool).
        let len = runtime.block_on(reader.read(&mut data[4..]))?;
        data[..4].copy_from_slice(&packet::data_header(block));
        bytes += len as u64;
        if let Some(code) = wait.exchange(&data[..4 + len], block)? {
            return Ok(Outcome::ClientAborted { code });
        }
        if len < neg.blksize {
            return Ok(Outcome::Completed { bytes });
        }
    }
}

/// A windowed transfer (RFC 7440): a window of blocks in one `sendmmsg`,
/// then a blocking wait for the ACK; an ACK inside the window
/// acknowledges it and every block before it, and the rest is sent again.
fn windowed(
    wait: &mut Wait<'_>,
    mut reader: ChunkReader,
    runtime: &tokio::runtime::Handle,
) -> Result<Outcome, TransferError> {
    let neg = wait.neg;
    let mut window = Window::new(neg.windowsize, neg.blksize);
    loop {
        // The reader only waits when the file is not in the page cache.
        runtime.block_on(window.fill(&mut reader))?;
        if window.is_empty() {
            return Ok(Outcome::Completed {
                bytes: window.bytes(),
            });
        }
        // Stale ACKs (not for a block of this window) are ignored, never
        // answered, as on the async engine: the window goes again only
        // when the timeout passes.
        let packets = window.packets();
        let mut retries = 0u32;
        let acked = 'window: loop {
            send_window(wait.socket, &packets)?;
            let deadline = Instant::now() + neg.timeout;
            loop {
                match wait.answer_by(deadline)? {
                    Some(Answer::Ack(block)) => {
                        if let Some(pos) = window.position(block) {
                            break 'window pos;
                        }
                    }
                    Some(Answer::Error(code)) => return Ok(Outcome::ClientAborted { code }),
                    None => {
                        wait.count_retry(&mut retries)?;
                        continue 'window;
                    }
                }
            }
        };
        drop(packets);
        window.acknowledge(acked);
        wait.last_progress = Instant::now();
    }
}

/// Every packet of a window on the blocking socket.
fn send_window(socket: &UdpSocket, packets: &[&[u8]]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < packets.len() {
        match super::batch::send_some(socket.as_raw_fd(), &packets[sent..]) {
            Ok(count) => sent += count,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a client said to a window.
enum Answer {
    Ack(u16),
    Error(u16),
}

struct Wait<'a> {
    socket: &'a UdpSocket,
    neg: &'a Negotiated,
    limits: &'a Limits,
    ended: &'a AtomicBool,
    last_progress: Instant,
    buf: [u8; 1024],
}

impl Wait<'_> {
    /// The client's next ACK or ERROR before `deadline` (None: none came;
    /// anything else it sends is ignored).
    fn answer_by(&mut self, deadline: Instant) -> Result<Option<Answer>, TransferError> {
        while Instant::now() < deadline {
            match self.socket.recv(&mut self.buf) {
                Ok(len) => match Packet::parse(&self.buf[..len]) {
                    Ok(Packet::Ack { block }) => return Ok(Some(Answer::Ack(block))),
                    Ok(Packet::Error { code, .. }) => return Ok(Some(Answer::Error(code))),
                    _ => {}
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if self.ended.load(Ordering::SeqCst) {
                return Err(TransferError::Ended);
            }
        }
        Ok(None)
    }

    /// One more retransmission; the transfer ends (with an ERROR sent)
    /// past `max_retries` or `stall_timeout` without progress.
    fn count_retry(&mut self, retries: &mut u32) -> Result<(), TransferError> {
        *retries += 1;
        crate::metrics::metrics().tftp.retransmissions.inc();
        if *retries > self.limits.max_retries
            || self.last_progress.elapsed() > self.limits.stall_timeout
        {
            let _ = self
                .socket
                .send(&packet::error(ErrorCode::NotDefined, "timed out"));
            return Err(TransferError::TimedOut(self.limits.max_retries));
        }
        Ok(())
    }

    /// Sends `packet` until the client acknowledges `block`; `Some(code)`
    /// if it answered with an ERROR instead. The same rules as the async
    /// engine: a stale ACK is ignored, never answered (the Sorcerer's
    /// Apprentice bug), and the transfer ends after `max_retries`
    /// retransmissions or `stall_timeout` without progress.
    fn exchange(&mut self, packet: &[u8], block: u16) -> Result<Option<u16>, TransferError> {
        let mut retries = 0u32;
        loop {
            self.socket.send(packet)?;
            let deadline = Instant::now() + self.neg.timeout;
            loop {
                match self.answer_by(deadline)? {
                    Some(Answer::Ack(acked)) if acked == block => {
                        self.last_progress = Instant::now();
                        return Ok(None);
                    }
                    Some(Answer::Ack(_)) => {}
                    Some(Answer::Error(code)) => return Ok(Some(code)),
                    None => break,
                }
            }
            self.count_retry(&mut retries)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tftp::content::Content;
    use crate::serve::tftp::session::negotiate;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reader(bytes: Vec<u8>) -> ChunkReader {
        ChunkReader::new(Content::Memory(bytes.into()))
    }

    /// The server's socket (as a session has it) and a client's.
    async fn pair() -> (tokio::net::UdpSocket, UdpSocket) {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.connect(client.local_addr().unwrap()).await.unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        // A test that goes wrong fails, it does not hang.
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (server, client)
    }

    fn quick() -> Limits {
        Limits {
            default_timeout: Duration::from_millis(50),
            max_retries: 3,
            ..Limits::default()
        }
    }

    /// Windowed transfers take a thread too: a window of 4 whose third
    /// block is lost is acknowledged up to its second (the rest goes
    /// again), a stale ACK changes nothing, and the file arrives whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_windowed_transfer_sends_again_from_the_lost_block() {
        let (server, client) = pair().await;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let limits = quick();
        let neg = negotiate(
            &opts(&[("blksize", "512"), ("windowsize", "4")]),
            data.len() as u64,
            &limits,
        );
        let place = place_for(&neg).expect("a free place");
        let body = data.clone();
        let srv =
            tokio::spawn(async move { transfer(server, reader(body), &neg, &limits, place).await });
        let received = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            let mut dropped = false;
            loop {
                let n = client.recv(&mut buf).unwrap();
                match Packet::parse(&buf[..n]).unwrap() {
                    Packet::OptionAck { .. } => {
                        client.send(&packet::ack(0)).unwrap();
                    }
                    Packet::Data { block, payload } => {
                        if block == 3 && !dropped {
                            // Lost: the client acknowledges what it has
                            // (RFC 7440), then, stale, block 1 again.
                            dropped = true;
                            client.send(&packet::ack(2)).unwrap();
                            client.send(&packet::ack(1)).unwrap();
                            continue;
                        }
                        let expected = got.len() / 512 + 1;
                        if block as usize == expected {
                            got.extend_from_slice(&payload);
                        }
                        let last = payload.len() < 512;
                        if last || block % 4 == 0 {
                            client.send(&packet::ack(block)).unwrap();
                        }
                        if last {
                            return got;
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(received, data);
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::Completed { bytes: 5000 }
        );
    }

    /// Acks every block but drops the first copy of block 3 (sent again),
    /// and answers block 2 twice (the stale ACK is ignored).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_block_is_sent_again_and_the_file_arrives_whole() {
        let (server, client) = pair().await;
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let limits = quick();
        let neg = negotiate(&opts(&[("blksize", "512")]), data.len() as u64, &limits);
        let place = place_for(&neg).expect("a free place");
        let body = data.clone();
        let srv =
            tokio::spawn(async move { transfer(server, reader(body), &neg, &limits, place).await });
        let received = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            let mut dropped = false;
            loop {
                let n = client.recv(&mut buf).unwrap();
                match Packet::parse(&buf[..n]).unwrap() {
                    Packet::OptionAck { .. } => {
                        client.send(&packet::ack(0)).unwrap();
                    }
                    Packet::Data { block, payload } => {
                        if block == 3 && !dropped {
                            dropped = true;
                            continue;
                        }
                        if block as usize == got.len() / 512 + 1 {
                            got.extend_from_slice(&payload);
                        }
                        if block == 2 {
                            client.send(&packet::ack(1)).unwrap();
                        }
                        client.send(&packet::ack(block)).unwrap();
                        if payload.len() < 512 {
                            return got;
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(received, data);
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::Completed { bytes: 2000 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_error_after_the_oack_ends_the_transfer() {
        let (server, client) = pair().await;
        let limits = Limits::default();
        let neg = negotiate(&opts(&[("tsize", "0")]), 10, &limits);
        let place = place_for(&neg).expect("a free place");
        let srv = tokio::spawn(async move {
            transfer(server, reader(b"0123456789".to_vec()), &neg, &limits, place).await
        });
        let mut buf = vec![0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        assert!(matches!(
            Packet::parse(&buf[..n]).unwrap(),
            Packet::OptionAck { .. }
        ));
        client
            .send(&packet::error(ErrorCode::OptionNegotiation, "tsize only"))
            .unwrap();
        assert_eq!(
            srv.await.unwrap().unwrap(),
            Outcome::ClientAborted { code: 8 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_times_out_with_an_error_sent() {
        let (server, client) = pair().await;
        let limits = quick();
        let neg = negotiate(&[], 3, &limits);
        let place = place_for(&neg).expect("a free place");
        let err = transfer(server, reader(b"abc".to_vec()), &neg, &limits, place)
            .await
            .unwrap_err();
        assert!(matches!(err, TransferError::TimedOut(3)), "{err}");
        // Block 1 and its retransmissions, then the ERROR.
        client.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 512];
        let mut last = None;
        while let Ok(n) = client.recv(&mut buf) {
            last = Some(Packet::parse(&buf[..n]).map(|p| format!("{p:?}")).unwrap());
        }
        assert!(last.is_some_and(|p| p.contains("Error")), "no ERROR last");
    }

    /// A session ended from outside (replaced, or cut at shutdown) stops
    /// its thread at the next look at the flag, whatever the client does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ended_session_stops_its_thread() {
        let (server, _client) = pair().await;
        let limits = Limits {
            default_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let neg = negotiate(&[], 3, &limits);
        let socket = server.into_std().unwrap();
        let runtime = tokio::runtime::Handle::current();
        let ended = AtomicBool::new(true);
        let result = tokio::task::spawn_blocking(move || {
            transfer_blocking(
                &socket,
                reader(b"abc".to_vec()),
                &neg,
                &limits,
                &ended,
                &runtime,
            )
        })
        .await
        .unwrap();
        assert!(matches!(result, Err(TransferError::Ended)), "{result:?}");
    }

    /// The flag is set when the task waiting for the thread is dropped.
    #[test]
    fn dropping_the_waiting_task_ends_the_session() {
        let ended = Arc::new(AtomicBool::new(false));
        drop(EndOnDrop(ended.clone()));
        assert!(ended.load(Ordering::SeqCst));
    }
}
