//! The bench's before/after parts for the boot path (only when named):
//! `/api/v1/boot` of this build against an older one (`BENCH_BEFORE_BIN`),
//! the same fleet, runs interleaved: req/s and p99 under the speed part's
//! wrk load, and the agent's CPU per boot (what a change to the boot path
//! changes; the rate is bound as much by wrk sharing the cores).
//!
//! * `online-ab`: online, boots confirmed by the fake controller's change
//!   feed (also: feed calls per boot);
//! * `standalone-ab`: no controller, the store holds the fleet;
//! * `offline-ab`: the fleet cached, the controller's address dead.
//!
//! `BENCH_BEFORE_BIN=<older siteboot> cargo bench --bench agent -- online-ab`

use super::*;

/// Rounds of the A/B parts, unless `BENCH_AB_RUNS` says how many (the
/// difference sought may be as small as the run-to-run spread).
const RUNS: usize = 6;

fn ab_runs() -> usize {
    std::env::var("BENCH_AB_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(RUNS)
}

/// Which agent the boot A/B compares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootMode {
    Standalone,
    Offline,
    Online,
}

impl BootMode {
    fn name(self) -> &'static str {
        match self {
            BootMode::Standalone => "standalone",
            BootMode::Offline => "offline",
            BootMode::Online => "online (change feed)",
        }
    }
}

/// One build's agent in `mode`.
fn start_in_mode(
    mode: BootMode,
    binary: &Path,
    dir: &Path,
    root: &Path,
    controller: &controller::FakeController,
    macs: &[Mac],
) -> (Proc, SocketAddr) {
    match mode {
        BootMode::Online => {
            speed::start_online_binary(binary, dir, root, controller, macs, &FLEET_STATES)
        }
        BootMode::Standalone | BootMode::Offline => {
            std::fs::create_dir_all(dir).expect("mkdir");
            populate(dir, macs, &FLEET_STATES);
            let env = if mode == BootMode::Offline {
                let dead = format!("http://127.0.0.1:{}", free_tcp_port());
                speed::central_env(controller, dead)
            } else {
                Vec::new()
            };
            let (agent, addr, _) = start_binary_with(binary, dir, root, &env);
            if mode == BootMode::Offline {
                wait_for_mode(addr, "offline", Duration::from_secs(120)).expect("agent offline");
            }
            (agent, addr)
        }
    }
}

pub(crate) fn boot_before_after(dir: &Path, root: &Path, mode: BootMode) {
    let Some(before_bin) = std::env::var_os("BENCH_BEFORE_BIN") else {
        panic!("the boot A/B parts need BENCH_BEFORE_BIN, the path of the build to compare with");
    };
    let dir = dir.join(format!("boot-ab-{}", mode as u8));
    let macs = fleet(0x25, NODES);
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
            let (agent, addr) = start_in_mode(mode, binary, &agent_dir, root, &controller, &macs);
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
    let runs = ab_runs();
    for round in 0..runs {
        // Each build goes first in half of the rounds: whichever runs
        // second meets a machine the first has warmed.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (agent, addr, token) = &agents[i];
            let online = mode == BootMode::Online;
            let calls = if online {
                profile::feed_calls(*addr, token)
            } else {
                0.0
            };
            let cpu = profile::cpu_seconds(agent.0.id());
            let run = speed::wrk(*addr, &script);
            let boots = run.rate * f64::from(speed::WRK_SECONDS);
            let calls = if online {
                profile::feed_calls(*addr, token) - calls
            } else {
                0.0
            };
            let cpu = profile::cpu_seconds(agent.0.id()) - cpu;
            figures[i][0].push(run.rate);
            figures[i][1].push(run.p99_ms);
            figures[i][2].push(boots / calls.max(1.0));
            figures[i][3].push(cpu / boots * 1e6);
        }
    }
    println!(
        "/api/v1/boot {}, {NODES} MACs, wrk -t2 -c64, medians of {runs} interleaved runs, \
         each build first in half of them",
        mode.name()
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
        // Only an online agent makes feed calls.
        let per_call = if mode == BootMode::Online {
            format!("{:.1}", m[2])
        } else {
            "-".to_string()
        };
        println!(
            "{name:<8} {:>10.0} {:>9.2} {per_call:>15} {:>18.2}",
            m[0], m[1], m[3]
        );
    }
    println!(
        "after/before: rate {:.2}x, p99 {:.2}x, CPU per boot {:.2}x\n",
        medians[1][0] / medians[0][0],
        medians[1][1] / medians[0][1],
        medians[1][3] / medians[0][3]
    );
}
