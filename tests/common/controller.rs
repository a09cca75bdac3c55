//! A fake central controller over real HTTP on 127.0.0.1, recording every
//! call. It speaks one of two dialects: DESIGN §6 to the letter, or the
//! way PureBoot's central really answers (`super::pureboot`). Either can be
//! made healthy, slow, erroring, garbage-answering, or down (its socket
//! closed); the test controls (nodes, files, injections) are the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The bearer token the §6 fake wants on every call but `/health`
/// (DESIGN §6: every call carries `Authorization: Bearer <token>`).
pub const DESIGN_TOKEN: &str = "design-fake-token-7f3a";

/// Which controller the fake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// DESIGN §6 to the letter.
    Design,
    /// Shaped like PureBoot's central as it really answers.
    PureBoot,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Healthy,
    /// Answers after this long.
    Slow(Duration),
    /// Node lookups (`GET /api/v1/nodes…`) answer after this long; the
    /// health check, heartbeats and everything else stay prompt, so the
    /// agent stays online however long a test takes to send its boots.
    SlowLookups(Duration),
    /// Only the change feed (`GET /api/v1/sites/…/nodes?since=`) answers
    /// after this long; the rest stays prompt.
    SlowFeed(Duration),
    /// Every API call answers 500 (the controller is up but wrong; its
    /// health check still answers).
    Erroring,
    /// Writes (every call but a GET and the heartbeat) answer 500; reads
    /// are answered: the agent's changes stay queued while it is online.
    RefusingWrites,
    /// Every call, health check included, answers 502: a reverse proxy
    /// in front of a controller that is gone.
    BadGateway,
    /// Writes are applied, then the answer is held this long: the answer
    /// lost after the write landed, the case idempotency keys exist for.
    ApplyThenStall(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Every API call (not the health check) answers 200 with a body of
    /// this many bytes, streamed without a Content-Length: a controller
    /// that would take the agent's memory.
    Huge(usize),
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    /// The status the fake answered with (0 while it has not answered).
    pub status: u16,
}

/// What the §6 fake's key store does with a key it has answered before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStore {
    /// Replays the first answer, whatever the body (many controllers).
    Replay,
    /// The IETF idempotency draft: the first answer for the same body,
    /// 422 for a different body under a used key.
    Ietf,
}

/// One idempotency key as a real key store holds it.
#[derive(Debug, Clone)]
pub(super) enum KeyState {
    /// The first request with it is still running: a second gets 409.
    InFlight,
    /// Answered: the request's body, and the answer given (every answer,
    /// errors included).
    Answered {
        request: Value,
        status: u16,
        answer: Bytes,
    },
}

/// A write the controller applied (a repeated idempotency key is answered
/// from the first application and not recorded again).
#[derive(Debug, Clone)]
pub struct Applied {
    /// `register`, `set_state` or `report`.
    pub op: String,
    pub key: Option<String>,
    pub mac: String,
    pub body: Value,
}

