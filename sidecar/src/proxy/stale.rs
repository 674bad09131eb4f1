//! Stale-if-error: an expired entry as the answer when the upstream
//! fails with a status that allows it.

use std::time::Duration;

use http::{Response, StatusCode};

use super::{CacheLayer, Proxy};
use crate::access_log::AccessLog;
use crate::body::ProxyBody;
use crate::coalesce::UpstreamFailure;
use crate::headers::{self, CacheStatus};
use crate::key::CacheKey;
use crate::policy::RequestPolicy;
use crate::tier::TierKind;

impl Proxy {
    /// An entry that expired within the stale-if-error window, as the
    /// answer to a request whose upstream call failed with `failure`:
    /// only for 429, 500, 502, 503, 504 and 529 (timeouts and unreachable
    /// upstreams are 504 and 502 here), never for a `no-cache` request.
    pub(super) async fn stale_answer(
        &self,
        failure: &UpstreamFailure,
        key: &CacheKey,
        policy: &RequestPolicy,
        reason: String,
    ) -> Option<StaleAnswer> {
        if !is_stale_trigger(failure.status) {
            return None;
        }
        let window = stale_window(policy, self.cache.as_ref())?;
        let (entry, tier) = self.tiers.stale(key, window).await?;
        tracing::warn!(%key, tier = tier.as_str(), age_secs = entry.age_secs(), %reason, "served a stale answer: the upstream failed");
        let mut response = self.stored_answer(&entry, tier, key, None, policy);
        response
            .headers_mut()
            .insert(headers::STATUS, CacheStatus::Stale.header_value());
        response.extensions_mut().insert(StaleServed {
            tier,
            reason: reason.clone(),
        });
        Some(StaleAnswer { response })
    }
}

/// Upstream answers that stale-if-error may answer instead of (RFC 5861
/// names the 5xx; 429 and Anthropic's 529 "overloaded" are the same kind
/// of trouble).
pub(super) fn is_stale_trigger(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504 | 529)
}

/// The stale-if-error window of a request: its own `stale-if-error=N`, else
/// `cache.stale_if_error`; `None` when off or when the request said
/// `no-cache`.
pub(super) fn stale_window(policy: &RequestPolicy, cache: Option<&CacheLayer>) -> Option<Duration> {
    if !policy.lookup {
        return None;
    }
    policy
        .stale_if_error
        .or_else(|| cache.map(|c| c.settings.stale_if_error))
        .filter(|window| !window.is_zero())
}

/// Marks a response answered by a stale entry, for the access log.
#[derive(Clone)]
pub(super) struct StaleServed {
    tier: TierKind,
    reason: String,
}

/// A stale entry's response.
pub(super) struct StaleAnswer {
    pub(super) response: Response<ProxyBody>,
}

impl StaleAnswer {
    /// The response, with the log told what happened.
    pub(super) fn logged(self, log: &mut AccessLog) -> Response<ProxyBody> {
        note_stale(&self.response, log);
        self.response
    }
}

/// Copies a stale answer's facts into the access log.
pub(super) fn note_stale(response: &Response<ProxyBody>, log: &mut AccessLog) {
    if let Some(stale) = response.extensions().get::<StaleServed>() {
        log.cache_status = Some(CacheStatus::Stale);
        log.tier = Some(stale.tier);
        log.upstream_error = Some(stale.reason.clone());
    }
}
