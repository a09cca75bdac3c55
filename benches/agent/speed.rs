//! The bench's speed part (issue 24), one run: `/api/v1/boot` standalone
//! (logging errors only, and at the default `info`), offline and online
//! against nginx serving the same script as a file,
//! the status endpoints, all under `wrk` (2 threads, 64 keep-alive
//! connections, 10,000 MACs in rotation); TFTP boot storms against
//! tftpd-hpa and rs-tftpd. Every case runs in each round, rounds
//! interleave, figures are medians. Issue 24's whole measurement is
//! `cargo bench --bench agent -- speed tftp` (the TFTP transfer table is
//! the `tftp` part).

use super::*;

/// The states the speed, profile and online-ab fleets cycle through.
pub(crate) const FLEET_STATES: [NodeState; 5] = [
    NodeState::Active,
    NodeState::Installed,
    NodeState::Discovered,
    NodeState::InstallFailed,
    NodeState::Retired,
];

/// wrk's run per case and round.
pub(crate) const WRK_SECONDS: u32 = 4;
/// Interleaved rounds; the figures are their medians.
const ROUNDS: usize = 3;
/// Rounds of the TFTP storms: the small storm lasts a fifth of a second,
/// and three of them gave 1.14x to 1.42x on one machine a session apart.
const STORM_ROUNDS: usize = 7;

pub(crate) struct WrkResult {
    pub(crate) rate: f64,
    pub(crate) p99_ms: f64,
}

/// A wrk Lua script whose requests visit `paths` in rotation (each wrk
/// thread from its own place), so that the server cannot answer one
/// request over and over from a single cache line.
pub(crate) fn rotation_script(dir: &Path, name: &str, paths: &[String]) -> std::path::PathBuf {
    let mut lua = String::from("local paths = {\n");
    for p in paths {
        lua.push_str(&format!("  \"{p}\",\n"));
    }
    lua.push_str(
        "}\nlocal threads = 0\n\
         function setup(thread)\n  thread:set(\"offset\", threads * 4999)\n  threads = threads + 1\nend\n\
         function init(args)\n  i = offset or 0\nend\n\
         request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
    );
    let file = dir.join(format!("{name}.lua"));
    std::fs::write(&file, lua).expect("write lua");
    file
}

/// examples/hyper_reference serving `file`, and its address.
fn hyper_reference(file: &Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(super::tftp::example_binary("hyper_reference"))
        .arg(file)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hyper_reference");
    let stdout = child.stdout.take().expect("stdout");
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("hyper_reference did not start: {line:?}"));
    (Proc(child), addr)
}

/// One wrk run; panics on socket errors or non-2xx answers (a figure
/// from failed requests would be meaningless).
pub(crate) fn wrk(addr: SocketAddr, script: &Path) -> WrkResult {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}"))
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors: {text}"
    );
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate in wrk's output: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| wrk_ms(v.trim()))
        .unwrap_or_else(|| panic!("no p99 in wrk's output: {text}"));
    WrkResult { rate, p99_ms: p99 }
}

/// wrk's latency ("812.00us", "2.31ms", "1.02s") in milliseconds.
fn wrk_ms(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => f64::NAN,
    }
}

struct HttpCase {
    name: &'static str,
    addr: SocketAddr,
    /// The server's process (nginx's master: its workers are counted too).
    pid: u32,
    script: std::path::PathBuf,
    /// Compared with nginx (a boot answer) or not (the status endpoints).
    versus_nginx: bool,
}