/// A scripted answer for the next `times` requests whose path contains
/// `path_contains` (and, if set, whose body mentions `body_contains`).
#[derive(Debug, Clone)]
pub(super) struct Injection {
    method: String,
    path_contains: String,
    body_contains: Option<String>,
    status: u16,
    delay: Duration,
    times: u32,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) nodes: BTreeMap<String, Value>,
    pub(super) workflows: Vec<Value>,
    /// Sync generation per MAC, for `since` cursors.
    pub(super) changed_at: BTreeMap<String, u64>,
    pub(super) generation: u64,
    pub(super) calls: Vec<Call>,
    pub(super) commands: Vec<Value>,
    pub(super) heartbeat_interval: u64,
    /// Answer heartbeats with 404 (the controller forgot this agent).
    pub(super) forget_agent: bool,
    pub(super) next_id: u64,
    pub(super) files: BTreeMap<String, Vec<u8>>,
    /// Files are sent at this many bytes a second (None: at once).
    pub(super) file_rate: Option<u64>,
    /// Bytes of paced file answers handed to the connection so far.
    pub(super) file_bytes_sent: Arc<std::sync::atomic::AtomicU64>,
    pub(super) injections: Vec<Injection>,
    /// Idempotency key → its state (§6 dialect; PureBoot keeps none).
    pub(super) keys: BTreeMap<String, KeyState>,
    pub(super) key_store: Option<KeyStore>,
    pub(super) applied: Vec<Applied>,
    /// PureBoot: take any state change (tests of durability that write the
    /// same state over and over, not of its state machine).
    pub(super) any_transition: bool,
    /// §6: answer a state change made against an older version with 409.
    pub(super) check_versions: bool,
    /// Nodes left out of the site listing (a listing that is partial or
    /// wrong); lookups by MAC still find them.
    pub(super) unlisted: std::collections::BTreeSet<String>,
    /// File path → the checksum to announce instead of the real one.
    pub(super) file_checksums: BTreeMap<String, String>,
    /// (bytes, times): the next `times` file answers break off after
    /// `bytes`.
    pub(super) file_cuts: Vec<(usize, u32)>,
    /// File answers send this many bytes, then wait for the gate to open.
    pub(super) file_gate: Option<(usize, tokio::sync::watch::Receiver<bool>)>,
    /// Every node id given out: a node registered again after it was
    /// deleted gets a new one, as from a real controller.
    pub(super) used_ids: std::collections::BTreeSet<String>,
    /// The site's policy as the controller keeps it (PureBoot's site
    /// columns: `autonomy_level`, `conflict_resolution`, `cache_policy`,
    /// `cache_patterns_json`, `cache_max_size_gb`, `cache_retention_days`);
    /// an empty object: none set. The §6 fake answers a site record only
    /// when one is set (404 otherwise, "no site record").
    pub(super) site_policy: serde_json::Map<String, Value>,
}

/// Holds file answers part-way until opened.
pub struct FileGate(tokio::sync::watch::Sender<bool>);

impl FileGate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

impl Drop for FileGate {
    fn drop(&mut self) {
        self.open();
    }
}

pub struct FakeController {
    inner: Arc<Mutex<Inner>>,
    mode: Arc<Mutex<Mode>>,
    pub addr: SocketAddr,
    pub dialect: Dialect,
    runtime: tokio::runtime::Runtime,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The agent's credentials for a controller that wants them.
    secrets: tempfile::TempDir,
}

type Shared = (Arc<Mutex<Inner>>, Arc<Mutex<Mode>>, Dialect);

impl FakeController {
    /// A controller that follows DESIGN §6 to the letter.
    pub fn start() -> FakeController {
        FakeController::start_as(Dialect::Design)
    }

    /// A controller shaped like PureBoot's central.
    pub fn pureboot() -> FakeController {
        FakeController::start_as(Dialect::PureBoot)
    }

