//! The webhook's handler against recorded AdmissionReviews
//! (`tests/fixtures/admission/`): the returned JSONPatch is applied to the
//! pod from the review, and the resulting pod is checked.
//!
//! The only stand-in is the RelayCache lookup (an in-memory map instead of
//! the apiserver); the handler, the injection rules and the patch are real.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::admission::AdmissionReview;
use kube::core::DynamicObject;
use relaycache_config::{Config, Mode};
use relaycache_operator::crd::RelayCache;
use relaycache_operator::webhook::inject::{Found, InjectSettings, NamespaceLabels};
use relaycache_operator::webhook::{BadReview, Handler, Lookup, LookupFuture, NamespaceFuture};
use serde_json::{json, Value};

/// RelayCaches by `namespace/name`, and the labels of each namespace.
struct Store {
    relaycaches: BTreeMap<String, RelayCache>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Lookup for Store {
    fn get(&self, namespace: &str, name: &str) -> LookupFuture {
        let found = match self.relaycaches.get(&format!("{namespace}/{name}")) {
            Some(rc) => Found::Present(Box::new(rc.clone())),
            None => Found::Missing,
        };
        Box::pin(async move { found })
    }

    fn namespace_labels(&self, name: &str) -> NamespaceFuture {
        let found = match self.namespaces.get(name) {
            Some(labels) => NamespaceLabels::Found(labels.clone()),
            None => NamespaceLabels::Failed(format!("namespaces \"{name}\" not found")),
        };
        Box::pin(async move { found })
    }
}

fn relaycache(namespace: &str, name: &str, spec: Value) -> RelayCache {
    serde_json::from_value(json!({
        "apiVersion": "relaycache.io/v1alpha1",
        "kind": "RelayCache",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .unwrap()
}

fn handler(native_sidecars: bool) -> Handler {
    let store = [
        relaycache(
            "apps",
            "web",
            json!({
                "replicas": 3,
                "cache": {"ttl": "2h", "isolation": "shared", "streaming": true},
                "replication": {"replicaCount": 3, "readQuorum": 2, "writeQuorum": 2,
                                "memberCountQuorum": 2, "environment": "wan",
                                "tokenSecret": {"name": "web-peer-token"}},
                "reserve": {"url": "s3://bucket/llm"},
                "sidecar": {"image": "relaycache/relaycache:0.1.0-sidecar", "memory": "64Mi"}
            }),
        ),
        relaycache(
            "cache",
            "shared",
            json!({"image": "relaycache/relaycache:0.1.0-team", "replication": {"tokenSecret": {"name": "shared-token"}},
                   "clients": {"namespaces": ["apps"]}}),
        ),
        relaycache("cache", "private", json!({})),
        relaycache(
            "cache",
            "by-label",
            json!({"clients": {"namespaceSelector": {"matchLabels": {"relaycache.io/client": "true"}}}}),
        ),
        relaycache(
            "apps",
            "sized",
            json!({"sidecar": {"resources": {
                "requests": {"cpu": "150m", "memory": "96Mi"},
                "limits": {"memory": "96Mi"}
            }}}),
        ),
    ]
    .into_iter()
    .map(|rc| {
        let key = format!(
            "{}/{}",
            rc.metadata.namespace.clone().unwrap(),
            rc.metadata.name.clone().unwrap()
        );
        (key, rc)
    })
    .collect();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let namespaces = BTreeMap::from([
        (
            "apps".to_string(),
            labels(&[("relaycache.io/client", "true")]),
        ),
        ("other".to_string(), labels(&[("team", "b")])),
    ]);
    Handler {
        settings: InjectSettings {
            default_image: "relaycache/relaycache:0.1.0".into(),
            native_sidecars,
        },
        lookup: Arc::new(Store {
            relaycaches: store,
            namespaces,
        }),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the webhook answered, and the pod after applying its patch.
struct Outcome {
    response: Value,
    before: Pod,
    after: Pod,
}

async fn run(name: &str, native_sidecars: bool) -> Outcome {
    let body = fixture(name);
    let review = handler(native_sidecars).review(&body).await.unwrap();
    let response = serde_json::to_value(&review).unwrap();
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    let input: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["response"]["uid"], input["request"]["uid"]);
    let mut pod = input["request"]["object"].clone();
    let before: Pod = serde_json::from_value(pod.clone()).unwrap();
    let reply: AdmissionReview<DynamicObject> = serde_json::from_value(response.clone()).unwrap();
    if let Some(patch) = reply.response.as_ref().and_then(|r| r.patch.clone()) {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    let after: Pod = serde_json::from_value(pod).unwrap();
    Outcome {
        response: response["response"].clone(),
        before,
        after,
    }
}

fn warnings(outcome: &Outcome) -> Vec<String> {
    serde_json::from_value(outcome.response["warnings"].clone()).unwrap_or_default()
}

fn all_containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

fn sidecars(pod: &Pod) -> Vec<&Container> {
    all_containers(pod)
        .into_iter()
        .filter(|c| c.name == "relaycache")
        .collect()
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The config the proxy would read from `RELAYCACHE_CONFIG_YAML`, after the
/// kubelet (`$$` → `$`) and the proxy (`${RELAYCACHE_CLIENT_TOKEN}`)
/// expanded it. Any other variable left unset fails the load, as in the pod.
fn sidecar_config(sidecar: &Container) -> Config {
    let raw = env(sidecar, "RELAYCACHE_CONFIG_YAML").expect("config env");
    let from_kubelet = raw.replace("$$", "$");
    let expanded = relaycache_config::expand_env(&from_kubelet, |name| {
        (name == "RELAYCACHE_CLIENT_TOKEN").then(|| "clients-s3cret".to_string())
    })
    .unwrap();
    let config = Config::from_yaml(&expanded).unwrap();
    config.validate().unwrap();
    config
}

/// The `secretKeyRef` of the sidecar's `RELAYCACHE_CLIENT_TOKEN`; the
/// sidecar has no other token variable.
fn token_ref(sidecar: &Container) -> &k8s_openapi::api::core::v1::SecretKeySelector {
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "RELAYCACHE_PEER_TOKEN"),
        "the members' token never reaches a sidecar"
    );
    let token = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RELAYCACHE_CLIENT_TOKEN")
        .expect("RELAYCACHE_CLIENT_TOKEN env");
    assert!(
        token.value.is_none(),
        "the token's value is never in the pod"
    );
    token
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("secretKeyRef")
}

fn assert_restricted(container: &Container, pod: &Pod) {
    let sc = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_none_or(|a| a.is_empty()));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let pod_user = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.run_as_user);
    let user = sc.run_as_user.or(pod_user);
    assert!(matches!(user, Some(uid) if uid != 0), "runs as {user:?}");
}

#[tokio::test]
async fn a_deployment_pod_gets_a_native_sidecar_in_client_mode() {
    let out = run("inject-deployment-pod.json", true).await;
    assert_eq!(out.response["allowed"], true);
    assert_eq!(warnings(&out), Vec::<String>::new());
    let pod = &out.after;
    let spec = pod.spec.as_ref().unwrap();

    // Exactly one sidecar, first among the init containers, restartable.
    assert_eq!(sidecars(pod).len(), 1);
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits[0].name, "relaycache");
    assert_eq!(inits[1].name, "migrate");
    assert_eq!(spec.containers.len(), 2);
    let sidecar = &inits[0];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.image.as_deref(),
        Some("relaycache/relaycache:0.1.0-sidecar")
    );
    assert_eq!(sidecar.args.as_deref(), Some(&["serve".to_string()][..]));
    assert_restricted(sidecar, pod);
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(65532)
    );
    assert!(
        sidecar.readiness_probe.is_none(),
        "must not gate the app's readiness"
    );
    let startup = sidecar
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/healthz"));

