//! The conversion of a cc-relay document into the native shape, key by
//! key, each step reported as a [`Notice`].

use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::{Expansion, Notice, Unneeded, GOSSIP_OFFSET};
use crate::{Config, ConfigError};

/// Turns a cc-relay document into the native shape, noting each step.
pub(super) struct Converter<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    expansion: Expansion,
    pub(super) notices: Vec<Notice>,
}

/// The `server.timeout_ms` of a file, for its upstreams.
type Timeout = Option<(Duration, Value)>;

fn name(key: &str) -> Value {
    Value::String(key.to_string())
}

fn parse_error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Parse {
        path: path.into(),
        message: message.into(),
    }
}

/// The mapping at `map[key]`, created empty when absent.
fn child<'m>(map: &'m mut Mapping, key: &str, path: &str) -> Result<&'m mut Mapping, ConfigError> {
    map.entry(name(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
        .as_mapping_mut()
        .ok_or_else(|| parse_error(path, "must be a mapping"))
}

/// A whole number written as a number or as text.
fn whole_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A Go duration (`5s`, `1m30s`, `1.5h`, `250ms`), or a number of
/// nanoseconds, which is how cc-relay's YAML reads a bare number.
fn go_duration(value: &Value) -> Option<Duration> {
    let text = match value {
        Value::Number(n) => return n.as_u64().map(Duration::from_nanos),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let amount: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += amount * scale;
        rest = &rest[unit_end..];
    }
    // Rounded to whole nanoseconds, as Go keeps them.
    Some(Duration::from_nanos(nanos.round() as u64))
}

fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl<'a> Converter<'a> {
    pub(super) fn new(env: &'a dyn Fn(&str) -> Option<String>, expansion: Expansion) -> Self {
        Self {
            env,
            expansion,
            notices: Vec::new(),
        }
    }

    /// cc-relay's names of levels and environments are case-insensitive;
    /// a `${NAME}` reference kept for `migrate` must stay as written.
    fn lower(&self, text: &str) -> String {
        match self.expansion {
            Expansion::Values => text.to_ascii_lowercase(),
            Expansion::References => text.to_string(),
        }
    }

    /// Expands `${NAME}` as cc-relay does: an unset variable is empty.
    pub(super) fn expand(&mut self, text: &str) -> Result<String, ConfigError> {
        let mut unset: Vec<String> = Vec::new();
        loop {
            let lookup = |var: &str| {
                if unset.iter().any(|u| u == var) {
                    Some(String::new())
                } else {
                    (self.env)(var)
                }
            };
            match crate::expand_env(text, lookup) {
                Ok(expanded) => {
                    self.notices
                        .extend(unset.into_iter().map(|name| Notice::UnsetVariable { name }));
                    return Ok(expanded);
                }
                Err(crate::env::EnvError::Unset { name, .. }) if !unset.contains(&name) => {
                    unset.push(name);
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Parses the (expanded) text, converts it and reads the result as
    /// native, as strictly as a native file.
    pub(super) fn convert_text(&mut self, text: &str) -> Result<Config, ConfigError> {
        let mut doc: Value =
            serde_yaml_ng::from_str(text).map_err(|err| parse_error(".", err.to_string()))?;
        if let Some(top) = doc.as_mapping_mut() {
            self.convert(top)?;
        }
        serde_path_to_error::deserialize(doc).map_err(|err| {
            let path = err.path().to_string();
            parse_error(path, err.into_inner().to_string())
        })
    }

    fn convert(&mut self, top: &mut Mapping) -> Result<(), ConfigError> {
        let timeout = match top.get_mut("server").and_then(Value::as_mapping_mut) {
            Some(server) => self.server(server)?,
            None => None,
        };
        let logging = top.remove("logging");
        if let Some(logging) = logging {
            self.logging(logging, top)?;
        }
        self.providers(top, timeout)?;
        for (section, why) in [
            ("routing", Unneeded::Unsupported("requests go to the first upstream whose path prefix matches (upstreams); there is no strategy across providers")),
            ("health", Unneeded::Unsupported("upstreams are not health-checked; cache.stale_if_error answers from the cache while one fails")),
            ("grpc", Unneeded::NoneNeeded("there is no management API; the admin listener (server.admin_listen) serves /stats, /metrics and purge")),
            ("metrics", Unneeded::UseNative("server.admin_listen (Prometheus metrics at /metrics)")),
        ] {
            if top.remove(section).is_some() {
                self.ignored(section, why);
            }
        }
        if let Some(cache) = top.get_mut("cache").and_then(Value::as_mapping_mut) {
            self.cache(cache)?;
            self.secure(cache);
        }
        Ok(())
    }

    fn ignored(&mut self, key: impl Into<String>, why: Unneeded) {
        self.notices.push(Notice::Ignored {
            key: key.into(),
            why,
        });
    }

    /// Moves `value` to `target[key]` (native path `to`), unless the file
    /// also sets it natively.
    fn put(
        &mut self,
        target: &mut Mapping,
        key: &str,
        to: &str,
        from: &str,
        value: Value,
    ) -> Result<(), ConfigError> {
        if target.contains_key(key) {
            return Err(ConfigError::Conflict {
                native: to.to_string(),
                cc_relay: from.to_string(),
            });
        }
        target.insert(name(key), value);
        self.notices.push(Notice::Mapped {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    /// `server`: cc-relay's listen form, and its keys that have no place
    /// under `server` here. Returns `timeout_ms` for the upstreams.
    fn server(&mut self, server: &mut Mapping) -> Result<Timeout, ConfigError> {
        if let Some(Value::String(listen)) = server.get_mut("listen") {
            // Go's ":8787" means every interface.
            if listen.starts_with(':') {
                let to = format!("0.0.0.0{listen}");
                self.notices.push(Notice::Converted {
                    key: "server.listen".into(),
                    from: listen.clone(),
                    to: to.clone(),
                });
                *listen = to;
            }
        }
        if let Some(value) = server.remove("max_concurrent") {
            match whole_number(&value) {
                Some(0) => self.ignored(
                    "server.max_concurrent",
                    Unneeded::NoneNeeded("0 means unlimited in cc-relay; relaycache keeps its own bound, server.max_inflight"),
                ),
                Some(_) => self.put(
                    server,
                    "max_inflight",
                    "server.max_inflight",
                    "server.max_concurrent",
                    value,
                )?,
                None => return Err(parse_error("server.max_concurrent", "must be a whole number")),
            }
        }
        for key in ["api_key", "auth"] {
            if server.remove(key).is_some() {
                self.ignored(
                    format!("server.{key}"),
                    Unneeded::Unsupported("relaycache does not check a key of its own: each caller's credential is forwarded to the upstream and keys its entries (cache.isolation)"),
                );
            }
        }
        if server.remove("enable_http2").is_some() {
            self.ignored(
                "server.enable_http2",
                Unneeded::NoneNeeded("the traffic listener always serves HTTP/1.1 and h2c"),
            );
        }
        let Some(value) = server.remove("timeout_ms") else {
            return Ok(None);
        };
        match whole_number(&value) {
            Some(0) => {
                self.ignored(
                    "server.timeout_ms",
                    Unneeded::NoneNeeded(
                        "0 means cc-relay's default; each upstream's total_timeout applies",
                    ),
                );
                Ok(None)
            }
            Some(ms) => Ok(Some((Duration::from_millis(ms), value))),
            None => Err(parse_error(
                "server.timeout_ms",
                "must be a whole number of milliseconds",
            )),
        }
    }

    /// `logging` becomes `log`: its level and format.
    fn logging(&mut self, logging: Value, top: &mut Mapping) -> Result<(), ConfigError> {
        let Value::Mapping(logging) = logging else {
            return Err(parse_error("logging", "must be a mapping"));
        };
        let log = child(top, "log", "log")?;
        for (key, value) in logging {
            let key = key.as_str().unwrap_or_default().to_string();
            let path = format!("logging.{key}");
            match (key.as_str(), value) {
                ("level", Value::String(level)) => {
                    let level = self.lower(&level);
                    self.put(log, "level", "log.level", &path, name(&level))?
                }
                ("format", Value::String(format)) => {
                    let native = match format.as_str() {
                        "json" => "json",
                        "text" => "text",
                        "console" | "" => {
                            self.notices.push(Notice::Converted {
                                key: "log.format".into(),
                                from: format.clone(),
                                to: "text".into(),
                            });
                            "text"
                        }
                        _ => return Err(parse_error(path, "use json, text or console")),
                    };
                    self.put(log, "format", "log.format", &path, name(native))?;
                }
                ("output", _) => self.ignored(
                    path,
                    Unneeded::NoneNeeded("logs go to standard output; redirect them there"),
                ),
                ("pretty", _) => self.ignored(path, Unneeded::UseNative("log.format")),
                ("debug_options", _) => self.ignored(
                    path,
                    Unneeded::Unsupported("request bodies and headers are never logged"),
                ),
                _ => self.ignored(
                    path,
                    Unneeded::Unsupported("not a logging setting relaycache has"),
                ),
            }
        }
        Ok(())
    }

    /// `providers` becomes one upstream: the first enabled provider that
    /// speaks Anthropic's API over plain HTTP. `server.timeout_ms` bounds
    /// every upstream's exchange.
    fn providers(&mut self, top: &mut Mapping, timeout: Timeout) -> Result<(), ConfigError> {
        let providers = top.remove("providers");
        let native = top.contains_key("upstreams");
        if native && providers.is_some() {
            return Err(ConfigError::Conflict {
                native: "upstreams".into(),
                cc_relay: "providers".into(),
            });
        }
        if native && timeout.is_some() {
            return Err(ConfigError::Conflict {
                native: "upstreams[].total_timeout".into(),
                cc_relay: "server.timeout_ms".into(),
            });
        }
        let mut upstreams = match providers {
            Some(Value::Sequence(list)) => self.upstreams_of(list)?,
            Some(_) => return Err(parse_error("providers", "must be a list")),
            None => Vec::new(),
        };
        let Some((limit, written)) = timeout else {
            if !upstreams.is_empty() {
                top.insert(name("upstreams"), Value::Sequence(upstreams));
            }
            return Ok(());
        };
        if upstreams.is_empty() {
            // The built-in upstreams, written out to carry the timeout.
            let Value::Sequence(defaults) = serde_yaml_ng::to_value(Config::default().upstreams)
                .map_err(|err| parse_error("upstreams", err.to_string()))?
            else {
                return Err(parse_error("upstreams", "the defaults are not a list"));
            };
            upstreams = defaults;
        }
        let first_byte = crate::UpstreamConfig::default()
            .first_byte_timeout
            .min(limit);
        for upstream in upstreams.iter_mut().filter_map(Value::as_mapping_mut) {
            upstream.insert(name("total_timeout"), name(&duration_text(limit)));
            upstream.insert(name("first_byte_timeout"), name(&duration_text(first_byte)));
        }
        top.insert(name("upstreams"), Value::Sequence(upstreams));
        self.notices.push(Notice::Converted {
            key: "upstreams[].total_timeout".into(),
            from: format!(
                "server.timeout_ms: {}",
                whole_number(&written).unwrap_or_default()
            ),
            to: duration_text(limit),
        });
        Ok(())
    }

    /// The upstream list for cc-relay's providers (at most one).
    fn upstreams_of(&mut self, providers: Vec<Value>) -> Result<Vec<Value>, ConfigError> {
        let mut upstreams = Vec::new();
        for (i, provider) in providers.into_iter().enumerate() {
            let path = format!("providers[{i}]");
            let Value::Mapping(mut provider) = provider else {
                return Err(parse_error(path, "must be a mapping"));
            };
            let text = |key: &str| {
                provider
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let (kind, provider_name, base_url) = (text("type"), text("name"), text("base_url"));
            let enabled = provider.get("enabled").and_then(Value::as_bool) == Some(true);
            let url = match (kind.as_str(), base_url.is_empty()) {
                ("anthropic", true) => "https://api.anthropic.com".to_string(),
                ("anthropic" | "zai" | "ollama", false) => base_url,
                _ => String::new(),
            };
            if !enabled {
                self.ignored(path, Unneeded::NoneNeeded("the provider is not enabled"));
                continue;
            }
            if !upstreams.is_empty() || url.is_empty() {
                self.ignored(
                    path,
                    Unneeded::Unsupported(if url.is_empty() {
                        "only providers that speak Anthropic's API at a base URL (anthropic, zai, ollama) can be an upstream; cloud providers that sign requests (bedrock, vertex, azure) cannot"
                    } else {
                        "every path goes to one upstream (the first enabled provider); cc-relay's routing across providers is not done"
                    }),
                );
                continue;
            }
            for (key, why) in [
                (
                    "keys",
                    "each caller's own credential is forwarded; relaycache adds no keys of its own",
                ),
                (
                    "pooling",
                    "each caller's own credential is forwarded; relaycache adds no keys of its own",
                ),
                (
                    "model_mapping",
                    "model names are passed to the upstream unchanged",
                ),
                ("models", "model names are passed to the upstream unchanged"),
            ] {
                if provider.remove(key).is_some() {
                    self.ignored(format!("{path}.{key}"), Unneeded::Unsupported(why));
                }
            }
            let mut upstream = Mapping::new();
            upstream.insert(name("name"), name(&provider_name));
            upstream.insert(name("url"), name(&url));
            upstreams.push(Value::Mapping(upstream));
            self.notices.push(Notice::Mapped {
                from: path,
                to: format!("upstreams[0] (url {url}, every path)"),
            });
        }
        Ok(upstreams)
    }

    /// `cache`: the ristretto and olric sections, and the older switches.
    fn cache(&mut self, cache: &mut Mapping) -> Result<(), ConfigError> {
        for key in ["enabled", "backend"] {
            if cache.remove(key).is_some() {
                self.ignored(format!("cache.{key}"), Unneeded::UseNative("cache.mode"));
            }
        }
        if let Some(ristretto) = cache.remove("ristretto") {
            let Value::Mapping(ristretto) = ristretto else {
                return Err(parse_error("cache.ristretto", "must be a mapping"));
            };
            let memory = child(cache, "memory", "cache.memory")?;
            for (key, value) in ristretto {
                match key.as_str().unwrap_or_default() {
                    "max_cost" => self.put(
                        memory,
                        "max_cost",
                        "cache.memory.max_cost",
                        "cache.ristretto.max_cost",
                        value,
                    )?,
                    "num_counters" => self.ignored(
                        "cache.ristretto.num_counters",
                        Unneeded::NoneNeeded("the memory tier is bounded by bytes alone (cache.memory.max_cost) and needs no admission counters"),
                    ),
                    "buffer_items" => self.ignored(
                        "cache.ristretto.buffer_items",
                        Unneeded::NoneNeeded("the memory tier has no admission buffer to size"),
                    ),
                    other => {
                        return Err(parse_error(
                            format!("cache.ristretto.{other}"),
                            "unknown ristretto key; cc-relay's are num_counters, max_cost and buffer_items",
                        ))
                    }
                }
            }
        }
        if let Some(olric) = cache.remove("olric") {
            let Value::Mapping(olric) = olric else {
                return Err(parse_error("cache.olric", "must be a mapping"));
            };
            let ha = child(cache, "ha", "cache.ha")?;
            self.olric(olric, ha)?;
        }
        Ok(())
    }

    /// `cache.olric` becomes `cache.ha`: same names and meanings, cc-relay's
    /// forms of addresses and durations, and its defaults where the file
    /// leaves a key out.
    fn olric(&mut self, mut olric: Mapping, ha: &mut Mapping) -> Result<(), ConfigError> {
        if let Some(port) = olric.remove("bind_port") {
            // cc-relay's older form: a host in bind_addr, the port apart.
            let port = whole_number(&port)
                .ok_or_else(|| parse_error("cache.olric.bind_port", "must be a port number"))?;
            let host = olric
                .get("bind_addr")
                .and_then(Value::as_str)
                .unwrap_or("0.0.0.0");
            let joined = format!("{host}:{port}");
            self.notices.push(Notice::Converted {
                key: "cache.ha.bind_addr".into(),
                from: format!("bind_addr {host:?}, bind_port {port}"),
                to: joined.clone(),
            });
            olric.insert(name("bind_addr"), name(&joined));
        }
        for (key, value) in olric {
            let key = key.as_str().unwrap_or_default().to_string();
            let from = format!("cache.olric.{key}");
            let to = format!("cache.ha.{key}");
            let value = match key.as_str() {
                "embedded" | "bind_addr" | "addresses" | "replica_count" | "read_quorum"
                | "write_quorum" | "member_count_quorum" => value,
                "environment" => match value.as_str().map(|env| self.lower(env)) {
                    // An empty environment is cc-relay's default.
                    Some(env) if env.is_empty() => name("local"),
                    Some(env) => name(&env),
                    None => value,
                },
                "peers" => self.peers(value)?,
                "leave_timeout" => {
                    let duration = go_duration(&value).ok_or_else(|| {
                        parse_error(&from, "not a duration; write 5s, 1m30s or 500ms")
                    })?;
                    name(&duration_text(duration))
                }
                "dmap_name" => {
                    self.ignored(
                        from,
                        Unneeded::NoneNeeded("a cluster holds one cache; entries are keyed by tenant and namespace"),
                    );
                    continue;
                }
                "replication_mode" => {
                    self.ignored(from, Unneeded::UseNative("cache.ha.write_quorum"));
                    continue;
                }
                _ => {
                    return Err(parse_error(
                        from,
                        "unknown olric key; cc-relay's are embedded, bind_addr, addresses, peers, environment, replica_count, read_quorum, write_quorum, member_count_quorum, leave_timeout and dmap_name",
                    ))
                }
            };
            self.put(ha, &key, &to, &from, value)?;
        }
        // cc-relay's documented defaults, where they differ from ours.
        for (key, value) in [
            ("embedded", Value::Bool(false)),
            ("environment", name("local")),
            ("replica_count", Value::Number(1.into())),
        ] {
            if !ha.contains_key(key) {
                self.notices.push(Notice::CcRelayDefault {
                    key: format!("cache.ha.{key}"),
                    value: serde_yaml_ng::to_string(&value)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                });
                ha.insert(name(key), value);
            }
        }
        Ok(())
    }

    /// cc-relay lists each peer at its gossip port (bind port + 2); a
    /// relaycache member listens for peers at its bind port.
    fn peers(&mut self, peers: Value) -> Result<Value, ConfigError> {
        let Value::Sequence(peers) = peers else {
            return Ok(peers);
        };
        let mut read = Vec::with_capacity(peers.len());
        for (i, peer) in peers.into_iter().enumerate() {
            let key = format!("cache.olric.peers[{i}]");
            let parsed = peer
                .as_str()
                .and_then(|p| p.rsplit_once(':'))
                .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)));
            let Some((host, gossip)) = parsed else {
                // Not host:port: validation names it.
                read.push(peer);
                continue;
            };
            let bind = gossip
                .checked_sub(GOSSIP_OFFSET)
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    parse_error(
                        &key,
                        format!("port {gossip} cannot be a gossip port (a member's bind port + 2)"),
                    )
                })?;
            read.push(name(&format!("{host}:{bind}")));
            self.notices.push(Notice::GossipPort {
                key,
                host,
                gossip,
                bind,
            });
        }
        Ok(Value::Sequence(read))
    }

    /// cc-relay's cluster has no secret; relaycache refuses to run one
    /// without. The secret comes from the environment when it is there;
    /// otherwise the cluster runs open, as it did under cc-relay, and says so.
    fn secure(&mut self, cache: &mut Mapping) {
        let is_ha = cache.get("mode").and_then(Value::as_str) == Some("ha");
        let Some(ha) = cache.get_mut("ha").and_then(Value::as_mapping_mut) else {
            return;
        };
        let secured = ["token", "client_token", "insecure", "tls"]
            .iter()
            .any(|k| ha.contains_key(*k));
        if !is_ha || secured {
            return;
        }
        let member = ha.get("embedded").and_then(Value::as_bool) != Some(false);
        let mut wanted = vec![(
            "cache.ha.client_token",
            "client_token",
            "RELAYCACHE_CLIENT_TOKEN",
        )];
        if member {
            wanted.insert(0, ("cache.ha.token", "token", "RELAYCACHE_PEER_TOKEN"));
        }
        let mut found = false;
        for (path, key, variable) in wanted {
            let Some(value) = (self.env)(variable).filter(|v| !v.is_empty()) else {
                continue;
            };
            // The one a member or client must have decides.
            found |= key == "token" || !member;
            let written = match self.expansion {
                Expansion::Values => value,
                Expansion::References => format!("${{{variable}}}"),
            };
            ha.insert(name(key), name(&written));
            self.notices.push(Notice::TokenFromEnvironment {
                key: path,
                variable,
            });
        }
        if !found {
            ha.insert(name("insecure"), Value::Bool(true));
            self.notices.push(Notice::OpenCluster);
        }
    }
}
