//! `GET /assets/{path}`: files from the served roots, with single-range
//! `Range` support (iPXE and installers resume and probe with it).

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::central::port::ControllerPort;
use crate::serve::bootfiles;
use crate::serve::fsroot::{PathError, ServedRoot};

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

pub async fn serve(
    roots: Arc<Vec<ServedRoot>>,
    requested: String,
    headers: &HeaderMap,
    port: &ControllerPort,
) -> Response {
    let lookup = requested.clone();
    let resolved = tokio::task::spawn_blocking(move || bootfiles::resolve(&roots, &lookup)).await;
    let path = match resolved {
        Ok(Ok(path)) => path,
        Ok(Err(PathError::NotFound(_))) if port.mode().has_controller() => {
            return proxy(port, &requested).await;
        }
        Ok(Err(e @ (PathError::NotFound(_) | PathError::NotAFile(_)))) => {
            return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response();
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %requested, error = %e, "asset request refused");
            return (StatusCode::FORBIDDEN, format!("{e}\n")).into_response();
        }
        Err(e) => return internal(format!("asset lookup failed: {e}")),
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => return internal(format!("cannot open {requested:?}: {e}")),
    };
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => return internal(format!("cannot stat {requested:?}: {e}")),
    };
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range_header, len) {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    if start > 0
        && let Err(e) = file.seek(SeekFrom::Start(start)).await
    {
        return internal(format!("cannot seek {requested:?}: {e}"));
    }
    let stream = ReaderStream::with_capacity(file.take(count), 128 * 1024);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, value);
    }
    response
}

/// Streams a file the agent does not have from the controller (the
/// content cache that will keep such files comes later). Range is not
/// honoured here: the whole file is sent with 200, which RFC 9110 allows.
async fn proxy(port: &ControllerPort, requested: &str) -> Response {
    // Only paths that passed the same sanitising as local files go out,
    // as the sanitised segments.
    let Some(clean) = crate::serve::fsroot::sanitise(requested)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
    else {
        return (StatusCode::FORBIDDEN, "path not allowed\n").into_response();
    };
    let fetched = port.fetch_file(&clean).await;
    match fetched {
        Ok(Some(file)) => {
            let mut response = Response::new(Body::from_stream(file.body));
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(len) = file.length {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            if let Some(sum) = file.sha256.and_then(|s| HeaderValue::from_str(&s).ok()) {
                h.insert("x-checksum-sha256", sum);
            }
            response
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("file {requested:?} not found here or at the controller\n"),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = requested, error = %e, "asset proxy failed");
            (
                StatusCode::BAD_GATEWAY,
                format!("cannot fetch {requested:?} from the controller: {e}\n"),
            )
                .into_response()
        }
    }
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
