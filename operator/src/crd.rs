//! The `RelayCache` custom resource: its spec, its status, and the CRD that
//! `crdgen` prints (printer columns, scale subresource, CEL rules).
//!
//! Field names are camelCase as Kubernetes users expect; the operator maps
//! them onto the proxy's snake_case configuration in `resources::configmap`.
//! Rules the apiserver can check cheaply live here as CEL so `kubectl apply`
//! refuses a bad spec with a readable message; everything else (durations,
//! quantities, the rendered proxy configuration) is checked by the operator
//! and reported in the `Degraded` condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "relaycache.io";
/// Version of the resource.
pub const VERSION: &str = "v1alpha1";
/// File name of the checked-in CRD under `crds/`.
pub const CRD_FILE: &str = "relaycache.io_relaycaches.yaml";

/// A cache cluster of relaycache members.
// Several printer columns share a `type_`; clippy reads that as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "relaycache.io",
    version = "v1alpha1",
    kind = "RelayCache",
    plural = "relaycaches",
    // `rc` is the contract's short name, but kubectl resolves `rc` to
    // ReplicationControllers first; `rcache` is unambiguous.
    shortname = "rc",
    shortname = "rcache",
    namespaced,
    status = "RelayCacheStatus",
    derive = "PartialEq",
    doc = "A RelayCache is a cluster of relaycache members: a StatefulSet whose peer list comes from a headless Service.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "self.replicas == 0 || !has(self.replication) || !has(self.replication.memberCountQuorum) || self.replication.memberCountQuorum <= self.replicas"
).message("replication.memberCountQuorum must not exceed replicas: the cluster could never gather that many live members (scale to 0 to stop it entirely)"))]
#[serde(rename_all = "camelCase")]
pub struct RelayCacheSpec {
    /// Number of cache members (pods). `kubectl scale rc/NAME --replicas=N` sets it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container image of the proxy; the operator's `--default-image` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// `ha` (members replicate entries to each other), `single` (independent
    /// members behind one Service) or `disabled` (pass-through).
    #[serde(default)]
    pub mode: ClusterMode,
    /// APIs the cache sits in front of; the first whose path prefix matches
    /// wins. Omitted: Anthropic for `/v1/messages`, OpenAI for the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(v, v.name == u.name))").message("upstreams[].name must be unique: give each upstream its own name"))]
    pub upstreams: Vec<UpstreamSpec>,
    /// What is cached, for how long and for whom.
    #[serde(default)]
    pub cache: CacheSpec,
    /// How members share entries (mode `ha`), with the seed cache's knobs.
    #[serde(default)]
    pub replication: ReplicationSpec,
    /// Long-lived tier in object storage; omitted: no reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveSpec>,
    /// CPU and memory of each member. Omitted: requests of 100m CPU and a
    /// memory request and limit sized from `cache.memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where members may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,
    /// Defaults for proxies injected next to application pods that name this
    /// RelayCache (`relaycache.io/inject: NAME`).
    #[serde(default)]
    pub sidecar: SidecarSpec,
}

fn default_replicas() -> i32 {
    3
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// How the members of a RelayCache cache.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// A replicated cluster: each entry lives on `replicaCount` members.
    #[default]
    Ha,
    /// Independent members, each with its own memory cache.
    Single,
    /// Pass-through proxies, nothing cached.
    Disabled,
}

impl ClusterMode {
    /// The proxy's `cache.mode`.
    pub fn proxy_mode(self) -> relaycache_config::Mode {
        match self {
            ClusterMode::Ha => relaycache_config::Mode::Ha,
            ClusterMode::Single => relaycache_config::Mode::Single,
            ClusterMode::Disabled => relaycache_config::Mode::Disabled,
        }
    }
}

/// One upstream API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Name used in logs and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Base URL, such as `https://api.anthropic.com`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("upstreams[].url must be an http:// or https:// URL, such as https://api.anthropic.com"))]
    pub url: String,
    /// Path prefixes routed here; omitted: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("upstreams[].paths must start with '/', such as /v1/messages"))]
    pub paths: Vec<String>,
}

/// What is cached, for how long and for whom.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Default time an answer stays fresh, such as `1h` or `30m`.
    #[serde(default = "default_ttl")]
    #[schemars(length(max = 64))]
    pub ttl: String,
    /// Bytes of answers each member keeps in memory, a quantity such as `256Mi`.
    #[serde(default = "default_memory")]
    pub memory: Quantity,
    /// Who may read an entry: `credential` (per API key), `shared`, or
    /// `header:<name>` (per value of that header).
    #[serde(default = "default_isolation")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self == 'credential' || self == 'shared' || (self.startsWith('header:') && size(self) > 7)").message("cache.isolation must be credential, shared or header:<header-name>"))]
    pub isolation: String,
    /// Record complete streamed (SSE) answers and replay them.
    #[serde(default)]
    pub streaming: bool,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            memory: default_memory(),
            isolation: default_isolation(),
            streaming: false,
        }
    }
}

