//! The proxy configuration of the members, rendered from the spec with the
//! proxy's own types (`relaycache_config`) and validated by the proxy's own
//! rules, so a spec the operator accepts is one the proxy will start with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use relaycache_config::{
    escape_env, expand_env, Config, Isolation, RenderError, ReserveConfig, UpstreamConfig,
};
use sha2::{Digest, Sha256};

use super::{
    parse_duration, quantity, validate, InvalidSpec, Names, SpecIssue, ADMIN_PORT, CONFIG_KEY,
};
use super::{GRPC_PORT, HTTP_PORT};
use crate::crd::{ClusterMode, RelayCache};

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

    config.server.listen = format!("0.0.0.0:{HTTP_PORT}");
    // Probes come from the kubelet, so admin listens on every interface.
    config.server.admin_listen = format!("0.0.0.0:{ADMIN_PORT}");
    config.server.shutdown_timeout = std::time::Duration::from_secs(DRAIN_SECONDS);

    if !spec.upstreams.is_empty() {
        config.upstreams = spec
            .upstreams
            .iter()
            .map(|u| UpstreamConfig {
                name: u.name.clone(),
                url: u.url.clone(),
                paths: u.paths.clone(),
                ..UpstreamConfig::default()
            })
            .collect();
    }

    let cache = &mut config.cache;
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

    if spec.mode == ClusterMode::Ha {
        let replication = &spec.replication;
        let ha = &mut cache.ha;
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
        // Both tokens, always: a member presents the members' token and
        // accepts clients that present the clients' one. The values come
        // from Secrets through the pod's environment (`tokens`).
        ha.token = env_reference(PEER_TOKEN_ENV);
        ha.client_token = env_reference(CLIENT_TOKEN_ENV);
    }

    if let Some(reserve) = &spec.reserve {
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
        cache.reserve = target;
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
mod tests {
    use super::*;
    use crate::resources::testing::*;
    use relaycache_config::{Environment, Mode};
    use serde_json::json;
    use std::time::Duration;

    fn rendered(spec: serde_json::Value) -> Rendered {
        let rc = rc("web", spec);
        render(&rc, &Names::of(&rc).unwrap()).unwrap()
    }

    fn issues(spec: serde_json::Value) -> Vec<SpecIssue> {
        let rc = rc("web", spec);
        render(&rc, &Names::of(&rc).unwrap()).unwrap_err().0
    }

    #[test]
    fn ha_config_lists_every_ordinal_and_advertises_the_pod_name() {
        let r = rendered(json!({"replicas": 3}));
        let ha = &r.config.cache.ha;
        assert_eq!(r.config.cache.mode, Mode::Ha);
        assert!(ha.embedded);
        assert_eq!(ha.bind_addr, "0.0.0.0:3320");
        assert_eq!(ha.advertise_addr, "${POD_NAME}.web-peers.cache.svc:3320");
        assert_eq!(
            ha.peers,
            [
                "web-0.web-peers.cache.svc:3320",
                "web-1.web-peers.cache.svc:3320",
                "web-2.web-peers.cache.svc:3320"
            ]
        );
        assert_eq!(r.config.server.listen, "0.0.0.0:8787");
        assert_eq!(r.config.server.admin_listen, "0.0.0.0:9787");
    }

    #[test]
    fn members_read_both_tokens_by_reference_when_the_spec_names_no_secret() {
        // No tokenSecret: the members still authenticate, with the tokens
        // the operator generates, read from the environment at load.
        let r = rendered(json!({}));
        let ha = &r.config.cache.ha;
        assert_eq!(ha.token, "${RELAYCACHE_PEER_TOKEN}");
        assert_eq!(ha.client_token, "${RELAYCACHE_CLIENT_TOKEN}");
        assert!(!ha.insecure);
        // The file loads in a member whose environment holds both tokens,
        // and passes the proxy's own rules.
        let expanded = expand_env(&r.text, |name| match name {
            "POD_NAME" => Some("web-0".to_string()),
            "RELAYCACHE_PEER_TOKEN" => Some("m".repeat(64)),
            "RELAYCACHE_CLIENT_TOKEN" => Some("c".repeat(64)),
            _ => None,
        })
        .unwrap();
        let loaded = Config::from_yaml(&expanded).unwrap();
        assert_eq!(loaded.cache.ha.token, "m".repeat(64));
        assert_eq!(loaded.cache.ha.client_token, "c".repeat(64));
        // Single and disabled members run no cluster and read no token.
        for mode in ["single", "disabled"] {
            let ha = rendered(json!({"mode": mode})).config.cache.ha;
            assert!(ha.token.is_empty() && ha.client_token.is_empty(), "{mode}");
        }
    }

    #[test]
    fn spec_fields_land_on_the_proxy_keys() {
        let r = rendered(json!({
            "upstreams": [{"name": "gw", "url": "https://gw.example.com", "paths": ["/v1/messages"]}],
            "cache": {"ttl": "2h", "memory": "256Mi", "isolation": "header:X-Team", "streaming": true},
            "replication": {"replicaCount": 3, "readQuorum": 2, "writeQuorum": 2, "memberCountQuorum": 2,
                            "environment": "wan", "leaveTimeout": "20s", "tokenSecret": {"name": "peers"}},
            "reserve": {"url": "s3://bucket/llm", "retention": "168h", "options": {"aws_region": "eu-west-1"}}
        }));
        let c = &r.config;
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name, "gw");
        assert_eq!(c.upstreams[0].url, "https://gw.example.com");
        assert_eq!(c.upstreams[0].paths, ["/v1/messages"]);
        assert_eq!(c.cache.ttl, Duration::from_secs(7200));
        assert_eq!(c.cache.memory.max_cost, 256 << 20);
        assert_eq!(c.cache.isolation, Isolation::Header("x-team".into()));
        assert!(c.cache.streaming);
        let ha = &c.cache.ha;
        assert_eq!(
            (
                ha.replica_count,
                ha.read_quorum,
                ha.write_quorum,
                ha.member_count_quorum
            ),
            (3, 2, 2, 2)
        );
        assert_eq!(ha.environment, Environment::Wan);
        assert_eq!(ha.leave_timeout, Duration::from_secs(20));
        assert_eq!(ha.token, "${RELAYCACHE_PEER_TOKEN}");
        assert_eq!(c.cache.reserve.url, "s3://bucket/llm");
        assert_eq!(c.cache.reserve.retention, Duration::from_secs(168 * 3600));
        assert_eq!(
            c.cache
                .reserve
                .options
                .get("aws_region")
                .map(String::as_str),
            Some("eu-west-1")
        );
    }

    #[test]
    fn stale_if_error_is_off_by_default_and_rendered_when_set() {
        let off = rendered(json!({}));
        assert_eq!(off.config.cache.stale_if_error, Duration::ZERO);
        for mode in ["ha", "single", "disabled"] {
            let r = rendered(json!({"mode": mode, "cache": {"staleIfError": "10m"}}));
            assert_eq!(
                r.config.cache.stale_if_error,
                Duration::from_secs(600),
                "{mode}"
            );
            // The proxy reads the same window from the file.
            let expanded = expand_env(&r.text, |name| Some(format!("x-{name}"))).unwrap();
            let loaded = Config::from_yaml(&expanded).unwrap();
            assert_eq!(
                loaded.cache.stale_if_error,
                Duration::from_secs(600),
                "{mode}"
            );
            assert_ne!(r.hash, off.hash, "{mode}: members roll onto the new window");
        }
        let zero = rendered(json!({"cache": {"staleIfError": "0"}}));
        assert_eq!(zero.config.cache.stale_if_error, Duration::ZERO);
        assert_eq!(zero.hash, off.hash, "0 is the default");
    }

    #[test]
    fn the_file_is_what_the_proxy_reads_back() {
        let r = rendered(json!({"cache": {"isolation": "shared"}}));
        assert!(r
            .text
            .starts_with("# Rendered by relaycache-operator from RelayCache cache/web"));
        // Expand ${POD_NAME} and the tokens as the proxy would in the pod,
        // then load it with the proxy's loader: same values, and valid.
        let expanded = relaycache_config::expand_env(&r.text, |name| match name {
            "POD_NAME" => Some("web-1".to_string()),
            "RELAYCACHE_PEER_TOKEN" => Some("m".to_string()),
            "RELAYCACHE_CLIENT_TOKEN" => Some("c".to_string()),
            _ => None,
        })
        .unwrap();
        let loaded = Config::from_yaml(&expanded).unwrap();
        assert_eq!(
            loaded.cache.ha.advertise_addr,
            "web-1.web-peers.cache.svc:3320"
        );
        assert_eq!(loaded.cache.ha.peers, r.config.cache.ha.peers);
        assert_eq!(loaded.cache.isolation, Isolation::Shared);
        assert_eq!(r.hash, hex::encode(Sha256::digest(r.text.as_bytes())));
    }

    #[test]
    fn scaling_changes_the_peer_list_and_the_hash() {
        let three = rendered(json!({"replicas": 3}));
        let five = rendered(json!({"replicas": 5}));
        assert_eq!(five.config.cache.ha.peers.len(), 5);
        assert_eq!(
            five.config.cache.ha.peers[4],
            "web-4.web-peers.cache.svc:3320"
        );
        assert_ne!(three.hash, five.hash);
        assert_eq!(three.hash, rendered(json!({"replicas": 3})).hash, "stable");
    }

    #[test]
    fn single_and_disabled_modes_render_no_peers() {
        for mode in ["single", "disabled"] {
            let r = rendered(json!({"mode": mode}));
            assert!(r.config.cache.ha.peers.is_empty(), "{mode}");
            assert!(r.config.cache.ha.advertise_addr.is_empty(), "{mode}");
        }
    }

    #[test]
    fn invalid_values_are_reported_at_their_spec_paths() {
        let found = issues(json!({
            "cache": {"ttl": "forever", "memory": "lots", "isolation": "header:", "staleIfError": "when down"},
            "replication": {"leaveTimeout": "x"},
            "reserve": {"url": "s3://b", "retention": "long", "storage": "1Gi"}
        }));
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.cache.ttl",
                "spec.cache.memory",
                "spec.cache.isolation",
                "spec.cache.staleIfError",
                "spec.replication.leaveTimeout",
                "spec.reserve.retention",
                "spec.reserve.storage"
            ]
        );
        assert!(found.iter().all(|i| !i.message.is_empty()));
        let stale = &found[3];
        assert!(
            stale.message.contains("\"when down\" is not a duration")
                && stale.message.contains("write e.g."),
            "{stale:?}"
        );
    }

    #[test]
    fn cel_rules_are_checked_again_for_objects_that_predate_them() {
        // Quorums above replicaCount are caught by CEL on the apiserver; an
        // object that predates the rule still reaches the operator.
        let found = issues(json!({
            "replication": {"replicaCount": 2, "readQuorum": 5}
        }));
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["spec.replication.readQuorum"]);
        assert!(
            found[0]
                .message
                .contains("must not exceed replication.replicaCount (2)"),
            "{found:?}"
        );
        let found = issues(json!({"replicas": 2, "replication": {"memberCountQuorum": 3}}));
        assert_eq!(found[0].path, "spec.replication.memberCountQuorum");
        let found = issues(json!({"reserve": {"url": "file://reserve"}}));
        assert_eq!(found[0].path, "spec.reserve.url");
    }

    #[test]
    fn proxy_rules_that_slip_past_cel_come_back_as_spec_paths() {
        let found = issues(json!({"cache": {"memory": "10Ki"}}));
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["spec.cache.memory"]);
    }

    #[test]
    fn a_null_memory_gets_the_default() {
        let r = rendered(json!({"cache": {"memory": null}}));
        assert_eq!(r.config.cache.memory.max_cost, 100 << 20);
    }

    #[test]
    fn spec_strings_reach_the_proxy_literally() {
        let spec = json!({
            "upstreams": [{"name": "gw-${X}", "url": "https://gw.example.com/${TENANT}/v1", "paths": ["/v1/${P}"]}],
            "reserve": {"url": "s3://bucket/${PREFIX}", "options": {"aws_endpoint": "http://minio:9000/$${Q}", "${K}": "v"}},
            "replication": {"tokenSecret": {"name": "peers"}}
        });
        let r = rendered(spec);
        // Loaded as the proxy does (expand, parse, validate) with only its
        // pod's variables set: the spec's `${...}` are not variables, the
        // operator's own references are.
        let load_in_pod = |text: &str| {
            let expanded = expand_env(text, |name| match name {
                "POD_NAME" => Some("web-0".to_string()),
                "RELAYCACHE_PEER_TOKEN" => Some("t0k3n".to_string()),
                "RELAYCACHE_CLIENT_TOKEN" => Some("c0k3n".to_string()),
                _ => None,
            })
            .unwrap();
            let config: Config = serde_yaml_ng::from_str(&expanded).unwrap();
            config.validate().unwrap();
            config
        };
        let loaded = load_in_pod(&r.text);
        let upstream = &loaded.upstreams[0];
        assert_eq!(upstream.name, "gw-${X}");
        assert_eq!(upstream.url, "https://gw.example.com/${TENANT}/v1");
        assert_eq!(upstream.paths, ["/v1/${P}"]);
        let reserve = &loaded.cache.reserve;
        assert_eq!(reserve.url, "s3://bucket/${PREFIX}");
        assert_eq!(
            reserve.options.get("aws_endpoint").map(String::as_str),
            Some("http://minio:9000/$${Q}")
        );
        assert_eq!(reserve.options.get("${K}").map(String::as_str), Some("v"));
        assert_eq!(
            loaded.cache.ha.advertise_addr,
            "web-0.web-peers.cache.svc:3320"
        );
        assert_eq!(loaded.cache.ha.token, "t0k3n");
        // `config` is the file's content: serialized again (as the sidecar
        // injector does) it is escaped the same way.
        assert_eq!(
            r.config.upstreams[0].url,
            "https://gw.example.com/$${TENANT}/v1"
        );
        let again = load_in_pod(&r.config.try_to_yaml().unwrap());
        assert_eq!(again.upstreams[0].url, upstream.url);
    }

    fn written(
        to_yaml: impl Fn(&Config) -> Result<String, RenderError>,
    ) -> Result<Rendered, RenderFailure> {
        let rc = rc("web", json!({}));
        let names = Names::of(&rc).unwrap();
        write(&proxy_config(&rc, &names).unwrap(), &names, to_yaml)
    }

    #[test]
    fn a_file_that_cannot_be_written_is_a_failure_not_an_empty_config_map() {
        use serde::ser::Error as _;
        let failed = written(|_| Err(serde_yaml_ng::Error::custom("no YAML today").into()));
        match failed {
            Err(RenderFailure::Unwritable(message)) => {
                assert!(message.contains("no YAML today"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            written(|_| Ok(String::new())),
            Err(RenderFailure::Unwritable(_))
        ));
        assert!(written(Config::try_to_yaml).is_ok());
        // The sidecar injector sees it as a problem with the spec.
        let invalid = InvalidSpec::from(RenderFailure::Unwritable("x".into()));
        assert_eq!(invalid.0[0].path, "spec (rendered config)");
    }

    #[test]
    fn a_file_that_would_read_back_differently_is_refused() {
        // A stray variable (here, an unescaped one) or a changed value.
        let stray = written(|c| {
            Config::try_to_yaml(c).map(|y| y.replace("https://api.openai.com", "${OPENAI}"))
        });
        assert!(
            matches!(&stray, Err(RenderFailure::Unwritable(m)) if m.contains("OPENAI")),
            "{stray:?}"
        );
        let changed = written(|c| Config::try_to_yaml(c).map(|y| y.replace("ttl: 1h", "ttl: 2h")));
        assert!(
            matches!(&changed, Err(RenderFailure::Unwritable(m)) if m.contains("different values")),
            "{changed:?}"
        );
    }

    #[test]
    fn config_paths_map_to_camel_case_spec_paths() {
        assert_eq!(
            spec_path("cache.ha.member_count_quorum"),
            "spec.replication.memberCountQuorum"
        );
        assert_eq!(spec_path("cache.memory.max_cost"), "spec.cache.memory");
        assert_eq!(spec_path("upstreams[1].url"), "spec.upstreams[1].url");
        assert_eq!(spec_path("cache.reserve.url"), "spec.reserve.url");
        assert_eq!(spec_path("log.level"), "spec (rendered config) log.level");
    }

    #[test]
    fn config_map_holds_the_file_under_its_key() {
        let rc = rc("web", json!({}));
        let names = Names::of(&rc).unwrap();
        let r = render(&rc, &names).unwrap();
        let cm = config_map(&names, &owner(&rc), &r);
        assert_eq!(cm.metadata.name.as_deref(), Some("web"));
        let data = cm.data.unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data.get("relaycache.yaml"), Some(&r.text));
    }
}
