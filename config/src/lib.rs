//! The proxy's configuration: the YAML file's types, loading with `${ENV}`
//! expansion, and validation that names every mistake by its key path.
//!
//! The types are public and serializable so that other tools (the operator)
//! render the same file the proxy reads instead of keeping a copy.

pub mod cc_relay;
mod env;
mod ha;
mod prices;
mod validate;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cc_relay::{Dialect, Loaded, Migrated, Notice, NoticeLevel};
pub use env::{escape_env, expand_env};
pub use ha::{Environment, HaConfig, PeerTlsConfig};
pub use prices::{ModelPrice, PriceTable, DEFAULT_PRICES};
pub use validate::{ConfigIssue, ConfigIssues};

/// The commented default configuration printed by `relaycache config init`.
/// Parsing it yields [`Config::default`] (a test holds the two together).
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file asked for.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A `${NAME}` had no value and no fallback.
    #[error("{0}")]
    Env(#[from] env::EnvError),
    /// The YAML did not match the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// Key path of the offending value (`.` is the whole document).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The values parsed but do not make sense together.
    #[error("{0}")]
    Invalid(#[from] ConfigIssues),
    /// One setting is written both in relaycache's and in cc-relay's
    /// spelling; which one was meant cannot be guessed.
    #[error("{native} and cc-relay's {cc_relay} set the same thing; keep one of them")]
    Conflict {
        /// The native key path.
        native: String,
        /// The cc-relay key path.
        cc_relay: String,
    },
    /// The configuration read could not be written back as YAML.
    #[error("{0}")]
    Render(#[from] RenderError),
}

/// A configuration could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the configuration as YAML: {0}")]
pub struct RenderError(#[from] serde_yaml_ng::Error);

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, limits and timeouts on the client side.
    pub server: ServerConfig,
    /// Where requests go; the first whose path prefix matches wins.
    pub upstreams: Vec<UpstreamConfig>,
    /// What is cached, for how long, and for whom.
    pub cache: CacheConfig,
    /// Log level and format.
    pub log: LogConfig,
}

/// Client-side listeners and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Traffic listener, `host:port`.
    pub listen: String,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `/stats`, purge).
    pub admin_listen: String,
    /// Bearer token required by purge; empty disables purge.
    pub admin_token: String,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Time a client has to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send the body of a cached route.
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
    /// Longest wait for in-flight requests on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Most client connections open at once on the traffic listener; more
    /// are answered 503 and closed.
    pub max_connections: usize,
    /// Most requests handled at once; more are answered 503.
    pub max_inflight: usize,
    /// Most bytes of request bodies held at once (and the scratch space to
    /// key them); a request that would go beyond is answered 503.
    pub max_buffered_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8787".into(),
            admin_listen: "127.0.0.1:9787".into(),
            admin_token: String::new(),
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_inflight: 4096,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// One upstream API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Base URL, `http://` or `https://`; a path in it is prefixed to requests.
    pub url: String,
    /// Path prefixes routed here; empty means every path.
    pub paths: Vec<String>,
    /// PEM file of extra certificate authorities to trust for this upstream
    /// (a private gateway); the public web roots are always trusted.
    pub ca_file: String,
    /// Time to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from request sent to response headers.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time for the whole exchange.
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            paths: Vec::new(),
            ca_file: String::new(),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(600),
            total_timeout: Duration::from_secs(900),
        }
    }
}

impl UpstreamConfig {
    fn named(name: &str, url: &str, paths: &[&str]) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// How the proxy caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Memory cache in this process.
    Single,
    /// Member or client of a replicated cluster.
    Ha,
    /// Plain pass-through proxy.
    Disabled,
}

/// Whether a miss may call the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// Misses call the upstream.
    #[default]
    Off,
    /// Every request is `only-if-cached`: a miss is answered 504 without
    /// calling the upstream (hermetic test suites, evaluation runs). A
    /// request with `x-relaycache: record` still calls and stores.
    Strict,
}

/// Who may read an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Entries are keyed to a hash of the caller's credential.
    Credential,
    /// Every caller shares entries.
    Shared,
    /// Entries are keyed to the value of this header (lower case).
    Header(String),
}

