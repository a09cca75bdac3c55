//! `GET /assets/{path}`: files from the served roots, else from the
//! content cache (the controller's files), with single-range `Range`
//! support (iPXE and installers resume and probe with it).

use crate::logsafe;
use crate::ratelimit::RefusalLog;
use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::content::ContentCache;
use crate::content::fill::{Fill, Progress};
use crate::serve::bootfiles::{BootFileResolver, LocateError, Located};

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything (also for multi-range and syntax
    /// errors, which RFC 9110 lets a server ignore).
    Full,
    /// Inclusive byte range.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// A byte position as RFC 9110 spells it: ASCII digits only (Rust's own
/// parser would also take a sign, `+1`).
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match position(last) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            None => return RangeRequest::Full,
        },
        (false, _) => {
            let Some(start) = position(first) else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                len.saturating_sub(1)
            } else {
                match position(last) {
                    Some(end) if end >= start => end.min(len.saturating_sub(1)),
                    _ => return RangeRequest::Full,
                }
            };
            (start, end)
        }
        (true, true) => return RangeRequest::Full,
    };
    if len == 0 || range.0 >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial {
        start: range.0,
        end: range.1,
    }
}

/// Refused `/assets` paths: logged at most once per interval per peer,
/// and a few lines per interval overall (many peers, or spoofed ones,
/// cannot fill the log either).
static REFUSALS: std::sync::LazyLock<RefusalLog<Option<std::net::IpAddr>>> =
    std::sync::LazyLock::new(|| {
        RefusalLog::new(
            crate::ratelimit::LOG_INTERVAL,
            crate::ratelimit::REFUSALS_LOGGED_PER_INTERVAL,
        )
    });

pub async fn serve(
    files: &BootFileResolver,
    requested: String,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
) -> Response {
    match files.locate(&requested, client).await {
        Ok(Located::File(path)) => match tokio::fs::File::open(&path).await {
            Ok(file) => serve_file(file, &requested, headers).await,
            Err(e) => internal(format!("cannot open {requested:?}: {e}")),
        },
        Ok(Located::Cached { file, sha256 }) => {
            with_checksum(serve_mapped(file, &requested, headers).await, sha256)
        }
        Ok(Located::Filling { fill, clean }) => match files.cache() {
            Some(cache) => while_filling(cache, fill, &clean, &requested, headers).await,
            None => internal("a fill without a content cache".into()),
        },
        Err(LocateError::NotFound(e)) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(LocateError::Forbidden(e)) => {
            // DESIGN §10: the path a client chose is escaped and cut, and
            // refusals are throttled per peer and overall (with a count),
            // so that they can neither forge log lines nor fill the disk.
            if let Some(suppressed) = REFUSALS.admit(client) {
                tracing::warn!(path = %logsafe::shown(&requested), suppressed,
                    peer = %client.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                    "asset request refused (path not allowed)");
            }
            (StatusCode::FORBIDDEN, format!("{e}\n")).into_response()
        }
        Err(LocateError::Busy(e)) => {
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
        Err(LocateError::Io(e)) => internal(e),
    }
}

/// A complete file, opened, with Range.
async fn serve_file(mut file: tokio::fs::File, requested: &str, headers: &HeaderMap) -> Response {
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => return internal(format!("cannot stat {requested:?}: {e}")),
    };
    let (status, start, count) = match range_of(headers, len) {
        Ok(range) => range,
        Err(response) => return *response,
    };
    if start > 0
        && let Err(e) = file.seek(SeekFrom::Start(start)).await
    {
        return internal(format!("cannot seek {requested:?}: {e}"));
    }
    let stream = ReaderStream::with_capacity(file.take(count), 128 * 1024);
    respond(Body::from_stream(stream), status, start, Some(count), len)
}

