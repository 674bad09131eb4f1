//! Builders of the children of a RelayCache: each turns the spec into one
//! Kubernetes object, ready for server-side apply. They are pure functions so
//! unit tests can check every field without an apiserver.

pub mod clients;
pub mod configmap;
pub mod pdb;
pub mod pod;
pub mod quantity;
pub mod service;
pub mod statefulset;
pub mod tokens;
pub mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

pub use configmap::RenderFailure;

use crate::crd::RelayCache;

/// Traffic port of the proxy.
pub const HTTP_PORT: i32 = 8787;
/// Admin port of the proxy (`/healthz`, `/readyz`, `/metrics`).
pub const ADMIN_PORT: i32 = 9787;
/// gRPC port for peers and clients.
pub const GRPC_PORT: i32 = 3320;
/// Key of the proxy configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "relaycache.yaml";
/// Where the ConfigMap is mounted in a member.
pub const CONFIG_DIR: &str = "/etc/relaycache";
/// Pod-template annotation holding the sha256 of the rendered config, so a
/// config change rolls the members.
pub const CONFIG_HASH_ANNOTATION: &str = "relaycache.io/config-hash";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGER: &str = "relaycache-operator";
/// Label selector matching every object this operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=relaycache-operator";

/// A spec the operator cannot turn into a cluster, with every reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<SpecIssue>);

/// One problem in a spec, at its path (`spec.cache.ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIssue {
    /// Path of the field in the RelayCache.
    pub path: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl SpecIssue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Settings that come from the operator's flags rather than the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// Proxy image when the RelayCache names none.
    pub default_image: String,
}

/// Where a RelayCache lives and what its children are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The RelayCache's name; also the StatefulSet, client Service, ConfigMap
    /// and PodDisruptionBudget name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

impl Names {
    /// Names of a stored RelayCache.
    pub fn of(rc: &RelayCache) -> Result<Self, InvalidSpec> {
        let namespace = rc.namespace().ok_or_else(|| {
            InvalidSpec(vec![SpecIssue::new(
                "metadata.namespace",
                "a RelayCache is namespaced; create it in a namespace",
            )])
        })?;
        Ok(Self {
            name: rc.name_any(),
            namespace,
        })
    }

    /// The headless Service that gives each member a stable DNS name.
    pub fn peers_service(&self) -> String {
        format!("{}-peers", self.name)
    }

    /// The Secret the operator generates for the members' token.
    pub fn member_token_secret(&self) -> String {
        format!("{}-member-token", self.name)
    }

    /// The Secret the operator generates for the clients' token.
    pub fn client_token_secret(&self) -> String {
        format!("{}-client-token", self.name)
    }

    /// Name of the copy of the clients' token Secret in another namespace:
    /// `NAMESPACE.NAME-client-token`, so RelayCaches of one name in two
    /// namespaces never share a copy (as in the inject label, the first dot
    /// splits, since namespaces hold none).
    pub fn client_token_copy(&self) -> String {
        format!("{}.{}-client-token", self.namespace, self.name)
    }

    /// `host:port` of member `ordinal` as the other members reach it.
    pub fn peer_address(&self, ordinal: i32) -> String {
        format!(
            "{}.{}.{}.svc:{GRPC_PORT}",
            self.member(ordinal),
            self.peers_service(),
            self.namespace
        )
    }

