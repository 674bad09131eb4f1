//! Configuration files written for cc-relay, read as they are.
//!
//! A file is read as cc-relay's when it has a key that only cc-relay's
//! configuration has (see [`detect`]); every other file is native and
//! parsed as strictly as ever. A cc-relay file is turned into the native
//! shape key by key: what has a native equivalent is moved there, what has
//! none is dropped, and each step is reported as a [`Notice`]. Native keys
//! may sit beside cc-relay's in one file (a `cache.ha.token`, say) and are
//! as strict as in a native file; a setting spelled both ways is refused.

use serde_yaml_ng::Value;
use std::fmt;

use crate::{Config, ConfigError};

mod convert;

use convert::Converter;

/// The top-level sections only cc-relay's configuration has.
const CC_RELAY_SECTIONS: [&str; 6] = [
    "providers",
    "routing",
    "logging",
    "health",
    "grpc",
    "metrics",
];

/// The `server` keys only cc-relay's configuration has.
const CC_RELAY_SERVER_KEYS: [&str; 5] = [
    "timeout_ms",
    "max_concurrent",
    "api_key",
    "auth",
    "enable_http2",
];

/// The `cache` keys only cc-relay's configuration has (`enabled` and
/// `backend` are its older spelling of the mode).
const CC_RELAY_CACHE_KEYS: [&str; 4] = ["ristretto", "olric", "enabled", "backend"];

/// The memberlist (gossip) port of a cc-relay node is its bind port + 2.
const GOSSIP_OFFSET: u16 = 2;

/// Which configuration language a file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// relaycache's own keys only.
    Native,
    /// cc-relay's keys (possibly with native ones beside them).
    CcRelay,
}

/// How much a notice matters to whoever starts the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    /// The file means the same here.
    Info,
    /// The proxy behaves differently from what the file did under cc-relay.
    Warn,
}

/// Why a cc-relay key has no effect here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unneeded {
    /// relaycache needs no such setting; the text says why.
    NoneNeeded(&'static str),
    /// This native key is the setting to use instead.
    UseNative(&'static str),
    /// relaycache does not do what the key asks; the text says what it does.
    Unsupported(&'static str),
}

/// What was done with one part of a cc-relay file, reported at start and by
/// `relaycache config validate` / `config migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The file is read as cc-relay's because it has this key.
    Detected {
        /// The first cc-relay-only key found.
        key: String,
    },
    /// A cc-relay key is read as a native key, value unchanged.
    Mapped {
        /// The cc-relay key path.
        from: String,
        /// The native key path.
        to: String,
    },
    /// A cc-relay value is written differently here.
    Converted {
        /// The native key path.
        key: String,
        /// The value as the file wrote it.
        from: String,
        /// The value as read.
        to: String,
    },
    /// A cc-relay key has no effect.
    Ignored {
        /// The cc-relay key path.
        key: String,
        /// Why, and what to use instead.
        why: Unneeded,
    },
    /// A peer given at its gossip port is read at its bind port.
    GossipPort {
        /// The cc-relay key path of the peer.
        key: String,
        /// The peer's host.
        host: String,
        /// The port the file gives (cc-relay's memberlist port).
        gossip: u16,
        /// The port read (the peer's bind port, where relaycache listens).
        bind: u16,
    },
    /// A key the file leaves out takes cc-relay's documented default where
    /// it differs from relaycache's.
    CcRelayDefault {
        /// The native key path.
        key: String,
        /// The value used.
        value: String,
    },
    /// An unset `${NAME}` is read as empty, as cc-relay reads it.
    UnsetVariable {
        /// The variable.
        name: String,
    },
    /// A cluster secret is taken from the environment.
    TokenFromEnvironment {
        /// The native key path it fills.
        key: &'static str,
        /// The variable it comes from.
        variable: &'static str,
    },
    /// cc-relay's cluster has no secret; without one this cluster is open
    /// too (`cache.ha.insecure: true`).
    OpenCluster,
    /// `config migrate` was given a native file.
    AlreadyNative,
}

impl Notice {
    /// How much it matters.
    pub fn level(&self) -> NoticeLevel {
        match self {
            Notice::Ignored {
                why: Unneeded::Unsupported(_),
                ..
            }
            | Notice::UnsetVariable { .. }
            | Notice::OpenCluster => NoticeLevel::Warn,
            _ => NoticeLevel::Info,
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Detected { key } => {
                write!(f, "read as a cc-relay configuration file (it has {key})")
            }
            Notice::Mapped { from, to } => write!(f, "cc-relay's {from} is read as {to}"),
            Notice::Converted { key, from, to } => write!(f, "{key}: {from:?} is read as {to:?}"),
            Notice::Ignored { key, why } => match why {
                Unneeded::NoneNeeded(reason) => {
                    write!(f, "{key} is ignored; none is needed: {reason}")
                }
                Unneeded::UseNative(native) => write!(f, "{key} is ignored; the setting here is {native}"),
                Unneeded::Unsupported(reason) => write!(f, "{key} is ignored: {reason}"),
            },
            Notice::GossipPort {
                key,
                host,
                gossip,
                bind,
            } => write!(
                f,
                "{key}: {host}:{gossip} is cc-relay's gossip port (bind port + 2); read as {host}:{bind}, the peer's bind port, where relaycache members listen"
            ),
            Notice::CcRelayDefault { key, value } => write!(
                f,
                "{key} is not set; cc-relay's default {value} applies"
            ),
            Notice::UnsetVariable { name } => write!(
                f,
                "environment variable {name} is not set; read as empty, as cc-relay does"
            ),
            Notice::TokenFromEnvironment { key, variable } => {
                write!(f, "{key} is read from the environment variable {variable}")
            }
            Notice::OpenCluster => write!(
                f,
                "cc-relay's cluster has no secret, so this one runs open (cache.ha.insecure: true): anyone who reaches cache.ha.bind_addr may read, write or wipe it. Set RELAYCACHE_PEER_TOKEN (members) and RELAYCACHE_CLIENT_TOKEN (clients), or cache.ha.token / cache.ha.client_token"
            ),
            Notice::AlreadyNative => write!(
                f,
                "already a native relaycache file; printed normalised, every key written out"
            ),
        }
    }
}

/// A configuration with what was said about reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The configuration, validated.
    pub config: Config,
    /// The file's language.
    pub dialect: Dialect,
    /// What was done with its cc-relay keys (empty for a native file).
    pub notices: Vec<Notice>,
}

