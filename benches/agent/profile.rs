//! The bench's profile part (issue 24's "find where the time goes"):
//! the standalone agent with 10,000 nodes under wrk (the speed part's
//! load), sampled by `perf record -e cpu-clock` (a software clock, which
//! containers without hardware counters still have), for `/api/v1/boot`
//! and for `/health`, then the online agent's `/api/v1/boot` (boots
//! confirmed by a fake controller's change feed, with the calls it made
//! and both sides' CPU); prints each one's top entries by self time. The
//! difference between boot and health is what a boot answer costs beyond
//! the HTTP stack. `cargo bench --bench agent -- profile`.

use super::*;

/// Entries printed per profile.
const TOP: usize = 25;

pub(crate) fn profile_benchmark(dir: &Path, root: &Path) {
    let dir = dir.join("profile");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs = fleet(0x24, NODES);
    let states = FLEET_STATES;
    populate(&dir, &macs, &states);
    let (agent, addr, _) = start_agent(&dir, root);
    let boot_paths: Vec<String> = macs
        .iter()
        .map(|m| format!("/api/v1/boot?mac={m}&arch=x86_64&platform=efi"))
        .collect();
    let boots = speed::rotation_script(&dir, "boots", &boot_paths);
    let health = speed::rotation_script(&dir, "health", &["/health".to_string()]);
    // Warm: every node's answer made once before the sampling starts.
    speed::wrk(addr, &boots);
    for (name, script) in [("/api/v1/boot", &boots), ("/health", &health)] {
        sample(&dir, &agent, addr, name, script);
    }

    // Online: every boot of a cached node waits for a change feed call
    // that started after it arrived; the calls and both sides' CPU show
    // what that costs (the fake controller runs in this process).
    let controller = controller::FakeController::start();
    let (online, online_addr) =
        speed::start_online_agent(&dir.join("online"), root, &controller, &macs, &states);
    speed::wrk(online_addr, &boots);
    let token = admin_token_in(&dir.join("online"));
    let calls_before = feed_calls(online_addr, &token);
    let cpu_before = [cpu_seconds(online.0.id()), cpu_seconds(std::process::id())];
    let run = sample(
        &dir,
        &online,
        online_addr,
        "/api/v1/boot online, change feed",
        &boots,
    );
    let calls = feed_calls(online_addr, &token) - calls_before;
    let [agent_cpu, controller_cpu] = [
        cpu_seconds(online.0.id()) - cpu_before[0],
        cpu_seconds(std::process::id()) - cpu_before[1],
    ];
    let seconds = f64::from(speed::WRK_SECONDS);
    let boots_done = run.rate * seconds;
    println!(
        "online: {calls:.0} change feed calls for {boots_done:.0} boots ({:.1} boots per call, {:.0} calls/s); \
         CPU during the run (perf's own included): agent {agent_cpu:.2} s, \
         fake controller (the bench process) {controller_cpu:.2} s",
        boots_done / calls,
        calls / seconds
    );
}

/// Samples the agent under wrk running `script`, prints the top entries.
fn sample(
    dir: &Path,
    agent: &Proc,
    addr: SocketAddr,
    name: &str,
    script: &Path,
) -> speed::WrkResult {
    let data = dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "2000", "-o"])
        .arg(&data)
        .args(["-p", &agent.0.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf (Debian package linux-perf)");
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_seconds(agent.0.id());
    let run = speed::wrk(addr, script);
    let cpu = cpu_seconds(agent.0.id()) - cpu;
    // SAFETY: SIGINT to our own child, which stops and writes its file.
    unsafe {
        libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
    }
    let status = perf.wait().expect("perf");
    assert!(data.exists(), "perf wrote nothing ({status})");
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,sym",
            "-i",
        ])
        .arg(&data)
        .output()
        .expect("perf report");
    let text = String::from_utf8_lossy(&report.stdout);
    println!(
        "{name}: {:.0} req/s while sampled, agent CPU {:.1} us per request (perf's own included); \
         top {TOP} by self time",
        run.rate,
        cpu / (run.rate * f64::from(speed::WRK_SECONDS)) * 1e6
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(TOP)
        .for_each(|l| println!("  {}", l.trim_end()));
    println!();
    run
}

/// `siteboot_controller_calls_total{call="site_nodes"}`, summed over
/// outcomes, from the agent's `/metrics` (with its admin token).
pub(crate) fn feed_calls(http: SocketAddr, token: &str) -> f64 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://{http}/metrics"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("siteboot_controller_calls_total") && l.contains("call=\"site_nodes\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU seconds of `pid` and of its children (nginx's workers), read from
/// /proc: the children's own figures, which the parent's do not hold
/// until they are reaped.
pub(crate) fn cpu_seconds_with_children(pid: u32) -> f64 {
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .map(cpu_seconds_with_children)
        .sum();
    cpu_seconds(pid) + children
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The parent is the 4th field, the 2nd after the command's ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process's user + system CPU time so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}
