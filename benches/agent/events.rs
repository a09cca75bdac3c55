//! The bench's the events part: boots with live-event clients connected.

use super::*;

/// Issue 13's figures: `/api/v1/boot` at 64 connections (metrics always
/// on) with no client of `/api/v1/events`, then 50, then 200 connected
/// (each receives the `boots` events), interleaved with runs without.
pub(crate) fn events_benchmark(dir: &Path) {
    let dir = dir.join("events");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let macs: Vec<Mac> = fleet(0x06, NODES);
    populate(&dir, &macs, &[NodeState::Active, NodeState::Installed]);
    let (_agent, http, _) = start_agent(&dir, &dir.join("boot-assets"));
    let token = admin_token_in(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The event clients: read and drop what arrives, counting bytes.
    let listeners = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connect = |n: usize| -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (token, received) = (token.clone(), received.clone());
            tasks.push(listeners.spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
                let request = format!(
                    "GET /api/v1/events HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.expect("request");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
        tasks
    };
    println!(
        "/api/v1/boot, {NODES} nodes, {CLIENTS} keep-alive clients, {}s each, with clients of /api/v1/events connected",
        HTTP_MEASURE.as_secs()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9}",
        "event clients", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut rows: Vec<(String, LoadResult)> = Vec::new();
    for clients in [0usize, 50, 0, 200] {
        let tasks = connect(clients);
        let before = received.load(std::sync::atomic::Ordering::Relaxed);
        let result = runtime.block_on(load(http, macs.clone(), Endpoint::Boot));
        let bytes = received.load(std::sync::atomic::Ordering::Relaxed) - before;
        for task in tasks {
            task.abort();
        }
        std::thread::sleep(Duration::from_millis(300));
        let name = format!("{clients} ({} MB of events read)", bytes / 1_000_000);
        print_row(&name, &result);
        rows.push((name, result));
    }
    let base = (rows[0].1.rate + rows[2].1.rate) / 2.0;
    let base_p99 = (rows[0].1.p99 + rows[2].1.p99) / 2.0;
    for (name, result) in [&rows[1], &rows[3]] {
        println!(
            "{name}: {:.2}x the requests/s, {:.2}x the p99 of the runs without",
            result.rate / base,
            result.p99 / base_p99
        );
    }
    println!("(target: 200 event clients cost at most 5% of the requests/s)\n");
}