/// What `relaycache config migrate` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    /// The native configuration as YAML; `${NAME}` references stay as
    /// references, so no secret is written out.
    pub yaml: String,
    /// What was done with the file's cc-relay keys.
    pub notices: Vec<Notice>,
}

/// The key that makes `doc` a cc-relay file, if any: a top-level section
/// only cc-relay has (`providers`, `routing`, `logging`, `health`, `grpc`,
/// `metrics`), `cache.ristretto`, `cache.olric` (or the older
/// `cache.enabled` / `cache.backend`), or a `server` key only cc-relay has
/// (`timeout_ms`, `max_concurrent`, `api_key`, `auth`, `enable_http2`).
pub fn detect(doc: &Value) -> Option<String> {
    let top = doc.as_mapping()?;
    if let Some(section) = CC_RELAY_SECTIONS.iter().find(|s| top.contains_key(**s)) {
        return Some((*section).to_string());
    }
    let under = |section: &str, keys: &[&str]| {
        let map = top.get(section)?.as_mapping()?;
        keys.iter()
            .find(|k| map.contains_key(**k))
            .map(|k| format!("{section}.{k}"))
    };
    under("cache", &CC_RELAY_CACHE_KEYS).or_else(|| under("server", &CC_RELAY_SERVER_KEYS))
}

/// Whether `${NAME}` references are replaced by values or kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expansion {
    /// Read the environment (what `serve` and `validate` do).
    Values,
    /// Keep the references (what `migrate` prints).
    References,
}

/// Reads configuration text, native or cc-relay's, looking variables up
/// with `env`, and validates it.
pub fn read(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let Some(key) = detected(text) else {
        let expanded = crate::expand_env(text, env)?;
        let config = Config::parse_expanded(&expanded)?;
        config.validate()?;
        return Ok(Loaded {
            config,
            dialect: Dialect::Native,
            notices: Vec::new(),
        });
    };
    let mut converter = Converter::new(env, Expansion::Values);
    converter.notices.push(Notice::Detected { key });
    let expanded = converter.expand(text)?;
    let config = converter.convert_text(&expanded)?;
    config.validate()?;
    Ok(Loaded {
        config,
        dialect: Dialect::CcRelay,
        notices: converter.notices,
    })
}

/// What `relaycache config migrate` does: checks the file as `serve` would
/// read it, then renders the native configuration it means, keeping
/// `${NAME}` references (an unset one reads as empty, as under cc-relay).
pub fn migrate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Migrated, ConfigError> {
    let loaded = read(text, env)?;
    if loaded.dialect == Dialect::Native {
        return Ok(Migrated {
            yaml: loaded.config.try_to_yaml()?,
            notices: vec![Notice::AlreadyNative],
        });
    }
    let mut converter = Converter::new(env, Expansion::References);
    let config = converter.convert_text(&empty_when_unset(text))?;
    Ok(Migrated {
        yaml: config.try_to_yaml()?,
        notices: loaded.notices,
    })
}

/// The cc-relay key of unexpanded `text`, when it parses as YAML at all
/// (a file that does not is native, and its parser says what is wrong).
fn detected(text: &str) -> Option<String> {
    serde_yaml_ng::from_str::<Value>(text)
        .ok()
        .and_then(|doc| detect(&doc))
}

/// Writes every `${NAME}` without a fallback as `${NAME:-}`, so that the
/// native file reads an unset variable as empty, as cc-relay did.
fn empty_when_unset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        let escaped = pos > 0 && rest.as_bytes()[pos - 1] == b'$';
        out.push_str(&rest[..pos + 2]);
        rest = &rest[pos + 2..];
        if escaped {
            continue;
        }
        if let Some(end) = rest.find('}') {
            let inner = &rest[..end];
            out.push_str(inner);
            if !inner.contains(":-") && !inner.contains('\n') {
                out.push_str(":-");
            }
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
