//! Configuration: one TOML file, every key overridable by `SITEBOOT_*`
//! environment variables (DESIGN §2). Keys are read one by one so that any
//! bad value is reported with the key (and the variable) that carried it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::node::{BootMethod, Workflow};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    #[error("unknown configuration key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
}

pub use crate::model::decision::OfflineDefault;

/// The system's iPXE directories, served after `tftp.root` (Debian's
/// `ipxe` package).
pub const SYSTEM_IPXE_DIRS: &[&str] = &["/usr/lib/ipxe", "/usr/share/ipxe"];

/// `path` as an absolute path with `.`/`..` and symlinks resolved as far
/// as it exists (the rest appended as written).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// DESIGN §10: the data directory holds the admin token and the database;
/// inside a served root, any node could download both.
fn data_dir_outside_served_roots(data_dir: &Path, tftp_root: &Path) -> Result<(), String> {
    let data = resolved(data_dir);
    let roots = std::iter::once(("tftp.root", tftp_root.to_path_buf())).chain(
        SYSTEM_IPXE_DIRS
            .iter()
            .map(|d| ("the system iPXE directory", PathBuf::from(d))),
    );
    for (key, root) in roots {
        let root_resolved = resolved(&root);
        if data.starts_with(&root_resolved) {
            return Err(format!(
                "{} lies inside {key} ({}), which is served to every node over TFTP and \
                 /assets: the admin token and the database would be downloadable; move \
                 `data_dir` or `tftp.root`",
                data_dir.display(),
                root.display()
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct TftpConfig {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub max_sessions: usize,
    /// Sessions one client address may hold at once (DESIGN §10).
    pub max_sessions_per_client: usize,
    /// The largest retransmission `timeout` a client may negotiate.
    pub max_timeout: Duration,
    /// A session that makes no progress this long ends.
    pub stall_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base URL nodes use to reach the agent; `None` = derive it per request.
    pub public_url: Option<String>,
    /// A request's head must arrive within this (DESIGN §10).
    pub header_timeout: Duration,
    /// A keep-alive connection waiting for its next request is closed
    /// after this, and so is one with a request under way but no bytes
    /// either way for this long.
    pub idle_timeout: Duration,
    /// Open connections at most; None: half the process's file limit.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct CentralConfig {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The registration body's `token` when the controller wants a second
    /// credential there (PureBoot: the site's agent token); None: the
    /// bearer token.
    pub registration_token_file: Option<PathBuf>,
    pub check_interval: Duration,
    pub request_timeout: Duration,
    pub boot_lookup_deadline: Duration,
    /// Longest a write waits for the controller before it is queued.
    pub write_deadline: Duration,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub heartbeat_interval: Duration,
    pub sync_interval: Duration,
}

/// How a conflict is settled when it is found (DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// State mismatches only: a change the node observed (an installer's
    /// report) is kept, an operator's change at the site yields.
    Auto,
    CentralWins,
    LocalWins,
    /// Left open for an operator.
    Manual,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::CentralWins => "central_wins",
            Policy::LocalWins => "local_wins",
            Policy::Manual => "manual",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Policy::Auto),
            "central_wins" => Ok(Policy::CentralWins),
            "local_wins" => Ok(Policy::LocalWins),
            "manual" => Ok(Policy::Manual),
            other => Err(format!(
                "{other:?}: expected auto, central_wins, local_wins or manual"
            )),
        }
    }
}

/// A policy per conflict kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConflictPolicies {
    pub state_mismatch: Policy,
    pub missing_central: Policy,
    pub missing_local: Policy,
}

