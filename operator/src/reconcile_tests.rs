//! Controller tests against a scripted apiserver (`crate::testing`): each
//! test drives one `reconcile` and checks every request it makes, in order.
//! A mocked apiserver stands in for a real one, which `cargo test` cannot
//! start; the e2e suite runs the operator against a real control plane.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::purge::tests::FakeAdmin;
use super::purge::PURGE_ANNOTATION;
use super::{reconcile, Context, Error};
use crate::crd::{RelayCache, RelayCacheStatus};
use crate::metrics::Metrics;
use crate::resources::testing::{rc, settings};
use crate::testing::{ApiServer, Call};

const NS: &str = "/api/v1/namespaces/cache";
const STS: &str = "/apis/apps/v1/namespaces/cache/statefulsets/web";
const PDB: &str = "/apis/policy/v1/namespaces/cache/poddisruptionbudgets/web";
const STATUS: &str = "/apis/relaycache.io/v1alpha1/namespaces/cache/relaycaches/web/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/cache/events";

fn context(client: kube::Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        settings(),
        Arc::new(Metrics::default()),
        Some("op-0".into()),
    ))
}

/// A server-side apply by the operator's single field manager.
fn assert_apply(call: &Call, kind: &str) {
    assert_eq!(call.method, Method::PATCH);
    assert_eq!(
        call.content_type, "application/apply-patch+yaml",
        "{}",
        call.path
    );
    assert_eq!(
        call.query.get("fieldManager").map(String::as_str),
        Some("relaycache-operator"),
        "{}",
        call.path
    );
    assert_eq!(call.query.get("force").map(String::as_str), Some("true"));
    assert_eq!(call.body["kind"], kind);
}

