//! The bench's the status page part: the page in headless Chromium.

use super::*;

/// Chromium's timing of the load just done, in milliseconds from the
/// navigation's start: (first contentful paint, DOM content loaded).
pub(crate) fn page_timing(browser: &browser::Browser) -> (f64, f64) {
    browser.wait(
        "the first paint",
        "performance.getEntriesByName('first-contentful-paint').length > 0",
    );
    let t = browser.js("const nav = performance.getEntriesByType('navigation')[0];
         return [performance.getEntriesByName('first-contentful-paint')[0].startTime,
                 nav.domContentLoadedEventEnd];");
    (
        t[0].as_f64().expect("paint time"),
        t[1].as_f64().expect("DOM time"),
    )
}

/// Issue 13: the status page's time to first render from a cold browser
/// (a new Chromium profile per run), served by the agent (10,000 nodes in
/// its store) vs the very same bytes served by nginx; runs interleaved.
/// Then the signed-in view: from the sign-in click until the node table
/// is drawn, with 10,000 nodes vs 100.
pub(crate) fn page_benchmark(dir: &Path) {
    const PAGE_RUNS: usize = 7;
    let mut agents = Vec::new();
    for nodes in [10_000u32, 100] {
        let case = dir.join(format!("page-{nodes}"));
        std::fs::create_dir_all(&case).expect("mkdir");
        let macs: Vec<Mac> = fleet(0x07, nodes);
        populate(&case, &macs, &[NodeState::Active, NodeState::Installed]);
        let (agent, http, _) = start_agent(&case, &case.join("boot-assets"));
        let token = admin_token_in(&case);
        agents.push((agent, http, token));
    }
    let (_, big_http, big_token) = &agents[0];
    let (_, small_http, small_token) = &agents[1];

    // nginx serves the page exactly as the agent rendered it.
    let web = dir.join("page-nginx");
    let root = web.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let html = Command::new("curl")
        .args(["-sS", &format!("http://{big_http}/")])
        .output()
        .expect("curl the page")
        .stdout;
    assert!(html.starts_with(b"<!doctype html>"), "the page");
    std::fs::write(root.join("index.html"), &html).expect("index.html");
    let (_nginx, nginx_port) = start_nginx(&web, &root, "default_type text/html;");

    let mut paint = [Vec::new(), Vec::new()];
    let mut dom = [Vec::new(), Vec::new()];
    let urls = [
        format!("http://{big_http}/"),
        format!("http://127.0.0.1:{nginx_port}/index.html"),
    ];
    for _ in 0..PAGE_RUNS {
        for (i, url) in urls.iter().enumerate() {
            let browser = browser::Browser::start("bench", 1280, 1000);
            browser.goto(url);
            let (p, d) = page_timing(&browser);
            paint[i].push(p);
            dom[i].push(d);
        }
    }
    println!("status page, cold headless Chromium, {PAGE_RUNS} runs each (median ms)");
    println!("{:<34} {:>12} {:>12}", "", "first paint", "DOM loaded");
    let (p_ours, d_ours) = (median(paint[0].clone()), median(dom[0].clone()));
    let (p_nginx, d_nginx) = (median(paint[1].clone()), median(dom[1].clone()));
    println!(
        "{:<34} {p_ours:>12.1} {d_ours:>12.1}",
        "siteboot GET / (10,000 nodes)"
    );
    println!(
        "{:<34} {p_nginx:>12.1} {d_nginx:>12.1}",
        "nginx, the same bytes"
    );
    println!(
        "siteboot/nginx: {:.2}x the first paint, {:.2}x DOM loaded\n",
        p_ours / p_nginx,
        d_ours / d_nginx
    );

    // Signed in: from the click until the node table is drawn.
    let mut drawn = [Vec::new(), Vec::new()];
    for _ in 0..PAGE_RUNS {
        for (i, (http, token, rows)) in [(big_http, big_token, 200), (small_http, small_token, 100)]
            .into_iter()
            .enumerate()
        {
            let browser = browser::Browser::start("bench", 1280, 1000);
            browser.goto(&format!("http://{http}/"));
            page_timing(&browser);
            browser.type_into("#token", token);
            browser.js(&format!(
                "window.__drawn = null; const t0 = performance.now();
                 new MutationObserver((m, o) => {{
                   if (document.querySelectorAll('#nodes tbody tr').length >= {rows}) {{
                     window.__drawn = performance.now() - t0; o.disconnect(); }}
                 }}).observe(document.getElementById('nodes'), {{childList: true, subtree: true}});
                 document.getElementById('signin-button').click(); return null;"
            ));
            browser.wait("the node table drawn", "window.__drawn !== null");
            drawn[i].push(browser.js("return window.__drawn;").as_f64().expect("ms"));
        }
    }
    let (big, small) = (median(drawn[0].clone()), median(drawn[1].clone()));
    println!("signed-in view, sign-in click to node table drawn (median ms)");
    println!("{:<34} {big:>12.1}", "10,000 nodes (200 shown)");
    println!("{:<34} {small:>12.1}", "100 nodes");
    println!("10,000 nodes / 100 nodes: {:.2}x\n", big / small);
}
