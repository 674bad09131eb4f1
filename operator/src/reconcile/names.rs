//! Before anything is written: whose are the names the children will take,
//! and which generated token Secrets must be created.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::Error;
use crate::crd::RelayCache;
use crate::resources::tokens::{self, TokenSecret};
use crate::resources::Names;

/// Re-check of a RelayCache whose children's names are taken.
pub(super) const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// What the reads of the children's names found.
pub(super) struct Found {
    /// Objects holding a child's name without this RelayCache's owner
    /// reference, as (kind, name).
    pub(super) conflicts: Vec<(&'static str, String)>,
    /// The StatefulSet as stored, if it exists.
    pub(super) stateful_set: Option<StatefulSet>,
    /// Generated token Secrets that do not exist yet.
    pub(super) absent_secrets: Vec<TokenSecret>,
}

/// Reads every name a child will take (the Services, the ConfigMap, the
/// StatefulSet, the PodDisruptionBudget and the generated token Secrets)
/// before anything is written: an object there that this RelayCache does not
/// own is someone else's, and is never taken over. Metadata only, except the
/// StatefulSet, whose volume claim templates are compared before applying,
/// and never a Secret's data.
pub(super) async fn check_names(
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

/// The metadata of the `K` called `name`, if it exists.
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
pub(super) fn conflict_message(names: &Names, conflicts: &[(&'static str, String)]) -> String {
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
pub(super) async fn create_token_secrets(
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