fn assert_owned(call: &Call) {
    let refs = call.body["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(refs.len(), 1, "{}", call.path);
    assert_eq!(refs[0]["apiVersion"], "relaycache.io/v1alpha1");
    assert_eq!(refs[0]["kind"], "RelayCache");
    assert_eq!(refs[0]["name"], "web");
    assert_eq!(refs[0]["uid"], "uid-web");
    assert_eq!(refs[0]["controller"], true);
    assert_eq!(
        call.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "relaycache-operator"
    );
}

/// The bodies of the five applies, answered as an apiserver would; the
/// StatefulSet comes back with `sts_status`.
struct Applied {
    peers: Value,
    client: Value,
    config_map: Value,
    stateful_set: Value,
    pdb: Value,
}

impl Applied {
    fn all(&self) -> [&Value; 5] {
        [
            &self.peers,
            &self.client,
            &self.config_map,
            &self.stateful_set,
            &self.pdb,
        ]
    }

    fn peers_in_config(&self) -> Vec<String> {
        let text = self.config_map["data"]["relaycache.yaml"].as_str().unwrap();
        let config: relaycache_config::Config =
            serde_yaml_ng::from_str(text.split_once('\n').unwrap().1).unwrap();
        config.cache.ha.peers
    }

    fn template_hash(&self) -> String {
        self.stateful_set["spec"]["template"]["metadata"]["annotations"]
            ["relaycache.io/config-hash"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The two Services' applies, answered with what was sent; their bodies.
async fn expect_service_applies(server: &mut ApiServer) -> Vec<Value> {
    let mut bodies = Vec::new();
    for path in [
        format!("{NS}/services/web-peers"),
        format!("{NS}/services/web"),
    ] {
        let call = server.expect(Method::PATCH, &path).await;
        assert_apply(&call, "Service");
        assert_owned(&call);
        bodies.push(call.body.clone());
        let body = call.body.clone();
        call.respond(body).await;
    }
    bodies
}

/// What the reads before any write find under the children's names.
struct NameChecks {
    /// Objects found, by `Kind/name`; every other name is free (404).
    existing: BTreeMap<String, Value>,
    /// The members' token Secret is the operator's (no `tokenSecret`).
    member_token_generated: bool,
    /// The clients' token Secret is the operator's (no `clientTokenSecret`).
    client_token_generated: bool,
}

impl Default for NameChecks {
    fn default() -> Self {
        Self {
            existing: BTreeMap::new(),
            member_token_generated: true,
            client_token_generated: true,
        }
    }
}

impl NameChecks {
    /// A settled RelayCache of `spec`: every child exists and is owned, the
    /// StatefulSet as built from `spec`.
    fn settled(spec: Value) -> Self {
        let owned = |name: &str| {
            json!({"metadata": {"name": name, "namespace": "cache", "uid": format!("uid-of-{name}"),
                "ownerReferences": [{"apiVersion": "relaycache.io/v1alpha1", "kind": "RelayCache",
                                     "name": "web", "uid": "uid-web", "controller": true}]}})
        };
        let mut existing: BTreeMap<String, Value> = CHILD_NAMES
            .iter()
            .map(|(kind, name, _)| (format!("{kind}/{name}"), owned(name)))
            .collect();
        existing.insert("StatefulSet/web".into(), stored_sts(spec));
        Self {
            existing,
            ..Self::default()
        }
    }
}

/// Every name a reconcile checks before writing, in order: kind, name, path.
const CHILD_NAMES: [(&str, &str, &str); 7] = [
    (
        "Service",
        "web-peers",
        "/api/v1/namespaces/cache/services/web-peers",
    ),
    ("Service", "web", "/api/v1/namespaces/cache/services/web"),
    (
        "ConfigMap",
        "web",
        "/api/v1/namespaces/cache/configmaps/web",
    ),
    ("StatefulSet", "web", STS),
    ("PodDisruptionBudget", "web", PDB),
    (
        "Secret",
        "web-member-token",
        "/api/v1/namespaces/cache/secrets/web-member-token",
    ),
    (
        "Secret",
        "web-client-token",
        "/api/v1/namespaces/cache/secrets/web-client-token",
    ),
];

/// The reads of every child's name (the StatefulSet's also compares its
/// volume claim templates), answered from `checks`.
async fn expect_name_checks(server: &mut ApiServer, checks: &NameChecks) {
    for (kind, name, path) in CHILD_NAMES {
        let generated = match name {
            "web-member-token" => checks.member_token_generated,
            "web-client-token" => checks.client_token_generated,
            _ => true,
        };
        if !generated {
            continue;
        }
        let call = server.expect(Method::GET, path).await;
        match checks.existing.get(&format!("{kind}/{name}")) {
            Some(found) => call.respond(found.clone()).await,
            None => call.not_found().await,
        }
    }
}

/// The StatefulSet of `spec` as the apiserver would return it.
fn stored_sts(spec: Value) -> Value {
    let children = crate::resources::build(&rc("web", spec), &settings()).unwrap();
    serde_json::to_value(children.stateful_set).unwrap()
}

async fn expect_applies(server: &mut ApiServer, sts_generation: i64, sts_status: Value) -> Applied {
    expect_applies_over(server, None, sts_generation, sts_status).await
}

/// Every apply of a reconcile, over an `existing` StatefulSet (None: a new one).
async fn expect_applies_over(
    server: &mut ApiServer,
    existing: Option<Value>,
    sts_generation: i64,
    sts_status: Value,
) -> Applied {
    match existing {
        Some(sts) => {
            let mut checks = NameChecks::settled(json!({}));
            checks.existing.insert("StatefulSet/web".into(), sts);
            expect_name_checks(server, &checks).await;
        }
        None => {
            expect_name_checks(server, &NameChecks::default()).await;
            expect_token_secret_created(server, "web-member-token").await;
            expect_token_secret_created(server, "web-client-token").await;
        }
    }
    expect_child_applies(server, sts_generation, sts_status).await
}

/// The applies of the five children, once the names are checked and the
/// token Secrets exist.
async fn expect_child_applies(
    server: &mut ApiServer,
    sts_generation: i64,
    sts_status: Value,
) -> Applied {
    let mut bodies = expect_service_applies(server).await;
    for (path, kind) in [
        (format!("{NS}/configmaps/web"), "ConfigMap"),
        (STS.to_string(), "StatefulSet"),
        (PDB.to_string(), "PodDisruptionBudget"),
    ] {
        let call = server.expect(Method::PATCH, &path).await;
        assert_apply(&call, kind);
        assert_owned(&call);
        let mut answer = call.body.clone();
        if kind == "StatefulSet" {
            answer["metadata"]["generation"] = json!(sts_generation);
            answer["status"] = sts_status.clone();
        }
        bodies.push(call.body.clone());
        call.respond(answer).await;
    }
    let [peers, client, config_map, stateful_set, pdb] = bodies.try_into().unwrap();
    Applied {
        peers,
        client,
        config_map,
        stateful_set,
        pdb,
    }
}

/// The status write: an apply on the status subresource; answered with the
/// RelayCache carrying it. Returns the status written.
async fn expect_status(server: &mut ApiServer, rc: &RelayCache) -> RelayCacheStatus {
    let call = server.expect(Method::PATCH, STATUS).await;
    assert_apply(&call, "RelayCache");
    assert_eq!(call.body["apiVersion"], "relaycache.io/v1alpha1");
    assert!(
        call.body.get("spec").is_none(),
        "status apply carries no spec"
    );
    let status: RelayCacheStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
    let mut answer = serde_json::to_value(rc).unwrap();
    answer["status"] = call.body["status"].clone();
    call.respond(answer).await;
    status
}

/// The next Events, as (type, reason) pairs, each about RelayCache `web`.
async fn expect_events(server: &mut ApiServer, count: usize) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let call = server.expect(Method::POST, EVENTS).await;
        assert_eq!(call.body["regarding"]["kind"], "RelayCache");
        assert_eq!(call.body["regarding"]["name"], "web");
        assert_eq!(call.body["reportingController"], "relaycache-operator");
        assert_eq!(call.body["reportingInstance"], "op-0");
        seen.push((
            call.body["type"].as_str().unwrap().to_string(),
            call.body["reason"].as_str().unwrap().to_string(),
        ));
        let body = call.body.clone();
        call.respond(body).await;
    }
    seen
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn condition<'a>(status: &'a RelayCacheStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

/// A status as the operator would have written it after a settled cluster.
fn settled_status(hash: &str, replicas: i32) -> RelayCacheStatus {
    let since = Time(Timestamp::from_second(1_800_000_000).unwrap());
    let c = |type_: &str, status: &str, reason: &str| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: since.clone(),
            observed_generation: Some(1),
        }
    };
    RelayCacheStatus {
        observed_generation: Some(1),
        replicas,
        ready_replicas: replicas,
        selector: Some("x".into()),
        config_hash: Some(hash.into()),
        conditions: vec![
            c("Ready", "True", "AllMembersReady"),
            c("Progressing", "False", "Reconciled"),
            c("Degraded", "False", "Reconciled"),
        ],
        last_purge: None,
    }
}

#[tokio::test]
async fn create_applies_every_child_then_writes_status_and_events() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(rc("web", json!({"replicas": 3})));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));

    // A new StatefulSet: its controller has not counted any member yet.
    let applied = expect_applies(&mut server, 1, json!({"replicas": 0})).await;
    assert_eq!(applied.peers["spec"]["clusterIP"], "None");
    assert_eq!(applied.peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(applied.client["spec"]["ports"][0]["port"], 8787);
    assert_eq!(
        applied.peers_in_config(),
        [
            "web-0.web-peers.cache.svc:3320",
            "web-1.web-peers.cache.svc:3320",
            "web-2.web-peers.cache.svc:3320"
        ]
    );
    assert_eq!(applied.stateful_set["spec"]["replicas"], 3);
    assert_eq!(applied.stateful_set["spec"]["serviceName"], "web-peers");
    assert_eq!(applied.pdb["spec"]["maxUnavailable"], 1);

    let status = expect_status(&mut server, &rc).await;
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!((status.replicas, status.ready_replicas), (0, 0));
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/component=cache,app.kubernetes.io/instance=web,app.kubernetes.io/name=relaycache")
    );
    assert_eq!(status.config_hash, Some(applied.template_hash()));
    assert_eq!(condition(&status, "Ready"), ("False", "MembersNotReady"));
    assert_eq!(condition(&status, "Progressing"), ("True", "Scaling"));
    assert_eq!(condition(&status, "Degraded"), ("False", "Reconciled"));

    // First sight: only the start of the rollout is news.
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Normal", "Scaling")])
    );
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert!(ctx
        .metrics
        .encode()
        .contains("relaycache_operator_reconciles_total{outcome=\"applied\"} 1"));
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn update_changes_the_config_hash_and_rolls_the_members() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let mut changed = rc("web", json!({"replicas": 3, "cache": {"ttl": "6h"}}));
    changed.metadata.generation = Some(2);
    changed.status = Some(settled_status("old-hash", 3));
    let changed = Arc::new(changed);
    let task = tokio::spawn(reconcile(changed.clone(), ctx.clone()));

    // The StatefulSet controller has started rolling the new template.
    let applied = expect_applies_over(
        &mut server,
        Some(stored_sts(json!({"replicas": 3}))),
        2,
        json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 1,
               "currentRevision": "web-1", "updateRevision": "web-2"}),
    )
    .await;
    let text = applied.config_map["data"]["relaycache.yaml"]
        .as_str()
        .unwrap();
    assert!(text.contains("ttl: 6h"), "{text}");
    let hash = applied.template_hash();
    assert_ne!(hash, "old-hash");

    let status = expect_status(&mut server, &changed).await;
    assert_eq!(status.config_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(condition(&status, "Progressing"), ("True", "RollingUpdate"));
    assert_eq!(condition(&status, "Ready"), ("True", "AllMembersReady"));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        ready.last_transition_time,
        Time(Timestamp::from_second(1_800_000_000).unwrap()),
        "Ready did not flip, so its transition time stays"
    );

    assert_eq!(
        expect_events(&mut server, 2).await,
        pairs(&[("Normal", "ConfigChanged"), ("Normal", "RollingUpdate")])
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(15))
    );
}

