//! Sidecar injection as pure functions: an AdmissionRequest for a pod, the
//! RelayCache it names (looked up by the caller) and what the apiserver
//! supports go in; an AdmissionResponse with a JSONPatch comes out. No I/O
//! here, so every rule is unit-testable against recorded reviews.
//!
//! The rules, in the order they are applied:
//! - only pod CREATEs carrying `relaycache.io/inject` are touched;
//! - a pod already carrying `relaycache.io/injected` is not injected again
//!   (the apiserver re-invokes us when a later webhook changed the pod);
//!   containers added since then only get the base-URL variables;
//! - `hostNetwork` pods are skipped (the sidecar's ports would be the node's);
//! - an invalid override annotation refuses the pod, as the apiserver refuses
//!   an invalid resource quantity in a container: it is explicit bad input
//!   in the pod itself, and the refusal (which names the annotation, its
//!   value and a value that works) shows in the ReplicaSet's events. This is
//!   the only refusal;
//! - a pod whose namespace the RelayCache does not serve (`spec.clients`)
//!   is admitted unchanged with a warning naming the field to set;
//! - anything else the pod cannot fix itself (an unknown or invalid
//!   RelayCache, an apiserver that cannot be read) admits the pod unchanged
//!   with a warning: the cache is an optimisation, and must not keep an app
//!   from starting.
//!
//! The sidecar of a cluster (mode `ha`) presents the clients' token, never
//! the members'. It reads it with a required `secretKeyRef`: from the
//! RelayCache's own Secret in its namespace, from the operator's copy
//! elsewhere. A copy the operator has not written yet makes the kubelet wait
//! (and retry) rather than start a sidecar the members would refuse; the
//! operator writes copies as soon as a namespace is allowed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Pod, Probe,
    ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use relaycache_config::{Config, HaConfig, ReserveConfig};
use serde_json::{json, Value};

use crate::cli::NativeSidecars;
use crate::crd::{ClusterMode, RelayCache};
use crate::resources::clients;
use crate::resources::configmap::{env_reference, render, CLIENT_TOKEN_ENV};
use crate::resources::quantity;
use crate::resources::statefulset::{
    restricted_security_context, sized_resources, CONTAINER, RUN_AS,
};
use crate::resources::tokens::{self, Role};
use crate::resources::{InvalidSpec, Names, SpecIssue, ADMIN_PORT, GRPC_PORT, HTTP_PORT};

/// Pod label naming the RelayCache: `NAME` (in the pod's namespace) or `NAMESPACE.NAME`.
pub const INJECT_LABEL: &str = "relaycache.io/inject";
/// Pod annotation set on injection (value: the label's value); its presence
/// makes injection idempotent.
pub const INJECTED_ANNOTATION: &str = "relaycache.io/injected";
/// Pod annotation overriding the sidecar's image.
pub const IMAGE_ANNOTATION: &str = "relaycache.io/sidecar-image";
/// Pod annotation overriding the sidecar's CPU request (`100m`, `0.5`).
pub const CPU_ANNOTATION: &str = "relaycache.io/sidecar-cpu";
/// Pod annotation overriding the sidecar's memory request and limit (`128Mi`).
pub const MEMORY_ANNOTATION: &str = "relaycache.io/sidecar-memory";
/// Environment variable holding the sidecar's whole configuration (YAML).
pub const CONFIG_ENV: &str = "RELAYCACHE_CONFIG_YAML";
/// Base URL for Anthropic's SDKs, which append `/v1/messages` themselves.
pub const ANTHROPIC_BASE_URL: (&str, &str) = ("ANTHROPIC_BASE_URL", "http://127.0.0.1:8787");
/// Base URL for OpenAI's SDKs, whose base URL includes the `/v1` prefix.
pub const OPENAI_BASE_URL: (&str, &str) = ("OPENAI_BASE_URL", "http://127.0.0.1:8787/v1");
/// Scratch space of the sidecar, whose root filesystem is read-only.
pub const TMP_VOLUME: &str = "relaycache-tmp";
/// Name of the sidecar's admin port (`/metrics`, `/healthz`), which the
/// chart's sidecar PodMonitor scrapes by name. Prefixed so it cannot clash
/// with the app's own ports (names are unique per pod), and cut to 15
/// characters, the limit of a port name.
pub const ADMIN_PORT_NAME: &str = "relaycache-adm";
/// Memory cache (L1) of a sidecar whose RelayCache sets no `sidecar.memory`:
/// one per app pod, so far smaller than a member's.
pub const DEFAULT_SIDECAR_CACHE_BYTES: u64 = 32 << 20;