    // The clients' token comes by reference from the RelayCache's own
    // Secret (the pod shares its namespace); its value is nowhere in the
    // pod, and the members' Secret (web-peer-token) is never named.
    let secret = token_ref(sidecar);
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("web-client-token", "token")
    );
    assert_eq!(secret.optional, Some(false));
    let pod_text = serde_json::to_string(pod).unwrap();
    assert!(!pod_text.contains("web-peer-token"), "{pod_text}");

    // The admin port is named, so a PodMonitor can scrape every sidecar.
    let ports: Vec<(Option<&str>, i32)> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(ports, [(Some("relaycache-adm"), 9787)]);
    assert_eq!(
        relaycache_operator::webhook::inject::ADMIN_PORT_NAME,
        "relaycache-adm"
    );

    let config = sidecar_config(sidecar);
    assert_eq!(config.server.listen, "127.0.0.1:8787");
    assert_eq!(config.server.admin_listen, "0.0.0.0:9787");
    assert_eq!(config.cache.mode, Mode::Ha);
    let ha = &config.cache.ha;
    assert!(!ha.embedded, "client mode");
    assert_eq!(ha.addresses, ["web.apps.svc:3320"]);
    assert!(ha.peers.is_empty());
    assert_eq!(ha.token, "", "no members' token");
    assert_eq!(ha.client_token, "clients-s3cret");
    assert_eq!(
        (
            ha.replica_count,
            ha.read_quorum,
            ha.write_quorum,
            ha.member_count_quorum
        ),
        (3, 2, 2, 2)
    );
    assert_eq!(ha.environment, relaycache_config::Environment::Wan);
    assert_eq!(config.cache.ttl, std::time::Duration::from_secs(7200));
    assert!(config.cache.streaming);
    assert_eq!(config.cache.isolation, relaycache_config::Isolation::Shared);
    assert_eq!(config.cache.memory.max_cost, 64 << 20);
    assert!(
        config.cache.reserve.url.is_empty(),
        "the reserve stays with the members"
    );

    // App containers, and init containers (the native sidecar runs first), get the URLs.
    for name in ["app", "worker", "migrate"] {
        let c = all_containers(pod)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        assert_eq!(
            env(c, "ANTHROPIC_BASE_URL"),
            Some("http://127.0.0.1:8787"),
            "{name}"
        );
        assert_eq!(
            env(c, "OPENAI_BASE_URL"),
            Some("http://127.0.0.1:8787/v1"),
            "{name}"
        );
    }
    let worker = spec.containers.iter().find(|c| c.name == "worker").unwrap();
    assert_eq!(env(worker, "LOG_LEVEL"), Some("info"), "existing env kept");

    // Scratch volume for the read-only root, status annotation.
    let volumes = spec.volumes.as_ref().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v.name == "relaycache-tmp" && v.empty_dir.is_some()));
    assert!(volumes.iter().any(|v| v.name == "kube-api-access-x2v9q"));
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations
            .get("relaycache.io/injected")
            .map(String::as_str),
        Some("web")
    );
}

