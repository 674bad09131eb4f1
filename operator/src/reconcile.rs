//! The controller: for each RelayCache, apply its children with server-side
//! apply (one field manager), then write the status and publish Events when
//! a condition changes.
//!
//! Before writing anything it reads every name a child will take, and
//! changes nothing when one belongs to another owner (`NameConflict`). It
//! generates the token Secrets the spec does not name, and keeps copies of
//! the clients' token in the other namespaces the RelayCache serves.
//!
//! Deletion: every child carries an owner reference to its RelayCache, so
//! the garbage collector removes them. The copies in other namespaces cannot
//! (an owner lives in the same namespace); a RelayCache that has them holds
//! the finalizer `relaycache.io/client-token-copies` until they are deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::crd::{ClusterMode, RelayCache, RelayCacheStatus};
use crate::metrics::{Metrics, Outcome};
use crate::resources::clients;
use crate::resources::tokens::{self, NoRandomness, TokenSecret};
use crate::resources::{
    self, statefulset, BuildSettings, Children, Names, RenderFailure, MANAGED_BY_SELECTOR,
};
use crate::status::{self, Observation, DEGRADED, PROGRESSING, READY};

/// The one field manager of every object this operator writes.
pub const FIELD_MANAGER: &str = "relaycache-operator";
/// Re-check of a settled RelayCache (drift of children is caught sooner by
/// the watches on them).
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check while members are being created or rolled.
const PROGRESS_CHECK: Duration = Duration::from_secs(15);

/// What a reconcile needs.
pub struct Context {
    /// Client of the apiserver.
    pub client: Client,
    /// Publishes Events on RelayCaches.
    pub recorder: Recorder,
    /// Settings from the operator's flags.
    pub settings: BuildSettings,
    /// Reconcile counters and timings.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A context whose Events are reported as `relaycache-operator`.
    pub fn new(
        client: Client,
        settings: BuildSettings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
        }
    }
}