#[tokio::test]
async fn scale_up_grows_the_peer_list_and_rolls_the_cluster() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let three = crate::resources::build(&rc("web", json!({"replicas": 3})), &settings()).unwrap();
    let mut scaled = rc("web", json!({"replicas": 5}));
    scaled.metadata.generation = Some(2);
    scaled.status = Some(settled_status(&three.config_hash, 3));
    let scaled = Arc::new(scaled);
    let task = tokio::spawn(reconcile(scaled.clone(), ctx.clone()));

    let applied = expect_applies_over(
        &mut server,
        Some(stored_sts(json!({"replicas": 3}))),
        2,
        json!({"observedGeneration": 2, "replicas": 5, "readyReplicas": 3, "updatedReplicas": 2,
               "currentRevision": "web-1", "updateRevision": "web-2"}),
    )
    .await;
    let peers = applied.peers_in_config();
    assert_eq!(peers.len(), 5);
    assert_eq!(peers[3], "web-3.web-peers.cache.svc:3320");
    assert_eq!(peers[4], "web-4.web-peers.cache.svc:3320");
    assert_eq!(applied.stateful_set["spec"]["replicas"], 5);
    assert_ne!(
        applied.template_hash(),
        three.config_hash,
        "new peers roll the members"
    );

    let status = expect_status(&mut server, &scaled).await;
    assert_eq!((status.replicas, status.ready_replicas), (5, 3));
    assert_eq!(condition(&status, "Ready"), ("False", "MembersNotReady"));
    assert_eq!(condition(&status, "Progressing"), ("True", "RollingUpdate"));
    assert_eq!(
        expect_events(&mut server, 3).await,
        pairs(&[
            ("Normal", "ConfigChanged"),
            ("Normal", "RollingUpdate"),
            ("Warning", "NotReady")
        ])
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn scale_down_shrinks_the_peer_list() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let three = crate::resources::build(&rc("web", json!({"replicas": 3})), &settings()).unwrap();
    let mut scaled = rc("web", json!({"replicas": 2}));
    scaled.metadata.generation = Some(2);
    scaled.status = Some(settled_status(&three.config_hash, 3));
    let scaled = Arc::new(scaled);
    let task = tokio::spawn(reconcile(scaled.clone(), ctx.clone()));
    // The StatefulSet controller has not removed member 2 yet.
    let applied = expect_applies_over(
        &mut server,
        Some(stored_sts(json!({"replicas": 3}))),
        2,
        json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
               "currentRevision": "web-1", "updateRevision": "web-1"}),
    )
    .await;
    assert_eq!(
        applied.peers_in_config(),
        [
            "web-0.web-peers.cache.svc:3320",
            "web-1.web-peers.cache.svc:3320"
        ]
    );
    assert_eq!(applied.stateful_set["spec"]["replicas"], 2);
    // The shorter peer list is a new configuration: the remaining members
    // roll onto it, so they stop looking for member 2.
    let hash = applied.template_hash();
    assert_ne!(
        hash, three.config_hash,
        "the peer list change rolls the members"
    );

    let status = expect_status(&mut server, &scaled).await;
    assert_eq!(status.config_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(condition(&status, "Progressing"), ("True", "Scaling"));
    assert_eq!(condition(&status, "Ready"), ("True", "AllMembersReady"));
    assert_eq!(condition(&status, "Degraded"), ("False", "Reconciled"));
    assert_eq!(
        expect_events(&mut server, 2).await,
        pairs(&[("Normal", "ConfigChanged"), ("Normal", "Scaling")])
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(15))
    );
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn changed_volume_claim_templates_hold_the_statefulset_and_apply_the_rest() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let reserve = |storage: &str| json!({"replicas": 3, "reserve": {"url": "file:///var/lib/relaycache/reserve", "storage": storage}});
    let before = crate::resources::build(&rc("web", reserve("1Gi")), &settings()).unwrap();
    let mut bigger = rc("web", reserve("2Gi"));
    bigger.metadata.generation = Some(2);
    bigger.status = Some(settled_status(&before.config_hash, 3));
    let bigger = Arc::new(bigger);
    let task = tokio::spawn(reconcile(bigger.clone(), ctx.clone()));

    let mut existing = stored_sts(reserve("1Gi"));
    existing["metadata"]["generation"] = json!(1);
    existing["status"] = json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3,
        "updatedReplicas": 3, "currentRevision": "web-1", "updateRevision": "web-1"});
    let mut checks = NameChecks::settled(reserve("1Gi"));
    checks.existing.insert("StatefulSet/web".into(), existing);
    expect_name_checks(&mut server, &checks).await;
    expect_service_applies(&mut server).await;
    // No ConfigMap and no StatefulSet: straight on to the PodDisruptionBudget.
    let pdb = server.expect(Method::PATCH, PDB).await;
    assert_apply(&pdb, "PodDisruptionBudget");
    assert_owned(&pdb);
    let body = pdb.body.clone();
    pdb.respond(body).await;

    let status = expect_status(&mut server, &bigger).await;
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "VolumeClaimTemplatesChanged")
    );
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    for part in [
        "asks for reserve of 2Gi",
        "has reserve of 1Gi",
        "revert spec.reserve",
        "kubectl delete statefulset web -n cache --cascade=orphan",
    ] {
        assert!(
            degraded.message.contains(part),
            "{part:?} in {}",
            degraded.message
        );
    }
    assert_eq!(condition(&status, "Ready"), ("True", "AllMembersReady"));
    assert_eq!((status.replicas, status.ready_replicas), (3, 3));
    assert_eq!(
        status.config_hash.as_deref(),
        Some(before.config_hash.as_str()),
        "the members still run the configuration applied before"
    );
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Warning", "VolumeClaimTemplatesChanged")])
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );

    // The user deleted the StatefulSet with --cascade=orphan: everything is
    // applied again, with the new claim template.
    let mut resolved = (*bigger).clone();
    resolved.status = Some(status);
    let resolved = Arc::new(resolved);
    let task = tokio::spawn(reconcile(resolved.clone(), ctx.clone()));
    let applied = expect_applies(
        &mut server,
        1,
        json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
               "currentRevision": "web-1", "updateRevision": "web-1"}),
    )
    .await;
    assert_eq!(
        applied.stateful_set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
            ["storage"],
        "2Gi"
    );
    let status = expect_status(&mut server, &resolved).await;
    assert_eq!(condition(&status, "Degraded"), ("False", "Reconciled"));
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Normal", "Recovered")])
    );
    task.await.unwrap().unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