#[tokio::test]
async fn before_1_29_the_sidecar_is_a_regular_container() {
    let out = run("inject-deployment-pod.json", false).await;
    let spec = out.after.spec.as_ref().unwrap();
    assert_eq!(sidecars(&out.after).len(), 1);
    let last = spec.containers.last().unwrap();
    assert_eq!(last.name, "relaycache");
    assert!(last.restart_policy.is_none());
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits.len(), 1);
    // Init containers run before a regular sidecar exists: no URLs for them.
    assert_eq!(env(&inits[0], "ANTHROPIC_BASE_URL"), None);
    assert_eq!(
        env(&spec.containers[0], "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:8787")
    );
}

#[tokio::test]
async fn injecting_twice_changes_nothing_the_second_time() {
    let first = run("inject-deployment-pod.json", true).await;
    // Feed the injected pod back, as the apiserver does on re-invocation.
    let mut input: Value = serde_json::from_slice(&fixture("inject-deployment-pod.json")).unwrap();
    input["request"]["object"] = serde_json::to_value(&first.after).unwrap();
    let review = handler(true)
        .review(&serde_json::to_vec(&input).unwrap())
        .await
        .unwrap();
    let response = review.response.unwrap();
    assert!(response.allowed);
    assert!(
        response.patch.is_none(),
        "{:?}",
        response.patch.map(String::from_utf8)
    );
}

#[tokio::test]
async fn an_already_injected_pod_is_admitted_unchanged() {
    let out = run("already-injected.json", true).await;
    assert_eq!(out.response["allowed"], true);
    assert!(out.response.get("patch").is_none());
    assert_eq!(out.after, out.before);
}