impl Default for ConflictPolicies {
    fn default() -> Self {
        ConflictPolicies {
            state_mismatch: Policy::Auto,
            missing_central: Policy::Manual,
            missing_local: Policy::Manual,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_items: u64,
    /// Of `max_items`, items caused by nodes at most (DESIGN §7 "Admission").
    pub max_node_items: u64,
    /// Items one node's MAC may add to the queue per minute.
    pub node_items_per_minute: u32,
    pub batch_size: u32,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The content cache (DESIGN §12).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Unpinned files are evicted, least recently used first, above this.
    pub max_bytes: u64,
    /// Background prefetches together read at most this many bytes a second.
    pub prefetch_rate: u64,
    /// A cached file is checked against the controller at most this often.
    pub revalidate_interval: Duration,
    /// Fills that client misses may run at once (DESIGN §12).
    pub max_fills: usize,
    /// Misses one client address may cause per minute.
    pub misses_per_client: u32,
    /// A file the controller answered 404 for is not asked for again for
    /// this long.
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub site_id: String,
    pub data_dir: PathBuf,
    pub tftp: TftpConfig,
    pub http: HttpConfig,
    pub templates_dir: PathBuf,
    pub central: CentralConfig,
    pub offline_default_action: OfflineDefault,
    /// How conflicts of each kind are settled when found (DESIGN §8),
    /// until changed at run time.
    pub conflicts: ConflictPolicies,
    pub queue: QueueConfig,
    pub cache: CacheConfig,
    /// `GET /metrics` without the admin token (`metrics.open`).
    pub metrics_open: bool,
    /// `log.format`: lines for people (`text`) or one JSON object per line.
    pub log_format: LogFormat,
    /// Standalone: MACs first seen at boot kept at most (`nodes.max_discovered`).
    pub max_discovered: usize,
    pub admin_token_file: PathBuf,
    /// Standalone workflows (`[workflows.<id>]`), by id.
    pub workflows: BTreeMap<String, Workflow>,
}

/// The known keys: section → keys. Top-level keys live under "".
const KEYS: &[(&str, &[&str])] = &[
    ("", &["site_id", "data_dir"]),
    (
        "tftp",
        &[
            "listen",
            "root",
            "max_sessions",
            "max_sessions_per_client",
            "max_timeout",
            "stall_timeout",
        ],
    ),
    (
        "http",
        &[
            "listen",
            "public_url",
            "header_timeout",
            "idle_timeout",
            "max_connections",
        ],
    ),
    ("templates", &["dir"]),
    (
        "central",
        &[
            "url",
            "token_file",
            "registration_token_file",
            "check_interval",
            "request_timeout",
            "boot_lookup_deadline",
            "write_deadline",
            "failure_threshold",
            "recovery_threshold",
            "heartbeat_interval",
            "sync_interval",
        ],
    ),
    ("offline", &["default_action"]),
    (
        "conflicts",
        &["state_mismatch", "missing_central", "missing_local"],
    ),
    (
        "queue",
        &[
            "max_items",
            "max_node_items",
            "node_items_per_minute",
            "batch_size",
            "max_retries",
            "retry_base",
            "retry_max",
        ],
    ),
    ("nodes", &["max_discovered"]),
    (
        "cache",
        &[
            "max_bytes",
            "prefetch_rate",
            "revalidate_interval",
            "max_fills",
            "misses_per_client",
            "negative_ttl",
        ],
    ),
    ("admin", &["token_file"]),
    ("metrics", &["open"]),
    ("log", &["format"]),
];

/// Environment variables with the prefix that are not configuration keys.
const NON_KEY_VARIABLES: &[&str] = &["SITEBOOT_LOG"];

/// One raw value and where it came from, for error messages.
struct RawValue {
    value: toml::Value,
    origin: String,
}

struct Source {
    values: HashMap<String, RawValue>,
    workflows: Option<toml::Value>,
    file_origin: String,
}

impl Config {
    /// Loads `file` (if any) and applies the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Loads with an explicit environment (tests use this).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut source = match file {
            Some(path) => Source::from_file(path)?,
            None => Source {
                values: HashMap::new(),
                workflows: None,
                file_origin: "built-in defaults".into(),
            },
        };
        source.apply_env(env)?;
        source.build()
    }
}

