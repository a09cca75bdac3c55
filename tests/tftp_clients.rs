//! Real TFTP clients (tftp-hpa, atftp, curl) and raw firmware-style packet
//! sequences against the running agent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops on what it cannot do

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{AgentBuilder, pattern, require_tool};

const UNDIONLY: &str = "/usr/lib/ipxe/undionly.kpxe";

fn undionly() -> Vec<u8> {
    std::fs::read(UNDIONLY).unwrap_or_else(|e| {
        panic!("{UNDIONLY} is missing ({e}): install Debian's ipxe package (scripts/install-test-deps.sh)")
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// `tftp -m binary 127.0.0.1 PORT -c get NAME OUT` (tftp-hpa).
fn tftp_hpa_get(agent: &common::Agent, name: &str, out: &std::path::Path) -> std::process::Output {
    require_tool("tftp");
    Command::new("tftp")
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &agent.tftp.port().to_string(),
            "-c",
            "get",
            name,
        ])
        .arg(out)
        .output()
        .expect("run tftp")
}

#[test]
fn tftp_hpa_fetches_undionly_byte_identical() {
    require_tool("tftp");
    let agent = AgentBuilder::new().start();
    let out = agent.dir.path().join("undionly.out");
    let result = tftp_hpa_get(&agent, "undionly.kpxe", &out);
    // tftp-hpa exits 0 even on errors: the bytes are the verdict.
    assert_eq!(read(&out), undionly(), "tftp-hpa output: {result:?}");
}

#[test]
fn curl_tftp_fetches_undionly_byte_identical() {
    let agent = AgentBuilder::new().start();
    let (_, _, body) = common::curl(&[&format!(
        "tftp://127.0.0.1:{}/undionly.kpxe",
        agent.tftp.port()
    )]);
    assert_eq!(body, undionly());
}

/// Fetches `name` with atftp at the given block and window size.
fn atftp_get(agent: &common::Agent, name: &str, blksize: u32, window: u32, out: &Path) {
    let result = Command::new("atftp")
        .args(["--option", &format!("blksize {blksize}")])
        .args(["--option", &format!("windowsize {window}")])
        .args(["--get", "-r", name, "-l"])
        .arg(out)
        .args(["127.0.0.1", &agent.tftp.port().to_string()])
        .output()
        .expect("run atftp");
    assert!(
        result.status.success(),
        "atftp: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn atftp_with_blksize_1468_and_windowsize_16() {
    require_tool("atftp");
    let data = pattern(3_000_000, 7);
    let agent = AgentBuilder::new().asset("big.bin", &data).start();
    let out = agent.dir.path().join("big.out");
    atftp_get(&agent, "big.bin", 1468, 16, &out);
    assert_eq!(read(&out), data);
    // 16 blocks of 8 KiB would overflow atftp's socket buffer: the agent
    // offers a window of 8 instead (64 KiB), and atftp follows the OACK.
    let out8 = agent.dir.path().join("big8.out");
    atftp_get(&agent, "big.bin", 8192, 16, &out8);
    assert_eq!(read(&out8), data);
    agent.wait_for_log("blksize=1468 windowsize=16");
    let log = agent.wait_for_log("blksize=8192 windowsize=");
    assert!(
        log.contains("blksize=8192 windowsize=8"),
        "window not capped:\n{log}"
    );
}

#[test]
fn block_numbers_roll_over_past_65535_at_blksize_512() {
    // 65535 blocks of 512 bytes is 33,553,920 bytes; go well past it.
    let data = pattern(65_536 * 512 + 70_000, 11);
    let agent = AgentBuilder::new().asset("rollover.bin", &data).start();
    let out = agent.dir.path().join("rollover.out");
    let (_, _, _) = common::curl(&[
        "--tftp-blksize",
        "512",
        "-o",
        out.to_str().expect("utf-8 path"),
        &format!("tftp://127.0.0.1:{}/rollover.bin", agent.tftp.port()),
    ]);
    let got = read(&out);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs after rollover");
}

/// A raw client socket with a receive timeout, so a missing answer fails
/// the test instead of hanging it.
fn raw_client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket
}

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("no answer from the server");
    buf.truncate(n);
    (buf, from)
}

