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
//! Everything runs on 127.0.0.1; clients and servers share the machine's
//! cores, as they would not in production, so ratios matter more than
//! absolute figures.

// A benchmark harness, like a test: it stops on what it cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;
#[path = "../tests/common/controller.rs"]
#[allow(dead_code)]
mod controller;
#[path = "../tests/common/pureboot.rs"]
#[allow(dead_code)]
mod pureboot;

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

const FILE_SIZE: usize = 64 * 1024 * 1024;
const RUNS: usize = 7;
const NODES: u32 = 10_000;
const CLIENTS: usize = 64;
const HTTP_WARMUP: Duration = Duration::from_secs(2);
const HTTP_MEASURE: Duration = Duration::from_secs(10);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
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
}

/// Issue 9's figures: boots while 600 idle connections are open (file
/// limit 512), a 100 MB file proxied from a controller at 2 MB/s, and the
/// agent's peak memory when 40 new MACs' lookups answer 100 MB each.
fn hardening_benchmark(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let macs: Vec<Mac> = fleet(0x02, NODES);

    let case = dir.join("idle-connections");
    std::fs::create_dir_all(&case).expect("mkdir");
    populate(&case, &macs, &[NodeState::Active, NodeState::Installed]);
    let (_agent, http, _) = with_file_limit(512, || start_agent(&case, &case.join("boot-assets")));
    println!(
        "/api/v1/boot, agent file limit 512, {CLIENTS} keep-alive clients, {}s each",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    let quiet = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
    print_row("no other connections", &quiet);
    let idle: Vec<std::net::TcpStream> = (0..600)
        .filter_map(|_| std::net::TcpStream::connect(http).ok())
        .collect();
    let crowded = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
    print_row(&format!("{} idle connections opened", idle.len()), &crowded);
    println!(
        "with the idle connections: {:.2}x the requests/s, {:.2}x the p99\n",
        crowded.rate / quiet.rate,
        crowded.p99 / quiet.p99
    );
    drop(idle);

    let controller = controller::FakeController::start();
    const FILE: usize = 100 * 1000 * 1000;
    const RATE: u64 = 2 * 1000 * 1000;
    controller.add_file("big/initrd.img", &vec![0x5au8; FILE]);
    controller.set_file_rate(RATE);
    let case = dir.join("slow-file");
    std::fs::create_dir_all(&case).expect("mkdir");
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
    ];
    let (_agent, http, _) = start_agent_with(&case, &case.join("boot-assets"), &env);
    wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("http://{http}/assets/big/initrd.img"))
        .output()
        .expect("curl");
    let took = started.elapsed();
    println!(
        "100 MB proxied from a controller sending 2 MB/s: curl says {:?} (status, bytes) after {:.1} s ({:.2} MB/s; the controller's pace alone takes {:.1} s)\n",
        String::from_utf8_lossy(&out.stdout),
        took.as_secs_f64(),
        FILE as f64 / took.as_secs_f64() / 1e6,
        FILE as f64 / RATE as f64
    );

    let case = dir.join("huge-answers");
    std::fs::create_dir_all(&case).expect("mkdir");
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_REQUEST_TIMEOUT", "20s".to_string()),
    ];
    controller.set_mode(controller::Mode::Healthy);
    let (agent, http, _) = start_agent_with(&case, &case.join("boot-assets"), &env);
    wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");
    let before = peak_rss(agent.0.id());
    controller.set_mode(controller::Mode::Huge(100 * 1024 * 1024));
    let boots: Vec<_> = (0..40)
        .map(|n| {
            let url = format!("http://{http}/api/v1/boot?mac=52:54:00:88:00:{n:02x}&arch=x86_64");
            std::thread::spawn(move || {
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", &url])
                    .status()
            })
        })
        .collect();
    for boot in boots {
        let _ = boot.join();
    }
    // The lookups go on in the background after the boots were answered.
    let settle = Instant::now();
    let mut last = 0;
    while settle.elapsed() < Duration::from_secs(20) {
        let calls = controller.calls_to("GET", "/api/v1/nodes").len();
        if calls == last && calls > 0 {
            break;
        }
        last = calls;
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "peak RSS: {} MiB at start, {} MiB after 40 new MACs whose lookups ({} of them) answered 100 MB each\n",
        before >> 20,
        peak_rss(agent.0.id()) >> 20,
        controller.calls_to("GET", "/api/v1/nodes").len()
    );
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
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(env!("CARGO_BIN_EXE_siteboot"))
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
        // Per-transfer and per-request log lines would measure the logger;
        // errors still show.
        .env("SITEBOOT_LOG", "error")
        .stderr(Stdio::inherit())
        .stdout(Stdio::null())
        .spawn()
        .expect("start siteboot");
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

/// One transfer; returns MB/s.
fn transfer_rate(make: &mut dyn FnMut(&Path) -> Command, out: &Path) -> f64 {
    let _ = std::fs::remove_file(out);
    let started = Instant::now();
    let status = make(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("client");
    let secs = started.elapsed().as_secs_f64();
    let len = std::fs::metadata(out)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    assert!(
        status.success() && len == FILE_SIZE,
        "transfer failed ({len} bytes)"
    );
    FILE_SIZE as f64 / 1e6 / secs
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// Builds the client command line for one transfer into the given file.
type ClientCommand = Box<dyn FnMut(&Path) -> Command>;

/// Runs each client command in turn, `RUNS` rounds (so that drift in the
/// machine's speed hits all servers alike); returns the medians.
fn measure_all(commands: &mut [ClientCommand], out: &Path) -> Vec<f64> {
    let mut rates = vec![Vec::new(); commands.len()];
    for _ in 0..RUNS {
        for (i, make) in commands.iter_mut().enumerate() {
            rates[i].push(transfer_rate(make.as_mut(), out));
        }
    }
    rates.into_iter().map(median).collect()
}

fn measure(mut make: impl FnMut(&Path) -> Command + 'static, out: &Path) -> f64 {
    median((0..RUNS).map(|_| transfer_rate(&mut make, out)).collect())
}

fn curl_get(port: u16, blksize: u32) -> impl FnMut(&Path) -> Command + 'static {
    move |out: &Path| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--tftp-blksize", &blksize.to_string(), "-o"])
            .arg(out)
            .arg(format!("tftp://127.0.0.1:{port}/big.bin"));
        c
    }
}