impl Source {
    fn from_file(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    fn from_toml(text: &str, path: &Path) -> Result<Source, ConfigError> {
        let origin = path.display().to_string();
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        let mut values = HashMap::new();
        let mut workflows = None;
        for (name, value) in table {
            if name == "workflows" {
                workflows = Some(value);
                continue;
            }
            match value {
                toml::Value::Table(section) if is_section(&name) => {
                    for (key, value) in section {
                        let full = format!("{name}.{key}");
                        if !is_key(&name, &key) {
                            return Err(ConfigError::UnknownKey { key: full, origin });
                        }
                        values.insert(
                            full,
                            RawValue {
                                value,
                                origin: origin.clone(),
                            },
                        );
                    }
                }
                value if is_key("", &name) => {
                    values.insert(
                        name,
                        RawValue {
                            value,
                            origin: origin.clone(),
                        },
                    );
                }
                _ => return Err(ConfigError::UnknownKey { key: name, origin }),
            }
        }
        Ok(Source {
            values,
            workflows,
            file_origin: origin,
        })
    }

    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SITEBOOT_") else {
                continue;
            };
            if NON_KEY_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let key = env_key(&lower).ok_or_else(|| ConfigError::UnknownKey {
                key: lower.clone(),
                origin: format!("environment variable {name}"),
            })?;
            self.values.insert(
                key,
                RawValue {
                    value: toml::Value::String(value),
                    origin: format!("environment variable {name}"),
                },
            );
        }
        Ok(())
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: self
                .values
                .get(key)
                .map(|raw| raw.origin.clone())
                .unwrap_or_else(|| self.file_origin.clone()),
            message: message.into(),
        }
    }

    fn string(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.values.get(key) {
            None => Ok(default.to_string()),
            Some(RawValue {
                value: toml::Value::String(s),
                ..
            }) => Ok(s.clone()),
            Some(_) => Err(self.invalid(key, "expected a string")),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let value = self.string(key, "")?;
        Ok(if value.trim().is_empty() {
            None
        } else {
            Some(value)
        })
    }

    fn integer(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let value = match self.values.get(key) {
            None => return Ok(default),
            Some(RawValue {
                value: toml::Value::Integer(i),
                ..
            }) => u64::try_from(*i).map_err(|_| self.invalid(key, format!("{i} is negative")))?,
            Some(RawValue {
                value: toml::Value::String(s),
                ..
            }) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| self.invalid(key, format!("{s:?} is not a whole number")))?,
            Some(_) => return Err(self.invalid(key, "expected a whole number")),
        };
        if value < min || value > max {
            return Err(self.invalid(key, format!("{value} is outside {min}..={max}")));
        }
        Ok(value)
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.values.get(key) {
            None => Ok(default),
            Some(RawValue {
                value: toml::Value::Boolean(b),
                ..
            }) => Ok(*b),
            // From the environment: text.
            Some(RawValue {
                value: toml::Value::String(s),
                ..
            }) => match s.trim() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => Err(self.invalid(key, format!("{other:?} is not true or false"))),
            },
            Some(_) => Err(self.invalid(key, "expected true or false")),
        }
    }

    fn duration(&self, key: &str, default: &str) -> Result<Duration, ConfigError> {
        let text = self.string(key, default)?;
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            self.invalid(
                key,
                format!("{text:?} is not a duration such as 250ms, 30s or 5m ({e})"),
            )
        })?;
        if duration.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(duration)
    }

    /// A size such as `20 GiB`, `512MiB`, `50 MB` or a byte count (a
    /// rate may end in `/s`); more than zero.
    fn size(&self, key: &str, default: &str) -> Result<u64, ConfigError> {
        let text = match self.values.get(key) {
            Some(RawValue {
                value: toml::Value::Integer(n),
                ..
            }) => n.to_string(),
            _ => self.string(key, default)?,
        };
        let size = parse_size(&text).ok_or_else(|| {
            self.invalid(
                key,
                format!("{text:?} is not a size such as 20 GiB, 512 MiB or 50 MB"),
            )
        })?;
        if size == 0 {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(size)
    }

    fn socket_addr(&self, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.string(key, default)?;
        // `:69` is accepted as "all addresses, port 69".
        let normalised = if text.starts_with(':') {
            format!("0.0.0.0{text}")
        } else {
            text.clone()
        };
        normalised.parse().map_err(|_| {
            self.invalid(
                key,
                format!("{text:?} is not an address such as 0.0.0.0:8080 or :69"),
            )
        })
    }

    fn url(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(url) = self.optional_string(key)? else {
            return Ok(None);
        };
        let url = url.trim().trim_end_matches('/').to_string();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                self.invalid(key, format!("{url:?} must start with http:// or https://"))
            })?;
        if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(key, format!("{url:?} is not a valid URL")));
        }
        Ok(Some(url))
    }

    fn build(self) -> Result<Config, ConfigError> {
        let site_id = self.string("site_id", "default")?;
        if site_id.is_empty()
            || !site_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(self.invalid(
                "site_id",
                format!("{site_id:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        let data_dir = PathBuf::from(self.string("data_dir", "./siteboot-data")?);
        let offline_default_action = match self.string("offline.default_action", "local")?.as_str()
        {
            "local" => OfflineDefault::Local,
            "discovery" => OfflineDefault::Discovery,
            "last_known" => OfflineDefault::LastKnown,
            other => {
                return Err(self.invalid(
                    "offline.default_action",
                    format!("{other:?}: expected local, discovery or last_known"),
                ));
            }
        };
        let conflicts = ConflictPolicies {
            state_mismatch: self.policy("conflicts.state_mismatch", Policy::Auto, true)?,
            missing_central: self.policy("conflicts.missing_central", Policy::Manual, false)?,
            missing_local: self.policy("conflicts.missing_local", Policy::Manual, false)?,
        };
        let admin_token_file = match self.optional_string("admin.token_file")? {
            Some(path) => PathBuf::from(path),
            None => data_dir.join("admin.token"),
        };
        let config = Config {
            tftp: TftpConfig {
                listen: self.socket_addr("tftp.listen", "0.0.0.0:6969")?,
                root: PathBuf::from(self.string("tftp.root", "boot-assets")?),
                max_sessions: self.integer("tftp.max_sessions", 1024, 1, 65536)? as usize,
                max_sessions_per_client: self.integer(
                    "tftp.max_sessions_per_client",
                    16,
                    1,
                    65536,
                )? as usize,
                max_timeout: self.duration("tftp.max_timeout", "5s")?,
                stall_timeout: self.duration("tftp.stall_timeout", "30s")?,
            },
            http: HttpConfig {
                listen: self.socket_addr("http.listen", "0.0.0.0:8080")?,
                public_url: self.url("http.public_url")?,
                header_timeout: self.duration("http.header_timeout", "10s")?,
                idle_timeout: self.duration("http.idle_timeout", "60s")?,
                max_connections: match self.values.contains_key("http.max_connections") {
                    true => Some(self.integer("http.max_connections", 0, 1, 1_000_000)? as usize),
                    false => None,
                },
            },
            templates_dir: PathBuf::from(self.string("templates.dir", "templates")?),
            central: CentralConfig {
                url: self.url("central.url")?,
                token_file: self
                    .optional_string("central.token_file")?
                    .map(PathBuf::from),
                registration_token_file: self
                    .optional_string("central.registration_token_file")?
                    .map(PathBuf::from),
                check_interval: self.duration("central.check_interval", "30s")?,
                request_timeout: self.duration("central.request_timeout", "5s")?,
                boot_lookup_deadline: self.duration("central.boot_lookup_deadline", "300ms")?,
                write_deadline: self.duration("central.write_deadline", "1s")?,
                failure_threshold: self.integer("central.failure_threshold", 3, 1, 1000)? as u32,
                recovery_threshold: self.integer("central.recovery_threshold", 1, 1, 1000)? as u32,
                heartbeat_interval: self.duration("central.heartbeat_interval", "60s")?,
                sync_interval: self.duration("central.sync_interval", "300s")?,
            },
            offline_default_action,
            conflicts,
            queue: self.queue()?,
            cache: CacheConfig {
                max_bytes: self.size("cache.max_bytes", "20 GiB")?,
                prefetch_rate: self.size("cache.prefetch_rate", "50 MB/s")?,
                revalidate_interval: self.duration("cache.revalidate_interval", "10m")?,
                max_fills: self.integer("cache.max_fills", 8, 1, 1024)? as usize,
                misses_per_client: self.integer("cache.misses_per_client", 60, 1, 1_000_000)?
                    as u32,
                negative_ttl: self.duration("cache.negative_ttl", "60s")?,
            },
            metrics_open: self.boolean("metrics.open", false)?,
            log_format: match self.string("log.format", "text")?.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.invalid("log.format", format!("{other:?}: use text or json")));
                }
            },
            max_discovered: self.integer("nodes.max_discovered", 10_000, 1, 10_000_000)? as usize,
            admin_token_file,
            workflows: self.workflows()?,
            site_id,
            data_dir,
        };
        data_dir_outside_served_roots(&config.data_dir, &config.tftp.root)
            .map_err(|message| self.invalid("data_dir", message))?;
        Ok(config)
    }

    fn queue(&self) -> Result<QueueConfig, ConfigError> {
        let max_items = self.integer("queue.max_items", 100_000, 1, u32::MAX as u64)?;
        Ok(QueueConfig {
            max_items,
            // A tenth by default; it must leave operators room.
            max_node_items: self.integer(
                "queue.max_node_items",
                (max_items / 10).max(1),
                1,
                max_items,
            )?,
            node_items_per_minute: self.integer("queue.node_items_per_minute", 30, 1, 100_000)?
                as u32,
            batch_size: self.integer("queue.batch_size", 50, 1, 10_000)? as u32,
            max_retries: self.integer("queue.max_retries", 10, 0, 1000)? as u32,
            retry_base: self.duration("queue.retry_base", "1s")?,
            retry_max: self.duration("queue.retry_max", "5m")?,
        })
    }

    fn policy(
        &self,
        key: &str,
        default: Policy,
        auto_allowed: bool,
    ) -> Result<Policy, ConfigError> {
        let text = self.string(key, default.as_str())?;
        match text.parse::<Policy>() {
            Ok(Policy::Auto) if !auto_allowed => Err(self.invalid(
                key,
                "auto applies to state_mismatch only; use central_wins, local_wins or manual",
            )),
            Ok(policy) => Ok(policy),
            Err(e) => Err(self.invalid(key, e)),
        }
    }

    fn workflows(&self) -> Result<BTreeMap<String, Workflow>, ConfigError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WorkflowEntry {
            name: Option<String>,
            method: BootMethod,
            #[serde(default)]
            kernel: String,
            #[serde(default)]
            initrd: Vec<String>,
            #[serde(default)]
            cmdline: String,
            url: Option<String>,
            #[serde(default)]
            offline_safe: bool,
        }
        let mut out = BTreeMap::new();
        let Some(value) = &self.workflows else {
            return Ok(out);
        };
        let toml::Value::Table(table) = value else {
            return Err(self.invalid("workflows", "expected tables [workflows.<id>]"));
        };
        for (id, entry) in table {
            let key = format!("workflows.{id}");
            let entry: WorkflowEntry = entry
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| self.invalid(&key, e.message().to_string()))?;
            let workflow = Workflow {
                id: id.clone(),
                name: entry.name.unwrap_or_else(|| id.clone()),
                method: entry.method,
                kernel: entry.kernel,
                initrd: entry.initrd,
                cmdline: entry.cmdline,
                url: entry.url,
                offline_safe: entry.offline_safe,
            };
            workflow
                .validate()
                .map_err(|e| self.invalid(&key, e.to_string()))?;
            out.insert(id.clone(), workflow);
        }
        Ok(out)
    }
}