fn opcode(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

fn oack_options(p: &[u8]) -> Vec<String> {
    p[2..]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Receives a whole file after an OACK was acknowledged with ACK 0.
fn receive_file(socket: &UdpSocket, server: SocketAddr, blksize: usize) -> Vec<u8> {
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    loop {
        let (p, from) = recv(socket);
        assert_eq!(from, server, "packet from another transfer id");
        assert_eq!(opcode(&p), 3, "expected DATA, got {p:?}");
        let block = u16::from_be_bytes([p[2], p[3]]);
        if block == expected {
            data.extend_from_slice(&p[4..]);
            expected = expected.wrapping_add(1);
        }
        socket.send_to(&[0, 4, p[2], p[3]], server).expect("ack");
        if p.len() - 4 < blksize {
            return data;
        }
    }
}

/// UEFI firmware asks for the size first (RRQ with tsize 0), aborts with
/// ERROR 8 when it has it, then sends the real RRQ from the same port.
#[test]
fn firmware_tsize_probe_then_error_then_rrq_from_same_port() {
    let expected = undionly();
    let agent = AgentBuilder::new().start();
    let client = raw_client();
    client
        .send_to(
            &rrq("undionly.kpxe", &[("tsize", "0"), ("blksize", "1468")]),
            agent.tftp,
        )
        .expect("send");
    let (oack, probe_tid) = recv(&client);
    assert_eq!(opcode(&oack), 6, "expected OACK");
    let options = oack_options(&oack);
    assert!(
        options
            .windows(2)
            .any(|w| w[0] == "tsize" && w[1] == expected.len().to_string()),
        "tsize missing from {options:?}"
    );
    let mut error = vec![0, 5, 0, 8];
    error.extend_from_slice(b"tsize probe done\0");
    client.send_to(&error, probe_tid).expect("send error");

    client
        .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
        .expect("send");
    // A retransmission the probe session sent before our ERROR reached it
    // may still be on its way: at most one, and it is not the answer.
    let (mut oack, mut tid) = recv(&client);
    let mut from_probe = 0;
    while tid == probe_tid {
        from_probe += 1;
        assert!(
            from_probe <= 1,
            "the probe session kept sending after ERROR"
        );
        (oack, tid) = recv(&client);
    }
    assert_eq!(
        opcode(&oack),
        6,
        "expected OACK for the real request, got {oack:?}"
    );
    // The real request's own OACK: its blksize, and no tsize (the probe's
    // OACK carried tsize).
    assert_eq!(oack_options(&oack), ["blksize", "1468"]);
    client.send_to(&[0, 4, 0, 0], tid).expect("ack 0");
    assert_eq!(receive_file(&client, tid, 1468), expected);

    // The probe session ended on the ERROR: nothing more may arrive from it
    // (async-tftp 0.4 keeps retransmitting its OACK here for minutes).
    client
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    while let Ok((_, from)) = client.recv_from(&mut buf) {
        assert_ne!(
            from, probe_tid,
            "probe session still sending after the client's ERROR"
        );
    }
}

/// The same firmware retransmitting its RRQ (slow network) must not end
/// up with two transfers fighting over one client port.
#[test]
fn repeated_rrq_from_one_port_replaces_the_session() {
    let expected = undionly();
    let agent = AgentBuilder::new().start();
    let client = raw_client();
    client
        .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
        .expect("send");
    let (_, first_tid) = recv(&client);
    client
        .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
        .expect("send");
    // The replaced session is ended at once: at most one packet of it (a
    // retransmission already on its way) may still arrive, in all.
    let mut from_first = 0;
    let (mut p, mut tid) = recv(&client);
    while tid == first_tid {
        from_first += 1;
        (p, tid) = recv(&client);
    }
    assert_eq!(opcode(&p), 6);
    assert_eq!(oack_options(&p), ["blksize", "1468"]);
    client.send_to(&[0, 4, 0, 0], tid).expect("ack 0");
    let mut data = Vec::new();
    let mut expected_block: u16 = 1;
    loop {
        let (p, from) = recv(&client);
        if from == first_tid {
            from_first += 1;
            assert!(from_first <= 1, "the replaced session is still sending");
            continue;
        }
        assert_eq!(opcode(&p), 3);
        let block = u16::from_be_bytes([p[2], p[3]]);
        if block == expected_block {
            data.extend_from_slice(&p[4..]);
            expected_block += 1;
        }
        client.send_to(&[0, 4, p[2], p[3]], tid).expect("ack");
        if p.len() - 4 < 1468 {
            break;
        }
    }
    assert_eq!(data, expected);
}

fn expect_error(agent_tftp: SocketAddr, packet: &[u8]) -> (u16, String) {
    let client = raw_client();
    client.send_to(packet, agent_tftp).expect("send");
    let (p, _) = recv(&client);
    assert_eq!(opcode(&p), 5, "expected an ERROR packet, got {p:?}");
    let code = u16::from_be_bytes([p[2], p[3]]);
    let message = String::from_utf8_lossy(&p[4..])
        .trim_end_matches('\0')
        .to_string();
    (code, message)
}

#[test]
fn traversal_and_symlink_escapes_are_refused() {
    let builder = AgentBuilder::new().asset("inside.bin", b"inside");
    let secret = builder.path().join("secret.txt");
    std::fs::write(&secret, b"top secret").expect("write secret");
    std::os::unix::fs::symlink(&secret, builder.path().join("boot-assets/leak.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(builder.path(), builder.path().join("boot-assets/updir"))
        .expect("symlink");
    let agent = builder.start();
    for name in [
        "../secret.txt",
        "/../secret.txt",
        "..\\secret.txt",
        "sub/../../secret.txt",
        "leak.txt",
        "updir/secret.txt",
        "/etc/passwd",
        "../../../../../../etc/passwd",
    ] {
        let (code, message) = expect_error(agent.tftp, &rrq(name, &[]));
        assert!(code == 1 || code == 2, "{name}: code {code} {message}");
    }
    // And through a real client: nothing is written.
    require_tool("tftp");
    let out = agent.dir.path().join("leak.out");
    tftp_hpa_get(&agent, "leak.txt", &out);
    assert!(!read(&out).starts_with(b"top secret"));
    // The legitimate file still works.
    let client = raw_client();
    client
        .send_to(&rrq("inside.bin", &[]), agent.tftp)
        .expect("send");
    let (p, _) = recv(&client);
    assert_eq!(&p[..4], &[0, 3, 0, 1]);
    assert_eq!(&p[4..], b"inside");
}

#[test]
fn write_requests_are_refused() {
    let agent = AgentBuilder::new().start();
    let mut wrq = rrq("upload.bin", &[]);
    wrq[1] = 2;
    let (code, message) = expect_error(agent.tftp, &wrq);
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("read-only"), "{message}");
    // tftp-hpa's put reports the server's error.
    require_tool("tftp");
    let local = agent.dir.path().join("upload.bin");
    std::fs::write(&local, b"payload").expect("write");
    let out = Command::new("tftp")
        .current_dir(agent.dir.path())
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &agent.tftp.port().to_string(),
            "-c",
            "put",
            "upload.bin",
        ])
        .output()
        .expect("run tftp");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("read-only"), "tftp put output: {text}");
    assert!(!agent.assets_dir().join("upload.bin").exists());
}

