//! The files the agent serves to firmware and iPXE: the rendered bootstrap
//! (`boot.ipxe`, `autoexec.ipxe`), files under the served roots
//! (`tftp.root`, then Debian's iPXE directories), and else the
//! controller's files through the content cache.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::boot::BootService;
use crate::content::fill::{Fill, Progress};
use crate::content::{CacheError, ContentCache, Lookup};
use crate::model::boot::BootFacts;
use crate::model::mac::Mac;
use crate::model::script::ScriptFormat;
use crate::serve::fsroot::{self, PathError, ServedRoot};
use crate::serve::origin::AgentOrigin;
use crate::serve::tftp::content::Content;
use crate::serve::tftp::{FileProvider, OpenError, OpenedFile};

/// Where Debian's `ipxe` package puts `undionly.kpxe`, `ipxe.efi`, `snponly.efi`.
pub use crate::config::SYSTEM_IPXE_DIRS;

/// Names that are answered with the rendered bootstrap script.
const BOOTSTRAP_NAMES: &[&str] = &["boot.ipxe", "autoexec.ipxe"];

/// What Debian's signed GRUB network image loads first (its prefix is
/// `/grub`): answered with GRUB's bootstrap (DESIGN §14).
const GRUB_BOOTSTRAP: &str = "grub/grub.cfg";

/// Where GRUB's bootstrap asks for a machine's own configuration:
/// `grub/siteboot/<MAC>.cfg` (`$net_default_mac`, with colons).
const GRUB_NODE_DIR: &str = "grub/siteboot/";

/// The Secure Boot chain's loaders under the names the firmware, shim and
/// GRUB ask for, and where Debian installs them (`shim-signed`,
/// `grub-efi-amd64-signed`). `tftp.root` may hold its own under the same
/// names; it is looked at first.
pub const SIGNED_LOADERS: &[(&str, &str)] = &[
    ("shimx64.efi", "/usr/lib/shim/shimx64.efi.signed"),
    (
        "grubx64.efi",
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    ),
    // MokManager, which shim starts when a key enrolment is pending.
    ("mmx64.efi", "/usr/lib/shim/mmx64.efi.signed"),
];

/// The signed loader Debian installs under `requested`'s name, if any.
fn signed_loader(requested: &str) -> Option<PathBuf> {
    let name = requested.trim_start_matches('/');
    SIGNED_LOADERS
        .iter()
        .find(|(served, _)| *served == name)
        .map(|(_, path)| PathBuf::from(path))
        .filter(|path| path.is_file())
}

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

/// Where a boot file asked for by name is found, the same for every
/// transport (TFTP, `/assets`, and the DHCP and HTTP Boot answers that
/// name files): the served roots first (`tftp.root`, then the system iPXE
/// directories), then, with a controller, the content cache (DESIGN §12).
pub struct BootFileResolver {
    roots: Arc<Vec<ServedRoot>>,
    cache: Option<Arc<ContentCache>>,
}

/// A boot file found.
pub enum Located {
    /// A file under a served root (opened when it is sent: an operator
    /// may change it).
    File(PathBuf),
    /// A complete copy kept by the content cache, already open (with its
    /// checksum when verified): never changed in place, and a newer copy
    /// or an eviction cannot take it from this client.
    Cached {
        file: std::fs::File,
        sha256: Option<String>,
    },
    /// A controller file being fetched now, under its sanitised path:
    /// stream it as it arrives or wait for its end.
    Filling { fill: Arc<Fill>, clean: String },
}

/// Why a boot file cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{0}")]
    NotFound(String),
    /// The path was refused (traversal, a forbidden character).
    #[error("{0}")]
    Forbidden(String),
    /// The content cache is at its bound for misses: try again later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Io(String),
}

impl BootFileResolver {
    pub fn new(roots: Arc<Vec<ServedRoot>>, cache: Option<Arc<ContentCache>>) -> BootFileResolver {
        BootFileResolver { roots, cache }
    }

    /// The content cache, when a controller is configured.
    pub fn cache(&self) -> Option<&Arc<ContentCache>> {
        self.cache.as_ref()
    }

    /// Finds `requested` for `client` (the address counted against the
    /// cache's per-client miss limit).
    pub async fn locate(
        &self,
        requested: &str,
        client: Option<IpAddr>,
    ) -> Result<Located, LocateError> {
        let roots = self.roots.clone();
        let lookup = requested.to_string();
        let resolved = tokio::task::spawn_blocking(move || resolve(&roots, &lookup))
            .await
            .map_err(|e| LocateError::Io(format!("boot file lookup failed: {e}")))?;
        // Not under the roots: a signed loader Debian installed, else the
        // controller's file.
        let resolved = match resolved {
            Err(PathError::NotFound(e)) => signed_loader(requested).ok_or(PathError::NotFound(e)),
            found => found,
        };
        match (resolved, &self.cache) {
            (Ok(path), _) => Ok(Located::File(path)),
            (Err(PathError::NotFound(_)), Some(cache)) => from_cache(cache, requested, client),
            (Err(e @ (PathError::NotFound(_) | PathError::NotAFile(_))), _) => {
                Err(LocateError::NotFound(e.to_string()))
            }
            (Err(e), _) => Err(LocateError::Forbidden(e.to_string())),
        }
    }
}