fn is_section(name: &str) -> bool {
    !name.is_empty() && KEYS.iter().any(|(section, _)| *section == name)
}

fn is_key(section: &str, key: &str) -> bool {
    KEYS.iter()
        .any(|(s, keys)| *s == section && keys.contains(&key))
}

/// Maps `tftp_max_sessions` to `tftp.max_sessions`, `site_id` to `site_id`.
fn env_key(lower: &str) -> Option<String> {
    for (section, keys) in KEYS {
        if section.is_empty() {
            if keys.contains(&lower) {
                return Some(lower.to_string());
            }
        } else if let Some(key) = lower
            .strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('_'))
            && keys.contains(&key)
        {
            return Some(format!("{section}.{key}"));
        }
    }
    None
}

/// `20 GiB`, `512MiB`, `50 MB`, `50 MB/s`, `1048576` → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_suffix("/s").unwrap_or(text).trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut source = Source::from_toml(toml, Path::new("test.toml"))?;
        source.apply_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
        source.build()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.site_id, "default");
        assert_eq!(c.data_dir, PathBuf::from("./siteboot-data"));
        assert_eq!(c.tftp.listen.to_string(), "0.0.0.0:6969");
        assert_eq!(c.tftp.root, PathBuf::from("boot-assets"));
        assert_eq!(c.tftp.max_sessions, 1024);
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.http.public_url, None);
        assert_eq!(c.central.url, None);
        assert_eq!(c.central.boot_lookup_deadline, Duration::from_millis(300));
        assert_eq!(c.central.check_interval, Duration::from_secs(30));
        assert_eq!(c.central.failure_threshold, 3);
        assert_eq!(c.offline_default_action, OfflineDefault::Local);
        assert_eq!(c.queue.max_items, 100_000);
        assert_eq!(c.queue.retry_max, Duration::from_secs(300));
        assert_eq!(
            c.admin_token_file,
            PathBuf::from("./siteboot-data/admin.token")
        );
    }

    #[test]
    fn a_data_dir_inside_a_served_root_is_refused_naming_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("boot");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let toml = format!(
            "data_dir = \"{}\"\n[tftp]\nroot = \"{}\"\n",
            root.join("sub/../data").display(),
            root.display()
        );
        let e = load(&toml, &[]).unwrap_err().to_string();
        assert!(e.contains("`data_dir`") && e.contains("tftp.root"), "{e}");
        let e = load("data_dir = \"/usr/lib/ipxe/x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("iPXE"), "{e}");
        let beside = format!(
            "data_dir = \"{}\"\n[tftp]\nroot = \"{}\"\n",
            dir.path().join("data").display(),
            root.display()
        );
        assert!(load(&beside, &[]).is_ok());
        // A root that is a prefix of the name, not a parent, is fine.
        let sibling = format!(
            "data_dir = \"{}-data\"\n[tftp]\nroot = \"{}\"\n",
            root.display(),
            root.display()
        );
        assert!(load(&sibling, &[]).is_ok());
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "site_id = \"fra1\"\n[tftp]\nlisten = \":69\"\nmax_sessions = 10\n",
            &[
                ("SITEBOOT_TFTP_MAX_SESSIONS", "20"),
                ("SITEBOOT_SITE_ID", "ams2"),
                ("SITEBOOT_CENTRAL_BOOT_LOOKUP_DEADLINE", "250ms"),
                ("SITEBOOT_HTTP_PUBLIC_URL", "http://10.0.2.2:8080/"),
                ("SITEBOOT_LOG", "debug"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.site_id, "ams2");
        assert_eq!(c.tftp.listen.to_string(), "0.0.0.0:69");
        assert_eq!(c.tftp.max_sessions, 20);
        assert_eq!(c.central.boot_lookup_deadline, Duration::from_millis(250));
        assert_eq!(c.http.public_url.as_deref(), Some("http://10.0.2.2:8080"));
    }

    #[test]
    fn invalid_values_name_the_key_and_origin() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[tftp]\nmax_sessions = 0\n", &[], "tftp.max_sessions"),
            (
                "[tftp]\nmax_sessions = \"many\"\n",
                &[],
                "tftp.max_sessions",
            ),
            (
                "",
                &[("SITEBOOT_CENTRAL_CHECK_INTERVAL", "soon")],
                "central.check_interval",
            ),
            ("[http]\nlisten = \"nowhere\"\n", &[], "http.listen"),
            (
                "[offline]\ndefault_action = \"reinstall\"\n",
                &[],
                "offline.default_action",
            ),
            ("[central]\nurl = \"ftp://x\"\n", &[], "central.url"),
            ("site_id = \"a b\"\n", &[], "site_id"),
            ("[queue]\nretry_base = \"0s\"\n", &[], "queue.retry_base"),
        ];
        for (toml, env, key) in cases {
            let err = load(toml, env).expect_err(key).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        let err = load("", &[("SITEBOOT_CENTRAL_CHECK_INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SITEBOOT_CENTRAL_CHECK_INTERVAL"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(matches!(
            load("[tftp]\nlisen = \"x\"\n", &[]),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            load("", &[("SITEBOOT_TFTP_LISEN", "x")]),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            load("colour = 1\n", &[]),
            Err(ConfigError::UnknownKey { .. })
        ));
    }

    #[test]
    fn workflows_are_read_and_checked() {
        let c = load(
            "[workflows.ubuntu]\nmethod = \"kernel\"\nkernel = \"ubuntu/vmlinuz\"\ninitrd = [\"ubuntu/initrd\"]\ncmdline = \"quiet\"\n",
            &[],
        )
        .unwrap();
        let wf = &c.workflows["ubuntu"];
        assert_eq!(wf.name, "ubuntu");
        assert_eq!(wf.initrd, vec!["ubuntu/initrd".to_string()]);
        assert!(!wf.offline_safe);
        let err = load("[workflows.bad]\nmethod = \"kernel\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("workflows.bad"), "{err}");
        let err = load("[workflows.bad]\nmethod = \"teleport\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("workflows.bad"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = load("[tftp\n", &[]).unwrap_err().to_string();
        assert!(err.contains("test.toml"), "{err}");
    }
}