    pub fn start_as(dialect: Dialect) -> FakeController {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let secrets = tempfile::tempdir().expect("tempdir");
        std::fs::write(secrets.path().join("api-key"), super::pureboot::API_KEY)
            .expect("write api key");
        std::fs::write(
            secrets.path().join("site-token"),
            super::pureboot::SITE_TOKEN,
        )
        .expect("write site token");
        std::fs::write(secrets.path().join("design-token"), DESIGN_TOKEN)
            .expect("write design token");
        let controller = FakeController {
            inner: Arc::new(Mutex::new(Inner {
                heartbeat_interval: 1,
                ..Inner::default()
            })),
            mode: Arc::new(Mutex::new(Mode::Healthy)),
            addr,
            dialect,
            runtime,
            server: Mutex::new(None),
            secrets,
        };
        controller.serve(listener);
        controller
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The file holding the bearer token this controller wants (§6: the
    /// fake's own; PureBoot: the service account's API key).
    pub fn token_file(&self) -> std::path::PathBuf {
        match self.dialect {
            Dialect::Design => self.secrets.path().join("design-token"),
            Dialect::PureBoot => self.secrets.path().join("api-key"),
        }
    }

    /// The agent's `[central]` keys for this controller: its URL and,
    /// for PureBoot, the two credentials (an API key in the header, the
    /// site's agent token in the registration body).
    pub fn central_toml(&self) -> String {
        match self.dialect {
            Dialect::Design => format!(
                "url = \"{}\"\ntoken_file = \"{}\"\n",
                self.url(),
                self.secrets.path().join("design-token").display()
            ),
            Dialect::PureBoot => format!(
                "url = \"{}\"\ntoken_file = \"{}\"\nregistration_token_file = \"{}\"\n",
                self.url(),
                self.secrets.path().join("api-key").display(),
                self.secrets.path().join("site-token").display()
            ),
        }
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared: Shared = (self.inner.clone(), self.mode.clone(), self.dialect);
        let app = Router::new().fallback(handle).with_state(shared);
        let handle = self.runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().expect("lock") = Some(handle);
    }

    /// Closes the socket: connections are refused until `up`.
    pub fn down(&self) {
        if let Some(handle) = self.server.lock().expect("lock").take() {
            handle.abort();
            self.runtime.block_on(async {
                let _ = handle.await;
            });
        }
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .expect("rebind");
        self.serve(listener);
    }

    pub fn up_if_down(&self) {
        if self.server.lock().expect("lock").is_none() {
            self.up();
        }
    }

    /// Sets site policy fields at the controller (PureBoot's names, as
    /// its `PATCH /api/v1/sites/{id}` stores them); a null clears one.
    pub fn set_site_policy(&self, fields: Value) {
        let mut inner = self.inner.lock().expect("lock");
        for (key, value) in fields.as_object().expect("an object") {
            if value.is_null() {
                inner.site_policy.remove(key);
            } else {
                inner.site_policy.insert(key.clone(), value.clone());
            }
        }
    }

    /// The `heartbeat_interval` (seconds) registration answers with.
    pub fn set_heartbeat_interval(&self, secs: u64) {
        self.inner.lock().expect("lock").heartbeat_interval = secs;
    }

    /// How the §6 fake answers a key it has seen (default: replay).
    pub fn set_key_store(&self, store: KeyStore) {
        self.inner.lock().expect("lock").key_store = Some(store);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    pub fn set_node(&self, mac: &str, state: &str, workflow: Option<&str>) {
        let mut inner = self.inner.lock().expect("lock");
        inner.next_id += 1;
        inner.generation += 1;
        let generation = inner.generation;
        let version = inner
            .nodes
            .get(mac)
            .and_then(|n| n["version"].as_u64())
            .unwrap_or(0)
            + 1;
        let id = inner
            .nodes
            .get(mac)
            .and_then(|n| n["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("node-{mac}"));
        inner.used_ids.insert(id.clone());
        inner.nodes.insert(
            mac.to_string(),
            json!({
                "id": id, "mac": mac, "state": state, "workflow_id": workflow,
                "tags": [], "updated_at": "2026-11-22T10:00:00Z", "version": version
            }),
        );
        inner.changed_at.insert(mac.to_string(), generation);
    }

    /// Like [`FakeController::set_node`], with the record's change time
    /// far in the future: later than any change the agent makes now (the
    /// order `last_write` compares, DESIGN §15).
    pub fn set_node_changed_in_future(&self, mac: &str, state: &str) {
        self.set_node(mac, state, None);
        let mut inner = self.inner.lock().expect("lock");
        let node = inner.nodes.get_mut(mac).expect("just set");
        node["updated_at"] = json!("2099-01-01T00:00:00Z");
        node["future"] = json!(true);
    }

    /// Announces `sum` as the file's `X-Checksum-SHA256` (a wrong one).
    pub fn set_file_checksum(&self, path: &str, sum: &str) {
        let mut inner = self.inner.lock().expect("lock");
        inner
            .file_checksums
            .insert(path.to_string(), sum.to_string());
    }

    /// From now on, file answers send `bytes` bytes and then wait until
    /// the returned gate is opened (dropping it opens it too).
    pub fn gate_files_at(&self, bytes: usize) -> FileGate {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.inner.lock().expect("lock").file_gate = Some((bytes, gate));
        FileGate(open)
    }

    /// The next `times` file downloads break off after `bytes` bytes.
    pub fn cut_files_after(&self, bytes: usize, times: u32) {
        self.inner
            .lock()
            .expect("lock")
            .file_cuts
            .push((bytes, times));
    }

    /// Leaves `mac` out of the site listing (true) or lists it again.
    pub fn unlist(&self, mac: &str, unlisted: bool) {
        let mut inner = self.inner.lock().expect("lock");
        if unlisted {
            inner.unlisted.insert(mac.to_string());
        } else {
            inner.unlisted.remove(mac);
        }
    }

    pub fn remove_node(&self, mac: &str) {
        let mut inner = self.inner.lock().expect("lock");
        inner.nodes.remove(mac);
        inner.changed_at.remove(mac);
    }

    /// Puts a raw (possibly malformed) node entry in the site list.
    pub fn set_raw_node(&self, key: &str, value: Value) {
        let mut inner = self.inner.lock().expect("lock");
        inner.generation += 1;
        let generation = inner.generation;
        inner.nodes.insert(key.to_string(), value);
        inner.changed_at.insert(key.to_string(), generation);
    }

    pub fn add_workflow(&self, workflow: Value) {
        self.inner.lock().expect("lock").workflows.push(workflow);
    }

    /// Makes `workflow` known for the controller's nodes: listed by a §6
    /// controller; PureBoot's lists none, so it is returned as agent
    /// configuration (`[workflows.<id>]`, DESIGN §6) instead. The returned
    /// TOML goes into the agent's config either way ("" for §6).
    pub fn offer_workflow(&self, workflow: Value) -> String {
        match self.dialect {
            Dialect::Design => {
                self.add_workflow(workflow);
                String::new()
            }
            Dialect::PureBoot => {
                let id = workflow["id"].as_str().expect("workflow id").to_string();
                let fields: serde_json::Map<String, Value> = workflow
                    .as_object()
                    .expect("workflow object")
                    .iter()
                    .filter(|(k, v)| *k != "id" && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let doc = json!({ "workflows": { id: fields } });
                toml::to_string(&doc).expect("workflow as TOML")
            }
        }
    }

    pub fn queue_command(&self, command: Value) {
        self.inner.lock().expect("lock").commands.push(command);
    }

    /// Sends files at `bytes_per_second` (a slow WAN), in 64 KiB pieces.
    pub fn set_file_rate(&self, bytes_per_second: u64) {
        self.inner.lock().expect("lock").file_rate = Some(bytes_per_second.max(1));
    }

    /// Bytes of paced file answers (`set_file_rate`) sent so far.
    pub fn file_bytes_sent(&self) -> u64 {
        self.inner
            .lock()
            .expect("lock")
            .file_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves `bytes` at `GET /api/v1/files/{path}`.
    pub fn add_file(&self, path: &str, bytes: &[u8]) {
        self.inner
            .lock()
            .expect("lock")
            .files
            .insert(path.to_string(), bytes.to_vec());
    }

    /// §6: refuse (409) a state change whose `base_version` is not the
    /// node's version.
    pub fn check_versions(&self) {
        self.inner.lock().expect("lock").check_versions = true;
    }

    /// Accept state changes the controller's state machine would refuse
    /// (for tests about the queue, not the machine).
    pub fn allow_any_transition(&self) {
        self.inner.lock().expect("lock").any_transition = true;
    }

    pub fn forget_agent(&self, forget: bool) {
        self.inner.lock().expect("lock").forget_agent = forget;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().expect("lock").calls.clone()
    }

    pub fn calls_to(&self, method: &str, path_prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.starts_with(path_prefix))
            .collect()
    }

    /// The next `times` matching requests get `status` (after `delay`)
    /// instead of being processed. Status 0: only the delay, then the
    /// request is processed normally.
    pub fn inject(
        &self,
        method: &str,
        path_contains: &str,
        body_contains: Option<&str>,
        status: u16,
        delay: Duration,
        times: u32,
    ) {
        self.inner.lock().expect("lock").injections.push(Injection {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            body_contains: body_contains.map(str::to_string),
            status,
            delay,
            times,
        });
    }

    /// Writes applied, in order.
    pub fn applied(&self) -> Vec<Applied> {
        self.inner.lock().expect("lock").applied.clone()
    }

    /// An edit at the controller that is not a state change (an operator
    /// there renames the node): PureBoot's `updated_at` moves with it.
    pub fn edit_hostname(&self, mac: &str, hostname: &str) {
        let mut inner = self.inner.lock().expect("lock");
        inner.generation += 1;
        let generation = inner.generation;
        if let Some(node) = inner.nodes.get_mut(mac) {
            node["hostname"] = json!(hostname);
            node["updated_at_tick"] = json!(generation);
        }
    }

    pub fn node(&self, mac: &str) -> Option<Value> {
        self.inner.lock().expect("lock").nodes.get(mac).cloned()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.down();
    }
}

pub(super) fn query_map(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3A", ":").replace("%3a", ":").to_string(),
            )
        })
        .collect()
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = shared.0.clone();
    let mut recorded = None;
    let response = answer(shared, method, uri, headers, body, &mut recorded).await;
    if let Some(index) = recorded
        && let Some(call) = inner.lock().expect("lock").calls.get_mut(index)
    {
        call.status = response.status().as_u16();
    }
    response
}

/// Answers one request; `recorded` is set to the index of its entry in
/// `calls`, if it was recorded.
async fn answer(
    (inner, mode, dialect): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    recorded: &mut Option<usize>,
) -> Response {
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let injected = {
        let mut guard = inner.lock().expect("lock");
        let body_text = body_json.to_string();
        let found = guard.injections.iter_mut().find(|i| {
            i.times > 0
                && i.method == method.as_str()
                && path.contains(&i.path_contains)
                && i.body_contains
                    .as_ref()
                    .is_none_or(|b| body_text.contains(b))
        });
        found.map(|i| {
            i.times -= 1;
            (i.status, i.delay)
        })
    };
    if let Some((status, delay)) = injected {
        tokio::time::sleep(delay).await;
        if status != 0 {
            let mut guard = inner.lock().expect("lock");
            guard.calls.push(Call {
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                body: body_json.clone(),
                authorization: None,
                idempotency_key: idempotency_key.clone(),
                range: None,
                status: 0,
            });
            *recorded = Some(guard.calls.len() - 1);
            drop(guard);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                code,
                axum::Json(json!({"error": format!("injected {status}")})),
            )
                .into_response();
        }
    }
    {
        let mut guard = inner.lock().expect("lock");
        guard.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            idempotency_key: idempotency_key.clone(),
            range: headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            status: 0,
        });
        *recorded = Some(guard.calls.len() - 1);
    }
    let current = *mode.lock().expect("lock");
    match current {
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::SlowLookups(delay) if method == Method::GET && path.starts_with("/api/v1/nodes") => {
            tokio::time::sleep(delay).await
        }
        Mode::SlowFeed(delay)
            if method == Method::GET
                && path.starts_with("/api/v1/sites/")
                && query.contains("since=") =>
        {
            tokio::time::sleep(delay).await
        }
        Mode::Erroring if path != "/health" => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        Mode::BadGateway => return (StatusCode::BAD_GATEWAY, "<html>502</html>").into_response(),
        Mode::Erroring => {}
        Mode::RefusingWrites if method != Method::GET && !path.ends_with("/heartbeat") => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "writes refused").into_response();
        }
        Mode::RefusingWrites => {}
        Mode::Garbage => return (StatusCode::OK, "<html>not json").into_response(),
        Mode::Huge(bytes) if path != "/health" => return huge_body(bytes),
        Mode::Huge(_)
        | Mode::Healthy
        | Mode::ApplyThenStall(_)
        | Mode::SlowLookups(_)
        | Mode::SlowFeed(_) => {}
    }
    // PureBoot keeps no idempotency keys: a repeat is applied again. The
    // §6 fake keeps every key's answer, as a real key store does.
    let keyed = match (&idempotency_key, dialect) {
        (Some(key), Dialect::Design) if method != Method::GET => Some(key.clone()),
        _ => None,
    };
    if let Some(key) = &keyed {
        let mut guard = inner.lock().expect("lock");
        let store = guard.key_store.unwrap_or(KeyStore::Replay);
        match guard.keys.get(key).cloned() {
            Some(KeyState::InFlight) => {
                return (
                    StatusCode::CONFLICT,
                    axum::Json(
                        json!({"error": "a request with this Idempotency-Key is in progress"}),
                    ),
                )
                    .into_response();
            }
            Some(KeyState::Answered { request, .. })
                if store == KeyStore::Ietf && request != body_json =>
            {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": "Idempotency-Key reused with a different request"})),
                )
                    .into_response();
            }
            Some(KeyState::Answered { status, answer, .. }) => {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let mut response = (code, answer).into_response();
                response.headers_mut().insert(
                    "content-type",
                    axum::http::HeaderValue::from_static("application/json"),
                );
                return response;
            }
            None => {
                guard.keys.insert(key.clone(), KeyState::InFlight);
            }
        }
    }
    let response = route(
        (inner.clone(), mode.clone(), dialect),
        &method,
        &path,
        &query,
        &headers,
        &body_json,
    );
    let response = match keyed {
        Some(key) => {
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            inner.lock().expect("lock").keys.insert(
                key,
                KeyState::Answered {
                    request: body_json.clone(),
                    status: parts.status.as_u16(),
                    answer: bytes.clone(),
                },
            );
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        None => response,
    };
    if let Mode::ApplyThenStall(stall) = current
        && method != Method::GET
    {
        tokio::time::sleep(stall).await;
    }
    response
}

