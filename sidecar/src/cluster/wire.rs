//! Entries and versions as protocol messages, and back. Everything that
//! arrives is checked: a malformed entry is refused, never stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::proto;
use crate::entry::{CachedResponse, TokenUsage};
use crate::key::{CacheKey, KeyOrigin};
use crate::version::Version;

/// Milliseconds since the Unix epoch, as the wire carries times.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A version as sent.
pub fn version_to_wire(version: Version) -> proto::Version {
    proto::Version {
        wall_ms: version.wall_ms,
        counter: version.counter,
        origin: version.origin,
    }
}

/// A version as received (absent: the oldest possible).
pub fn version_from_wire(version: Option<&proto::Version>) -> Version {
    version.map_or_else(Version::default, |v| Version {
        wall_ms: v.wall_ms,
        counter: v.counter,
        origin: v.origin,
    })
}

/// An entry as sent.
pub fn entry_to_wire(key: &CacheKey, entry: &CachedResponse) -> proto::Entry {
    proto::Entry {
        key: key.0.to_vec(),
        header_block: entry.header_block().to_vec(),
        body: entry.body().to_vec(),
        created_ms: unix_ms(entry.created),
        ttl_ms: u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX),
        input_tokens: entry.usage.input,
        output_tokens: entry.usage.output,
        version: Some(version_to_wire(entry.version)),
    }
}

/// A request's key origin as sent.
pub fn origin_to_wire(origin: &KeyOrigin) -> proto::Origin {
    proto::Origin {
        method: origin.method.clone(),
        path: origin.path.clone(),
        has_namespace: origin.namespace.is_some(),
        namespace: origin.namespace.clone().unwrap_or_default(),
        headers: origin
            .headers
            .iter()
            .map(|(name, value)| proto::Header {
                name: name.as_str().to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect(),
        body: origin.body.to_vec(),
    }
}

/// A key origin as received; `None` when a header is not a valid header.
pub fn origin_from_wire(origin: proto::Origin) -> Option<KeyOrigin> {
    let mut headers = http::HeaderMap::new();
    for header in origin.headers {
        headers.append(
            http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            http::HeaderValue::from_bytes(&header.value).ok()?,
        );
    }
    Some(KeyOrigin {
        method: origin.method,
        path: origin.path,
        namespace: origin.has_namespace.then_some(origin.namespace),
        headers,
        body: origin.body.into(),
    })
}

/// A key as received.
pub fn key_from_wire(bytes: &[u8]) -> Option<CacheKey> {
    Some(CacheKey(bytes.try_into().ok()?))
}

/// An entry as received; `None` when it is malformed or no longer fresh.
pub fn entry_from_wire(entry: &proto::Entry) -> Option<(CacheKey, CachedResponse)> {
    let (key, restored) = restore(entry)?;
    restored.is_fresh().then_some((key, restored))
}

/// An entry as received for stale-if-error: fresh, or expired no longer
/// ago than `window`; `None` when malformed or older.
pub fn entry_from_wire_within(
    entry: &proto::Entry,
    window: Duration,
) -> Option<(CacheKey, CachedResponse)> {
    let (key, restored) = restore(entry)?;
    (restored.is_fresh() || restored.is_stale_within(window)).then_some((key, restored))
}

fn restore(entry: &proto::Entry) -> Option<(CacheKey, CachedResponse)> {
    let key = key_from_wire(&entry.key)?;
    let created = UNIX_EPOCH.checked_add(Duration::from_millis(entry.created_ms))?;
    let restored = CachedResponse::from_parts(
        &entry.header_block,
        &entry.body,
        created,
        Duration::from_millis(entry.ttl_ms),
        TokenUsage {
            input: entry.input_tokens,
            output: entry.output_tokens,
        },
        version_from_wire(entry.version.as_ref()),
    )?;
    Some((key, restored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn entries_survive_the_wire_and_garbage_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let mut entry = CachedResponse::new(&headers, b"{\"ok\":true}", Duration::from_secs(60));
        entry.version = Version {
            wall_ms: 5,
            counter: 2,
            origin: 9,
        };
        let key = CacheKey([7; 32]);
        let sent = entry_to_wire(&key, &entry);
        let (got_key, got) = entry_from_wire(&sent).expect("a fresh entry decodes");
        assert_eq!(got_key, key);
        assert_eq!(got.body(), entry.body());
        assert_eq!(got.headers(), entry.headers());
        assert_eq!(got.version, entry.version);

        let mut short_key = sent.clone();
        short_key.key.pop();
        assert!(entry_from_wire(&short_key).is_none());
        let mut broken_headers = sent.clone();
        broken_headers.header_block.truncate(3);
        assert!(entry_from_wire(&broken_headers).is_none());
        let mut expired = sent;
        expired.created_ms = 1_000;
        assert!(entry_from_wire(&expired).is_none());
    }
}
