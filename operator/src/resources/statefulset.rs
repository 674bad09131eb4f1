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
    ConfigMapVolumeSource, Container, EnvFromSource, EnvVar, EnvVarSource, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SecretEnvSource,
    SleepAction, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{Rendered, DRAIN_SECONDS};
use super::pod::{
    container_port, empty_dir, http_probe, liveness_probe, mount, restricted_security_context,
    runtime_default, sized_resources, CONTAINER, RUN_AS,
};
use super::quantity::format_bytes;
use super::{
    tokens, BuildSettings, Names, ADMIN_PORT, CONFIG_DIR, CONFIG_HASH_ANNOTATION, CONFIG_KEY,
    GRPC_PORT, HTTP_PORT,
};
use crate::crd::{ClusterMode, RelayCache, ReserveSpec, SchedulingSpec};

/// Seconds between the pod leaving the Services and SIGTERM.
pub const PRE_STOP_SECONDS: i64 = 5;
/// Slack on top of the drain and the leave, so the kubelet's SIGKILL never
/// cuts a handoff that is about to finish.
pub const SHUTDOWN_MARGIN_SECONDS: i64 = 5;
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
    let storage = Storage::of(rc, names);
    let container = member_container(rc, names, settings, rendered, storage.mounts);
    let pod = pod_spec(
        rc,
        names,
        container,
        storage.volumes,
        grace_period(rendered),
    );
    StatefulSet {
        metadata: names.child_meta(names.name.clone(), owner),
        spec: StatefulSetSpec {
            replicas: Some(rc.spec.replicas),
            service_name: Some(names.peers_service()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            },
            update_strategy: Some(one_at_a_time()),
            template: PodTemplateSpec {
                metadata: Some(template_meta(names, rendered)),
                spec: Some(pod),
            },
            volume_claim_templates: (!storage.claims.is_empty()).then_some(storage.claims),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// Seconds the kubelet gives a member to stop: the `preStop` sleep, the
/// drain, the leave (`replication.leaveTimeout`) and a margin.
fn grace_period(rendered: &Rendered) -> i64 {
    let leave = rendered.config.cache.ha.leave_timeout.as_secs_f64().ceil() as i64;
    PRE_STOP_SECONDS + DRAIN_SECONDS as i64 + leave + SHUTDOWN_MARGIN_SECONDS
}

/// Rolling updates, one member at a time, every member included.
fn one_at_a_time() -> StatefulSetUpdateStrategy {
    StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateStatefulSetStrategy {
            partition: Some(0),
            ..RollingUpdateStatefulSetStrategy::default()
        }),
    }
}

/// The pod template's labels, and the config hash that rolls the members
/// when the configuration changes.
fn template_meta(names: &Names, rendered: &Rendered) -> ObjectMeta {
    ObjectMeta {
        labels: Some(names.labels()),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_string(),
            rendered.hash.clone(),
        )])),
        ..ObjectMeta::default()
    }
}

/// Where a member keeps its files: the configuration, `/tmp`, and a
/// `file://` reserve on a claim per member or an emptyDir.
struct Storage {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    claims: Vec<PersistentVolumeClaim>,
}

impl Storage {
    fn of(rc: &RelayCache, names: &Names) -> Self {
        let mut storage = Storage {
            volumes: vec![
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
            ],
            mounts: vec![
                mount("config", CONFIG_DIR, true),
                mount("tmp", "/tmp", false),
            ],
            claims: Vec::new(),
        };
        let reserve = rc.spec.reserve.as_ref();
        if let Some((reserve, path)) =
            reserve.and_then(|r| r.url.strip_prefix("file://").map(|path| (r, path)))
        {
            storage.mounts.push(mount(RESERVE_VOLUME, path, false));
            match reserve.storage.clone() {
                Some(size) => storage.claims.push(reserve_claim(names, reserve, size)),
                None => storage.volumes.push(empty_dir(RESERVE_VOLUME)),
            }
        }
        storage
    }
}

/// The claim template of a `file://` reserve with `storage` set.
fn reserve_claim(names: &Names, reserve: &ReserveSpec, size: Quantity) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(RESERVE_VOLUME.into()),
            labels: Some(names.selector_labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: reserve.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The proxy container of a member: the image, the config file, the three
/// ports, environment and Secrets, sizing, probes and the `preStop` sleep.
fn member_container(
    rc: &RelayCache,
    names: &Names,
    settings: &BuildSettings,
    rendered: &Rendered,
    mounts: Vec<VolumeMount>,
) -> Container {
    let spec = &rc.spec;
    let admin = || IntOrString::String("admin".into());
    Container {
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
        env_from: reserve_credentials(rc),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| default_resources(rendered.config.cache.memory.max_cost)),
        ),
        // Up to a minute to load and join the cluster before liveness counts.
        startup_probe: Some(http_probe("/healthz", admin(), 2, 30)),
        liveness_probe: Some(liveness_probe(admin())),
        readiness_probe: Some(http_probe("/readyz", admin(), 5, 2)),
        lifecycle: Some(pre_stop_sleep()),
        security_context: Some(restricted_security_context(Some(RUN_AS))),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The reserve's `credentialsSecret`, every key an environment variable.
fn reserve_credentials(rc: &RelayCache) -> Option<Vec<EnvFromSource>> {
    let secret = rc.spec.reserve.as_ref()?.credentials_secret.as_ref()?;
    Some(vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret.name.clone(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }])
}

/// Before SIGTERM, the member sleeps while the endpoints controller takes
/// it out of both Services.
fn pre_stop_sleep() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            // The kubelet sleeps; the image needs no shell.
            sleep: Some(SleepAction {
                seconds: PRE_STOP_SECONDS,
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The member pod around `container`: no API token, the restricted pod
/// security context, pull secrets and the scheduling the spec asks for.
fn pod_spec(
    rc: &RelayCache,
    names: &Names,
    container: Container,
    volumes: Vec<Volume>,
    grace: i64,
) -> PodSpec {
    let spec = &rc.spec;
    let scheduling = &spec.scheduling;
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        // The proxy never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(grace),
        security_context: Some(pod_security_context()),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        affinity: scheduling.affinity.clone(),
        topology_spread_constraints: spread(scheduling, names),
        priority_class_name: scheduling.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

/// The restricted profile at pod level: the nonroot user, and volumes
/// writable by its group.
fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
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

/// Without explicit resources: 100m CPU, and memory for the cache tier plus
/// half again (entry overhead, buffers) plus 64 MiB for the process, as both
/// request and limit so members are not the first evicted.
fn default_resources(max_cost: u64) -> ResourceRequirements {
    sized_resources("100m", max_cost, 64)
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

#[cfg(test)]
mod tests;
