//! The one rule for a path a client names (a TFTP file, an `/assets`
//! path, a file to prefetch): plain names below a root, nothing that a
//! filesystem or a server downstream could read a second way.

use std::path::{Component, PathBuf};

/// A requested path refused by [`relative`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "path {0:?} is not allowed (empty, '..', ';', backslash, drive letter or control character)"
)]
pub struct ForbiddenPath(pub String);

/// Checks the request text itself and returns it as a relative path
/// (DESIGN §10). Leading slashes are dropped: firmware often asks for
/// `/undionly.kpxe` and means the root of the TFTP tree. The rest is split
/// into segments, and a segment that is empty, `.` or `..` (also with
/// trailing spaces or dots), or holds `%`, `?`, `#`, `;`, a backslash, a NUL or a control character refuses the whole
/// path: the text has been decoded once already, and nothing downstream
/// (a filesystem, the controller's URL) may read it a second way.
pub fn relative(requested: &str) -> Result<PathBuf, ForbiddenPath> {
    let forbidden = || ForbiddenPath(requested.to_string());
    let trimmed = requested.trim_start_matches('/');
    if trimmed.is_empty() || trimmed.as_bytes().get(1) == Some(&b':') {
        return Err(forbidden());
    }
    let mut clean = PathBuf::new();
    for segment in trimmed.split('/') {
        // Dots with trailing spaces or dots (`.. `, `...`) are `..` to
        // Windows and to some servers; `;` starts a path parameter that
        // Tomcat, Spring and Jetty strip, reading `..;` as `..`.
        let refused = segment.is_empty()
            || segment.chars().all(|c| matches!(c, '.' | ' '))
            || segment
                .chars()
                .any(|c| matches!(c, '%' | '?' | '#' | ';' | '\\') || c.is_control());
        if refused {
            return Err(forbidden());
        }
        clean.push(segment);
    }
    // Belt and braces: what was pushed is plain names only.
    if clean
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(forbidden());
    }
    Ok(clean)
}