#[tokio::test]
async fn reinvocation_only_adds_the_urls_to_containers_added_since() {
    let out = run("reinvoked-after-another-webhook.json", true).await;
    assert_eq!(sidecars(&out.after).len(), 1);
    let spec = out.after.spec.as_ref().unwrap();
    let mesh = spec
        .containers
        .iter()
        .find(|c| c.name == "mesh-proxy")
        .unwrap();
    assert_eq!(
        env(mesh, "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:8787/v1")
    );
    let app = spec.containers.iter().find(|c| c.name == "app").unwrap();
    assert_eq!(app.env.as_ref().unwrap().len(), 2, "no duplicates");
}

#[tokio::test]
async fn host_network_pods_are_skipped_with_a_warning() {
    let out = run("host-network.json", true).await;
    assert_eq!(out.response["allowed"], true);
    assert_eq!(out.after, out.before);
    let w = warnings(&out);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("hostNetwork"), "{w:?}");
}

#[tokio::test]
async fn an_unknown_relaycache_admits_unchanged_naming_what_is_missing() {
    let out = run("unknown-relaycache.json", true).await;
    assert_eq!(out.response["allowed"], true);
    assert_eq!(out.after, out.before);
    let w = warnings(&out);
    assert!(w[0].contains("RelayCache apps/nope not found"), "{w:?}");
}

#[tokio::test]
async fn namespace_dot_name_uses_a_relaycache_elsewhere() {
    let out = run("other-namespace.json", true).await;
    assert_eq!(out.response["allowed"], true);
    let pod = &out.after;
    let sidecar = sidecars(pod)[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("relaycache/relaycache:0.1.0-team")
    );
    let config = sidecar_config(sidecar);
    assert_eq!(config.cache.ha.addresses, ["shared.cache.svc:3320"]);
    // Default L1 of a sidecar when the RelayCache sets none.
    assert_eq!(config.cache.memory.max_cost, 32 << 20);
    // The operator's copy of the clients' Secret in the pod's namespace,
    // named after the RelayCache's namespace and name; required, so the
    // kubelet waits for the copy rather than start a sidecar the members
    // would refuse.
    let secret = token_ref(sidecar);
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("cache.shared-client-token", "token")
    );
    assert_eq!(secret.optional, Some(false));
    assert_eq!(config.cache.ha.token, "");
    assert_eq!(config.cache.ha.client_token, "clients-s3cret");
    assert_eq!(warnings(&out), Vec::<String>::new());
    assert_eq!(out.response["allowed"], true);
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("relaycache.io/injected")
            .map(String::as_str),
        Some("cache.shared")
    );
}

#[tokio::test]
async fn urls_the_app_sets_itself_are_kept() {
    let out = run("env-already-set.json", true).await;
    let app = &out.after.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        env(app, "ANTHROPIC_BASE_URL"),
        Some("https://gateway.example.com")
    );
    assert_eq!(
        env(app, "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:8787/v1")
    );
    assert_eq!(app.env.as_ref().unwrap().len(), 2);
}

#[tokio::test]
async fn annotations_override_image_and_resources() {
    let out = run("annotation-overrides.json", false).await;
    let sidecar = sidecars(&out.after)[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example.com/relaycache:0.1.1")
    );
    let resources = sidecar.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "200m");
    assert_eq!(requests["memory"].0, "256Mi");
    assert_eq!(limits["memory"].0, "256Mi");
    assert!(
        !limits.contains_key("cpu"),
        "no CPU limit: throttling a proxy adds latency"
    );
    // The pod runs as 1000: the sidecar inherits it instead of forcing 65532.
    assert_eq!(sidecar.security_context.as_ref().unwrap().run_as_user, None);
    assert_restricted(sidecar, &out.after);
}

#[tokio::test]
async fn a_bad_override_refuses_the_pod_saying_what_to_write() {
    let out = run("bad-override.json", true).await;
    assert_eq!(out.response["allowed"], false);
    assert!(out.response.get("patch").is_none());
    let message = out.response["status"]["message"].as_str().unwrap();
    // The annotation, the bad value, and a good value to write instead.
    assert!(
        message.contains("relaycache.io/sidecar-memory=\"lots\""),
        "{message}"
    );
    assert!(
        message.contains("relaycache.io/sidecar-memory: \"128Mi\""),
        "{message}"
    );
}

