//! Benchmarks, side by side in one run (`cargo bench --bench agent`):
//!
//! * TFTP: MB/s for a 64 MiB file, siteboot vs Debian's tftpd-hpa
//!   (`in.tftpd`), same client (curl, then atftp for windowsize), same box.
//! * HTTP: `/api/v1/boot` requests/s and p50/p99 latency at 64 concurrent
//!   keep-alive clients with 10,000 nodes in the store.
//!
//! Everything runs on 127.0.0.1; clients and servers share the machine's
//! cores, as they would not in production, so ratios matter more than
//! absolute figures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use siteboot::mac::Mac;
use siteboot::node::{Node, NodeState};
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
}

fn start_agent(dir: &Path, root: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_siteboot"))
        .arg("serve")
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
        // Per-transfer and per-request log lines would measure the logger.
        .env("SITEBOOT_LOG", "warn,siteboot::agent=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start siteboot");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("siteboot agent listening") => break line,
            Some(Ok(_)) => continue,
            _ => panic!("siteboot did not start"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let field = |key: &str| -> SocketAddr {
        let start = line.find(key).expect("field") + key.len();
        line[start..]
            .split_whitespace()
            .next()
            .expect("addr")
            .parse()
            .expect("addr")
    };
    (Proc(child), field("http="), field("tftp="))
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

/// Runs the reference and siteboot alternately `RUNS` times each (so that
/// drift in the machine's speed hits both alike); returns the medians.
fn measure_pair(
    mut reference: impl FnMut(&Path) -> Command,
    mut ours: impl FnMut(&Path) -> Command,
    out: &Path,
) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        a.push(transfer_rate(&mut reference, out));
        b.push(transfer_rate(&mut ours, out));
    }
    (median(a), median(b))
}

fn measure(mut make: impl FnMut(&Path) -> Command, out: &Path) -> f64 {
    median((0..RUNS).map(|_| transfer_rate(&mut make, out)).collect())
}

fn curl_get(port: u16, blksize: u32) -> impl FnMut(&Path) -> Command {
    move |out: &Path| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--tftp-blksize", &blksize.to_string(), "-o"])
            .arg(out)
            .arg(format!("tftp://127.0.0.1:{port}/big.bin"));
        c
    }
}

fn atftp_get(port: u16, blksize: u32, window: u32) -> impl FnMut(&Path) -> Command {
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

fn tftp_benchmark(dir: &Path, root: &Path) {
    let (_agent, _, tftp) = start_agent(dir, root);
    let hpa_port = free_udp_port();
    let _hpa = Proc(
        Command::new("in.tftpd")
            .args(["-L", "-s"])
            .arg(root)
            .args(["-a", &format!("127.0.0.1:{hpa_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start in.tftpd"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.join("out.bin");
    println!("TFTP, 64 MiB file, 127.0.0.1, median of {RUNS} runs (MB/s)");
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "client / options", "tftpd-hpa", "siteboot", "ratio"
    );
    for blksize in [512u32, 1468, 8192] {
        let (hpa, ours) = measure_pair(
            curl_get(hpa_port, blksize),
            curl_get(tftp.port(), blksize),
            &out,
        );
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>7.2}x",
            format!("curl blksize {blksize}"),
            hpa,
            ours,
            ours / hpa
        );
    }
    for blksize in [1468u32, 8192] {
        let (hpa, ours) = measure_pair(
            atftp_get(hpa_port, blksize, 1),
            atftp_get(tftp.port(), blksize, 1),
            &out,
        );
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>7.2}x",
            format!("atftp blksize {blksize}"),
            hpa,
            ours,
            ours / hpa
        );
        for window in [4u32, 16] {
            let ours = measure(atftp_get(tftp.port(), blksize, window), &out);
            println!(
                "{:<34} {:>10} {:>10.1} {:>7.2}x",
                format!("atftp blksize {blksize} windowsize {window}"),
                "n/a",
                ours,
                ours / hpa
            );
        }
    }
    println!(
        "(tftpd-hpa does not implement windowsize; those ratios compare with its lockstep figure)\n"
    );
}

fn http_benchmark(dir: &Path) {
    let dir = dir.join("http");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs: Vec<Mac> = (0..NODES)
        .map(|i| Mac::new([0x52, 0x54, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
        .collect();
    {
        let store = Store::open(&dir.join("data")).expect("store");
        let now = time::OffsetDateTime::now_utc();
        let states = [
            NodeState::Active,
            NodeState::Installed,
            NodeState::Discovered,
            NodeState::InstallFailed,
            NodeState::Retired,
        ];
        let nodes: Vec<Node> = macs
            .iter()
            .enumerate()
            .map(|(i, mac)| Node::new_local(*mac, states[i % states.len()], now))
            .collect();
        store.put_nodes(&nodes).expect("populate");
    }
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

/// Reads one HTTP/1.1 response with a Content-Length body; panics on anything else.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "server closed the connection");
        filled += n;
        let text = &buf[..filled];
        if let Some(head_end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&text[..head_end]).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 200"),
                "unexpected response: {head}"
            );
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            let total = head_end + 4 + len;
            while filled < total {
                let n = stream.read(&mut buf[filled..]).await.expect("read body");
                assert!(n > 0, "short body");
                filled += n;
            }
            return;
        }
    }
}
