//! Entries and versions as protocol messages, and back. Everything that
//! arrives is checked: a malformed entry is refused, never stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::proto;
use crate::coalesce::{self, UpstreamFailure};
use crate::compression::BodyEncoding;
use crate::entry::{CachedResponse, Received};
use crate::key::{CacheKey, KeyOrigin, Tenant};
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
    let (encoding, stored_body) = entry.stored_body();
    proto::Entry {
        key: key.0.to_vec(),
        header_block: entry.header_block().to_vec(),
        body: stored_body.to_vec(),
        body_encoding: encoding_to_wire(encoding).into(),
        created_ms: unix_ms(entry.created),
        ttl_ms: u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX),
        input_tokens: entry.usage.input,
        output_tokens: entry.usage.output,
        version: Some(version_to_wire(entry.version)),
        tenant: entry
            .tenant
            .as_ref()
            .map(|tenant| tenant.as_bytes().to_vec())
            .unwrap_or_default(),
        has_namespace: entry.namespace.is_some(),
        namespace: entry.namespace.as_deref().unwrap_or_default().to_string(),
    }
}

fn encoding_to_wire(encoding: BodyEncoding) -> proto::BodyEncoding {
    match encoding {
        BodyEncoding::Identity => proto::BodyEncoding::Identity,
        BodyEncoding::Zstd => proto::BodyEncoding::Zstd,
    }
}

fn encoding_from_wire(encoding: proto::BodyEncoding) -> BodyEncoding {
    match encoding {
        proto::BodyEncoding::Identity => BodyEncoding::Identity,
        proto::BodyEncoding::Zstd => BodyEncoding::Zstd,
    }
}

/// A request's key origin as sent.
pub fn origin_to_wire(origin: &KeyOrigin) -> proto::Origin {
    proto::Origin {
        method: origin.method.clone(),
        path: origin.path.clone(),
        has_namespace: origin.namespace.is_some(),
        namespace: origin.namespace.clone().unwrap_or_default(),
        headers: headers_to_wire(&origin.headers),
        body: origin.body.to_vec(),
    }
}

