//! An entry's object (`KEY.entry`): its metadata (what is needed to
//! rebuild the answer from its body, the body's digest, the retention it
//! was written with), then the body; and the retention marker
//! (`KEY.keep`) that extends it without rewriting the body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{META_FORMAT, META_FORMAT_ZSTD};
use crate::compression::BodyEncoding;
use crate::entry::filter::{EntryFilter, EntryScope};
use crate::entry::{CachedResponse, Received, TokenUsage};
use crate::key::{CacheKey, Tenant};

/// Bytes at the start of an entry object that hold the metadata's length.
const LENGTH_BYTES: usize = 4;

/// A retention extension: the entry is kept until the later of its own
/// `retention_until_ms` and this one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Keep {
    pub(super) retention_until_ms: u64,
}

impl Keep {
    pub(super) fn encode(self) -> Vec<u8> {
        serde_json::to_vec(&self).unwrap_or_default()
    }

    /// `None` for anything that is not a marker (it extends nothing).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The entry object: the metadata's length (u32, little-endian), the
/// metadata as JSON, the body.
pub(super) fn encode_object(meta: &Metadata, body: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).unwrap_or_default();
    let mut object = Vec::with_capacity(LENGTH_BYTES + meta.len() + body.len());
    object.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_le_bytes());
    object.extend_from_slice(&meta);
    object.extend_from_slice(body);
    object
}

/// How many bytes from the start of an entry object hold its length and
/// metadata, read from its first bytes.
pub(super) fn header_len(start: &[u8]) -> Option<usize> {
    let length: [u8; LENGTH_BYTES] = start.get(..LENGTH_BYTES)?.try_into().ok()?;
    Some(LENGTH_BYTES + usize::try_from(u32::from_le_bytes(length)).ok()?)
}

/// The metadata of an entry object whose first bytes are `start` (at least
/// [`header_len`] of them), if it is `key`'s in this format.
pub(super) fn decode_header(start: &[u8], key: &CacheKey) -> Option<Metadata> {
    let end = header_len(start)?;
    Metadata::decode(start.get(LENGTH_BYTES..end)?, key)
}

/// Splits a whole entry object into its metadata and body.
pub(super) fn decode_object(object: Bytes, key: &CacheKey) -> Option<(Metadata, Bytes)> {
    let meta = decode_header(&object, key)?;
    let end = header_len(&object)?;
    Some((meta, object.slice(end..)))
}

/// What is kept in front of each body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Metadata {
    pub(super) format: u32,
    pub(super) key: String,
    pub(super) created_ms: u64,
    pub(super) fresh_until_ms: u64,
    pub(super) retention_until_ms: u64,
    /// Length of the body as stored.
    pub(super) body_len: u64,
    /// BLAKE3 of the body as stored, hex.
    pub(super) body_digest: String,
    /// How the body is stored (absent: as the upstream sent it).
    #[serde(default)]
    pub(super) body_encoding: BodyEncoding,
    pub(super) headers: Vec<(String, String)>,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    /// Absent in entries written before prompt-cache tokens were counted.
    #[serde(default)]
    pub(super) cache_read_tokens: u64,
    #[serde(default)]
    pub(super) cache_creation_tokens: u64,
    #[serde(default)]
    pub(super) model: Option<String>,
    /// The tenant id, hex (absent when unknown).
    #[serde(default)]
    pub(super) tenant: Option<String>,
    #[serde(default)]
    pub(super) namespace: Option<String>,
}

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Metadata {
    /// The metadata of `entry`'s object, whose body is the entry's body
    /// as stored.
    pub(super) fn describe(key: &CacheKey, entry: &CachedResponse, retention: Duration) -> Self {
        let created = unix_ms(entry.created);
        let (encoding, stored_body) = entry.stored_body();
        Self {
            // A compressed body gets a format of its own, which readers
            // from before compression refuse rather than serve undecoded.
            format: match encoding {
                BodyEncoding::Identity => META_FORMAT,
                BodyEncoding::Zstd => META_FORMAT_ZSTD,
            },
            key: key.to_string(),
            created_ms: created,
            fresh_until_ms: created
                .saturating_add(u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX)),
            retention_until_ms: unix_ms(SystemTime::now() + retention),
            body_len: stored_body.len() as u64,
            body_digest: blake3::hash(&stored_body).to_hex().to_string(),
            body_encoding: encoding,
            headers: entry
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            input_tokens: entry.usage.input,
            output_tokens: entry.usage.output,
            cache_read_tokens: entry.usage.cache_read,
            cache_creation_tokens: entry.usage.cache_creation,
            model: entry.model.as_deref().map(str::to_string),
            tenant: entry.tenant.as_ref().map(Tenant::id),
            namespace: entry.namespace.as_deref().map(str::to_string),
        }
    }

    /// Whether the entry is kept: fresh, or expired no longer ago than
    /// `keep_stale_ms` (for stale-if-error), and within its retention
    /// (its own, or `extended_until_ms` from its marker).
    pub(super) fn is_kept(&self, now_ms: u64, keep_stale_ms: u64, extended_until_ms: u64) -> bool {
        now_ms < self.fresh_until_ms.saturating_add(keep_stale_ms)
            && now_ms < self.retention_until_ms.max(extended_until_ms)
    }

    pub(super) fn decode(bytes: &[u8], key: &CacheKey) -> Option<Self> {
        let meta: Self = serde_json::from_slice(bytes).ok()?;
        let known_format = match meta.body_encoding {
            BodyEncoding::Identity => meta.format == META_FORMAT,
            BodyEncoding::Zstd => meta.format == META_FORMAT_ZSTD,
        };
        (known_format && meta.key == key.to_string()).then_some(meta)
    }

    /// Whether a scoped purge's `filter` selects this entry.
    pub(super) fn is_selected_by(&self, filter: &EntryFilter) -> bool {
        let tenant = self.tenant.as_deref().and_then(Tenant::from_id);
        filter.matches_parts(&EntryScope {
            namespace: self.namespace.as_deref(),
            model: self.model.as_deref(),
            tenant: tenant.as_ref(),
            created: from_unix_ms(self.created_ms),
        })
    }

    /// Whether `body` is the one this metadata describes.
    pub(super) fn describes(&self, body: &[u8]) -> bool {
        body.len() as u64 == self.body_len
            && blake3::hash(body).to_hex().as_str() == self.body_digest
    }

    /// The entry this metadata and `body` make, with the body decoded to
    /// check it (see [`Received`]); `None` when `body` is not the one
    /// described or does not decode.
    pub(super) fn restore(&self, body: Bytes) -> Option<Received> {
        if !self.describes(&body) {
            return None;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            );
        }
        let now = unix_ms(SystemTime::now());
        let ttl = Duration::from_millis(self.fresh_until_ms.saturating_sub(now));
        let mut received = CachedResponse::restore(
            &headers,
            self.body_encoding,
            &body,
            from_unix_ms(self.created_ms),
            ttl,
            TokenUsage {
                input: self.input_tokens,
                output: self.output_tokens,
                cache_read: self.cache_read_tokens,
                cache_creation: self.cache_creation_tokens,
            },
            self.model.as_deref().map(std::sync::Arc::from),
        )?;
        let entry = &mut received.entry;
        entry.tenant = self.tenant.as_deref().and_then(Tenant::from_id);
        entry.namespace = self.namespace.as_deref().map(std::sync::Arc::from);
        // The TTL as stored, from creation: an expired entry then knows how
        // long ago it expired (for stale-if-error).
        entry.ttl = Duration::from_millis(self.fresh_until_ms.saturating_sub(self.created_ms));
        Some(received)
    }
}
