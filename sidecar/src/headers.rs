//! Header names RelayCache adds, and the hop-by-hop rules of a proxy.

use http::HeaderMap;

/// `hit | miss | bypass | refresh | stale`.
pub const STATUS: &str = "x-relaycache-status";
/// `memory` (later `peer`, `reserve`) on hits.
pub const TIER: &str = "x-relaycache-tier";
/// The entry's key, usable with the purge endpoint.
pub const KEY: &str = "x-relaycache-key";
/// On hits of a priced model: what the answer would have cost, in US
/// dollars (see `cache.prices`).
pub const SAVED_USD: &str = "x-relaycache-saved-usd";

/// Adds [`SAVED_USD`] to a hit's headers, to the millionth of a dollar.
pub fn tag_saved(headers: &mut HeaderMap, dollars: f64) {
    if let Ok(value) = http::HeaderValue::from_str(&format!("{dollars:.6}")) {
        headers.insert(SAVED_USD, value);
    }
}

/// What the cache did with a request, sent in `x-relaycache-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Answered from a tier.
    Hit,
    /// Not found; asked the upstream.
    Miss,
    /// Not cacheable or caching turned off for this request.
    Bypass,
    /// `Cache-Control: no-cache`: asked the upstream and replaced the entry.
    Refresh,
    /// The upstream failed, and an entry that expired within the
    /// stale-if-error window answered instead.
    Stale,
}

impl CacheStatus {
    /// Every status, in declaration order.
    pub const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Refresh,
        CacheStatus::Stale,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Refresh => "refresh",
            CacheStatus::Stale => "stale",
        }
    }

    /// The header value, ready to insert.
    pub fn header_value(self) -> http::HeaderValue {
        http::HeaderValue::from_static(self.as_str())
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus `proxy-*` credentials meant for us, never for the upstream.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = list_items(headers, http::header::CONNECTION)
        .map(str::to_ascii_lowercase)
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    let hop: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// The items of a comma-separated list header (`Connection`,
/// `Cache-Control`, `Accept-Encoding`, …) over all its lines, trimmed;
/// empty items and values that are not text are left out.
pub fn list_items(
    headers: &HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Which tier: in `x-relaycache-tier`, the access log, metrics and `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierKind {
    /// This process's memory (L1).
    Memory,
    /// The cache cluster's replicas (L2, mode `ha`).
    Peer,
    /// The long-lived tier in object storage (L3).
    Reserve,
}

impl TierKind {
    /// Every tier, nearest first.
    pub const ALL: [TierKind; 3] = [TierKind::Memory, TierKind::Peer, TierKind::Reserve];

    /// The name headers, logs and metric labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Memory => "memory",
            TierKind::Peer => "peer",
            TierKind::Reserve => "reserve",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-api-key"));
    }
}