#[test]
fn malformed_requests_and_missing_files_get_errors() {
    let agent = AgentBuilder::new().start();
    // (Under 5 bytes a datagram gets no answer at all: see
    // datagrams_shorter_than_an_error_are_dropped_unanswered.)
    let (code, _) = expect_error(agent.tftp, &[0, 1, b'x', b'y', b'z']);
    assert_eq!(code, 4);
    let (code, _) = expect_error(
        agent.tftp,
        &[0, 1, b'x', 0, b'o', b'c', b't', b'e', b't', 0, b'b', 0],
    );
    assert_eq!(code, 4);
    let (code, message) = expect_error(agent.tftp, &rrq("no-such-file.bin", &[]));
    assert_eq!(code, 1, "{message}");
    let (code, _) = expect_error(agent.tftp, &[0, 1, b'x', 0, b'm', b'a', b'i', b'l', 0]);
    assert_eq!(code, 4);
}

#[test]
fn session_limit_refuses_the_excess_request() {
    let agent = AgentBuilder::new()
        .config("")
        .env("SITEBOOT_TFTP_MAX_SESSIONS", "1")
        .start();
    // First client takes the only slot and never acknowledges.
    let holder = raw_client();
    holder
        .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
        .expect("send");
    let (p, _) = recv(&holder);
    assert_eq!(opcode(&p), 6);
    let (code, message) = expect_error(agent.tftp, &rrq("undionly.kpxe", &[]));
    assert_eq!(code, 0);
    assert!(message.contains("busy"), "{message}");
}