fn atftp_get(port: u16, blksize: u32, window: u32) -> impl FnMut(&Path) -> Command + 'static {
    move |out: &Path| {
        let mut c = Command::new("atftp");
        c.args(["--option", &format!("blksize {blksize}")]);
        if window > 1 {
            c.args(["--option", &format!("windowsize {window}")]);
        }
        c.args(["--get", "-r", "big.bin", "-l"])
            .arg(out)
            .args(["127.0.0.1", &port.to_string()]);
        c
    }
}

fn async_tftp_reference(root: &Path) -> (Proc, u16) {
    // Built next to this benchmark (target/release/examples).
    let exe = std::env::current_exe().expect("bench path");
    let release = exe.parent().and_then(Path::parent).expect("target dir");
    let binary = release.join("examples").join("async_tftp_reference");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "--example", "async_tftp_reference"])
            .status()
            .expect("cargo build");
        assert!(built.success(), "cannot build the async-tftp reference");
    }
    let port = free_udp_port();
    let mut child = Command::new(&binary)
        .arg(root)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start async-tftp reference");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        matches!(lines.next(), Some(Ok(line)) if line.starts_with("listening")),
        "async-tftp reference did not start"
    );
    (Proc(child), port)
}

fn tftp_benchmark(dir: &Path, root: &Path) {
    let (_agent, _, tftp) = start_agent(dir, root);
    let ours = tftp.port();
    let hpa = free_udp_port();
    let _hpa = Proc(
        Command::new("in.tftpd")
            .args(["-L", "-s"])
            .arg(root)
            .args(["-a", &format!("127.0.0.1:{hpa}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start in.tftpd"),
    );
    let (_reference, crate_port) = async_tftp_reference(root);
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.join("out.bin");
    println!("TFTP, 64 MiB file, 127.0.0.1, median of {RUNS} interleaved runs (MB/s)");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>14}",
        "client / options", "tftpd-hpa", "async-tftp", "siteboot", "siteboot/hpa"
    );
    let row = |name: String, r: &[f64]| {
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>10.1} {:>13.2}x",
            r[0],
            r[1],
            r[2],
            r[2] / r[0]
        );
    };
    for blksize in [512u32, 1468, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(curl_get(hpa, blksize)),
            Box::new(curl_get(crate_port, blksize)),
            Box::new(curl_get(ours, blksize)),
        ];
        row(
            format!("curl blksize {blksize}"),
            &measure_all(&mut commands, &out),
        );
    }
    for blksize in [1468u32, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(atftp_get(hpa, blksize, 1)),
            Box::new(atftp_get(crate_port, blksize, 1)),
            Box::new(atftp_get(ours, blksize, 1)),
        ];
        let lockstep = measure_all(&mut commands, &out);
        row(format!("atftp blksize {blksize}"), &lockstep);
        for window in [4u32, 16] {
            let rate = measure(atftp_get(ours, blksize, window), &out);
            println!(
                "{:<34} {:>10} {:>10} {:>10.1} {:>13.2}x",
                format!("atftp blksize {blksize} windowsize {window}"),
                "n/a",
                "n/a",
                rate,
                rate / lockstep[0]
            );
        }
    }
    println!(
        "(windowsize: RFC 7440; neither reference implements it, so those ratios are to tftpd-hpa's lockstep figure)"
    );
    println!("\nUEFI firmware sequence: RRQ tsize=0 -> OACK -> ERROR 8 -> RRQ from the same port");
    for (name, port) in [
        ("tftpd-hpa", hpa),
        ("async-tftp", crate_port),
        ("siteboot", ours),
    ] {
        println!("{name:<12} {}", firmware_probe(port));
    }
    println!();
}

/// Plays the firmware's size probe and the real request from one port, as
/// OVMF does; reports what the server did.
fn firmware_probe(port: u16) -> String {
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let rrq =
        |options: &[(&str, &str)]| siteboot::serve::tftp::packet::read_request("big.bin", options);
    let mut buf = vec![0u8; 70_000];
    let started = Instant::now();
    socket
        .send_to(&rrq(&[("tsize", "0"), ("blksize", "1468")]), server)
        .expect("send");
    let Ok((_, probe_tid)) = socket.recv_from(&mut buf) else {
        return "no answer to the probe".into();
    };
    socket
        .send_to(b"\x00\x05\x00\x08probe done\x00", probe_tid)
        .expect("send");
    socket
        .send_to(&rrq(&[("blksize", "1468")]), server)
        .expect("send");
    let mut stray = 0;
    let tid = loop {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) if from == probe_tid => stray += 1,
            Ok((n, from)) if n >= 2 && buf[1] == 6 => break from,
            Ok(_) => return "unexpected answer to the re-request".into(),
            Err(_) => {
                return format!(
                    "re-request not answered within 2 s ({stray} stray packets from the probe session)"
                );
            }
        }
    };
    socket.send_to(&[0, 4, 0, 0], tid).expect("ack");
    let mut received = 0usize;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return format!("transfer stalled after {received} bytes");
        };
        if from == probe_tid {
            stray += 1;
            continue;
        }
        received += n - 4;
        socket.send_to(&[0, 4, buf[2], buf[3]], tid).expect("ack");
        if n - 4 < 1468 {
            break;
        }
    }
    let elapsed = started.elapsed();
    socket
        .set_read_timeout(Some(Duration::from_secs(4)))
        .expect("timeout");
    while let Ok((_, from)) = socket.recv_from(&mut buf) {
        if from == probe_tid {
            stray += 1;
        }
    }
    format!(
        "completed in {:.0} ms; {stray} packets from the aborted probe session (within 4 s after)",
        elapsed.as_secs_f64() * 1e3
    )
}

