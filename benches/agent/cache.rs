//! The bench's the content-cache part: warm and cold reads against nginx.

use super::*;

/// Issue 12's figures. Cold: 200 concurrent clients of one uncached
/// 64 MiB file through the cache (one controller download) vs the same
/// 200 straight from the controller (what a proxy without a cache
/// forwards: one download each). Warm: the cached file over HTTP at 1 and
/// 64 clients vs nginx, and over TFTP vs tftpd-hpa, both serving the very
/// file the cache keeps.
pub(crate) fn cache_benchmark(dir: &Path, data: &[u8]) {
    const CLIENTS: usize = 200;
    let case = dir.join("cache");
    std::fs::create_dir_all(&case).expect("mkdir");
    let controller = controller::FakeController::start();
    controller.add_file("images/big.img", data);
    let env = [
        ("SITEBOOT_CENTRAL_URL", controller.url()),
        (
            "SITEBOOT_CENTRAL_TOKEN_FILE",
            controller.token_file().display().to_string(),
        ),
        ("SITEBOOT_SITE_ID", "bench".to_string()),
        ("SITEBOOT_CENTRAL_CHECK_INTERVAL", "100ms".to_string()),
        ("SITEBOOT_CENTRAL_SYNC_INTERVAL", "1h".to_string()),
    ];
    let (_agent, http, tftp) = start_agent_with(&case, &case.join("boot-assets"), &env);
    wait_for_mode(http, "online", Duration::from_secs(30)).expect("agent online");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The controller's own file route wants its bearer token.
    let token = std::fs::read_to_string(controller.token_file()).expect("token file");
    let token = token.trim().to_string();
    let fetch_all = |url: String| -> Duration {
        let token = token.clone();
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let started = Instant::now();
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    let token = token.clone();
                    tokio::spawn(async move {
                        let mut response = client
                            .get(&url)
                            .bearer_auth(&token)
                            .send()
                            .await
                            .expect("request");
                        assert_eq!(response.status(), 200);
                        let mut got = 0usize;
                        while let Some(chunk) = response.chunk().await.expect("body") {
                            got += chunk.len();
                        }
                        got
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("client"), FILE_SIZE, "short answer");
            }
            started.elapsed()
        })
    };
    let downloads = || {
        controller
            .calls_to("GET", "/api/v1/files/images/big.img")
            .len()
    };
    let through = fetch_all(format!("http://{http}/assets/images/big.img"));
    let through_downloads = downloads();
    let direct = fetch_all(format!("{}/api/v1/files/images/big.img", controller.url()));
    let direct_downloads = downloads() - through_downloads;
    let mb = |n: usize| (n * FILE_SIZE) as f64 / 1e6;
    println!("Cold: {CLIENTS} concurrent clients of one uncached 64 MiB file (127.0.0.1)");
    println!(
        "{:<44} {:>10} {:>14} {:>12}",
        "", "wall s", "controller MB", "clients MB/s"
    );
    for (name, took, n) in [
        ("through the content cache", through, through_downloads),
        (
            "straight from the controller (no cache)",
            direct,
            direct_downloads,
        ),
    ] {
        println!(
            "{name:<44} {:>10.2} {:>14.0} {:>12.0}",
            took.as_secs_f64(),
            mb(n),
            mb(CLIENTS) / took.as_secs_f64()
        );
    }
    println!(
        "the cache: {:.2}x the wall time, {:.3}x the controller's bytes\n",
        through.as_secs_f64() / direct.as_secs_f64(),
        through_downloads as f64 / direct_downloads.max(1) as f64
    );

    // The very file the cache keeps, for the references.
    let files = case.join("data").join("content").join("files");
    let cached_name = std::fs::read_dir(&files)
        .expect("content files")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("the cached file");
    let (_nginx, nginx_port) = start_nginx(
        &case,
        &files,
        "sendfile on; tcp_nopush on; keepalive_timeout 65; default_type application/octet-stream;",
    );
    let ours_url = format!("http://{http}/assets/images/big.img");
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/{cached_name}");
    let out = case.join("out.bin");
    let curl_to = |url: String| {
        move |out: &Path| {
            let mut c = Command::new("curl");
            c.args(["-sS", "-o"]).arg(out).arg(&url);
            c
        }
    };
    let mut single: Vec<ClientCommand> = vec![
        Box::new(curl_to(nginx_url.clone())),
        Box::new(curl_to(ours_url.clone())),
    ];
    let one = measure_all(&mut single, &out);
    // 64 clients at once, each fetching the file once to /dev/null.
    let parallel = |url: &str| -> f64 {
        let started = Instant::now();
        let children: Vec<_> = (0..64)
            .map(|_| {
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{size_download}", url])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("curl");
            let got: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            assert_eq!(got, FILE_SIZE, "short answer");
        }
        (64 * FILE_SIZE) as f64 / 1e6 / started.elapsed().as_secs_f64()
    };
    let mut many = (Vec::new(), Vec::new());
    for _ in 0..3 {
        many.0.push(parallel(&nginx_url));
        many.1.push(parallel(&ours_url));
    }
    let many = (median(many.0), median(many.1));
    println!(
        "Warm HTTP: the cached 64 MiB file, same disk (MB/s; 1 client: median of {RUNS}; 64: median of 3)"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "clients", "nginx", "siteboot", "siteboot/nginx"
    );
    println!(
        "{:<44} {:>10.0} {:>10.0} {:>13.2}x",
        "1",
        one[0],
        one[1],
        one[1] / one[0]
    );
    println!(
        "{:<44} {:>10.0} {:>10.0} {:>13.2}x",
        "64 at once",
        many.0,
        many.1,
        many.1 / many.0
    );
    println!("(target: siteboot >= 0.9x nginx)\n");

    let (_hpa, hpa) = tftpd_hpa(&files);
    std::thread::sleep(Duration::from_millis(300));
    let atftp = |port: u16, name: String, blksize: u32, window: u32| {
        move |out: &Path| {
            let mut c = Command::new("atftp");
            c.args(["--option", &format!("blksize {blksize}")]);
            if window > 1 {
                c.args(["--option", &format!("windowsize {window}")]);
            }
            c.args(["--get", "-r", &name, "-l"])
                .arg(out)
                .args(["127.0.0.1", &port.to_string()]);
            c
        }
    };
    println!("Warm TFTP: the cached 64 MiB file, atftp, median of {RUNS} interleaved runs (MB/s)");
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "options", "tftpd-hpa", "siteboot", "siteboot/hpa"
    );
    for blksize in [1468u32, 8192] {
        let mut commands: Vec<ClientCommand> = vec![
            Box::new(atftp(hpa, cached_name.clone(), blksize, 1)),
            Box::new(atftp(tftp.port(), "images/big.img".into(), blksize, 1)),
        ];
        let r = measure_all(&mut commands, &out);
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>13.2}x",
            format!("blksize {blksize}"),
            r[0],
            r[1],
            r[1] / r[0]
        );
        let windowed = measure(
            atftp(tftp.port(), "images/big.img".into(), blksize, 16),
            &out,
        );
        println!(
            "{:<44} {:>10} {:>10.1} {:>13.2}x",
            format!("blksize {blksize} windowsize 16"),
            "n/a",
            windowed,
            windowed / r[0]
        );
    }
    println!(
        "(windowsize: RFC 7440, which tftpd-hpa does not implement: that ratio is to its lockstep figure)\n"
    );
}
