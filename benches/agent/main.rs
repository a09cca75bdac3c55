//! Benchmarks, side by side in one run (`cargo bench --bench agent`):
//!
//! * TFTP: MB/s for a 64 MiB file, siteboot vs Debian's tftpd-hpa
//!   (`in.tftpd`), same client (curl, then atftp for windowsize), same box.
//! * HTTP: `/api/v1/boot` requests/s and p50/p99 latency at 64 concurrent
//!   keep-alive clients with 10,000 nodes in the store.
//! * cache: the content cache — 200 clients of one uncached 64 MiB file
//!   through the cache vs straight from the controller; the cached file
//!   over HTTP (1 and 64 clients) vs nginx, and over TFTP vs tftpd-hpa,
//!   serving the same file from the same disk.
//! * events: `/api/v1/boot` (metrics on) with 0, 50 and 200 clients of
//!   `/api/v1/events` connected.
//! * page: the status page's first render in a cold headless Chromium
//!   (Chromium's performance timing), from the agent vs the same bytes
//!   from nginx; the signed-in view drawn with 10,000 nodes vs 100.
//! * conflicts: replay of 10,000 state changes with none, and with 10%,
//!   conflicting (left to an operator, and settled by policy); the
//!   conflicts API's latency at 100,000 records.
//!
//! * dhcp: ProxyDHCP DISCOVER answers/s and latency, siteboot vs
//!   dnsmasq's own proxy mode, the same packets over a veth pair.
//! * firmware: power-on to status line for OVMF PXE, OVMF HTTP Boot and
//!   SeaBIOS iPXE, through ProxyDHCP vs a DHCP server configured for
//!   network boot (QEMU under TCG, on a bridge in a network namespace).
//! * policy: WAN bytes for one sync and prefetch under the cache policies
//!   minimal, assigned and mirror (100 nodes, 5 workflows); what reading
//!   the site policy adds to a registration.
//! * speed: issue 24 in one run: `/api/v1/boot` standalone, offline and
//!   online vs nginx under wrk (and hyper alone serving the same bytes,
//!   examples/hyper_reference.rs), `/api/v1/status` and the page, TFTP boot
//!   storms vs tftpd-hpa and rs-tftpd; interleaved, medians (with `tftp`:
//!   all of issue 24's figures).
//! * online-ab, standalone-ab, offline-ab (only when named): the boot
//!   path of this build vs `BENCH_BEFORE_BIN` in that mode, with agent CPU
//!   per boot (online: change feed calls per boot too).
//! * profile (only when named): where the standalone agent's time goes
//!   under the speed part's load, `perf record` top entries for
//!   `/api/v1/boot` and `/health`.
//! * secureboot: power-on to status line through shim → GRUB under Secure
//!   Boot vs `ipxe.efi` with it off.
//!
//! Everything runs on 127.0.0.1 (ProxyDHCP: a veth pair); clients and servers share the machine's
//! cores, as they would not in production, so ratios matter more than
//! absolute figures.

// A benchmark harness, like a test: it stops on what it cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;
#[path = "../../tests/common/controller.rs"]
#[allow(dead_code)]
mod controller;
#[path = "../../tests/common/pureboot.rs"]
#[allow(dead_code)]
mod pureboot;
#[path = "../../tests/common/segment.rs"]
#[allow(dead_code)]
mod segment;

/// For [`browser`]: a missing program stops the benchmark.
fn require_tool(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is required: run scripts/install-test-deps.sh"))
}

use siteboot::model::mac::Mac;
use siteboot::model::node::{Node, NodeState};
use siteboot::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod cache;
mod central;
mod conflicts;
mod dhcp;
mod events;
mod firmware;
mod hardening;
mod http;
mod online;
mod page;
mod policy;
mod profile;
mod queue;
mod speed;
mod tftp;
use cache::*;
use central::*;
use conflicts::*;
use dhcp::*;
use events::*;
use firmware::*;
use hardening::*;
use http::*;
use page::*;
use policy::*;
use profile::*;
use queue::*;
use speed::*;
use tftp::*;

const FILE_SIZE: usize = 64 * 1024 * 1024;
const RUNS: usize = 7;
const NODES: u32 = 10_000;
const CLIENTS: usize = 64;
const HTTP_WARMUP: Duration = Duration::from_secs(2);
const HTTP_MEASURE: Duration = Duration::from_secs(10);