/// What reconciling a spec the operator must refuse wrote.
struct Refusal {
    status: RelayCacheStatus,
    /// The Degraded condition's message.
    degraded: String,
    /// The Warning event's note.
    event_note: String,
    /// The operator's metrics afterwards.
    metrics: String,
}

/// Reconciles `bad`, which the operator must refuse: the very first request
/// is the status (Degraded/InvalidSpec), then one Warning event, and no
/// Service, ConfigMap, StatefulSet or PodDisruptionBudget is ever applied.
async fn reconcile_refused(bad: RelayCache) -> Refusal {
    use kube::ResourceExt;
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let bad = Arc::new(bad);
    let task = tokio::spawn(reconcile(bad.clone(), ctx.clone()));

    let call = server
        .expect(
            Method::PATCH,
            &format!(
                "/apis/relaycache.io/v1alpha1/namespaces/cache/relaycaches/{}/status",
                bad.name_any()
            ),
        )
        .await;
    assert_apply(&call, "RelayCache");
    let status: RelayCacheStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
    let mut answer = serde_json::to_value(&*bad).unwrap();
    answer["status"] = call.body["status"].clone();
    call.respond(answer).await;
    assert_eq!(condition(&status, "Degraded"), ("True", "InvalidSpec"));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();

    let event = server.expect(Method::POST, EVENTS).await;
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("InvalidSpec"))
    );
    let event_note = event.body["note"].as_str().unwrap_or_default().to_string();
    let body = event.body.clone();
    event.respond(body).await;

    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let metrics = ctx.metrics.encode();
    drop(ctx);
    server.expect_nothing_more().await;
    Refusal {
        status,
        degraded,
        event_note,
        metrics,
    }
}