/// The first Kubernetes minor (of major 1) with native sidecars on by default.
const NATIVE_SIDECAR_MINOR: u32 = 29;

/// What injection depends on besides the pod and the RelayCache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// Image when neither the pod, `spec.sidecar.image` nor `spec.image` names one.
    pub default_image: String,
    /// The apiserver runs native sidecars (init containers with `restartPolicy: Always`).
    pub native_sidecars: bool,
}

/// Whether an apiserver of this version runs native sidecars (1.29 and later;
/// minors such as `29+` from managed clusters count as 29).
pub fn supports_native_sidecars(info: &Info) -> bool {
    let number = |text: &str| -> Option<u32> {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(&info.major), number(&info.minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MINOR),
        _ => false,
    }
}

/// Whether to inject native sidecars under `mode`, given the apiserver's
/// version if it could be read: `auto` follows the version (and, without
/// one, falls back to a regular container, which runs everywhere).
pub fn native_sidecars_for(mode: NativeSidecars, version: Option<&Info>) -> bool {
    match mode {
        NativeSidecars::Always => true,
        NativeSidecars::Never => false,
        NativeSidecars::Auto => version.is_some_and(supports_native_sidecars),
    }
}

/// The RelayCache a pod's label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Namespace of the RelayCache.
    pub namespace: String,
    /// Name of the RelayCache.
    pub name: String,
    /// The pod's namespace (where the sidecar runs).
    pub pod_namespace: String,
    /// The label's value, recorded in the status annotation.
    pub label: String,
}

/// What the caller found when it looked the RelayCache up.
#[derive(Debug, Clone)]
pub enum Found {
    /// The RelayCache.
    Present(Box<RelayCache>),
    /// No such RelayCache.
    Missing,
    /// The apiserver could not answer; the text says why.
    Failed(String),
}

/// What the caller learned of the pod's namespace: read only when the
/// RelayCache's `spec.clients.namespaceSelector` decides whether it serves
/// the pod (see [`clients::allowed_by_name`]).
#[derive(Debug, Clone)]
pub enum NamespaceLabels {
    /// Not read: the RelayCache's namespace or its list decides.
    NotRead,
    /// The namespace's labels.
    Found(BTreeMap<String, String>),
    /// The apiserver could not answer; the text says why.
    Failed(String),
}

/// The outcome of reading a review before any lookup.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to look up: answer with this.
    Answer(Box<AdmissionResponse>),
    /// Look the target up, then call [`respond`].
    Inject {
        /// The RelayCache to look up.
        target: Target,
        /// The pod from the request.
        pod: Box<Pod>,
    },
}