impl Serialize for Isolation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Isolation::Credential => s.serialize_str("credential"),
            Isolation::Shared => s.serialize_str("shared"),
            Isolation::Header(name) => s.serialize_str(&format!("header:{name}")),
        }
    }
}

impl<'de> Deserialize<'de> for Replay {
    /// `off` or `strict`; also `false` for `off`, since YAML 1.1 tools
    /// (PyYAML, many templating steps) read an unquoted `off` as a boolean
    /// and write it back as `false`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(d)? {
            Written::Flag(false) => Ok(Replay::Off),
            Written::Word(word) if word == "off" => Ok(Replay::Off),
            Written::Word(word) if word == "strict" => Ok(Replay::Strict),
            Written::Flag(true) => Err(serde::de::Error::custom(
                "replay: true is not a mode; use off or strict",
            )),
            Written::Word(other) => Err(serde::de::Error::custom(format!(
                "unknown replay {other:?}: use off or strict"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Isolation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.as_str() {
            "credential" => Ok(Isolation::Credential),
            "shared" => Ok(Isolation::Shared),
            other => match other.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(Isolation::Header(name.to_ascii_lowercase()))
                }
                _ => Err(serde::de::Error::custom(format!(
                    "unknown isolation {other:?}: use credential, shared or header:<header-name>"
                ))),
            },
        }
    }
}

/// Hash function of the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyHash {
    /// BLAKE3 (default, fastest).
    Blake3,
    /// SHA-256, for deployments that require it.
    Sha256,
}

/// How the cache key is formed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Hash function.
    pub hash: KeyHash,
    /// Dotted body paths left out of the key.
    pub ignore_fields: Vec<String>,
    /// Request headers that carry a credential (lower case). Under
    /// `credential` isolation the tenant is a hash of every one present,
    /// each with its name; a request with none is not cached.
    pub credential_headers: Vec<String>,
    /// Request headers that change the answer (lower case), keyed as the
    /// upstream receives them.
    pub headers: Vec<String>,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            hash: KeyHash::Blake3,
            ignore_fields: vec!["metadata.user_id".into()],
            credential_headers: ["x-api-key", "authorization", "api-key", "x-goog-api-key"]
                .map(String::from)
                .to_vec(),
            headers: [
                "anthropic-version",
                "anthropic-beta",
                "openai-organization",
                "openai-project",
                "openai-beta",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Request coalescing of concurrent identical misses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoalesceConfig {
    /// Whether identical concurrent misses share one upstream call.
    pub enabled: bool,
    /// Longest a follower waits before calling the upstream itself.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Most followers on one key.
    pub max_waiters: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            wait_timeout: Duration::from_secs(600),
            max_waiters: 1024,
        }
    }
}

/// The in-process (L1) tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes of answers kept (headers and body).
    pub max_cost: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_cost: 100 * 1024 * 1024,
        }
    }
}

/// How stored answers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// zstd: answers that shrink by an eighth or more are kept as one
    /// zstd frame, and sent as stored to clients that accept zstd.
    #[default]
    Zstd,
    /// Answers are kept exactly as received.
    None,
}

/// Compression of stored answers, in memory, on peers and in the reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// The codec.
    pub codec: Codec,
    /// zstd level, 1 (fastest) to 19 (smallest).
    pub level: i32,
    /// Answers shorter than this many bytes are kept as received.
    pub min_bytes: u64,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            codec: Codec::Zstd,
            level: 1,
            min_bytes: 512,
        }
    }
}