/// The controller's answer to one request, after the modes and the key
/// store have had their say.
fn route(
    (inner, _mode, dialect): Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body_json: &Value,
) -> Response {
    let path = path.to_string();
    let query = query.to_string();
    let body_json = body_json.clone();
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if dialect == Dialect::PureBoot {
        let request = super::pureboot::Request {
            method: method.as_str(),
            path: &path,
            query: &query,
            headers,
            body: &body_json,
        };
        return super::pureboot::route(&mut inner.lock().expect("lock"), request);
    }
    let mut inner = inner.lock().expect("lock");
    let q = query_map(&query);
    // §6: every call but the health check carries the bearer token (the
    // scheme in any case, RFC 7235).
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
        .map(|(_, token)| token);
    if path != "/health" && bearer != Some(DESIGN_TOKEN) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => (StatusCode::OK, "ok").into_response(),
        ("POST", "/api/v1/agents/register") => {
            // §6 (and §15): the site policy's registration fields, when set.
            let mut config = json!({"site_id": body_json["site_id"], "site_name": "Test site",
                                    "heartbeat_interval": inner.heartbeat_interval});
            for field in [
                "autonomy_level",
                "cache_policy",
                "cache_max_size_gb",
                "cache_retention_days",
            ] {
                if let Some(value) = inner.site_policy.get(field) {
                    config[field] = value.clone();
                }
            }
            axum::Json(json!({"success": true, "message": "welcome", "config": config}))
                .into_response()
        }
        ("GET", p) if p.starts_with("/api/v1/sites/") && p.matches('/').count() == 4 => {
            if inner.site_policy.is_empty() {
                return (StatusCode::NOT_FOUND, "no site record").into_response();
            }
            axum::Json(json!({"data": Value::Object(inner.site_policy.clone())})).into_response()
        }
        ("POST", "/api/v1/agents/heartbeat") => {
            if inner.forget_agent {
                return (StatusCode::NOT_FOUND, "unknown agent").into_response();
            }
            let commands: Vec<Value> = inner.commands.drain(..).collect();
            axum::Json(json!({"acknowledged": true, "server_time": "2026-11-22T10:00:00Z", "commands": commands}))
                .into_response()
        }
        ("GET", "/api/v1/nodes") => {
            let mac = q.get("mac").cloned().unwrap_or_default();
            let data: Vec<Value> = inner.nodes.get(&mac).cloned().into_iter().collect();
            axum::Json(json!({"data": data, "total": data.len()})).into_response()
        }
        ("POST", "/api/v1/nodes") => {
            let mac = body_json["mac_address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // A registration names a MAC (§6); none, or a malformed one,
            // creates nothing.
            if mac.parse::<siteboot::model::mac::Mac>().is_err() {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": format!("mac_address {mac:?} is not a MAC")})),
                )
                    .into_response();
            }
            if let Some(existing) = inner.nodes.get(&mac) {
                return (
                    StatusCode::CONFLICT,
                    axum::Json(json!({"error": "exists", "data": existing})),
                )
                    .into_response();
            }
            inner.generation += 1;
            let generation = inner.generation;
            let mut id = format!("node-{mac}");
            if inner.used_ids.contains(&id) {
                id = format!("node-{mac}-{}", inner.generation);
            }
            inner.used_ids.insert(id.clone());
            let node = json!({
                "id": id, "mac": mac, "state": "discovered",
                "tags": [], "updated_at": "2026-11-22T10:00:00Z", "version": 1
            });
            inner.nodes.insert(mac.clone(), node.clone());
            inner.changed_at.insert(mac.clone(), generation);
            let answer = json!({"data": node});
            record(&mut inner, "register", &idempotency_key, &mac, &body_json);
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        ("PATCH", p) if p.starts_with("/api/v1/nodes/") && p.ends_with("/state") => {
            let id = &p["/api/v1/nodes/".len()..p.len() - "/state".len()];
            let Some(mac) = inner
                .nodes
                .iter()
                .find(|(_, n)| n["id"].as_str() == Some(id))
                .map(|(mac, _)| mac.clone())
            else {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": format!("no node {id}")})),
                )
                    .into_response();
            };
            let Some(state) = body_json["state"].as_str().map(str::to_string) else {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "state missing"})),
                )
                    .into_response();
            };
            // §3's states only.
            if serde_json::from_value::<siteboot::model::node::NodeState>(json!(state)).is_err() {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": format!("unknown state {state:?}")})),
                )
                    .into_response();
            }
            // DESIGN §6: a change made against another version is a 409
            // (when the test asks for version checks).
            let current = inner.nodes[&mac]["version"].as_u64().unwrap_or(0);
            // DESIGN §3: the states and their transitions are the
            // controller's; this one has PureBoot's machine, answers 400 to
            // a change it does not allow (after the version check: a stale
            // change is a conflict first), and `force` skips the check.
            let from = inner.nodes[&mac]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let stale = inner.check_versions
                && body_json["base_version"]
                    .as_u64()
                    .is_some_and(|base| base != current);
            if !stale
                && !inner.any_transition
                && body_json["force"] != true
                && !super::pureboot::can_transition(&from, &state)
            {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": format!(
                        "invalid transition from {from} to {state}; valid: {:?}",
                        super::pureboot::valid_transitions(&from)
                    )})),
                )
                    .into_response();
            }
            if inner.check_versions
                && let Some(base) = body_json["base_version"].as_u64()
                && base != current
                && body_json["force"] != true
            {
                let node = inner.nodes[&mac].clone();
                return (
                    StatusCode::CONFLICT,
                    axum::Json(
                        json!({"error": format!("version is {current}, not {base}"), "data": node}),
                    ),
                )
                    .into_response();
            }
            inner.generation += 1;
            let generation = inner.generation;
            let node = inner.nodes.get_mut(&mac).expect("found above");
            node["state"] = Value::String(state);
            node["version"] = json!(node["version"].as_u64().unwrap_or(0) + 1);
            let answer = json!({"data": node.clone()});
            inner.changed_at.insert(mac.clone(), generation);
            record(&mut inner, "set_state", &idempotency_key, &mac, &body_json);
            axum::Json(answer).into_response()
        }
        ("POST", "/api/v1/report") => {
            let mac = body_json["mac_address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let answer = json!({"success": true});
            record(&mut inner, "report", &idempotency_key, &mac, &body_json);
            axum::Json(answer).into_response()
        }
        ("GET", p) if p.starts_with("/api/v1/sites/") && p.ends_with("/nodes") => {
            let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
            // Nothing changed since the cursor: answered without a scan,
            // as a controller with an index of changes answers it.
            if since > 0 && since >= inner.generation {
                return axum::Json(json!({
                    "data": [], "workflows": inner.workflows,
                    "cursor": inner.generation.to_string(), "total": inner.nodes.len()
                }))
                .into_response();
            }
            let data: Vec<Value> = inner
                .nodes
                .iter()
                .filter(|(mac, _)| inner.changed_at.get(*mac).copied().unwrap_or(0) > since)
                .filter(|(mac, _)| !inner.unlisted.contains(*mac))
                .map(|(_, node)| node.clone())
                .collect();
            axum::Json(json!({
                "data": data, "workflows": inner.workflows,
                "cursor": inner.generation.to_string(), "total": inner.nodes.len()
            }))
            .into_response()
        }
        ("GET", p) if p.starts_with("/api/v1/files/") => {
            let name = &p["/api/v1/files/".len()..];
            let Some(bytes) = inner.files.get(name).cloned() else {
                return (StatusCode::NOT_FOUND, "no such file").into_response();
            };
            let sum = inner
                .file_checksums
                .get(name)
                .cloned()
                .unwrap_or_else(|| sha256_hex(&bytes));
            let len = bytes.len();
            let etag = format!("\"sha256:{sum}\"");
            if headers
                .get("if-none-match")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == etag)
            {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            // §6 controllers take `Range: bytes=N-` (a resumed download).
            let from = headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n < len);
            let part = bytes[from.unwrap_or(0)..].to_vec();
            let cut = match inner.file_cuts.first_mut() {
                Some((after, times)) if *times > 0 => {
                    *times -= 1;
                    Some(*after)
                }
                _ => None,
            };
            inner.file_cuts.retain(|(_, times)| *times > 0);
            let rate = inner.file_rate;
            let gate = inner.file_gate.clone();
            let body = match (cut, rate, gate) {
                (Some(after), rate, _) => cut_body(part, after, rate.unwrap_or(u64::MAX)),
                (None, _, Some((at, gate))) => gated_body(part, at, gate),
                (None, Some(rate), None) => slow_body(part, rate, inner.file_bytes_sent.clone()),
                (None, None, None) => axum::body::Body::from(part),
            };
            let mut response = (StatusCode::OK, body).into_response();
            let h = response.headers_mut();
            h.insert("x-checksum-sha256", sum.parse().expect("header"));
            h.insert("etag", etag.parse().expect("header"));
            match from {
                Some(from) => {
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    let h = response.headers_mut();
                    h.insert(
                        "content-range",
                        format!("bytes {from}-{}/{len}", len - 1)
                            .parse()
                            .expect("header"),
                    );
                    h.insert("content-length", (len - from).into());
                }
                None => {
                    response.headers_mut().insert("content-length", len.into());
                }
            }
            response
        }
        _ => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `bytes` as a body that breaks off (a stream error) after `after`
