//! Why a request has the key it has: every part of the key with its own
//! digest, and the first part in which two requests differ. Serves
//! `relaycache key explain`, `key diff` and `key tenant`, and the
//! `x-relaycache-explain` answer header.
//!
//! An explanation never holds a credential or a keyed header's value:
//! only the tenant id (a hash), header names, value counts and digests.
//! A caller asking for the explanation of its own request learns nothing
//! about anyone else's.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Hasher, KeyBuilder, KeyParts, NoTenant, KEY_FORMAT};
use crate::canonical::{self, CanonicalError};
use crate::config::Config;
use crate::headers;
use crate::policy::RequestPolicy;

/// Hex digits of each part's digest shown (the first 64 bits).
const DIGEST_HEX: usize = 16;

/// Request header that asks for the explanation of the request's key in
/// the answer header of the same name.
pub const EXPLAIN_HEADER: &str = "x-relaycache-explain";

/// A part of the key shown as it is, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownPart {
    /// The value.
    pub value: String,
    /// Its digest.
    pub digest: String,
}

/// A keyed header: its name, how many values it had, and their digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderPart {
    /// The header's name.
    pub name: String,
    /// How many values it had (0: absent, which differs from empty).
    pub values: usize,
    /// The digest of its values, in order.
    pub digest: String,
}

/// The body as it is keyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart {
    /// The digest of its canonical form.
    pub digest: String,
    /// Members present in the body and left out by `cache.key.ignore_fields`.
    pub ignored: Vec<String>,
    /// `"stream": true`.
    pub streamed: bool,
}

/// Every part of a request's key, in the order they are hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExplanation {
    /// The key, as `x-relaycache-key` shows it.
    pub key: String,
    /// The key derivation's version.
    pub format: String,
    /// The tenant id: a hash of the credential (or isolation header),
    /// never the credential.
    pub tenant: String,
    /// The HTTP method.
    pub method: ShownPart,
    /// Path and query.
    pub path: ShownPart,
    /// `cache.key.headers`, each whether present or not.
    pub headers: Vec<HeaderPart>,
    /// `x-relaycache-namespace`, when given.
    pub namespace: Option<ShownPart>,
    /// The body.
    pub body: BodyPart,
}

/// An explanation and the body it describes without its ignored members,
/// for finding where two bodies differ.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The explanation.
    pub explanation: KeyExplanation,
    keyed_body: Value,
}

/// Why a request could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The request has no tenant, so it is never cached.
    #[error("this request is not cached: it has {}; add it, or change cache.isolation", .0.as_str())]
    NoTenant(NoTenant),
    /// The body has no canonical form, so it is never cached.
    #[error("this request is not cached: {0}")]
    Body(#[from] CanonicalError),
    /// A `--header` flag that is not `Name: value`.
    #[error("{0:?} is not a header; write it as 'Name: value'")]
    Header(String),
}

/// A request as given to `relaycache key explain`: the method, the path,
/// the headers and the body.
#[derive(Debug, Clone)]
pub struct AskedRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: bytes::Bytes,
}

