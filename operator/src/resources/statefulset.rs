//! The StatefulSet of members.
//!
//! `podManagementPolicy: Parallel`: members find each other through the peer
//! list and the headless Service, and a member may wait for
//! `memberCountQuorum` peers before it reports ready. With `OrderedReady`
//! member 1 would not be created until member 0 is ready, which can never
//! happen when the quorum is above 1. Rolling updates stay one member at a
//! time (the RollingUpdate strategy does not depend on this policy), and the
//! PodDisruptionBudget keeps drains to one member at a time too.
//!
//! Shutdown of a member: the `preStop` sleep lets the endpoints controller
//! take the pod out of both Services before the proxy gets SIGTERM; the proxy
//! then drains in-flight requests and hands its entries off to the remaining
//! owners (leave), within `terminationGracePeriodSeconds`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, SleepAction, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{Rendered, DRAIN_SECONDS};
use super::quantity::format_bytes;
use super::{
    tokens, BuildSettings, Names, ADMIN_PORT, CONFIG_DIR, CONFIG_HASH_ANNOTATION, CONFIG_KEY,
    GRPC_PORT, HTTP_PORT,
};
use crate::crd::{ClusterMode, RelayCache, SchedulingSpec};

/// Name of the proxy container.
pub const CONTAINER: &str = "relaycache";
/// Seconds between the pod leaving the Services and SIGTERM.
pub const PRE_STOP_SECONDS: i64 = 5;
/// Slack on top of the drain and the leave, so the kubelet's SIGKILL never
/// cuts a handoff that is about to finish.
pub const SHUTDOWN_MARGIN_SECONDS: i64 = 5;
/// UID and GID the proxy runs as (no root, matches distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Volume name of the reserve tier (`file://` URLs).
const RESERVE_VOLUME: &str = "reserve";

/// The StatefulSet `NAME`.
pub fn stateful_set(
    rc: &RelayCache,
    names: &Names,
    owner: &OwnerReference,
    settings: &BuildSettings,
    rendered: &Rendered,
) -> StatefulSet {
    let spec = &rc.spec;
    let leave = rendered.config.cache.ha.leave_timeout.as_secs_f64().ceil() as i64;
    let grace = PRE_STOP_SECONDS + DRAIN_SECONDS as i64 + leave + SHUTDOWN_MARGIN_SECONDS;

    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // readOnlyRootFilesystem: anything the proxy writes goes here.
        empty_dir("tmp"),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("tmp", "/tmp", false),
    ];
    let mut claims = Vec::new();
    if let Some(path) = spec
        .reserve
        .as_ref()
        .and_then(|r| r.url.strip_prefix("file://"))
    {
        mounts.push(mount(RESERVE_VOLUME, path, false));
        let reserve = spec.reserve.as_ref();
        match reserve.and_then(|r| r.storage.clone()) {
            Some(size) => claims.push(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(RESERVE_VOLUME.into()),
                    labels: Some(names.selector_labels()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: reserve.and_then(|r| r.storage_class_name.clone()),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }),
            None => volumes.push(empty_dir(RESERVE_VOLUME)),
        }
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["relaycache".into()]),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![
            container_port("http", HTTP_PORT),
            container_port("admin", ADMIN_PORT),
            container_port("grpc", GRPC_PORT),
        ]),
        env: Some(env(rc, names)),
        env_from: spec
            .reserve
            .as_ref()
            .and_then(|r| r.credentials_secret.as_ref())
            .map(|secret| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: secret.name.clone(),
                        optional: Some(false),
                    }),
                    ..EnvFromSource::default()
                }]
            }),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| default_resources(rendered.config.cache.memory.max_cost)),
        ),
        startup_probe: Some(Probe {
            // Up to a minute to load and join the cluster before liveness counts.
            failure_threshold: Some(30),
            period_seconds: Some(2),
            ..http_probe("/healthz")
        }),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..http_probe("/healthz")
        }),
        readiness_probe: Some(Probe {
            period_seconds: Some(5),
            failure_threshold: Some(2),
            ..http_probe("/readyz")
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                // The kubelet sleeps; the image needs no shell.
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(restricted_security_context(Some(RUN_AS))),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let scheduling = &spec.scheduling;
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        // The proxy never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(grace),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        affinity: scheduling.affinity.clone(),
        topology_spread_constraints: spread(scheduling, names),
        priority_class_name: scheduling.priority_class_name.clone(),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: names.child_meta(names.name.clone(), owner),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.peers_service()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    ..RollingUpdateStatefulSetStrategy::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.labels()),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        rendered.hash.clone(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: (!claims.is_empty()).then_some(claims),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// What a claim template asks for, in the terms that matter: the apiserver
/// stores a template with defaults filled in (`volumeMode`, an empty
/// status) and quantities in canonical form (`2048Mi` becomes `2Gi`), so the
/// templates are compared on these fields only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimShape {
    name: String,
    access_modes: Vec<String>,
    storage_class: Option<String>,
    /// Bytes when the quantity parses, else its text.
    storage: Result<u64, String>,
}

impl ClaimShape {
    fn of(claim: &PersistentVolumeClaim) -> Self {
        let spec = claim.spec.clone().unwrap_or_default();
        let mut access_modes = spec.access_modes.unwrap_or_default();
        access_modes.sort();
        let storage = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|requests| requests.get("storage").cloned())
            .map(|q| super::quantity::bytes(&q.0, "storage").map_err(|_| q.0))
            .unwrap_or(Ok(0));
        Self {
            name: claim.metadata.name.clone().unwrap_or_default(),
            access_modes,
            storage_class: spec.storage_class_name,
            storage,
        }
    }

    fn describe(&self) -> String {
        let size = match &self.storage {
            Ok(bytes) => format_bytes(*bytes),
            Err(text) => text.clone(),
        };
        let class = self
            .storage_class
            .as_deref()
            .unwrap_or("the cluster default");
        format!("{} of {size} (storageClassName: {class})", self.name)
    }
}

