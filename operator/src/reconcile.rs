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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::{RelayCache, RelayCacheStatus};
use crate::metrics::{Metrics, Outcome};
use crate::resources::tokens::{self, NoRandomness, Role};
use crate::resources::{self, BuildSettings, Children, Names, RenderFailure, MANAGED_BY_SELECTOR};
use crate::status::{self, Observation, DEGRADED, PROGRESSING, READY};

mod apply;
mod copies;
mod names;
pub mod purge;

pub use apply::CLAIMS_CHANGED;
use apply::{apply_children, Applied};
use copies::{
    delete_copies, holds_copies_finalizer, list_copies, read_token, set_copies_finalizer,
    sync_copies,
};
pub use copies::{serves_other_namespaces, COPIES_FINALIZER};
use names::{check_names, conflict_message, create_token_secrets, CONFLICT_RECHECK};
use purge::{HttpMemberAdmin, Member, MemberAdmin, Outcome as PurgeOutcome, Plan, Retries};

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
    /// The members' admin endpoints (`relaycache.io/purge-before`).
    pub admin: Arc<dyn MemberAdmin>,
    /// Failed purges, for the backoff of their retries.
    pub purge_retries: Retries,
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
            admin: Arc::new(HttpMemberAdmin::default()),
            purge_retries: Retries::default(),
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

/// One pass over a stored RelayCache: build, check names, create token
/// Secrets, apply, copy the clients' token, and report in the status.
async fn reconcile_inner(rc: &RelayCache, ctx: &Context) -> Result<(Outcome, Action), Error> {
    if rc.metadata.deletion_timestamp.is_some() {
        remove_copies(rc, ctx).await?;
        return Ok((Outcome::deleting, Action::await_change()));
    }
    let previous = rc.status.clone().unwrap_or_default();
    let pass = Pass {
        rc,
        ctx,
        observation: Observation {
            previous: &previous,
            generation: rc.metadata.generation,
            now: Timestamp::now(),
        },
    };
    let children = match resources::build(rc, &ctx.settings) {
        Ok(children) => children,
        Err(failure) => return pass.render_failed(failure).await,
    };
    let names = Names {
        name: rc.name_any(),
        namespace: rc.namespace().unwrap_or_default(),
    };
    let token_secrets = tokens::token_secrets(rc, &names);
    let found = match check_names(&ctx.client, rc, &names, &token_secrets).await {
        Ok(found) => found,
        Err(err) => return pass.fail_apply(err).await,
    };
    if !found.conflicts.is_empty() {
        return pass.names_taken(&names, &found.conflicts).await;
    }
    let absent = &found.absent_secrets;
    let created = create_token_secrets(
        &ctx.client,
        rc,
        &children.owner,
        &names,
        &token_secrets,
        absent,
    );
    if let Err(err) = created.await {
        return pass.fail_apply(err).await;
    }
    let applied = apply_children(&ctx.client, &names, &children, found.stateful_set).await;
    if applied.is_ok() {
        let client_secret = &token_secrets[1];
        if let Err(err) = sync_copies(&ctx.client, rc, &names, client_secret).await {
            return pass.fail_apply(err).await;
        }
    }
    match applied {
        Ok(Applied::All(sts)) => pass.applied(&names, &children, &sts).await,
        Ok(Applied::ClaimsHeld { sts, message }) => pass.claims_held(&names, &sts, message).await,
        Err(err) => pass.fail_apply(err).await,
    }
}

/// A RelayCache being deleted: re-applying children now would race the
/// garbage collector, which removes every owned child; only the copies in
/// other namespaces (no owner reference possible) are the operator's to
/// remove.
async fn remove_copies(rc: &RelayCache, ctx: &Context) -> Result<(), Error> {
    if !holds_copies_finalizer(rc) {
        return Ok(());
    }
    let names = Names {
        name: rc.name_any(),
        namespace: rc.namespace().unwrap_or_default(),
    };
    let copies = list_copies(&ctx.client, &names).await?;
    delete_copies(&ctx.client, copies.iter()).await?;
    set_copies_finalizer(&ctx.client, rc, &names, false).await?;
    info!(relaycache = %rc.name_any(), copies = copies.len(), "removed the clients' token copies");
    Ok(())
}

/// One reconcile's way to its status: each outcome writes the next status,
/// publishes the Events its changes deserve, and says when to look again.
struct Pass<'a> {
    rc: &'a RelayCache,
    ctx: &'a Context,
    observation: Observation<'a>,
}

