use super::*;
use crate::resources::configmap::render;
use crate::resources::testing::*;
use serde_json::json;

fn build(spec: serde_json::Value) -> (StatefulSet, Rendered) {
    let rc = rc("web", spec);
    let names = Names::of(&rc).unwrap();
    let rendered = render(&rc, &names).unwrap();
    let sts = stateful_set(&rc, &names, &owner(&rc), &settings(), &rendered);
    (sts, rendered)
}

fn pod(sts: &StatefulSet) -> &PodSpec {
    sts.spec.template.spec.as_ref().unwrap()
}

#[test]
fn members_are_named_by_the_peers_service_and_carry_the_config_hash() {
    let (sts, rendered) = build(json!({"replicas": 4}));
    let spec = &sts.spec;
    assert_eq!(sts.metadata.name.as_deref(), Some("web"));
    assert_eq!(spec.replicas, Some(4));
    assert_eq!(spec.service_name.as_deref(), Some("web-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let names = Names::of(&rc("web", json!({}))).unwrap();
    assert_eq!(spec.selector.match_labels, Some(names.selector_labels()));
    let meta = spec.template.metadata.as_ref().unwrap();
    assert_eq!(meta.labels, Some(names.labels()));
    assert_eq!(
        meta.annotations
            .as_ref()
            .unwrap()
            .get("relaycache.io/config-hash"),
        Some(&rendered.hash)
    );
}

#[test]
fn the_container_runs_the_proxy_on_http_8787_admin_9787_grpc_3320() {
    let (sts, _) = build(json!({}));
    let c = &pod(&sts).containers[0];
    assert_eq!(c.name, "relaycache");
    assert_eq!(c.image.as_deref(), Some("relaycache/relaycache:0.1.0"));
    assert_eq!(c.command, Some(vec!["relaycache".to_string()]));
    assert_eq!(
        c.args,
        Some(vec![
            "serve".to_string(),
            "--config".into(),
            "/etc/relaycache/relaycache.yaml".into()
        ])
    );
    let ports: Vec<(String, i32)> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http".to_string(), 8787),
            ("admin".to_string(), 9787),
            ("grpc".to_string(), 3320)
        ]
    );
    let env: Vec<(&str, &str)> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| {
            let from = e.value_from.as_ref().unwrap();
            let source = match (&from.field_ref, &from.secret_key_ref) {
                (Some(field), _) => field.field_path.as_str(),
                (_, Some(secret)) => secret.name.as_str(),
                _ => panic!("{e:?}"),
            };
            (e.name.as_str(), source)
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("RELAYCACHE_PEER_TOKEN", "web-member-token"),
            ("RELAYCACHE_CLIENT_TOKEN", "web-client-token")
        ]
    );
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [("config", "/etc/relaycache"), ("tmp", "/tmp")]);
    let config_volume = &pod(&sts).volumes.as_ref().unwrap()[0];
    assert_eq!(config_volume.config_map.as_ref().unwrap().name, "web");
}

#[test]
fn probes_use_the_admin_port() {
    let (sts, _) = build(json!({}));
    let c = &pod(&sts).containers[0];
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("admin".into()));
    }
}

#[test]
fn grace_period_covers_pre_stop_drain_and_leave() {
    let (sts, _) = build(json!({"replication": {"leaveTimeout": "30s"}}));
    let p = pod(&sts);
    assert_eq!(p.termination_grace_period_seconds, Some(5 + 20 + 30 + 5));
    let pre_stop = p.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap();
    assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, PRE_STOP_SECONDS);

    let (default, _) = build(json!({}));
    assert_eq!(
        pod(&default).termination_grace_period_seconds,
        Some(5 + 20 + 5 + 5)
    );
}

#[test]
fn every_container_meets_the_restricted_profile() {
    let (sts, _) = build(json!({}));
    let p = pod(&sts);
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    for c in &p.containers {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    }
    assert_eq!(p.automount_service_account_token, Some(false));
}