fn claim_shapes(sts: &StatefulSet) -> Vec<ClaimShape> {
    let mut shapes: Vec<ClaimShape> = sts
        .spec
        .volume_claim_templates
        .as_ref()
        .map(|claims| claims.iter().map(ClaimShape::of).collect())
        .unwrap_or_default();
    shapes.sort_by(|a, b| a.name.cmp(&b.name));
    shapes
}

fn describe_claims(shapes: &[ClaimShape]) -> String {
    if shapes.is_empty() {
        "no volume claim".into()
    } else {
        shapes
            .iter()
            .map(ClaimShape::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why `desired` cannot be applied over `existing`: a StatefulSet's
/// `volumeClaimTemplates` are immutable, so a changed reserve size or
/// StorageClass (or a file reserve with storage added or removed later)
/// would be refused on every apply. `None` when they agree.
pub fn claim_templates_change(
    existing: &StatefulSet,
    desired: &StatefulSet,
    names: &Names,
) -> Option<String> {
    let have = claim_shapes(existing);
    let want = claim_shapes(desired);
    (have != want).then(|| {
        format!(
            "spec.reserve asks for {} but StatefulSet {ns}/{name} has {}, and a StatefulSet's volumeClaimTemplates cannot change; \
             the StatefulSet and the ConfigMap are left as they were until this is resolved. \
             Either revert spec.reserve (storage, storageClassName, url), or let the operator recreate the StatefulSet \
             without stopping the members: kubectl delete statefulset {name} -n {ns} --cascade=orphan \
             (existing claims keep their size and class; resize each PersistentVolumeClaim if its StorageClass allows expansion)",
            describe_claims(&want),
            describe_claims(&have),
            ns = names.namespace,
            name = names.name,
        )
    })
}

fn env(rc: &RelayCache, names: &Names) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    // Only a cluster's members read tokens; single and disabled members
    // start without the Secrets.
    if rc.spec.mode == ClusterMode::Ha {
        env.extend(
            tokens::token_secrets(rc, names)
                .iter()
                .map(|secret| tokens::token_env(secret.role, &secret.name)),
        );
    }
    env
}

/// The restricted Pod Security profile for one container; `run_as` None
/// leaves the user to the pod (which must then be non-root).
pub(crate) fn restricted_security_context(run_as: Option<i64>) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: run_as,
        run_as_group: run_as,
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// Without explicit resources: 100m CPU, and memory for the cache tier plus
/// half again (entry overhead, buffers) plus 64 MiB for the process, as both
/// request and limit so members are not the first evicted.
fn default_resources(max_cost: u64) -> ResourceRequirements {
    sized_resources("100m", max_cost, 64)
}

/// A CPU request, and memory for a cache of `cache_bytes` plus half again
/// plus `process_mib` as both request and limit.
pub(crate) fn sized_resources(
    cpu: &str,
    cache_bytes: u64,
    process_mib: u64,
) -> ResourceRequirements {
    const MIB: u64 = 1 << 20;
    let memory = (cache_bytes + cache_bytes / 2 + process_mib * MIB).div_ceil(MIB) * MIB;
    let memory = Quantity(format_bytes(memory));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), memory)])),
        ..ResourceRequirements::default()
    }
}

/// Members prefer distinct nodes unless the user placed them; a user's
/// constraint without a selector is taken to mean this RelayCache's members.
fn spread(scheduling: &SchedulingSpec, names: &Names) -> Option<Vec<TopologySpreadConstraint>> {
    let own = LabelSelector {
        match_labels: Some(names.selector_labels()),
        ..LabelSelector::default()
    };
    if scheduling.topology_spread_constraints.is_empty() {
        if scheduling.affinity.is_some() {
            return None;
        }
        return Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(own),
            ..TopologySpreadConstraint::default()
        }]);
    }
    let constraints = scheduling
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut c| {
            c.label_selector.get_or_insert_with(|| own.clone());
            c
        })
        .collect();
    Some(constraints)
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

#[cfg(test)]
mod tests {
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
        let moved = build(json!({"reserve": {"url": "file:///data", "storage": "1Gi", "storageClassName": "fast"}})).0;
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
}
