//! Test harness: runs the real `siteboot` binary on 127.0.0.1 with its own
//! data directory, and the real clients (curl, tftp, atftp, QEMU) against it.
//! A missing client is a failure, never a skip.

// Test helpers fail loudly on what they cannot do: unwrap and expect
// are how a test says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

pub mod browser;
pub mod controller;
pub mod pureboot;
pub mod segment;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_siteboot");

/// Fails the test (does not skip it) when a client program is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "required client `{name}` is not installed; run scripts/install-test-deps.sh (the test fails rather than skipping)"
        ),
    }
}

pub struct AgentBuilder {
    dir: tempfile::TempDir,
    config: String,
    env: Vec<(String, String)>,
}

pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub tftp: SocketAddr,
    /// ProxyDHCP's DHCP port and PXE port, when `dhcp.mode = proxy`.
    pub dhcp: Option<(SocketAddr, SocketAddr)>,
    stderr: mpsc::Receiver<String>,
    /// Log lines read from `stderr` so far.
    log: std::cell::RefCell<Vec<String>>,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl AgentBuilder {
    pub fn new() -> AgentBuilder {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("boot-assets")).expect("mkdir boot-assets");
        std::fs::create_dir(dir.path().join("templates")).expect("mkdir templates");
        AgentBuilder {
            dir,
            config: String::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Extra TOML appended to the generated configuration file.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// Site `fra1` at `controller`, probed every 200 ms with 2 s per call
    /// (tests of outages), plus `central`: more `[central]` lines.
    pub fn watching(self, controller: &controller::FakeController, central: &str) -> Self {
        self.env("SITEBOOT_SITE_ID", "fra1").config(&format!(
            "[central]\n{}check_interval = \"200ms\"\nrequest_timeout = \"2s\"\n{central}",
            controller.central_toml()
        ))
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the agent inside network namespace `name` (`ip netns exec`).
    pub fn netns(self, name: &str) -> Self {
        self.env(NETNS_VAR, name)
    }

    /// Runs the agent as the packaged unit does: an unprivileged user
    /// (`nobody` here) with CAP_NET_BIND_SERVICE and no other capability
    /// (`setpriv`), from a copy of the binary in its own directory.
    pub fn unprivileged(self) -> Self {
        self.env(UNPRIVILEGED_VAR, "1")
    }

    /// Starts the agent with this open-file limit (kept across restarts).
    pub fn file_limit(self, limit: u64) -> Self {
        self.env(FILE_LIMIT_VAR, &limit.to_string())
    }

    pub fn asset(self, name: &str, bytes: &[u8]) -> Self {
        let path = self.dir.path().join("boot-assets").join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir asset dir");
        }
        std::fs::write(path, bytes).expect("write asset");
        self
    }

    pub fn template(self, name: &str, text: &str) -> Self {
        std::fs::write(self.dir.path().join("templates").join(name), text).expect("write template");
        self
    }

    fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("siteboot.toml");
        let text = format!(
            "data_dir = \"{dir}/data\"\n[tftp]\nlisten = \"127.0.0.1:0\"\nroot = \"{dir}/boot-assets\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[templates]\ndir = \"{dir}/templates\"\n{extra}",
            dir = self.dir.path().display(),
            extra = self.config
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Runs `siteboot <args> --config <generated>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config_path(), &self.env, args)
    }

    /// Like [`cli`], asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "siteboot {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `siteboot serve` and waits until it listens.
    pub fn start(self) -> Agent {
        let config = self.config_path();
        spawn_agent(self.dir, config, self.env)
    }

    /// Runs `siteboot serve` expecting it to fail at start-up; returns stderr.
    pub fn start_fails(self) -> String {
        let config = self.config_path();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&config);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run siteboot serve");
        assert!(
            !out.status.success(),
            "serve was expected to fail at start-up"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn run_cli(config: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run siteboot")
}

fn spawn_agent(dir: tempfile::TempDir, config: PathBuf, env: Vec<(String, String)>) -> Agent {
    let ready = dir.path().join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let program = agent_program(dir.path(), &env);
    let mut cmd = match env.iter().find(|(k, _)| k == NETNS_VAR) {
        Some((_, netns)) => {
            let mut cmd = Command::new("ip");
            // `ip netns exec` execs the program (and setpriv execs the
            // agent): the child is the agent.
            cmd.args(["netns", "exec", netns]).args(&program);
            cmd
        }
        None => {
            let mut cmd = Command::new(&program[0]);
            cmd.args(&program[1..]);
            cmd
        }
    };
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("SITEBOOT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    if let Some(limit) = env
        .iter()
        .find(|(k, _)| k == FILE_LIMIT_VAR)
        .and_then(|(_, v)| v.parse::<libc::rlim_t>().ok())
    {
        use std::os::unix::process::CommandExt;
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit is async-signal-safe and touches nothing but
        // the child's own limit, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn siteboot serve");
    let stderr = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The agent writes its addresses to the ready file once both servers
    // listen; the ports are learnt from it, never guessed.
    let started = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let doc: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("ready file {text:?}: {e}"));
            let addr = |key: &str| -> SocketAddr {
                doc[key]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("ready file lacks {key}: {text}"))
            };
            let optional = |key: &str| doc[key].as_str().and_then(|a| a.parse().ok());
            return Agent {
                http: addr("http"),
                tftp: addr("tftp"),
                dhcp: optional("dhcp").zip(optional("dhcp_pxe")),
                child,
                dir,
                stderr: rx,
                log: Default::default(),
                config,
                env,
            };
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || started.elapsed() > AGENT_START_GIVE_UP {
            let _ = child.kill();
            let _ = child.wait();
            let seen: Vec<String> = rx.try_iter().collect();
            panic!(
                "agent did not start ({}); its output:\n{}",
                match exited {
                    Some(status) => format!("exited with {status}"),
                    None => "gave up waiting".into(),
                },
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Carries [`AgentBuilder::file_limit`] to every start of the agent.
const FILE_LIMIT_VAR: &str = "AGENT_TEST_FILE_LIMIT";
/// Carries [`AgentBuilder::netns`] to every start of the agent.
const NETNS_VAR: &str = "AGENT_TEST_NETNS";
/// Carries [`AgentBuilder::unprivileged`] to every start of the agent.
const UNPRIVILEGED_VAR: &str = "AGENT_TEST_UNPRIVILEGED";
/// `nobody`.
const UNPRIVILEGED_ID: u32 = 65534;

/// The program and arguments that start the agent: as root, or as
/// [`AgentBuilder::unprivileged`] says (the directory and a copy of the
/// binary then belong to that user).
fn agent_program(dir: &Path, env: &[(String, String)]) -> Vec<String> {
    if !env.iter().any(|(k, _)| k == UNPRIVILEGED_VAR) {
        return vec![BIN.to_string()];
    }
    require_tool("setpriv");
    let copy = dir.join("siteboot-unprivileged");
    if !copy.exists() {
        std::fs::copy(BIN, &copy).expect("copy the agent's binary");
    }
    chown_tree(dir);
    let id = UNPRIVILEGED_ID.to_string();
    [
        "setpriv",
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
        copy.to_str().expect("utf-8 path"),
    ]
    .map(String::from)
    .to_vec()
}

fn chown_tree(path: &Path) {
    std::os::unix::fs::chown(path, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
        .expect("chown (the test needs root)");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&entry.expect("dir entry").path());
        }
    }
}

/// Far beyond a normal start (milliseconds); only a hung agent reaches it.
const AGENT_START_GIVE_UP: Duration = Duration::from_secs(120);

impl Agent {
    /// The agent's peak resident memory so far, in bytes (Linux VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<agent>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmHWM in /proc/<agent>/status")
    }

    /// A line of `/proc/<agent>/status` (`Uid`, `CapEff`, …), its value.
    pub fn proc_status(&self, key: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<agent>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{key} in /proc/<agent>/status"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn assets_dir(&self) -> PathBuf {
        self.dir.path().join("boot-assets")
    }

    /// Runs `siteboot <args> --config <this agent's config>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config, &self.env, args)
    }

    /// Stops the agent (SIGKILL) and keeps its directory, for commands
    /// that need the database to themselves.
    pub fn stop(mut self) -> StoppedAgent {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log_lines();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        StoppedAgent {
            dir,
            config: self.config.clone(),
            env: self.env.clone(),
            log,
        }
    }

    /// Sends SIGTERM without waiting (a test that must act between the
    /// signal and the exit); `terminate` may follow, the agent ignores
    /// a second SIGTERM.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Asks the agent to stop (SIGTERM) and waits for it to exit (a guard
    /// against a hang, not a speed assertion); keeps its directory.
    pub fn terminate(mut self) -> (std::process::ExitStatus, StoppedAgent) {
        self.signal_term();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                panic!(
                    "the agent did not stop after SIGTERM; its log:\n{}",
                    self.log_lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The rest of its log (the stderr pipe is closed now).
        let log = self.log_lines();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (
            status,
            StoppedAgent {
                dir,
                config: self.config.clone(),
                env: self.env.clone(),
                log,
            },
        )
    }

    /// Kills the agent with SIGKILL (no chance to clean up) and starts it
    /// again on the same configuration and data directory.
    pub fn kill_and_restart(mut self) -> Agent {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let config = self.config.clone();
        let env = self.env.clone();
        drop(self);
        spawn_agent(dir, config, env)
    }

    /// Kills the agent and starts it again on the same data directory and
    /// the same HTTP port (the one it was given at its first start), as a
    /// service restart looks to a browser that keeps the page open.
    pub fn kill_and_restart_on_same_port(mut self) -> Agent {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let pinned = text.replacen(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"{}\"", self.http),
            1,
        );
        assert_ne!(pinned, text, "the generated config names the HTTP listener");
        std::fs::write(&self.config, pinned).expect("write config");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let config = self.config.clone();
        let env = self.env.clone();
        drop(self);
        spawn_agent(dir, config, env)
    }

    /// Log lines the agent has written so far.
    pub fn log_lines(&self) -> Vec<String> {
        let mut log = self.log.borrow_mut();
        log.extend(self.stderr.try_iter());
        log.clone()
    }

    /// Waits until a log line contains `wanted` (a line is asserted on only
    /// once it has been written); returns the whole log so far.
    pub fn wait_for_log(&self, wanted: &str) -> String {
        let mut found = false;
        wait_until(
            Duration::from_secs(60),
            &format!("a log line containing {wanted:?}"),
            || {
                found = self.log_lines().iter().any(|l| l.contains(wanted));
                found
            },
        );
        self.log_lines().join("\n")
    }
}

/// An agent's directory and configuration, without a running process.
pub struct StoppedAgent {
    pub dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Its whole log, to the last line.
    pub log: Vec<String>,
}

impl StoppedAgent {
    /// Its log says it stopped with every task joined (none was still
    /// running when the shutdown grace ran out).
    pub fn assert_every_task_joined(&self) {
        let log = self.log.join("\n");
        assert!(log.contains("siteboot agent stopped"), "{log}");
        assert!(
            !log.contains("still running after the grace period"),
            "a task outlived the shutdown: {log}"
        );
    }
}

impl StoppedAgent {
    /// The agent's directory (its database is `data/siteboot.redb`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config, &self.env, args)
    }

    pub fn start(self) -> Agent {
        spawn_agent(self.dir, self.config, self.env)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl and returns (HTTP status, headers, body bytes).
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    require_tool("curl");
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let split = body
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("status suffix");
    let status: u16 = String::from_utf8_lossy(&body[split + 1..])
        .trim()
        .parse()
        .expect("status");
    body.truncate(split);
    let headers = std::fs::read_to_string(headers).unwrap_or_default();
    (status, headers, body)
}

/// Runs curl where the answer may break off: (the HTTP status if the
/// transfer completed, curl's stderr, the bytes received).
pub fn curl_lenient(args: &[&str]) -> (Option<u16>, String, Vec<u8>) {
    require_tool("curl");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n');
    let status = split.and_then(|at| {
        String::from_utf8_lossy(&body[at + 1..])
            .trim()
            .parse::<u16>()
            .ok()
    });
    if let Some(at) = split {
        body.truncate(at);
    }
    (status.filter(|_| out.status.success()), stderr, body)
}

pub fn curl_text(url: &str) -> (u16, String) {
    let (status, _, body) = curl(&[url]);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Deterministic pseudo-random bytes (so failures are reproducible).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Polls `check` until it holds; panics with `what` after `limit` (a guard
/// against hanging, not a speed assertion).
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        if started.elapsed() > limit {
            panic!("gave up waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's admin token (created at start in its data directory).
pub fn admin_token(agent: &Agent) -> String {
    std::fs::read_to_string(agent.data_dir().join("admin.token"))
        .expect("admin token file")
        .trim()
        .to_string()
}

/// An admin API call with the agent's token: the status and the JSON
/// answer (null when the answer is not JSON).
pub fn admin_call(
    agent: &Agent,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = format!("Authorization: Bearer {}", admin_token(agent));
    let url = agent.url(path);
    let mut args = vec!["-X", method, "-H", auth.as_str()];
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "--data", body]);
    }
    args.push(&url);
    let (status, _, bytes) = curl(&args);
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// `[central]` and `[queue]` for a test that watches the agent go offline
/// and come back quickly: probes every 200 ms, one failure or success
/// flips the mode, retries within half a second.
pub fn quick_link_config(controller: &controller::FakeController) -> String {
    format!(
        "[central]\n{}check_interval = \"200ms\"\nrequest_timeout = \"2s\"\n\
         boot_lookup_deadline = \"300ms\"\nfailure_threshold = 1\nrecovery_threshold = 1\n\
         heartbeat_interval = \"1s\"\nsync_interval = \"60s\"\n\
         [queue]\nretry_base = \"100ms\"\nretry_max = \"400ms\"\nmax_retries = 5\nbatch_size = 20\n",
        controller.central_toml()
    )
}

/// GET a JSON document.
pub fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = curl_text(url);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// The agent's `mode` (standalone, online or offline) from its status.
pub fn mode(agent: &Agent) -> String {
    get_json(&agent.url("/api/v1/status"))["mode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A small tmpfs mounted for one test, unmounted when dropped.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Needs root (CI runs as root); fails the test otherwise, never skips.
    pub fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mkdir mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at.to_path_buf())
    }

    /// Fills the disk with a file but for `room` bytes; returns its path.
    pub fn fill_leaving(&self, room: u64) -> std::path::PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0xa5u8; 16 * 1024];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(room))
            .expect("shrink filler");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Makes every stored record holding `needle` unreadable: its byte at
/// `offset` (within the needle) becomes a control character, which JSON
/// does not allow in a string. The database file stays sound (redb keeps
/// no checksum of a value); only those records fail to decode.
pub fn corrupt_records(database: &Path, needle: &[u8], offset: usize) {
    let mut bytes = std::fs::read(database).expect("read database");
    let mut flipped = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        bytes[at + i + offset] = 0x01;
        flipped += 1;
        at += i + needle.len();
    }
    assert!(flipped > 0, "the record's bytes were found in the file");
    std::fs::write(database, bytes).expect("write database");
}