pub(crate) fn speed_benchmark(dir: &Path, root: &Path) {
    let dir = dir.join("speed");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x24, NODES);
    let states = FLEET_STATES;
    let boot_paths: Vec<String> = macs
        .iter()
        .map(|m| format!("/api/v1/boot?mac={m}&arch=x86_64&platform=efi"))
        .collect();

    // Standalone: the store is the fleet.
    let standalone_dir = dir.join("standalone");
    std::fs::create_dir_all(&standalone_dir).expect("mkdir");
    populate(&standalone_dir, &macs, &states);
    let (standalone_proc, standalone, _) = start_agent(&standalone_dir, root);

    // Online: a controller that knows the fleet and answers at once. It
    // gives a sync cursor, so boots are confirmed by its change feed.
    let controller = controller::FakeController::start();
    let (online_proc, online) =
        start_online_agent(&dir.join("online"), root, &controller, &macs, &states);

    // Standalone again, logging at the Debian package's level (`info`: a
    // line per boot), its lines read from a pipe as a journal would.
    let logging_dir = dir.join("standalone-info");
    std::fs::create_dir_all(&logging_dir).expect("mkdir");
    populate(&logging_dir, &macs, &states);
    let (logging_proc, logging, _) =
        start_agent_with(&logging_dir, root, &[("SITEBOOT_LOG", "info".to_string())]);

    // Offline: the fleet cached, the controller's address answers nothing.
    let offline_dir = dir.join("offline");
    std::fs::create_dir_all(&offline_dir).expect("mkdir");
    populate(&offline_dir, &macs, &states);
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let (offline_proc, offline, _) =
        start_agent_with(&offline_dir, root, &central_env(&controller, dead));
    wait_for_mode(offline, "offline", Duration::from_secs(120)).expect("agent offline");

    // nginx serves one node's standalone script as a file, asked for with
    // the same rotating query strings (which it ignores).
    let script = Command::new("curl")
        .args(["-sS", &format!("http://{standalone}{}", boot_paths[0])])
        .output()
        .expect("curl a script")
        .stdout;
    let web = dir.join("nginx");
    let static_root = web.join("root");
    std::fs::create_dir_all(&static_root).expect("mkdir");
    std::fs::write(static_root.join("script.ipxe"), &script).expect("write");
    let (nginx_proc, nginx_port) = start_nginx(&web, &static_root, "keepalive_requests 100000000;");
    let nginx: SocketAddr = format!("127.0.0.1:{nginx_port}").parse().expect("addr");
    let static_paths: Vec<String> = macs
        .iter()
        .map(|m| format!("/script.ipxe?mac={m}&arch=x86_64&platform=efi"))
        .collect();

    // hyper alone (examples/hyper_reference.rs) answers the same bytes
    // with a boot answer's headers: the agent's HTTP stack without the
    // agent's work, the most `/api/v1/boot` could reach on it.
    let (hyper_proc, hyper) = hyper_reference(&static_root.join("script.ipxe"));

    let boots = rotation_script(&dir, "boots", &boot_paths);
    let static_script = rotation_script(&dir, "static", &static_paths);
    let cases = [
        HttpCase {
            name: "nginx, the script as a file",
            addr: nginx,
            pid: nginx_proc.0.id(),
            script: static_script.clone(),
            versus_nginx: true,
        },
        HttpCase {
            name: "hyper alone, the same bytes",
            addr: hyper,
            pid: hyper_proc.0.id(),
            script: static_script,
            versus_nginx: true,
        },
        HttpCase {
            name: "/api/v1/boot standalone",
            addr: standalone,
            pid: standalone_proc.0.id(),
            script: boots.clone(),
            versus_nginx: true,
        },
        HttpCase {
            name: "/api/v1/boot standalone, log at info",
            addr: logging,
            pid: logging_proc.0.id(),
            script: boots.clone(),
            versus_nginx: true,
        },
        HttpCase {
            name: "/api/v1/boot offline",
            addr: offline,
            pid: offline_proc.0.id(),
            script: boots.clone(),
            versus_nginx: true,
        },
        HttpCase {
            name: "/api/v1/boot online, change feed",
            addr: online,
            pid: online_proc.0.id(),
            script: boots,
            versus_nginx: true,
        },
        HttpCase {
            name: "/health",
            addr: standalone,
            pid: standalone_proc.0.id(),
            script: rotation_script(&dir, "health", &["/health".to_string()]),
            versus_nginx: true,
        },
        HttpCase {
            name: "/api/v1/status",
            addr: standalone,
            pid: standalone_proc.0.id(),
            script: rotation_script(&dir, "status", &["/api/v1/status".to_string()]),
            versus_nginx: false,
        },
        HttpCase {
            name: "/ (status page, signed out)",
            addr: standalone,
            pid: standalone_proc.0.id(),
            script: rotation_script(&dir, "page", &["/".to_string()]),
            versus_nginx: false,
        },
    ];
    let mut rates = vec![Vec::new(); cases.len()];
    let mut p99s = vec![Vec::new(); cases.len()];
    let mut cpus = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, case) in cases.iter().enumerate() {
            let before = profile::cpu_seconds_with_children(case.pid);
            let r = wrk(case.addr, &case.script);
            let cpu = profile::cpu_seconds_with_children(case.pid) - before;
            rates[i].push(r.rate);
            p99s[i].push(r.p99_ms);
            cpus[i].push(cpu / (r.rate * f64::from(WRK_SECONDS)) * 1e6);
        }
    }
    println!(
        "HTTP under wrk -t2 -c64, {NODES} MACs in rotation, {WRK_SECONDS}s per run, \
         medians of {ROUNDS} interleaved rounds"
    );
    println!(
        "{:<38} {:>10} {:>9} {:>11} {:>11} {:>9} {:>11}",
        "case", "req/s", "p99 ms", "vs nginx", "p99 vs ng.", "CPU us", "CPU vs ng."
    );
    let nginx_rate = median(rates[0].clone());
    let nginx_p99 = median(p99s[0].clone());
    let nginx_cpu = median(cpus[0].clone());
    for (i, case) in cases.iter().enumerate() {
        let rate = median(rates[i].clone());
        let p99 = median(p99s[i].clone());
        let cpu = median(cpus[i].clone());
        let (vs, vs_p99, vs_cpu) = if case.versus_nginx {
            (
                format!("{:.2}x", rate / nginx_rate),
                format!("{:.2}x", p99 / nginx_p99),
                format!("{:.2}x", cpu / nginx_cpu),
            )
        } else {
            ("-".to_string(), "-".to_string(), "-".to_string())
        };
        println!(
            "{:<38} {rate:>10.0} {p99:>9.2} {vs:>11} {vs_p99:>11} {cpu:>9.1} {vs_cpu:>11}",
            case.name
        );
    }
    println!(
        "(p99 and CPU vs nginx: below 1.00x is better; CPU: the server's, \
         with its children, per request: nginx's rate swings run to run \
         with where its workers and wrk's threads land, its CPU per request less)\n"
    );

    storm_benchmark(&dir, root);
}

