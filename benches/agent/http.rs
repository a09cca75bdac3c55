//! The bench's the HTTP part: `/api/v1/boot` under load against nginx serving the same bytes.

use super::*;

pub(crate) fn http_benchmark(dir: &Path) {
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
    // nginx serves the bytes of one node's script as a static file: what
    // a boot answer would cost if it were ready in advance.
    let script = Command::new("curl")
        .args([
            "-sS",
            &format!(
                "http://{http}/api/v1/boot?mac={}&arch=x86_64&platform=efi",
                macs[0]
            ),
        ])
        .output()
        .expect("curl a script")
        .stdout;
    let static_root = dir.join("static");
    std::fs::create_dir_all(&static_root).expect("mkdir static");
    std::fs::write(static_root.join("script.ipxe"), &script).expect("write script");
    // nginx ends a keep-alive connection after 1,000 requests by default.
    let (_nginx, nginx_port) = start_nginx(&dir, &static_root, "keepalive_requests 100000000;");
    let nginx: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().expect("addr");
    let boot = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
    let health = runtime.block_on(load(http, macs.clone(), Endpoint::Health));
    let grub = runtime.block_on(load(http, macs.clone(), Endpoint::BootGrub));
    let reference = runtime.block_on(load(nginx, macs, Endpoint::Static));
    print_row("/health (the HTTP stack's floor)", &health);
    print_row("/api/v1/boot (target p99 < 2 ms)", &boot);
    print_row("/api/v1/boot?format=grub", &grub);
    print_row("nginx, the same script as a file", &reference);
    println!(
        "/api/v1/boot vs /health: {:.2}x the requests/s, {:.2}x the p99",
        boot.rate / health.rate,
        boot.p99 / health.p99
    );
    println!(
        "GRUB configurations vs iPXE scripts: {:.2}x the requests/s, {:.2}x the p99",
        grub.rate / boot.rate,
        grub.p99 / boot.p99
    );
    println!(
        "/api/v1/boot vs nginx: {:.2}x the requests/s, {:.2}x the p99\n",
        boot.rate / reference.rate,
        boot.p99 / reference.p99
    );
}

pub(crate) struct LoadResult {
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

pub(crate) fn print_row(name: &str, r: &LoadResult) {
    println!(
        "{name:<40} {:>10.0} {:>9.3} {:>9.3} {:>9.3}",
        r.rate, r.p50, r.p99, r.max
    );
}

#[derive(Clone, Copy)]
pub(crate) enum Endpoint {
    Boot,
    /// The same decisions as GRUB configurations (`format=grub`).
    BootGrub,
    Health,
    /// nginx's copy of a script.
    Static,
}

/// Starts Debian's nginx (nginx-light) in `case`, serving `root` on a free
/// port of 127.0.0.1 with `http_directives` added to its `http` block.
pub(crate) fn start_nginx(case: &Path, root: &Path, http_directives: &str) -> (Proc, u16) {
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

/// Reads one response with a Content-Length body, checking its status line.
pub(crate) async fn read_status(
    stream: &mut tokio::net::TcpStream,
    buf: &mut [u8],
    expected: &str,
) {
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

pub(crate) async fn load(http: SocketAddr, macs: Vec<Mac>, endpoint: Endpoint) -> LoadResult {
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
                    Endpoint::BootGrub => format!(
                        "GET /api/v1/boot?mac={mac}&format=grub HTTP/1.1\r\nHost: {http}\r\n\r\n"
                    ),
                    Endpoint::Health => format!("GET /health HTTP/1.1\r\nHost: {http}\r\n\r\n"),
                    Endpoint::Static => {
                        format!("GET /script.ipxe HTTP/1.1\r\nHost: {http}\r\n\r\n")
                    }
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
pub(crate) async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    read_status(stream, buf, "http/1.1 200").await;
}
