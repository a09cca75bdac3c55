//! Reading the configuration: the TOML file's keys, then the `SITEBOOT_*`
//! variables over them, each value checked and typed with the key (and the
//! variable) that carried it named in any error.

use super::*;

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
    ("site", &["autonomy"]),
    ("offline", &["default_action"]),
    ("boot", &["uefi_loader"]),
    (
        "conflicts",
        &[
            "state_mismatch",
            "missing_central",
            "missing_local",
            "site_policy",
        ],
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
            "policy",
            "patterns",
            "retention",
        ],
    ),
    (
        "dhcp",
        &[
            "mode",
            "interfaces",
            "server_address",
            "known_only",
            "rate_per_mac",
            "port",
            "pxe_port",
            "client_port",
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

pub(super) struct Source {
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

    pub(super) fn from_toml(text: &str, path: &Path) -> Result<Source, ConfigError> {
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

    pub(super) fn apply_env(
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

    pub(super) fn build(self) -> Result<Config, ConfigError> {
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
        let policy_pins = self.policy_pins()?;
        let admin_token_file = match self.optional_string("admin.token_file")? {
            Some(path) => PathBuf::from(path),
            None => data_dir.join("admin.token"),
        };
        let config = Config {
            tftp: self.tftp()?,
            http: self.http()?,
            templates_dir: PathBuf::from(self.string("templates.dir", "templates")?),
            central: self.central()?,
            offline_default_action,
            conflicts,
            policy_pins,
            queue: self.queue()?,
            cache: self.cache()?,
            dhcp: self.dhcp()?,
            uefi_loader: match self.string("boot.uefi_loader", "ipxe")?.trim() {
                "ipxe" => crate::model::client::UefiLoader::Ipxe,
                "shim" => crate::model::client::UefiLoader::Shim,
                other => {
                    return Err(
                        self.invalid("boot.uefi_loader", format!("{other:?}: use ipxe or shim"))
                    );
                }
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

    fn tftp(&self) -> Result<TftpConfig, ConfigError> {
        Ok(TftpConfig {
            listen: self.socket_addr("tftp.listen", "0.0.0.0:6969")?,
            root: PathBuf::from(self.string("tftp.root", "boot-assets")?),
            max_sessions: self.integer("tftp.max_sessions", 1024, 1, 65536)? as usize,
            max_sessions_per_client: self.integer("tftp.max_sessions_per_client", 16, 1, 65536)?
                as usize,
            max_timeout: self.duration("tftp.max_timeout", "5s")?,
            stall_timeout: self.duration("tftp.stall_timeout", "30s")?,
        })
    }

    fn http(&self) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            listen: self.socket_addr("http.listen", "0.0.0.0:8080")?,
            public_url: self.url("http.public_url")?,
            header_timeout: self.duration("http.header_timeout", "10s")?,
            idle_timeout: self.duration("http.idle_timeout", "60s")?,
            max_connections: match self.values.contains_key("http.max_connections") {
                true => Some(self.integer("http.max_connections", 0, 1, 1_000_000)? as usize),
                false => None,
            },
        })
    }

    fn central(&self) -> Result<CentralConfig, ConfigError> {
        Ok(CentralConfig {
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
        })
    }

    fn dhcp(&self) -> Result<DhcpConfig, ConfigError> {
        let mode = match self.string("dhcp.mode", "off")?.trim() {
            "off" => DhcpMode::Off,
            "proxy" => DhcpMode::Proxy,
            other => {
                return Err(self.invalid("dhcp.mode", format!("{other:?}: use off or proxy")));
            }
        };
        let server_address = match self.optional_string("dhcp.server_address")? {
            None => None,
            Some(text) => Some(text.trim().parse::<std::net::Ipv4Addr>().map_err(|_| {
                self.invalid(
                    "dhcp.server_address",
                    format!("{text:?} is not an IPv4 address such as 10.0.0.5"),
                )
            })?),
        };
        let port = |key: &str, default: u64| -> Result<u16, ConfigError> {
            // 0: any free port (tests; the ready file says which).
            Ok(self.integer(key, default, 0, 65535)? as u16)
        };
        Ok(DhcpConfig {
            mode,
            interfaces: self.string_list("dhcp.interfaces")?,
            server_address,
            known_only: self.boolean("dhcp.known_only", false)?,
            rate_per_mac: self.integer("dhcp.rate_per_mac", 4, 1, 10_000)? as u32,
            port: port("dhcp.port", 67)?,
            pxe_port: port("dhcp.pxe_port", 4011)?,
            client_port: port("dhcp.client_port", 68)?,
        })
    }

    /// A list of names: a TOML array of strings, or (from the
    /// environment) one string separated by commas. Empty entries drop.
    fn string_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let items: Vec<String> = match self.values.get(key) {
            None => Vec::new(),
            Some(RawValue {
                value: toml::Value::String(s),
                ..
            }) => s.split(',').map(str::to_string).collect(),
            Some(RawValue {
                value: toml::Value::Array(values),
                ..
            }) => values
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.invalid(key, "expected a list of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(self.invalid(key, "expected a list of strings")),
        };
        Ok(items
            .into_iter()
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect())
    }

    fn cache(&self) -> Result<CacheConfig, ConfigError> {
        Ok(CacheConfig {
            max_bytes: self.size("cache.max_bytes", "20 GiB")?,
            prefetch_rate: self.size("cache.prefetch_rate", "50 MB/s")?,
            revalidate_interval: self.duration("cache.revalidate_interval", "10m")?,
            max_fills: self.integer("cache.max_fills", 8, 1, 1024)? as usize,
            misses_per_client: self.integer("cache.misses_per_client", 60, 1, 1_000_000)? as u32,
            negative_ttl: self.duration("cache.negative_ttl", "60s")?,
        })
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

    /// The local keys that pin the site policy against the controller
    /// (DESIGN §2, §15); unset keys leave the value to the controller.
    fn policy_pins(&self) -> Result<crate::model::policy::LocalPins, ConfigError> {
        use crate::model::policy::{Autonomy, CachePolicy, ConflictStrategy};
        fn named<T>(
            source: &Source,
            key: &str,
            parse: fn(&str) -> Option<T>,
            expected: &str,
        ) -> Result<Option<T>, ConfigError> {
            match source.optional_string(key)? {
                None => Ok(None),
                Some(text) => parse(&text)
                    .map(Some)
                    .ok_or_else(|| source.invalid(key, format!("{text:?}: use {expected}"))),
            }
        }
        let patterns = if self.values.contains_key("cache.patterns") {
            Some(self.string_list("cache.patterns")?)
        } else {
            None
        };
        let retention = if self.values.contains_key("cache.retention") {
            Some(self.duration("cache.retention", "30d")?)
        } else {
            None
        };
        Ok(crate::model::policy::LocalPins {
            autonomy: named(
                self,
                "site.autonomy",
                Autonomy::parse,
                "readonly, limited or full",
            )?,
            cache_policy: named(
                self,
                "cache.policy",
                CachePolicy::parse,
                "minimal, assigned, mirror or pattern",
            )?,
            cache_patterns: patterns,
            cache_retention: retention,
            conflict_strategy: named(
                self,
                "conflicts.site_policy",
                ConflictStrategy::parse,
                "central_wins, last_write, site_wins or manual",
            )?,
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
            Ok(policy) if !policy.fits_every_kind() && !auto_allowed => Err(self.invalid(
                key,
                format!(
                    "{} applies to state_mismatch only; use central_wins, local_wins or manual",
                    policy.as_str()
                ),
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
