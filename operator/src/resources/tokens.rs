//! The two tokens of a cache cluster and the Secrets that hold them.
//!
//! Members present the members' token to each other; injected sidecars
//! present the clients' token. Each lives in a Secret under key `token`:
//! one the spec names (`replication.tokenSecret`,
//! `replication.clientTokenSecret`), or one the operator generates
//! (`NAME-member-token`, `NAME-client-token`: 32 random bytes as hex, owned
//! by the RelayCache, created when absent and never overwritten). Pods read
//! them by `secretKeyRef`, so no token is ever a literal in a pod spec or a
//! ConfigMap. Namespaces allowed by `spec.clients` get a copy of the
//! clients' Secret, never of the members'.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;

use super::configmap::{CLIENT_TOKEN_ENV, PEER_TOKEN_ENV};
use super::Names;
use crate::crd::RelayCache;

/// Key of the token in every token Secret.
pub const TOKEN_KEY: &str = "token";
/// Random bytes in a generated token (hex-encoded: 64 characters).
pub const TOKEN_BYTES: usize = 32;
/// Label on a copy of the clients' Secret: the namespace of its RelayCache.
pub const COPY_OF_NAMESPACE_LABEL: &str = "relaycache.io/client-token-of-namespace";
/// Label on a copy of the clients' Secret: the name of its RelayCache.
pub const COPY_OF_NAME_LABEL: &str = "relaycache.io/client-token-of-name";

/// Which token a Secret holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The members' token (`cache.ha.token`).
    Member,
    /// The clients' token (`cache.ha.client_token`).
    Client,
}

impl Role {
    /// The environment variable the proxy's config reads it from.
    pub fn env(self) -> &'static str {
        match self {
            Role::Member => PEER_TOKEN_ENV,
            Role::Client => CLIENT_TOKEN_ENV,
        }
    }
}

/// Where a RelayCache's token of one role lives, in its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSecret {
    /// Which token.
    pub role: Role,
    /// Name of the Secret.
    pub name: String,
    /// The operator generates it (the spec names none).
    pub generated: bool,
}

/// The Secret holding `role`'s token for a RelayCache.
pub fn token_secret(rc: &RelayCache, names: &Names, role: Role) -> TokenSecret {
    let (named, generated_name) = match role {
        Role::Member => (
            rc.spec.replication.token_secret.as_ref(),
            names.member_token_secret(),
        ),
        Role::Client => (
            rc.spec.replication.client_token_secret.as_ref(),
            names.client_token_secret(),
        ),
    };
    match named {
        Some(secret) => TokenSecret {
            role,
            name: secret.name.clone(),
            generated: false,
        },
        None => TokenSecret {
            role,
            name: generated_name,
            generated: true,
        },
    }
}

/// Both token Secrets of a RelayCache, members' first.
pub fn token_secrets(rc: &RelayCache, names: &Names) -> [TokenSecret; 2] {
    [
        token_secret(rc, names, Role::Member),
        token_secret(rc, names, Role::Client),
    ]
}

/// The environment variable that hands a container the token of
/// `secret_name`, by reference. Required: the kubelet does not start the
/// container until the Secret exists, which the operator sees to.
pub fn token_env(role: Role, secret_name: &str) -> EnvVar {
    EnvVar {
        name: role.env().into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name.into(),
                key: TOKEN_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Why no token could be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed; no token was generated")]
pub struct NoRandomness;

/// A new token: [`TOKEN_BYTES`] bytes from the system's secure random
/// number generator, as lower-case hex.
pub fn random_token() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| NoRandomness)?;
    Ok(hex::encode(bytes))
}

/// A generated token Secret, owned by the RelayCache.
pub fn generated_secret(
    names: &Names,
    owner: &OwnerReference,
    secret: &TokenSecret,
    token: String,
) -> Secret {
    Secret {
        metadata: names.child_meta(secret.name.clone(), owner),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The labels that mark a copy of this RelayCache's clients' Secret.
pub fn copy_labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = names.labels();
    labels.insert(COPY_OF_NAMESPACE_LABEL.into(), names.namespace.clone());
    labels.insert(COPY_OF_NAME_LABEL.into(), names.name.clone());
    labels
}

/// The label selector of every copy of this RelayCache's clients' Secret.
pub fn copy_selector(names: &Names) -> String {
    copy_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The copy of the clients' token in `namespace`. No owner reference: an
/// owner must live in the same namespace, so copies are found by their
/// labels and removed by the operator.
pub fn client_token_copy(names: &Names, namespace: &str, token: ByteString) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names.client_token_copy()),
            namespace: Some(namespace.into()),
            labels: Some(copy_labels(names)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token)])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{owner, rc};
    use serde_json::json;

    #[test]
    fn generated_tokens_are_32_random_bytes_as_hex() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_the_spec_names_replace_the_generated_ones() {
        let web = rc("web", json!({}));
        let names = Names::of(&web).unwrap();
        let [member, client] = token_secrets(&web, &names);
        assert_eq!(
            (member.name.as_str(), member.generated),
            ("web-member-token", true)
        );
        assert_eq!(
            (client.name.as_str(), client.generated),
            ("web-client-token", true)
        );
        let named = rc(
            "web",
            json!({"replication": {"tokenSecret": {"name": "m"}, "clientTokenSecret": {"name": "c"}}}),
        );
        let [member, client] = token_secrets(&named, &names);
        assert_eq!((member.name.as_str(), member.generated), ("m", false));
        assert_eq!((client.name.as_str(), client.generated), ("c", false));
    }

    #[test]
    fn a_generated_secret_is_owned_and_a_copy_is_labelled() {
        let web = rc("web", json!({}));
        let names = Names::of(&web).unwrap();
        let member = token_secret(&web, &names, Role::Member);
        let secret = generated_secret(&names, &owner(&web), &member, "ab".into());
        assert_eq!(secret.metadata.name.as_deref(), Some("web-member-token"));
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "uid-web");
        assert_eq!(secret.data.unwrap()["token"].0, b"ab");

        let copy = client_token_copy(&names, "apps", ByteString(b"cd".to_vec()));
        assert_eq!(
            copy.metadata.name.as_deref(),
            Some("cache.web-client-token")
        );
        assert_eq!(copy.metadata.namespace.as_deref(), Some("apps"));
        assert!(copy.metadata.owner_references.is_none());
        let labels = copy.metadata.labels.unwrap();
        assert_eq!(labels[COPY_OF_NAMESPACE_LABEL], "cache");
        assert_eq!(labels[COPY_OF_NAME_LABEL], "web");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "relaycache-operator"
        );
        assert!(copy_selector(&names).contains("relaycache.io/client-token-of-name=web"));
    }
}