#[tokio::test]
async fn every_bad_override_is_named_with_its_value_and_an_example() {
    let input: Value = serde_json::from_slice(&fixture("bad-override.json")).unwrap();
    for (annotation, bad, example) in [
        (
            "relaycache.io/sidecar-cpu",
            "fast",
            "relaycache.io/sidecar-cpu: \"100m\"",
        ),
        (
            "relaycache.io/sidecar-memory",
            "0",
            "relaycache.io/sidecar-memory: \"128Mi\"",
        ),
        (
            "relaycache.io/sidecar-image",
            "not an image",
            "relaycache.io/sidecar-image: \"relaycache/relaycache:0.1.0\"",
        ),
    ] {
        let mut input = input.clone();
        input["request"]["object"]["metadata"]["annotations"] = json!({ annotation: bad });
        let review = handler(true)
            .review(&serde_json::to_vec(&input).unwrap())
            .await
            .unwrap();
        let response = review.response.unwrap();
        assert!(!response.allowed, "{annotation}={bad} was admitted");
        assert!(response.patch.is_none());
        let message = &response.result.message;
        assert!(
            message.contains(&format!("{annotation}={bad:?}")),
            "{annotation}: {message}"
        );
        assert!(message.contains(example), "{annotation}: {message}");
    }
}

#[tokio::test]
async fn sidecar_resources_of_the_relaycache_apply_without_annotations() {
    let out = run("sidecar-resources-from-relaycache.json", true).await;
    assert_eq!(out.response["allowed"], true);
    let sidecar = sidecars(&out.after)[0];
    let resources = sidecar.resources.as_ref().unwrap();
    let quantities = |map: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        map.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        quantities(&resources.requests),
        BTreeMap::from([
            ("cpu".into(), "150m".into()),
            ("memory".into(), "96Mi".into())
        ])
    );
    assert_eq!(
        quantities(&resources.limits),
        BTreeMap::from([("memory".into(), "96Mi".into())])
    );

    // An annotation overrides only what it names; the rest stays the RelayCache's.
    let mut input: Value =
        serde_json::from_slice(&fixture("sidecar-resources-from-relaycache.json")).unwrap();
    input["request"]["object"]["metadata"]["annotations"] =
        json!({"relaycache.io/sidecar-cpu": "300m"});
    let review = handler(true)
        .review(&serde_json::to_vec(&input).unwrap())
        .await
        .unwrap();
    let patch = review.response.unwrap().patch.unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = input["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let resources = sidecars(&pod)[0].resources.clone().unwrap();
    assert_eq!(
        quantities(&resources.requests),
        BTreeMap::from([
            ("cpu".into(), "300m".into()),
            ("memory".into(), "96Mi".into())
        ])
    );
    assert_eq!(
        quantities(&resources.limits),
        BTreeMap::from([("memory".into(), "96Mi".into())])
    );
}