#[tokio::test]
async fn a_name_too_long_for_its_children_sets_degraded_and_touches_no_child() {
    // 53 characters: its Services would be valid, but not the
    // controller-revision-hash label the StatefulSet controller adds.
    let name = format!("web{}", "x".repeat(50));
    let refusal = reconcile_refused(rc(&name, json!({}))).await;
    assert!(
        refusal.degraded.contains("metadata.name") && refusal.degraded.contains("more than 52"),
        "{}",
        refusal.degraded
    );
}

#[tokio::test]
async fn a_quorum_above_replicas_stored_before_the_rule_touches_no_child() {
    let refusal = reconcile_refused(rc(
        "web",
        json!({"replicas": 2, "replication": {"memberCountQuorum": 3}}),
    ))
    .await;
    assert!(
        refusal
            .degraded
            .contains("spec.replication.memberCountQuorum: 3 must not exceed replicas (2)"),
        "{}",
        refusal.degraded
    );
}

#[tokio::test]
async fn invalid_spec_sets_degraded_and_touches_no_child() {
    let mut bad = rc(
        "web",
        json!({"cache": {"ttl": "forever"}, "replication": {"leaveTimeout": "soon", "warmupTimeout": "later"}}),
    );
    bad.status = Some(settled_status("h", 3));
    let refusal = reconcile_refused(bad).await;
    for expected in [
        "spec.cache.ttl: \"forever\" is not a duration",
        "spec.replication.leaveTimeout",
        "spec.replication.warmupTimeout",
    ] {
        assert!(
            refusal.degraded.contains(expected),
            "{expected}: {}",
            refusal.degraded
        );
    }
    assert_eq!(
        (refusal.status.replicas, refusal.status.ready_replicas),
        (3, 3),
        "last seen counts kept"
    );
    assert!(
        refusal.event_note.contains("spec.cache.ttl"),
        "{}",
        refusal.event_note
    );
    assert!(refusal
        .metrics
        .contains("relaycache_operator_reconciles_total{outcome=\"invalid\"} 1"));
}

#[tokio::test]
async fn a_refused_apply_sets_degraded_and_fails_the_reconcile() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(rc("web", json!({})));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));
    // The token Secrets exist; the StatefulSet does not yet.
    let mut checks = NameChecks::settled(json!({}));
    checks.existing.remove("StatefulSet/web");
    expect_name_checks(&mut server, &checks).await;
    expect_service_applies(&mut server).await;
    let call = server
        .expect(Method::PATCH, &format!("{NS}/configmaps/web"))
        .await;
    let body = call.body.clone();
    call.respond(body).await;
    server
        .expect(Method::PATCH, STS)
        .await
        .status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
    // No PodDisruptionBudget after a failure; the status says why.
    let status = expect_status(&mut server, &rc).await;
    assert_eq!(condition(&status, "Degraded"), ("True", "ApplyFailed"));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("applying StatefulSet cache/web"),
        "{}",
        degraded.message
    );
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Warning", "ApplyFailed")])
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Apply {
                kind: "StatefulSet",
                ..
            }
        ),
        "{err}"
    );
    assert!(ctx
        .metrics
        .encode()
        .contains("relaycache_operator_reconcile_errors_total 1"));
}

#[tokio::test]
async fn delete_is_left_to_garbage_collection_through_owner_references() {
    // Every child carries a controller owner reference to the RelayCache
    // (checked on each apply by `expect_applies`), so deleting the RelayCache
    // lets the garbage collector remove them all.
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc_live = Arc::new(rc("web", json!({})));
    let task = tokio::spawn(reconcile(rc_live.clone(), ctx.clone()));
    let applied = expect_applies(&mut server, 1, json!({"replicas": 0})).await;
    for body in applied.all() {
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("RelayCache"), Some("uid-web"))
        );
        assert_eq!(
            body["metadata"]["namespace"], "cache",
            "owner and child share a namespace"
        );
    }
    expect_status(&mut server, &rc_live).await;
    expect_events(&mut server, 1).await;
    task.await.unwrap().unwrap();

    // While the RelayCache is being deleted the operator writes nothing.
    let mut deleting = rc("web", json!({}));
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let action = reconcile(Arc::new(deleting), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    drop(ctx);
    server.expect_nothing_more().await;
}

const SECRETS: &str = "/api/v1/namespaces/cache/secrets";

/// The value under `token` of a Secret body (its `data` is base64 on the wire).
fn token_of(body: &Value) -> String {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(body.clone()).unwrap();
    let data = secret.data.unwrap_or_default();
    String::from_utf8(data.get("token").expect("key token").0.clone()).unwrap()
}

/// The create of a generated token Secret: owned by the RelayCache,
/// labelled, 32 random bytes as hex under `token`. Answered as created;
/// returns the token.
async fn expect_token_secret_created(server: &mut ApiServer, name: &str) -> String {
    let call = server.expect(Method::POST, SECRETS).await;
    assert_eq!(call.body["kind"], "Secret");
    assert_eq!(call.body["metadata"]["name"], name);
    assert_owned(&call);
    let token = token_of(&call.body);
    assert_eq!(token.len(), 64, "32 bytes as hex");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    let body = call.body.clone();
    call.respond(body).await;
    token
}