impl AskedRequest {
    /// A POST of `body` to `path`, with `headers` given as `Name: value`.
    pub fn new(path: &str, headers: &[String], body: bytes::Bytes) -> Result<Self, ExplainError> {
        let mut map = HeaderMap::new();
        for header in headers {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| ExplainError::Header(header.clone()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ExplainError::Header(header.clone()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| ExplainError::Header(header.clone()))?;
            map.append(name, value);
        }
        Ok(Self {
            method: http::Method::POST,
            path: path.to_string(),
            headers: map,
            body,
        })
    }

    /// The request's key explained under `config`, as the proxy would key
    /// it: without hop-by-hop headers, with its namespace header read.
    pub fn explain(&self, config: &Config) -> Result<Explained, ExplainError> {
        let keys = KeyBuilder::new(&config.cache.key, config.cache.isolation.clone());
        let mut headers = self.headers.clone();
        headers::strip_hop_by_hop(&mut headers);
        let tenant = keys.tenant(&headers).map_err(ExplainError::NoTenant)?;
        let policy = RequestPolicy::from_headers(&headers, config.cache.ttl, config.cache.max_ttl);
        let parts = KeyParts {
            tenant: &tenant,
            method: self.method.as_str(),
            path: &self.path,
            headers: &headers,
            namespace: policy.namespace.as_deref(),
        };
        Ok(keys.explain(parts, &self.body)?)
    }
}

impl KeyBuilder {
    /// Every part of the key of a request whose body is `body`.
    pub fn explain(&self, parts: KeyParts<'_>, body: &[u8]) -> Result<Explained, CanonicalError> {
        let (key, facts) = self.key(parts, body)?;
        let digest = |fields: &[&[u8]]| {
            let mut hasher = self.hasher();
            for field in fields {
                hasher.field(field);
            }
            short(hasher)
        };
        let shown = |value: &str| ShownPart {
            value: value.to_string(),
            digest: digest(&[value.as_bytes()]),
        };
        let headers = self
            .keyed_headers
            .iter()
            .map(|name| {
                let values: Vec<&[u8]> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                HeaderPart {
                    name: name.to_string(),
                    values: values.len(),
                    digest: digest(&values),
                }
            })
            .collect();
        let mut body_hasher = self.hasher();
        canonical::canonicalize(body, &self.ignored, &mut body_hasher)?;
        let mut keyed_body: Value = serde_json::from_slice(body)?;
        let ignored = self.ignored.strip(&mut keyed_body);
        Ok(Explained {
            explanation: KeyExplanation {
                key: key.to_string(),
                format: String::from_utf8_lossy(KEY_FORMAT).into_owned(),
                tenant: parts.tenant.id(),
                method: shown(parts.method),
                path: shown(parts.path),
                headers,
                namespace: parts.namespace.map(shown),
                body: BodyPart {
                    digest: short(body_hasher),
                    ignored,
                    streamed: facts.streamed,
                },
            },
            keyed_body,
        })
    }
}

fn short(hasher: Hasher) -> String {
    let mut text = hex::encode(hasher.finish());
    text.truncate(DIGEST_HEX);
    text
}

impl KeyExplanation {
    /// The explanation as one header value: JSON, with anything outside
    /// printable ASCII escaped so that every explanation fits a header.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let json = serde_json::to_string(self).ok()?;
        let mut ascii = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() && !c.is_ascii_control() {
                ascii.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    ascii.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        HeaderValue::from_str(&ascii).ok()
    }
}

impl fmt::Display for KeyExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key        {}", self.key)?;
        writeln!(f, "format     {}", self.format)?;
        writeln!(f, "tenant     {}", self.tenant)?;
        writeln!(
            f,
            "method     {:<16}  {}",
            self.method.digest, self.method.value
        )?;
        writeln!(
            f,
            "path       {:<16}  {}",
            self.path.digest, self.path.value
        )?;
        for header in &self.headers {
            let values = match header.values {
                0 => "absent".to_string(),
                1 => "1 value".to_string(),
                n => format!("{n} values"),
            };
            writeln!(
                f,
                "header     {:<16}  {} ({values})",
                header.digest, header.name
            )?;
        }
        match &self.namespace {
            Some(ns) => writeln!(f, "namespace  {:<16}  {}", ns.digest, ns.value)?,
            None => writeln!(f, "namespace  none")?,
        }
        let streamed = if self.body.streamed { ", streamed" } else { "" };
        writeln!(
            f,
            "body       {:<16}  canonical JSON{streamed}",
            self.body.digest
        )?;
        if self.body.ignored.is_empty() {
            writeln!(f, "ignored    none (cache.key.ignore_fields)")
        } else {
            writeln!(f, "ignored    {}", self.body.ignored.join(", "))
        }
    }
}

