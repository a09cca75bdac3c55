//! Sending a rendered script: the one place that turns a
//! [`Script`] into what a transport sends (an HTTP answer, a TFTP file),
//! with the bytes shared, never copied.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;

use crate::model::script::{Script, ScriptFormat};
use crate::serve::tftp::OpenedFile;
use crate::serve::tftp::content::Content;

/// The HTTP answer for `script`; `source` is the answer's data source
/// (`X-Siteboot-Source`), for boot scripts.
pub fn http_answer(script: &Script, source: Option<&'static str>) -> Response {
    // The headers built whole, sized once: every boot answer has them.
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(script.format())),
    );
    // A script follows the node's state: never kept by a proxy or client.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(source) = source {
        headers.insert(SOURCE_HEADER, HeaderValue::from_static(source));
    }
    let mut response = Response::new(axum::body::Body::from(script.bytes()));
    *response.headers_mut() = headers;
    response
}

/// `X-Siteboot-Source`, named once rather than parsed per answer.
const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-siteboot-source");

/// `script` as a file a TFTP client reads.
pub fn tftp_file(script: &Script) -> OpenedFile {
    OpenedFile {
        size: script.len() as u64,
        content: Content::Memory(script.bytes()),
    }
}

fn content_type(format: ScriptFormat) -> &'static str {
    match format {
        ScriptFormat::Ipxe | ScriptFormat::Grub => "text/plain; charset=utf-8",
    }
}
