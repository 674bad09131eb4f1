//! The proxy configuration of the members, rendered from the spec with the
//! proxy's own types (`relaycache_config`) and validated by the proxy's own
//! rules, so a spec the operator accepts is one the proxy will start with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use relaycache_config::{
    escape_env, expand_env, CacheConfig, Config, HaConfig, Isolation, RenderError, ReserveConfig,
    ServerConfig, UpstreamConfig,
};
use sha2::{Digest, Sha256};

use super::{
    parse_duration, quantity, validate, InvalidSpec, Names, SpecIssue, ADMIN_PORT, CONFIG_KEY,
};
use super::{GRPC_PORT, HTTP_PORT};
use crate::crd::{ClusterMode, RelayCache, RelayCacheSpec, ReserveSpec, UpstreamSpec};

/// Environment variable holding the members' token (`cache.ha.token`).
pub const PEER_TOKEN_ENV: &str = "RELAYCACHE_PEER_TOKEN";
/// Environment variable holding the clients' token (`cache.ha.client_token`).
pub const CLIENT_TOKEN_ENV: &str = "RELAYCACHE_CLIENT_TOKEN";

/// `${VAR}`: a reference the proxy expands from its environment at load,
/// so the file never holds the value. Unset, the proxy refuses to start.
pub fn env_reference(var: &str) -> String {
    format!("${{{var}}}")
}

/// Seconds the proxy may spend draining in-flight requests on shutdown.
/// LLM calls are slow, but a member being replaced should not hold its pod
/// for the proxy's default 30 s: its clients retry on another member.
pub const DRAIN_SECONDS: u64 = 20;

/// A rendered configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The proxy's configuration as the file holds it, before the proxy's
    /// `${VAR}` expansion: strings from the spec are escaped (`$${`), so they
    /// reach the proxy literally, and the operator's own references
    /// (`${POD_NAME}`, the peer token) are left for the proxy to expand.
    /// Serializing it (as the sidecar injector does) gives such a file too.
    pub config: Config,
    /// The file placed in the ConfigMap.
    pub text: String,
    /// sha256 (hex) of `text`.
    pub hash: String,
}

/// Why no configuration could be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderFailure {
    /// The spec breaks a rule; nothing the operator can do about it.
    #[error(transparent)]
    Invalid(#[from] InvalidSpec),
    /// The configuration could not be written as a file the proxy reads back
    /// as it was meant (a serialisation error, or a value that the proxy's
    /// `${VAR}` expansion would change).
    #[error("cannot write the proxy configuration: {0}")]
    Unwritable(String),
}

impl From<RenderFailure> for InvalidSpec {
    /// For callers that only report problems (the sidecar injector): an
    /// unwritable configuration is reported against the whole spec.
    fn from(failure: RenderFailure) -> Self {
        match failure {
            RenderFailure::Invalid(invalid) => invalid,
            RenderFailure::Unwritable(message) => InvalidSpec(vec![SpecIssue::new(
                "spec (rendered config)",
                format!("cannot write the proxy configuration: {message}"),
            )]),
        }
    }
}

/// Builds the proxy configuration of a RelayCache's members and checks it.
pub fn render(rc: &RelayCache, names: &Names) -> Result<Rendered, InvalidSpec> {
    render_checked(rc, names).map_err(InvalidSpec::from)
}

/// [`render`], telling an invalid spec from a configuration that could not
/// be written.
pub fn render_checked(rc: &RelayCache, names: &Names) -> Result<Rendered, RenderFailure> {
    let config = proxy_config(rc, names)?;
    write(&config, names, Config::try_to_yaml)
}

/// The configuration as the proxy should see it once loaded.
fn proxy_config(rc: &RelayCache, names: &Names) -> Result<Config, InvalidSpec> {
    let spec = &rc.spec;
    // The CRD's rules first: an object stored before one of them existed
    // gets the same message as the apiserver would give.
    let mut issues = validate::check(rc);
    let mut config = Config::default();
    listen_as_member(&mut config.server);
    if !spec.upstreams.is_empty() {
        config.upstreams = upstreams(&spec.upstreams);
    }
    cache_settings(spec, &mut config.cache, &mut issues);
    if spec.mode == ClusterMode::Ha {
        cluster_member(spec, names, &mut config.cache.ha, &mut issues);
        member_admin(&mut config.server);
    }
    if let Some(reserve) = &spec.reserve {
        config.cache.reserve = reserve_config(reserve, &mut issues);
    }
    // The proxy's own rules, translated to spec paths; only reached when the
    // spec's own fields made sense, so each problem is reported once.
    if issues.is_empty() {
        if let Err(found) = config.validate() {
            issues.extend(
                found
                    .0
                    .into_iter()
                    .map(|i| SpecIssue::new(spec_path(&i.path), i.message)),
            );
        }
    }
    if !issues.is_empty() {
        return Err(InvalidSpec(issues));
    }
    Ok(config)
}

