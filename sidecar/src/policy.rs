//! Per-request cache controls read from request headers.

use std::time::Duration;

use http::HeaderMap;

/// Header that turns caching off for one request (`x-relaycache: off`) or
/// forces a call and a store (`x-relaycache: record`).
pub const HEADER_SWITCH: &str = "x-relaycache";
/// Header giving the TTL of what this request stores (`300` or `5m`).
pub const HEADER_TTL: &str = "x-relaycache-ttl";
/// Header that separates entries into namespaces (part of the key).
pub const HEADER_NAMESPACE: &str = "x-relaycache-namespace";

/// What one request allows the cache to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// `x-relaycache: off`: pass through untouched.
    pub bypass: bool,
    /// Look the answer up (false for `Cache-Control: no-cache`).
    pub lookup: bool,
    /// Store the answer (false for `no-store` or a zero TTL).
    pub store: bool,
    /// TTL of what is stored.
    pub ttl: Duration,
    /// Namespace, part of the key.
    pub namespace: Option<String>,
    /// `Cache-Control: only-if-cached`: a miss is answered 504 without
    /// calling the upstream.
    pub only_if_cached: bool,
    /// `x-relaycache: record`: call the upstream and store the answer,
    /// whatever is cached and whatever the replay setting says.
    pub record: bool,
    /// `Cache-Control: stale-if-error=N`: this request's own window.
    pub stale_if_error: Option<Duration>,
    /// The client's `accept-encoding` allows zstd: a hit stored compressed
    /// is sent as stored.
    pub accepts_zstd: bool,
}

impl RequestPolicy {
    /// Reads the controls from `headers`; `default_ttl` applies when none is
    /// asked for and `max_ttl` caps what is asked for.
    pub fn from_headers(headers: &HeaderMap, default_ttl: Duration, max_ttl: Duration) -> Self {
        let switch = |word: &str| {
            headers
                .get(HEADER_SWITCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(word))
        };
        let mut policy = Self {
            bypass: switch("off"),
            only_if_cached: false,
            record: switch("record"),
            stale_if_error: None,
            accepts_zstd: crate::compression::accepts_zstd(headers),
            lookup: true,
            store: true,
            ttl: default_ttl,
            namespace: headers
                .get(HEADER_NAMESPACE)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from),
        };
        for directive in crate::headers::list_items(headers, http::header::CACHE_CONTROL) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            match (name.to_ascii_lowercase().as_str(), arg) {
                ("no-cache", _) => policy.lookup = false,
                ("no-store", _) => policy.store = false,
                ("only-if-cached", _) => policy.only_if_cached = true,
                ("stale-if-error", Some(seconds)) => {
                    if let Ok(seconds) = seconds.parse::<u64>() {
                        policy.stale_if_error = Some(Duration::from_secs(seconds));
                    }
                }
                ("max-age", Some(seconds)) => {
                    if let Ok(seconds) = seconds.parse::<u64>() {
                        policy.ttl = Duration::from_secs(seconds);
                    }
                }
                _ => {}
            }
        }
        if let Some(ttl) = headers
            .get(HEADER_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ttl)
        {
            policy.ttl = ttl;
        }
        policy.ttl = policy.ttl.min(max_ttl);
        if policy.record {
            // Recording is a refresh that must land.
            policy.lookup = false;
            policy.store = true;
            policy.only_if_cached = false;
        }
        if policy.ttl.is_zero() {
            policy.store = false;
        }
        policy
    }
}

/// `300` (seconds) or a duration with units (`5m`, `1h30m`).
fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86400);

    fn policy(pairs: &[(&'static str, &'static str)]) -> RequestPolicy {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, v.parse().unwrap());
        }
        RequestPolicy::from_headers(&headers, HOUR, DAY)
    }

    #[test]
    fn only_if_cached_and_record() {
        let p = policy(&[("cache-control", "max-age=60, only-if-cached")]);
        assert!(p.only_if_cached && p.lookup && !p.record);
        assert_eq!(p.ttl, Duration::from_secs(60));
        // Recording calls and stores, whatever else the request says.
        let p = policy(&[
            ("x-relaycache", "Record"),
            ("cache-control", "only-if-cached, no-store"),
        ]);
        assert!(p.record && !p.lookup && p.store && !p.only_if_cached && !p.bypass);
    }

    #[test]
    fn defaults() {
        let p = policy(&[]);
        assert!(!p.bypass && p.lookup && p.store);
        assert_eq!(p.ttl, HOUR);
        assert_eq!(p.namespace, None);
    }

    #[test]
    fn cache_control_directives() {
        let p = policy(&[("cache-control", "no-cache, max-age=60")]);
        assert!(!p.lookup && p.store);
        assert_eq!(p.ttl, Duration::from_secs(60));
        assert!(!policy(&[("cache-control", "No-Store")]).store);
        assert!(!policy(&[("cache-control", "max-age=0")]).store);
    }

    #[test]
    fn relaycache_headers() {
        assert!(policy(&[("x-relaycache", "OFF")]).bypass);
        assert_eq!(
            policy(&[("x-relaycache-ttl", "5m")]).ttl,
            Duration::from_secs(300)
        );
        assert_eq!(
            policy(&[("x-relaycache-ttl", "90")]).ttl,
            Duration::from_secs(90)
        );
        assert_eq!(
            policy(&[("x-relaycache-ttl", "90d")]).ttl,
            DAY,
            "capped at max_ttl"
        );
        assert_eq!(
            policy(&[("x-relaycache-ttl", "soon")]).ttl,
            HOUR,
            "unparsable is ignored"
        );
        assert_eq!(
            policy(&[("x-relaycache-namespace", " eval-7 ")])
                .namespace
                .as_deref(),
            Some("eval-7")
        );
    }
}
