use super::overrides::is_cpu_quantity;
use super::sidecar::kubelet_literal;
use super::*;

#[test]
fn native_sidecars_from_1_29_including_managed_minors() {
    let info = |major: &str, minor: &str| Info {
        major: major.into(),
        minor: minor.into(),
        ..Info::default()
    };
    assert!(!supports_native_sidecars(&info("1", "28")));
    assert!(!supports_native_sidecars(&info("1", "28+")));
    assert!(supports_native_sidecars(&info("1", "29")));
    assert!(supports_native_sidecars(&info("1", "30+")));
    assert!(supports_native_sidecars(&info("2", "0")));
    assert!(!supports_native_sidecars(&info("", "")));
}

#[test]
fn the_native_sidecars_setting_overrides_the_version() {
    let old = Info {
        major: "1".into(),
        minor: "27".into(),
        ..Info::default()
    };
    let new = Info {
        minor: "31".into(),
        ..old.clone()
    };
    assert!(!native_sidecars_for(NativeSidecars::Auto, Some(&old)));
    assert!(native_sidecars_for(NativeSidecars::Auto, Some(&new)));
    assert!(!native_sidecars_for(NativeSidecars::Auto, None));
    assert!(native_sidecars_for(NativeSidecars::Always, Some(&old)));
    assert!(native_sidecars_for(NativeSidecars::Always, None));
    assert!(!native_sidecars_for(NativeSidecars::Never, Some(&new)));
}

#[test]
fn labels_name_a_relaycache_here_or_in_another_namespace() {
    assert_eq!(
        parse_label("web", "apps").unwrap(),
        ("apps".to_string(), "web".to_string())
    );
    assert_eq!(
        parse_label("cache.web", "apps").unwrap(),
        ("cache".to_string(), "web".to_string())
    );
    assert_eq!(
        parse_label("cache.web.v2", "apps").unwrap(),
        ("cache".to_string(), "web.v2".to_string())
    );
    for bad in ["", ".web", "cache.", "Web", "a_b"] {
        let err = parse_label(bad, "apps").unwrap_err();
        assert!(err.contains("NAME or NAMESPACE.NAME"), "{bad}: {err}");
    }
}

#[test]
fn cpu_quantities() {
    for good in ["100m", "0.5", "2", "1.25", "250m"] {
        assert!(is_cpu_quantity(good), "{good}");
    }
    for bad in ["", "m", "0", "0m", "-1", "1.5m", "1e3", "one", "1Gi"] {
        assert!(!is_cpu_quantity(bad), "{bad}");
    }
}

#[test]
fn dollars_survive_the_kubelet() {
    // The kubelet's rule: `$$` becomes `$`, everything else stays.
    let kubelet = |s: &str| s.replace("$$", "\u{0}").replace('\u{0}', "$");
    for text in [
        "client_token: ${RELAYCACHE_CLIENT_TOKEN}",
        "a $$ b $(X) c",
        "plain",
    ] {
        assert_eq!(kubelet(&kubelet_literal(text)), text);
    }
}

#[test]
fn single_and_disabled_relaycaches_give_a_standalone_sidecar() {
    use crate::resources::testing::rc;
    for (mode, expected) in [
        ("single", relaycache_config::Mode::Single),
        ("disabled", relaycache_config::Mode::Disabled),
    ] {
        let config = sidecar_config(&rc("web", serde_json::json!({"mode": mode}))).unwrap();
        assert_eq!(config.cache.mode, expected);
        assert!(config.cache.ha.addresses.is_empty(), "{mode}");
        assert_eq!(config.server.listen, "127.0.0.1:8787");
    }
}

#[test]
fn sidecars_serve_stale_within_the_relaycaches_window() {
    // A client serves stale answers from its own memory and from the
    // members, so it takes the RelayCache's window as the members do.
    use crate::resources::testing::rc;
    use std::time::Duration;
    for mode in ["ha", "single"] {
        let spec = serde_json::json!({"mode": mode, "cache": {"staleIfError": "15m"}});
        let config = sidecar_config(&rc("web", spec)).unwrap();
        assert_eq!(
            config.cache.stale_if_error,
            Duration::from_secs(900),
            "{mode}"
        );
    }
    let off = sidecar_config(&rc("web", serde_json::json!({}))).unwrap();
    assert_eq!(off.cache.stale_if_error, Duration::ZERO);
    // A bad window leaves the pod without a sidecar, naming the field.
    let err = sidecar_config(&rc(
        "web",
        serde_json::json!({"cache": {"staleIfError": "soon"}}),
    ))
    .unwrap_err();
    assert_eq!(err.0[0].path, "spec.cache.staleIfError");
}

#[test]
fn an_invalid_sidecar_memory_is_reported_at_its_path() {
    use crate::resources::testing::rc;
    let err = sidecar_config(&rc(
        "web",
        serde_json::json!({"sidecar": {"memory": "lots"}}),
    ))
    .unwrap_err();
    assert_eq!(err.0[0].path, "spec.sidecar.memory");
    // Too small for the proxy's own rules: reported as a sidecar config issue.
    let err = sidecar_config(&rc(
        "web",
        serde_json::json!({"sidecar": {"memory": "1Ki"}}),
    ));
    assert!(
        err.as_ref()
            .is_err_and(|e| e.0.iter().all(|i| i.path.starts_with("sidecar config"))),
        "{err:?}"
    );
}

#[test]
fn refusals_name_the_annotation_the_value_and_a_good_value() {
    let pod = |annotation: &str, value: &str| Pod {
        metadata: kube::core::ObjectMeta {
            annotations: Some(BTreeMap::from([(annotation.into(), value.into())])),
            ..Default::default()
        },
        ..Pod::default()
    };
    for (annotation, bad, good) in [
        (CPU_ANNOTATION, "1.5m", "100m"),
        (MEMORY_ANNOTATION, "lots", "128Mi"),
        (IMAGE_ANNOTATION, " ", "relaycache/relaycache:0.1.0"),
    ] {
        let err = Overrides::of(&pod(annotation, bad)).unwrap_err();
        let shown = bad.trim();
        assert!(err.contains(&format!("{annotation}={shown:?}")), "{err}");
        assert!(err.contains(&format!("{annotation}: \"{good}\"")), "{err}");
        // The example really is accepted.
        assert!(Overrides::of(&pod(annotation, good)).is_ok(), "{good}");
    }
    // A huge value is cut, so the event stays readable.
    let err = Overrides::of(&pod(CPU_ANNOTATION, &"9x".repeat(5000))).unwrap_err();
    assert!(err.len() < 400, "{} chars", err.len());
    assert!(err.contains("9x9x...\""), "{err}");
}

#[test]
fn the_sidecar_holds_the_clients_token_and_never_the_members() {
    use crate::resources::testing::rc;
    for spec in [
        serde_json::json!({}),
        serde_json::json!({"replication": {"tokenSecret": {"name": "t"}}}),
    ] {
        let config = sidecar_config(&rc("web", spec.clone())).unwrap();
        let ha = &config.cache.ha;
        assert!(!ha.embedded, "{spec}");
        assert_eq!(ha.token, "", "{spec}: the members' token");
        assert_eq!(config.server.admin_token, "", "{spec}: purge stays off");
        assert_eq!(ha.client_token, "${RELAYCACHE_CLIENT_TOKEN}", "{spec}");
    }
}

#[test]
fn pointer_tokens_are_escaped() {
    assert_eq!(escape("relaycache.io/injected"), "relaycache.io~1injected");
    assert_eq!(escape("a~b"), "a~0b");
}
