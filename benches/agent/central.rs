//! The bench's the central part: boots while the controller is slow, dies or black-holes connections.

use super::*;

/// DESIGN §1: a boot never waits on the controller longer than the lookup
/// deadline. Latency with a healthy, a slow (2 s) and a dead controller,
/// then how long the agent takes to notice a dead controller.
pub(crate) fn central_benchmark(dir: &Path) {
    let macs: Vec<Mac> = fleet(0x01, NODES);
    let controller = controller::FakeController::start();
    for mac in &macs {
        controller.set_node(&mac.to_string(), "active", None);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "/api/v1/boot with a controller (deadline 300 ms), {NODES} nodes, {CLIENTS} concurrent clients, {}s each",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "controller", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    // What happens to the controller during the measured run: nothing,
    // or, 3 s in, its socket closes (it dies under load) or it stops
    // answering while keeping connections open (a black hole).
    #[derive(Clone, Copy, PartialEq)]
    enum Midway {
        Nothing,
        Dies,
        BlackHoles,
    }
    let cases: [(&str, Option<controller::Mode>, Midway); 5] = [
        (
            "(a) healthy (target p99 < 5 ms)",
            Some(controller::Mode::Healthy),
            Midway::Nothing,
        ),
        (
            "(b) answers after 2 s (p99 < 305 ms)",
            Some(controller::Mode::Slow(Duration::from_secs(2))),
            Midway::Nothing,
        ),
        ("(c) down from the start", None, Midway::Nothing),
        (
            "(d) dies 3 s into the run",
            Some(controller::Mode::Healthy),
            Midway::Dies,
        ),
        (
            "(e) black-holes 3 s into the run",
            Some(controller::Mode::Healthy),
            Midway::BlackHoles,
        ),
    ];
    for (name, mode, midway) in cases {
        let case_dir = dir.join(format!("central-{}", &name[1..2]));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        populate(&case_dir, &macs, &[NodeState::Active]);
        match mode {
            Some(mode) => {
                controller.up_if_down();
                controller.set_mode(mode);
            }
            None => controller.down(),
        }
        let env = [
            ("SITEBOOT_CENTRAL_URL", controller.url()),
            (
                "SITEBOOT_CENTRAL_TOKEN_FILE",
                controller.token_file().display().to_string(),
            ),
            ("SITEBOOT_SITE_ID", "bench".to_string()),
        ];
        let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
        if mode == Some(controller::Mode::Healthy) {
            wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");
        }
        let result = std::thread::scope(|scope| {
            if midway != Midway::Nothing {
                let controller = &controller;
                scope.spawn(move || {
                    std::thread::sleep(HTTP_WARMUP + Duration::from_secs(3));
                    match midway {
                        Midway::Dies => controller.down(),
                        _ => controller.set_mode(controller::Mode::Slow(Duration::from_secs(3600))),
                    }
                });
            }
            runtime.block_on(load(http, macs.clone(), Endpoint::Boot))
        });
        print_row(name, &result);
    }
    controller.up_if_down();
    controller.set_mode(controller::Mode::Healthy);
    println!(
        "\nTime from the controller's socket closing to mode=offline (no boot traffic: probes only)"
    );
    for (name, interval) in [
        ("defaults (check_interval 30s, threshold 3)", None),
        ("check_interval 1s", Some("1s")),
    ] {
        let case_dir = dir.join(format!("offline-{}", interval.unwrap_or("default")));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        let mut env = vec![
            ("SITEBOOT_CENTRAL_URL", controller.url()),
            (
                "SITEBOOT_CENTRAL_TOKEN_FILE",
                controller.token_file().display().to_string(),
            ),
        ];
        if let Some(interval) = interval {
            env.push(("SITEBOOT_CENTRAL_CHECK_INTERVAL", interval.to_string()));
        }
        controller.up_if_down();
        let (_agent, http, _) = start_agent_with(&case_dir, &case_dir.join("boot-assets"), &env);
        wait_for_mode(http, "online", Duration::from_secs(60)).expect("agent online");
        controller.down();
        match wait_for_mode(http, "offline", Duration::from_secs(180)) {
            Some(took) => println!("{name:<44} {:>8.1} s", took.as_secs_f64()),
            None => println!("{name:<44} not offline after 180 s"),
        }
    }
    println!();
}