/// Reads a request and decides whether a RelayCache must be looked up.
pub fn plan(req: &AdmissionRequest<DynamicObject>) -> Plan {
    let unchanged = || Box::new(AdmissionResponse::from(req));
    let warn = |message: String| Plan::Answer(Box::new(with_warning(req, message)));
    if !matches!(req.operation, Operation::Create) || req.kind.kind != "Pod" {
        return Plan::Answer(unchanged());
    }
    let Some(object) = &req.object else {
        return warn("relaycache: the review carries no pod; admitted without the sidecar".into());
    };
    let pod = match serde_json::to_value(object).and_then(serde_json::from_value::<Pod>) {
        Ok(pod) => pod,
        Err(err) => {
            return warn(format!(
                "relaycache: cannot read the pod ({err}); admitted without the sidecar"
            ))
        }
    };
    let Some(label) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
    else {
        return Plan::Answer(unchanged());
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(INJECTED_ANNOTATION) {
        // Re-invocation: containers another webhook added since get the URLs.
        let mut ops = Ops::default();
        add_base_urls(&pod, has_native_sidecar(&pod), &mut ops);
        return Plan::Answer(Box::new(ops.respond(req, Vec::new())));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let named_like_ours = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER);
    if named_like_ours {
        return warn(format!(
            "relaycache: the pod already has a container named {CONTAINER:?}; admitted without injecting another"
        ));
    }
    if spec.host_network == Some(true) {
        return warn(format!(
            "relaycache: hostNetwork pods are not injected (the sidecar's ports {HTTP_PORT} and {ADMIN_PORT} would be the node's); remove {INJECT_LABEL} or hostNetwork"
        ));
    }
    let Some(pod_namespace) = req.namespace.clone().or(pod.metadata.namespace.clone()) else {
        return warn(
            "relaycache: the request names no namespace; admitted without the sidecar".into(),
        );
    };
    match parse_label(label, &pod_namespace) {
        Ok((namespace, name)) => Plan::Inject {
            target: Target {
                namespace,
                name,
                pod_namespace,
                label: label.clone(),
            },
            pod: Box::new(pod),
        },
        Err(message) => warn(message),
    }
}

/// `NAME` or `NAMESPACE.NAME`. Namespaces hold no dots, so the first dot
/// splits; a RelayCache whose own name has a dot must be written with its
/// namespace.
fn parse_label(value: &str, pod_namespace: &str) -> Result<(String, String), String> {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    let (namespace, name) = match value.split_once('.') {
        Some((namespace, name)) => (namespace, name),
        None => (pod_namespace, value),
    };
    if valid(namespace) && !namespace.contains('.') && valid(name) {
        Ok((namespace.to_string(), name.to_string()))
    } else {
        Err(format!(
            "relaycache: {INJECT_LABEL}={value:?} names no RelayCache; write NAME or NAMESPACE.NAME (lowercase); admitted without the sidecar"
        ))
    }
}

/// Builds the answer once the RelayCache (and, when its selector decides,
/// the pod's namespace) has been looked up.
pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    target: &Target,
    pod: &Pod,
    found: Found,
    namespace: NamespaceLabels,
    settings: &InjectSettings,
) -> AdmissionResponse {
    let rc = match found {
        Found::Present(rc) => rc,
        Found::Missing => {
            return with_warning(
                req,
                format!(
                    "relaycache: RelayCache {}/{} not found; admitted without the sidecar. Create it or fix the {INJECT_LABEL} label (NAME or NAMESPACE.NAME)",
                    target.namespace, target.name
                ),
            )
        }
        Found::Failed(err) => {
            return with_warning(
                req,
                format!(
                    "relaycache: cannot read RelayCache {}/{} ({err}); admitted without the sidecar",
                    target.namespace, target.name
                ),
            )
        }
    };
    let allowed = match (
        clients::allowed_by_name(&rc, &target.pod_namespace),
        namespace,
    ) {
        (Some(allowed), _) => allowed,
        (None, NamespaceLabels::Found(labels)) => {
            clients::allows(&rc, &target.pod_namespace, &labels)
        }
        (None, NamespaceLabels::Failed(err)) => {
            return with_warning(
                req,
                format!(
                    "relaycache: cannot read namespace {} to match it against spec.clients.namespaceSelector of RelayCache {}/{} ({err}); admitted without the sidecar",
                    target.pod_namespace, target.namespace, target.name
                ),
            )
        }
        (None, NamespaceLabels::NotRead) => {
            return with_warning(
                req,
                format!(
                    "relaycache: the labels of namespace {} were not read, so RelayCache {}/{} cannot tell whether it serves it; admitted without the sidecar",
                    target.pod_namespace, target.namespace, target.name
                ),
            )
        }
    };
    if !allowed {
        return with_warning(req, clients::refusal(&rc, &target.pod_namespace));
    }
    let overrides = match Overrides::of(pod) {
        Ok(overrides) => overrides,
        Err(message) => return AdmissionResponse::from(req).deny(message),
    };
    let config = match sidecar_config(&rc) {
        Ok(config) => config,
        Err(invalid) => return without_sidecar(req, target, &invalid),
    };

    // The clients' token: the RelayCache's own Secret in its namespace, the
    // operator's copy anywhere else.
    let client_token_secret = match Names::of(&rc) {
        Ok(names) if target.pod_namespace == names.namespace => {
            tokens::token_secret(&rc, &names, Role::Client).name
        }
        Ok(names) => names.client_token_copy(),
        // `sidecar_config` above has read the names already.
        Err(invalid) => return without_sidecar(req, target, &invalid),
    };
    // Serialising a plain config does not fail in practice; if it ever
    // did, an empty config would start a sidecar on defaults, so admit the
    // pod as it is instead.
    let config_text = match config.try_to_yaml() {
        Ok(text) => text,
        Err(err) => {
            return with_warning(
                req,
                format!(
                    "relaycache: cannot write the sidecar's config for RelayCache {}/{} ({err}); admitted without the sidecar",
                    target.namespace, target.name
                ),
            )
        }
    };
    let container = sidecar_container(
        &rc,
        pod,
        &config,
        &config_text,
        &client_token_secret,
        &overrides,
        settings,
    );
    let native = settings.native_sidecars;

    let mut ops = Ops::default();
    // Env first, while container indices are still the original ones.
    add_base_urls(pod, native, &mut ops);
    let spec = pod.spec.clone().unwrap_or_default();
    let container = to_value(&container);
    if native {
        match &spec.init_containers {
            Some(_) => ops.add("/spec/initContainers/0", container),
            None => ops.add("/spec/initContainers", json!([container])),
        }
    } else {
        ops.add("/spec/containers/-", container);
    }
    let volume = to_value(&Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("16Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    match &spec.volumes {
        Some(_) => ops.add("/spec/volumes/-", volume),
        None => ops.add("/spec/volumes", json!([volume])),
    }
    match &pod.metadata.annotations {
        Some(_) => ops.add(
            &format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)),
            json!(target.label),
        ),
        None => ops.add(
            "/metadata/annotations",
            json!({ INJECTED_ANNOTATION: target.label }),
        ),
    }
    ops.respond(req, Vec::new())
}

