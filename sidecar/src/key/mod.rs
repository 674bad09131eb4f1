//! The cache key: which requests are "the same question".
//!
//! A key hashes, in order and length-prefixed: a format version, the tenant,
//! the method, the path and query, each configured keyed header by name with
//! its values (taken after hop-by-hop headers are removed, as the upstream
//! receives them), the namespace, and last the JSON body in canonical form
//! (see [`crate::canonical`]). Changing any of these inputs, or how they are
//! encoded, must bump [`KEY_FORMAT`].

use std::fmt;
use std::io::Write;

use http::{HeaderMap, HeaderName};
use sha2::Digest;

use crate::canonical::{self, BodyFacts, CanonicalError, IgnoredFields};
use crate::config::{Isolation, KeyConfig, KeyHash};

pub mod explain;

/// Version of the key derivation; part of every key.
pub const KEY_FORMAT: &[u8] = b"relaycache-key/2";

/// Version of the raw-request key (see [`KeyBuilder::raw_key`]).
pub const RAW_KEY_FORMAT: &[u8] = b"relaycache-raw/2";

/// Version of the tenant derivation.
const TENANT_FORMAT: &[u8] = b"relaycache-tenant/2";

/// A 256-bit cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Parses the 64-character hex form shown in `x-relaycache-key`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// Whose entries a request may read and write. Holds a hash, never a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Tenant([u8; 32]);

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({}…)", hex::encode(&self.0[..4]))
    }
}

impl Tenant {
    /// The tenant id, 64 hex characters: what `relaycache key tenant`
    /// prints and what a purge by tenant names. A hash, never the
    /// credential.
    pub fn id(&self) -> String {
        hex::encode(self.0)
    }

    /// The tenant of an id as [`Tenant::id`] writes it.
    pub fn from_id(id: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(id, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The id's 32 bytes, as entries carry them between members.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The tenant of 32 bytes from another member.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

/// Why a request has no tenant, and so is not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTenant {
    /// `credential` isolation, and none of `cache.key.credential_headers`.
    NoCredential,
    /// `header:<name>` isolation, and no such header.
    NoIsolationHeader,
}

impl NoTenant {
    /// The reason, as the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            NoTenant::NoCredential => "no credential header",
            NoTenant::NoIsolationHeader => "no isolation header",
        }
    }
}

/// A request reduced to what its key is derived from: what a cluster
/// client sends with an answer, so that a member derives the key itself.
/// Holds credentials, so it prints none (see its `Debug`).
#[derive(Clone)]
pub struct KeyOrigin {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `x-relaycache-namespace`, if any.
    pub namespace: Option<String>,
    /// Only the headers the tenant and the key read.
    pub headers: HeaderMap,
    /// The request body.
    pub body: bytes::Bytes,
}

impl fmt::Debug for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyOrigin")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("namespace", &self.namespace)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Derives tenants and keys according to the configuration.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    hash: KeyHash,
    isolation: Isolation,
    ignored: IgnoredFields,
    credential_headers: Vec<HeaderName>,
    keyed_headers: Vec<HeaderName>,
}

/// Everything besides the body that goes into a key.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// Whose entry.
    pub tenant: &'a Tenant,
    /// HTTP method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Request headers as forwarded (only the keyed ones are read).
    pub headers: &'a HeaderMap,
    /// `x-relaycache-namespace`, if any.
    pub namespace: Option<&'a str>,
}

enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    /// Writes a length-prefixed field so that field boundaries are unambiguous.
    fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    fn finish(self) -> [u8; 32] {
        match self {
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
            Hasher::Sha256(h) => h.finalize().into(),
        }
    }
}

impl Write for Hasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Header names from configuration; validation already refused bad ones.
fn header_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

impl KeyBuilder {
    /// A builder for the given key settings and isolation.
    pub fn new(config: &KeyConfig, isolation: Isolation) -> Self {
        Self {
            hash: config.hash,
            isolation,
            ignored: IgnoredFields::new(&config.ignore_fields),
            credential_headers: header_names(&config.credential_headers),
            keyed_headers: header_names(&config.headers),
        }
    }