/// The agent's settings for a controller at `url` (the fake's token).
pub(crate) fn central_env(
    controller: &controller::FakeController,
    url: String,
) -> Vec<(&'static str, String)> {
    vec![
        ("SITEBOOT_CENTRAL_URL", url),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "1s".to_string()),
    ]
}

/// An agent in `dir` online with `controller`, which is given the fleet
/// (`macs`, cycling through `states`), the agent's store too; returned
/// once its first full sync brought the cursor its change feed needs.
pub(crate) fn start_online_agent(
    dir: &Path,
    root: &Path,
    controller: &controller::FakeController,
    macs: &[Mac],
    states: &[NodeState],
) -> (Proc, SocketAddr) {
    let binary = Path::new(env!("CARGO_BIN_EXE_siteboot"));
    start_online_binary(binary, dir, root, controller, macs, states)
}

/// [`start_online_agent`] for another build of the agent (a before/after).
pub(crate) fn start_online_binary(
    binary: &Path,
    dir: &Path,
    root: &Path,
    controller: &controller::FakeController,
    macs: &[Mac],
    states: &[NodeState],
) -> (Proc, SocketAddr) {
    for (i, mac) in macs.iter().enumerate() {
        let state = states[i % states.len()].as_str();
        controller.set_node(&mac.to_string(), state, None);
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    populate(dir, macs, states);
    let (agent, addr, _) = start_binary_with(
        binary,
        dir,
        root,
        &central_env(controller, controller.url()),
    );
    wait_for_mode(addr, "online", Duration::from_secs(60)).expect("agent online");
    let started = Instant::now();
    while agent_status(addr).is_none_or(|s| s["last_sync_at"].is_null()) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no sync: {:?}",
            agent_status(addr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (agent, addr)
}

/// Boot storms over TFTP: `clients` transfers of one file at once (curl's
/// parallel mode, blksize 1468, as iPXE and most firmware ask), siteboot
/// vs tftpd-hpa vs rs-tftpd serving the same directory, interleaved.
fn storm_benchmark(dir: &Path, root: &Path) {
    // Every client here is 127.0.0.1; on a site each node has its own
    // address, so the per-client session bound (16) is lifted.
    let storm_dir = dir.join("storm-agent");
    std::fs::create_dir_all(&storm_dir).expect("mkdir");
    let (_agent, _, tftp) = start_agent_with(
        &storm_dir,
        root,
        &[("SITEBOOT_TFTP_MAX_SESSIONS_PER_CLIENT", "1000".to_string())],
    );
    let ours = tftp.port();
    let (_hpa, hpa) = tftpd_hpa(root);
    let (_rs, rs) = rs_tftpd(root);
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "TFTP boot storms: N clients of one file at once (curl -Z, blksize 1468), \
         seconds until all are whole, medians of {STORM_ROUNDS} interleaved rounds"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "storm", "tftpd-hpa", "rs-tftpd", "siteboot", "vs hpa", "vs rs"
    );
    for (name, clients, size) in [
        ("200 x 80 KB", 200usize, 80 * 1024usize),
        ("50 x 8 MiB", 50, 8 << 20),
    ] {
        let file = format!("storm-{clients}-{size}.bin");
        std::fs::write(root.join(&file), vec![0x5au8; size]).expect("storm file");
        let mut times = vec![Vec::new(); 3];
        for _ in 0..STORM_ROUNDS {
            for (i, port) in [hpa, rs, ours].into_iter().enumerate() {
                times[i].push(storm(dir, port, &file, clients, size));
            }
        }
        let [h, r, o] = [0, 1, 2].map(|i| median(times[i].clone()));
        // Speed is the inverse of time: > 1.00x means siteboot finished first.
        println!(
            "{name:<22} {h:>10.2} {r:>10.2} {o:>10.2} {:>7.2}x {:>7.2}x",
            h / o,
            r / o
        );
    }
    println!("(vs: the peer's time over siteboot's; above 1.00x siteboot is faster)\n");
}

/// One storm; seconds until every client has the whole file.
fn storm(dir: &Path, port: u16, file: &str, clients: usize, size: usize) -> f64 {
    let out = dir.join("storm-out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("mkdir");
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-Z",
        "--parallel-max",
        &clients.to_string(),
        "--tftp-blksize",
        "1468",
        "--max-time",
        "120",
    ]);
    for n in 0..clients {
        command
            .arg("-o")
            .arg(out.join(format!("{n}")))
            .arg(format!("tftp://127.0.0.1:{port}/{file}"));
    }
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("curl");
    let took = started.elapsed().as_secs_f64();
    let whole = (0..clients)
        .filter(|n| {
            std::fs::metadata(out.join(format!("{n}"))).is_ok_and(|m| m.len() as usize == size)
        })
        .count();
    assert!(
        status.success() && whole == clients,
        "storm on port {port}: {whole} of {clients} whole"
    );
    took
}