/// bytes, sent at `rate` bytes a second: a controller dying mid-file.
pub(super) fn cut_body(bytes: Vec<u8>, after: usize, rate: u64) -> axum::body::Body {
    const PIECE: usize = 64 * 1024;
    let sent = bytes[..after.min(bytes.len())].to_vec();
    let pause = Duration::from_secs_f64(PIECE as f64 / rate as f64);
    let pieces: Vec<Bytes> = sent.chunks(PIECE).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), false),
        move |(mut rest, ended)| async move {
            if ended {
                return None;
            }
            match rest.next() {
                Some(piece) => {
                    if rate != u64::MAX {
                        tokio::time::sleep(pause).await;
                    }
                    Some((Ok(piece), (rest, false)))
                }
                None => Some((
                    Err(std::io::Error::other("the controller died mid-file")),
                    (rest, true),
                )),
            }
        },
    );
    axum::body::Body::from_stream(stream)
}

/// `bytes` sent up to `at`, the rest once `gate` opens.
pub(super) fn gated_body(
    bytes: Vec<u8>,
    at: usize,
    mut gate: tokio::sync::watch::Receiver<bool>,
) -> axum::body::Body {
    let at = at.min(bytes.len());
    let first = Bytes::copy_from_slice(&bytes[..at]);
    let rest = Bytes::copy_from_slice(&bytes[at..]);
    use futures_util::StreamExt;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
        futures_util::stream::once(async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(rest)
        }),
    );
    axum::body::Body::from_stream(stream)
}

