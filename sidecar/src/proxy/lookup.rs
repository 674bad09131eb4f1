//! Answering from the cache: memory first, then the flight of an
//! identical miss (here or at the key's owner), then the tiers below
//! memory; hits are counted and served here.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use super::fetch::{failure_response, tag_upstream_answer};
use super::{CacheLayer, Keyed, Proxy, MAX_FOLLOW_ATTEMPTS};
use crate::access_log::AccessLog;
use crate::body::{boxed, ProxyBody};
use crate::cluster::flight::Claimed;
use crate::cluster::replication::OwnerRead;
use crate::coalesce::{Join, Landing, Leader, UpstreamFailure};
use crate::entry::{self, CachedResponse};
use crate::headers::{self, CacheStatus};
use crate::key::CacheKey;
use crate::live::LiveAnswer;
use crate::policy::RequestPolicy;
use crate::reply;
use crate::tier::TierKind;
use crate::tiers::FoundBelow;
use crate::upstream::Upstream;

impl Proxy {
    pub(super) async fn lookup_or_fetch(
        self: &Arc<Self>,
        cache: &CacheLayer,
        keyed: Keyed,
        upstream: &Arc<Upstream>,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        if keyed.policy.only_if_cached {
            return self.only_from_cache(cache, keyed, log).await;
        }
        let status = if keyed.policy.lookup {
            CacheStatus::Miss
        } else {
            CacheStatus::Refresh
        };
        let coalesce = &cache.settings.coalesce;
        for _ in 0..MAX_FOLLOW_ATTEMPTS {
            if keyed.policy.lookup {
                if let Some(entry) = self.tiers.in_memory(&keyed.key) {
                    cache.aliases.insert(keyed.raw_key, keyed.key);
                    return self.serve_keyed_hit(&entry, &keyed, TierKind::Memory, log);
                }
            }
            if !coalesce.enabled {
                break;
            }
            match cache.flights.join(keyed.key, coalesce.max_waiters) {
                Join::Lead(leader) => {
                    return self
                        .fill(cache, keyed, upstream, status, Some(leader), log)
                        .await
                }
                Join::Alone => break,
                Join::Follow(follower) => {
                    self.metrics.proxy.coalesced_waits.inc();
                    log.coalesced = true;
                    match follower.wait(coalesce.wait_timeout).await {
                        Landing::Answer(entry) => {
                            return self.serve_keyed_hit(&entry, &keyed, TierKind::Memory, log)
                        }
                        Landing::Failed(failure) => {
                            return self
                                .answer_leaders_failure(&failure, &keyed, status, log)
                                .await
                        }
                        Landing::Live(live) => {
                            return self.serve_live(&live, &keyed.key, TierKind::Memory, log)
                        }
                        Landing::Nothing => continue,
                        Landing::TimedOut => break,
                    }
                }
            }
        }
        self.fill(cache, keyed, upstream, status, None, log).await
    }

    /// `only-if-cached` (or `cache.replay: strict`): an answer from any
    /// tier, or a 504 that never reaches the upstream. No coalescing: there
    /// is no call to share.
    pub(super) async fn only_from_cache(
        &self,
        cache: &CacheLayer,
        keyed: Keyed,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        if keyed.policy.lookup {
            if let Some(entry) = self.tiers.in_memory(&keyed.key) {
                return self.serve_keyed_hit(&entry, &keyed, TierKind::Memory, log);
            }
            let origin = || cache.origin_for_cluster(&self.tiers, &keyed);
            let below = self
                .tiers
                .below_memory(&keyed.key, origin, OwnerRead::Asked);
            if let Some(found) = below.await {
                return self.serve_found_below(found, &keyed, None, log);
            }
        }
        log.cache_status = Some(CacheStatus::Miss);
        log.bypass_reason = Some("only-if-cached and not in the cache");
        let mut response = reply::error(
            keyed.parts.uri.path(),
            StatusCode::GATEWAY_TIMEOUT,
            "relaycache: this answer is not in the cache, and the request may only be answered from it (Cache-Control: only-if-cached, or cache.replay: strict); record it by sending the request once without them, or with the header x-relaycache: record",
        );
        let headers = response.headers_mut();
        tag_upstream_answer(headers, CacheStatus::Miss, &keyed.key);
        // The SDKs retry 5xx answers; retrying cannot fill the cache.
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
        response
    }

