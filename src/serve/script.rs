//! Sending a rendered script: the one place that turns a
//! [`Script`] into what a transport sends (an HTTP answer, a TFTP file),
//! with the bytes shared, never copied.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::model::script::{Script, ScriptFormat};
use crate::serve::tftp::OpenedFile;
use crate::serve::tftp::content::Content;

/// The HTTP answer for `script`; `source` is the answer's data source
/// (`X-Siteboot-Source`), for boot scripts.
pub fn http_answer(script: &Script, source: Option<&'static str>) -> Response {
    let mut response = script.bytes().into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(script.format())),
    );
    // A script follows the node's state: never kept by a proxy or client.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(source) = source {
        h.insert("x-siteboot-source", HeaderValue::from_static(source));
    }
    response
}

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
