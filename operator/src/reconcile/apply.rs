//! Server-side apply of the children, in dependency order, holding back
//! what the apiserver would refuse on every pass.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Error, FIELD_MANAGER};
use crate::resources::{statefulset, Children, Names};

/// `Degraded` reason when the spec changes the StatefulSet's immutable
/// volume claim templates.
pub const CLAIMS_CHANGED: &str = "VolumeClaimTemplatesChanged";

/// What `apply_children` did.
pub(super) enum Applied {
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
pub(super) async fn apply_children(
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

/// Server-side apply of `object` under [`FIELD_MANAGER`], forced; the
/// object as stored.
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