/// The first part in which two requests' keys differ, in hashing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDifference {
    /// The keys are the same.
    None,
    /// Different credentials (or isolation header values).
    Tenant,
    /// Different methods.
    Method,
    /// Different paths or queries.
    Path,
    /// A keyed header with different values.
    Header(String),
    /// Different namespaces, or a namespace on one side only.
    Namespace,
    /// Different bodies; the JSON path of the first differing value, when
    /// one differs after ignored members are left out (numbers and
    /// strings spelled differently but keyed alike do not).
    Body(Option<String>),
}

impl Explained {
    /// Where `self` and `other` first differ.
    pub fn first_difference(&self, other: &Explained) -> KeyDifference {
        let (a, b) = (&self.explanation, &other.explanation);
        if a.key == b.key {
            return KeyDifference::None;
        }
        if a.tenant != b.tenant {
            return KeyDifference::Tenant;
        }
        if a.method != b.method {
            return KeyDifference::Method;
        }
        if a.path != b.path {
            return KeyDifference::Path;
        }
        if let Some((header, _)) = a.headers.iter().zip(&b.headers).find(|(x, y)| x != y) {
            return KeyDifference::Header(header.name.clone());
        }
        if a.namespace != b.namespace {
            return KeyDifference::Namespace;
        }
        KeyDifference::Body(first_differing_path(
            &self.keyed_body,
            &other.keyed_body,
            "$",
        ))
    }
}

impl fmt::Display for KeyDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDifference::None => f.write_str("same key"),
            KeyDifference::Tenant => {
                f.write_str("tenant: a different credential (or isolation header)")
            }
            KeyDifference::Method => f.write_str("method"),
            KeyDifference::Path => f.write_str("path"),
            KeyDifference::Header(name) => write!(f, "header {name}"),
            KeyDifference::Namespace => f.write_str("namespace (x-relaycache-namespace)"),
            KeyDifference::Body(Some(path)) => write!(f, "body at {path}"),
            KeyDifference::Body(None) => {
                f.write_str("body: its canonical form (a number or string spelled differently)")
            }
        }
    }
}

