//! The bench's the TFTP part: siteboot against tftpd-hpa, rs-tftpd and async-tftp, and the firmware probe.

use super::*;

/// Longest a transfer may take before it counts as stalled.
const TRANSFER_LIMIT: Duration = Duration::from_secs(60);

/// One transfer; returns MB/s, or 0 for a transfer that failed or stalled
/// (rs-tftpd with blksize 8192 and windowsize 16 sends windows larger
/// than atftp's socket buffer and never finishes): shown as "failed".
pub(crate) fn transfer_rate(make: &mut dyn FnMut(&Path) -> Command, out: &Path) -> f64 {
    let _ = std::fs::remove_file(out);
    let started = Instant::now();
    let mut child = make(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > TRANSFER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = started.elapsed().as_secs_f64();
    let len = std::fs::metadata(out)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    match status {
        Some(status) if status.success() && len == FILE_SIZE => FILE_SIZE as f64 / 1e6 / secs,
        _ => 0.0,
    }
}

/// Builds the client command line for one transfer into the given file.
pub(crate) type ClientCommand = Box<dyn FnMut(&Path) -> Command>;

/// Runs each client command in turn, `RUNS` rounds (so that drift in the
/// machine's speed hits all servers alike); returns the medians.
pub(crate) fn measure_all(commands: &mut [ClientCommand], out: &Path) -> Vec<f64> {
    let mut rates = vec![Vec::new(); commands.len()];
    for _ in 0..RUNS {
        for (i, make) in commands.iter_mut().enumerate() {
            rates[i].push(transfer_rate(make.as_mut(), out));
        }
    }
    rates.into_iter().map(median).collect()
}

pub(crate) fn measure(mut make: impl FnMut(&Path) -> Command + 'static, out: &Path) -> f64 {
    median((0..RUNS).map(|_| transfer_rate(&mut make, out)).collect())
}

pub(crate) fn curl_get(port: u16, blksize: u32) -> impl FnMut(&Path) -> Command + 'static {
    move |out: &Path| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--tftp-blksize", &blksize.to_string(), "-o"])
            .arg(out)
            .arg(format!("tftp://127.0.0.1:{port}/big.bin"));
        c
    }
}

pub(crate) fn atftp_get(
    port: u16,
    blksize: u32,
    window: u32,
) -> impl FnMut(&Path) -> Command + 'static {
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

/// The release build of the example `name` (a reference server), built
/// next to this benchmark (target/release/examples) if it is not there.
pub(crate) fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let release = exe.parent().and_then(Path::parent).expect("target dir");
    let binary = release.join("examples").join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "--example", name])
            .status()
            .expect("cargo build");
        assert!(built.success(), "cannot build the example {name}");
    }
    binary
}

