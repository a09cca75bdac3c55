//! What an operator may ask of the queue, conflicts and the content cache,
//! read from text once (the API's query and body, the command line's
//! arguments) and, for the command line's client of a running agent,
//! written back as the API call that asks the same.

use serde_json::{Value, json};

use super::error::AdminError;
use crate::outbox::resolve::Resolution;
use crate::store::conflicts;
use crate::store::queue::{Cursor, Status};

/// Most rows one page returns.
pub const MAX_PAGE: usize = 1000;

/// Longest comment kept on a resolution.
const MAX_COMMENT_CHARS: usize = 1000;

/// Rows `offset..offset + limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    /// A page of 1..=[`MAX_PAGE`] rows.
    pub fn new(offset: usize, limit: usize) -> Result<Page, AdminError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AdminError::BadRequest(format!(
                "limit must be 1..={MAX_PAGE}"
            )));
        }
        Ok(Page { offset, limit })
    }

    /// From the API's `offset` and `limit` texts (absent: 0 and 100).
    pub fn parse(offset: Option<&str>, limit: Option<&str>) -> Result<Page, AdminError> {
        Page::new(number("offset", offset, 0)?, number("limit", limit, 100)?)
    }
}

fn number(key: &str, text: Option<&str>, default: usize) -> Result<usize, AdminError> {
    match text {
        None => Ok(default),
        Some(text) => text.parse::<usize>().map_err(|_| {
            AdminError::BadRequest(format!(
                "{key} must be a non-negative integer, not {text:?}"
            ))
        }),
    }
}

/// An id in a path (`/api/v1/queue/{id}`).
pub fn id(what: &str, text: &str) -> Result<u64, AdminError> {
    text.parse::<u64>()
        .map_err(|_| AdminError::BadRequest(format!("{what} id must be a number, not {text:?}")))
}

/// One conflict kind's new policy (`state_mismatch=manual`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub kind: String,
    pub policy: String,
}

impl PolicyChange {
    /// `kind=policy`, as the command line's `--set` gives it.
    pub fn parse(pair: &str) -> Result<PolicyChange, AdminError> {
        let Some((kind, policy)) = pair.split_once('=') else {
            return Err(AdminError::BadRequest(format!(
                "--set wants kind=policy, not {pair:?}"
            )));
        };
        Ok(PolicyChange {
            kind: kind.to_string(),
            policy: policy.to_string(),
        })
    }
}

/// Which cached files to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evict {
    /// These; a pinned or uncached one refuses the whole request. (The
    /// command line's client of a running agent sends one API call per
    /// path, so there the paths before the refused one are gone.)
    Paths(Vec<String>),
    /// Every unpinned file.
    AllUnpinned,
}

/// One admin operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    QueueList {
        status: Option<Status>,
        page: Page,
        cursor: Option<Cursor>,
    },
    QueueStats,
    /// Send a failed (or backing-off) item again now.
    QueueRetry(u64),
    QueueDelete(u64),
    QueueClearFailed,
    ConflictList {
        status: Option<conflicts::Status>,
        page: Page,
    },
    ConflictShow(u64),
    ConflictResolve {
        id: u64,
        resolution: Resolution,
        comment: Option<String>,
    },
    PolicyShow,
    /// Change some kinds' policies (none: show them).
    PolicySet(Vec<PolicyChange>),
    CacheList,
    CacheStats,
    /// These files now (none: what a sync would prefetch).
    CachePrefetch(Vec<String>),
    CacheEvict(Evict),
    /// Hold (true) or release replay and syncs (DESIGN §15).
    SyncPause(bool),
    /// Probe the controller now and say what came of it.
    ConnectivityCheck,
}

