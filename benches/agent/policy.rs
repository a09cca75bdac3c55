//! The bench's policy part (DESIGN §15): WAN bytes for one sync and its
//! prefetch under the cache policies `minimal`, `assigned` and `mirror`
//! on one fleet (100 nodes, 5 workflows), and what reading the site
//! policy adds to a registration (the site record's call, and the time
//! from start to an agent online with the controller's policy).

use super::*;

const FLEET: u32 = 100;
const WORKFLOWS: [&str; 5] = ["debian", "ubuntu", "rocky", "alma", "rescue"];
const KERNEL: usize = 8 << 20;
const INITRD: usize = 32 << 20;

pub(crate) fn policy_benchmark(dir: &Path) {
    println!("site policy: WAN bytes for one sync + prefetch, {FLEET} nodes, 5 workflows");
    println!(
        "(kernel {} MiB + initrd {} MiB each; 20 nodes pending on 2 workflows, `rescue` offline_safe)",
        KERNEL >> 20,
        INITRD >> 20
    );
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>10}",
        "policy", "files", "file bytes", "API bytes", "vs mirror"
    );
    let kernel = vec![7u8; KERNEL];
    let initrd = vec![9u8; INITRD];
    let mut rows = Vec::new();
    for policy in ["minimal", "assigned", "mirror"] {
        let controller = controller::FakeController::start();
        for id in WORKFLOWS {
            controller.add_file(&format!("{id}/vmlinuz"), &kernel);
            controller.add_file(&format!("{id}/initrd.gz"), &initrd);
            controller.add_workflow(serde_json::json!({"id": id, "name": id, "method": "kernel",
                "kernel": format!("{id}/vmlinuz"), "initrd": [format!("{id}/initrd.gz")],
                "offline_safe": id == "rescue"}));
        }
        for (i, mac) in fleet(0x51, FLEET).iter().enumerate() {
            let (state, workflow) = match i % 5 {
                0 => ("pending", WORKFLOWS[i % 2]),
                _ => ("active", WORKFLOWS[i % 4]),
            };
            controller.set_node(&mac.to_string(), state, Some(workflow));
        }
        controller.set_site_policy(serde_json::json!({"cache_policy": policy}));
        let case = dir.join(format!("policy-{policy}"));
        std::fs::create_dir_all(&case).expect("mkdir");
        let env = [
            ("SITEBOOT_CENTRAL_URL", controller.url()),
            (
                "SITEBOOT_CENTRAL_TOKEN_FILE",
                controller.token_file().display().to_string(),
            ),
            ("SITEBOOT_SITE_ID", "bench".to_string()),
            ("SITEBOOT_CACHE_PREFETCH_RATE", "1 GB/s".to_string()),
        ];
        let (_agent, http, _) = start_agent_with(&case, &case.join("boot-assets"), &env);
        wait_for_mode(http, "online", Duration::from_secs(30)).expect("online");
        // Settled: the prefetch pass has ended when the controller's file
        // calls have stopped growing for two seconds.
        let mut seen = usize::MAX;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            let now = controller.calls_to("GET", "/api/v1/files/").len();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let files = controller.calls_to("GET", "/api/v1/files/");
        let file_bytes: usize = files
            .iter()
            .map(|c| {
                if c.path.ends_with("vmlinuz") {
                    KERNEL
                } else {
                    INITRD
                }
            })
            .sum();
        // The API answers, measured by asking the same calls again.
        let api_bytes: usize = controller
            .calls()
            .iter()
            .filter(|c| !c.path.starts_with("/api/v1/files/") && c.method == "GET")
            .map(|c| answer_bytes(&controller, &c.path, &c.query))
            .sum();
        rows.push((policy, files.len(), file_bytes, api_bytes));
    }
    let mirror = rows.last().map_or(1, |r| r.2 + r.3).max(1);
    for (policy, files, file_bytes, api_bytes) in &rows {
        println!(
            "{policy:<10} {files:>8} {file_bytes:>14} {api_bytes:>14} {:>9.3}×",
            (file_bytes + api_bytes) as f64 / mirror as f64
        );
    }
    registration_cost(dir);
}