/// A member's listeners: traffic and admin on every interface, and a drain
/// shorter than the proxy's default.
fn listen_as_member(server: &mut ServerConfig) {
    server.listen = format!("0.0.0.0:{HTTP_PORT}");
    // Probes come from the kubelet, so admin listens on every interface.
    server.admin_listen = format!("0.0.0.0:{ADMIN_PORT}");
    server.shutdown_timeout = std::time::Duration::from_secs(DRAIN_SECONDS);
}

/// `spec.upstreams` as the proxy's upstreams, with its default timeouts.
fn upstreams(spec: &[UpstreamSpec]) -> Vec<UpstreamConfig> {
    spec.iter()
        .map(|u| UpstreamConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            paths: u.paths.clone(),
            ..UpstreamConfig::default()
        })
        .collect()
}

/// `spec.mode` and `spec.cache`: TTL, memory, isolation, streaming and the
/// stale-if-error window; a field that does not parse is an issue.
fn cache_settings(spec: &RelayCacheSpec, cache: &mut CacheConfig, issues: &mut Vec<SpecIssue>) {
    cache.mode = spec.mode.proxy_mode();
    match parse_duration(&spec.cache.ttl, "spec.cache.ttl") {
        Ok(ttl) => {
            cache.ttl = ttl;
            // A longer default TTL than the proxy's max would be refused; keep
            // the max at least the default.
            cache.max_ttl = cache.max_ttl.max(ttl);
        }
        Err(issue) => issues.push(issue),
    }
    match quantity::bytes(&spec.cache.memory().0, "spec.cache.memory") {
        Ok(bytes) => cache.memory.max_cost = bytes,
        Err(issue) => issues.push(issue),
    }
    // Entries up to 8 MiB by default; a small memory tier caps them.
    cache.max_entry_bytes = cache.max_entry_bytes.min(cache.memory.max_cost);
    match parse_isolation(&spec.cache.isolation) {
        Some(isolation) => cache.isolation = isolation,
        None => issues.push(SpecIssue::new(
            "spec.cache.isolation",
            format!(
                "{:?} is not an isolation; use credential, shared or header:<header-name>",
                spec.cache.isolation
            ),
        )),
    }
    cache.streaming = spec.cache.streaming;
    match parse_duration(&spec.cache.stale_if_error, "spec.cache.staleIfError") {
        Ok(window) => cache.stale_if_error = window,
        Err(issue) => issues.push(issue),
    }
}

/// Mode `ha`: an embedded member with the peer list of every ordinal,
/// `spec.replication`'s counts and timings, and both tokens by reference.
fn cluster_member(
    spec: &RelayCacheSpec,
    names: &Names,
    ha: &mut HaConfig,
    issues: &mut Vec<SpecIssue>,
) {
    let replication = &spec.replication;
    ha.embedded = true;
    ha.bind_addr = format!("0.0.0.0:{GRPC_PORT}");
    ha.advertise_addr = names.advertise_address();
    // Clamped: a count beyond the CRD's bound is reported, not rendered.
    ha.peers = (0..spec.replicas.clamp(0, validate::MAX_REPLICAS))
        .map(|i| names.peer_address(i))
        .collect();
    for (value, target) in [
        (replication.replica_count, &mut ha.replica_count),
        (replication.read_quorum, &mut ha.read_quorum),
        (replication.write_quorum, &mut ha.write_quorum),
        (replication.member_count_quorum, &mut ha.member_count_quorum),
    ] {
        // A negative value is below the CRD's minimum of 1, which
        // `validate::check` has reported already.
        if let Ok(v) = u32::try_from(value) {
            *target = v;
        }
    }
    ha.environment = replication.environment.proxy_environment();
    match parse_duration(&replication.leave_timeout, "spec.replication.leaveTimeout") {
        Ok(timeout) => ha.leave_timeout = timeout,
        Err(issue) => issues.push(issue),
    }
    match parse_duration(
        &replication.warmup_timeout,
        "spec.replication.warmupTimeout",
    ) {
        Ok(timeout) => ha.warmup_timeout = timeout,
        Err(issue) => issues.push(issue),
    }
    // Both tokens, always: a member presents the members' token and
    // accepts clients that present the clients' one. The values come
    // from Secrets through the pod's environment (`tokens`).
    ha.token = env_reference(PEER_TOKEN_ENV);
    ha.client_token = env_reference(CLIENT_TOKEN_ENV);
}

/// Mode `ha`: the admin listener's purge takes the members' token, which
/// already lets its holder purge every member over gRPC, so it grants
/// nothing more; the operator presents it for `relaycache.io/purge-before`.
/// Injected sidecars never hold it, so theirs stays as it is.
fn member_admin(server: &mut ServerConfig) {
    server.admin_token = env_reference(PEER_TOKEN_ENV);
}