fn http_benchmark(dir: &Path) {
    let dir = dir.join("http");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x00, NODES);
    populate(
        &dir,
        &macs,
        &[
            NodeState::Active,
            NodeState::Installed,
            NodeState::Discovered,
            NodeState::InstallFailed,
            NodeState::Retired,
        ],
    );
    let (_agent, http, _) = start_agent(&dir, &dir.join("boot-assets"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "HTTP, {NODES} nodes in the store, {CLIENTS} concurrent keep-alive clients, {}s each",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "endpoint", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    let boot = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
    let health = runtime.block_on(load(http, macs, Endpoint::Health));
    print_row("/health (the HTTP stack's floor)", &health);
    print_row("/api/v1/boot (target p99 < 2 ms)", &boot);
    println!(
        "/api/v1/boot vs /health: {:.2}x the requests/s, {:.2}x the p99\n",
        boot.rate / health.rate,
        boot.p99 / health.p99
    );
}

struct LoadResult {
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn print_row(name: &str, r: &LoadResult) {
    println!(
        "{name:<40} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
        r.rate, r.p50, r.p99, r.max
    );
}

#[derive(Clone, Copy)]
enum Endpoint {
    Boot,
    Health,
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

/// DESIGN §1: a boot never waits on the controller longer than the lookup
/// deadline. Latency with a healthy, a slow (2 s) and a dead controller,
/// then how long the agent takes to notice a dead controller.
fn central_benchmark(dir: &Path) {
    let macs: Vec<Mac> = fleet(0x01, NODES);
    let controller = controller::FakeController::start();
    for mac in &macs {
        controller.set_node(&mac.to_string(), "active", None);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "/api/v1/boot with a controller (deadline 300 ms), {NODES} nodes, {CLIENTS} concurrent clients, {}s each",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "controller", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    // What happens to the controller during the measured run: nothing,
    // or, 3 s in, its socket closes (it dies under load) or it stops
    // answering while keeping connections open (a black hole).
    #[derive(Clone, Copy, PartialEq)]
    enum Midway {
        Nothing,
        Dies,
        BlackHoles,
    }
    let cases: [(&str, Option<controller::Mode>, Midway); 5] = [
        (
            "(a) healthy (target p99 < 5 ms)",
            Some(controller::Mode::Healthy),
            Midway::Nothing,
        ),
        (
            "(b) answers after 2 s (p99 < 305 ms)",
            Some(controller::Mode::Slow(Duration::from_secs(2))),
            Midway::Nothing,
        ),
        ("(c) down from the start", None, Midway::Nothing),
        (
            "(d) dies 3 s into the run",
            Some(controller::Mode::Healthy),
            Midway::Dies,
        ),
        (
            "(e) black-holes 3 s into the run",
            Some(controller::Mode::Healthy),
            Midway::BlackHoles,
        ),
    ];
    for (name, mode, midway) in cases {
        let case_dir = dir.join(format!("central-{}", &name[1..2]));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        populate(&case_dir, &macs, &[NodeState::Active]);
        match mode {
            Some(mode) => {
                controller.up_if_down();
                controller.set_mode(mode);
            }
            None => controller.down(),
        }
        let env = [
            ("SITEBOOT_CENTRAL_URL", controller.url()),
            (
                "SITEBOOT_CENTRAL_TOKEN_FILE",
                controller.token_file().display().to_string(),
            ),
            ("SITEBOOT_SITE_ID", "bench".to_string()),
        ];
        let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
        if mode == Some(controller::Mode::Healthy) {
            wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");
        }
        let result = std::thread::scope(|scope| {
            if midway != Midway::Nothing {
                let controller = &controller;
                scope.spawn(move || {
                    std::thread::sleep(HTTP_WARMUP + Duration::from_secs(3));
                    match midway {
                        Midway::Dies => controller.down(),
                        _ => controller.set_mode(controller::Mode::Slow(Duration::from_secs(3600))),
                    }
                });
            }
            runtime.block_on(load(http, macs.clone(), Endpoint::Boot))
        });
        print_row(name, &result);
    }
    controller.up_if_down();
    controller.set_mode(controller::Mode::Healthy);
    println!(
        "\nTime from the controller's socket closing to mode=offline (no boot traffic: probes only)"
    );
    for (name, interval) in [
        ("defaults (check_interval 30s, threshold 3)", None),
        ("check_interval 1s", Some("1s")),
    ] {
        let case_dir = dir.join(format!("offline-{}", interval.unwrap_or("default")));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        let mut env = vec![
            ("SITEBOOT_CENTRAL_URL", controller.url()),
            (
                "SITEBOOT_CENTRAL_TOKEN_FILE",
                controller.token_file().display().to_string(),
            ),
        ];
        if let Some(interval) = interval {
            env.push(("SITEBOOT_CENTRAL_CHECK_INTERVAL", interval.to_string()));
        }
        controller.up_if_down();
        let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
        wait_for_mode(http, "online", Duration::from_secs(60)).expect("agent online");
        controller.down();
        match wait_for_mode(http, "offline", Duration::from_secs(180)) {
            Some(took) => println!("{name:<44} {:>8.1} s", took.as_secs_f64()),
            None => println!("{name:<44} not offline after 180 s"),
        }
    }
    println!();
}

/// Acknowledged (durably committed) enqueues per second, one writer and
/// 16 concurrent ones through the group-commit writer, next to the raw
/// rate of single-item redb commits on the same disk.
fn queue_benchmark(dir: &Path) {
    use siteboot::outbox::queue::{Kind, Limits, NewItem, Origin, Queue, writer::QueueWriter};
    const ITEMS: usize = 2000;
    let item = |n: usize| NewItem {
        kind: Kind::StateUpdate,
        origin: Origin::Operator,
        node: format!("52:54:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        payload: serde_json::json!({"state": "active", "n": n}),
        key: None,
        local_state: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let raw_dir = dir.join("queue-raw");
    let raw = {
        let store = Store::open(&raw_dir).expect("store");
        let started = Instant::now();
        for n in 0..ITEMS {
            let node = Node::new_local(
                Mac::new([0x52, 0x54, 0, 9, (n >> 8) as u8, n as u8]),
                NodeState::Active,
                time::OffsetDateTime::now_utc(),
            );
            store.put_node(&node).expect("commit");
        }
        ITEMS as f64 / started.elapsed().as_secs_f64()
    };
    let mut rates = Vec::new();
    for (case, writers) in [("single", 1usize), ("concurrent", 16)] {
        let queue = Queue::open(
            Store::open(&dir.join(format!("queue-{case}"))).expect("store"),
            Limits::unshared(1_000_000),
        )
        .expect("queue");
        let rate = runtime.block_on(async {
            let writer = QueueWriter::start(queue);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let writer = writer.clone();
                tasks.push(tokio::spawn(async move {
                    for n in (w..ITEMS).step_by(writers) {
                        writer.enqueue(item(n)).await.expect("enqueue");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("writer task");
            }
            ITEMS as f64 / started.elapsed().as_secs_f64()
        });
        rates.push(rate);
    }
    print_rates(
        &format!("Durable queue, {ITEMS} acknowledged enqueues (each committed before its answer)"),
        "items/s",
        &[
            ("raw redb, one item per durable commit", raw),
            ("queue, 1 client", rates[0]),
            ("queue, 16 concurrent clients (group commit)", rates[1]),
        ],
    );
    println!(
        "concurrent / single: {:.1}x (target >= 5x)\n",
        rates[1] / rates[0]
    );
    api_enqueue_benchmark(dir, &runtime, raw);
    replay_benchmark(dir, raw);
}

/// Acknowledged offline writes through the agent's API (`PATCH
/// /api/v1/nodes/{mac}/state` answered 202): each is the queue commit plus
/// the cache update. One client, then 16 concurrent keep-alive clients.
fn api_enqueue_benchmark(dir: &Path, runtime: &tokio::runtime::Runtime, raw: f64) {
    const WRITES: usize = 2000;
    let case_dir = dir.join("queue-api");
    std::fs::create_dir_all(&case_dir).expect("mkdir");
    let macs: Vec<Mac> = (0..256u32)
        .map(|i| Mac::new([0x52, 0x54, 0x02, 0, (i >> 8) as u8, i as u8]))
        .collect();
    populate(&case_dir, &macs, &[NodeState::Active]);
    // A controller URL nobody listens on: the agent is offline throughout.
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let env = [
        ("SITEBOOT_CENTRAL_URL", dead),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
    ];
    let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
    let token = admin_token_in(&case_dir);
    let mut rates = Vec::new();
    for clients in [1usize, 16] {
        let macs = macs.clone();
        let token = token.clone();
        let rate = runtime.block_on(async move {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let macs = macs.clone();
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    let mut buf = vec![0u8; 16 * 1024];
                    for n in (c..WRITES).step_by(clients) {
                        let body = format!("{{\"state\":\"installed\",\"comment\":\"b{n}\"}}");
                        let request = format!(
                            "PATCH /api/v1/nodes/{}/state HTTP/1.1\r\nHost: {http}\r\n\
                             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            macs[n % macs.len()],
                            body.len()
                        );
                        stream.write_all(request.as_bytes()).await.expect("write");
                        read_status(&mut stream, &mut buf, "http/1.1 202").await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("client");
            }
            WRITES as f64 / started.elapsed().as_secs_f64()
        });
        rates.push(rate);
    }
    print_rates(
        &format!("Offline state changes through the API, {WRITES} acknowledged 202s"),
        "writes/s",
        &[
            ("raw redb, one item per durable commit", raw),
            ("PATCH …/state, 1 client", rates[0]),
            ("PATCH …/state, 16 concurrent clients", rates[1]),
        ],
    );
    println!("concurrent / single: {:.1}x\n", rates[1] / rates[0]);
}

/// 10,000 queued items (2,000 nodes × one state change and four boot
/// events) replayed to the fake controller once it comes back: time from
/// the controller's socket opening to an empty queue.
fn replay_benchmark(dir: &Path, raw: f64) {
    use siteboot::outbox::queue::{Kind, Limits, NewItem, Origin, Queue};
    const NODES_WITH_ITEMS: usize = 2000;
    const PER_NODE: usize = 5;
    let case_dir = dir.join("queue-replay");
    std::fs::create_dir_all(&case_dir).expect("mkdir");
    let macs: Vec<Mac> = (0..NODES_WITH_ITEMS as u32)
        .map(|i| Mac::new([0x52, 0x54, 0x03, 0, (i >> 8) as u8, i as u8]))
        .collect();
    let controller = controller::FakeController::start();
    for mac in &macs {
        controller.set_node(&mac.to_string(), "active", None);
    }
    {
        let store = Store::open(&case_dir.join("data")).expect("store");
        let queue = Queue::open(store, Limits::unshared(1_000_000)).expect("queue");
        let mut items = Vec::new();
        for round in 0..PER_NODE {
            for mac in &macs {
                let node = mac.to_string();
                items.push(if round == 0 {
                    NewItem {
                        kind: Kind::StateUpdate,
                        origin: Origin::Operator,
                        payload: serde_json::json!({"op": "set_state", "node_id": format!("node-{node}"),
                            "change": {"state": "installed", "comment": "replay bench"}}),
                        node,
                        key: None,
                        local_state: None,
                    }
                } else {
                    NewItem {
                        kind: Kind::Event,
                        origin: Origin::Operator,
                        payload: serde_json::json!({"op": "report", "report": {
                            "mac_address": node, "event": "boot_started", "message": format!("boot {round}")}}),
                        node,
                        key: None,
                        local_state: None,
                    }
                });
            }
        }
        let results = queue
            .enqueue_many(items, time::OffsetDateTime::now_utc())
            .expect("enqueue");
        assert!(results.iter().all(Result::is_ok));
    }
    let total = NODES_WITH_ITEMS * PER_NODE;
    controller.down();
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "100ms".to_string()),
        ("SITEBOOT_CENTRAL_SYNC_INTERVAL", "1h".to_string()),
    ];
    let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
    let pending = || -> Option<u64> {
        let status = agent_status(http)?;
        Some(status["queue"]["pending"].as_u64()? + status["queue"]["in_flight"].as_u64()?)
    };
    assert_eq!(
        pending(),
        Some(total as u64),
        "items queued before the controller appears"
    );
    controller.up();
    let started = Instant::now();
    while pending() != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "replay stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let delivered = controller.applied().len();
    println!("Replay of {total} queued items (batch_size 50) to a local fake controller");
    println!("{:<44} {:>12}", "", "items/s");
    println!(
        "{:<44} {:>12.0}",
        "raw redb, one item per durable commit", raw
    );
    println!(
        "{:<44} {:>12.0}   ({:.2} s for {total}, target < 10 s; {delivered} applied at the controller)\n",
        "replay, controller up → queue empty",
        total as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
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

/// Starts Debian's nginx (nginx-light) in `case`, serving `root` on a free
/// port of 127.0.0.1 with `http_directives` added to its `http` block.
fn start_nginx(case: &Path, root: &Path, http_directives: &str) -> (Proc, u16) {
    let port = free_tcp_port();
    let conf = case.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {pid};\nerror_log {err} error;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; {http_directives}\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = case.join("nginx.pid").display(),
            err = case.join("nginx-error.log").display(),
            root = root.display(),
        ),
    )
    .expect("nginx.conf");
    let nginx = Proc(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(case)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (Debian nginx-light)"),
    );
    std::thread::sleep(Duration::from_millis(300));
    (nginx, port)
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

/// Reads one response with a Content-Length body, checking its status line.
async fn read_status(stream: &mut tokio::net::TcpStream, buf: &mut [u8], expected: &str) {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "server closed the connection");
        filled += n;
        let text = &buf[..filled];
        if let Some(head_end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&text[..head_end]).to_ascii_lowercase();
            assert!(head.starts_with(expected), "unexpected response: {head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            while filled < head_end + 4 + len {
                let n = stream.read(&mut buf[filled..]).await.expect("read body");
                assert!(n > 0, "closed mid-body");
                filled += n;
            }
            return;
        }
    }
}

async fn load(http: SocketAddr, macs: Vec<Mac>, endpoint: Endpoint) -> LoadResult {
    let macs = std::sync::Arc::new(macs);
    let start = Instant::now();
    let measure_from = start + HTTP_WARMUP;
    let end = measure_from + HTTP_MEASURE;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let macs = macs.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut latencies = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            let mut i = client * 7919;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let mac = macs[i % macs.len()];
                i += CLIENTS;
                let request = match endpoint {
                    Endpoint::Boot => format!(
                        "GET /api/v1/boot?mac={mac}&arch=x86_64&platform=efi HTTP/1.1\r\nHost: {http}\r\n\r\n"
                    ),
                    Endpoint::Health => format!("GET /health HTTP/1.1\r\nHost: {http}\r\n\r\n"),
                };
                stream.write_all(request.as_bytes()).await.expect("write");
                read_response(&mut stream, &mut buf).await;
                if now >= measure_from {
                    latencies.push(now.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| ms(all[((all.len() as f64 * p) as usize).min(all.len() - 1)]);
    LoadResult {
        rate: all.len() as f64 / HTTP_MEASURE.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: all.last().copied().map(ms).unwrap_or_default(),
    }
}

/// Reads one HTTP/1.1 200 response with a Content-Length body; panics on anything else.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    read_status(stream, buf, "http/1.1 200").await;
}

/// Issue 11's figures: replay of 10,000 queued state changes (one per
/// node) to a §6 controller that checks versions, with no conflicts, then
/// with every tenth node changed at the controller meanwhile (a 409:
/// recorded and parked under `manual`; recorded and settled under `auto`,
/// where the operator's change yields); and `GET /api/v1/conflicts` at
/// 100,000 records.
fn conflicts_benchmark(dir: &Path) {
    const ITEMS: usize = 10_000;
    let runs = [
        ("no conflicts", 0, "manual"),
        ("10% conflicts, manual (recorded, parked)", 10, "manual"),
        ("10% conflicts, auto (recorded, settled)", 10, "auto"),
    ];
    // Interleaved repeats, the median of each: one run's figure moves by
    // a fifth from run to run on this machine.
    const REPEATS: usize = 3;
    let mut times = vec![Vec::new(); runs.len()];
    for repeat in 0..REPEATS {
        for (n, (_, every, policy)) in runs.iter().enumerate() {
            let case = dir.join(format!("conflicts-replay-{n}-{repeat}"));
            times[n].push(replay_with_conflicts(&case, ITEMS, *every, policy));
        }
    }
    let results: Vec<(&str, Duration)> = runs
        .iter()
        .zip(times)
        .map(|((name, _, _), mut took)| {
            took.sort();
            (*name, took[REPEATS / 2])
        })
        .collect();
    println!(
        "Replay of {ITEMS} queued state changes (batch_size 50) to a local §6 fake controller checking versions, median of {REPEATS} interleaved runs"
    );
    println!(
        "{:<44} {:>10} {:>12} {:>14}",
        "", "s", "items/s", "per item, ×"
    );
    let base = results[0].1.as_secs_f64() / ITEMS as f64;
    for (name, took) in &results {
        let per_item = took.as_secs_f64() / ITEMS as f64;
        println!(
            "{name:<44} {:>10.2} {:>12.0} {:>14.2}",
            took.as_secs_f64(),
            ITEMS as f64 / took.as_secs_f64(),
            per_item / base
        );
    }
    println!("(target: conflicts cost no more than 2× per item)\n");

    for (open, label) in [
        (1_000, "100,000 records, 1,000 open"),
        (100_000, "100,000 records, all open"),
    ] {
        conflicts_listing(
            &dir.join(format!("conflicts-list-{open}")),
            100_000,
            open,
            label,
        );
    }
}

/// One replay run: `items` nodes with one queued change each; every
/// `every`th node (0: none) changed at the controller meanwhile. Time from
/// the controller's socket opening to: nothing pending, and the expected
/// conflicts open (manual) or settled (auto).
fn replay_with_conflicts(dir: &Path, items: usize, every: usize, policy: &str) -> Duration {
    use siteboot::outbox::queue::{Kind, Limits, NewItem, Origin, Queue};
    std::fs::create_dir_all(dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x04, items as u32);
    let controller = controller::FakeController::start();
    controller.check_versions();
    for mac in &macs {
        controller.set_node(&mac.to_string(), "active", None);
    }
    {
        let store = Store::open(&dir.join("data")).expect("store");
        let queue = Queue::open(store, Limits::unshared(1_000_000)).expect("queue");
        let items: Vec<NewItem> = macs
            .iter()
            .map(|mac| {
                let node = mac.to_string();
                NewItem {
                    kind: Kind::StateUpdate,
                    origin: Origin::Operator,
                    payload: serde_json::json!({"op": "set_state", "node_id": format!("node-{node}"),
                        "change": {"state": "installed", "comment": "conflict bench", "base_version": 1}}),
                    node,
                    key: None,
                    local_state: None,
                }
            })
            .collect();
        let results = queue
            .enqueue_many(items, time::OffsetDateTime::now_utc())
            .expect("enqueue");
        assert!(results.iter().all(Result::is_ok));
    }
    let mut conflicting = 0;
    if every > 0 {
        for mac in macs.iter().step_by(every) {
            controller.set_node(&mac.to_string(), "retired", None);
            conflicting += 1;
        }
    }
    controller.down();
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "100ms".to_string()),
        ("SITEBOOT_CENTRAL_SYNC_INTERVAL", "1h".to_string()),
        ("SITEBOOT_CONFLICTS_STATE_MISMATCH", policy.to_string()),
    ];
    let (_agent, http, _) = start_agent_with(dir, &dir.join("boot-assets"), &env);
    let status = || agent_status(http);
    let expected_open = if policy == "manual" { conflicting } else { 0 };
    controller.up();
    let started = Instant::now();
    loop {
        let done = status().is_some_and(|s| {
            s["queue"]["pending"] == 0
                && s["queue"]["in_flight"] == 0
                && s["conflicts_pending"] == expected_open
        });
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "replay stalled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let applied = controller
        .applied()
        .iter()
        .filter(|w| w.op == "set_state")
        .count();
    assert_eq!(
        applied,
        items - conflicting,
        "every change without a conflict applied, no other"
    );
    took
}

/// `GET /api/v1/conflicts` latency with `records` conflict records in the
/// store, `open` of them open: 300 requests on one keep-alive connection.
fn conflicts_listing(dir: &Path, records: u32, open: u32, label: &str) {
    use siteboot::outbox::conflicts::{self, ChangeOrigin, Found, Kind, LocalSide};
    std::fs::create_dir_all(dir).expect("mkdir");
    {
        let store = Store::open(&dir.join("data")).expect("store");
        let now = time::OffsetDateTime::now_utc();
        for chunk in 0..records / 10_000 {
            let txn = store.begin_write().expect("txn");
            for i in chunk * 10_000..(chunk + 1) * 10_000 {
                let mac = Mac::new([0x52, 0x54, 0x05, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                let found = Found {
                    kind: Kind::StateMismatch,
                    mac: mac.to_string(),
                    node_id: format!("node-{mac}"),
                    local: LocalSide {
                        state: Some(NodeState::Reprovision),
                        origin: ChangeOrigin::Operator,
                        changed_at: now,
                        queue_id: u64::from(i) + 1,
                    },
                    central: None,
                    error: "409".into(),
                };
                let record = conflicts::open(&txn, found, now)
                    .expect("open")
                    .expect("one per MAC");
                if i >= open {
                    conflicts::close(&txn, record.id, "keep_central", "policy", None, now)
                        .expect("close");
                }
            }
            txn.commit().expect("commit");
        }
    }
    let (_agent, http, _) = start_agent_with(dir, &dir.join("boot-assets"), &[]);
    let token = admin_token_in(dir);
    println!("GET /api/v1/conflicts, {label} (300 requests, one keep-alive connection)");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    for path in [
        "/api/v1/conflicts?status=open&limit=100",
        "/api/v1/conflicts?status=resolved&limit=100",
        "/api/v1/conflicts?limit=100",
    ] {
        let mut times = timed_gets(http, path, &token, 300);
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>10.2}",
            path.trim_start_matches("/api/v1/conflicts"),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 99 / 100]),
            ms(times[times.len() - 1])
        );
    }
    println!("(target: status=open&limit=100 under 10 ms)\n");
}

/// `n` GETs of `path` on one keep-alive connection, each timed from the
/// request's write to its whole answer read (checked to be a 200).
fn timed_gets(http: SocketAddr, path: &str, token: &str, n: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut times = Vec::with_capacity(n);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..n {
        let started = Instant::now();
        stream.write_all(request.as_bytes()).expect("write");
        let mut filled = 0;
        let (head_end, length) = loop {
            let got = stream.read(&mut buf[filled..]).expect("read");
            assert!(got > 0, "the agent closed the connection");
            filled += got;
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (end + 4, length);
            }
        };
        while filled < head_end + length {
            let got = stream.read(&mut buf[filled..]).expect("read");
            assert!(got > 0, "the agent closed the connection");
            filled += got;
        }
        times.push(started.elapsed());
    }
    times
}

/// Issue 12's figures. Cold: 200 concurrent clients of one uncached
/// 64 MiB file through the cache (one controller download) vs the same
/// 200 straight from the controller (what a proxy without a cache
/// forwards: one download each). Warm: the cached file over HTTP at 1 and
/// 64 clients vs nginx, and over TFTP vs tftpd-hpa, both serving the very
/// file the cache keeps.
fn cache_benchmark(dir: &Path, data: &[u8]) {
    const CLIENTS: usize = 200;
    let case = dir.join("cache");
    std::fs::create_dir_all(&case).expect("mkdir");
    let controller = controller::FakeController::start();
    controller.add_file("images/big.img", data);
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "100ms".to_string()),
        ("SITEBOOT_CENTRAL_SYNC_INTERVAL", "1h".to_string()),
    ];
    let (_agent, http, tftp) = start_agent_with(&case, &case.join("boot-assets"), &env);
    wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fetch_all = |url: String| -> Duration {
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let started = Instant::now();
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move {
                        let mut response = client.get(&url).send().await.expect("request");
                        assert_eq!(response.status(), 200);
                        let mut got = 0usize;
                        while let Some(chunk) = response.chunk().await.expect("body") {
                            got += chunk.len();
                        }
                        got
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("client"), FILE_SIZE, "short answer");
            }
            started.elapsed()
        })
    };
    let downloads = || {
        controller
            .calls_to("GET", "/api/v1/files/images/big.img")
            .len()
    };
    let through = fetch_all(format!("http://{http}/assets/images/big.img"));
    let through_downloads = downloads();
    let direct = fetch_all(format!("{}/api/v1/files/images/big.img", controller.url()));
    let direct_downloads = downloads() - through_downloads;
    let mb = |n: usize| (n * FILE_SIZE) as f64 / 1e6;
    println!("Cold: {CLIENTS} concurrent clients of one uncached 64 MiB file (127.0.0.1)");
    println!(
        "{:<44} {:>10} {:>14} {:>12}",
        "", "wall s", "controller MB", "clients MB/s"
    );
    for (name, took, n) in [
        ("through the content cache", through, through_downloads),
        (
            "straight from the controller (no cache)",
            direct,
            direct_downloads,
        ),
    ] {
        println!(
            "{name:<44} {:>10.2} {:>14.0} {:>12.0}",
            took.as_secs_f64(),
            mb(n),
            mb(CLIENTS) / took.as_secs_f64()
        );
    }
    println!(
        "the cache: {:.2}x the wall time, {:.3}x the controller's bytes\n",
        through.as_secs_f64() / direct.as_secs_f64(),
        through_downloads as f64 / direct_downloads.max(1) as f64
    );

    // The very file the cache keeps, for the references.
    let files = case.join("data").join("content").join("files");
    let cached_name = std::fs::read_dir(&files)
        .expect("content files")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("the cached file");
    let (_nginx, nginx_port) = start_nginx(
        &case,
        &files,
        "sendfile on; tcp_nopush on; keepalive_timeout 65; default_type application/octet-stream;",
    );
    let ours_url = format!("http://{http}/assets/images/big.img");
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/{cached_name}");
    let out = case.join("out.bin");
    let curl_to = |url: String| {
        move |out: &Path| {
            let mut c = Command::new("curl");
            c.args(["-sS", "-o"]).arg(out).arg(&url);
            c
        }
    };
    let mut single: Vec<ClientCommand> = vec![
        Box::new(curl_to(nginx_url.clone())),
        Box::new(curl_to(ours_url.clone())),
    ];
    let one = measure_all(&mut single, &out);
    // 64 clients at once, each fetching the file once to /dev/null.
    let parallel = |url: &str| -> f64 {
        let started = Instant::now();
        let children: Vec<_> = (0..64)
            .map(|_| {
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{size_download}", url])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("curl");
            let got: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            assert_eq!(got, FILE_SIZE, "short answer");
        }
        (64 * FILE_SIZE) as f64 / 1e6 / started.elapsed().as_secs_f64()
    };
    let mut many = (Vec::new(), Vec::new());
    for _ in 0..3 {
        many.0.push(parallel(&nginx_url));
        many.1.push(parallel(&ours_url));
    }
    let many = (median(many.0), median(many.1));
    println!(
        "Warm HTTP: the cached 64 MiB file, same disk (MB/s; 1 client: median of {RUNS}; 64: median of 3)"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "clients", "nginx", "siteboot", "siteboot/nginx"
    );
    println!(
        "{:<44} {:>10.0} {:>10.0} {:>13.2}x",
        "1",
        one[0],
        one[1],
        one[1] / one[0]
    );
    println!(
        "{:<44} {:>10.0} {:>10.0} {:>13.2}x",
        "64 at once",
        many.0,
        many.1,
        many.1 / many.0
    );
    println!("(target: siteboot >= 0.9x nginx)\n");

    let hpa = free_udp_port();
    let _hpa = Proc(
        Command::new("in.tftpd")
            .args(["-L", "-s"])
            .arg(&files)
            .args(["-a", &format!("127.0.0.1:{hpa}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start in.tftpd"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let atftp = |port: u16, name: String, blksize: u32, window: u32| {
        move |out: &Path| {
            let mut c = Command::new("atftp");
            c.args(["--option", &format!("blksize {blksize}")]);
            if window > 1 {
                c.args(["--option", &format!("windowsize {window}")]);
            }
            c.args(["--get", "-r", &name, "-l"])
                .arg(out)
                .args(["127.0.0.1", &port.to_string()]);
            c
        }
    };
    println!("Warm TFTP: the cached 64 MiB file, atftp, median of {RUNS} interleaved runs (MB/s)");
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "options", "tftpd-hpa", "siteboot", "siteboot/hpa"
    );
    for blksize in [1468u32, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(atftp(hpa, cached_name.clone(), blksize, 1)),
            Box::new(atftp(tftp.port(), "images/big.img".into(), blksize, 1)),
        ];
        let r = measure_all(&mut commands, &out);
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>13.2}x",
            format!("blksize {blksize}"),
            r[0],
            r[1],
            r[1] / r[0]
        );
        let windowed = measure(
            atftp(tftp.port(), "images/big.img".into(), blksize, 16),
            &out,
        );
        println!(
            "{:<44} {:>10} {:>10.1} {:>13.2}x",
            format!("blksize {blksize} windowsize 16"),
            "n/a",
            windowed,
            windowed / r[0]
        );
    }
    println!(
        "(windowsize: RFC 7440, which tftpd-hpa does not implement: that ratio is to its lockstep figure)\n"
    );
}

