//! Resolving a client-supplied path inside a served directory, for TFTP and
//! `/assets`. A request may name only regular files that are inside the root
//! after every symlink is followed.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error(
        "path {0:?} is not allowed (empty, '..', ';', backslash, drive letter or control character)"
    )]
    Forbidden(String),
    #[error("file {0:?} not found")]
    NotFound(String),
    #[error("path {0:?} leaves the served directory")]
    Escapes(String),
    #[error("path {0:?} is not a regular file")]
    NotAFile(String),
}

/// Checks the request text itself and returns it as a relative path
/// (DESIGN §10): the rule is [`crate::model::path::relative`]'s.
pub fn sanitise(requested: &str) -> Result<PathBuf, PathError> {
    crate::model::path::relative(requested)
        .map_err(|crate::model::path::ForbiddenPath(text)| PathError::Forbidden(text))
}

/// A directory files are served from, canonicalised once.
#[derive(Debug, Clone)]
pub struct ServedRoot {
    canonical: PathBuf,
    /// Follow symlinks wherever they lead. Only for directories that a
    /// package manager owns (Debian's `/usr/lib/ipxe/ipxe.efi` is a link to
    /// `/boot/ipxe.efi`); never for an operator's tree.
    trust_symlinks: bool,
}

impl ServedRoot {
    /// `None` when the directory does not exist (it is then simply skipped).
    pub fn new(dir: &Path) -> Option<ServedRoot> {
        Self::with_trust(dir, false)
    }

    /// A root owned by the system (see `trust_symlinks`).
    pub fn system(dir: &Path) -> Option<ServedRoot> {
        Self::with_trust(dir, true)
    }

    fn with_trust(dir: &Path, trust_symlinks: bool) -> Option<ServedRoot> {
        dir.canonicalize()
            .ok()
            .filter(|p| p.is_dir())
            .map(|canonical| ServedRoot {
                canonical,
                trust_symlinks,
            })
    }

    /// Resolves `requested` (already sanitised) to a regular file inside the
    /// root. Blocking: call it off the async runtime.
    pub fn resolve(&self, requested: &str, relative: &Path) -> Result<PathBuf, PathError> {
        let joined = self.canonical.join(relative);
        let real = match joined.canonicalize() {
            Ok(real) => real,
            Err(_) => return Err(PathError::NotFound(requested.to_string())),
        };
        if !self.trust_symlinks && !real.starts_with(&self.canonical) {
            return Err(PathError::Escapes(requested.to_string()));
        }
        if !real.is_file() {
            return Err(PathError::NotAFile(requested.to_string()));
        }
        Ok(real)
    }
}

/// Looks `requested` up in each root in order; the first hit wins. An
/// escape attempt stops the search at once rather than trying later roots.
pub fn resolve_in(roots: &[ServedRoot], requested: &str) -> Result<PathBuf, PathError> {
    let relative = sanitise(requested)?;
    let mut last = PathError::NotFound(requested.to_string());
    for root in roots {
        match root.resolve(requested, &relative) {
            Ok(path) => return Ok(path),
            Err(e @ PathError::Escapes(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitise_refuses_escapes() {
        for bad in [
            "",
            "/",
            "..",
            "../etc/passwd",
            "a/../../b",
            "a\\..\\b",
            "C:/windows",
            "a\0b",
            "a\nb",
            "/..",
            "a/./b",
            "a//b",
            "dir/",
            "%2e%2e/x",
            "%252e%252e/sites/s/nodes",
            "f?x=1",
            "f#frag",
            "a/..;/..;/sites/default/nodes",
            "a;jsessionid=1/b",
            ".. /x",
            "a/. /b",
            "a/.../b",
            "a/.. ./b",
        ] {
            assert!(
                matches!(sanitise(bad), Err(PathError::Forbidden(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            sanitise("/undionly.kpxe").unwrap(),
            PathBuf::from("undionly.kpxe")
        );
        assert_eq!(
            sanitise("debian12/vmlinuz").unwrap(),
            PathBuf::from("debian12/vmlinuz")
        );
        assert!(sanitise("debian-12.5/.hidden/initrd.gz").is_ok());
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::fs::write(root.join("ok.bin"), b"o").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
        std::os::unix::fs::symlink(root.join("ok.bin"), root.join("inside-link")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let roots = vec![ServedRoot::new(&root).unwrap()];
        assert!(resolve_in(&roots, "ok.bin").is_ok());
        assert!(resolve_in(&roots, "inside-link").is_ok());
        assert_eq!(
            resolve_in(&roots, "leak"),
            Err(PathError::Escapes("leak".into()))
        );
        assert_eq!(
            resolve_in(&roots, "sub"),
            Err(PathError::NotAFile("sub".into()))
        );
        assert_eq!(
            resolve_in(&roots, "nope"),
            Err(PathError::NotFound("nope".into()))
        );
    }

    #[test]
    fn later_roots_are_searched() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("x"), b"x").unwrap();
        let roots = vec![
            ServedRoot::new(a.path()).unwrap(),
            ServedRoot::new(b.path()).unwrap(),
        ];
        assert!(
            resolve_in(&roots, "x")
                .unwrap()
                .starts_with(b.path().canonicalize().unwrap())
        );
        assert!(ServedRoot::new(Path::new("/nonexistent/dir")).is_none());
    }

    #[test]
    fn system_roots_follow_package_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"e").unwrap();
        std::os::unix::fs::symlink(dir.path().join("ipxe.efi"), root.join("ipxe.efi")).unwrap();
        assert!(resolve_in(&[ServedRoot::system(&root).unwrap()], "ipxe.efi").is_ok());
        assert!(resolve_in(&[ServedRoot::new(&root).unwrap()], "ipxe.efi").is_err());
        assert!(resolve_in(&[ServedRoot::system(&root).unwrap()], "../ipxe.efi").is_err());
    }
}
