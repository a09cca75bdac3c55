//! The bench's the hardening part: what hostile input costs the agent (log bytes, memory, files).

use super::*;

/// Issue 9's figures: boots while 600 idle connections are open (file
/// limit 512), a 100 MB file proxied from a controller at 2 MB/s, and the
/// agent's peak memory when 40 new MACs' lookups answer 100 MB each.
pub(crate) fn hardening_benchmark(dir: &Path) {
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
