//! A window's DATA packets handed to the kernel with one system call
//! (`sendmmsg(2)`) instead of one `send` each: with windowsize 16 a
//! window was sixteen system calls, now one (or a few, if the socket's
//! buffer takes only part of it).

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Packets per `sendmmsg` call, at most (the negotiated window is capped
/// below it; a longer list goes in several calls).
const MAX_PER_CALL: usize = 64;

/// Sends every packet, in order, on the connected `socket`.
pub async fn send_all(socket: &UdpSocket, packets: &[&[u8]]) -> io::Result<()> {
    // A lock-step window: a plain send.
    if let [packet] = packets {
        return socket.send(packet).await.map(|_| ());
    }
    let mut sent = 0;
    while sent < packets.len() {
        socket.writable().await?;
        let rest = &packets[sent..];
        match socket.try_io(Interest::WRITABLE, || send_some(socket.as_raw_fd(), rest)) {
            Ok(count) => sent += count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `sendmmsg` of the first packets of `packets` (at most
/// [`MAX_PER_CALL`]); how many the kernel took (at least one, or an error).
pub(super) fn send_some(fd: std::os::fd::RawFd, packets: &[&[u8]]) -> io::Result<usize> {
    let count = packets.len().min(MAX_PER_CALL);
    let mut iovecs: Vec<libc::iovec> = packets[..count]
        .iter()
        .map(|packet| libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iovec| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value
            // (no address: the socket is connected; no control data).
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: `headers` holds `count` initialised entries, each pointing
    // at one iovec of `iovecs`, which point into `packets`; all outlive
    // the call, and the kernel only reads them (and writes msg_len).
    let sent = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet arrives whole and in order, also more than one call's
    /// worth.
    #[tokio::test]
    async fn every_packet_arrives_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sender
            .connect(receiver.local_addr().expect("addr"))
            .await
            .expect("connect");
        let packets: Vec<Vec<u8>> = (0..MAX_PER_CALL + 7)
            .map(|i| vec![i as u8; 10 + i])
            .collect();
        let slices: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        send_all(&sender, &slices).await.expect("sent");
        let mut buf = [0u8; 256];
        for packet in &packets {
            let len = receiver.recv(&mut buf).await.expect("recv");
            assert_eq!(&buf[..len], packet.as_slice());
        }
    }
}
