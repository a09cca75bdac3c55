//! The bench's online-ab part (only when named): `/api/v1/boot` of an
//! online agent whose boots the fake controller's change feed confirms,
//! this build against an older one (`BENCH_BEFORE_BIN`), the same fleet
//! and controller, runs interleaved: req/s and p99 under the speed part's
//! wrk load, change feed calls per boot, and the agent's CPU per boot
//! (which is what a change to the confirmation path changes; the rate
//! is bound as much by wrk and the fake controller sharing the cores).
//! `BENCH_BEFORE_BIN=<older siteboot> cargo bench --bench agent -- online-ab`

use super::*;

/// Interleaved runs per build; figures are medians.
const RUNS: usize = 5;

pub(crate) fn online_before_after(dir: &Path, root: &Path) {
    let Some(before_bin) = std::env::var_os("BENCH_BEFORE_BIN") else {
        panic!("online-ab needs BENCH_BEFORE_BIN, the path of the build to compare with");
    };
    let dir = dir.join("online-ab");
    let macs = fleet(0x25, NODES);
    let states = FLEET_STATES;
    let controller = controller::FakeController::start();
    let builds = [
        ("before", std::path::PathBuf::from(before_bin)),
        (
            "after",
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_siteboot")),
        ),
    ];
    let agents: Vec<(Proc, SocketAddr, String)> = builds
        .iter()
        .map(|(name, binary)| {
            let agent_dir = dir.join(name);
            let (agent, addr) =
                speed::start_online_binary(binary, &agent_dir, root, &controller, &macs, &states);
            (agent, addr, admin_token_in(&agent_dir))
        })
        .collect();
    let paths: Vec<String> = macs
        .iter()
        .map(|m| format!("/api/v1/boot?mac={m}&arch=x86_64&platform=efi"))
        .collect();
    let script = speed::rotation_script(&dir, "boots", &paths);
    // Warm: every node's answer made once by each.
    for (_, addr, _) in &agents {
        speed::wrk(*addr, &script);
    }
    let mut figures = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; 2];
    for _ in 0..RUNS {
        for (i, (agent, addr, token)) in agents.iter().enumerate() {
            let calls = profile::feed_calls(*addr, token);
            let cpu = profile::cpu_seconds(agent.0.id());
            let run = speed::wrk(*addr, &script);
            let boots = run.rate * f64::from(speed::WRK_SECONDS);
            let calls = profile::feed_calls(*addr, token) - calls;
            let cpu = profile::cpu_seconds(agent.0.id()) - cpu;
            figures[i][0].push(run.rate);
            figures[i][1].push(run.p99_ms);
            figures[i][2].push(boots / calls.max(1.0));
            figures[i][3].push(cpu / boots * 1e6);
        }
    }
    println!(
        "/api/v1/boot online (change feed), {NODES} MACs, wrk -t2 -c64, medians of {RUNS} interleaved runs"
    );
    println!(
        "{:<8} {:>10} {:>9} {:>15} {:>18}",
        "build", "req/s", "p99 ms", "boots per call", "agent CPU us/boot"
    );
    let medians: Vec<[f64; 4]> = figures
        .iter()
        .map(|f| [0, 1, 2, 3].map(|k| median(f[k].clone())))
        .collect();
    for ((name, _), m) in builds.iter().zip(&medians) {
        println!(
            "{name:<8} {:>10.0} {:>9.2} {:>15.1} {:>18.2}",
            m[0], m[1], m[2], m[3]
        );
    }
    println!(
        "after/before: rate {:.2}x, p99 {:.2}x, CPU per boot {:.2}x\n",
        medians[1][0] / medians[0][0],
        medians[1][1] / medians[0][1],
        medians[1][3] / medians[0][3]
    );
}