/// Issue 13's figures: `/api/v1/boot` at 64 connections (metrics always
/// on) with no client of `/api/v1/events`, then 50, then 200 connected
/// (each receives the `boots` events), interleaved with runs without.
fn events_benchmark(dir: &Path) {
    let dir = dir.join("events");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x06, NODES);
    populate(&dir, &macs, &[NodeState::Active, NodeState::Installed]);
    let (_agent, http, _) = start_agent(&dir, &dir.join("boot-assets"));
    let token = admin_token_in(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The event clients: read and drop what arrives, counting bytes.
    let listeners = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connect = |n: usize| -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (token, received) = (token.clone(), received.clone());
            tasks.push(listeners.spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
                let request = format!(
                    "GET /api/v1/events HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.expect("request");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
        tasks
    };
    println!(
        "/api/v1/boot, {NODES} nodes, {CLIENTS} keep-alive clients, {}s each, with clients of /api/v1/events connected",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "event clients", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut rows: Vec<(String, LoadResult)> = Vec::new();
    for clients in [0usize, 50, 0, 200] {
        let tasks = connect(clients);
        let before = received.load(std::sync::atomic::Ordering::Relaxed);
        let result = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
        let bytes = received.load(std::sync::atomic::Ordering::Relaxed) - before;
        for task in tasks {
            task.abort();
        }
        std::thread::sleep(Duration::from_millis(300));
        let name = format!("{clients} ({} MB of events read)", bytes / 1_000_000);
        print_row(&name, &result);
        rows.push((name, result));
    }
    let base = (rows[0].1.rate + rows[2].1.rate) / 2.0;
    let base_p99 = (rows[0].1.p99 + rows[2].1.p99) / 2.0;
    for (name, result) in [&rows[1], &rows[3]] {
        println!(
            "{name}: {:.2}x the requests/s, {:.2}x the p99 of the runs without",
            result.rate / base,
            result.p99 / base_p99
        );
    }
    println!("(target: 200 event clients cost at most 5% of the requests/s)\n");
}

/// Chromium's timing of the load just done, in milliseconds from the
/// navigation's start: (first contentful paint, DOM content loaded).
fn page_timing(browser: &browser::Browser) -> (f64, f64) {
    browser.wait(
        "the first paint",
        "performance.getEntriesByName('first-contentful-paint').length > 0",
    );
    let t = browser.js("const nav = performance.getEntriesByType('navigation')[0];
         return [performance.getEntriesByName('first-contentful-paint')[0].startTime,
                 nav.domContentLoadedEventEnd];");
    (
        t[0].as_f64().expect("paint time"),
        t[1].as_f64().expect("DOM time"),
    )
}

/// Issue 13: the status page's time to first render from a cold browser
/// (a new Chromium profile per run), served by the agent (10,000 nodes in
/// its store) vs the very same bytes served by nginx; runs interleaved.
/// Then the signed-in view: from the sign-in click until the node table
/// is drawn, with 10,000 nodes vs 100.
fn page_benchmark(dir: &Path) {
    const PAGE_RUNS: usize = 7;
    let mut agents = Vec::new();
    for nodes in [10_000u32, 100] {
        let case = dir.join(format!("page-{nodes}"));
        std::fs::create_dir_all(&case).expect("mkdir");
        let macs: Vec<Mac> = fleet(0x07, nodes);
        populate(&case, &macs, &[NodeState::Active, NodeState::Installed]);
        let (agent, http, _) = start_agent(&case, &case.join("boot-assets"));
        let token = admin_token_in(&case);
        agents.push((agent, http, token));
    }
    let (_, big_http, big_token) = &agents[0];
    let (_, small_http, small_token) = &agents[1];

    // nginx serves the page exactly as the agent rendered it.
    let web = dir.join("page-nginx");
    let root = web.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let html = Command::new("curl")
        .args(["-sS", &format!("http://{big_http}/")])
        .output()
        .expect("curl the page")
        .stdout;
    assert!(html.starts_with(b"<!doctype html>"), "the page");
    std::fs::write(root.join("index.html"), &html).expect("index.html");
    let (_nginx, nginx_port) = start_nginx(&web, &root, "default_type text/html;");

    let mut paint = [Vec::new(), Vec::new()];
    let mut dom = [Vec::new(), Vec::new()];
    let urls = [
        format!("http://{big_http}/"),
        format!("http://127.0.0.1:{nginx_port}/index.html"),
    ];
    for _ in 0..PAGE_RUNS {
        for (i, url) in urls.iter().enumerate() {
            let browser = browser::Browser::start("bench", 1280, 1000);
            browser.goto(url);
            let (p, d) = page_timing(&browser);
            paint[i].push(p);
            dom[i].push(d);
        }
    }
    println!("status page, cold headless Chromium, {PAGE_RUNS} runs each (median ms)");
    println!("{:<34} {:>12} {:>12}", "", "first paint", "DOM loaded");
    let (p_ours, d_ours) = (median(paint[0].clone()), median(dom[0].clone()));
    let (p_nginx, d_nginx) = (median(paint[1].clone()), median(dom[1].clone()));
    println!(
        "{:<34} {p_ours:>12.1} {d_ours:>12.1}",
        "siteboot GET / (10,000 nodes)"
    );
    println!(
        "{:<34} {p_nginx:>12.1} {d_nginx:>12.1}",
        "nginx, the same bytes"
    );
    println!(
        "siteboot/nginx: {:.2}x the first paint, {:.2}x DOM loaded\n",
        p_ours / p_nginx,
        d_ours / d_nginx
    );

    // Signed in: from the click until the node table is drawn.
    let mut drawn = [Vec::new(), Vec::new()];
    for _ in 0..PAGE_RUNS {
        for (i, (http, token, rows)) in [(big_http, big_token, 200), (small_http, small_token, 100)]
            .into_iter()
            .enumerate()
        {
            let browser = browser::Browser::start("bench", 1280, 1000);
            browser.goto(&format!("http://{http}/"));
            page_timing(&browser);
            browser.type_into("#token", token);
            browser.js(&format!(
                "window.__drawn = null; const t0 = performance.now();
                 new MutationObserver((m, o) => {{
                   if (document.querySelectorAll('#nodes tbody tr').length >= {rows}) {{
                     window.__drawn = performance.now() - t0; o.disconnect(); }}
                 }}).observe(document.getElementById('nodes'), {{childList: true, subtree: true}});
                 document.getElementById('signin-button').click(); return null;"
            ));
            browser.wait("the node table drawn", "window.__drawn !== null");
            drawn[i].push(browser.js("return window.__drawn;").as_f64().expect("ms"));
        }
    }
    let (big, small) = (median(drawn[0].clone()), median(drawn[1].clone()));
    println!("signed-in view, sign-in click to node table drawn (median ms)");
    println!("{:<34} {big:>12.1}", "10,000 nodes (200 shown)");
    println!("{:<34} {small:>12.1}", "100 nodes");
    println!("10,000 nodes / 100 nodes: {:.2}x\n", big / small);
}