impl Request {
    /// `GET /api/v1/queue?status=&offset=&limit=&cursor=`.
    pub fn queue_list(
        status: Option<&str>,
        page: Page,
        cursor: Option<&str>,
    ) -> Result<Request, AdminError> {
        let status = status
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Status>().map_err(AdminError::BadRequest))
            .transpose()?;
        let cursor = cursor
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Cursor>().map_err(AdminError::BadRequest))
            .transpose()?;
        if cursor.is_some() && page.offset > 0 {
            return Err(AdminError::BadRequest(
                "give offset or cursor, not both".into(),
            ));
        }
        Ok(Request::QueueList {
            status,
            page,
            cursor,
        })
    }

    /// `GET /api/v1/conflicts?status=open|resolved&offset=&limit=`.
    pub fn conflict_list(status: Option<&str>, page: Page) -> Result<Request, AdminError> {
        let status = match status.filter(|s| !s.is_empty()) {
            None => None,
            Some("open") => Some(conflicts::Status::Open),
            Some("resolved") => Some(conflicts::Status::Resolved),
            Some(other) => {
                return Err(AdminError::BadRequest(format!(
                    "unknown conflict status {other:?}; valid: open, resolved"
                )));
            }
        };
        Ok(Request::ConflictList { status, page })
    }

    /// `POST /api/v1/conflicts/{id}/resolve`.
    pub fn conflict_resolve(
        id: u64,
        resolution: &str,
        comment: Option<String>,
    ) -> Result<Request, AdminError> {
        Ok(Request::ConflictResolve {
            id,
            resolution: resolution
                .parse::<Resolution>()
                .map_err(AdminError::BadRequest)?,
            comment: comment.map(|c| c.chars().take(MAX_COMMENT_CHARS).collect()),
        })
    }

    /// `POST /api/v1/cache/prefetch {paths}`: each path as the content
    /// cache would take it from a node (DESIGN §10), or the request is
    /// refused.
    pub fn cache_prefetch(paths: Vec<String>) -> Result<Request, AdminError> {
        let mut clean = Vec::with_capacity(paths.len());
        for path in paths {
            let relative = crate::model::path::relative(&path)
                .ok()
                .and_then(|p| p.to_str().map(str::to_string))
                .ok_or_else(|| AdminError::BadRequest(format!("{path:?}: path not allowed")))?;
            clean.push(relative);
        }
        Ok(Request::CachePrefetch(clean))
    }

    /// The agent's API call that asks the same: what the command line
    /// sends to a running agent. Evicting several paths is one call per
    /// path ([`Request::split`]).
    pub fn http(&self) -> HttpCall {
        let call = |method, path: String| HttpCall {
            method,
            path,
            query: Vec::new(),
            body: None,
        };
        let paged = |mut call: HttpCall, page: &Page| {
            call.query.push(("offset", page.offset.to_string()));
            call.query.push(("limit", page.limit.to_string()));
            call
        };
        match self {
            Request::QueueList {
                status,
                page,
                cursor,
            } => {
                let mut call = paged(call("GET", "/api/v1/queue".into()), page);
                if let Some(status) = status {
                    call.query.push(("status", status.as_str().to_string()));
                }
                if let Some(cursor) = cursor {
                    call.query.push(("cursor", cursor.to_string()));
                }
                call
            }
            Request::QueueStats => call("GET", "/api/v1/queue/stats".into()),
            Request::QueueRetry(id) => call("POST", format!("/api/v1/queue/{id}/retry")),
            Request::QueueDelete(id) => call("DELETE", format!("/api/v1/queue/{id}")),
            Request::QueueClearFailed => call("POST", "/api/v1/queue/clear-failed".into()),
            Request::ConflictList { status, page } => {
                let mut call = paged(call("GET", "/api/v1/conflicts".into()), page);
                if let Some(status) = status {
                    let text = match status {
                        conflicts::Status::Open => "open",
                        conflicts::Status::Resolved => "resolved",
                    };
                    call.query.push(("status", text.to_string()));
                }
                call
            }
            Request::ConflictShow(id) => call("GET", format!("/api/v1/conflicts/{id}")),
            Request::ConflictResolve {
                id,
                resolution,
                comment,
            } => HttpCall {
                body: Some(json!({"resolution": resolution.as_str(), "comment": comment})),
                ..call("POST", format!("/api/v1/conflicts/{id}/resolve"))
            },
            Request::PolicyShow => call("GET", "/api/v1/conflicts/policy".into()),
            Request::PolicySet(changes) => {
                let body: serde_json::Map<String, Value> = changes
                    .iter()
                    .map(|c| (c.kind.clone(), json!(c.policy)))
                    .collect();
                HttpCall {
                    body: Some(Value::Object(body)),
                    ..call("PUT", "/api/v1/conflicts/policy".into())
                }
            }
            Request::CacheList => call("GET", "/api/v1/cache".into()),
            Request::CacheStats => call("GET", "/api/v1/cache/stats".into()),
            Request::CachePrefetch(paths) => HttpCall {
                body: Some(json!({ "paths": paths })),
                ..call("POST", "/api/v1/cache/prefetch".into())
            },
            Request::SyncPause(true) => call("POST", "/api/v1/sync/pause".into()),
            Request::SyncPause(false) => call("POST", "/api/v1/sync/resume".into()),
            Request::ConnectivityCheck => call("POST", "/api/v1/connectivity/check".into()),
            Request::CacheEvict(Evict::AllUnpinned) => call("DELETE", "/api/v1/cache".into()),
            Request::CacheEvict(Evict::Paths(paths)) => {
                let path = paths.first().map(String::as_str).unwrap_or_default();
                call("DELETE", format!("/api/v1/cache/{path}"))
            }
        }
    }

    /// The requests the API takes one at a time: evicting several paths
    /// is one `DELETE /api/v1/cache/{path}` each.
    pub fn split(self) -> Vec<Request> {
        match self {
            Request::CacheEvict(Evict::Paths(paths)) if paths.len() > 1 => paths
                .into_iter()
                .map(|p| Request::CacheEvict(Evict::Paths(vec![p])))
                .collect(),
            other => vec![other],
        }
    }
}