/// Why a reconcile failed; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a child was refused or failed.
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading a child failed.
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        /// Kind of the child.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Creating a generated token Secret failed.
    #[error("creating {kind} {namespace}/{name}: {source}")]
    Create {
        /// Kind of the object.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting a copy of the clients' token failed.
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        /// Kind of the object.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// No token could be generated.
    #[error(transparent)]
    Token(#[from] NoRandomness),
    /// Writing the status failed.
    #[error("updating the status of RelayCache {namespace}/{name}: {source}")]
    Status {
        /// The RelayCache's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

/// Reconciles one RelayCache.
pub async fn reconcile(rc: Arc<RelayCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&rc, &ctx).await;
    let outcome = match &result {
        Ok((outcome, _)) => *outcome,
        Err(_) => Outcome::error,
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result.map(|(_, action)| action)
}

async fn reconcile_inner(rc: &RelayCache, ctx: &Context) -> Result<(Outcome, Action), Error> {
    if rc.metadata.deletion_timestamp.is_some() {
        // Re-applying children now would race the garbage collector, which
        // removes every owned child; only the copies in other namespaces
        // (no owner reference possible) are the operator's to remove.
        if holds_copies_finalizer(rc) {
            let names = Names {
                name: rc.name_any(),
                namespace: rc.namespace().unwrap_or_default(),
            };
            let copies = list_copies(&ctx.client, &names).await?;
            delete_copies(&ctx.client, copies.iter()).await?;
            set_copies_finalizer(&ctx.client, rc, &names, false).await?;
            info!(relaycache = %rc.name_any(), copies = copies.len(), "removed the clients' token copies");
        }
        return Ok((Outcome::deleting, Action::await_change()));
    }
    let previous = rc.status.clone().unwrap_or_default();
    let observation = Observation {
        previous: &previous,
        generation: rc.metadata.generation,
        now: Timestamp::now(),
    };
    let children = match resources::build(rc, &ctx.settings) {
        Ok(children) => children,
        Err(failure) => {
            let message = failure.to_string();
            let next = match failure {
                RenderFailure::Invalid(_) => {
                    warn!(relaycache = %rc.name_any(), %message, "invalid spec; no child changed");
                    observation.invalid_spec(&message)
                }
                RenderFailure::Unwritable(_) => {
                    warn!(relaycache = %rc.name_any(), %message, "no configuration; no child changed");
                    observation.render_failed(&message)
                }
            };
            write_status(rc, ctx, &next).await?;
            publish_transitions(rc, ctx, &previous, &next).await;
            return Ok((Outcome::invalid, Action::await_change()));
        }
    };
    let names = Names {
        name: rc.name_any(),
        namespace: rc.namespace().unwrap_or_default(),
    };
    let token_secrets = tokens::token_secrets(rc, &names);
    let found = match check_names(&ctx.client, rc, &names, &token_secrets).await {
        Ok(found) => found,
        Err(err) => return fail_apply(rc, ctx, &observation, &previous, err).await,
    };
    if !found.conflicts.is_empty() {
        let message = conflict_message(&names, &found.conflicts);
        warn!(relaycache = %rc.name_any(), %message, "names taken; no child changed");
        let next = observation.name_conflict(&message);
        write_status(rc, ctx, &next).await?;
        publish_transitions(rc, ctx, &previous, &next).await;
        // Deleting the other object sends no event this controller watches
        // (it is not ours), so look again before the resync.
        return Ok((Outcome::conflict, Action::requeue(CONFLICT_RECHECK)));
    }
    if let Err(err) = create_token_secrets(
        &ctx.client,
        rc,
        &children.owner,
        &names,
        &token_secrets,
        &found.absent_secrets,
    )
    .await
    {
        return fail_apply(rc, ctx, &observation, &previous, err).await;
    }
    let applied = apply_children(&ctx.client, &names, &children, found.stateful_set).await;
    if applied.is_ok() {
        let client_secret = &token_secrets[1];
        if let Err(err) = sync_copies(&ctx.client, rc, &names, client_secret).await {
            return fail_apply(rc, ctx, &observation, &previous, err).await;
        }
    }
    let sts = match applied {
        Ok(Applied::All(sts)) => sts,
        Ok(Applied::ClaimsHeld { sts, message }) => {
            warn!(relaycache = %rc.name_any(), %message, "volume claim templates changed; StatefulSet held back");
            let next =
                observation.held_back(names.selector_string(), &sts, CLAIMS_CHANGED, message);
            write_status(rc, ctx, &next).await?;
            publish_transitions(rc, ctx, &previous, &next).await;
            // Retrying cannot help; the user's fix (a reverted spec, or the
            // StatefulSet deleted) triggers the next reconcile through the
            // watches, the resync is a backstop.
            return Ok((Outcome::applied, Action::requeue(RESYNC)));
        }
        Err(err) => return fail_apply(rc, ctx, &observation, &previous, err).await,
    };
    let next = observation.applied(
        rc.spec.replicas,
        names.selector_string(),
        children.config_hash.clone(),
        &sts,
    );
    write_status(rc, ctx, &next).await?;
    publish_transitions(rc, ctx, &previous, &next).await;
    let action = if status::is_true(&next, PROGRESSING) {
        Action::requeue(PROGRESS_CHECK)
    } else {
        Action::requeue(RESYNC)
    };
    Ok((Outcome::applied, action))
}

/// Records a failed API call in the status (`ApplyFailed`) and returns it,
/// so the controller retries.
async fn fail_apply(
    rc: &RelayCache,
    ctx: &Context,
    observation: &Observation<'_>,
    previous: &RelayCacheStatus,
    err: Error,
) -> Result<(Outcome, Action), Error> {
    let next = observation.apply_failed(&err.to_string());
    // Best effort: the apply error is what the caller must see.
    if let Err(status_err) = write_status(rc, ctx, &next).await {
        warn!(error = %status_err, "could not record the apply failure in the status");
    }
    publish_transitions(rc, ctx, previous, &next).await;
    Err(err)
}

/// Re-check of a RelayCache whose children's names are taken.
const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// What the reads of the children's names found.
struct Found {
    /// Objects holding a child's name without this RelayCache's owner
    /// reference, as (kind, name).
    conflicts: Vec<(&'static str, String)>,
    /// The StatefulSet as stored, if it exists.
    stateful_set: Option<StatefulSet>,
    /// Generated token Secrets that do not exist yet.
    absent_secrets: Vec<TokenSecret>,
}

/// Reads every name a child will take (the Services, the ConfigMap, the
/// StatefulSet, the PodDisruptionBudget and the generated token Secrets)
/// before anything is written: an object there that this RelayCache does not
/// own is someone else's, and is never taken over. Metadata only, except the
/// StatefulSet, whose volume claim templates are compared before applying,
/// and never a Secret's data.
async fn check_names(
    client: &Client,
    rc: &RelayCache,
    names: &Names,
    token_secrets: &[TokenSecret],
) -> Result<Found, Error> {
    let uid = rc.uid().unwrap_or_default();
    let mut found = Found {
        conflicts: Vec::new(),
        stateful_set: None,
        absent_secrets: Vec::new(),
    };
    let mut check = |kind: &'static str, name: &str, meta: Option<&ObjectMeta>| {
        if let Some(meta) = meta {
            let owned = meta
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.uid == uid);
            if !owned {
                found.conflicts.push((kind, name.to_string()));
            }
        }
    };
    for name in [names.peers_service(), names.name.clone()] {
        let meta = read_metadata::<Service>(client, names, &name).await?;
        check("Service", &name, meta.as_ref());
    }
    let meta = read_metadata::<ConfigMap>(client, names, &names.name).await?;
    check("ConfigMap", &names.name, meta.as_ref());
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let sts = api
        .get_opt(&names.name)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet",
            namespace: names.namespace.clone(),
            name: names.name.clone(),
            source,
        })?;
    check(
        "StatefulSet",
        &names.name,
        sts.as_ref().map(|s| &s.metadata),
    );
    let meta = read_metadata::<PodDisruptionBudget>(client, names, &names.name).await?;
    check("PodDisruptionBudget", &names.name, meta.as_ref());
    let mut absent = Vec::new();
    for secret in token_secrets.iter().filter(|s| s.generated) {
        let meta = read_metadata::<Secret>(client, names, &secret.name).await?;
        check("Secret", &secret.name, meta.as_ref());
        if meta.is_none() {
            absent.push(secret.clone());
        }
    }
    found.stateful_set = sts;
    found.absent_secrets = absent;
    Ok(found)
}