/// A cached file (complete, never changed in place: a new version is a
/// new file) from a memory map: its pages go to the socket without a read
/// into a buffer of ours first. Files under the served roots are not
/// mapped: an operator may truncate one while it is sent.
async fn serve_mapped(file: std::fs::File, requested: &str, headers: &HeaderMap) -> Response {
    let mapped = tokio::task::spawn_blocking(move || {
        let mapped = match file.metadata() {
            // Empty: nothing to map.
            Ok(meta) if meta.len() == 0 => None,
            // SAFETY: content cache files are written once under tmp/ and
            // renamed into place complete; nothing writes or truncates
            // them after (eviction unlinks, which leaves the mapping valid).
            Ok(_) => unsafe { memmap2::Mmap::map(&file) }.ok(),
            Err(_) => None,
        };
        (mapped, file)
    })
    .await;
    let map = match mapped {
        Ok((Some(map), _)) => map,
        // Empty or not mappable: read it instead.
        Ok((None, file)) => {
            return serve_file(tokio::fs::File::from_std(file), requested, headers).await;
        }
        Err(e) => return internal(format!("cannot map {requested:?}: {e}")),
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let len = map.len() as u64;
    let (status, start, count) = match range_of(headers, len) {
        Ok(range) => range,
        Err(response) => return *response,
    };
    let whole = bytes::Bytes::from_owner(map);
    const PIECE: u64 = 1024 * 1024;
    let pieces = (start..start + count)
        .step_by(PIECE as usize)
        .map(move |at| {
            let end = (at + PIECE).min(start + count);
            Ok::<_, std::io::Error>(whole.slice(at as usize..end as usize))
        });
    respond(
        Body::from_stream(futures_util::stream::iter(pieces)),
        status,
        start,
        Some(count),
        len,
    )
}

/// What to send of a file of `len` bytes: the status, the first byte and
/// the count; or the 416 answer.
fn range_of(headers: &HeaderMap, len: u64) -> Result<(StatusCode, u64, u64), Box<Response>> {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match parse_range(range_header, len) {
        RangeRequest::Full => Ok((StatusCode::OK, 0, len)),
        RangeRequest::Partial { start, end } => {
            Ok((StatusCode::PARTIAL_CONTENT, start, end - start + 1))
        }
        RangeRequest::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            Err(Box::new(response))
        }
    }
}

fn respond(body: Body, status: StatusCode, start: u64, count: Option<u64>, len: u64) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(count) = count {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(value) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

/// A controller file the content cache is fetching now (DESIGN §12):
/// streamed to this client as it arrives.
async fn while_filling(
    cache: &Arc<ContentCache>,
    fill: Arc<Fill>,
    clean: &str,
    requested: &str,
    headers: &HeaderMap,
) -> Response {
    // This request waits for the fill until it has its reader (which
    // waits in turn): a fill no client waits for is abandoned.
    let _waiting = fill.waiting();
    let total = match fill.started().await {
        Progress::Filling { total, .. } => total,
        Progress::Done { len } => Some(len),
        Progress::Missing => {
            return (
                StatusCode::NOT_FOUND,
                format!("file {requested:?} not found here or at the controller\n"),
            )
                .into_response();
        }
        Progress::Failed(reason) if reason.starts_with(crate::content::UNCACHEABLE) => {
            return passed_through(cache, clean).await;
        }
        Progress::Failed(reason) => {
            tracing::warn!(path = %logsafe::shown(requested), reason = %logsafe::shown(&reason),
                "asset fill failed");
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot fetch {requested:?} from the controller: {reason}\n"),
            )
                .into_response();
        }
        Progress::Asking => return internal("a fill that never started".into()),
    };
    let response = match total {
        Some(len) => {
            let (status, start, count) = match range_of(headers, len) {
                Ok(range) => range,
                Err(response) => return *response,
            };
            let reader = fill.reader(start, Some(start + count));
            respond(
                Body::from_stream(reader.into_stream()),
                status,
                start,
                Some(count),
                len,
            )
        }
        // Length unknown until the end: the whole file, chunked.
        None => respond(
            Body::from_stream(fill.reader(0, None).into_stream()),
            StatusCode::OK,
            0,
            None,
            0,
        ),
    };
    with_checksum(response, fill.announced())
}

/// A file the cache cannot keep (DESIGN §12), streamed from the
/// controller to this client without being written here. The whole file
/// (a Range is not passed on): installers that resume re-read it.
async fn passed_through(cache: &Arc<ContentCache>, path: &str) -> Response {
    match cache.pass_through(path).await {
        Ok(remote) => {
            let len = remote.total;
            let response = respond(
                Body::from_stream(remote.body),
                StatusCode::OK,
                0,
                len,
                len.unwrap_or(0),
            );
            with_checksum(response, remote.sha256)
        }
        Err(e @ crate::content::CacheError::Busy(_)) => {
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

/// Passes the controller's checksum on to the node (installers check it).
fn with_checksum(mut response: Response, sha256: Option<String>) -> Response {
    if response.status().is_success()
        && let Some(value) = sha256.and_then(|s| HeaderValue::from_str(&s).ok())
    {
        response.headers_mut().insert("x-checksum-sha256", value);
    }
    response
}

fn internal(message: String) -> Response {
    tracing::error!("{message}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_parsing() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-1000"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-5000"), 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Full);
        assert_eq!(parse_range(Some("items=0-3"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn signed_positions_are_not_ranges() {
        use RangeRequest::*;
        for spec in [
            "bytes=+1",
            "bytes=+1-",
            "bytes=-+1",
            "bytes=1-+5",
            "bytes=+0-+9",
        ] {
            assert_eq!(parse_range(Some(spec), 100), Full, "{spec}");
        }
    }
}