/// The object-storage tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReserveConfig {
    /// Store URL (`file://`, `s3://`, `gs://`, `az://`, `memory://`); empty disables the tier.
    pub url: String,
    /// How long an entry is kept after it was written or last read.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Answers stored with a shorter TTL stay out of the reserve.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Larger answers stay out of the reserve.
    pub max_entry_bytes: u64,
    /// Entries waiting to be written; when full, new ones are dropped (and counted).
    pub queue: usize,
    /// Longest a request waits for the store before treating it as a miss.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest a background write may take before it is abandoned (and counted).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Time between sweeps that remove expired entries.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Objects a sweep examines at most; the next sweep carries on from there.
    pub sweep_batch: usize,
    /// Options passed to the store, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_allow_http`. The usual environment
    /// variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) are read as well.
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for ReserveConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            retention: Duration::from_secs(720 * 3600),
            min_ttl: Duration::from_secs(600),
            max_entry_bytes: 4 * 1024 * 1024,
            queue: 1024,
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(600),
            sweep_batch: 1000,
            options: std::collections::BTreeMap::new(),
        }
    }
}

/// What is cached, for how long and for whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Caching mode.
    pub mode: Mode,
    /// Default TTL of stored answers.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Longest TTL a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Tenant isolation.
    pub isolation: Isolation,
    /// Record complete SSE streams.
    pub streaming: bool,
    /// Whether misses may call the upstream.
    pub replay: Replay,
    /// How long after expiry an entry may still answer when the upstream
    /// fails (429, 5xx, 529, a timeout, unreachable); 0 turns it off.
    /// Memory keeps expired entries this long.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// POST paths whose answers are cached.
    pub routes: Vec<String>,
    /// Largest answer stored.
    pub max_entry_bytes: u64,
    /// Key formation.
    pub key: KeyConfig,
    /// Coalescing of identical misses.
    pub coalesce: CoalesceConfig,
    /// L1 memory tier.
    pub memory: MemoryConfig,
    /// Compression of stored answers.
    pub compression: CompressionConfig,
    /// Cluster settings.
    pub ha: HaConfig,
    /// Object-storage tier.
    pub reserve: ReserveConfig,
    /// Prices per model, in US dollars per million tokens, over the
    /// built-in table ([`DEFAULT_PRICES`]): what a hit saved.
    pub prices: std::collections::BTreeMap<String, ModelPrice>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Single,
            ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(720 * 3600),
            isolation: Isolation::Credential,
            streaming: false,
            replay: Replay::Off,
            stale_if_error: Duration::ZERO,
            routes: [
                "/v1/messages",
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/responses",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_entry_bytes: 8 * 1024 * 1024,
            key: KeyConfig::default(),
            coalesce: CoalesceConfig::default(),
            memory: MemoryConfig::default(),
            compression: CompressionConfig::default(),
            ha: HaConfig::default(),
            reserve: ReserveConfig::default(),
            prices: std::collections::BTreeMap::new(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Default level filter; `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            upstreams: vec![
                UpstreamConfig::named("anthropic", "https://api.anthropic.com", &["/v1/messages"]),
                UpstreamConfig::named("openai", "https://api.openai.com", &[]),
            ],
            cache: CacheConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Parses YAML text (after `${ENV}` expansion) and validates it. A
    /// cc-relay file is read too ([`cc_relay`]); [`Config::read`] also
    /// returns what was said about it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Ok(Self::read(text)?.config)
    }

    /// Reads, expands, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_with_notices(path)?.config)
    }

    /// Like [`Config::from_yaml`], with the file's dialect and the notices
    /// about its cc-relay keys.
    pub fn read(text: &str) -> Result<Loaded, ConfigError> {
        cc_relay::read(text, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], with the file's dialect and the notices about
    /// its cc-relay keys.
    pub fn load_with_notices(path: &Path) -> Result<Loaded, ConfigError> {
        Self::read(&read_file(path)?)
    }

    /// What `relaycache config migrate` prints for a file: the native
    /// configuration it means, and the notices.
    pub fn migrate_file(path: &Path) -> Result<Migrated, ConfigError> {
        cc_relay::migrate(&read_file(path)?, &|name| std::env::var(name).ok())
    }

    pub(crate) fn parse_expanded(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            ConfigError::Parse { path, message }
        })
    }

    /// Renders the configuration as YAML (without comments), or says why it
    /// cannot: a caller writing a file must never write an empty one instead.
    pub fn try_to_yaml(&self) -> Result<String, RenderError> {
        Ok(serde_yaml_ng::to_string(self)?)
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