impl Pass<'_> {
    /// Writes `next` and publishes the Events of its changes.
    async fn report(&self, next: &RelayCacheStatus) -> Result<(), Error> {
        write_status(self.rc, self.ctx, next).await?;
        publish_transitions(self.rc, self.ctx, self.observation.previous, next).await;
        Ok(())
    }

    /// No children could be built: `Degraded`, and nothing changed.
    async fn render_failed(&self, failure: RenderFailure) -> Result<(Outcome, Action), Error> {
        let rc = self.rc;
        let message = failure.to_string();
        let next = match failure {
            RenderFailure::Invalid(_) => {
                warn!(relaycache = %rc.name_any(), %message, "invalid spec; no child changed");
                self.observation.invalid_spec(&message)
            }
            RenderFailure::Unwritable(_) => {
                warn!(relaycache = %rc.name_any(), %message, "no configuration; no child changed");
                self.observation.render_failed(&message)
            }
        };
        self.report(&next).await?;
        Ok((Outcome::invalid, Action::await_change()))
    }

    /// A child's name belongs to another owner: `Degraded`, nothing changed.
    async fn names_taken(
        &self,
        names: &Names,
        conflicts: &[(&'static str, String)],
    ) -> Result<(Outcome, Action), Error> {
        let message = conflict_message(names, conflicts);
        warn!(relaycache = %self.rc.name_any(), %message, "names taken; no child changed");
        self.report(&self.observation.name_conflict(&message))
            .await?;
        // Deleting the other object sends no event this controller watches
        // (it is not ours), so look again before the resync.
        Ok((Outcome::conflict, Action::requeue(CONFLICT_RECHECK)))
    }

    /// Records a failed API call in the status (`ApplyFailed`) and returns
    /// it, so the controller retries.
    async fn fail_apply(&self, err: Error) -> Result<(Outcome, Action), Error> {
        let next = self.observation.apply_failed(&err.to_string());
        // Best effort: the apply error is what the caller must see.
        if let Err(status_err) = write_status(self.rc, self.ctx, &next).await {
            warn!(error = %status_err, "could not record the apply failure in the status");
        }
        publish_transitions(self.rc, self.ctx, self.observation.previous, &next).await;
        Err(err)
    }

    /// The volume claim templates changed: the StatefulSet is held back.
    async fn claims_held(
        &self,
        names: &Names,
        sts: &StatefulSet,
        message: String,
    ) -> Result<(Outcome, Action), Error> {
        warn!(relaycache = %self.rc.name_any(), %message, "volume claim templates changed; StatefulSet held back");
        let next =
            self.observation
                .held_back(names.selector_string(), sts, CLAIMS_CHANGED, message);
        self.report(&next).await?;
        // Retrying cannot help; the user's fix (a reverted spec, or the
        // StatefulSet deleted) triggers the next reconcile through the
        // watches, the resync is a backstop.
        Ok((Outcome::applied, Action::requeue(RESYNC)))
    }

    /// Every child applied: the members' state, looked at again soon while
    /// they roll.
    async fn applied(
        &self,
        names: &Names,
        children: &Children,
        sts: &StatefulSet,
    ) -> Result<(Outcome, Action), Error> {
        let mut next = self.observation.applied(
            self.rc.spec.replicas,
            names.selector_string(),
            children.config_hash.clone(),
            sts,
        );
        let purged = self.purge(names, &next).await;
        let purge_event = purge::record(&self.observation, &mut next, &purged);
        self.report(&next).await?;
        if let Some(event) = purge_event {
            publish(self.rc, self.ctx, &event).await;
        }
        let mut wait = if status::is_true(&next, PROGRESSING) {
            PROGRESS_CHECK
        } else {
            RESYNC
        };
        let key = format!("{}/{}", names.namespace, names.name);
        if matches!(purged, PurgeOutcome::Failed(_)) {
            wait = wait.min(self.ctx.purge_retries.failed(&key));
        } else {
            self.ctx.purge_retries.reset(&key);
        }
        Ok((Outcome::applied, Action::requeue(wait)))
    }

    /// Acts on the annotation `relaycache.io/purge-before`: asks a member
    /// (with the members' token) when a new value asks for a purge.
    async fn purge(&self, names: &Names, next: &RelayCacheStatus) -> PurgeOutcome {
        let rc = self.rc;
        let (value, at) = match purge::plan(purge::wanted(rc), rc.spec.mode, next.ready_replicas) {
            Plan::Settled(outcome) => return outcome,
            Plan::Call { value, at } => (value, at),
        };
        let secret = tokens::token_secret(rc, names, Role::Member);
        let token = match read_token(&self.ctx.client, names, &secret).await {
            Ok(Some(token)) => String::from_utf8(token.0).ok(),
            Ok(None) => None,
            Err(err) => return PurgeOutcome::Failed(err.to_string()),
        };
        let Some(token) = token else {
            return PurgeOutcome::Failed(format!(
                "the members' token Secret {} has no key \"{}\" yet; it is tried again",
                secret.name,
                tokens::TOKEN_KEY
            ));
        };
        let members: Vec<Member> = (0..next.replicas)
            .map(|i| Member {
                name: names.member(i),
                admin: names.admin_address(i),
            })
            .collect();
        info!(relaycache = %rc.name_any(), before = %value, "purging");
        let outcome = purge::call(&value, at, &members, &token, self.ctx.admin.as_ref()).await;
        match &outcome {
            PurgeOutcome::Purged(last) => {
                info!(relaycache = %rc.name_any(), before = %value, removed = last.removed, member = %last.member, "purged")
            }
            PurgeOutcome::Failed(error) => {
                warn!(relaycache = %rc.name_any(), before = %value, %error, "purge failed; retrying")
            }
            _ => {}
        }
        outcome
    }
}

/// Applies `status` to the status subresource.
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

/// Publishes the Events of the change from `previous` to `next`.
async fn publish_transitions(
    rc: &RelayCache,
    ctx: &Context,
    previous: &RelayCacheStatus,
    next: &RelayCacheStatus,
) {
    for event in transitions(previous, next) {
        publish(rc, ctx, &event).await;
    }
}

/// Publishes one Event on `rc`.
async fn publish(rc: &RelayCache, ctx: &Context, event: &Event) {
    info!(relaycache = %rc.name_any(), reason = %event.reason, note = event.note.as_deref().unwrap_or(""), "event");
    if let Err(err) = ctx.recorder.publish(event, &rc.object_ref(&())).await {
        // An Event is a courtesy; never fail a reconcile for it.
        warn!(reason = %event.reason, error = %err, "could not publish event");
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