#[tokio::test]
async fn generated_token_secrets_are_created_once_and_never_overwritten() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(rc("web", json!({"replicas": 3})));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));

    // Nothing exists yet: every child's name is free.
    expect_name_checks(&mut server, &NameChecks::default()).await;
    let members = expect_token_secret_created(&mut server, "web-member-token").await;
    let clients = expect_token_secret_created(&mut server, "web-client-token").await;
    assert_ne!(members, clients, "two tokens, two roles");
    let applied = expect_child_applies(&mut server, 1, json!({"replicas": 0})).await;
    // The tokens reach the members only by reference.
    for body in applied.all() {
        let text = body.to_string();
        assert!(
            !text.contains(&members) && !text.contains(&clients),
            "{text}"
        );
    }
    let config = applied.config_map["data"]["relaycache.yaml"]
        .as_str()
        .unwrap();
    assert!(
        config.contains("token: ${RELAYCACHE_PEER_TOKEN}"),
        "{config}"
    );
    assert!(
        config.contains("client_token: ${RELAYCACHE_CLIENT_TOKEN}"),
        "{config}"
    );
    let env = &applied.stateful_set["spec"]["template"]["spec"]["containers"][0]["env"];
    let secret_of = |var: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone())
    };
    assert_eq!(
        secret_of("RELAYCACHE_PEER_TOKEN"),
        Some(json!("web-member-token"))
    );
    assert_eq!(
        secret_of("RELAYCACHE_CLIENT_TOKEN"),
        Some(json!("web-client-token"))
    );
    let status = expect_status(&mut server, &rc).await;
    expect_events(&mut server, 1).await;
    task.await.unwrap().unwrap();

    // The next reconcile finds both Secrets (owned): neither is written again.
    let mut settled = (*rc).clone();
    settled.status = Some(status);
    let settled = Arc::new(settled);
    let task = tokio::spawn(reconcile(settled.clone(), ctx.clone()));
    let owned = NameChecks::settled(json!({"replicas": 3}));
    expect_name_checks(&mut server, &owned).await;
    expect_child_applies(&mut server, 1, json!({"replicas": 0})).await;
    expect_status(&mut server, &settled).await;
    task.await.unwrap().unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_named_token_secret_is_neither_generated_nor_checked() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(rc(
        "web",
        json!({"replication": {"tokenSecret": {"name": "mine"}}}),
    ));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));
    let checks = NameChecks {
        member_token_generated: false,
        ..NameChecks::default()
    };
    expect_name_checks(&mut server, &checks).await;
    expect_token_secret_created(&mut server, "web-client-token").await;
    let applied = expect_child_applies(&mut server, 1, json!({"replicas": 0})).await;
    let env = applied.stateful_set["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("\"mine\""), "{env}");
    expect_status(&mut server, &rc).await;
    expect_events(&mut server, 1).await;
    task.await.unwrap().unwrap();
}

/// Reconciles `web` while `kind`/`name` exists without its owner reference.
async fn reconcile_with_a_foreign(kind: &str, name: &str) {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(rc("web", json!({})));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));
    let foreign = json!({"metadata": {"name": name, "namespace": "cache", "uid": "someone-else",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "other",
                             "uid": "uid-other", "controller": true}]}});
    let checks = NameChecks {
        existing: [(format!("{kind}/{name}"), foreign)].into_iter().collect(),
        ..NameChecks::default()
    };
    expect_name_checks(&mut server, &checks).await;
    // Nothing is created or applied: the very next request is the status.
    let status = expect_status(&mut server, &rc).await;
    assert_eq!(condition(&status, "Degraded"), ("True", "NameConflict"));
    let message = &crate::status::find(&status, "Degraded").unwrap().message;
    assert!(message.contains(&format!("{kind}/{name}")), "{message}");
    assert!(
        message.contains("not owned by this RelayCache"),
        "{message}"
    );
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Warning", "NameConflict")])
    );
    task.await.unwrap().unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_foreign_object_with_a_childs_name_is_never_taken_over() {
    for (kind, name) in [
        ("Service", "web-peers"),
        ("Service", "web"),
        ("ConfigMap", "web"),
        ("StatefulSet", "web"),
        ("PodDisruptionBudget", "web"),
        ("Secret", "web-member-token"),
        ("Secret", "web-client-token"),
    ] {
        reconcile_with_a_foreign(kind, name).await;
    }
}

const RELAYCACHE: &str = "/apis/relaycache.io/v1alpha1/namespaces/cache/relaycaches/web";
const COPIES_FINALIZER: &str = "relaycache.io/client-token-copies";
const COPY: &str = "cache.web-client-token";
/// The label selector of `web`'s copies, as sent in a query (URL-encoded).
fn copies_query() -> String {
    "app.kubernetes.io%2Fcomponent%3Dcache%2Capp.kubernetes.io%2Finstance%3Dweb%2Capp.kubernetes.io%2Fmanaged-by%3Drelaycache-operator%2Capp.kubernetes.io%2Fname%3Drelaycache%2Crelaycache.io%2Fclient-token-of-name%3Dweb%2Crelaycache.io%2Fclient-token-of-namespace%3Dcache".into()
}

fn secret_json(namespace: &str, name: &str, token: &str, labels: Value) -> Value {
    let data: k8s_openapi::ByteString = k8s_openapi::ByteString(token.as_bytes().to_vec());
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "data": {"token": data}})
}

/// A copy of web's clients' token in `namespace`, as listed.
fn listed_copy(namespace: &str, token: &str) -> Value {
    let names = crate::resources::Names {
        name: "web".into(),
        namespace: "cache".into(),
    };
    let labels = serde_json::to_value(crate::resources::tokens::copy_labels(&names)).unwrap();
    secret_json(namespace, COPY, token, labels)
}