/// The JSON path of the first value that differs, members in key order
/// (the canonical form's order).
fn first_differing_path(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            names.into_iter().find_map(|name| {
                let path = format!("{at}.{name}");
                match (x.get(name), y.get(name)) {
                    (Some(u), Some(v)) => first_differing_path(u, v, &path),
                    _ => Some(path),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_differing_path(u, v, &format!("{at}[{i}]")))
            .or_else(|| (x.len() != y.len()).then(|| format!("{at}[{}]", x.len().min(y.len())))),
        _ if a == b => None,
        _ => Some(at.to_string()),
    }
}

/// The tenant id of a credential presented in `header` under `config`'s
/// isolation, as `relaycache key tenant` prints it.
pub fn tenant_of(config: &Config, header: &str, credential: &str) -> Result<String, ExplainError> {
    let request = AskedRequest::new(
        "/",
        &[format!("{header}: {credential}")],
        bytes::Bytes::new(),
    )?;
    let keys = KeyBuilder::new(&config.cache.key, config.cache.isolation.clone());
    keys.tenant(&request.headers)
        .map(|tenant| tenant.id())
        .map_err(ExplainError::NoTenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ignore: &[&str]) -> Config {
        let mut config = Config::default();
        config.cache.key.ignore_fields = ignore.iter().map(|s| s.to_string()).collect();
        config
    }

    fn asked(headers: &[&str], body: &str) -> AskedRequest {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        AskedRequest::new(
            "/v1/messages",
            &headers,
            bytes::Bytes::from(body.to_string()),
        )
        .unwrap()
    }

    const ANTHROPIC: [&str; 2] = ["x-api-key: sk-one", "anthropic-version: 2023-06-01"];

    #[test]
    fn an_explanation_names_every_part_and_never_a_credential() {
        let config = config(&["metadata.user_id"]);
        let body = r#"{"model":"m","metadata":{"user_id":"u1"},"messages":[]}"#;
        let explained = asked(&ANTHROPIC, body).explain(&config).unwrap();
        let e = &explained.explanation;
        assert_eq!(e.key.len(), 64);
        assert_eq!(e.tenant.len(), 64);
        assert_eq!(e.method.value, "POST");
        assert_eq!(e.path.value, "/v1/messages");
        assert_eq!(e.body.ignored, ["metadata.user_id"]);
        let version = e
            .headers
            .iter()
            .find(|h| h.name == "anthropic-version")
            .unwrap();
        assert_eq!(version.values, 1);
        assert!(e
            .headers
            .iter()
            .any(|h| h.name == "anthropic-beta" && h.values == 0));
        let printed = format!("{e}{}", serde_json::to_string(e).unwrap());
        assert!(!printed.contains("sk-one"), "{printed}");
        assert!(
            !printed.contains("2023-06-01"),
            "header values are digests: {printed}"
        );
        assert!(printed.contains("metadata.user_id"));
    }

    #[test]
    fn diff_names_the_first_part_that_differs() {
        let config = config(&["metadata.user_id"]);
        let base = r#"{"model":"m","metadata":{"user_id":"u1"},"messages":[{"role":"user","content":"hi"}]}"#;
        let a = asked(&ANTHROPIC, base).explain(&config).unwrap();
        let diff = |headers: &[&str], body: &str| {
            a.first_difference(&asked(headers, body).explain(&config).unwrap())
        };
        let only_ignored = base.replace("u1", "u2");
        assert_eq!(diff(&ANTHROPIC, &only_ignored), KeyDifference::None);
        assert_eq!(
            diff(
                &["x-api-key: sk-two", "anthropic-version: 2023-06-01"],
                base
            ),
            KeyDifference::Tenant
        );
        assert_eq!(
            diff(
                &["x-api-key: sk-one", "anthropic-version: 2024-01-01"],
                base
            ),
            KeyDifference::Header("anthropic-version".into())
        );
        let mut namespaced = ANTHROPIC.to_vec();
        namespaced.push("x-relaycache-namespace: eval");
        assert_eq!(diff(&namespaced, base), KeyDifference::Namespace);
        assert_eq!(
            diff(&ANTHROPIC, &base.replace("\"hi\"", "\"hello\"")),
            KeyDifference::Body(Some("$.messages[0].content".into()))
        );
        assert_eq!(
            diff(&ANTHROPIC, &base.replace("\"model\":\"m\",", "")),
            KeyDifference::Body(Some("$.model".into()))
        );
    }

    #[test]
    fn the_header_form_is_ascii_json() {
        let mut namespaced = ANTHROPIC.to_vec();
        namespaced.push("x-relaycache-namespace: team");
        let e = asked(&namespaced, r#"{"model":"m"}"#)
            .explain(&Config::default())
            .unwrap()
            .explanation;
        let value = e.header_value().unwrap();
        let back: KeyExplanation = serde_json::from_slice(value.as_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_request_that_is_never_cached_says_why() {
        let err = asked(&["anthropic-version: 2023-06-01"], "{}")
            .explain(&Config::default())
            .unwrap_err();
        assert!(err.to_string().contains("no credential header"), "{err}");
        let err = asked(&ANTHROPIC, "[1]")
            .explain(&Config::default())
            .unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        assert!(AskedRequest::new("/", &["no colon".into()], bytes::Bytes::new()).is_err());
    }

    #[test]
    fn tenant_ids_match_the_explanations() {
        let config = Config::default();
        let id = tenant_of(&config, "x-api-key", "sk-one").unwrap();
        let e = asked(&["x-api-key: sk-one"], "{}")
            .explain(&config)
            .unwrap();
        assert_eq!(id, e.explanation.tenant);
        assert_ne!(id, tenant_of(&config, "x-api-key", "sk-two").unwrap());
    }
}
