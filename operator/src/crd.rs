//! The `RelayCache` custom resource: its spec, its status, and the CRD that
//! `crdgen` prints (printer columns, scale subresource, CEL rules).
//!
//! Field names are camelCase as Kubernetes users expect; the operator maps
//! them onto the proxy's snake_case configuration in `resources::configmap`.
//! Rules the apiserver can check cheaply live here as CEL so `kubectl apply`
//! refuses a bad spec with a readable message; everything else (durations,
//! quantities, the rendered proxy configuration) is checked by the operator
//! and reported in the `Degraded` condition.

// kube's `KubeSchema` derive copies each struct it derives for as a `pub`
// struct inside a function (to build its schema), which `unreachable_pub`
// flags; everything else here is public API, which that lint never flags.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
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
    // `rc` is the short name docs/kubernetes.md documents, but kubectl
    // resolves `rc` to ReplicationControllers first; `rcache` is unambiguous.
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
// Every child is named after the RelayCache, and the apiserver only checks
// that name as a DNS-1123 subdomain (dots, a leading digit, 253 characters).
// The children need more: `NAME` and `NAME-peers` are Services, whose names
// must be DNS-1035 labels (a letter first, no dots, at most 63 characters);
// and the StatefulSet controller labels every pod with
// `controller-revision-hash: NAME-<hash>`, where the hash of the revision is
// at most 10 characters (an FNV-32 number, up to 4294967295, re-encoded
// character for character). A label value is at most 63 characters, so NAME
// may have 63 - 1 - 10 = 52 (the tighter of the bounds: `NAME-peers` needs
// only NAME <= 57, and pod names `NAME-999` NAME <= 59). Checked again by the
// operator (`resources::validate`) for objects stored before these rules.
#[kube(validation = Rule::new(
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
).message("metadata.name must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (it names the RelayCache's Services and StatefulSet)"))]
#[kube(validation = Rule::new(
    "size(self.metadata.name) <= 52"
).message("metadata.name must be at most 52 characters: the StatefulSet controller labels each member with NAME-<10-character revision hash>, and a label value is at most 63 characters"))]
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
    /// How members share entries (mode `ha`): cc-relay's olric settings, same names and meanings.
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
    /// Which namespaces' pods may have a sidecar of this RelayCache injected.
    /// Omitted: its own namespace only.
    #[serde(default, skip_serializing_if = "ClientsSpec::is_own_namespace_only")]
    pub clients: ClientsSpec,
}

/// Namespaces, besides the RelayCache's own, whose injected pods may use it.
/// The operator keeps a copy of the clients' token Secret in each of them
/// (named `RCNAMESPACE.NAME-client-token`, labelled
/// `app.kubernetes.io/managed-by: relaycache-operator`) and removes it when
/// the namespace is no longer allowed or the RelayCache is deleted. A pod in
/// any other namespace that names this RelayCache is admitted without the
/// sidecar, with a warning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientsSpec {
    /// Names of namespaces allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels match are allowed too. An empty selector
    /// (`{}`) matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

impl ClientsSpec {
    /// Whether no other namespace is allowed.
    pub fn is_own_namespace_only(&self) -> bool {
        self.namespaces.is_empty() && self.namespace_selector.is_none()
    }
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
    /// Bytes of answers each member keeps in memory, a quantity such as
    /// `256Mi`; `100Mi` when omitted or null.
    // An Option because the schema says `nullable: true` (a quantity's schema
    // has no type, so the generator marks it nullable): the apiserver then
    // stores `memory: null` as it is, and a plain `Quantity` would fail to
    // deserialize, making the object unreadable and stalling the watch of
    // every RelayCache. `CacheSpec::memory()` applies the default.
    #[serde(default = "default_memory")]
    pub memory: Option<Quantity>,
    /// Who may read an entry: `credential` (per API key), `shared`, or
    /// `header:<name>` (per value of that header).
    #[serde(default = "default_isolation")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self == 'credential' || self == 'shared' || (self.startsWith('header:') && size(self) > 7)").message("cache.isolation must be credential, shared or header:<header-name>"))]
    pub isolation: String,
    /// Record complete streamed (SSE) answers and replay them.
    #[serde(default)]
    pub streaming: bool,
    /// How long after it expired an answer may still be served when the
    /// upstream fails (429, 500, 502, 503, 504, 529, a timeout, unreachable),
    /// such as `10m`; members and injected sidecars keep expired answers
    /// this long. `0s` (the default): off.
    #[serde(default = "default_stale_if_error")]
    #[schemars(length(max = 64))]
    pub stale_if_error: String,
}