fn namespace_json(name: &str, labels: Value, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}, "status": {"phase": phase}})
}

/// The list of copies of web's clients' token (cluster-wide, by label).
async fn expect_copies_listed(server: &mut ApiServer, copies: Vec<Value>) {
    let call = server.expect(Method::GET, "/api/v1/secrets").await;
    assert_eq!(
        call.query.get("labelSelector").cloned(),
        Some(copies_query())
    );
    call.respond(
        json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": copies}),
    )
    .await;
}

/// The finalizer written to (or removed from) the RelayCache: a merge patch
/// at the version read; answered with `rc` carrying it. Returns the list.
async fn expect_finalizers(server: &mut ApiServer, rc: &RelayCache) -> Vec<String> {
    let call = server.expect(Method::PATCH, RELAYCACHE).await;
    assert_eq!(call.content_type, "application/merge-patch+json");
    assert_eq!(call.body["metadata"]["resourceVersion"], "7");
    assert!(call.body.get("spec").is_none(), "only the metadata");
    let finalizers: Vec<String> =
        serde_json::from_value(call.body["metadata"]["finalizers"].clone()).unwrap();
    let mut answer = serde_json::to_value(rc).unwrap();
    answer["metadata"]["finalizers"] = json!(finalizers);
    call.respond(answer).await;
    finalizers
}

fn with_version(mut rc: RelayCache, finalizers: &[&str]) -> RelayCache {
    rc.metadata.resource_version = Some("7".into());
    if !finalizers.is_empty() {
        rc.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    }
    rc
}

#[tokio::test]
async fn allowed_namespaces_get_a_copy_of_the_clients_token_and_no_others() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let spec = json!({"clients": {
        "namespaces": ["apps", "taken", "not-there"],
        "namespaceSelector": {"matchLabels": {"team": "llm"}}
    }});
    let rc = Arc::new(with_version(rc("web", spec.clone()), &[]));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));
    expect_name_checks(&mut server, &NameChecks::settled(spec)).await;
    expect_child_applies(&mut server, 1, json!({"replicas": 0})).await;

    // First the finalizer: copies carry no owner reference (they live in
    // other namespaces), so the operator must remove them itself.
    assert_eq!(
        expect_finalizers(&mut server, &rc).await,
        [COPIES_FINALIZER]
    );
    server
        .expect(Method::GET, "/api/v1/namespaces")
        .await
        .respond(
            json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [
                namespace_json("cache", json!({}), "Active"),
                namespace_json("apps", json!({}), "Active"),
                namespace_json("taken", json!({}), "Active"),
                namespace_json("team-x", json!({"team": "llm"}), "Active"),
                namespace_json("dying", json!({"team": "llm"}), "Terminating"),
                namespace_json("other", json!({"team": "web"}), "Active"),
                namespace_json("old", json!({}), "Active"),
            ]}),
        )
        .await;
    // The clients' Secret, never the members'.
    server
        .expect(Method::GET, &format!("{SECRETS}/web-client-token"))
        .await
        .respond(secret_json(
            "cache",
            "web-client-token",
            "clients-token",
            json!({}),
        ))
        .await;
    expect_copies_listed(
        &mut server,
        vec![
            listed_copy("apps", "rotated-away"),
            listed_copy("old", "clients-token"),
        ],
    )
    .await;

    // apps: the copy is stale (the token was rotated): applied again.
    let call = server
        .expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/apps/secrets/{COPY}"),
        )
        .await;
    assert_apply(&call, "Secret");
    assert_eq!(token_of(&call.body), "clients-token");
    assert!(call.body["metadata"].get("ownerReferences").is_none());
    let body = call.body.clone();
    call.respond(body).await;
    // taken: a Secret of that name that is not a copy exists; it is kept.
    let call = server
        .expect(Method::POST, "/api/v1/namespaces/taken/secrets")
        .await;
    call.conflict().await;
    // team-x matches the selector: a new copy, labelled as the operator's.
    let call = server
        .expect(Method::POST, "/api/v1/namespaces/team-x/secrets")
        .await;
    assert_eq!(call.body["metadata"]["name"], COPY);
    assert_eq!(token_of(&call.body), "clients-token");
    assert_eq!(
        call.body["metadata"]["labels"]["relaycache.io/client-token-of-namespace"],
        "cache"
    );
    let body = call.body.clone();
    call.respond(body).await;
    // old is no longer allowed: its copy goes.
    server
        .expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/old/secrets/{COPY}"),
        )
        .await
        .respond(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}))
        .await;

    let status = expect_status(&mut server, &rc).await;
    assert_eq!(condition(&status, "Degraded"), ("False", "Reconciled"));
    expect_events(&mut server, 1).await;
    task.await.unwrap().unwrap();
    drop(ctx);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn copies_go_when_no_other_namespace_is_allowed_any_more() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let rc = Arc::new(with_version(rc("web", json!({})), &[COPIES_FINALIZER]));
    let task = tokio::spawn(reconcile(rc.clone(), ctx.clone()));
    expect_name_checks(&mut server, &NameChecks::settled(json!({}))).await;
    expect_child_applies(&mut server, 1, json!({"replicas": 0})).await;
    expect_copies_listed(&mut server, vec![listed_copy("apps", "t")]).await;
    server
        .expect(
            Method::DELETE,
            &format!("/api/v1/namespaces/apps/secrets/{COPY}"),
        )
        .await
        .not_found()
        .await;
    assert_eq!(
        expect_finalizers(&mut server, &rc).await,
        Vec::<String>::new()
    );
    expect_status(&mut server, &rc).await;
    expect_events(&mut server, 1).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn deleting_a_relaycache_removes_its_copies_then_its_finalizer() {
    let (client, mut server) = ApiServer::start();
    let ctx = context(client);
    let mut deleting = with_version(
        rc("web", json!({"clients": {"namespaces": ["apps"]}})),
        &["someone.else/keep", COPIES_FINALIZER],
    );
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let deleting = Arc::new(deleting);
    let task = tokio::spawn(reconcile(deleting.clone(), ctx.clone()));
    expect_copies_listed(
        &mut server,
        vec![listed_copy("apps", "t"), listed_copy("b", "t")],
    )
    .await;
    for namespace in ["apps", "b"] {
        server
            .expect(
                Method::DELETE,
                &format!("/api/v1/namespaces/{namespace}/secrets/{COPY}"),
            )
            .await
            .respond(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            )
            .await;
    }
    // Only its own finalizer is removed.
    assert_eq!(
        expect_finalizers(&mut server, &deleting).await,
        ["someone.else/keep"]
    );
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    drop(ctx);
    server.expect_nothing_more().await;
}