/// Admits a pod without the sidecar because its RelayCache's spec is invalid.
fn without_sidecar(
    req: &AdmissionRequest<DynamicObject>,
    target: &Target,
    invalid: &InvalidSpec,
) -> AdmissionResponse {
    with_warning(
        req,
        format!(
            "relaycache: RelayCache {}/{} is invalid ({invalid}); admitted without the sidecar",
            target.namespace, target.name
        ),
    )
}

fn with_warning(req: &AdmissionRequest<DynamicObject>, message: String) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    response.warnings = Some(vec![message]);
    response
}

/// The sidecar's configuration: the members' configuration (upstreams, TTL,
/// isolation, streaming, stale-if-error window, replication settings) turned
/// into a client of the cluster listening on loopback. The reserve stays with
/// the members (its credentials never leave the RelayCache's namespace).
pub fn sidecar_config(rc: &RelayCache) -> Result<Config, InvalidSpec> {
    let names = Names::of(rc)?;
    let mut config = render(rc, &names)?.config;
    config.server.listen = format!("127.0.0.1:{HTTP_PORT}");
    // The kubelet probes the pod IP, so admin listens there too; purge stays
    // off (no admin token), the rest is read-only.
    config.server.admin_listen = format!("0.0.0.0:{ADMIN_PORT}");
    config.cache.reserve = ReserveConfig::default();
    let memory = match &rc.spec.sidecar.memory {
        Some(q) => {
            quantity::bytes(&q.0, "spec.sidecar.memory").map_err(|i| InvalidSpec(vec![i]))?
        }
        None => DEFAULT_SIDECAR_CACHE_BYTES,
    };
    config.cache.memory.max_cost = memory;
    config.cache.max_entry_bytes = Config::default().cache.max_entry_bytes.min(memory);
    if rc.spec.mode == ClusterMode::Ha {
        let defaults = HaConfig::default();
        let ha = &mut config.cache.ha;
        ha.embedded = false;
        ha.addresses = vec![format!(
            "{}.{}.svc:{GRPC_PORT}",
            names.name, names.namespace
        )];
        ha.peers = defaults.peers;
        ha.advertise_addr = defaults.advertise_addr;
        ha.bind_addr = defaults.bind_addr;
        // A client: the clients' token only. The members' token would let
        // any app pod act as a member.
        ha.token = String::new();
        ha.client_token = env_reference(CLIENT_TOKEN_ENV);
    }
    config.validate().map_err(|found| {
        InvalidSpec(
            found
                .0
                .into_iter()
                .map(|i| SpecIssue::new(format!("sidecar config {}", i.path), i.message))
                .collect(),
        )
    })?;
    Ok(config)
}

