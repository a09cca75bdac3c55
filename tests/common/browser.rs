//! Headless Chromium (Debian's `chromium` and `chromium-driver`) driven
//! over WebDriver with fantoccini, for the status page (DESIGN §11). The
//! driver's port is read from its own start line, never guessed. Missing
//! programs fail the test (see [`super::require_tool`]).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Far beyond any page action here; only a hung browser reaches it.
const GIVE_UP: Duration = Duration::from_secs(60);

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    /// A cold browser (a fresh profile) with a `width`×`height` window;
    /// screenshots go to `target/tmp/status-page/<group>/`.
    pub fn start(group: &str, width: u32, height: u32) -> Browser {
        let chromium = super::require_tool("chromium");
        super::require_tool("chromedriver");
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(GIVE_UP)
            .expect("chromedriver did not say its port");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root in a container: Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a WebDriver session in headless Chromium");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("status-page")
            .join(group);
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        Browser {
            runtime,
            client: Some(client),
            driver,
            shots,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("open session")
    }

    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` as WebDriver gives
    /// them) in the page and returns its value.
    pub fn js(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Polls `condition` (a JavaScript expression) until it is true.
    pub fn wait(&self, what: &str, condition: &str) {
        let script = format!("return !!({condition});");
        let started = std::time::Instant::now();
        while self.js(&script) != Value::Bool(true) {
            if started.elapsed() > GIVE_UP {
                let _ = self.screenshot(&format!("gave-up-{}", what.replace(' ', "-")));
                panic!("gave up waiting in the page for: {what} ({condition})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `op` on the first match of `css`. The page redraws its lists
    /// when live events come in; an element redrawn between finding and
    /// using it is found again (the redrawn one is the same row).
    fn on_element<T>(
        &self,
        css: &str,
        what: &str,
        op: impl AsyncFn(fantoccini::elements::Element) -> Result<T, fantoccini::error::CmdError>,
    ) -> T {
        let mut stale = 0;
        loop {
            let done = self.runtime.block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                op(element).await
            });
            match done {
                Ok(value) => return value,
                Err(e) if e.to_string().contains("stale element") && stale < 20 => stale += 1,
                Err(e) => panic!("{what} {css}: {e}"),
            }
        }
    }

    /// A real click (WebDriver's element click) on the first match,
    /// brought to the middle of the window first (a sticky header may
    /// cover the top).
    pub fn click(&self, css: &str) {
        let selector = serde_json::to_string(css).expect("selector");
        self.js(&format!(
            "const e = document.querySelector({selector}); if (e) e.scrollIntoView({{block: 'center'}}); return null;"
        ));
        self.on_element(css, "click", async |e| e.click().await);
    }

    /// Types `text` into the first match, as keystrokes.
    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "type into", async |e| {
            e.clear().await?;
            e.send_keys(text).await
        });
    }

    pub fn select(&self, css: &str, value: &str) {
        self.on_element(css, "select in", async |e| e.select_by_value(value).await);
    }

    pub fn text(&self, css: &str) -> String {
        self.on_element(css, "text of", async |e| e.text().await)
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(width, height))
            .expect("resize");
    }

    /// Writes a PNG of the window for people to look at; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
