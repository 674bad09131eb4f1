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

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use serde_json::json;

use crate::cli::NativeSidecars;
use crate::crd::RelayCache;
use crate::resources::clients;
use crate::resources::pod::CONTAINER;
use crate::resources::tokens::{self, Role};
use crate::resources::{InvalidSpec, Names, ADMIN_PORT, HTTP_PORT};

mod overrides;
mod patch;
mod sidecar;

use overrides::Overrides;
use patch::{add_base_urls, escape, has_native_sidecar, to_value, Ops};
pub use sidecar::sidecar_config;
use sidecar::sidecar_container;

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
    let rc = match found_relaycache(req, target, found) {
        Ok(rc) => rc,
        Err(answer) => return *answer,
    };
    match serves_namespace(req, target, &rc, namespace) {
        Ok(true) => {}
        Ok(false) => return with_warning(req, clients::refusal(&rc, &target.pod_namespace)),
        Err(answer) => return *answer,
    }
    match injection(req, target, pod, &rc, settings) {
        Ok(ops) => ops.respond(req, Vec::new()),
        Err(answer) => *answer,
    }
}

/// For a RelayCache that serves the pod: the patch that injects the
/// sidecar, or (as the error) the answer that admits or refuses the pod
/// without it.
fn injection(
    req: &AdmissionRequest<DynamicObject>,
    target: &Target,
    pod: &Pod,
    rc: &RelayCache,
    settings: &InjectSettings,
) -> Result<Ops, Box<AdmissionResponse>> {
    let overrides = Overrides::of(pod)
        .map_err(|message| Box::new(AdmissionResponse::from(req).deny(message)))?;
    let invalid = |invalid: InvalidSpec| Box::new(without_sidecar(req, target, &invalid));
    let config = sidecar_config(rc).map_err(invalid)?;
    // `sidecar_config` above has read the names already.
    let client_token_secret = client_token_secret(rc, target).map_err(invalid)?;
    // Serialising a plain config does not fail in practice; if it ever
    // did, an empty config would start a sidecar on defaults, so admit the
    // pod as it is instead.
    let config_text = config.try_to_yaml().map_err(|err| {
        Box::new(with_warning(
            req,
            format!(
                "relaycache: cannot write the sidecar's config for RelayCache {}/{} ({err}); admitted without the sidecar",
                target.namespace, target.name
            ),
        ))
    })?;
    let container = sidecar_container(
        rc,
        pod,
        &config,
        &config_text,
        &client_token_secret,
        &overrides,
        settings,
    );
    Ok(patch(pod, target, container, settings.native_sidecars))
}

/// The RelayCache the lookup found; a missing one or a failed lookup
/// admits the pod unchanged with a warning.
fn found_relaycache(
    req: &AdmissionRequest<DynamicObject>,
    target: &Target,
    found: Found,
) -> Result<Box<RelayCache>, Box<AdmissionResponse>> {
    let message = match found {
        Found::Present(rc) => return Ok(rc),
        Found::Missing => format!(
            "relaycache: RelayCache {}/{} not found; admitted without the sidecar. Create it or fix the {INJECT_LABEL} label (NAME or NAMESPACE.NAME)",
            target.namespace, target.name
        ),
        Found::Failed(err) => format!(
            "relaycache: cannot read RelayCache {}/{} ({err}); admitted without the sidecar",
            target.namespace, target.name
        ),
    };
    Err(Box::new(with_warning(req, message)))
}

/// Whether the RelayCache serves the pod's namespace (`spec.clients`); a
/// namespace whose labels decide but could not be read admits the pod
/// unchanged with a warning.
fn serves_namespace(
    req: &AdmissionRequest<DynamicObject>,
    target: &Target,
    rc: &RelayCache,
    namespace: NamespaceLabels,
) -> Result<bool, Box<AdmissionResponse>> {
    let message = match (clients::allowed_by_name(rc, &target.pod_namespace), namespace) {
        (Some(allowed), _) => return Ok(allowed),
        (None, NamespaceLabels::Found(labels)) => {
            return Ok(clients::allows(rc, &target.pod_namespace, &labels))
        }
        (None, NamespaceLabels::Failed(err)) => format!(
            "relaycache: cannot read namespace {} to match it against spec.clients.namespaceSelector of RelayCache {}/{} ({err}); admitted without the sidecar",
            target.pod_namespace, target.namespace, target.name
        ),
        (None, NamespaceLabels::NotRead) => format!(
            "relaycache: the labels of namespace {} were not read, so RelayCache {}/{} cannot tell whether it serves it; admitted without the sidecar",
            target.pod_namespace, target.namespace, target.name
        ),
    };
    Err(Box::new(with_warning(req, message)))
}

/// The Secret with the clients' token: the RelayCache's own in its
/// namespace, the operator's copy anywhere else.
fn client_token_secret(rc: &RelayCache, target: &Target) -> Result<String, InvalidSpec> {
    let names = Names::of(rc)?;
    Ok(if target.pod_namespace == names.namespace {
        tokens::token_secret(rc, &names, Role::Client).name
    } else {
        names.client_token_copy()
    })
}

/// The JSONPatch adding `container`, its scratch volume, the base URLs and
/// the annotation that marks the pod injected.
fn patch(pod: &Pod, target: &Target, container: Container, native: bool) -> Ops {
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
    ops
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

#[cfg(test)]
mod tests;