/// Overrides read from the pod's annotations.
#[derive(Debug, Default, PartialEq)]
struct Overrides {
    image: Option<String>,
    cpu: Option<Quantity>,
    memory: Option<Quantity>,
}

impl Overrides {
    /// The overrides, or the refusal message: it names the annotation, the
    /// value found and a value that works, because it reaches the user only
    /// as a ReplicaSet event ("Error creating: admission webhook ... denied
    /// the request: ...").
    fn of(pod: &Pod) -> Result<Self, String> {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let get = |key: &str| annotations.get(key).map(|v| v.trim().to_string());
        let mut overrides = Overrides::default();
        if let Some(image) = get(IMAGE_ANNOTATION) {
            if image.is_empty() || image.len() > 512 || image.contains(char::is_whitespace) {
                return Err(refusal(
                    IMAGE_ANNOTATION,
                    &image,
                    "an image reference",
                    "relaycache/relaycache:0.1.0",
                ));
            }
            overrides.image = Some(image);
        }
        if let Some(cpu) = get(CPU_ANNOTATION) {
            if !is_cpu_quantity(&cpu) {
                return Err(refusal(CPU_ANNOTATION, &cpu, "a CPU quantity", "100m"));
            }
            overrides.cpu = Some(Quantity(cpu));
        }
        if let Some(memory) = get(MEMORY_ANNOTATION) {
            match quantity::bytes(&memory, MEMORY_ANNOTATION) {
                Ok(bytes) if bytes > 0 => overrides.memory = Some(Quantity(memory)),
                _ => {
                    return Err(refusal(
                        MEMORY_ANNOTATION,
                        &memory,
                        "a memory quantity",
                        "128Mi",
                    ))
                }
            }
        }
        Ok(overrides)
    }
}

/// Longest part of a bad annotation value quoted back: enough to recognise
/// it, short enough for an event.
const SHOWN_VALUE_CHARS: usize = 64;

fn refusal(annotation: &str, value: &str, what: &str, example: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_VALUE_CHARS).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    format!(
        "relaycache: annotation {annotation}={shown:?} is not {what}; write e.g. {annotation}: \"{example}\" in the pod template, or remove it for the RelayCache's default"
    )
}

/// `250m`, `0.5`, `2`: a positive decimal, or whole millicores.
fn is_cpu_quantity(value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let shape = match value.strip_suffix('m') {
        Some(milli) => digits(milli),
        None => match value.split_once('.') {
            Some((whole, fraction)) => digits(whole) && digits(fraction),
            None => digits(value),
        },
    };
    shape && value.chars().any(|c| ('1'..='9').contains(&c))
}