fn default_ttl() -> String {
    "1h".into()
}

fn default_memory() -> Quantity {
    Quantity("100Mi".into())
}

fn default_isolation() -> String {
    "credential".into()
}

/// Replication between members (mode `ha`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.readQuorum <= self.replicaCount").message("replication.readQuorum must not exceed replication.replicaCount: a read cannot wait for more copies than exist"))]
#[x_kube(validation = Rule::new("self.writeQuorum <= self.replicaCount").message("replication.writeQuorum must not exceed replication.replicaCount: a write cannot be acknowledged by more copies than exist"))]
pub struct ReplicationSpec {
    /// Copies of each entry.
    #[serde(default = "default_replica_count")]
    #[schemars(range(min = 1, max = 16))]
    pub replica_count: i32,
    /// Answers needed for a read.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 16))]
    pub read_quorum: i32,
    /// Acknowledgements needed for a write.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 16))]
    pub write_quorum: i32,
    /// Live members needed before the cluster is used at all.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub member_count_quorum: i32,
    /// Failure-detection timings.
    #[serde(default)]
    pub environment: Environment,
    /// Time a leaving member has to hand its entries off, such as `5s`. The
    /// pod's termination grace period is derived from it.
    #[serde(default = "default_leave_timeout")]
    #[schemars(length(max = 64))]
    pub leave_timeout: String,
    /// Secret (key `token`) with the shared token peers and clients present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretName>,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            replica_count: default_replica_count(),
            read_quorum: 1,
            write_quorum: 1,
            member_count_quorum: 1,
            environment: Environment::default(),
            leave_timeout: default_leave_timeout(),
            token_secret: None,
        }
    }
}

fn default_replica_count() -> i32 {
    2
}

fn one() -> i32 {
    1
}

fn default_leave_timeout() -> String {
    "5s".into()
}

/// Failure-detection timings of a cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Same host.
    Local,
    /// One data centre.
    #[default]
    Lan,
    /// Across regions.
    Wan,
}

impl Environment {
    /// The proxy's `cache.ha.environment`.
    pub fn proxy_environment(self) -> relaycache_config::Environment {
        match self {
            Environment::Local => relaycache_config::Environment::Local,
            Environment::Lan => relaycache_config::Environment::Lan,
            Environment::Wan => relaycache_config::Environment::Wan,
        }
    }
}

/// A Secret in the RelayCache's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretName {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The object-storage tier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReserveSpec {
    /// Store URL: `s3://bucket/prefix`, `gs://bucket`, `az://container`,
    /// `file:///var/lib/relaycache/reserve` (a volume per member) or `memory://`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(file|s3|s3a|gs|az|azure|abfs|abfss|memory)://')").message("reserve.url must start with file://, s3://, gs://, az:// or memory://"))]
    pub url: String,
    /// How long an entry is kept after it was written or last read, such as `720h`.
    #[serde(default = "default_retention")]
    #[schemars(length(max = 64))]
    pub retention: String,
    /// Secret whose keys become environment variables of every member, such
    /// as `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretName>,
    /// Options passed to the store, such as `aws_endpoint` or `aws_region`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// For `file://` URLs: size of a PersistentVolumeClaim per member. Omitted:
    /// an emptyDir, which lasts only as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
    /// StorageClass of those claims; omitted: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_retention() -> String {
    "720h".into()
}