impl CacheSpec {
    /// `memory`, or its default when the stored object has `memory: null`.
    pub fn memory(&self) -> Quantity {
        self.memory.clone().unwrap_or_else(default_memory_quantity)
    }
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            memory: default_memory(),
            isolation: default_isolation(),
            streaming: false,
            stale_if_error: default_stale_if_error(),
        }
    }
}

fn default_ttl() -> String {
    "1h".into()
}

fn default_stale_if_error() -> String {
    "0s".into()
}

fn default_memory() -> Option<Quantity> {
    Some(default_memory_quantity())
}

fn default_memory_quantity() -> Quantity {
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
    /// Longest a member that starts (a new pod, a rolling update, a
    /// scale-up) pulls the entries it owns from the other members and the
    /// reserve before it reports ready, such as `2m`; `0s` makes it ready
    /// at once and leaves refilling to repair.
    #[serde(default = "default_warmup_timeout")]
    #[schemars(length(max = 64))]
    pub warmup_timeout: String,
    /// Secret (key `token`) with the members' token: members present it to
    /// each other, and only its holder may replicate, repair, hand off or
    /// purge. Omitted: the operator generates the Secret `NAME-member-token`
    /// (32 random bytes as hex), owned by the RelayCache and never
    /// overwritten; delete it to get a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretName>,
    /// Secret (key `token`) with the clients' token, which injected sidecars
    /// present: a member accepts its holder as a client (reads, and writes
    /// it recomputes the key of). Must differ from the members' token.
    /// Omitted: the operator generates the Secret `NAME-client-token`. It is
    /// copied into every namespace `clients` allows, never the members' token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token_secret: Option<SecretName>,
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
            warmup_timeout: default_warmup_timeout(),
            token_secret: None,
            client_token_secret: None,
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

fn default_warmup_timeout() -> String {
    "2m".into()
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
    /// `file:///var/lib/relaycache/reserve` (a volume per member, mounted at
    /// that absolute path) or `memory://`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(file|s3|s3a|gs|az|azure|abfs|abfss|memory)://')").message("reserve.url must start with file://, s3://, gs://, az:// or memory://"))]
    // The path of a file:// URL becomes a volume's mountPath, which must be
    // absolute; `file://data` (two slashes) would name a relative path.
    #[x_kube(validation = Rule::new("!self.startsWith('file://') || (self.matches('^file:///[^/?#%][^?#%]*$') && !self.matches('/[.][.]?(/|$)'))").message("a file:// reserve.url needs an absolute path, such as file:///var/lib/relaycache/reserve (three slashes; no '.' or '..' segments, '?', '#' or '%')"))]
    #[x_kube(validation = Rule::new("!self.matches('^file:///(tmp/*|etc/relaycache(/.*)?)$')").message("reserve.url: /tmp and /etc/relaycache are the member's own volumes; put a file:// reserve elsewhere, such as file:///var/lib/relaycache/reserve"))]
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
    /// Passed literally (a `${...}` in them is not a variable): put
    /// credentials in `credentialsSecret` under the store's usual names.
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
    /// `Ready`, `Progressing` and `Degraded`; `Purged` once the annotation
    /// `relaycache.io/purge-before` has been acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last purge the annotation `relaycache.io/purge-before` asked for
    /// and the members confirmed. A value of the annotation equal to
    /// `lastPurge.before` has been applied and is not applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_purge: Option<LastPurge>,
}

/// A purge of every entry created before a time, done by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPurge {
    /// The annotation's value as written: entries created before this
    /// RFC 3339 time were removed.
    pub before: String,
    /// When the member confirmed the purge (RFC 3339).
    pub time: String,
    /// Entries removed, summed over memory, every member and the reserve.
    pub removed: i64,
    /// The member that was asked (it purges every member and the reserve).
    pub member: String,
}

/// The CRD as YAML, as `crdgen` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&RelayCache::crd())?;
    Ok(format!(
        "# Generated by `relaycache-operator crdgen`; do not edit. Regenerate with `make crds`.\n{body}"
    ))
}

#[cfg(test)]
mod tests;
