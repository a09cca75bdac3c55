//! The files the agent serves to firmware and iPXE: the rendered bootstrap
//! (`boot.ipxe`, `autoexec.ipxe`), files under the served roots
//! (`tftp.root`, then Debian's iPXE directories), and else the
//! controller's files through the content cache.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::boot::BootService;
use crate::content::fill::Progress;
use crate::content::{ContentCache, Lookup};
use crate::serve::fsroot::{self, PathError, ServedRoot};
use crate::serve::tftp::content::Content;
use crate::serve::tftp::{FileProvider, OpenError, OpenedFile};

/// Where Debian's `ipxe` package puts `undionly.kpxe`, `ipxe.efi`, `snponly.efi`.
pub use crate::config::SYSTEM_IPXE_DIRS;

/// Names that are answered with the rendered bootstrap script.
const BOOTSTRAP_NAMES: &[&str] = &["boot.ipxe", "autoexec.ipxe"];

/// The operator's root first, then the system iPXE directories that exist.
pub fn served_roots(operator_root: &Path) -> Vec<ServedRoot> {
    let mut roots = Vec::new();
    match ServedRoot::new(operator_root) {
        Some(root) => roots.push(root),
        None => {
            tracing::warn!(root = %operator_root.display(), "tftp.root does not exist; serving system iPXE files only")
        }
    }
    roots.extend(
        SYSTEM_IPXE_DIRS
            .iter()
            .filter_map(|dir| ServedRoot::system(Path::new(dir))),
    );
    roots
}

/// Resolves a request to a file on disk (blocking; call off the runtime).
pub fn resolve(roots: &[ServedRoot], requested: &str) -> Result<PathBuf, PathError> {
    fsroot::resolve_in(roots, requested)
}

pub struct BootFiles {
    boot: Arc<BootService>,
    roots: Arc<Vec<ServedRoot>>,
    public_url: Option<String>,
    http_port: u16,
    /// The controller's files (DESIGN §12), when a controller is configured.
    cache: Option<Arc<ContentCache>>,
}

impl BootFiles {
    pub fn new(
        boot: Arc<BootService>,
        roots: Arc<Vec<ServedRoot>>,
        public_url: Option<String>,
        http_port: u16,
        cache: Option<Arc<ContentCache>>,
    ) -> BootFiles {
        BootFiles {
            boot,
            roots,
            public_url,
            http_port,
            cache,
        }
    }

    /// A file not under the roots, from the content cache. TFTP needs the
    /// whole file (its size for `tsize`, blocks in order with no pause a
    /// client would time out on), so a miss waits for the fill to end;
    /// a client's retransmitted request meanwhile joins the same fill.
    async fn cached(
        cache: &Arc<ContentCache>,
        filename: &str,
        peer: SocketAddr,
    ) -> Result<PathBuf, OpenError> {
        let clean = fsroot::sanitise(filename)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .ok_or_else(|| OpenError::Forbidden(format!("{filename:?}: path not allowed")))?;
        let fill = match cache.lookup_for(&clean, Some(peer.ip())) {
            Ok(Lookup::Hit { file, .. }) => return Ok(file),
            Ok(Lookup::Filling(fill)) => fill,
            Ok(Lookup::Missing) => {
                return Err(OpenError::NotFound(format!(
                    "{filename:?} is not here nor at the controller"
                )));
            }
            Err(e) => return Err(OpenError::Io(e.to_string())),
        };
        let _waiting = fill.waiting();
        match fill.finished().await {
            Progress::Done { .. } => cache
                .cached_file(&clean)
                .ok_or_else(|| OpenError::Io(format!("{filename:?} was evicted as it arrived"))),
            Progress::Missing => Err(OpenError::NotFound(format!(
                "{filename:?} is not here nor at the controller"
            ))),
            Progress::Failed(reason) => Err(OpenError::Io(format!(
                "{filename:?} could not be fetched: {reason}"
            ))),
            Progress::Asking | Progress::Filling { .. } => {
                Err(OpenError::Io("the fill stopped".into()))
            }
        }
    }

    /// The agent URL for a TFTP client: `http.public_url`, else the address
    /// the request reached with the HTTP port.
    pub fn base_url_for(&self, local: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => match local.ip() {
                std::net::IpAddr::V4(ip) => format!("http://{ip}:{}", self.http_port),
                std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}", self.http_port),
            },
        }
    }
}

pub fn is_bootstrap_name(requested: &str) -> bool {
    BOOTSTRAP_NAMES.contains(&requested.trim_start_matches('/'))
}

impl FileProvider for BootFiles {
    async fn open(
        &self,
        filename: &str,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<OpenedFile, OpenError> {
        if is_bootstrap_name(filename) {
            let script = self.boot.bootstrap(&self.base_url_for(local)).into_bytes();
            return Ok(OpenedFile {
                size: script.len() as u64,
                content: Content::Memory(script.into()),
            });
        }
        let roots = self.roots.clone();
        let requested = filename.to_string();
        let resolved = tokio::task::spawn_blocking(move || resolve(&roots, &requested))
            .await
            .map_err(|e| OpenError::Io(e.to_string()))?;
        let path = match (resolved, &self.cache) {
            (Ok(path), _) => path,
            (Err(PathError::NotFound(_)), Some(cache)) => {
                BootFiles::cached(cache, filename, peer).await?
            }
            (Err(e @ PathError::NotFound(_)), None) => {
                return Err(OpenError::NotFound(e.to_string()));
            }
            (Err(e), _) => return Err(OpenError::Forbidden(e.to_string())),
        };
        let name = filename.to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| OpenError::Io(format!("cannot open {name:?}: {e}")))?;
            let size = file
                .metadata()
                .map_err(|e| OpenError::Io(format!("cannot stat {name:?}: {e}")))?
                .len();
            Ok::<_, OpenError>(OpenedFile {
                content: Content::File(file),
                size,
            })
        });
        opened.await.map_err(|e| OpenError::Io(e.to_string()))?
    }
}