/// Headers as sent.
pub fn headers_to_wire(headers: &http::HeaderMap) -> Vec<proto::Header> {
    headers
        .iter()
        .map(|(name, value)| proto::Header {
            name: name.as_str().to_string(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// Headers as received; `None` when one is not a valid header.
pub fn headers_from_wire(headers: Vec<proto::Header>) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for header in headers {
        map.append(
            http::HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            http::HeaderValue::from_bytes(&header.value).ok()?,
        );
    }
    Some(map)
}

/// A key origin as received; `None` when a header is not a valid header.
pub fn origin_from_wire(origin: proto::Origin) -> Option<KeyOrigin> {
    Some(KeyOrigin {
        headers: headers_from_wire(origin.headers)?,
        method: origin.method,
        path: origin.path,
        namespace: origin.has_namespace.then_some(origin.namespace),
        body: origin.body.into(),
    })
}

/// A key as received.
pub fn key_from_wire(bytes: &[u8]) -> Option<CacheKey> {
    Some(CacheKey(bytes.try_into().ok()?))
}

/// An entry as received; `None` when it is malformed or no longer fresh.
pub fn entry_from_wire(entry: &proto::Entry) -> Option<(CacheKey, CachedResponse)> {
    received_from_wire(entry).map(|(key, received)| (key, received.entry))
}

/// [`entry_from_wire`], with the body it decoded to check it (see
/// [`Received`]): for the hit that asked for the entry.
pub fn received_from_wire(entry: &proto::Entry) -> Option<(CacheKey, Received)> {
    let (key, received) = receive(entry)?;
    received.entry.is_fresh().then_some((key, received))
}

/// An entry as received for stale-if-error: fresh, or expired no longer
/// ago than `window`; `None` when malformed or older.
pub fn entry_from_wire_within(
    entry: &proto::Entry,
    window: Duration,
) -> Option<(CacheKey, CachedResponse)> {
    let (key, Received { entry, .. }) = receive(entry)?;
    (entry.is_fresh() || entry.is_stale_within(window)).then_some((key, entry))
}

fn receive(entry: &proto::Entry) -> Option<(CacheKey, Received)> {
    let key = key_from_wire(&entry.key)?;
    let created = UNIX_EPOCH.checked_add(Duration::from_millis(entry.created_ms))?;
    let encoding = proto::BodyEncoding::try_from(entry.body_encoding).ok()?;
    let mut received = CachedResponse::received(
        &entry.header_block,
        encoding_from_wire(encoding),
        &entry.body,
        created,
        Duration::from_millis(entry.ttl_ms),
        version_from_wire(entry.version.as_ref()),
    )?;
    received.entry.tenant = Tenant::from_bytes(&entry.tenant);
    received.entry.namespace = entry
        .has_namespace
        .then(|| std::sync::Arc::from(entry.namespace.as_str()));
    Some((key, received))
}

/// A failed upstream answer as sent to the askers waiting on a flight.
pub fn failure_to_wire(failure: &UpstreamFailure) -> proto::UpstreamFailure {
    proto::UpstreamFailure {
        status: u32::from(failure.status.as_u16()),
        headers: headers_to_wire(&failure.headers),
        body: failure.body.to_vec(),
    }
}

/// A failed upstream answer as received: only an error status, only the
/// headers a leader may share, a body within the size a leader records.
/// `None` when it is not one.
pub fn failure_from_wire(failure: proto::UpstreamFailure) -> Option<UpstreamFailure> {
    let status = http::StatusCode::from_u16(u16::try_from(failure.status).ok()?).ok()?;
    if !coalesce::is_shared_failure(status)
        || failure.body.len() > coalesce::MAX_SHARED_FAILURE_BYTES
    {
        return None;
    }
    let mut headers = http::HeaderMap::new();
    for header in failure.headers {
        let Some(name) = coalesce::SHARED_FAILURE_HEADERS
            .iter()
            .find(|shared| header.name.eq_ignore_ascii_case(shared))
        else {
            continue;
        };
        headers.append(*name, http::HeaderValue::from_bytes(&header.value).ok()?);
    }
    Some(UpstreamFailure {
        status,
        headers,
        body: failure.body.into(),
    })
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

    #[test]
    fn a_compressed_entry_travels_as_stored_and_a_bad_frame_is_refused() {
        let prose = "the cache answered before the provider did, and again. ".repeat(40);
        let body = serde_json::to_vec(&serde_json::json!({
            "content": [{"type": "text", "text": prose}],
            "usage": {"input_tokens": 3, "output_tokens": 400},
        }))
        .unwrap();
        let compression =
            crate::compression::Compression::from_config(&Default::default()).unwrap();
        let entry = CachedResponse::new(&HeaderMap::new(), &body, Duration::from_secs(60))
            .compressed(Some(&compression));
        let key = CacheKey([8; 32]);
        let sent = entry_to_wire(&key, &entry);
        assert_eq!(sent.body_encoding, proto::BodyEncoding::Zstd as i32);
        assert!(
            sent.body.len() * 4 < body.len(),
            "{} bytes on the wire",
            sent.body.len()
        );
        let (_, got) = entry_from_wire(&sent).expect("decodes");
        assert_eq!(got.body(), body);
        assert_eq!(got.usage.output, 400, "facts read from the decoded body");

        let mut undeclared = sent.clone();
        undeclared.body_encoding = 0;
        let (_, taken_raw) = entry_from_wire(&undeclared).expect("identity bytes are a body");
        assert_ne!(
            taken_raw.body(),
            body,
            "taken as the bytes it is, never decoded"
        );
        let mut unknown = sent.clone();
        unknown.body_encoding = 7;
        assert!(
            entry_from_wire(&unknown).is_none(),
            "an encoding this member does not know"
        );
        let mut cut = sent;
        cut.body.truncate(cut.body.len() / 2);
        assert!(entry_from_wire(&cut).is_none(), "a cut frame");
    }

    #[test]
    fn a_shared_failure_from_the_wire_is_only_a_failure() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let failure = UpstreamFailure {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: bytes::Bytes::from_static(b"{\"type\":\"error\"}"),
        };
        let mut sent = failure_to_wire(&failure);
        sent.headers.push(proto::Header {
            name: "set-cookie".into(),
            value: b"session=stolen".to_vec(),
        });
        let got = failure_from_wire(sent.clone()).expect("a 429 is a failure");
        assert_eq!(got.status, 429);
        assert_eq!(got.headers.get("retry-after").unwrap(), "7");
        assert!(
            got.headers.get("set-cookie").is_none(),
            "only shareable headers pass"
        );
        assert_eq!(got.body, failure.body);

        let mut ok = sent.clone();
        ok.status = 200;
        assert!(
            failure_from_wire(ok).is_none(),
            "a 200 is no failure to hand on"
        );
        let mut bad_request = sent.clone();
        bad_request.status = 400;
        assert!(
            failure_from_wire(bad_request).is_none(),
            "a 400 depends on the request"
        );
        let mut huge = sent;
        huge.body = vec![b'x'; coalesce::MAX_SHARED_FAILURE_BYTES + 1];
        assert!(failure_from_wire(huge).is_none());
    }
}