/// A settled RelayCache of 3 members with `status`, annotated with
/// `purge-before`, its context answering purges through `admin`: its
/// reconcile up to the applies.
async fn start_purge(
    admin: Arc<FakeAdmin>,
    status: RelayCacheStatus,
) -> (
    ApiServer,
    Arc<RelayCache>,
    tokio::task::JoinHandle<Result<Action, Error>>,
) {
    let (client, mut server) = ApiServer::start();
    let mut ctx = Context::new(
        client,
        settings(),
        Arc::new(Metrics::default()),
        Some("op-0".into()),
    );
    ctx.admin = admin;
    let mut web = rc("web", json!({"replicas": 3}));
    web.metadata.annotations = Some(BTreeMap::from([(
        PURGE_ANNOTATION.to_string(),
        "2026-12-01T00:00:00Z".to_string(),
    )]));
    web.status = Some(status);
    let web = Arc::new(web);
    let task = tokio::spawn(reconcile(web.clone(), Arc::new(ctx)));
    expect_applies_over(
        &mut server,
        Some(stored_sts(json!({"replicas": 3}))),
        1,
        json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
               "currentRevision": "web-1", "updateRevision": "web-1"}),
    )
    .await;
    (server, web, task)
}

/// [`start_purge`], then the read of the members' token and the status
/// write; the status written.
async fn reconcile_purge(
    admin: Arc<FakeAdmin>,
) -> (
    ApiServer,
    RelayCacheStatus,
    tokio::task::JoinHandle<Result<Action, Error>>,
) {
    let (mut server, web, task) = start_purge(admin, settled_with_hash(3)).await;
    let call = server
        .expect(Method::GET, &format!("{NS}/secrets/web-member-token"))
        .await;
    call.respond(secret_json(
        "cache",
        "web-member-token",
        "m-token",
        json!({}),
    ))
    .await;
    let written = expect_status(&mut server, &web).await;
    (server, written, task)
}

fn settled_with_hash(replicas: i32) -> RelayCacheStatus {
    let built = crate::resources::build(&rc("web", json!({"replicas": replicas})), &settings());
    settled_status(&built.unwrap().config_hash, replicas)
}

#[tokio::test]
async fn a_new_purge_annotation_asks_a_member_and_records_last_purge_and_an_event() {
    let admin = Arc::new(FakeAdmin::answering(&[(
        "web-1.web-peers.cache.svc:9787",
        Ok(12),
    )]));
    let (mut server, status, task) = reconcile_purge(admin.clone()).await;
    let last = status.last_purge.clone().expect("lastPurge");
    assert_eq!(
        (last.before.as_str(), last.removed, last.member.as_str()),
        ("2026-12-01T00:00:00Z", 12, "web-1")
    );
    assert_eq!(condition(&status, "Purged"), ("True", "Purged"));
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Normal", "Purged")])
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300))
    );
    let calls = admin.calls();
    assert_eq!(calls.len(), 2, "web-0 unreachable, then web-1");
    assert_eq!(calls[1].1, "m-token", "the members' token");
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_failed_purge_is_a_warning_and_a_retry_with_backoff() {
    let (mut server, status, task) = reconcile_purge(Arc::new(FakeAdmin::default())).await;
    assert_eq!(status.last_purge, None);
    assert_eq!(condition(&status, "Purged"), ("False", "PurgeFailed"));
    assert_eq!(
        expect_events(&mut server, 1).await,
        pairs(&[("Warning", "PurgeFailed")])
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn a_purge_already_recorded_is_not_asked_again() {
    let mut status = settled_with_hash(3);
    status.last_purge = Some(crate::crd::LastPurge {
        before: "2026-12-01T00:00:00Z".into(),
        time: "2026-12-01T00:00:05Z".into(),
        removed: 12,
        member: "web-0".into(),
    });
    let admin = Arc::new(FakeAdmin::default());
    let (mut server, web, task) = start_purge(admin.clone(), status).await;
    // No token read, no call: straight to the status, which keeps the record.
    let written = expect_status(&mut server, &web).await;
    assert_eq!(written.last_purge.map(|l| l.removed), Some(12));
    assert!(task.await.unwrap().is_ok());
    assert!(admin.calls().is_empty());
    server.expect_nothing_more().await;
}