/// Where members may run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels a member's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints members tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Spread of members over zones or nodes. Omitted (and no affinity
    /// given): members prefer distinct nodes. A constraint without a
    /// labelSelector selects this RelayCache's members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Defaults for proxies injected next to application pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of the injected proxy; omitted: this RelayCache's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the injected proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Bytes of answers the injected proxy keeps in memory (its L1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// What the operator last saw of a RelayCache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayCacheStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Members that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the members (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// sha256 of the rendered proxy configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, as `crdgen` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&RelayCache::crd())?;
    Ok(format!(
        "# Generated by `relaycache-operator crdgen`; do not edit. Regenerate with `make crds`.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample() -> Value {
        json!({
            "apiVersion": "relaycache.io/v1alpha1",
            "kind": "RelayCache",
            "metadata": {"name": "rc", "namespace": "default"},
            "spec": serde_json::to_value(RelayCacheSpec::default_for_tests()).unwrap(),
        })
    }

    impl RelayCacheSpec {
        fn default_for_tests() -> Self {
            serde_json::from_value(json!({})).unwrap()
        }
    }

    /// Runs the CRD's CEL rules client-side (kube's `cel` feature), the same
    /// rules the apiserver enforces, and returns their messages.
    fn cel_messages(object: &Value) -> Vec<String> {
        let crd = RelayCache::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        match kube::core::cel::Validator::new().validate(&schema, object, None) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn with_spec(patch: Value) -> Value {
        let mut object = sample();
        merge(&mut object["spec"], patch);
        object
    }

    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    #[test]
    fn empty_spec_gets_the_documented_defaults() {
        let spec = RelayCacheSpec::default_for_tests();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.mode, ClusterMode::Ha);
        assert_eq!(spec.cache.ttl, "1h");
        assert_eq!(spec.cache.memory, Quantity("100Mi".into()));
        assert_eq!(spec.cache.isolation, "credential");
        assert_eq!(spec.replication.replica_count, 2);
        assert_eq!(spec.replication.read_quorum, 1);
        assert_eq!(spec.replication.leave_timeout, "5s");
        assert!(spec.reserve.is_none());
    }

    #[test]
    fn crd_names_scope_and_subresources() {
        let crd = RelayCache::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("relaycaches.relaycache.io")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "RelayCache");
        assert_eq!(crd.spec.names.plural, "relaycaches");
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec!["rc".to_string(), "rcache".to_string()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Mode", "Replicas", "Ready", "Age"]);
    }

    #[test]
    fn crd_schema_is_structural_where_apiservers_are_strict() {
        // Quantities must be int-or-string, never a bare anyOf without the marker.
        let text = serde_json::to_string(&RelayCache::crd()).unwrap();
        assert!(text.contains("x-kubernetes-int-or-string"));
        assert!(!text.contains("\"$ref\""), "schema must be inlined");
        assert!(!text.contains("\"nullable\":false"));
    }

    #[test]
    fn a_valid_spec_passes_every_rule() {
        assert_eq!(cel_messages(&sample()), Vec::<String>::new());
        let full = with_spec(json!({
            "replicas": 3,
            "upstreams": [
                {"name": "anthropic", "url": "https://api.anthropic.com", "paths": ["/v1/messages"]},
                {"name": "openai", "url": "https://api.openai.com"}
            ],
            "cache": {"isolation": "header:x-team"},
            "replication": {"replicaCount": 3, "readQuorum": 2, "writeQuorum": 3, "memberCountQuorum": 3},
            "reserve": {"url": "s3://bucket/prefix"}
        }));
        assert_eq!(cel_messages(&full), Vec::<String>::new());
    }

    #[test]
    fn quorum_rules_reject_with_a_readable_message() {
        let cases = [
            (
                json!({"replication": {"replicaCount": 2, "readQuorum": 3}}),
                "replication.readQuorum must not exceed replication.replicaCount",
            ),
            (
                json!({"replication": {"replicaCount": 1, "writeQuorum": 2}}),
                "replication.writeQuorum must not exceed replication.replicaCount",
            ),
            (
                json!({"replicas": 2, "replication": {"memberCountQuorum": 3}}),
                "replication.memberCountQuorum must not exceed replicas",
            ),
        ];
        for (patch, expected) in cases {
            let messages = cel_messages(&with_spec(patch.clone()));
            assert!(
                messages.iter().any(|m| m.contains(expected)),
                "{patch}: expected {expected:?} in {messages:?}"
            );
        }
        // Scaling to zero stays possible whatever the quorum.
        let zero = with_spec(json!({"replicas": 0, "replication": {"memberCountQuorum": 3}}));
        assert_eq!(cel_messages(&zero), Vec::<String>::new());
    }

    #[test]
    fn field_rules_reject_with_a_readable_message() {
        let cases = [
            (
                json!({"upstreams": [{"name": "a", "url": "ftp://x"}]}),
                "upstreams[].url must be an http:// or https:// URL",
            ),
            (
                json!({"upstreams": [{"name": "a", "url": "https://x", "paths": ["v1"]}]}),
                "upstreams[].paths must start with '/'",
            ),
            (
                json!({"upstreams": [{"name": "a", "url": "https://x"}, {"name": "a", "url": "https://y"}]}),
                "upstreams[].name must be unique",
            ),
            (
                json!({"cache": {"isolation": "everyone"}}),
                "cache.isolation must be credential, shared or header:<header-name>",
            ),
            (
                json!({"reserve": {"url": "ftp://bucket"}}),
                "reserve.url must start with file://",
            ),
        ];
        for (patch, expected) in cases {
            let messages = cel_messages(&with_spec(patch.clone()));
            assert!(
                messages.iter().any(|m| m.contains(expected)),
                "{patch}: expected {expected:?} in {messages:?}"
            );
        }
    }

    #[test]
    fn crd_yaml_starts_with_the_regenerate_hint_and_parses_back() {
        let text = crd_yaml().unwrap();
        assert!(text.starts_with("# Generated by `relaycache-operator crdgen`"));
        let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(parsed, RelayCache::crd());
    }
}
