//! The pieces every relaycache container is made of, whether it runs as a
//! member (`statefulset.rs`) or as a sidecar injected next to an app
//! (`webhook/inject.rs`): its name and user, ports, HTTP probes on the admin
//! port, the restricted security context, sizing from the memory tier, and
//! the volumes it writes to. Both builders take them from here so that a
//! member and a sidecar cannot drift apart on any of them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::quantity::format_bytes;

/// Name of the proxy container, in a member and in an injected pod.
pub const CONTAINER: &str = "relaycache";
/// UID and GID the proxy runs as (no root, matches distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Seconds the kubelet waits for a probe's answer.
const PROBE_TIMEOUT_SECONDS: i32 = 2;

/// A named TCP port of the container.
pub(crate) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// `GET path` on the admin `port` every `period` seconds; `failures` misses
/// in a row fail it.
pub(crate) fn http_probe(path: &str, port: IntOrString, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port,
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        ..Probe::default()
    }
}

/// Liveness of a proxy: `/healthz` every 10 s, restarted after three misses.
pub(crate) fn liveness_probe(port: IntOrString) -> Probe {
    http_probe("/healthz", port, 10, 3)
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

/// The container runtime's default seccomp profile, which the restricted
/// profile requires.
pub(crate) fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// A CPU request, and memory for a cache of `cache_bytes` plus half again
/// (entry overhead, buffers) plus `process_mib` as both request and limit.
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

/// A scratch volume that lasts as long as the pod.
pub(crate) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// Mounts volume `name` at `path`.
pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}