    /// Name of member `ordinal` (its pod).
    pub fn member(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// `host:port` of member `ordinal`'s admin listener, by the same DNS
    /// name the members reach each other by.
    pub fn admin_address(&self, ordinal: i32) -> String {
        format!(
            "{}.{}.{}.svc:{ADMIN_PORT}",
            self.member(ordinal),
            self.peers_service(),
            self.namespace
        )
    }

    /// The address a member advertises; the proxy expands `${POD_NAME}`.
    pub fn advertise_address(&self) -> String {
        format!(
            "${{POD_NAME}}.{}.{}.svc:{GRPC_PORT}",
            self.peers_service(),
            self.namespace
        )
    }

    /// Labels that select this RelayCache's pods (immutable in a StatefulSet).
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        [
            ("app.kubernetes.io/name", "relaycache"),
            ("app.kubernetes.io/instance", self.name.as_str()),
            ("app.kubernetes.io/component", "cache"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Labels on every child and pod.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
        labels
    }

    /// The selector as a string, for `status.selector` (the scale subresource).
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metadata of a child: its name, namespace, labels and the owner
    /// reference that makes deleting the RelayCache delete it.
    pub fn child_meta(&self, name: String, owner: &OwnerReference) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Every child of one RelayCache, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The controller owner reference every child carries (the generated
    /// token Secrets too).
    pub owner: OwnerReference,
    /// `NAME-peers`, headless, publishing not-ready members.
    pub peers_service: Service,
    /// `NAME`, the Service clients use.
    pub client_service: Service,
    /// `NAME`, the proxy configuration.
    pub config_map: ConfigMap,
    /// sha256 (hex) of the configuration, also on the pod template.
    pub config_hash: String,
    /// `NAME`, the members.
    pub stateful_set: StatefulSet,
    /// `NAME`, at most one member down at a time.
    pub pdb: PodDisruptionBudget,
}

/// Builds every child, or reports every problem in the spec (or why the
/// configuration could not be written).
pub fn build(rc: &RelayCache, settings: &BuildSettings) -> Result<Children, RenderFailure> {
    let names = Names::of(rc)?;
    let owner = rc.controller_owner_ref(&()).ok_or_else(|| {
        InvalidSpec(vec![SpecIssue::new(
            "metadata.uid",
            "the RelayCache has no uid yet; it must be read from the apiserver",
        )])
    })?;
    let rendered = configmap::render_checked(rc, &names)?;
    let config_map = configmap::config_map(&names, &owner, &rendered);
    let stateful_set = statefulset::stateful_set(rc, &names, &owner, settings, &rendered);
    Ok(Children {
        peers_service: service::peers_service(&names, &owner),
        client_service: service::client_service(&names, &owner),
        config_map,
        config_hash: rendered.hash.clone(),
        stateful_set,
        pdb: pdb::pod_disruption_budget(&names, &owner),
        owner,
    })
}

/// Parses a duration field (`5s`, `1h30m`), naming the field when it fails.
pub(crate) fn parse_duration(value: &str, path: &str) -> Result<Duration, SpecIssue> {
    humantime::parse_duration(value).map_err(|err| {
        SpecIssue::new(
            path,
            format!("{value:?} is not a duration ({err}); write e.g. 30s, 5m or 1h"),
        )
    })
}

#[cfg(test)]
pub(crate) mod testing {
    //! A RelayCache as the apiserver would hand it to the operator.

    use super::*;
    use crate::crd::RelayCacheSpec;

    pub(crate) fn rc(name: &str, spec: serde_json::Value) -> RelayCache {
        let spec: RelayCacheSpec = serde_json::from_value(spec).unwrap();
        let mut rc = RelayCache::new(name, spec);
        rc.metadata.namespace = Some("cache".into());
        rc.metadata.uid = Some(format!("uid-{name}"));
        rc.metadata.generation = Some(1);
        rc
    }

    pub(crate) fn settings() -> BuildSettings {
        BuildSettings {
            default_image: "relaycache/relaycache:0.1.0".into(),
        }
    }

    pub(crate) fn owner(rc: &RelayCache) -> OwnerReference {
        rc.controller_owner_ref(&()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_names_addresses_and_labels_derive_from_the_resource_name() {
        let names = Names::of(&rc("web", json!({}))).unwrap();
        assert_eq!(names.peers_service(), "web-peers");
        assert_eq!(names.peer_address(2), "web-2.web-peers.cache.svc:3320");
        assert_eq!(
            names.advertise_address(),
            "${POD_NAME}.web-peers.cache.svc:3320"
        );
        assert_eq!(
            names.selector_string(),
            "app.kubernetes.io/component=cache,app.kubernetes.io/instance=web,app.kubernetes.io/name=relaycache"
        );
        assert_eq!(
            names
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("relaycache-operator")
        );
    }

    #[test]
    fn every_child_is_owned_by_the_relaycache() {
        let rc = rc("web", json!({}));
        let children = build(&rc, &settings()).unwrap();
        let metas = [
            &children.peers_service.metadata,
            &children.client_service.metadata,
            &children.config_map.metadata,
            &children.stateful_set.metadata,
            &children.pdb.metadata,
        ];
        for meta in metas {
            let refs = meta.owner_references.as_ref().unwrap();
            assert_eq!(refs.len(), 1);
            assert_eq!(refs[0].kind, "RelayCache");
            assert_eq!(refs[0].api_version, "relaycache.io/v1alpha1");
            assert_eq!(refs[0].uid, "uid-web");
            assert_eq!(refs[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("cache"));
            assert_eq!(
                meta.labels.as_ref(),
                Some(&Names::of(&rc).unwrap().labels())
            );
        }
    }

    #[test]
    fn a_relaycache_without_uid_or_namespace_is_refused() {
        let mut no_uid = rc("web", json!({}));
        no_uid.metadata.uid = None;
        let Err(RenderFailure::Invalid(err)) = build(&no_uid, &settings()) else {
            panic!("built without a uid");
        };
        assert_eq!(err.0[0].path, "metadata.uid");

        let mut no_ns = rc("web", json!({}));
        no_ns.metadata.namespace = None;
        let Err(RenderFailure::Invalid(err)) = build(&no_ns, &settings()) else {
            panic!("built without a namespace");
        };
        assert_eq!(err.0[0].path, "metadata.namespace");
    }

    #[test]
    fn durations_name_their_field() {
        assert_eq!(
            parse_duration("90s", "spec.x").unwrap(),
            Duration::from_secs(90)
        );
        let issue = parse_duration("soon", "spec.cache.ttl").unwrap_err();
        assert_eq!(issue.path, "spec.cache.ttl");
        assert!(
            issue.message.contains("\"soon\" is not a duration"),
            "{issue:?}"
        );
    }
}