/// `spec.reserve` as the proxy's reserve; `storage` only fits a `file://` URL.
fn reserve_config(reserve: &ReserveSpec, issues: &mut Vec<SpecIssue>) -> ReserveConfig {
    let mut target = ReserveConfig {
        url: reserve.url.clone(),
        options: reserve.options.clone(),
        ..ReserveConfig::default()
    };
    match parse_duration(&reserve.retention, "spec.reserve.retention") {
        Ok(retention) => target.retention = retention,
        Err(issue) => issues.push(issue),
    }
    if let Some(storage) = &reserve.storage {
        if let Err(issue) = quantity::bytes(&storage.0, "spec.reserve.storage") {
            issues.push(issue);
        }
        if !reserve.url.starts_with("file://") {
            issues.push(SpecIssue::new(
                "spec.reserve.storage",
                "only a file:// reserve uses a volume; remove storage or use a file:///path URL",
            ));
        }
    }
    target
}

/// The operator's own `${VAR}` references in the file, which the proxy
/// expands from the pod's environment.
fn own_reference(name: &str) -> bool {
    name == "POD_NAME" || name == PEER_TOKEN_ENV || name == CLIENT_TOKEN_ENV
}

/// Writes `config` as the ConfigMap's file with `to_yaml`, and checks that
/// the proxy will read back exactly `config`.
fn write(
    config: &Config,
    names: &Names,
    to_yaml: impl Fn(&Config) -> Result<String, RenderError>,
) -> Result<Rendered, RenderFailure> {
    let file = escaped(config);
    let body = to_yaml(&file).map_err(|err| RenderFailure::Unwritable(err.to_string()))?;
    if body.trim().is_empty() {
        // An empty file is a valid proxy configuration (the defaults), so it
        // must never stand in for one that failed to render.
        return Err(RenderFailure::Unwritable("the YAML is empty".into()));
    }
    let text = format!(
        "# Rendered by relaycache-operator from RelayCache {}/{}; edit the RelayCache, not this file.\n{body}",
        names.namespace, names.name,
    );
    // Load it as the proxy would, with only the operator's own references
    // left as they are: any other `${` would be a spec value the escaping
    // missed, and would crash-loop the members when the variable is unset.
    let expanded = expand_env(&text, |name| {
        own_reference(name).then(|| format!("${{{name}}}"))
    })
    .map_err(|err| RenderFailure::Unwritable(err.to_string()))?;
    let loaded: Config = serde_yaml_ng::from_str(&expanded)
        .map_err(|err| RenderFailure::Unwritable(format!("it does not read back: {err}")))?;
    if loaded != *config {
        return Err(RenderFailure::Unwritable(
            "the proxy would read back different values than the spec gives".into(),
        ));
    }
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(Rendered {
        config: file,
        text,
        hash,
    })
}

/// `config` with every string that comes from the spec escaped for the
/// proxy's `${VAR}` expansion.
///
/// Escaped rather than refused: a RelayCache is data, Kubernetes expands no
/// variables in a custom resource, and the members' environment is the
/// operator's, not the user's. A `${` in a URL or a store option is meant
/// literally; expanding it would instead crash-loop every member (an unset
/// variable stops the proxy at load).
fn escaped(config: &Config) -> Config {
    let mut file = config.clone();
    for upstream in &mut file.upstreams {
        upstream.name = escape_env(&upstream.name);
        upstream.url = escape_env(&upstream.url);
        for path in &mut upstream.paths {
            *path = escape_env(path);
        }
    }
    if let Isolation::Header(header) = &mut file.cache.isolation {
        *header = escape_env(header);
    }
    let reserve = &mut file.cache.reserve;
    reserve.url = escape_env(&reserve.url);
    reserve.options = reserve
        .options
        .iter()
        .map(|(key, value)| (escape_env(key), escape_env(value)))
        .collect();
    file
}

fn parse_isolation(value: &str) -> Option<Isolation> {
    // The proxy's own parser decides, so the two cannot disagree.
    serde_json::from_value(serde_json::Value::String(value.into())).ok()
}

/// Maps a proxy config key path to the RelayCache field that sets it.
fn spec_path(config_path: &str) -> String {
    const MAP: [(&str, &str); 6] = [
        ("cache.memory.max_cost", "spec.cache.memory"),
        ("cache.ha.", "spec.replication."),
        ("cache.reserve.", "spec.reserve."),
        ("cache.", "spec.cache."),
        ("upstreams", "spec.upstreams"),
        ("", "spec (rendered config) "),
    ];
    let (from, to) = MAP
        .iter()
        .find(|(from, _)| config_path.starts_with(from))
        .copied()
        .unwrap_or(("", ""));
    format!("{to}{}", camel_case(&config_path[from.len()..]))
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The ConfigMap `NAME` holding the rendered file under `relaycache.yaml`.
pub fn config_map(names: &Names, owner: &OwnerReference, rendered: &Rendered) -> ConfigMap {
    ConfigMap {
        metadata: names.child_meta(names.name.clone(), owner),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            rendered.text.clone(),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests;
