use super::*;

#[test]
fn commented_default_is_the_builtin_default() {
    let parsed = Config::from_yaml(DEFAULT_CONFIG_YAML).unwrap();
    assert_eq!(parsed, Config::default());
}

#[test]
fn empty_file_means_defaults() {
    assert_eq!(Config::from_yaml("").unwrap(), Config::default());
}

#[test]
fn serialized_config_round_trips() {
    let mut config = Config::default();
    config.cache.isolation = Isolation::Header("x-team".into());
    let again = Config::parse_expanded(&config.try_to_yaml().unwrap()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn type_errors_name_the_key_path() {
    let err = Config::from_yaml("cache:\n  memory:\n    max_cost: lots\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cache.memory.max_cost:"), "{text}");

    let err = Config::from_yaml("upstreams:\n  - name: a\n    url: http://x\n    timeout: 3s\n")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("upstreams[0]") && text.contains("timeout"),
        "{text}"
    );
}

#[test]
fn replay_reads_off_strict_and_yaml_1_1_false() {
    for (text, replay) in [
        ("off", Replay::Off),
        ("\"off\"", Replay::Off),
        ("false", Replay::Off),
        ("strict", Replay::Strict),
    ] {
        let config = Config::from_yaml(&format!("cache:\n  replay: {text}\n")).unwrap();
        assert_eq!(config.cache.replay, replay, "{text}");
    }
    for text in ["true", "sometimes"] {
        let err = Config::from_yaml(&format!("cache:\n  replay: {text}\n")).unwrap_err();
        assert!(err.to_string().contains("cache.replay"), "{err}");
    }
}

#[test]
fn isolation_forms() {
    let config = Config::from_yaml("cache:\n  isolation: header:X-Team\n").unwrap();
    assert_eq!(config.cache.isolation, Isolation::Header("x-team".into()));
    let err = Config::from_yaml("cache:\n  isolation: everyone\n").unwrap_err();
    assert!(err.to_string().contains("cache.isolation"), "{err}");
}

#[test]
fn compression_reads_its_codec_and_refuses_levels_zstd_does_not_have() {
    let config =
        Config::from_yaml("cache:\n  compression:\n    codec: none\n    level: 19\n").unwrap();
    assert_eq!(config.cache.compression.codec, Codec::None);
    assert_eq!(config.cache.compression.level, 19);
    assert_eq!(Config::default().cache.compression.codec, Codec::Zstd);
    for level in ["0", "20", "-5"] {
        let err = Config::from_yaml(&format!("cache:\n  compression:\n    level: {level}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cache.compression.level") && err.contains("between 1"),
            "{level}: {err}"
        );
    }
    let err = Config::from_yaml("cache:\n  compression:\n    codec: gzip\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache.compression.codec"), "{err}");
}