/// An API call: method, path under the agent's base URL, query, JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API call's query read back as the API reads it.
    fn read_back(call: &HttpCall) -> (Page, Option<String>, Option<String>) {
        let arg = |key: &str| {
            call.query
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        let page = Page::parse(arg("offset").as_deref(), arg("limit").as_deref()).unwrap();
        (page, arg("status"), arg("cursor"))
    }

    #[test]
    fn a_listing_sent_to_the_agent_reads_back_as_the_same_request() {
        let page = Page::new(0, 7).unwrap();
        let asked = Request::queue_list(Some("in_flight"), page, Some("1-42")).unwrap();
        let call = asked.http();
        assert_eq!((call.method, call.path.as_str()), ("GET", "/api/v1/queue"));
        let (page, status, cursor) = read_back(&call);
        let again = Request::queue_list(status.as_deref(), page, cursor.as_deref()).unwrap();
        assert_eq!(again, asked);

        let asked = Request::conflict_list(Some("resolved"), Page::new(20, 5).unwrap()).unwrap();
        let call = asked.http();
        let (page, status, _) = read_back(&call);
        assert_eq!(
            Request::conflict_list(status.as_deref(), page).unwrap(),
            asked
        );
    }

    #[test]
    fn bad_input_is_refused_with_what_is_valid() {
        let page = Page::new(0, 1).unwrap();
        for (refused, says) in [
            (Page::new(0, 0).err(), "limit must be 1..=1000"),
            (Page::new(0, MAX_PAGE + 1).err(), "limit must be 1..=1000"),
            (
                Page::parse(Some("-1"), None).err(),
                "offset must be a non-negative integer",
            ),
            (
                Request::queue_list(Some("lost"), page, None).err(),
                "valid: pending",
            ),
            (
                Request::queue_list(None, Page::new(3, 1).unwrap(), Some("0-1")).err(),
                "not both",
            ),
            (
                Request::conflict_list(Some("shut"), page).err(),
                "valid: open, resolved",
            ),
            (
                Request::conflict_resolve(1, "win", None).err(),
                "valid: keep_local",
            ),
            (
                Request::cache_prefetch(vec!["../etc/shadow".into()]).err(),
                "path not allowed",
            ),
            (id("queue", "x1").err(), "queue id must be a number"),
            (PolicyChange::parse("manual").err(), "kind=policy"),
        ] {
            match refused {
                Some(AdminError::BadRequest(message)) => {
                    assert!(message.contains(says), "{message:?} lacks {says:?}")
                }
                other => panic!("{says}: {other:?}"),
            }
        }
    }

    #[test]
    fn several_evictions_go_to_the_agent_one_path_each() {
        let asked = Request::CacheEvict(Evict::Paths(vec!["a/x".into(), "b".into()]));
        let calls: Vec<(&str, String)> = asked
            .split()
            .iter()
            .map(|r| {
                let call = r.http();
                (call.method, call.path)
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("DELETE", "/api/v1/cache/a/x".to_string()),
                ("DELETE", "/api/v1/cache/b".to_string())
            ]
        );
    }

    #[test]
    fn a_resolution_keeps_at_most_a_thousand_characters_of_comment() {
        let long = "x".repeat(5000);
        match Request::conflict_resolve(3, "merge", Some(long)).unwrap() {
            Request::ConflictResolve { comment, .. } => {
                assert_eq!(comment.map(|c| c.chars().count()), Some(1000))
            }
            other => panic!("{other:?}"),
        }
    }
}