async fn read_metadata<K>(
    client: &Client,
    names: &Names,
    name: &str,
) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &names.namespace);
    api.get_metadata_opt(name)
        .await
        .map(|found| found.map(|partial| partial.metadata))
        .map_err(|source| Error::Read {
            kind: <K as k8s_openapi::Resource>::KIND,
            namespace: names.namespace.clone(),
            name: name.to_string(),
            source,
        })
}

/// The `Degraded` message of a name conflict: each object, and what to do.
fn conflict_message(names: &Names, conflicts: &[(&'static str, String)]) -> String {
    let objects = conflicts
        .iter()
        .map(|(kind, name)| format!("{kind}/{name}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{objects} in namespace {ns} exists and is not owned by this RelayCache; the operator never takes over another's object, so nothing was changed. Delete or rename it, or give this RelayCache another name",
        ns = names.namespace
    )
}

/// Creates the generated token Secrets that do not exist, each with a new
/// random token. Create, never apply: an existing Secret (one another
/// reconcile created meanwhile) is left as it is, so a token is never
/// overwritten. The token's value is never logged.
async fn create_token_secrets(
    client: &Client,
    rc: &RelayCache,
    owner: &OwnerReference,
    names: &Names,
    token_secrets: &[TokenSecret],
    absent: &[TokenSecret],
) -> Result<(), Error> {
    if absent.is_empty() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    for secret in token_secrets.iter().filter(|s| absent.contains(s)) {
        let object = tokens::generated_secret(names, owner, secret, tokens::random_token()?);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                info!(relaycache = %rc.name_any(), secret = %secret.name, "generated a token Secret")
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(secret = %secret.name, "token Secret created meanwhile; kept as it is")
            }
            Err(source) => {
                return Err(Error::Create {
                    kind: "Secret",
                    namespace: names.namespace.clone(),
                    name: secret.name.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Finalizer of a RelayCache that serves other namespaces: its clients'
/// token has copies there, which cannot carry an owner reference (owners
/// live in the same namespace), so the operator removes them before the
/// RelayCache goes.
pub const COPIES_FINALIZER: &str = "relaycache.io/client-token-copies";

/// Whether `rc` serves pods of other namespaces, whose sidecars read a copy
/// of its clients' token (only clients of a cluster read a token).
pub fn serves_other_namespaces(rc: &RelayCache) -> bool {
    rc.spec.mode == ClusterMode::Ha && !rc.spec.clients.is_own_namespace_only()
}

fn holds_copies_finalizer(rc: &RelayCache) -> bool {
    rc.finalizers().iter().any(|f| f == COPIES_FINALIZER)
}

/// Keeps one copy of the clients' token in each namespace `rc` serves
/// besides its own, and none elsewhere. A copy is created when missing,
/// applied again when its token differs (a rotation), and deleted when its
/// namespace is no longer served; a Secret with a copy's name that is not a
/// copy (no labels of this RelayCache) is never touched. The finalizer goes
/// on before the first copy and comes off once none is left.
async fn sync_copies(
    client: &Client,
    rc: &RelayCache,
    names: &Names,
    client_secret: &TokenSecret,
) -> Result<(), Error> {
    let serves = serves_other_namespaces(rc);
    let held = holds_copies_finalizer(rc);
    if !serves && !held {
        return Ok(());
    }
    if !serves {
        let copies = list_copies(client, names).await?;
        delete_copies(client, copies.iter()).await?;
        return set_copies_finalizer(client, rc, names, false).await;
    }
    if !held {
        set_copies_finalizer(client, rc, names, true).await?;
    }
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            kind: "Namespace",
            namespace: String::new(),
            name: "(all)".into(),
            source,
        })?;
    let served: BTreeSet<String> = namespaces
        .items
        .iter()
        .filter(|ns| ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
        .filter_map(|ns| {
            let name = ns.name_any();
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            (name != names.namespace && clients::allows(rc, &name, &labels)).then_some(name)
        })
        .collect();
    let source = Api::<Secret>::namespaced(client.clone(), &names.namespace)
        .get_opt(&client_secret.name)
        .await
        .map_err(|source| Error::Read {
            kind: "Secret",
            namespace: names.namespace.clone(),
            name: client_secret.name.clone(),
            source,
        })?;
    let token = source
        .and_then(|secret| secret.data)
        .and_then(|mut data| data.remove(tokens::TOKEN_KEY));
    let copies = list_copies(client, names).await?;
    let copy_name = names.client_token_copy();
    match &token {
        None => warn!(relaycache = %rc.name_any(), secret = %client_secret.name,
            "the clients' token Secret has no key \"token\" yet; no copy written"),
        Some(token) => {
            for namespace in &served {
                let existing = copies
                    .iter()
                    .find(|c| c.namespace().as_deref() == Some(namespace.as_str()));
                let current = existing
                    .and_then(|c| c.data.as_ref())
                    .and_then(|d| d.get(tokens::TOKEN_KEY));
                let copy = tokens::client_token_copy(names, namespace, token.clone());
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match (existing, current == Some(token)) {
                    (Some(_), true) => {}
                    (Some(_), false) => {
                        api.patch(
                            &copy_name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&copy),
                        )
                        .await
                        .map_err(|source| Error::Apply {
                            kind: "Secret",
                            namespace: namespace.clone(),
                            name: copy_name.clone(),
                            source,
                        })?;
                    }
                    // Create, not apply: a Secret of this name that is not
                    // a copy must never be taken over.
                    (None, _) => match api.create(&PostParams::default(), &copy).await {
                        Ok(_) => {
                            info!(relaycache = %rc.name_any(), %namespace, "copied the clients' token")
                        }
                        Err(kube::Error::Api(status)) if status.code == 409 => warn!(
                            relaycache = %rc.name_any(), %namespace, secret = %copy_name,
                            "a Secret of the copy's name exists and is not a copy; left alone (sidecars there cannot start until it is renamed)"
                        ),
                        Err(source) => {
                            return Err(Error::Create {
                                kind: "Secret",
                                namespace: namespace.clone(),
                                name: copy_name.clone(),
                                source,
                            })
                        }
                    },
                }
            }
        }
    }
    let unserved = copies.iter().filter(|c| {
        c.namespace()
            .is_none_or(|namespace| !served.contains(&namespace))
    });
    delete_copies(client, unserved).await
}

/// Every copy of this RelayCache's clients' token, in any namespace.
async fn list_copies(client: &Client, names: &Names) -> Result<Vec<Secret>, Error> {
    Api::<Secret>::all(client.clone())
        .list(&ListParams::default().labels(&tokens::copy_selector(names)))
        .await
        .map(|list| list.items)
        .map_err(|source| Error::Read {
            kind: "Secret",
            namespace: String::new(),
            name: format!("(copies of {})", names.client_token_copy()),
            source,
        })
}

/// Deletes copies; one already gone is fine.
async fn delete_copies<'a>(
    client: &Client,
    copies: impl Iterator<Item = &'a Secret>,
) -> Result<(), Error> {
    for copy in copies {
        let namespace = copy.namespace().unwrap_or_default();
        let name = copy.name_any();
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(%namespace, secret = %name, "removed a copy of a clients' token"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: "Secret",
                    namespace,
                    name,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Adds or removes [`COPIES_FINALIZER`], keeping every other finalizer, at
/// the resourceVersion read (a concurrent change makes the patch fail and
/// the reconcile retry, rather than drop another's finalizer).
async fn set_copies_finalizer(
    client: &Client,
    rc: &RelayCache,
    names: &Names,
    present: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> = rc
        .finalizers()
        .iter()
        .filter(|f| *f != COPIES_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(COPIES_FINALIZER.into());
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": rc.resource_version()}
    });
    Api::<RelayCache>::namespaced(client.clone(), &names.namespace)
        .patch(&names.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Apply {
            kind: "RelayCache",
            namespace: names.namespace.clone(),
            name: names.name.clone(),
            source,
        })
}

/// `Degraded` reason when the spec changes the StatefulSet's immutable
/// volume claim templates.
pub const CLAIMS_CHANGED: &str = "VolumeClaimTemplatesChanged";

/// What `apply_children` did.
enum Applied {
    /// Every child was applied; the StatefulSet as stored.
    All(StatefulSet),
    /// The spec changes the StatefulSet's volume claim templates, which the
    /// apiserver would refuse on every apply: the Services and the
    /// PodDisruptionBudget were applied, the ConfigMap and the StatefulSet
    /// were left as they are. The StatefulSet as it stands, and what to do.
    ClaimsHeld {
        /// The existing StatefulSet.
        sts: StatefulSet,
        /// The change and how to resolve it.
        message: String,
    },
}

/// Applies the children in dependency order (Services and ConfigMap before
/// the StatefulSet that uses them) and returns the StatefulSet as stored.
/// The `existing` StatefulSet (as read by `check_names`) is compared first:
/// a change to its immutable volume claim templates would be refused on
/// every apply, so it is reported instead (and the PodDisruptionBudget
/// still applied).
async fn apply_children(
    client: &Client,
    names: &Names,
    children: &Children,
    existing: Option<StatefulSet>,
) -> Result<Applied, Error> {
    apply::<Service>(client, names, &children.peers_service).await?;
    apply::<Service>(client, names, &children.client_service).await?;
    let change = existing.as_ref().and_then(|existing| {
        statefulset::claim_templates_change(existing, &children.stateful_set, names)
    });
    if let (Some(sts), Some(message)) = (existing, change) {
        // The ConfigMap is held back with the StatefulSet: a new
        // configuration (a file reserve added, say) could need a volume the
        // pods do not have, and members restarting would load it. The
        // PodDisruptionBudget does not depend on either, so it still goes on.
        apply::<PodDisruptionBudget>(client, names, &children.pdb).await?;
        return Ok(Applied::ClaimsHeld { sts, message });
    }
    apply::<ConfigMap>(client, names, &children.config_map).await?;
    let sts = apply::<StatefulSet>(client, names, &children.stateful_set).await?;
    apply::<PodDisruptionBudget>(client, names, &children.pdb).await?;
    Ok(Applied::All(sts))
}

async fn apply<K>(client: &Client, names: &Names, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &names.namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: <K as k8s_openapi::Resource>::KIND,
        namespace: names.namespace.clone(),
        name,
        source,
    })
}

async fn write_status(
    rc: &RelayCache,
    ctx: &Context,
    status: &RelayCacheStatus,
) -> Result<(), Error> {
    let namespace = rc.namespace().unwrap_or_default();
    let api: Api<RelayCache> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": RelayCache::api_version(&()),
        "kind": RelayCache::kind(&()),
        "status": status,
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        namespace,
        name: rc.name_any(),
        source,
    })
}

/// The Events a status change deserves: one per condition that flipped, and
/// one when the configuration (and so the peer list) changed.
pub fn transitions(previous: &RelayCacheStatus, next: &RelayCacheStatus) -> Vec<Event> {
    let mut events = Vec::new();
    let flipped = |type_: &str| {
        let before = status::find(previous, type_).map(|c| c.status.as_str());
        let after = status::find(next, type_);
        after.filter(|c| Some(c.status.as_str()) != before)
    };
    let event = |type_: EventType, reason: &str, note: String| Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Some(c) = flipped(DEGRADED) {
        if c.status == "True" {
            events.push(event(EventType::Warning, &c.reason, c.message.clone()));
        } else if status::find(previous, DEGRADED).is_some() {
            events.push(event(
                EventType::Normal,
                "Recovered",
                "spec applied again".into(),
            ));
        }
    }
    if let (Some(before), Some(after)) = (&previous.config_hash, &next.config_hash) {
        if before != after {
            events.push(event(
                EventType::Normal,
                "ConfigChanged",
                "proxy configuration changed; members roll one at a time".into(),
            ));
        }
    }
    if let Some(c) = flipped(PROGRESSING).filter(|c| c.status == "True") {
        events.push(event(EventType::Normal, &c.reason, c.message.clone()));
    }
    if let Some(c) = flipped(READY) {
        if c.status == "True" {
            events.push(event(EventType::Normal, "Ready", c.message.clone()));
        } else if status::find(previous, READY).is_some() {
            events.push(event(EventType::Warning, "NotReady", c.message.clone()));
        }
    }
    events
}

async fn publish_transitions(
    rc: &RelayCache,
    ctx: &Context,
    previous: &RelayCacheStatus,
    next: &RelayCacheStatus,
) {
    let reference = rc.object_ref(&());
    for event in transitions(previous, next) {
        info!(relaycache = %rc.name_any(), reason = %event.reason, note = event.note.as_deref().unwrap_or(""), "event");
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            // An Event is a courtesy; never fail a reconcile for it.
            warn!(reason = %event.reason, error = %err, "could not publish event");
        }
    }
}

/// Retries a failed reconcile; the controller's own backoff spaces retries.
pub fn error_policy(rc: Arc<RelayCache>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(relaycache = %rc.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller until `shutdown` resolves, then lets in-flight
/// reconciles finish.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let controller = Controller::new(
        Api::<RelayCache>::all(client.clone()),
        watcher::Config::default(),
    );
    let relaycaches = controller.store();
    controller
        // A namespace that appears, goes or is labelled may change where the
        // clients' token must be copied: every RelayCache serving other
        // namespaces (or still holding copies) looks again.
        .watches(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            move |_namespace| {
                relaycaches
                    .state()
                    .into_iter()
                    .filter(|rc| serves_other_namespaces(rc) || holds_copies_finalizer(rc))
                    .map(|rc| ObjectRef::from_obj(&*rc))
                    .collect::<Vec<_>>()
            },
        )
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        // A generated token Secret deleted (to rotate it) is created again at once.
        .owns(Api::<Secret>::all(client), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(relaycache = %object, "reconciled"),
                // A RelayCache deleted while queued: nothing left to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    debug!(relaycache = %object, "gone before its reconcile")
                }
                Err(err) => warn!(error = %err, "reconcile failed"),
            }
        })
        .await;
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
