//! The injected sidecar itself: its configuration (the members' turned
//! into a client on loopback) and its container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use relaycache_config::{Config, HaConfig, ReserveConfig};

use super::overrides::Overrides;
use super::{InjectSettings, ADMIN_PORT_NAME, CONFIG_ENV, DEFAULT_SIDECAR_CACHE_BYTES, TMP_VOLUME};
use crate::crd::{ClusterMode, RelayCache};
use crate::resources::configmap::{env_reference, render, CLIENT_TOKEN_ENV};
use crate::resources::pod::{
    container_port, http_probe, liveness_probe, mount, restricted_security_context,
    sized_resources, CONTAINER, RUN_AS,
};
use crate::resources::quantity;
use crate::resources::tokens::{self, Role};
use crate::resources::{InvalidSpec, Names, SpecIssue, ADMIN_PORT, GRPC_PORT, HTTP_PORT};

/// The sidecar's configuration: the members' configuration (upstreams, TTL,
/// isolation, streaming, stale-if-error window, replication settings) turned
/// into a client of the cluster listening on loopback. The reserve stays with
/// the members (its credentials never leave the RelayCache's namespace).
pub fn sidecar_config(rc: &RelayCache) -> Result<Config, InvalidSpec> {
    let names = Names::of(rc)?;
    let mut config = render(rc, &names)?.config;
    config.server.listen = format!("127.0.0.1:{HTTP_PORT}");
    // The kubelet probes the pod IP, so admin listens there too; purge stays
    // off (no admin token: a member's is the members' token, which no app
    // pod may hold), the rest is read-only.
    config.server.admin_listen = format!("0.0.0.0:{ADMIN_PORT}");
    config.server.admin_token = String::new();
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
        become_cluster_client(&mut config.cache.ha, &names);
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

/// Turns a member's cluster settings into a client's: the members through
/// the client Service, no peer list or listener of its own, and the
/// clients' token only.
fn become_cluster_client(ha: &mut HaConfig, names: &Names) {
    let defaults = HaConfig::default();
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

/// The sidecar container: `config_text` in its environment, the clients'
/// token when the config reads it, sizing, probes on the admin port and the
/// restricted security context.
pub(super) fn sidecar_container(
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
    let admin = || IntOrString::Int(ADMIN_PORT);
    Container {
        name: CONTAINER.into(),
        image: Some(image),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["relaycache".into()]),
        args: Some(vec!["serve".into()]),
        // Admin listens on the pod IP for the kubelet's probes; naming the
        // port lets a PodMonitor find every injected sidecar's /metrics.
        ports: Some(vec![container_port(ADMIN_PORT_NAME, ADMIN_PORT)]),
        env: Some(sidecar_env(config, config_text, client_token_secret)),
        resources: Some(sidecar_resources(rc, config, overrides)),
        restart_policy: settings.native_sidecars.then(|| "Always".to_string()),
        // A native sidecar's startup probe holds the app containers back
        // until the proxy answers, so their first call is not refused.
        startup_probe: Some(http_probe("/healthz", admin(), 1, 60)),
        liveness_probe: Some(liveness_probe(admin())),
        // No readiness probe: a cache that cannot reach its cluster still
        // proxies, and must never take the app out of its Service.
        security_context: Some(restricted_security_context(sidecar_user(pod))),
        volume_mounts: Some(vec![mount(TMP_VOLUME, "/tmp", false)]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The whole configuration as one variable, and the clients' token by
/// reference only where the config reads it (clients of a cluster).
fn sidecar_env(config: &Config, config_text: &str, client_token_secret: &str) -> Vec<EnvVar> {
    let mut env = vec![EnvVar {
        name: CONFIG_ENV.into(),
        value: Some(kubelet_literal(config_text)),
        ..EnvVar::default()
    }];
    if !config.cache.ha.client_token.is_empty() {
        env.push(tokens::token_env(Role::Client, client_token_secret));
    }
    env
}

/// `spec.sidecar.resources` or sizing from the sidecar's memory tier, with
/// the pod's CPU and memory annotations on top.
fn sidecar_resources(
    rc: &RelayCache,
    config: &Config,
    overrides: &Overrides,
) -> ResourceRequirements {
    let mut resources = rc
        .spec
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
    resources
}

/// The user the sidecar runs as: the pod's own non-root user is kept
/// (None: left to the pod); otherwise (none, or root) the image's nonroot
/// user.
fn sidecar_user(pod: &Pod) -> Option<i64> {
    let pod_user = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.run_as_user);
    let own_user = !matches!(pod_user, Some(uid) if uid != 0);
    own_user.then_some(RUN_AS)
}

/// 25m CPU; memory for the L1 cache plus half again plus 32 MiB for the
/// process, as request and limit.
fn default_resources(cache_bytes: u64) -> ResourceRequirements {
    sized_resources("25m", cache_bytes, 32)
}

/// The kubelet expands `$(VAR)` in env values and turns `$$` into `$`;
/// doubling every `$` makes it hand the text over exactly as written (the
/// proxy then expands `${RELAYCACHE_CLIENT_TOKEN}` itself).
pub(super) fn kubelet_literal(text: &str) -> String {
    text.replace('$', "$$")
}
