//! The bench's profile part (issue 24's "find where the time goes"):
//! the standalone agent with 10,000 nodes under wrk (the speed part's
//! load), sampled by `perf record -e cpu-clock` (a software clock, which
//! containers without hardware counters still have), for `/api/v1/boot`
//! and for `/health`; prints each one's top entries by self time. The
//! difference between the two is what a boot answer costs beyond the
//! HTTP stack. `cargo bench --bench agent -- profile`.

use super::*;

/// Entries printed per profile.
const TOP: usize = 25;

pub(crate) fn profile_benchmark(dir: &Path, root: &Path) {
    let dir = dir.join("profile");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs = fleet(0x24, NODES);
    let states = [
        NodeState::Active,
        NodeState::Installed,
        NodeState::Discovered,
        NodeState::InstallFailed,
        NodeState::Retired,
    ];
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
        let run = speed::wrk(addr, script);
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
            "{name}: {:.0} req/s while sampled; top {TOP} by self time",
            run.rate
        );
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(TOP)
            .for_each(|l| println!("  {}", l.trim_end()));
        println!();
    }
}
