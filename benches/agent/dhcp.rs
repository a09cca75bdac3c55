//! ProxyDHCP answers per second and latency: siteboot (`dhcp.mode =
//! proxy`) vs dnsmasq in its own proxy mode (`dhcp-range=…,proxy` and
//! `pxe-service`), the same DISCOVERs (UEFI x64 PXE, 10,000 MACs in
//! rotation) from one load generator, interleaved rounds.
//!
//! The servers run in a network namespace on one end of a veth pair; the
//! generator is here, on the other end (a DHCP server ignores what
//! reaches it over loopback). Needs root.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::{Proc, median};

const NETNS: &str = "sbbenchdhcp";
const SERVER_LINK: &str = "sbds0";
const CLIENT_LINK: &str = "sbdc0";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const MACS: u32 = 10_000;
/// Requests kept in flight, as many booting machines would.
const WINDOW: usize = 32;
const MEASURE: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        status.success(),
        "{args:?} failed (the benchmark needs root)"
    );
}

struct Link;

impl Link {
    fn up() -> Link {
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", NETNS]);
        sh(&[
            "ip",
            "link",
            "add",
            CLIENT_LINK,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_LINK,
            "netns",
            NETNS,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            CLIENT_LINK,
        ]);
        sh(&["ip", "link", "set", CLIENT_LINK, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", NETNS];
            all.extend_from_slice(args);
            sh(&all);
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER}/24"),
            "dev",
            SERVER_LINK,
        ]);
        inside(&["ip", "link", "set", SERVER_LINK, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        Link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", CLIENT_LINK])
            .status();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

fn discover(index: u32) -> (u32, Vec<u8>) {
    let xid = 0x5b00_0000 | index;
    let mac = [0x52, 0x54, 0x00, 0x7e, (index >> 8) as u8, index as u8];
    let mut message = Message::default();
    message.set_xid(xid).set_chaddr(&mac);
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    opts.insert(DhcpOption::ClientMachineIdentifier(
        std::iter::once(0).chain(1..=16).collect(),
    ));
    let mut bytes = Vec::new();
    message
        .encode(&mut Encoder::new(&mut bytes))
        .expect("encode");
    (xid, bytes)
}

/// The generator's socket: port 68 on the client link (answers are
/// broadcast to it).
fn client_socket() -> UdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket.set_broadcast(true).expect("broadcast");
    socket
        .bind_device(Some(CLIENT_LINK.as_bytes()))
        .expect("bind to the client link");
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .expect("bind port 68");
    let socket: UdpSocket = socket.into();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    socket
}

struct Round {
    answers_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
}

/// Keeps [`WINDOW`] DISCOVERs in flight for [`MEASURE`]; an answer is
/// matched to its request by xid. A request unanswered for 200 ms is
/// counted lost and replaced.
fn load(socket: &UdpSocket) -> Round {
    let packets: Vec<(u32, Vec<u8>)> = (0..MACS).map(discover).collect();
    let to = SocketAddrV4::new(SERVER, 67);
    let mut sent_at: std::collections::HashMap<u32, Instant> = Default::default();
    let mut next = 0usize;
    let mut latencies = Vec::new();
    let mut lost = 0u64;
    let mut buf = [0u8; 1500];
    let started = Instant::now();
    let mut send = |sent_at: &mut std::collections::HashMap<u32, Instant>| {
        let (xid, bytes) = &packets[next % packets.len()];
        next += 1;
        if socket.send_to(bytes, to).is_ok() {
            sent_at.insert(*xid, Instant::now());
        }
    };
    while sent_at.len() < WINDOW {
        send(&mut sent_at);
    }
    while started.elapsed() < MEASURE {
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..len])) else {
                    continue;
                };
                if let Some(at) = sent_at.remove(&reply.xid()) {
                    latencies.push(at.elapsed());
                    send(&mut sent_at);
                }
            }
            Err(_) => {
                let stale: Vec<u32> = sent_at
                    .iter()
                    .filter(|(_, at)| at.elapsed() > Duration::from_millis(200))
                    .map(|(xid, _)| *xid)
                    .collect();
                for xid in stale {
                    sent_at.remove(&xid);
                    lost += 1;
                    send(&mut sent_at);
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Round {
        answers_per_s: latencies.len() as f64 / elapsed,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        lost,
    }
}

fn start_siteboot(work: &std::path::Path) -> Proc {
    let dir = work.join("dhcp-bench-agent");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("siteboot.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"{SERVER}:0\"\n[tftp]\nlisten = \"{SERVER}:0\"\n\
             [dhcp]\nmode = \"proxy\"\ninterfaces = [\"{SERVER_LINK}\"]\nrate_per_mac = 10000\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let ready = dir.join("ready.json");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            NETNS,
            env!("CARGO_BIN_EXE_siteboot"),
            "serve",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("SITEBOOT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start siteboot");
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "siteboot did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn start_dnsmasq() -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", NETNS, "dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--pid-file",
            "--leasefile-ro",
            "--bind-interfaces",
            &format!("--interface={SERVER_LINK}"),
            "--dhcp-range=10.79.0.0,proxy",
            "--pxe-service=x86-64_EFI,siteboot,ipxe.efi",
            "--pxe-service=x86PC,siteboot,undionly.kpxe",
            "--log-facility=/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dnsmasq");
    // Ready when it answers (`wait_answering`), not after a fixed delay.
    Proc(child)
}

/// Waits until the server answers one DISCOVER.
fn wait_answering(socket: &UdpSocket) {
    let (xid, bytes) = discover(MACS + 1);
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    loop {
        let _ = socket.send_to(&bytes, SocketAddrV4::new(SERVER, 67));
        if let Ok((len, _)) = socket.recv_from(&mut buf)
            && Message::decode(&mut Decoder::new(&buf[..len])).is_ok_and(|m| m.xid() == xid)
        {
            // Anything else still arriving belongs to no round.
            while socket.recv_from(&mut buf).is_ok() {}
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no answer from the server"
        );
    }
}

pub fn dhcp_benchmark(work: &std::path::Path) {
    println!(
        "\n== ProxyDHCP: DISCOVER answers/s, {WINDOW} in flight, {MACS} MACs (median of {ROUNDS} interleaved rounds of {} s) ==",
        MEASURE.as_secs()
    );
    let _link = Link::up();
    let socket = client_socket();
    let mut results: Vec<(&str, Vec<Round>)> =
        vec![("siteboot", Vec::new()), ("dnsmasq", Vec::new())];
    for _ in 0..ROUNDS {
        for (name, rounds) in &mut results {
            let server = if *name == "siteboot" {
                start_siteboot(work)
            } else {
                start_dnsmasq()
            };
            wait_answering(&socket);
            rounds.push(load(&socket));
            drop(server);
            // The next server binds the same port.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let reference = median(results[1].1.iter().map(|r| r.answers_per_s).collect());
    println!(
        "{:<10} {:>12} {:>9} {:>9} {:>7} {:>10}",
        "server", "answers/s", "p50 ms", "p99 ms", "lost", "vs dnsmasq"
    );
    for (name, rounds) in &results {
        let rate = median(rounds.iter().map(|r| r.answers_per_s).collect());
        println!(
            "{:<10} {:>12.0} {:>9.3} {:>9.3} {:>7} {:>9.2}x",
            name,
            rate,
            median(rounds.iter().map(|r| r.p50_ms).collect()),
            median(rounds.iter().map(|r| r.p99_ms).collect()),
            rounds.iter().map(|r| r.lost).sum::<u64>(),
            rate / reference
        );
    }
}
