//! [`Controller`] over HTTP with reqwest (rustls, no OpenSSL).

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::api::{
    Heartbeat, HeartbeatReply, NewNode, NodeEnvelope, NodeList, NodePage, NodeReport, Registration,
    RegistrationReply, StateChange, find_node, parse_node,
};
use super::{BoxFuture, CentralError, Controller, FileAnswer, FileRequest, RemoteFile};
use crate::model::mac::Mac;
use crate::model::node::Node;

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The most of an answer the agent buffers, per kind of call (DESIGN §10:
/// a hostile or broken controller must not take the agent's memory). A
/// larger body is refused as garbage as soon as it is seen to be larger
/// (by its Content-Length, or while it streams in).
///
/// One node, a registration, a heartbeat reply: a few KB.
const ONE_RECORD_MAX: usize = 1024 * 1024;
/// A lookup by MAC: one node, but a controller that ignores the filter
/// lists many (the agent picks the match itself).
const LOOKUP_MAX: usize = 4 * 1024 * 1024;
/// A sync page: the site's nodes and workflows. Syncs run one at a time.
const SYNC_PAGE_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read central.token_file {path}: {source}")]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

pub struct HttpController {
    http: reqwest::Client,
    /// For files: no total deadline (a 1 GB initrd over a slow WAN takes
    /// what it takes), only a connect timeout and an idle one between
    /// reads (DESIGN §10).
    files: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A token file's contents, without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String, ClientError> {
    Ok(std::fs::read_to_string(path)
        .map_err(|source| ClientError::Token {
            path: path.to_path_buf(),
            source,
        })?
        .trim()
        .to_string())
}

impl HttpController {
    /// `base` is `central.url`; every call is bounded by `timeout`.
    pub fn new(
        base: &str,
        token_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let token = match token_file {
            None => None,
            Some(path) => Some(read_token(path)?),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("siteboot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let files = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("siteboot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(HttpController {
            http,
            files,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `<base>/api/v1/files/<segment>/…`, every segment encoded as one.
    /// A `.` or `..` segment is refused here as well: the URL library
    /// would resolve it, not encode it.
    fn files_url(&self, path: &str) -> Result<reqwest::Url, CentralError> {
        if path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(CentralError::Local(format!(
                "file path {path:?} refused before it reached the controller"
            )));
        }
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| CentralError::Garbage(format!("controller URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| CentralError::Garbage("controller URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(["api", "v1", "files"])
            .extend(path.split('/'));
        Ok(url)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<(StatusCode, bytes::Bytes), CentralError> {
        let mut response = builder.send().await.map_err(unreachable)?;
        let status = response.status();
        if behind_a_dead_proxy(status) {
            // DESIGN §10: a reverse proxy in front of a dead controller.
            return Err(CentralError::Unreachable(format!(
                "controller answered {status} (a gateway with no controller behind it)"
            )));
        }
        let too_large = || {
            CentralError::Garbage(format!(
                "answer larger than this call's limit of {limit} bytes"
            ))
        };
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large());
        }
        // The chunks are kept as hyper handed them over, and joined once
        // the whole answer is in: a growing Vec reallocated up to the limit
        // in every one of 16 concurrent lookups fragmented the heap (peak
        // RSS twice the bodies' size under a hostile controller).
        let mut chunks = Vec::new();
        let mut len = 0usize;
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            len += chunk.len();
            if len > limit {
                return Err(too_large());
            }
            chunks.push(chunk);
        }
        Ok((status, joined(chunks, len)))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<T, CentralError> {
        let (status, body) = self.send(builder, limit).await?;
        if !status.is_success() {
            return Err(rejected(status, &body));
        }
        decode(&body)
    }
}

/// One buffer for the whole body: the only chunk as it is, or all of them
/// copied once into a buffer of exactly their size.
fn joined(mut chunks: Vec<bytes::Bytes>, len: usize) -> bytes::Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut body = Vec::with_capacity(len);
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    body.into()
}

/// 502, 503 and 504 are what a reverse proxy answers when the controller
/// behind it is gone: evidence of unreachability, not an answer.
fn behind_a_dead_proxy(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn unreachable(e: reqwest::Error) -> CentralError {
    // reqwest names the URL, credentials and all.
    CentralError::Unreachable(crate::logsafe::redact_userinfo(&e.to_string()))
}

fn rejected(status: StatusCode, body: &[u8]) -> CentralError {
    let text = String::from_utf8_lossy(body);
    CentralError::Rejected {
        status: status.as_u16(),
        body: text.chars().take(500).collect(),
    }
}

/// The node of a `{data: Node}` answer.
fn node_from(data: &serde_json::Value) -> Result<Node, CentralError> {
    parse_node(data).map_err(|e| CentralError::Garbage(format!("node in the answer: {e}")))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CentralError> {
    serde_json::from_slice(body).map_err(|e| {
        let excerpt: String = String::from_utf8_lossy(body).chars().take(120).collect();
        CentralError::Garbage(format!("{e} (body starts {excerpt:?})"))
    })
}

impl Controller for HttpController {
    fn health(&self) -> BoxFuture<'_, Result<(), CentralError>> {
        Box::pin(async move {
            let (status, body) = self
                .send(
                    self.request(reqwest::Method::GET, "/health"),
                    ONE_RECORD_MAX,
                )
                .await?;
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() {
                // A health check that fails is an unhealthy controller:
                // it cannot be relied on to answer boots (DESIGN §10).
                Err(CentralError::Unreachable(format!(
                    "health check answered {status}"
                )))
            } else {
                Err(rejected(status, &body))
            }
        })
    }

    fn register(
        &self,
        request: &Registration,
    ) -> BoxFuture<'_, Result<RegistrationReply, CentralError>> {
        let builder = self
            .request(reqwest::Method::POST, "/api/v1/agents/register")
            .json(request);
        Box::pin(async move {
            let reply: RegistrationReply = self.call(builder, ONE_RECORD_MAX).await?;
            if reply.success {
                Ok(reply)
            } else {
                Err(CentralError::Rejected {
                    status: 200,
                    body: reply
                        .message
                        .unwrap_or_else(|| "registration refused".into()),
                })
            }
        })
    }

    fn heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, CentralError>> {
        let builder = self
            .request(reqwest::Method::POST, "/api/v1/agents/heartbeat")
            .json(heartbeat);
        Box::pin(self.call(builder, ONE_RECORD_MAX))
    }

    fn site_nodes(
        &self,
        site_id: &str,
        since: Option<&str>,
    ) -> BoxFuture<'_, Result<NodePage, CentralError>> {
        let mut builder = self.request(
            reqwest::Method::GET,
            &format!("/api/v1/sites/{site_id}/nodes"),
        );
        if let Some(cursor) = since {
            builder = builder.query(&[("since", cursor)]);
        }
        Box::pin(self.call(builder, SYNC_PAGE_MAX))
    }

    fn site_record(
        &self,
        site_id: &str,
    ) -> BoxFuture<'_, Result<Option<serde_json::Value>, CentralError>> {
        let builder = self.request(reqwest::Method::GET, &format!("/api/v1/sites/{site_id}"));
        Box::pin(async move {
            match self
                .call::<serde_json::Value>(builder, ONE_RECORD_MAX)
                .await
            {
                // PureBoot wraps it as `{success, data}`; a bare record is
                // taken as it is.
                Ok(mut answer) => Ok(Some(match answer.get_mut("data") {
                    Some(data) if data.is_object() => data.take(),
                    _ => answer,
                })),
                Err(CentralError::Rejected { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn node_by_mac(&self, mac: Mac) -> BoxFuture<'_, Result<Option<Node>, CentralError>> {
        let builder = self
            .request(reqwest::Method::GET, "/api/v1/nodes")
            .query(&[("mac", mac.to_string())]);
        Box::pin(async move {
            let list: NodeList = self.call(builder, LOOKUP_MAX).await?;
            // Only an exact match counts: a controller that filters loosely
            // (or not at all) must not hand this MAC another node's state.
            let (found, skipped) = find_node(&list.data, mac);
            if !skipped.is_empty() {
                tracing::warn!(%mac, skipped = skipped.len(), first = %skipped[0],
                    "controller listed nodes the agent cannot read; skipped");
            }
            Ok(found)
        })
    }

    /// `path` is a sanitised relative path; its segments are placed in the
    /// URL one by one (each percent-encoded), so the request can reach
    /// nothing but `/api/v1/files/…` (DESIGN §10).
    fn fetch_file(
        &self,
        path: &str,
        request: FileRequest,
    ) -> BoxFuture<'_, Result<FileAnswer, CentralError>> {
        let url = self.files_url(path);
        Box::pin(async move {
            let url = url?;
            let mut builder = self.files.get(url);
            if let Some(token) = &self.token {
                builder = builder.bearer_auth(token);
            }
            if request.from > 0 {
                builder =
                    builder.header(reqwest::header::RANGE, format!("bytes={}-", request.from));
            }
            if let Some(validator) = &request.if_none_match {
                builder = builder.header(reqwest::header::IF_NONE_MATCH, validator);
            }
            use futures_util::TryStreamExt;
            let response = builder.send().await.map_err(unreachable)?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND {
                return Ok(FileAnswer::Missing);
            }
            if status == StatusCode::NOT_MODIFIED {
                return Ok(FileAnswer::NotModified);
            }
            if !status.is_success() {
                // Only the start of an error body is kept (and read).
                let mut body = Vec::new();
                let mut response = response;
                while let Ok(Some(chunk)) = response.chunk().await {
                    body.extend_from_slice(&chunk);
                    if body.len() >= 4096 {
                        break;
                    }
                }
                return Err(rejected(status, &body));
            }
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
            };
            let sha256 = header("x-checksum-sha256").map(|s| s.to_ascii_lowercase());
            let etag = header("etag");
            let (offset, total) = if status == StatusCode::PARTIAL_CONTENT {
                // Only a range starting where it was asked is usable.
                match header("content-range").as_deref().and_then(content_range) {
                    Some((start, total)) if start == request.from => (start, total),
                    other => {
                        return Err(CentralError::Garbage(format!(
                            "asked for bytes {}-, answered 206 with range {other:?}",
                            request.from
                        )));
                    }
                }
            } else {
                (0, response.content_length())
            };
            Ok(FileAnswer::Body(RemoteFile {
                offset,
                total,
                sha256,
                etag,
                body: Box::pin(response.bytes_stream().map_err(std::io::Error::other)),
            }))
        })
    }

    fn create_node(
        &self,
        request: &NewNode,
        idempotency_key: Option<&str>,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        let mut builder = self
            .request(reqwest::Method::POST, "/api/v1/nodes")
            .json(request);
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        let mac = request.mac_address.parse::<Mac>();
        Box::pin(async move {
            let (status, body) = self.send(builder, ONE_RECORD_MAX).await?;
            if status == StatusCode::CONFLICT {
                let mac = mac.map_err(|e| CentralError::Garbage(e.to_string()))?;
                return self.node_by_mac(mac).await?.ok_or_else(|| {
                    CentralError::Garbage("409 for a node it then does not list".into())
                });
            }
            if !status.is_success() {
                return Err(rejected(status, &body));
            }
            node_from(&decode::<NodeEnvelope>(&body)?.data)
        })
    }

    fn set_state(
        &self,
        mac: Mac,
        node_id: &str,
        change: &StateChange,
        idempotency_key: &str,
    ) -> BoxFuture<'_, Result<Node, CentralError>> {
        // The id goes into the path: refuse anything that could leave it.
        let safe = !node_id.is_empty()
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        let builder = self
            .request(
                reqwest::Method::PATCH,
                &format!("/api/v1/nodes/{node_id}/state"),
            )
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .json(change);
        let node_id = node_id.to_string();
        let wanted = change.state;
        Box::pin(async move {
            if !safe {
                return Err(CentralError::Garbage(format!(
                    "node id {node_id:?} is not usable in a URL"
                )));
            }
            match self.call::<NodeEnvelope>(builder, ONE_RECORD_MAX).await {
                Ok(envelope) => node_from(&envelope.data),
                // A controller without idempotency keys (PureBoot's
                // central) refuses a repeat of a change it already
                // applied as an invalid transition (400): when the node is
                // in the wanted state, the change has been made.
                Err(CentralError::Rejected { status: 400, body }) => {
                    match self.node_by_mac(mac).await {
                        Ok(Some(node)) if node.state == wanted && node.id == node_id => {
                            tracing::info!(%mac, state = wanted.as_str(),
                                "state change refused as a repeat; the node is in that state already");
                            Ok(node)
                        }
                        _ => Err(CentralError::Rejected { status: 400, body }),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn report(
        &self,
        report: &NodeReport,
        idempotency_key: &str,
    ) -> BoxFuture<'_, Result<(), CentralError>> {
        let builder = self
            .request(reqwest::Method::POST, "/api/v1/report")
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .json(report);
        Box::pin(async move {
            let (status, body) = self.send(builder, ONE_RECORD_MAX).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(rejected(status, &body))
            }
        })
    }
}

/// `bytes <start>-<end>/<total>` → (start, total if not `*`).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_path_stays_under_api_v1_files() {
        let c = HttpController::new("http://ctl:8000/central/", None, Duration::from_secs(1))
            .expect("client");
        let url = |p: &str| c.files_url(p).expect("url").to_string();
        assert_eq!(
            url("debian/vmlinuz"),
            "http://ctl:8000/central/api/v1/files/debian/vmlinuz"
        );
        // Whatever a segment holds, it stays one segment of files/.
        assert_eq!(
            url("%2e%2e/a b?x#y"),
            "http://ctl:8000/central/api/v1/files/%252e%252e/a%20b%3Fx%23y"
        );
        for bad in ["..", "a/../b", ".", "a//b", ""] {
            assert!(c.files_url(bad).is_err(), "{bad:?}");
        }
    }
}