/// A small Linux for boot tests: Debian's cloud kernel (signed for Secure
/// Boot) and a busybox initrd whose `/init` prints `SITEBOOT-LINUX-UP
/// kernel=…` and powers off (`tests/harness/linux-assets.sh`, kept under
/// the target directory between runs).
pub fn linux_assets() -> (Vec<u8>, Vec<u8>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-assets");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/linux-assets.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run linux-assets.sh");
    assert!(
        out.status.success(),
        "linux-assets.sh (needs busybox-static, cpio and Debian's archive): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read(dir.join(name)).expect("linux asset");
    (read("vmlinuz"), read("initrd.gz"))
}

/// DESIGN §8: opens a state conflict on `mac` the way an outage does, and
/// returns its id: the controller goes down, the site retires the node,
/// the controller meanwhile sets it to `reprovision` with `workflow`, and
/// comes back. The agent is configured with `state_mismatch = "manual"`.
pub fn open_retired_vs_reprovision_conflict(
    agent: &Agent,
    controller: &controller::FakeController,
    mac: &str,
    workflow: &str,
) -> u64 {
    let status = || get_json(&agent.url("/api/v1/status"));
    let limit = Duration::from_secs(60);
    controller.down();
    wait_until(limit, "offline", || status()["mode"] == "offline");
    let (code, answer) = admin_call(
        agent,
        "PATCH",
        &format!("/api/v1/nodes/{mac}/state"),
        Some(r#"{"state": "retired", "comment": "retired at the site"}"#),
    );
    assert_eq!(code, 202, "{answer}");
    controller.set_node(mac, "reprovision", Some(workflow));
    controller.up();
    wait_until(limit, "the conflict open", || {
        status()["conflicts_pending"] == 1
    });
    let (code, list) = admin_call(agent, "GET", "/api/v1/conflicts?status=open", None);
    assert_eq!(code, 200, "{list}");
    list["data"][0]["id"].as_u64().expect("conflict id")
}