#[tokio::test]
async fn malformed_reviews_are_rejected_with_the_reason() {
    for (name, expected) in [
        (
            "malformed-review.json",
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        ("review-without-request.json", "has no request"),
    ] {
        let err: BadReview = handler(true).review(&fixture(name)).await.unwrap_err();
        assert!(err.0.contains(expected), "{name}: {err}");
    }
}

#[tokio::test]
async fn other_operations_and_kinds_pass_untouched() {
    let mut input: Value = serde_json::from_slice(&fixture("inject-deployment-pod.json")).unwrap();
    input["request"]["operation"] = json!("UPDATE");
    let review = handler(true)
        .review(&serde_json::to_vec(&input).unwrap())
        .await
        .unwrap();
    let response = review.response.unwrap();
    assert!(response.allowed && response.patch.is_none() && response.warnings.is_none());
}

/// The decoder and the injection rules never panic: any body, and any
/// recorded review with one value replaced by another kind of JSON value,
/// is answered or refused with a reason.
#[test]
fn any_body_is_answered_or_refused_never_a_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as Cases, TestRunner};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handler = handler(true);
    let mut runner = TestRunner::new(Cases::with_cases(256));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |body| {
            let _ = runtime.block_on(handler.review(&body));
            Ok(())
        })
        .unwrap();

    let fixtures: Vec<Value> = std::fs::read_dir(format!(
        "{}/tests/fixtures/admission",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.ok()?.path()).ok()?).ok())
    .collect();
    assert!(fixtures.len() >= 10, "the recorded reviews are there");
    let replacement = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"name": ""}])),
    ];
    let strategy = (
        prop::sample::select(fixtures),
        any::<prop::sample::Index>(),
        replacement,
    );
    runner
        .run(&strategy, |(mut review, at, value)| {
            // Replace the at-th value of the review (depth-first) by `value`.
            fn visit(node: &mut Value, target: &mut usize, value: &Value) -> bool {
                if *target == 0 {
                    *node = value.clone();
                    return true;
                }
                *target -= 1;
                match node {
                    Value::Object(map) => map.values_mut().any(|v| visit(v, target, value)),
                    Value::Array(items) => items.iter_mut().any(|v| visit(v, target, value)),
                    _ => false,
                }
            }
            let mut target = at.index(400);
            visit(&mut review, &mut target, &value);
            let body = serde_json::to_vec(&review).unwrap();
            let _ = runtime.block_on(handler.review(&body));
            Ok(())
        })
        .unwrap();
}

/// The recorded review of a pod in `namespace` labelled `label`.
fn review_in(namespace: &str, label: &str) -> Vec<u8> {
    let mut input: Value = serde_json::from_slice(&fixture("other-namespace.json")).unwrap();
    input["request"]["namespace"] = json!(namespace);
    input["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    input["request"]["object"]["metadata"]["labels"]["relaycache.io/inject"] = json!(label);
    serde_json::to_vec(&input).unwrap()
}

/// The response to `body`: allowed, its sidecar if injected, its warnings.
async fn answer(body: &[u8]) -> (bool, Option<Pod>, Vec<String>) {
    let review = handler(true).review(body).await.unwrap();
    let response = review.response.unwrap();
    let pod = response.patch.as_ref().map(|patch| {
        let input: Value = serde_json::from_slice(body).unwrap();
        let mut pod = input["request"]["object"].clone();
        let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
        serde_json::from_value(pod).unwrap()
    });
    (response.allowed, pod, response.warnings.unwrap_or_default())
}

#[tokio::test]
async fn a_namespace_the_relaycache_does_not_serve_gets_no_sidecar_and_a_warning() {
    let (allowed, pod, warnings) = answer(&review_in("apps", "cache.private")).await;
    assert!(allowed, "the app still starts");
    assert!(pod.is_none(), "no sidecar, no patch");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for part in [
        "RelayCache cache/private does not serve namespace apps",
        "admitted without the sidecar",
        "spec.clients.namespaces",
    ] {
        assert!(warnings[0].contains(part), "{part}: {warnings:?}");
    }
}

#[tokio::test]
async fn a_namespace_selector_allows_the_namespaces_it_matches() {
    // `apps` carries relaycache.io/client=true: injected, with the copy.
    let (allowed, pod, warnings) = answer(&review_in("apps", "cache.by-label")).await;
    assert!(allowed);
    assert_eq!(warnings, Vec::<String>::new());
    let pod = pod.expect("injected");
    let secret = token_ref(sidecars(&pod)[0]);
    assert_eq!(secret.name, "cache.by-label-client-token");

    // `other` does not match: no sidecar, and the warning names the fields.
    let (allowed, pod, warnings) = answer(&review_in("other", "cache.by-label")).await;
    assert!(allowed && pod.is_none());
    assert!(
        warnings[0].contains("spec.clients.namespaceSelector"),
        "{warnings:?}"
    );

    // A namespace whose labels cannot be read: no sidecar, and why.
    let (allowed, pod, warnings) = answer(&review_in("gone", "cache.by-label")).await;
    assert!(allowed && pod.is_none());
    assert!(
        warnings[0].contains("cannot read namespace gone"),
        "{warnings:?}"
    );
}