#[test]
fn default_resources_follow_the_memory_tier_and_explicit_ones_win() {
    let (sts, _) = build(json!({"cache": {"memory": "200Mi"}}));
    let r = pod(&sts).containers[0].resources.as_ref().unwrap();
    // 200Mi + 100Mi overhead + 64Mi process.
    assert_eq!(
        r.limits.as_ref().unwrap().get("memory"),
        Some(&Quantity("364Mi".into()))
    );
    assert_eq!(
        r.requests.as_ref().unwrap().get("cpu"),
        Some(&Quantity("100m".into()))
    );

    let (sts, _) = build(json!({"resources": {"limits": {"memory": "1Gi", "cpu": "2"}}}));
    let r = pod(&sts).containers[0].resources.as_ref().unwrap();
    assert_eq!(r.requests, None);
    assert_eq!(
        r.limits.as_ref().unwrap().get("cpu"),
        Some(&Quantity("2".into()))
    );
}

#[test]
fn image_and_pull_settings_come_from_the_spec() {
    let (sts, _) = build(json!({
        "image": "registry.example/relaycache:9",
        "imagePullPolicy": "Always",
        "imagePullSecrets": [{"name": "pull"}]
    }));
    let p = pod(&sts);
    assert_eq!(
        p.containers[0].image.as_deref(),
        Some("registry.example/relaycache:9")
    );
    assert_eq!(p.containers[0].image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(p.image_pull_secrets.as_ref().unwrap()[0].name, "pull");
}

/// The `secretKeyRef` (name, key, optional) behind env var `name`; the
/// variable never carries a value of its own.
fn secret_env(sts: &StatefulSet, name: &str) -> Option<(String, String, Option<bool>)> {
    let var = pod(sts).containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?;
    assert!(var.value.is_none(), "{name} is a literal in the pod spec");
    let key = var.value_from.as_ref()?.secret_key_ref.as_ref()?;
    Some((key.name.clone(), key.key.clone(), key.optional))
}

#[test]
fn members_read_the_generated_tokens_from_the_operators_secrets() {
    let (sts, _) = build(json!({}));
    assert_eq!(
        secret_env(&sts, "RELAYCACHE_PEER_TOKEN"),
        Some(("web-member-token".into(), "token".into(), Some(false)))
    );
    assert_eq!(
        secret_env(&sts, "RELAYCACHE_CLIENT_TOKEN"),
        Some(("web-client-token".into(), "token".into(), Some(false)))
    );
    // Secrets the spec names replace the generated ones.
    let (sts, _) = build(json!({"replication": {
        "tokenSecret": {"name": "my-members"},
        "clientTokenSecret": {"name": "my-clients"}
    }}));
    assert_eq!(
        secret_env(&sts, "RELAYCACHE_PEER_TOKEN").map(|s| s.0),
        Some("my-members".into())
    );
    assert_eq!(
        secret_env(&sts, "RELAYCACHE_CLIENT_TOKEN").map(|s| s.0),
        Some("my-clients".into())
    );
}

#[test]
fn peer_token_and_reserve_credentials_come_from_secrets() {
    let (sts, _) = build(json!({
        "replication": {"tokenSecret": {"name": "peer-token"}},
        "reserve": {"url": "s3://bucket/x", "credentialsSecret": {"name": "s3-creds"}}
    }));
    let c = &pod(&sts).containers[0];
    let token = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "RELAYCACHE_PEER_TOKEN")
        .unwrap();
    let key = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("peer-token", "token")
    );
    let from = c.env_from.as_ref().unwrap();
    assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "s3-creds");
    assert!(sts.spec.volume_claim_templates.is_none());
}

#[test]
fn file_reserve_gets_a_volume_claim_or_an_empty_dir() {
    let (sts, _) = build(json!({"reserve": {
        "url": "file:///var/lib/relaycache/reserve", "storage": "10Gi", "storageClassName": "fast"
    }}));
    let spec = &sts.spec;
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("reserve"));
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()
            .get("storage"),
        Some(&Quantity("10Gi".into()))
    );
    let mounts = pod(&sts).containers[0].volume_mounts.as_ref().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m.name == "reserve" && m.mount_path == "/var/lib/relaycache/reserve"));

    let (sts, _) = build(json!({"reserve": {"url": "file:///data"}}));
    assert!(sts.spec.volume_claim_templates.is_none());
    let volumes = pod(&sts).volumes.as_ref().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v.name == "reserve" && v.empty_dir.is_some()));
}