fn sidecar_container(
    rc: &RelayCache,
    pod: &Pod,
    config: &Config,
    config_text: &str,
    client_token_secret: &str,
    overrides: &Overrides,
    settings: &InjectSettings,
) -> Container {
    let spec = &rc.spec;
    let image = overrides
        .image
        .clone()
        .or_else(|| spec.sidecar.image.clone())
        .or_else(|| spec.image.clone())
        .unwrap_or_else(|| settings.default_image.clone());

    let mut env = vec![EnvVar {
        name: CONFIG_ENV.into(),
        value: Some(kubelet_literal(config_text)),
        ..EnvVar::default()
    }];
    // Only where the config reads it (clients of a cluster).
    if !config.cache.ha.client_token.is_empty() {
        env.push(tokens::token_env(Role::Client, client_token_secret));
    }

    let mut resources = spec
        .sidecar
        .resources
        .clone()
        .unwrap_or_else(|| default_resources(config.cache.memory.max_cost));
    if let Some(cpu) = &overrides.cpu {
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert("cpu".into(), cpu.clone());
    }
    if let Some(memory) = &overrides.memory {
        for map in [&mut resources.requests, &mut resources.limits] {
            map.get_or_insert_with(BTreeMap::new)
                .insert("memory".into(), memory.clone());
        }
    }

    // The pod's own non-root user is kept; otherwise (none, or root) the
    // sidecar runs as the image's nonroot user.
    let pod_user = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.run_as_user);
    let own_user = !matches!(pod_user, Some(uid) if uid != 0);

    let probe = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(ADMIN_PORT),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };

    Container {
        name: CONTAINER.into(),
        image: Some(image),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["relaycache".into()]),
        args: Some(vec!["serve".into()]),
        // Admin listens on the pod IP for the kubelet's probes; naming the
        // port lets a PodMonitor find every injected sidecar's /metrics.
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        resources: Some(resources),
        restart_policy: settings.native_sidecars.then(|| "Always".to_string()),
        // A native sidecar's startup probe holds the app containers back
        // until the proxy answers, so their first call is not refused.
        startup_probe: Some(probe(1, 60)),
        liveness_probe: Some(probe(10, 3)),
        // No readiness probe: a cache that cannot reach its cluster still
        // proxies, and must never take the app out of its Service.
        security_context: Some(restricted_security_context(own_user.then_some(RUN_AS))),
        volume_mounts: Some(vec![VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// 25m CPU; memory for the L1 cache plus half again plus 32 MiB for the
/// process, as request and limit.
fn default_resources(cache_bytes: u64) -> ResourceRequirements {
    sized_resources("25m", cache_bytes, 32)
}

/// The kubelet expands `$(VAR)` in env values and turns `$$` into `$`;
/// doubling every `$` makes it hand the text over exactly as written (the
/// proxy then expands `${RELAYCACHE_CLIENT_TOKEN}` itself).
fn kubelet_literal(text: &str) -> String {
    text.replace('$', "$$")
}

fn has_native_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == CONTAINER))
}

/// Sets the base URLs in every app container that does not set them itself.
/// Regular init containers get them only with a native sidecar, the one case
/// where the proxy is already running when they start.
fn add_base_urls(pod: &Pod, init_too: bool, ops: &mut Ops) {
    let Some(spec) = &pod.spec else { return };
    let mut groups = vec![("containers", &spec.containers)];
    if let (true, Some(inits)) = (init_too, &spec.init_containers) {
        groups.push(("initContainers", inits));
    }
    for (field, containers) in groups {
        for (i, container) in containers.iter().enumerate() {
            if container.name == CONTAINER {
                continue;
            }
            let missing: Vec<Value> = [ANTHROPIC_BASE_URL, OPENAI_BASE_URL]
                .into_iter()
                .filter(|(name, _)| !container.env.iter().flatten().any(|e| e.name == *name))
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let path = format!("/spec/{field}/{i}/env");
            if container.env.is_some() {
                for var in missing {
                    ops.add(&format!("{path}/-"), var);
                }
            } else {
                ops.add(&path, Value::Array(missing));
            }
        }
    }
}

/// JSONPatch operations, all `add`.
#[derive(Debug, Default)]
struct Ops(Vec<Value>);

impl Ops {
    fn add(&mut self, path: &str, value: Value) {
        self.0
            .push(json!({"op": "add", "path": path, "value": value}));
    }

    fn respond(
        self,
        req: &AdmissionRequest<DynamicObject>,
        warnings: Vec<String>,
    ) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(req);
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        if self.0.is_empty() {
            return response;
        }
        // The operations are built from plain JSON above; a failure here is a
        // bug, reported as a warning rather than a refused pod.
        let patched = serde_json::from_value::<json_patch::Patch>(Value::Array(self.0))
            .map_err(|e| e.to_string())
            .and_then(|patch| {
                response
                    .clone()
                    .with_patch(patch)
                    .map_err(|e| e.to_string())
            });
        patched.unwrap_or_else(|err| {
            with_warning(
                req,
                format!("relaycache: internal error building the patch ({err}); admitted without the sidecar"),
            )
        })
    }
}

/// A JSON Pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // k8s-openapi types serialize to JSON objects without failing.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
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
            assert_eq!(ha.client_token, "${RELAYCACHE_CLIENT_TOKEN}", "{spec}");
        }
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(escape("relaycache.io/injected"), "relaycache.io~1injected");
        assert_eq!(escape("a~b"), "a~0b");
    }
}
