use super::*;
use crate::{Environment, Mode};
use std::time::Duration;

/// An environment with nothing set.
fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Loaded {
    read(text, &no_env).unwrap_or_else(|err| panic!("{err}\n{text}"))
}

fn error(text: &str) -> String {
    match read(text, &no_env) {
        Ok(loaded) => panic!("accepted: {:?}", loaded.config),
        Err(err) => err.to_string(),
    }
}

fn ignored(loaded: &Loaded, key: &str) -> Unneeded {
    loaded
        .notices
        .iter()
        .find_map(|n| match n {
            Notice::Ignored { key: k, why } if k == key => Some(why.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no notice that {key} is ignored: {:#?}", loaded.notices))
}

fn mapped(loaded: &Loaded, from: &str, to: &str) {
    assert!(
        loaded.notices.contains(&Notice::Mapped {
            from: from.into(),
            to: to.into()
        }),
        "{from} -> {to}: {:#?}",
        loaded.notices
    );
}

/// A member of an HA cluster in cc-relay's spelling, with `extra` olric keys.
fn olric(extra: &str) -> String {
    format!("cache:\n  mode: ha\n  olric:\n    embedded: true\n    bind_addr: \"0.0.0.0:3320\"\n{extra}")
}

#[test]
fn detection_needs_a_key_only_cc_relay_has() {
    for (text, key) in [
        ("cache:\n  ristretto: {}\n", Some("cache.ristretto")),
        ("cache:\n  olric: {}\n", Some("cache.olric")),
        ("cache:\n  backend: memory\n", Some("cache.backend")),
        ("providers: []\n", Some("providers")),
        ("logging: {}\n", Some("logging")),
        ("metrics: {}\n", Some("metrics")),
        ("server:\n  timeout_ms: 5\n", Some("server.timeout_ms")),
        ("server:\n  listen: \"127.0.0.1:1\"\n", None),
        ("cache:\n  memory:\n    max_cost: 1\n", None),
        ("log:\n  level: info\n", None),
    ] {
        let doc: Value = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(detect(&doc).as_deref(), key, "{text}");
    }
    let loaded = load("cache:\n  ristretto: {}\n");
    assert_eq!(loaded.dialect, Dialect::CcRelay);
    assert_eq!(
        loaded.notices[0],
        Notice::Detected {
            key: "cache.ristretto".into()
        }
    );
    assert_eq!(load("").dialect, Dialect::Native);
    assert!(load("").notices.is_empty());
}

#[test]
fn a_native_typo_is_refused_as_before() {
    let err = error("cache:\n  memroy:\n    max_cost: 1048576\n");
    assert!(err.contains("memroy"), "{err}");
    // Native keys beside cc-relay's are just as strict.
    let err = error("cache:\n  ristretto: {}\n  memroy: {}\n");
    assert!(err.contains("memroy"), "{err}");
    let err = error("cache:\n  olric: {}\n  ha:\n    tokn: x\n");
    assert!(err.contains("tokn"), "{err}");
}

#[test]
fn ristretto_max_cost_is_memory_max_cost_and_the_rest_is_not_needed() {
    let loaded = load("cache:\n  mode: single\n  ristretto:\n    num_counters: 1000000\n    max_cost: 52428800\n    buffer_items: 64\n");
    assert_eq!(loaded.config.cache.mode, Mode::Single);
    assert_eq!(loaded.config.cache.memory.max_cost, 52_428_800);
    mapped(&loaded, "cache.ristretto.max_cost", "cache.memory.max_cost");
    for key in [
        "cache.ristretto.num_counters",
        "cache.ristretto.buffer_items",
    ] {
        assert!(
            matches!(ignored(&loaded, key), Unneeded::NoneNeeded(_)),
            "{key}"
        );
    }
    let err = error("cache:\n  ristretto:\n    max_cots: 1\n");
    assert!(err.contains("cache.ristretto.max_cots"), "{err}");
}

#[test]
fn every_olric_key_is_its_cache_ha_namesake() {
    let loaded = load(&olric(
        "    environment: wan\n    peers: [\"a:3322\", \"b:3332\"]\n    replica_count: 3\n    read_quorum: 2\n    write_quorum: 3\n    member_count_quorum: 2\n    leave_timeout: 1m30s\n    dmap_name: cc-relay\n",
    ));
    let ha = &loaded.config.cache.ha;
    assert_eq!(loaded.config.cache.mode, Mode::Ha);
    assert!(ha.embedded);
    assert_eq!(ha.bind_addr, "0.0.0.0:3320");
    assert_eq!(ha.environment, Environment::Wan);
    assert_eq!(ha.peers, ["a:3320", "b:3330"]);
    assert_eq!(
        (
            ha.replica_count,
            ha.read_quorum,
            ha.write_quorum,
            ha.member_count_quorum
        ),
        (3, 2, 3, 2)
    );
    assert_eq!(ha.leave_timeout, Duration::from_secs(90));
    for key in [
        "embedded",
        "bind_addr",
        "environment",
        "peers",
        "replica_count",
        "read_quorum",
        "write_quorum",
        "member_count_quorum",
        "leave_timeout",
    ] {
        mapped(
            &loaded,
            &format!("cache.olric.{key}"),
            &format!("cache.ha.{key}"),
        );
    }
    assert!(matches!(
        ignored(&loaded, "cache.olric.dmap_name"),
        Unneeded::NoneNeeded(_)
    ));

    let client = load(
        "cache:\n  mode: ha\n  olric:\n    embedded: false\n    addresses: [\"olric-1:3320\"]\n",
    );
    assert!(!client.config.cache.ha.embedded);
    // Client addresses are members' bind ports already: no port rule.
    assert_eq!(client.config.cache.ha.addresses, ["olric-1:3320"]);
    mapped(&client, "cache.olric.addresses", "cache.ha.addresses");

    let err = error(&olric("    replica_cuont: 2\n"));
    assert!(err.contains("cache.olric.replica_cuont"), "{err}");
}

#[test]
fn leave_timeout_reads_go_durations_and_nanoseconds() {
    for (written, expected) in [
        ("5s", Duration::from_secs(5)),
        ("1.5s", Duration::from_millis(1500)),
        ("250ms", Duration::from_millis(250)),
        ("1h2m3s", Duration::from_secs(3723)),
        ("0", Duration::ZERO),
        ("5000000000", Duration::from_secs(5)),
    ] {
        let loaded = load(&olric(&format!("    leave_timeout: {written}\n")));
        assert_eq!(loaded.config.cache.ha.leave_timeout, expected, "{written}");
    }
    for bad in ["5 parsecs", "s", "-1s", "1d"] {
        let err = error(&olric(&format!("    leave_timeout: \"{bad}\"\n")));
        assert!(err.contains("cache.olric.leave_timeout"), "{bad}: {err}");
    }
}

#[test]
fn olric_keys_left_out_take_cc_relays_defaults() {
    let loaded = load("cache:\n  mode: single\n  olric:\n    bind_addr: \"0.0.0.0:3320\"\n");
    let ha = &loaded.config.cache.ha;
    assert!(!ha.embedded);
    assert_eq!(ha.environment, Environment::Local);
    assert_eq!(ha.replica_count, 1);
    assert!(loaded.notices.contains(&Notice::CcRelayDefault {
        key: "cache.ha.environment".into(),
        value: "local".into()
    }));
}

#[test]
fn the_older_olric_form_joins_bind_addr_and_bind_port() {
    let loaded = load(
        "cache:\n  enabled: true\n  backend: olric\n  olric:\n    embedded: true\n    bind_addr: \"0.0.0.0\"\n    bind_port: 3320\n    replication_mode: 1\n",
    );
    assert_eq!(loaded.config.cache.ha.bind_addr, "0.0.0.0:3320");
    for key in ["cache.enabled", "cache.backend"] {
        assert_eq!(ignored(&loaded, key), Unneeded::UseNative("cache.mode"));
    }
    assert_eq!(
        ignored(&loaded, "cache.olric.replication_mode"),
        Unneeded::UseNative("cache.ha.write_quorum")
    );
}

#[test]
fn a_peer_at_its_gossip_port_is_read_at_its_bind_port() {
    let loaded = load(&olric(
        "    peers: [\"cc-relay-2:3322\", \"10.0.0.3:3342\"]\n",
    ));
    assert_eq!(
        loaded.config.cache.ha.peers,
        ["cc-relay-2:3320", "10.0.0.3:3340"]
    );
    assert!(loaded.notices.contains(&Notice::GossipPort {
        key: "cache.olric.peers[0]".into(),
        host: "cc-relay-2".into(),
        gossip: 3322,
        bind: 3320,
    }));
    let text = loaded
        .notices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("3342") && text.contains("3340"), "{text}");
    // No port can be below 3 and still be a bind port + 2.
    let err = error(&olric("    peers: [\"a:2\"]\n"));
    assert!(err.contains("cache.olric.peers[0]"), "{err}");
    // Native peers are never rewritten.
    let native = load("cache:\n  olric: {}\n  mode: single\n");
    assert!(native.config.cache.ha.peers.is_empty());
    let native = Config::from_yaml("cache:\n  ha:\n    peers: [\"a:3322\"]\n").unwrap();
    assert_eq!(native.cache.ha.peers, ["a:3322"]);
}

#[test]
fn one_setting_in_both_spellings_is_refused_naming_both() {
    for (text, native, cc_relay) in [
        (
            "cache:\n  memory:\n    max_cost: 2097152\n  ristretto:\n    max_cost: 2097152\n",
            "cache.memory.max_cost",
            "cache.ristretto.max_cost",
        ),
        (
            "cache:\n  ha:\n    replica_count: 2\n  olric:\n    replica_count: 2\n",
            "cache.ha.replica_count",
            "cache.olric.replica_count",
        ),
        (
            "log:\n  level: info\nlogging:\n  level: info\n",
            "log.level",
            "logging.level",
        ),
        (
            "server:\n  max_inflight: 5\n  max_concurrent: 5\n",
            "server.max_inflight",
            "server.max_concurrent",
        ),
        ("upstreams: []\nproviders: []\n", "upstreams", "providers"),
        (
            "upstreams: []\nserver:\n  timeout_ms: 1000\n",
            "upstreams[].total_timeout",
            "server.timeout_ms",
        ),
    ] {
        let err = read(text, &no_env).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Conflict { native: n, cc_relay: c } if n == native && c == cc_relay),
            "{text}: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(native) && message.contains(cc_relay),
            "{message}"
        );
    }
}

#[test]
fn server_keys_map_or_are_ignored() {
    let loaded = load(
        "server:\n  listen: \":9999\"\n  max_concurrent: 7\n  timeout_ms: 90000\n  api_key: k\n  auth:\n    allow_bearer: true\n  enable_http2: true\n",
    );
    let config = &loaded.config;
    assert_eq!(config.server.listen, "0.0.0.0:9999");
    assert_eq!(config.server.max_inflight, 7);
    mapped(&loaded, "server.max_concurrent", "server.max_inflight");
    // The built-in upstreams stay, bounded by timeout_ms.
    assert_eq!(config.upstreams, {
        let mut upstreams = Config::default().upstreams;
        for upstream in &mut upstreams {
            upstream.total_timeout = Duration::from_secs(90);
            upstream.first_byte_timeout = Duration::from_secs(90);
        }
        upstreams
    });
    for key in ["server.api_key", "server.auth"] {
        assert!(
            matches!(ignored(&loaded, key), Unneeded::Unsupported(_)),
            "{key}"
        );
    }
    assert!(matches!(
        ignored(&loaded, "server.enable_http2"),
        Unneeded::NoneNeeded(_)
    ));
    let unlimited = load("server:\n  max_concurrent: 0\n  timeout_ms: 0\n");
    assert_eq!(unlimited.config.server, crate::ServerConfig::default());
    assert_eq!(unlimited.config.upstreams, Config::default().upstreams);
    ignored(&unlimited, "server.max_concurrent");
    ignored(&unlimited, "server.timeout_ms");
}

#[test]
fn logging_becomes_log() {
    let loaded = load("logging:\n  level: WARN\n  format: console\n  output: stdout\n  pretty: true\n  debug_options: {}\n");
    assert_eq!(loaded.config.log.level, "warn");
    assert_eq!(loaded.config.log.format, crate::LogFormat::Text);
    mapped(&loaded, "logging.level", "log.level");
    mapped(&loaded, "logging.format", "log.format");
    for key in ["logging.output", "logging.pretty", "logging.debug_options"] {
        ignored(&loaded, key);
    }
    let json = load("logging:\n  format: json\n");
    assert_eq!(json.config.log.format, crate::LogFormat::Json);
}

#[test]
fn the_first_enabled_anthropic_compatible_provider_is_the_upstream() {
    let loaded = load(
        "providers:\n  - {name: off, type: anthropic, enabled: false}\n  - {name: cloud, type: bedrock, enabled: true}\n  - name: glm\n    type: zai\n    enabled: true\n    base_url: \"https://api.z.ai/api/anthropic\"\n    keys: [{key: k}]\n    model_mapping: {a: b}\n  - {name: local, type: ollama, enabled: true, base_url: \"http://localhost:11434\"}\n",
    );
    let upstreams = &loaded.config.upstreams;
    assert_eq!(upstreams.len(), 1);
    assert_eq!(
        (upstreams[0].name.as_str(), upstreams[0].url.as_str()),
        ("glm", "https://api.z.ai/api/anthropic")
    );
    assert!(upstreams[0].paths.is_empty());
    assert!(matches!(
        ignored(&loaded, "providers[0]"),
        Unneeded::NoneNeeded(_)
    ));
    for key in [
        "providers[1]",
        "providers[2].keys",
        "providers[2].model_mapping",
        "providers[3]",
    ] {
        assert!(
            matches!(ignored(&loaded, key), Unneeded::Unsupported(_)),
            "{key}"
        );
    }
    let anthropic = load("providers:\n  - {name: a, type: anthropic, enabled: true}\n");
    assert_eq!(
        anthropic.config.upstreams[0].url,
        "https://api.anthropic.com"
    );
    // Without a usable provider the built-in upstreams stay.
    let none = load("providers: []\n");
    assert_eq!(none.config.upstreams, Config::default().upstreams);
}

#[test]
fn cc_relay_only_sections_are_ignored_with_a_reason() {
    let loaded = load("routing: {strategy: failover}\nhealth: {}\ngrpc: {listen: \"127.0.0.1:9090\"}\nmetrics: {enabled: true}\n");
    for key in ["routing", "health", "grpc", "metrics"] {
        ignored(&loaded, key);
    }
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn unset_variables_read_as_empty_in_a_cc_relay_file_only() {
    let text = "server:\n  auth:\n    api_key: \"${NOT_SET_ANYWHERE}\"\n";
    let loaded = load(text);
    assert!(loaded.notices.contains(&Notice::UnsetVariable {
        name: "NOT_SET_ANYWHERE".into()
    }));
    assert_eq!(
        NoticeLevel::Warn,
        Notice::UnsetVariable {
            name: String::new()
        }
        .level()
    );
    let err = error("server:\n  admin_token: \"${NOT_SET_ANYWHERE}\"\n");
    assert!(err.contains("NOT_SET_ANYWHERE"), "{err}");
}

#[test]
fn a_cluster_without_a_secret_runs_open_and_says_so() {
    let loaded = load(&olric(""));
    assert!(loaded.config.cache.ha.insecure);
    assert!(loaded.notices.contains(&Notice::OpenCluster));
    assert_eq!(Notice::OpenCluster.level(), NoticeLevel::Warn);

    let env = |name: &str| match name {
        "RELAYCACHE_PEER_TOKEN" => Some("members".to_string()),
        "RELAYCACHE_CLIENT_TOKEN" => Some("clients".to_string()),
        _ => None,
    };
    let secured = read(&olric(""), &env).unwrap();
    let ha = &secured.config.cache.ha;
    assert_eq!(
        (ha.token.as_str(), ha.client_token.as_str(), ha.insecure),
        ("members", "clients", false)
    );
    assert!(secured.notices.contains(&Notice::TokenFromEnvironment {
        key: "cache.ha.token",
        variable: "RELAYCACHE_PEER_TOKEN"
    }));
    let client = read(
        "cache:\n  mode: ha\n  olric:\n    embedded: false\n    addresses: [\"m:3320\"]\n",
        &env,
    )
    .unwrap();
    let ha = &client.config.cache.ha;
    assert_eq!(
        (ha.token.as_str(), ha.client_token.as_str()),
        ("", "clients")
    );

    // A secret written in the file is the file's choice.
    let written = load(&olric("  ha:\n    token: t\n"));
    assert!(!written.config.cache.ha.insecure);
    assert_eq!(written.config.cache.ha.token, "t");
}

#[test]
fn migrate_prints_the_native_file_with_references_kept() {
    let text = "logging:\n  level: \"${LEVEL:-debug}\"\ncache:\n  mode: ha\n  olric:\n    embedded: true\n    bind_addr: \"0.0.0.0:3320\"\n    peers: [\"${PEER_HOST}:3322\"]\n";
    let env = |name: &str| match name {
        "RELAYCACHE_PEER_TOKEN" => Some("s3cret".to_string()),
        "PEER_HOST" => Some("node-2".to_string()),
        _ => None,
    };
    let migrated = migrate(text, &env).unwrap();
    assert!(!migrated.yaml.contains("s3cret"), "{}", migrated.yaml);
    assert!(
        migrated.yaml.contains("${RELAYCACHE_PEER_TOKEN}"),
        "{}",
        migrated.yaml
    );
    assert!(
        migrated.yaml.contains("${LEVEL:-debug}"),
        "{}",
        migrated.yaml
    );
    assert!(
        migrated.yaml.contains("${PEER_HOST:-}:3320"),
        "{}",
        migrated.yaml
    );
    let again = read(&migrated.yaml, &env).unwrap();
    assert_eq!(again.dialect, Dialect::Native);
    assert_eq!(again.config, read(text, &env).unwrap().config);

    let native = migrate("cache:\n  ttl: 2h\n", &no_env).unwrap();
    assert_eq!(native.notices, [Notice::AlreadyNative]);
    assert_eq!(
        Config::from_yaml(&native.yaml).unwrap().cache.ttl,
        Duration::from_secs(7200)
    );
}

#[test]
fn empty_when_unset_leaves_fallbacks_and_escapes_alone() {
    assert_eq!(
        empty_when_unset("a: ${A}\nb: ${B:-x}\nc: $${C}\nd: $5 ${"),
        "a: ${A:-}\nb: ${B:-x}\nc: $${C}\nd: $5 ${"
    );
}