/// `bytes` as a body that trickles out at `rate` bytes a second.
pub(super) fn slow_body(
    bytes: Vec<u8>,
    rate: u64,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> axum::body::Body {
    const PIECE: usize = 64 * 1024;
    let pause = Duration::from_secs_f64(PIECE as f64 / rate as f64);
    let pieces: Vec<Bytes> = bytes.chunks(PIECE).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(pieces.into_iter(), move |mut rest| {
        let sent = sent.clone();
        async move {
            let piece = rest.next()?;
            tokio::time::sleep(pause).await;
            sent.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(piece), rest))
        }
    });
    axum::body::Body::from_stream(stream)
}

pub(super) fn record(inner: &mut Inner, op: &str, key: &Option<String>, mac: &str, body: &Value) {
    inner.applied.push(Applied {
        op: op.to_string(),
        key: key.clone(),
        mac: mac.to_string(),
        body: body.clone(),
    });
}

/// `{"data":[` then `bytes` of spaces, in 64 KiB chunks with no length.
fn huge_body(bytes: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunks = std::iter::once(Bytes::from_static(b"{\"data\":["))
        .chain((0..bytes / CHUNK).map(|_| Bytes::from(vec![b' '; CHUNK])));
    let stream = futures_util::stream::iter(chunks.map(Ok::<_, std::io::Error>));
    (StatusCode::OK, axum::body::Body::from_stream(stream)).into_response()
}