    /// Below memory: the cluster, the reserve, then the upstream. A hit
    /// below memory is promoted to memory (a reserve hit to the cluster
    /// too) and handed to the followers. A leader in a cluster claims the
    /// key's flight at its primary owner first: one call answers whether
    /// the owner holds the key, whether another process is fetching it,
    /// and whether the other replicas need asking at all.
    pub(super) async fn fill(
        self: &Arc<Self>,
        cache: &CacheLayer,
        keyed: Keyed,
        upstream: &Arc<Upstream>,
        status: CacheStatus,
        leader: Option<Leader>,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        if !keyed.policy.lookup {
            return self.fetch(keyed, upstream, status, leader, log).await;
        }
        let mut leader = match leader {
            Some(leader) if self.tiers.has_cluster() => leader,
            leader => {
                let origin = || cache.origin_for_cluster(&self.tiers, &keyed);
                let below = self
                    .tiers
                    .below_memory(&keyed.key, origin, OwnerRead::Asked);
                return match below.await {
                    Some(found) => self.serve_found_below(found, &keyed, leader, log),
                    None => self.fetch(keyed, upstream, status, leader, log).await,
                };
            }
        };
        // This process's askers wait on its leader; the leader waits on the
        // key's owner, so the cluster makes one upstream call.
        let origin = cache.origin_for_cluster(&self.tiers, &keyed);
        let owner_read = match self.tiers.claim(&keyed.key, origin.as_ref()).await {
            Claimed::Answer {
                entry,
                waited,
                decoded,
            } => {
                leader.land(Some(Arc::clone(&entry)));
                log.coalesced = waited;
                let key = &keyed.key;
                return self.serve_hit(&entry, key, TierKind::Peer, decoded, &keyed.policy, log);
            }
            Claimed::Failed(failure) => {
                leader.fail(Arc::clone(&failure));
                log.coalesced = true;
                return self
                    .answer_leaders_failure(&failure, &keyed, status, log)
                    .await;
            }
            Claimed::Live { live, piped } => {
                leader.go_live(Arc::clone(&live));
                // The local flight ends with the owner's stream.
                tokio::spawn(async move {
                    let _ = piped.await;
                    drop(leader);
                });
                log.coalesced = true;
                return self.serve_live(&live, &keyed.key, TierKind::Peer, log);
            }
            Claimed::Lead(share) => {
                let tiers = self.tiers.clone();
                let key = keyed.key;
                leader.on_release(Box::new(move |failure| tiers.release(key, failure)));
                OwnerRead::Led(share)
            }
            Claimed::Alone(reason) => {
                tracing::debug!(key = %keyed.key, reason, "calling the upstream without the cluster's flight");
                OwnerRead::Asked
            }
        };
        let below = self
            .tiers
            .below_memory(&keyed.key, || origin.clone(), owner_read);
        match below.await {
            Some(found) => self.serve_found_below(found, &keyed, Some(leader), log),
            None => self.fetch(keyed, upstream, status, Some(leader), log).await,
        }
    }

    /// A hit below memory: handed to the followers (a leader's), then
    /// served.
    fn serve_found_below(
        &self,
        found: FoundBelow,
        keyed: &Keyed,
        leader: Option<Leader>,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        let FoundBelow {
            entry,
            tier,
            decoded,
        } = found;
        if let Some(leader) = leader {
            leader.land(Some(Arc::clone(&entry)));
        }
        log.reserve_used = tier == TierKind::Reserve;
        self.serve_hit(&entry, &keyed.key, tier, decoded, &keyed.policy, log)
    }

    /// The answer to a request whose flight's leader (here or elsewhere in
    /// the cluster) failed: a stale entry if stale-if-error allows one,
    /// else the same failure.
    pub(super) async fn answer_leaders_failure(
        &self,
        failure: &UpstreamFailure,
        keyed: &Keyed,
        status: CacheStatus,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.metrics.proxy.shared_failures.inc();
        let reason = format!("the upstream answered {}", failure.status);
        if let Some(stale) = self
            .stale_answer(failure, &keyed.key, &keyed.policy, reason)
            .await
        {
            return stale.logged(log);
        }
        log.cache_status = Some(status);
        failure_response(failure, status, &keyed.key)
    }

    /// Counts a hit from `tier` and tells the access log.
    pub(super) fn note_hit(&self, tier: TierKind, log: &mut AccessLog) {
        log.cache_status = Some(CacheStatus::Hit);
        log.tier = Some(tier);
        self.metrics.proxy.count_hit(tier);
    }

    /// [`Proxy::serve_hit`] for a keyed request.
    fn serve_keyed_hit(
        &self,
        entry: &CachedResponse,
        keyed: &Keyed,
        tier: TierKind,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.serve_hit(entry, &keyed.key, tier, None, &keyed.policy, log)
    }

    /// Counts a hit of `entry` from `tier` and answers with it; `decoded`:
    /// its body, when decoded already.
    pub(super) fn serve_hit(
        &self,
        entry: &CachedResponse,
        key: &CacheKey,
        tier: TierKind,
        decoded: Option<Bytes>,
        policy: &RequestPolicy,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.note_hit(tier, log);
        self.metrics
            .proxy
            .input_tokens_saved
            .inc_by(entry.usage.input);
        self.metrics
            .proxy
            .output_tokens_saved
            .inc_by(entry.usage.output);
        self.metrics
            .proxy
            .bytes_served_from_cache
            .inc_by(entry.body_len() as u64);
        let saved = self
            .metrics
            .savings
            .count_hit(entry.model.as_deref(), entry.usage);
        let mut response = self.stored_answer(entry, tier, key, decoded, policy);
        if let Some(dollars) = saved {
            headers::tag_saved(response.headers_mut(), dollars);
        }
        response
    }

    /// A follower's answer while its leader's streamed answer arrives: the
    /// events so far, then the live tail. Counted as a hit of `tier` (the
    /// leader here: memory; elsewhere in the cluster: peer); the tokens it
    /// saves are not counted, as they are known only at the stream's end.
    pub(super) fn serve_live(
        &self,
        live: &LiveAnswer,
        key: &CacheKey,
        tier: TierKind,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.note_hit(tier, log);
        let mut response = Response::new(boxed(live.follow()));
        let mut headers = live.headers().clone();
        // Age 0: the answer is arriving now.
        entry::tag_hit(&mut headers, tier, &key.to_string(), 0);
        *response.headers_mut() = headers;
        response
    }
}