pub(crate) fn async_tftp_reference(root: &Path) -> (Proc, u16) {
    let binary = example_binary("async_tftp_reference");
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

/// Debian's tftpd-hpa (`in.tftpd`), in the foreground, serving `root`.
pub(crate) fn tftpd_hpa(root: &Path) -> (Proc, u16) {
    let port = free_udp_port();
    let child = Command::new("in.tftpd")
        .args(["-L", "-s"])
        .arg(root)
        .args(["-a", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start in.tftpd");
    (Proc(child), port)
}

/// rs-tftpd (the `tftpd` crate's server, `cargo install tftpd`), read-only
/// on `root`: the TFTP peer that implements windowsize.
pub(crate) fn rs_tftpd(root: &Path) -> (Proc, u16) {
    let binary = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")))
        .map(|dir| dir.join("tftpd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("rs-tftpd is required: cargo install tftpd --locked"));
    let port = free_udp_port();
    let child = Command::new(binary)
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-r", "-q", "-d"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rs-tftpd");
    (Proc(child), port)
}

pub(crate) fn tftp_benchmark(dir: &Path, root: &Path) {
    let (_agent, _, tftp) = start_agent(dir, root);
    let ours = tftp.port();
    let (_hpa, hpa) = tftpd_hpa(root);
    let (_reference, crate_port) = async_tftp_reference(root);
    let (_rs, rs) = rs_tftpd(root);
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.join("out.bin");
    println!("TFTP, 64 MiB file, 127.0.0.1, median of {RUNS} interleaved runs (MB/s)");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "client / options", "tftpd-hpa", "rs-tftpd", "async-tftp", "siteboot", "vs hpa", "vs rs"
    );
    // Columns: hpa, rs-tftpd, async-tftp, siteboot (None: not measured,
    // the server does not implement the option).
    let row = |name: String, r: [Option<f64>; 4]| {
        let shown = |v: Option<f64>| match v {
            None => "n/a".to_string(),
            Some(0.0) => "failed".to_string(),
            Some(v) => format!("{v:.1}"),
        };
        let ratio = |peer: Option<f64>| match (r[3], peer) {
            (Some(ours), Some(peer)) if ours > 0.0 && peer > 0.0 => format!("{:.2}x", ours / peer),
            (Some(ours), Some(_)) if ours > 0.0 => "peer failed".to_string(),
            (Some(_), Some(_)) => "failed".to_string(),
            _ => "n/a".to_string(),
        };
        println!(
            "{name:<34} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
            shown(r[0]),
            shown(r[1]),
            shown(r[2]),
            shown(r[3]),
            ratio(r[0]),
            ratio(r[1])
        );
    };
    for blksize in [512u32, 1468, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(curl_get(hpa, blksize)),
            Box::new(curl_get(rs, blksize)),
            Box::new(curl_get(crate_port, blksize)),
            Box::new(curl_get(ours, blksize)),
        ];
        let r = measure_all(&mut commands, &out);
        row(
            format!("curl blksize {blksize}"),
            [Some(r[0]), Some(r[1]), Some(r[2]), Some(r[3])],
        );
    }
    for blksize in [1468u32, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(atftp_get(hpa, blksize, 1)),
            Box::new(atftp_get(rs, blksize, 1)),
            Box::new(atftp_get(crate_port, blksize, 1)),
            Box::new(atftp_get(ours, blksize, 1)),
        ];
        let r = measure_all(&mut commands, &out);
        row(
            format!("atftp blksize {blksize}"),
            [Some(r[0]), Some(r[1]), Some(r[2]), Some(r[3])],
        );
        for window in [4u32, 16] {
            // tftpd-hpa and async-tftp ignore windowsize: only rs-tftpd
            // is a peer here.
            let mut commands: Vec<ClientCommand> = vec![
                Box::new(atftp_get(rs, blksize, window)),
                Box::new(atftp_get(ours, blksize, window)),
            ];
            let r = measure_all(&mut commands, &out);
            row(
                format!("atftp blksize {blksize} windowsize {window}"),
                [None, Some(r[0]), None, Some(r[1])],
            );
        }
    }
    println!("(windowsize: RFC 7440; of the peers only rs-tftpd implements it)");
    println!("\nUEFI firmware sequence: RRQ tsize=0 -> OACK -> ERROR 8 -> RRQ from the same port");
    for (name, port) in [
        ("tftpd-hpa", hpa),
        ("rs-tftpd", rs),
        ("async-tftp", crate_port),
        ("siteboot", ours),
    ] {
        println!("{name:<12} {}", firmware_probe(port));
    }
    println!();
}

/// Plays the firmware's size probe and the real request from one port, as
/// OVMF does; reports what the server did.
/// This build's TFTP engine against another build of the agent
/// (`BENCH_BEFORE_BIN`), both serving the same 64 MiB file, every case
/// interleaved: a change to the engine measured apart from the peers.
/// Beside the rate (bound as much by the client and the scheduler as by
/// the server), the agent's own CPU time per transfer, which is what a
/// change to the engine changes.
pub(crate) fn tftp_before_after(dir: &Path, root: &Path) {
    let Some(before_bin) = std::env::var_os("BENCH_BEFORE_BIN") else {
        panic!("tftp-ab needs BENCH_BEFORE_BIN, the path of the build to compare with");
    };
    let before_dir = dir.join("before");
    let after_dir = dir.join("after");
    for d in [&before_dir, &after_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (before_agent, _, before_tftp) =
        start_binary_with(Path::new(&before_bin), &before_dir, root, &[]);
    let (after_agent, _, after_tftp) = start_agent(&after_dir, root);
    let pids = [before_agent.0.id(), after_agent.0.id()];
    let (before, after) = (before_tftp.port(), after_tftp.port());
    let out = dir.join("out.bin");
    println!("TFTP before/after, 64 MiB file, median of {RUNS} interleaved runs");
    println!(
        "{:<34} {:>8} {:>8} {:>6} {:>9} {:>9} {:>6}",
        "client / options", "MB/s bef", "MB/s aft", "ratio", "cpu ms b", "cpu ms a", "ratio"
    );
    let mut cases: Vec<(String, [ClientCommand; 2])> = Vec::new();
    for blksize in [512u32, 1468, 8192] {
        cases.push((
            format!("curl blksize {blksize}"),
            [
                Box::new(curl_get(before, blksize)),
                Box::new(curl_get(after, blksize)),
            ],
        ));
    }
    for blksize in [1468u32, 8192] {
        for window in [1u32, 4, 16] {
            cases.push((
                format!("atftp blksize {blksize} windowsize {window}"),
                [
                    Box::new(atftp_get(before, blksize, window)),
                    Box::new(atftp_get(after, blksize, window)),
                ],
            ));
        }
    }
    for (name, mut commands) in cases {
        let mut rates = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            for (i, make) in commands.iter_mut().enumerate() {
                let start = process_cpu_ms(pids[i]);
                rates[i].push(transfer_rate(make.as_mut(), &out));
                cpu[i].push(process_cpu_ms(pids[i]) - start);
            }
        }
        let [rate_b, rate_a] = rates.map(median);
        let [cpu_b, cpu_a] = cpu.map(median);
        println!(
            "{name:<34} {rate_b:>8.1} {rate_a:>8.1} {:>5.2}x {cpu_b:>9.0} {cpu_a:>9.0} {:>5.2}x",
            rate_a / rate_b.max(f64::MIN_POSITIVE),
            cpu_a / cpu_b.max(f64::MIN_POSITIVE)
        );
    }
    println!();
}

/// User and system CPU time a process has used, in milliseconds.
fn process_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, 12 and 13 here; 100 ticks a second.
    (ticks(11) + ticks(12)) * 10.0
}

pub(crate) fn firmware_probe(port: u16) -> String {
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let rrq = |options: &[(&str, &str)]| read_request("big.bin", options);
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

/// An RRQ as a client writes it (RFC 1350, options per RFC 2347).
fn read_request(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = vec![0, 1];
    for text in [filename, "octet"]
        .into_iter()
        .chain(options.iter().flat_map(|(name, value)| [*name, *value]))
    {
        packet.extend_from_slice(text.as_bytes());
        packet.push(0);
    }
    packet
}
