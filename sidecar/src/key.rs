//! The cache key: which requests are "the same question".
//!
//! A key hashes, in order and length-prefixed: a format version, the tenant,
//! the method, the path and query, the headers that change the answer, the
//! namespace, and the JSON body in canonical form (object keys sorted, no
//! whitespace) with the configured ignored fields removed. Changing any of
//! these inputs, or how they are encoded, must bump [`KEY_FORMAT`].

use std::fmt;

use http::HeaderMap;
use serde_json::Value;
use sha2::Digest;

use crate::config::{Isolation, KeyConfig, KeyHash};

/// Version of the key derivation; part of every key.
pub const KEY_FORMAT: &[u8] = b"relaycache-key/1";

/// Version of the raw-request key (see [`KeyBuilder::raw_key`]).
pub const RAW_KEY_FORMAT: &[u8] = b"relaycache-raw/1";

/// Request headers that change the answer and so are part of the key.
pub const KEYED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

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

/// Derives tenants and keys according to the configuration.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    hash: KeyHash,
    isolation: Isolation,
    ignore_fields: Vec<Vec<String>>,
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
    /// Request headers (only [`KEYED_HEADERS`] are read).
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

impl KeyBuilder {
    /// A builder for the given key settings and isolation.
    pub fn new(config: &KeyConfig, isolation: Isolation) -> Self {
        Self {
            hash: config.hash,
            isolation,
            ignore_fields: config
                .ignore_fields
                .iter()
                .map(|f| f.split('.').map(String::from).collect())
                .collect(),
        }
    }

    fn hasher(&self) -> Hasher {
        match self.hash {
            KeyHash::Blake3 => Hasher::Blake3(Box::default()),
            KeyHash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The tenant of a request, or `None` when isolation needs a header the
    /// request lacks (such a request must not be cached).
    pub fn tenant(&self, headers: &HeaderMap) -> Option<Tenant> {
        let mut hasher = self.hasher();
        hasher.field(b"relaycache-tenant/1");
        match &self.isolation {
            Isolation::Shared => hasher.field(b"shared"),
            Isolation::Credential => {
                // A caller without a credential is its own anonymous tenant;
                // the upstream refuses it anyway and refusals are not stored.
                let credential = headers
                    .get("x-api-key")
                    .map(|v| (&b"x-api-key"[..], v))
                    .or_else(|| {
                        headers
                            .get(http::header::AUTHORIZATION)
                            .map(|v| (&b"authorization"[..], v))
                    });
                match credential {
                    Some((name, value)) => {
                        hasher.field(name);
                        hasher.field(value.as_bytes());
                    }
                    None => hasher.field(b"anonymous"),
                }
            }
            Isolation::Header(name) => {
                let value = headers.get(name.as_str())?;
                hasher.field(b"header");
                hasher.field(name.as_bytes());
                hasher.field(value.as_bytes());
            }
        }
        Some(Tenant(hasher.finish()))
    }

    /// The key of a request whose body parsed as `body`. Removes the ignored
    /// fields from `body` in place.
    pub fn key(&self, parts: KeyParts<'_>, body: &mut Value) -> CacheKey {
        for path in &self.ignore_fields {
            remove_path(body, path);
        }
        let mut canonical = Vec::with_capacity(1024);
        write_canonical(body, &mut canonical);
        self.hash_parts(KEY_FORMAT, parts, &canonical)
    }

    /// A key over the body's exact bytes, before any parsing. The same bytes
    /// always give the same [`key`](Self::key), so a raw key seen once can
    /// stand for its key: byte-identical repeats skip JSON canonicalization.
    pub fn raw_key(&self, parts: KeyParts<'_>, body: &[u8]) -> CacheKey {
        self.hash_parts(RAW_KEY_FORMAT, parts, body)
    }

    fn hash_parts(&self, format: &[u8], parts: KeyParts<'_>, body: &[u8]) -> CacheKey {
        let mut hasher = self.hasher();
        hasher.field(format);
        hasher.field(&parts.tenant.0);
        hasher.field(parts.method.as_bytes());
        hasher.field(parts.path.as_bytes());
        for name in KEYED_HEADERS {
            // Repeated headers are joined in order; absent differs from empty.
            let values: Vec<&[u8]> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            hasher.field(&(values.len() as u64).to_le_bytes());
            for value in values {
                hasher.field(value);
            }
        }
        match parts.namespace {
            Some(ns) => {
                hasher.field(b"ns");
                hasher.field(ns.as_bytes());
            }
            None => hasher.field(b"no-ns"),
        }
        hasher.field(body);
        CacheKey(hasher.finish())
    }
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for part in parents {
        match current.get_mut(part.as_str()) {
            Some(next) => current = next,
            None => return,
        }
    }
    if let Value::Object(map) = current {
        map.remove(last.as_str());
    }
}

/// Writes `value` as compact JSON with object keys sorted by their bytes,
/// independent of how serde_json's map is ordered in this build.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_json_string(s, out),
        scalar => {
            // Numbers, booleans and null have one compact form.
            if serde_json::to_writer(&mut *out, scalar).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Most strings in a prompt need no escaping; copy those straight through.
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
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
        let mut value: Value = serde_json::from_str(body).unwrap();
        b.key(
            KeyParts {
                tenant: &tenant,
                method: "POST",
                path: "/v1/messages",
                headers: h,
                namespace: None,
            },
            &mut value,
        )
    }

    #[test]
    fn canonical_form_sorts_keys_and_drops_whitespace() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [1, {"z":1, "a":"x\n"}], "a": null }"#).unwrap();
        let mut out = Vec::new();
        write_canonical(&value, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":null,"b":[1,{"a":"x\n","z":1}]}"#
        );
    }

    #[test]
    fn plain_and_escaped_strings_match_serde() {
        for text in [
            "plain text",
            "quote \" here",
            "back\\slash",
            "tab\tnew\nline",
            "\u{1}",
            "caf\u{e9} \u{1F600}",
        ] {
            let mut ours = Vec::new();
            write_json_string(text, &mut ours);
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
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
        assert!(b.tenant(&headers(&[("x-api-key", "k1")])).is_none());
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
}