/// A file not under the roots, from the content cache. Only paths that
/// passed the same sanitising as local files go out, as the sanitised
/// segments.
fn from_cache(
    cache: &Arc<ContentCache>,
    requested: &str,
    client: Option<IpAddr>,
) -> Result<Located, LocateError> {
    let clean = fsroot::sanitise(requested)
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .ok_or_else(|| LocateError::Forbidden(format!("{requested:?}: path not allowed")))?;
    match cache.lookup_for(&clean, client) {
        Ok(Lookup::Hit { file, sha256 }) => Ok(Located::Cached { file, sha256 }),
        Ok(Lookup::Filling(fill)) => Ok(Located::Filling { fill, clean }),
        Ok(Lookup::Missing) => Err(LocateError::NotFound(format!(
            "file {requested:?} not found here or at the controller"
        ))),
        Err(e @ CacheError::Busy(_)) => Err(LocateError::Busy(e.to_string())),
        Err(e) => Err(LocateError::Io(format!("content cache: {e}"))),
    }
}

/// The TFTP server's files: the bootstrap script by its names, else what
/// the [`BootFileResolver`] finds.
pub struct BootFiles {
    boot: Arc<BootService>,
    files: Arc<BootFileResolver>,
    origin: AgentOrigin,
}

impl BootFiles {
    pub fn new(
        boot: Arc<BootService>,
        files: Arc<BootFileResolver>,
        origin: AgentOrigin,
    ) -> BootFiles {
        BootFiles {
            boot,
            files,
            origin,
        }
    }

    /// A controller file being fetched: TFTP needs the whole file (its
    /// size for `tsize`, blocks in order with no pause a client would time
    /// out on), so the request waits for the fill to end; a client's
    /// retransmitted request meanwhile joins the same fill.
    async fn filled(
        &self,
        fill: Arc<Fill>,
        clean: &str,
        filename: &str,
    ) -> Result<std::fs::File, OpenError> {
        let _waiting = fill.waiting();
        match fill.finished().await {
            Progress::Done { .. } => self
                .files
                .cache()
                .and_then(|cache| cache.open_cached(clean))
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
            let script = self
                .boot
                .bootstrap(&self.origin.url_at(local.ip()), ScriptFormat::Ipxe);
            return Ok(crate::serve::script::tftp_file(&script));
        }
        let name = filename.trim_start_matches('/');
        if name == GRUB_BOOTSTRAP {
            let script = self
                .boot
                .bootstrap(&self.origin.url_at(local.ip()), ScriptFormat::Grub);
            return Ok(crate::serve::script::tftp_file(&script));
        }
        if let Some(mac) = name
            .strip_prefix(GRUB_NODE_DIR)
            .and_then(|rest| rest.strip_suffix(".cfg"))
        {
            let mac: Mac = mac
                .parse()
                .map_err(|e| OpenError::NotFound(format!("{filename:?}: {e}")))?;
            // Debian's signed GRUB is x86_64 UEFI.
            let facts = BootFacts {
                format: ScriptFormat::Grub,
                arch: Some("x86_64".into()),
                platform: Some("efi".into()),
                ..BootFacts::default()
            };
            let answer = self
                .boot
                .boot(mac, &facts, &self.origin.url_at(local.ip()))
                .await;
            tracing::info!(%mac, state = answer.state.map(|s| s.as_str()).unwrap_or("unknown"),
                action = answer.action.as_str(), source = answer.source.as_str(),
                "grub configuration served");
            return Ok(crate::serve::script::tftp_file(&answer.script));
        }
        let located = match self.files.locate(filename, Some(peer.ip())).await {
            Ok(Located::File(path)) => Err(path),
            Ok(Located::Cached { file, .. }) => Ok(file),
            Ok(Located::Filling { fill, clean }) => Ok(self.filled(fill, &clean, filename).await?),
            Err(LocateError::NotFound(e)) => return Err(OpenError::NotFound(e)),
            Err(LocateError::Forbidden(e)) => return Err(OpenError::Forbidden(e)),
            Err(LocateError::Busy(e) | LocateError::Io(e)) => return Err(OpenError::Io(e)),
        };
        let name = filename.to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let file = match located {
                Ok(file) => file,
                Err(path) => std::fs::File::open(&path)
                    .map_err(|e| OpenError::Io(format!("cannot open {name:?}: {e}")))?,
            };
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
