//! Sending a rendered script: the one place that turns a
//! [`Script`] into what a transport sends (an HTTP answer, a TFTP file),
//! with the bytes shared, never copied.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;

use std::sync::OnceLock;

use crate::model::boot::Source;
use crate::model::script::{Script, ScriptFormat};
use crate::serve::tftp::OpenedFile;
use crate::serve::tftp::content::Content;

/// The HTTP answer for `script`; `source` is the answer's data source
/// (`X-Siteboot-Source`), for boot scripts.
pub fn http_answer(script: &Script, source: Option<Source>) -> Response {
    let mut response = Response::new(axum::body::Body::from(script.bytes()));
    *response.headers_mut() = answer_headers(script.format(), source).clone();
    response
}

/// An answer's headers, built once per format and source and copied per
/// answer: a copy is a third of the cost of inserting them (each insert
/// hashes its name), and every boot answer has them.
fn answer_headers(format: ScriptFormat, source: Option<Source>) -> &'static HeaderMap {
    const SOURCES: [Option<Source>; 5] = [
        None,
        Some(Source::Live),
        Some(Source::Cache),
        Some(Source::Offline),
        Some(Source::Standalone),
    ];
    const FORMATS: [ScriptFormat; 2] = [ScriptFormat::Ipxe, ScriptFormat::Grub];
    static BUILT: OnceLock<Vec<HeaderMap>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        FORMATS
            .iter()
            .flat_map(|format| SOURCES.iter().map(|source| build_headers(*format, *source)))
            .collect()
    });
    let format_at = match format {
        ScriptFormat::Ipxe => 0,
        ScriptFormat::Grub => 1,
    };
    let source_at = match source {
        None => 0,
        Some(Source::Live) => 1,
        Some(Source::Cache) => 2,
        Some(Source::Offline) => 3,
        Some(Source::Standalone) => 4,
    };
    &built[format_at * SOURCES.len() + source_at]
}

fn build_headers(format: ScriptFormat, source: Option<Source>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(format)),
    );
    // A script follows the node's state: never kept by a proxy or client.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(source) = source {
        headers.insert(SOURCE_HEADER, HeaderValue::from_static(source.as_str()));
    }
    headers
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_and_source_gets_its_own_headers() {
        for format in [ScriptFormat::Ipxe, ScriptFormat::Grub] {
            let script = Script::new(format, "echo hi\n".to_string());
            for source in [
                None,
                Some(Source::Live),
                Some(Source::Cache),
                Some(Source::Offline),
                Some(Source::Standalone),
            ] {
                let answer = http_answer(&script, source);
                let headers = answer.headers();
                assert_eq!(headers[header::CONTENT_TYPE], content_type(format));
                assert_eq!(headers[header::CACHE_CONTROL], "no-store");
                assert_eq!(
                    headers.get(SOURCE_HEADER).map(|v| v.to_str().unwrap_or("")),
                    source.map(Source::as_str),
                    "{source:?}"
                );
                assert_eq!(headers.len(), 2 + usize::from(source.is_some()));
            }
        }
    }
}