#[test]
fn changed_claim_templates_are_detected_with_what_to_do() {
    let names = Names::of(&rc("web", json!({}))).unwrap();
    let file = |storage: &str, class: Option<&str>| {
        build(json!({"reserve": {
            "url": "file:///var/lib/relaycache/reserve", "storage": storage, "storageClassName": class
        }}))
        .0
    };
    let (no_claims, _) = build(json!({}));
    let stored = |mut sts: StatefulSet| {
        // As the apiserver returns it: defaults filled in, quantities canonical.
        for claim in sts.spec.volume_claim_templates.iter_mut().flatten() {
            let spec = claim.spec.as_mut().unwrap();
            spec.volume_mode = Some("Filesystem".into());
            if let Some(requests) = spec.resources.as_mut().unwrap().requests.as_mut() {
                requests.insert("storage".into(), Quantity("1Gi".into()));
            }
        }
        sts
    };
    let existing = stored(file("1024Mi", Some("fast")));

    // Same claims, written differently: no change.
    assert_eq!(
        claim_templates_change(&existing, &file("1Gi", Some("fast")), &names),
        None
    );
    assert_eq!(
        claim_templates_change(&no_claims, &build(json!({})).0, &names),
        None
    );
    // A different mount path keeps the claim: allowed.
    let moved = build(
        json!({"reserve": {"url": "file:///data", "storage": "1Gi", "storageClassName": "fast"}}),
    )
    .0;
    assert_eq!(claim_templates_change(&existing, &moved, &names), None);

    let bigger = claim_templates_change(&existing, &file("2Gi", Some("fast")), &names).unwrap();
    assert!(
        bigger.contains("asks for reserve of 2Gi (storageClassName: fast)"),
        "{bigger}"
    );
    assert!(
        bigger.contains("StatefulSet cache/web has reserve of 1Gi (storageClassName: fast)"),
        "{bigger}"
    );
    assert!(
        bigger.contains("kubectl delete statefulset web -n cache --cascade=orphan"),
        "{bigger}"
    );
    assert!(bigger.contains("revert spec.reserve"), "{bigger}");
    let reclassed = claim_templates_change(&existing, &file("1Gi", None), &names).unwrap();
    assert!(
        reclassed.contains("storageClassName: the cluster default"),
        "{reclassed}"
    );
    let added = claim_templates_change(&no_claims, &file("1Gi", None), &names).unwrap();
    assert!(added.contains("has no volume claim"), "{added}");
    assert!(claim_templates_change(&existing, &no_claims, &names).is_some());
}

#[test]
fn scheduling_is_passed_through_and_spread_defaults_to_hostnames() {
    let (sts, _) = build(json!({}));
    let spread = pod(&sts).topology_spread_constraints.as_ref().unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");

    let (sts, _) = build(json!({"scheduling": {
        "nodeSelector": {"pool": "cache"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "cache", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}],
        "priorityClassName": "high"
    }}));
    let p = pod(&sts);
    assert_eq!(
        p.node_selector
            .as_ref()
            .unwrap()
            .get("pool")
            .map(String::as_str),
        Some("cache")
    );
    assert_eq!(
        p.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
    let spread = p.topology_spread_constraints.as_ref().unwrap();
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    let names = Names::of(&rc("web", json!({}))).unwrap();
    assert_eq!(
        spread[0].label_selector.as_ref().unwrap().match_labels,
        Some(names.selector_labels()),
        "a constraint without selector selects this RelayCache"
    );

    let (sts, _) = build(json!({"scheduling": {"affinity": {"nodeAffinity": {}}}}));
    assert!(pod(&sts).affinity.is_some());
    assert_eq!(pod(&sts).topology_spread_constraints, None);
}
