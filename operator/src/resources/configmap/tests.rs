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
    // Purge on the admin listener takes the members' token, which the
    // operator presents for relaycache.io/purge-before.
    assert_eq!(r.config.server.admin_token, "${RELAYCACHE_PEER_TOKEN}");
    assert_eq!(loaded.server.admin_token, "m".repeat(64));
    // Single and disabled members run no cluster and read no token.
    for mode in ["single", "disabled"] {
        let config = rendered(json!({"mode": mode})).config;
        let ha = config.cache.ha;
        assert!(ha.token.is_empty() && ha.client_token.is_empty(), "{mode}");
        assert!(config.server.admin_token.is_empty(), "{mode}");
    }
}

#[test]
fn spec_fields_land_on_the_proxy_keys() {
    let r = rendered(json!({
        "upstreams": [{"name": "gw", "url": "https://gw.example.com", "paths": ["/v1/messages"]}],
        "cache": {"ttl": "2h", "memory": "256Mi", "isolation": "header:X-Team", "streaming": true},
        "replication": {"replicaCount": 3, "readQuorum": 2, "writeQuorum": 2, "memberCountQuorum": 2,
                        "environment": "wan", "leaveTimeout": "20s", "warmupTimeout": "45s",
                        "tokenSecret": {"name": "peers"}},
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
    assert_eq!(ha.warmup_timeout, Duration::from_secs(45));
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