#[test]
fn boot_ipxe_over_tftp_is_the_rendered_bootstrap() {
    let agent = AgentBuilder::new().start();
    for name in ["boot.ipxe", "autoexec.ipxe"] {
        let (_, _, body) =
            common::curl(&[&format!("tftp://127.0.0.1:{}/{name}", agent.tftp.port())]);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("#!ipxe\n"), "{text}");
        // No public_url: the address the request reached, with the HTTP port.
        assert!(
            text.contains(&format!(
                "chain --autofree http://127.0.0.1:{}/api/v1/boot?mac=${{net0/mac}}",
                agent.http.port()
            )),
            "{text}"
        );
    }
}

#[test]
fn netascii_is_refused_not_served_untranslated() {
    let agent = AgentBuilder::new()
        .asset("text.txt", b"line\nline\n")
        .start();
    let mut request = vec![0, 1];
    request.extend_from_slice(b"text.txt\0netascii\0");
    let (code, message) = expect_error(agent.tftp, &request);
    assert_eq!(code, 4, "{message}");
    assert!(message.contains("octet"), "{message}");
}

#[test]
fn a_repeated_option_is_acknowledged_once() {
    let agent = AgentBuilder::new().asset("f.bin", &[7u8; 100]).start();
    let mut options = vec![("blksize", "1024"), ("blksize", "512")];
    options.extend(std::iter::repeat_n(("tsize", "0"), 1000));
    let request = rrq("f.bin", &options);
    let client = raw_client();
    client.send_to(&request, agent.tftp).expect("send");
    let (oack, _) = recv(&client);
    assert_eq!(opcode(&oack), 6, "expected an OACK, got {oack:?}");
    assert!(oack.len() < request.len(), "the OACK outgrew the request");
    let fields: Vec<&[u8]> = oack[2..]
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(
        fields,
        [&b"blksize"[..], b"1024", b"tsize", b"100"],
        "each option once, as first given"
    );
}

#[test]
fn an_error_reply_is_never_larger_than_its_request() {
    let agent = AgentBuilder::new().start();
    let long = "A".repeat(10_000);
    let mut malformed = vec![0, 1];
    malformed.extend_from_slice(b"f\0octet\0");
    malformed.extend_from_slice(long.as_bytes());
    malformed.push(0); // an option name with no value: its name is in the error
    let mut missing = vec![0, 1];
    missing.extend_from_slice(format!("{}\0octet\0", "m".repeat(1000)).as_bytes());
    let mut write = vec![0, 2];
    write.extend_from_slice(b"x\0octet\0");
    for request in [malformed, missing, rrq("n", &[]), write] {
        let client = raw_client();
        client.send_to(&request, agent.tftp).expect("send");
        let (reply, _) = recv(&client);
        assert_eq!(opcode(&reply), 5, "expected an ERROR");
        assert!(
            reply.len() <= request.len(),
            "a {}-byte request got a {}-byte reply",
            request.len(),
            reply.len()
        );
    }
}

