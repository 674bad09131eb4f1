//! Copies of the clients' token in the other namespaces a RelayCache
//! serves, and the finalizer that removes them when it is deleted (a copy
//! cannot carry an owner reference across namespaces).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::{Error, FIELD_MANAGER};
use crate::crd::{ClusterMode, RelayCache};
use crate::resources::clients;
use crate::resources::tokens::{self, TokenSecret};
use crate::resources::Names;

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

/// Whether `rc` still holds [`COPIES_FINALIZER`]: copies may exist.
pub(crate) fn holds_copies_finalizer(rc: &RelayCache) -> bool {
    rc.finalizers().iter().any(|f| f == COPIES_FINALIZER)
}

/// Keeps one copy of the clients' token in each namespace `rc` serves
/// besides its own, and none elsewhere. A copy is created when missing,
/// applied again when its token differs (a rotation), and deleted when its
/// namespace is no longer served; a Secret with a copy's name that is not a
/// copy (no labels of this RelayCache) is never touched. The finalizer goes
/// on before the first copy and comes off once none is left.
pub(super) async fn sync_copies(
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
    let served = served_namespaces(client, rc, names).await?;
    let token = read_token(client, names, client_secret).await?;
    let copies = list_copies(client, names).await?;
    match &token {
        None => warn!(relaycache = %rc.name_any(), secret = %client_secret.name,
            "the clients' token Secret has no key \"token\" yet; no copy written"),
        Some(token) => {
            for namespace in &served {
                let existing = copies
                    .iter()
                    .find(|c| c.namespace().as_deref() == Some(namespace.as_str()));
                write_copy(client, rc, names, namespace, existing, token).await?;
            }
        }
    }
    let unserved = copies.iter().filter(|c| {
        c.namespace()
            .is_none_or(|namespace| !served.contains(&namespace))
    });
    delete_copies(client, unserved).await
}

/// The namespaces besides its own whose pods `rc` serves, leaving out those
/// being deleted.
async fn served_namespaces(
    client: &Client,
    rc: &RelayCache,
    names: &Names,
) -> Result<BTreeSet<String>, Error> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            kind: "Namespace",
            namespace: String::new(),
            name: "(all)".into(),
            source,
        })?;
    Ok(namespaces
        .items
        .iter()
        .filter(|ns| ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
        .filter_map(|ns| {
            let name = ns.name_any();
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            (name != names.namespace && clients::allows(rc, &name, &labels)).then_some(name)
        })
        .collect())
}

/// A token from its Secret in the RelayCache's namespace; None while the
/// Secret or its key is missing.
pub(super) async fn read_token(
    client: &Client,
    names: &Names,
    secret: &TokenSecret,
) -> Result<Option<ByteString>, Error> {
    let source = Api::<Secret>::namespaced(client.clone(), &names.namespace)
        .get_opt(&secret.name)
        .await
        .map_err(|source| Error::Read {
            kind: "Secret",
            namespace: names.namespace.clone(),
            name: secret.name.clone(),
            source,
        })?;
    Ok(source
        .and_then(|secret| secret.data)
        .and_then(|mut data| data.remove(tokens::TOKEN_KEY)))
}

/// Brings the copy in `namespace` to `token`: created when missing (never
/// over a Secret that is not a copy), applied again when its token differs.
async fn write_copy(
    client: &Client,
    rc: &RelayCache,
    names: &Names,
    namespace: &str,
    existing: Option<&Secret>,
    token: &ByteString,
) -> Result<(), Error> {
    let copy_name = names.client_token_copy();
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
                namespace: namespace.to_string(),
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
                    namespace: namespace.to_string(),
                    name: copy_name.clone(),
                    source,
                })
            }
        },
    }
    Ok(())
}

/// Every copy of this RelayCache's clients' token, in any namespace.
pub(super) async fn list_copies(client: &Client, names: &Names) -> Result<Vec<Secret>, Error> {
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
pub(super) async fn delete_copies<'a>(
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
pub(super) async fn set_copies_finalizer(
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