/// The body length of a GET the controller answers now.
fn answer_bytes(controller: &controller::FakeController, path: &str, query: &str) -> usize {
    let url = if query.is_empty() {
        format!("{}{path}", controller.url())
    } else {
        format!("{}{path}?{query}", controller.url())
    };
    let token = std::fs::read_to_string(controller.token_file()).expect("token");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            &url,
        ])
        .output()
        .expect("curl");
    out.stdout.len()
}

/// What reading the policy adds at registration, against the PureBoot
/// fake (its registration answer and site record, as PureBoot's code
/// shapes them): 10 starts each, interleaved, of this build and, when
/// `BENCH_BEFORE_BIN` names one, a build from before the policy was read;
/// time from the process's start to its first heartbeat at the controller
/// (it follows the registration, and now the site record), and the
/// controller calls' own times from the agent's `/metrics`.
fn registration_cost(dir: &Path) {
    let controller = controller::FakeController::pureboot();
    controller.set_site_policy(serde_json::json!({"autonomy_level": "limited",
        "cache_policy": "minimal", "conflict_resolution": "central_wins"}));
    let before = std::env::var_os("BENCH_BEFORE_BIN").map(std::path::PathBuf::from);
    let after = std::path::PathBuf::from(env!("CARGO_BIN_EXE_siteboot"));
    let mut builds = vec![("after", after)];
    if let Some(path) = before {
        builds.insert(0, ("before", path));
    }
    let mut ready: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    let mut register = Vec::new();
    let mut record = Vec::new();
    for run in 0..10 {
        for (b, (name, binary)) in builds.iter().enumerate() {
            let case = dir.join(format!("policy-registration-{name}-{run}"));
            std::fs::create_dir_all(&case).expect("mkdir");
            let env = [
                ("SITEBOOT_CENTRAL_URL", controller.url()),
                (
                    "SITEBOOT_CENTRAL_TOKEN_FILE",
                    controller.token_file().display().to_string(),
                ),
                (
                    "SITEBOOT_CENTRAL_REGISTRATION_TOKEN_FILE",
                    controller
                        .token_file()
                        .with_file_name("site-token")
                        .display()
                        .to_string(),
                ),
                ("SITEBOOT_SITE_ID", pureboot::SITE_ID.to_string()),
                ("SITEBOOT_METRICS_OPEN", "true".to_string()),
            ];
            let heartbeats = controller
                .calls_to("POST", "/api/v1/agents/heartbeat")
                .len();
            let started = Instant::now();
            let (_agent, http, _) =
                start_binary_with(binary, &case, &case.join("boot-assets"), &env);
            while controller
                .calls_to("POST", "/api/v1/agents/heartbeat")
                .len()
                == heartbeats
            {
                assert!(started.elapsed() < Duration::from_secs(30), "no heartbeat");
                std::thread::sleep(Duration::from_millis(1));
            }
            ready[b].push(started.elapsed().as_secs_f64() * 1000.0);
            if *name == "after" {
                let (reg, rec) = call_times(http);
                register.push(reg);
                record.push(rec);
            }
        }
    }
    println!("site policy at registration (PureBoot fake, 10 starts each, interleaved, medians):");
    for (b, (name, _)) in builds.iter().enumerate() {
        println!(
            "  {name:<7} start → first heartbeat {:>8.1} ms",
            median(ready[b].clone())
        );
    }
    if builds.len() == 2 {
        println!(
            "  after / before                  {:>8.2}×",
            median(ready[1].clone()) / median(ready[0].clone())
        );
    }
    let (reg, rec) = (median(register), median(record));
    println!(
        "  registration call {reg:>6.2} ms, site record call {rec:>6.2} ms (this build's /metrics)"
    );
}

/// The agent's summed times of its registration and site record calls
/// (one each after a start), in ms.
fn call_times(http: SocketAddr) -> (f64, f64) {
    let metrics = Command::new("curl")
        .args(["-sS", &format!("http://{http}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&metrics.stdout);
    let sum = |call: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with("siteboot_controller_call_seconds_sum")
                    && l.contains(&format!("call=\"{call}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            * 1000.0
    };
    (sum("register_agent"), sum("site_record"))
}