    fn hasher(&self) -> Hasher {
        match self.hash {
            KeyHash::Blake3 => Hasher::Blake3(Box::default()),
            KeyHash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The tenant of a request, or why it has none (such a request must
    /// not be cached).
    pub fn tenant(&self, headers: &HeaderMap) -> Result<Tenant, NoTenant> {
        let mut hasher = self.hasher();
        hasher.field(TENANT_FORMAT);
        match &self.isolation {
            Isolation::Shared => hasher.field(b"shared"),
            Isolation::Credential => {
                // Every credential counts, each under its name: a caller
                // authenticating with Authorization behind a placeholder
                // x-api-key is not the tenant of the placeholder alone.
                let mut found = false;
                for name in &self.credential_headers {
                    for value in headers.get_all(name) {
                        found = true;
                        hasher.field(name.as_str().as_bytes());
                        hasher.field(value.as_bytes());
                    }
                }
                if !found {
                    return Err(NoTenant::NoCredential);
                }
            }
            Isolation::Header(name) => {
                let value = headers
                    .get(name.as_str())
                    .ok_or(NoTenant::NoIsolationHeader)?;
                hasher.field(b"header");
                hasher.field(name.as_bytes());
                hasher.field(value.as_bytes());
            }
        }
        Ok(Tenant(hasher.finish()))
    }

    /// The headers of `headers` that the tenant or the key read, and no
    /// other: what a cluster member needs to derive the key again.
    pub fn headers_in_key<'h>(
        &'h self,
        headers: &'h HeaderMap,
    ) -> impl Iterator<Item = (&'h HeaderName, &'h http::HeaderValue)> + 'h {
        let isolation = match &self.isolation {
            Isolation::Header(name) => HeaderName::from_bytes(name.as_bytes()).ok(),
            _ => None,
        };
        let names: Vec<&'h HeaderName> = self
            .credential_headers
            .iter()
            .filter(|_| self.isolation == Isolation::Credential)
            .chain(&self.keyed_headers)
            .collect();
        headers.iter().filter(move |(name, _)| {
            names.contains(name) || isolation.as_ref().is_some_and(|own| own == *name)
        })
    }

    /// What a member needs to derive the key of this request again.
    pub fn origin(&self, parts: KeyParts<'_>, body: &bytes::Bytes) -> KeyOrigin {
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers_in_key(parts.headers) {
            headers.append(name.clone(), value.clone());
        }
        KeyOrigin {
            method: parts.method.to_string(),
            path: parts.path.to_string(),
            namespace: parts.namespace.map(str::to_string),
            headers,
            body: body.clone(),
        }
    }

    /// The key of the request `origin` describes; `None` when such a
    /// request would not be cached at all (no tenant, or a body that is
    /// not one JSON object).
    pub fn key_of_origin(&self, origin: &KeyOrigin) -> Option<CacheKey> {
        let tenant = self.tenant(&origin.headers).ok()?;
        let parts = KeyParts {
            tenant: &tenant,
            method: &origin.method,
            path: &origin.path,
            headers: &origin.headers,
            namespace: origin.namespace.as_deref(),
        };
        self.key(parts, &origin.body).ok().map(|(key, _)| key)
    }

    /// The key of a request whose body is the JSON object `body`, and what
    /// was learned about the body on the way. Never builds a JSON tree.
    pub fn key(
        &self,
        parts: KeyParts<'_>,
        body: &[u8],
    ) -> Result<(CacheKey, BodyFacts), CanonicalError> {
        let mut hasher = self.head(KEY_FORMAT, parts);
        let facts = canonical::canonicalize(body, &self.ignored, &mut hasher)?;
        Ok((CacheKey(hasher.finish()), facts))
    }

    /// A key over the body's exact bytes, before any parsing. The same bytes
    /// always give the same [`key`](Self::key), so a raw key seen once can
    /// stand for its key: byte-identical repeats skip JSON canonicalization.
    pub fn raw_key(&self, parts: KeyParts<'_>, body: &[u8]) -> CacheKey {
        let mut hasher = self.head(RAW_KEY_FORMAT, parts);
        hasher.update(body);
        CacheKey(hasher.finish())
    }

    /// Hashes everything but the body, which comes last and unprefixed
    /// (nothing follows it, so its end is unambiguous).
    fn head(&self, format: &[u8], parts: KeyParts<'_>) -> Hasher {
        let mut hasher = self.hasher();
        hasher.field(format);
        hasher.field(&parts.tenant.0);
        hasher.field(parts.method.as_bytes());
        hasher.field(parts.path.as_bytes());
        hasher.field(&(self.keyed_headers.len() as u64).to_le_bytes());
        for name in &self.keyed_headers {
            // Repeated headers are kept in order; absent differs from empty.
            hasher.field(name.as_str().as_bytes());
            let values = parts.headers.get_all(name);
            hasher.field(&(values.iter().count() as u64).to_le_bytes());
            for value in values {
                hasher.field(value.as_bytes());
            }
        }
        match parts.namespace {
            Some(ns) => {
                hasher.field(b"ns");
                hasher.field(ns.as_bytes());
            }
            None => hasher.field(b"no-ns"),
        }
        hasher.field(b"body");
        hasher
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(isolation: Isolation) -> KeyBuilder {
        KeyBuilder::new(&KeyConfig::default(), isolation)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn key_of(b: &KeyBuilder, h: &HeaderMap, body: &str) -> CacheKey {
        let tenant = b.tenant(h).unwrap();
        b.key(
            KeyParts {
                tenant: &tenant,
                method: "POST",
                path: "/v1/messages",
                headers: h,
                namespace: None,
            },
            body.as_bytes(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn same_question_same_key() {
        let b = builder(Isolation::Credential);
        let h = headers(&[("x-api-key", "k1"), ("anthropic-version", "2023-06-01")]);
        let a = key_of(
            &b,
            &h,
            r#"{"model":"m","max_tokens":5,"metadata":{"user_id":"u1"}}"#,
        );
        let c = key_of(
            &b,
            &h,
            r#"{ "max_tokens": 5, "model": "m", "metadata": {"user_id": "u2"} }"#,
        );
        assert_eq!(a, c);
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        let b = builder(Isolation::Credential);
        let h = headers(&[("x-api-key", "k1"), ("anthropic-version", "2023-06-01")]);
        let base = key_of(&b, &h, r#"{"model":"m","stream":false}"#);
        assert_ne!(base, key_of(&b, &h, r#"{"model":"m","stream":true}"#));
        assert_ne!(base, key_of(&b, &h, r#"{"model":"m2","stream":false}"#));
        let other_version = headers(&[("x-api-key", "k1"), ("anthropic-version", "2024-01-01")]);
        assert_ne!(
            base,
            key_of(&b, &other_version, r#"{"model":"m","stream":false}"#)
        );
        let beta = headers(&[
            ("x-api-key", "k1"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "x"),
        ]);
        assert_ne!(base, key_of(&b, &beta, r#"{"model":"m","stream":false}"#));
    }

    #[test]
    fn credentials_isolate_tenants() {
        let b = builder(Isolation::Credential);
        let body = r#"{"model":"m"}"#;
        let k1 = key_of(&b, &headers(&[("x-api-key", "k1")]), body);
        let k2 = key_of(&b, &headers(&[("x-api-key", "k2")]), body);
        let bearer = key_of(&b, &headers(&[("authorization", "Bearer k1")]), body);
        assert_ne!(k1, k2);
        assert_ne!(k1, bearer);

        let shared = builder(Isolation::Shared);
        assert_eq!(
            key_of(&shared, &headers(&[("x-api-key", "k1")]), body),
            key_of(&shared, &headers(&[("x-api-key", "k2")]), body)
        );
    }

    #[test]
    fn header_isolation_requires_the_header() {
        let b = builder(Isolation::Header("x-team".into()));
        assert_eq!(
            b.tenant(&headers(&[("x-api-key", "k1")])),
            Err(NoTenant::NoIsolationHeader)
        );
        assert_ne!(
            b.tenant(&headers(&[("x-team", "a")])),
            b.tenant(&headers(&[("x-team", "b")]))
        );
    }

    #[test]
    fn sha256_and_blake3_differ_but_are_stable() {
        let h = headers(&[]);
        let blake = key_of(&builder(Isolation::Shared), &h, "{}");
        let sha = KeyBuilder::new(
            &KeyConfig {
                hash: KeyHash::Sha256,
                ..KeyConfig::default()
            },
            Isolation::Shared,
        );
        let sha_key = key_of(&sha, &h, "{}");
        assert_ne!(blake, sha_key);
        assert_eq!(sha_key, key_of(&sha, &h, "{ }"));
        assert_eq!(CacheKey::from_hex(&sha_key.to_string()), Some(sha_key));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn parts_key(b: &KeyBuilder, h: &HeaderMap) -> Option<CacheKey> {
            let tenant = b.tenant(h).ok()?;
            Some(key_of_tenant(b, &tenant, h))
        }

        fn key_of_tenant(b: &KeyBuilder, tenant: &Tenant, h: &HeaderMap) -> CacheKey {
            b.key(
                KeyParts {
                    tenant,
                    method: "POST",
                    path: "/v1/messages",
                    headers: h,
                    namespace: None,
                },
                br#"{"model":"m","messages":[]}"#,
            )
            .unwrap()
            .0
        }

        fn credential_header() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "x-api-key",
                "authorization",
                "api-key",
                "x-goog-api-key",
            ])
        }

        fn keyed_header() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "anthropic-version",
                "anthropic-beta",
                "openai-organization",
                "openai-project",
                "openai-beta",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn different_credentials_never_share_a_key(
                // A tiny alphabet, so that equal values under other names,
                // and equal sets in other orders, come up often.
                a in prop::collection::vec((credential_header(), "[ab]{1,2}"), 1..3),
                b in prop::collection::vec((credential_header(), "[ab]{1,2}"), 1..3),
            ) {
                let pairs = |list: &[(&'static str, String)]| -> HeaderMap {
                    let borrowed: Vec<(&str, &str)> = list.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    headers(&borrowed)
                };
                let (ha, hb) = (pairs(&a), pairs(&b));
                let builder = builder(Isolation::Credential);
                let ka = parts_key(&builder, &ha).unwrap();
                let kb = parts_key(&builder, &hb).unwrap();
                // Keys are equal only for the same credentials (in the
                // configured header order, values in order).
                let order = |h: &HeaderMap| -> Vec<(String, Vec<u8>)> {
                    ["x-api-key", "authorization", "api-key", "x-goog-api-key"]
                        .iter()
                        .flat_map(|n| h.get_all(*n).iter().map(move |v| (n.to_string(), v.as_bytes().to_vec())))
                        .collect()
                };
                prop_assert_eq!(ka == kb, order(&ha) == order(&hb), "{:?} vs {:?}", a, b);
            }

            #[test]
            fn different_keyed_headers_never_share_a_key(
                name_a in keyed_header(),
                name_b in keyed_header(),
                a in "[ab ]{0,2}",
                b in "[ab ]{0,2}",
                absent in any::<bool>(),
            ) {
                let builder = builder(Isolation::Shared);
                let with_a = headers(&[(name_a, a.as_str())]);
                let with_b = if absent { HeaderMap::new() } else { headers(&[(name_b, b.as_str())]) };
                let ka = parts_key(&builder, &with_a).unwrap();
                let kb = parts_key(&builder, &with_b).unwrap();
                let same = !absent && name_a == name_b && a == b;
                prop_assert_eq!(ka == kb, same, "{}: {:?} vs {}: {:?}", name_a, a, name_b, b);
            }
        }
    }
}