struct Proc(Child);
impl Drop for Proc {
    /// SIGTERM first, so that a server with children (nginx's master and
    /// its workers) takes them down with it; SIGKILL after 2 s.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: a signal to our own child, which has not been waited for.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("agent benchmark: run it with `cargo bench --bench agent`");
        return;
    }
    for tool in ["curl", "atftp", "in.tftpd"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            panic!("{tool} is required: run scripts/install-test-deps.sh");
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("boot-assets");
    std::fs::create_dir(&root).expect("mkdir");
    let data: Vec<u8> = (0..FILE_SIZE)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &data).expect("write big.bin");

    // `cargo bench --bench agent -- tftp` (or `http`) runs one part only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wanted("tftp") {
        tftp_benchmark(work.path(), &root);
    }
    // `BENCH_BEFORE_BIN=<older siteboot> cargo bench --bench agent -- tftp-ab`
    if only.iter().any(|o| o == "tftp-ab") {
        tftp_before_after(work.path(), &root);
    }
    if wanted("http") {
        http_benchmark(work.path());
    }
    if wanted("central") {
        central_benchmark(work.path());
    }
    if wanted("queue") {
        queue_benchmark(work.path());
    }
    if wanted("hardening") {
        hardening_benchmark(work.path());
    }
    if wanted("conflicts") {
        conflicts_benchmark(work.path());
    }
    if wanted("cache") {
        cache_benchmark(work.path(), &data);
    }
    if wanted("events") {
        events_benchmark(work.path());
    }
    if wanted("page") {
        page_benchmark(work.path());
    }
    if wanted("dhcp") {
        dhcp_benchmark(work.path());
    }
    if wanted("firmware") {
        firmware_benchmark(work.path());
    }
    if wanted("policy") {
        policy_benchmark(work.path());
    }
    if wanted("speed") {
        speed_benchmark(work.path(), &root);
    }
    // Not in the default run (it needs perf and says nothing by itself).
    if only.iter().any(|o| o == "profile") {
        profile_benchmark(work.path(), &root);
    }
    // `BENCH_BEFORE_BIN=<older siteboot> cargo bench --bench agent -- online-ab`
    // (or `standalone-ab`, `offline-ab`)
    for (part, mode) in [
        ("standalone-ab", online::BootMode::Standalone),
        ("offline-ab", online::BootMode::Offline),
        ("online-ab", online::BootMode::Online),
    ] {
        if only.iter().any(|o| o == part) {
            online::boot_before_after(work.path(), &root, mode);
        }
    }
    if wanted("secureboot") {
        secure_boot_benchmark(work.path());
    }
}

/// Runs `start` with this process's open-file limit lowered to `limit`,
/// so that the agent it spawns inherits it; the limit is restored after.
fn with_file_limit<T>(limit: u64, start: impl FnOnce() -> T) -> T {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let lowered = libc::rlimit {
            rlim_cur: limit,
            rlim_max: old.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lowered);
    }
    let started = start();
    // SAFETY: as above.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &old);
    }
    started
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn start_agent(dir: &Path, root: &Path) -> (Proc, SocketAddr, SocketAddr) {
    start_agent_with(dir, root, &[])
}

fn start_agent_with(
    dir: &Path,
    root: &Path,
    env: &[(&str, String)],
) -> (Proc, SocketAddr, SocketAddr) {
    start_binary_with(Path::new(env!("CARGO_BIN_EXE_siteboot")), dir, root, env)
}

/// [`start_agent_with`] for another build of the agent (a before/after).
fn start_binary_with(
    binary: &Path,
    dir: &Path,
    root: &Path,
    env: &[(&str, String)],
) -> (Proc, SocketAddr, SocketAddr) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    // Per-transfer and per-request log lines would measure the logger;
    // errors still show. A level from `env` or BENCH_AGENT_LOG (`info`,
    // the Debian package's) measures it, the lines going down a pipe
    // as to a journal.
    let log_level = env
        .iter()
        .find(|(k, _)| *k == "SITEBOOT_LOG")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("BENCH_AGENT_LOG").ok())
        .unwrap_or_else(|| "error".into());
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--ready-file")
        .arg(&ready)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SITEBOOT_DATA_DIR", dir.join("data"))
        .env("SITEBOOT_TFTP_ROOT", root)
        .envs(
            std::env::var("BENCH_AGENT_WORKERS")
                .ok()
                .map(|w| ("TOKIO_WORKER_THREADS", w)),
        )
        .env("SITEBOOT_TFTP_LISTEN", "127.0.0.1:0")
        .env("SITEBOOT_HTTP_LISTEN", "127.0.0.1:0")
        .env("SITEBOOT_TEMPLATES_DIR", dir.join("no-templates"))
        .env("SITEBOOT_LOG", &log_level)
        .stderr(if log_level == "error" {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::null())
        .spawn()
        .expect("start siteboot");
    // Below `error`, the lines go down a pipe, read and dropped here.
    if let Some(mut lines) = child.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    }
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("siteboot did not start: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let doc: serde_json::Value = serde_json::from_str(&text).expect("ready file");
    let field = |key: &str| -> SocketAddr {
        doc[key]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("address in the ready file")
    };
    (Proc(child), field("http"), field("tftp"))
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// Stores a node for each MAC, cycling through `states`.
fn populate(dir: &Path, macs: &[Mac], states: &[NodeState]) {
    let store = Store::open(&dir.join("data")).expect("store");
    let now = time::OffsetDateTime::now_utc();
    let nodes: Vec<Node> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| Node::new_local(*mac, states[i % states.len()], now))
        .collect();
    store.put_nodes(&nodes).expect("populate");
}

fn agent_mode(http: SocketAddr) -> String {
    let status = agent_status(http).unwrap_or_default();
    status["mode"].as_str().unwrap_or_default().to_string()
}

fn wait_for_mode(http: SocketAddr, mode: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if agent_mode(http) == mode {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The agent's `/api/v1/status`, if it answers.
fn agent_status(http: SocketAddr) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{http}/api/v1/status"),
        ])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn print_rates(title: &str, unit: &str, rows: &[(&str, f64)]) {
    println!("{title}");
    println!("{:<44} {:>12}", "", unit);
    for (name, rate) in rows {
        println!("{name:<44} {rate:>12.0}");
    }
}

/// `count` MACs of one benchmark's own family (`52:54:<family>:…`), so the
/// parts never share nodes.
fn fleet(family: u8, count: u32) -> Vec<Mac> {
    (0..count)
        .map(|i| Mac::new([0x52, 0x54, family, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
        .collect()
}

/// The admin token an agent started in `case` created.
fn admin_token_in(case: &Path) -> String {
    std::fs::read_to_string(case.join("data").join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
