//! A stored answer, and what is learned from an answer when it is stored:
//! whether it is complete and how many tokens it cost.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// Tokens an answer cost, from its `usage`; a hit saves them again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens (`input_tokens` / `prompt_tokens`).
    pub input: u64,
    /// Completion tokens (`output_tokens` / `completion_tokens`).
    pub output: u64,
}

/// A complete 200 answer, ready to be served again.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    /// Response headers worth replaying (see [`stored_headers`]).
    pub headers: HeaderMap,
    /// The body exactly as the upstream sent it.
    pub body: Bytes,
    /// When the upstream answered.
    pub created: SystemTime,
    /// How long it may be served.
    pub ttl: Duration,
    /// Tokens the answer cost.
    pub usage: TokenUsage,
}

/// Fixed bookkeeping per entry counted against the memory budget, so that
/// many tiny entries cannot exceed it.
const ENTRY_OVERHEAD: usize = 160;

impl CachedResponse {
    /// Builds an entry, copying `body` into an exact-size buffer so that a
    /// growable read buffer's spare capacity is not kept alive in the cache.
    pub fn new(headers: HeaderMap, body: &[u8], ttl: Duration) -> Self {
        let usage = if is_event_stream(&headers) {
            sse_usage(body)
        } else {
            json_usage(body)
        };
        Self {
            headers,
            body: Bytes::copy_from_slice(body),
            created: SystemTime::now(),
            ttl,
            usage,
        }
    }

    /// Bytes this entry costs in memory, for the cache's weigher.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }

    /// Whole seconds since the upstream answered (the `age` header).
    pub fn age_secs(&self) -> u64 {
        self.created.elapsed().map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Whether a recorded SSE body ends with its provider's terminal event
/// (Anthropic `message_stop`, OpenAI chat `[DONE]`, Responses
/// `response.completed`). A stream that ended cleanly on the wire but
/// without one broke off upstream and must not be stored.
pub fn sse_is_complete(body: &[u8]) -> bool {
    let tail_start = body.len().saturating_sub(4096);
    let tail = String::from_utf8_lossy(&body[tail_start..]);
    tail.lines().any(|line| {
        let line = line.trim();
        line == "event: message_stop"
            || line == "data: [DONE]"
            || line == "event: response.completed"
    })
}

/// Response headers that are not replayed from the cache: per-connection,
/// per-response or per-moment ones.
fn is_unstorable_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    crate::headers::is_hop_by_hop(name)
        || matches!(
            name,
            "content-length" | "date" | "set-cookie" | "age" | "retry-after" | "server"
        )
        || name.contains("ratelimit")
        || name.starts_with("x-relaycache")
}

/// The subset of an upstream response's headers kept with an entry.
pub fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_unstorable_header(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Whether the upstream forbids storing this response.
pub fn upstream_forbids_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
        })
}

fn usage_of(value: &Value) -> TokenUsage {
    let number = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| value.get(*n).and_then(Value::as_u64))
            .sum::<u64>()
    };
    TokenUsage {
        input: number(&["input_tokens", "prompt_tokens"]),
        output: number(&["output_tokens", "completion_tokens"]),
    }
}

fn json_usage(body: &[u8]) -> TokenUsage {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("usage").map(usage_of))
        .unwrap_or_default()
}

/// Tokens of a streamed answer: Anthropic reports input in `message_start`
/// and the running output in `message_delta`; OpenAI in a final chunk.
fn sse_usage(body: &[u8]) -> TokenUsage {
    let text = String::from_utf8_lossy(body);
    let mut usage = TokenUsage::default();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        let found = event
            .get("usage")
            .or_else(|| event.pointer("/message/usage"))
            .or_else(|| event.pointer("/response/usage"))
            .map(usage_of);
        if let Some(found) = found {
            usage.input = usage.input.max(found.input);
            usage.output = usage.output.max(found.output);
        }
    }
    usage
}

/// Adds the answer headers of a cache hit.
pub fn hit_headers(entry: &CachedResponse, tier: &'static str, key: &str) -> HeaderMap {
    let mut headers = entry.headers.clone();
    headers.insert(crate::headers::STATUS, HeaderValue::from_static("hit"));
    headers.insert(crate::headers::TIER, HeaderValue::from_static(tier));
    if let Ok(value) = HeaderValue::from_str(key) {
        headers.insert(crate::headers::KEY, value);
    }
    headers.insert(http::header::AGE, HeaderValue::from(entry.age_secs()));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_and_openai_usage() {
        let a = json_usage(br#"{"usage":{"input_tokens":12,"output_tokens":34}}"#);
        assert_eq!(
            a,
            TokenUsage {
                input: 12,
                output: 34
            }
        );
        let o =
            json_usage(br#"{"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#);
        assert_eq!(
            o,
            TokenUsage {
                input: 5,
                output: 6
            }
        );
        assert_eq!(json_usage(b"not json"), TokenUsage::default());
    }

    #[test]
    fn streamed_usage() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert_eq!(
            sse_usage(body),
            TokenUsage {
                input: 25,
                output: 15
            }
        );
        assert!(sse_is_complete(body));
        assert!(!sse_is_complete(&body[..body.len() - 50]));
        assert!(sse_is_complete(b"data: {}\n\ndata: [DONE]\n\n"));
    }

    #[test]
    fn volatile_headers_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("date", "x".parse().unwrap());
        h.insert("connection", "close".parse().unwrap());
        h.insert("anthropic-ratelimit-tokens-remaining", "9".parse().unwrap());
        h.insert("request-id", "req_1".parse().unwrap());
        let kept = stored_headers(&h);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key("content-type") && kept.contains_key("request-id"));
    }

    #[test]
    fn entry_body_is_exact_size_and_weighed() {
        let mut buf = bytes::BytesMut::with_capacity(1 << 16);
        buf.extend_from_slice(&[b'a'; 100]);
        let entry = CachedResponse::new(HeaderMap::new(), &buf, Duration::from_secs(1));
        assert_eq!(entry.body.len(), 100);
        assert!(entry.weight() as usize >= 100 + ENTRY_OVERHEAD);
    }
}