/// Issue 19 item 15 (DESIGN §10): a datagram of 1 to 4 bytes can only be
/// answered with a larger ERROR (5 bytes at least), so it is dropped. The
/// proof that nothing came back: the first reply on the socket is the one
/// to a request sent after them (one socket, one server loop, in order).
#[test]
fn datagrams_shorter_than_an_error_are_dropped_unanswered() {
    let agent = AgentBuilder::new().start();
    let client = raw_client();
    for short in [&[0u8][..], &[0, 1], &[0, 9, 0], &[0, 1, b'x', 0]] {
        client.send_to(short, agent.tftp).expect("send");
    }
    let marker = rrq("marker-file-that-is-not-there", &[]);
    client.send_to(&marker, agent.tftp).expect("send");
    let (reply, _) = recv(&client);
    assert_eq!(opcode(&reply), 5, "expected an ERROR");
    assert!(
        String::from_utf8_lossy(&reply).contains("marker-file"),
        "the first reply answers the later request: {:?}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn a_flood_of_refused_requests_is_logged_once_with_a_count() {
    let agent = AgentBuilder::new().start();
    let client = raw_client();
    let mut write = vec![0, 2];
    write.extend_from_slice(b"upload.bin\0octet\0");
    for _ in 0..300 {
        client.send_to(&write, agent.tftp).expect("send");
        let (reply, _) = recv(&client);
        assert_eq!(opcode(&reply), 5);
    }
    // A transfer afterwards: once its line is in the log, so is every
    // line written before it.
    let out = agent.dir.path().join("after.out");
    atftp_get(&agent, "undionly.kpxe", 1468, 1, &out);
    let log = agent.wait_for_log("tftp transfer complete");
    let logged = log
        .lines()
        .filter(|l| l.contains("tftp write request refused"))
        .count();
    assert!(
        (1..10).contains(&logged),
        "300 refusals from one peer logged {logged} times"
    );
}

#[test]
fn one_client_address_holds_only_its_share_of_sessions() {
    // DESIGN §10: tftp.max_sessions_per_client (here 3) of the 1024 slots.
    let agent = AgentBuilder::new()
        .env("SITEBOOT_TFTP_MAX_SESSIONS_PER_CLIENT", "3")
        .start();
    let holders: Vec<UdpSocket> = (0..3).map(|_| raw_client()).collect();
    for holder in &holders {
        holder
            .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
            .expect("send");
        let (p, _) = recv(holder);
        assert_eq!(opcode(&p), 6, "a session within the share starts");
    }
    let (code, message) = expect_error(agent.tftp, &rrq("undionly.kpxe", &[]));
    assert_eq!(code, 0, "{message}");
    assert!(message.contains("busy"), "{message}");
    // A request from a port that already holds a session replaces it.
    holders[0]
        .send_to(&rrq("undionly.kpxe", &[("blksize", "1468")]), agent.tftp)
        .expect("send");
    let (p, _) = recv(&holders[0]);
    assert_eq!(opcode(&p), 6);
}

#[test]
fn a_timeout_above_the_cap_is_not_negotiated() {
    // One RRQ with `timeout 255` that is never acknowledged would otherwise
    // hold its slot for 6 × 255 s.
    let agent = AgentBuilder::new().start();
    let client = raw_client();
    client
        .send_to(
            &rrq("undionly.kpxe", &[("timeout", "255"), ("tsize", "0")]),
            agent.tftp,
        )
        .expect("send");
    let (oack, _) = recv(&client);
    assert_eq!(opcode(&oack), 6);
    let options = oack_options(&oack);
    assert!(
        !options.iter().any(|o| o == "timeout"),
        "timeout 255 was accepted: {options:?}"
    );
    assert!(options.iter().any(|o| o == "tsize"), "{options:?}");
}

/// DESIGN §10 `tftp.stall_timeout`, untested until issue 19: a client
/// that never acknowledges is given up on once the transfer has made no
/// progress for the stall timeout, before the retry limit (5) would end
/// it. Counted in retransmissions received, not timed: at 1 s per round,
/// a 2 s stall timeout ends it after at most 4 copies of block 1, where
/// the retry limit alone would send 6.
#[test]
fn a_transfer_that_makes_no_progress_ends_at_the_stall_timeout() {
    let agent = AgentBuilder::new()
        .asset("stalled.bin", &common::pattern(10_000, 7))
        .env("SITEBOOT_TFTP_STALL_TIMEOUT", "2s")
        .start();
    let client = raw_client();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    client
        .send_to(&rrq("stalled.bin", &[]), agent.tftp)
        .expect("send");
    let mut copies = 0;
    loop {
        let (packet, _) = recv(&client);
        match opcode(&packet) {
            3 => copies += 1,
            5 => break,
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(copies >= 1, "block 1 was sent");
    assert!(
        copies <= 4,
        "{copies} copies of block 1: the stall timeout did not end the transfer"
    );
}
