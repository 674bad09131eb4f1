//! The request path: route, read the body, key it, look it up, coalesce
//! identical misses, call the upstream, stream the answer back while
//! recording it, and store what is complete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::access_log::{AccessLog, LoggedBody};
use crate::body::{boxed, full, DeadlineBody, ProxyBody};
use crate::cluster::flight::Claimed;
use crate::coalesce::{
    is_shared_failure, Flights, Join, Landing, Leader, UpstreamFailure, MAX_SHARED_FAILURE_BYTES,
    SHARED_FAILURE_HEADERS,
};
use crate::config::{CacheConfig, Config, Mode, Replay};
use crate::entry::{self, CachedResponse, EntryRecorder};
use crate::headers::{self, CacheStatus};
use crate::key::{CacheKey, KeyBuilder, KeyOrigin, KeyParts, Tenant};
use crate::limits::{self, Admission, BufferPermit};
use crate::live::LiveAnswer;
use crate::metrics::Metrics;
use crate::policy::RequestPolicy;
use crate::recording::{Destination, RecordingBody};
use crate::reply;
use crate::tier::TierKind;
use crate::tiers::Tiers;
use crate::upstream::{Upstream, UpstreamError, Upstreams};

/// Times a follower starts over after leaders that had nothing to share.
const MAX_FOLLOW_ATTEMPTS: usize = 3;

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An upstream could not be set up.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// The caching part of the proxy; absent in `disabled` mode.
struct CacheLayer {
    settings: CacheConfig,
    keys: KeyBuilder,
    /// Shared with the cluster in mode `ha`: the owner of a key keeps the
    /// cluster's flight for it in the same registry.
    flights: Arc<Flights>,
    /// Raw-request key → key, recorded when a request hits, so that
    /// byte-identical repeats find their entry without parsing JSON.
    aliases: moka::sync::Cache<CacheKey, CacheKey>,
}

/// Memory budget per alias slot: one alias (~200 bytes) per 8 KiB of
/// `max_cost` keeps aliases within ~2.5% of the cache's own memory.
const ALIAS_BUDGET_BYTES: u64 = 8192;

impl CacheLayer {
    fn is_route(&self, path: &str) -> bool {
        self.settings.routes.iter().any(|r| r == path)
    }

    /// The request as the cluster's members derive its key, when this
    /// process is a cluster client (members need none).
    fn origin_for_cluster(&self, tiers: &Tiers, keyed: &Keyed) -> Option<KeyOrigin> {
        if !tiers.is_cluster_client() {
            return None;
        }
        Some(self.keys.origin(keyed.key_parts(), &keyed.body))
    }
}

/// The caching reverse proxy.
pub struct Proxy {
    upstreams: Upstreams,
    cache: Option<CacheLayer>,
    max_body_bytes: u64,
    client_body_timeout: Duration,
    tiers: Tiers,
    metrics: Arc<Metrics>,
    admission: Admission,
}

/// A cache route's request after its body was read and keyed.
struct Keyed {
    parts: Parts,
    body: Bytes,
    tenant: Tenant,
    key: CacheKey,
    raw_key: CacheKey,
    policy: RequestPolicy,
}

impl Keyed {
    /// What went into the key besides the body.
    fn key_parts(&self) -> KeyParts<'_> {
        key_parts(&self.parts, &self.policy, &self.tenant)
    }
}

/// What goes into a request's key besides the body.
fn key_parts<'a>(parts: &'a Parts, policy: &'a RequestPolicy, tenant: &'a Tenant) -> KeyParts<'a> {
    KeyParts {
        tenant,
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
        namespace: policy.namespace.as_deref(),
    }
}

impl Proxy {
    /// Builds the proxy from a validated configuration, over `tiers`.
    pub fn new(config: &Config, tiers: Tiers, metrics: Arc<Metrics>) -> Result<Self, ProxyError> {
        let caching = config.cache.mode != Mode::Disabled;
        let cache = caching.then(|| CacheLayer {
            settings: config.cache.clone(),
            keys: KeyBuilder::new(&config.cache.key, config.cache.isolation.clone()),
            flights: tiers
                .cluster()
                .map(|cluster| Arc::clone(cluster.flights()))
                .unwrap_or_default(),
            aliases: moka::sync::Cache::builder()
                .max_capacity((config.cache.memory.max_cost / ALIAS_BUDGET_BYTES).max(1024))
                .time_to_live(config.cache.max_ttl)
                .build(),
        });
        Ok(Self {
            upstreams: Upstreams::new(&config.upstreams)?,
            cache,
            max_body_bytes: config.server.max_body_bytes,
            client_body_timeout: config.server.client_body_timeout,
            tiers,
            metrics,
            admission: Admission::new(config.server.max_inflight, config.server.max_buffered_bytes),
        })
    }

    /// Handles one client request; never fails, errors become responses.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let mut log = AccessLog::new(request.method().clone(), request.uri().path());
        let slot = match self.admission.request() {
            Ok(slot) => slot,
            Err(limit) => {
                self.metrics.count_overload(limit);
                log.bypass_reason = Some(limit.as_str());
                let response = limits::overloaded(request.uri().path(), limit);
                log.status = response.status();
                return response.map(|body| boxed(LoggedBody::new(body, log, None)));
            }
        };
        log.slot = Some(slot);
        let response = self.route(request, &mut log).await;
        log.status = response.status();
        if let Some(status) = log.cache_status {
            self.metrics.count_request(status);
        }
        let declared = declared_length_of(response.headers());
        response.map(|body| boxed(LoggedBody::new(body, log, declared)))
    }

    async fn route(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        let path = request.uri().path().to_string();
        let Some(upstream) = self.upstreams.route(&path).cloned() else {
            return reply::error(
                &path,
                StatusCode::NOT_FOUND,
                &format!("no upstream serves {path}; add an upstream whose paths include it, or one without paths"),
            );
        };
        log.upstream = Some(Arc::clone(&upstream.name));
        if declared_length(&request).is_some_and(|len| len > self.max_body_bytes) {
            return self.too_large(&path);
        }
        // Once, for every route: what is keyed and what is forwarded is the
        // request without hop-by-hop headers (nor those a Connection header
        // names), so a header the upstream never sees is never keyed.
        headers::strip_hop_by_hop(request.headers_mut());
        let cache = match &self.cache {
            Some(cache) if request.method() == Method::POST && cache.is_route(&path) => cache,
            _ => return self.pass_through(request, &upstream).await,
        };
        let mut policy = RequestPolicy::from_headers(
            request.headers(),
            cache.settings.ttl,
            cache.settings.max_ttl,
        );
        if cache.settings.replay == Replay::Strict && !policy.record {
            policy.only_if_cached = true;
        }
        if policy.bypass {
            log.cache_status = Some(CacheStatus::Bypass);
            return self
                .pass_through(request, &upstream)
                .await
                .tagged(CacheStatus::Bypass);
        }

        let (parts, body) = request.into_parts();
        let (body, mut budget) = match self.read_body(body, &parts.headers, &path).await {
            Ok(read) => read,
            Err(response) => return response,
        };
        let tenant = match cache.keys.tenant(&parts.headers) {
            Ok(tenant) => tenant,
            Err(reason) => {
                log.bypass_reason = Some(reason.as_str());
                return self.bypass(parts, body, &upstream, log).await;
            }
        };
        let key_parts = key_parts(&parts, &policy, &tenant);
        let raw_key = cache.keys.raw_key(key_parts, &body);
        if policy.lookup {
            let known = cache.aliases.get(&raw_key);
            if let Some((key, entry)) = known.and_then(|k| Some((k, self.tiers.in_memory(&k)?))) {
                return self.serve_hit(&entry, &key, TierKind::Memory, log);
            }
        }
        // Keying needs scratch space up to the body's size (see
        // `canonical`); it comes out of the same budget as bodies.
        if let Err(limit) = self.admission.grow(&mut budget, body.len() as u64) {
            self.metrics.count_overload(limit);
            return limits::overloaded(&path, limit);
        }
        let keyed = cache.keys.key(key_parts, &body);
        budget.release(body.len() as u64);
        let (key, facts) = match keyed {
            Ok(keyed) => keyed,
            Err(err) => {
                // Not ours to judge: the upstream answers bad JSON with its own 400.
                tracing::debug!(error = %err, "body has no canonical form; not cached");
                log.bypass_reason = Some("body is not one JSON object");
                return self.bypass(parts, body, &upstream, log).await;
            }
        };
        if facts.streamed && !cache.settings.streaming {
            log.bypass_reason = Some("streamed and cache.streaming is off");
            return self.bypass(parts, body, &upstream, log).await;
        }
        // `budget` is held until the answer's head is out: by then the
        // upstream has read the body.
        let keyed = Keyed {
            parts,
            body,
            tenant,
            key,
            raw_key,
            policy,
        };
        self.lookup_or_fetch(cache, keyed, &upstream, log).await
    }

    async fn lookup_or_fetch(
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
                    return self.serve_hit(&entry, &keyed.key, TierKind::Memory, log);
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
                    self.metrics.coalesced_waits.inc();
                    log.coalesced = true;
                    match follower.wait(coalesce.wait_timeout).await {
                        Landing::Answer(entry) => {
                            return self.serve_hit(&entry, &keyed.key, TierKind::Memory, log)
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
    async fn only_from_cache(
        &self,
        cache: &CacheLayer,
        keyed: Keyed,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        if keyed.policy.lookup {
            if let Some(entry) = self.tiers.in_memory(&keyed.key) {
                return self.serve_hit(&entry, &keyed.key, TierKind::Memory, log);
            }
            let origin = || cache.origin_for_cluster(&self.tiers, &keyed);
            if let Some((entry, tier)) = self.tiers.below_memory(&keyed.key, origin).await {
                log.reserve_used = tier == TierKind::Reserve;
                return self.serve_hit(&entry, &keyed.key, tier, log);
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
    /// too) and handed to the followers.
    async fn fill(
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
        let origin = || cache.origin_for_cluster(&self.tiers, &keyed);
        if let Some((entry, tier)) = self.tiers.below_memory(&keyed.key, origin).await {
            if let Some(leader) = leader {
                leader.land(Some(Arc::clone(&entry)));
            }
            log.reserve_used = tier == TierKind::Reserve;
            return self.serve_hit(&entry, &keyed.key, tier, log);
        }
        let mut leader = match leader {
            Some(leader) if self.tiers.has_cluster() => leader,
            leader => return self.fetch(keyed, upstream, status, leader, log).await,
        };
        // This process's askers wait on its leader; the leader waits on the
        // key's owner, so the cluster makes one upstream call.
        let origin = cache.origin_for_cluster(&self.tiers, &keyed);
        match self.tiers.claim(&keyed.key, origin.as_ref()).await {
            Claimed::Answer(entry) => {
                leader.land(Some(Arc::clone(&entry)));
                log.coalesced = true;
                return self.serve_hit(&entry, &keyed.key, TierKind::Peer, log);
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
            Claimed::Lead => {
                let tiers = self.tiers.clone();
                let key = keyed.key;
                leader.on_release(Box::new(move |failure| tiers.release(key, failure)));
            }
            Claimed::Alone(reason) => {
                tracing::debug!(key = %keyed.key, reason, "calling the upstream without the cluster's flight");
            }
        }
        self.fetch(keyed, upstream, status, Some(leader), log).await
    }

    /// The answer to a request whose flight's leader (here or elsewhere in
    /// the cluster) failed: a stale entry if stale-if-error allows one,
    /// else the same failure.
    async fn answer_leaders_failure(
        &self,
        failure: &UpstreamFailure,
        keyed: &Keyed,
        status: CacheStatus,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.metrics.shared_failures.inc();
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
    fn note_hit(&self, tier: TierKind, log: &mut AccessLog) {
        log.cache_status = Some(CacheStatus::Hit);
        log.tier = Some(tier);
        self.metrics.count_hit(tier);
    }

    fn serve_hit(
        &self,
        entry: &CachedResponse,
        key: &CacheKey,
        tier: TierKind,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        self.note_hit(tier, log);
        self.metrics.input_tokens_saved.inc_by(entry.usage.input);
        self.metrics.output_tokens_saved.inc_by(entry.usage.output);
        self.metrics
            .bytes_served_from_cache
            .inc_by(entry.body_len() as u64);
        let mut response = Response::new(full(entry.body()));
        *response.headers_mut() = entry::hit_headers(entry, tier, &key.to_string());
        response
    }

    /// A follower's answer while its leader's streamed answer arrives: the
    /// events so far, then the live tail. Counted as a hit of `tier` (the
    /// leader here: memory; elsewhere in the cluster: peer); the tokens it
    /// saves are not counted, as they are known only at the stream's end.
    fn serve_live(
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

    /// Calls the upstream in a task of its own, so that neither a client
    /// that goes away nor a slow one stops the answer from being stored and
    /// handed to the followers.
    async fn fetch(
        self: &Arc<Self>,
        keyed: Keyed,
        upstream: &Arc<Upstream>,
        status: CacheStatus,
        leader: Option<Leader>,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        log.cache_status = Some(status);
        let path = keyed.parts.uri.path().to_string();
        let (head_tx, head_rx) = oneshot::channel();
        let this = Arc::clone(self);
        let upstream = Arc::clone(upstream);
        tokio::spawn(async move {
            this.fetch_and_record(keyed, upstream, status, leader, head_tx)
                .await;
        });
        match head_rx.await {
            Ok(response) => {
                note_stale(&response, log);
                response
            }
            Err(_) => reply::error(
                &path,
                StatusCode::BAD_GATEWAY,
                "the upstream call ended without an answer; retry the request",
            ),
        }
    }

    async fn fetch_and_record(
        self: Arc<Self>,
        keyed: Keyed,
        upstream: Arc<Upstream>,
        status: CacheStatus,
        leader: Option<Leader>,
        head_tx: oneshot::Sender<Response<ProxyBody>>,
    ) {
        let origin = self
            .cache
            .as_ref()
            .and_then(|cache| cache.origin_for_cluster(&self.tiers, &keyed));
        let Keyed {
            parts,
            body,
            key,
            policy,
            ..
        } = keyed;
        let path = parts.uri.path().to_string();
        let deadline = Instant::now() + upstream.total_timeout;
        let request = match upstream_request(parts, full(body), &upstream, true) {
            Ok(request) => request,
            Err(err) => {
                let _ = head_tx.send(reply::error(&path, err.status(), &err.to_string()));
                return;
            }
        };
        let sent = Instant::now();
        let response = match upstream.send(request).await {
            Ok(response) => response,
            Err(err) => {
                self.upstream_failed(&upstream, &err);
                let failure = UpstreamFailure {
                    status: err.status(),
                    headers: reply::error_headers(),
                    body: reply::error_body(&path, err.status(), &err.to_string()),
                };
                let answer = self
                    .share_failure(failure, leader, status, &key, &policy, err.to_string())
                    .await;
                let _ = head_tx.send(answer);
                return;
            }
        };
        self.metrics
            .observe_upstream(&upstream.name, sent.elapsed());
        let (mut head, incoming) = response.into_parts();
        let storable = policy.store
            && head.status == StatusCode::OK
            && !entry::upstream_forbids_store(&head.headers)
            && declared_length_of(&head.headers).is_none_or(|len| len <= self.cache_limit());
        headers::strip_hop_by_hop(&mut head.headers);
        tag_upstream_answer(&mut head.headers, status, &key);
        let may_go_stale =
            stale_window(&policy, self.cache.as_ref()).is_some() && is_stale_trigger(head.status);
        if (leader.is_some() || may_go_stale) && is_shared_failure(head.status) {
            let reason = format!("the upstream answered {}", head.status);
            let (answer, leader) = match self
                .record_failure(head, incoming, deadline, &upstream, &path)
                .await
            {
                Ok(failure) => (
                    self.share_failure(failure, leader, status, &key, &policy, reason)
                        .await,
                    None,
                ),
                Err(response) => (response, leader),
            };
            drop(leader);
            let _ = head_tx.send(answer);
            return;
        }
        if !storable {
            // Nothing to record: hand the upstream body straight over.
            drop(leader);
            let body = DeadlineBody::new(incoming, deadline, upstream.total_timeout);
            let _ = head_tx.send(Response::from_parts(head, boxed(body)));
            return;
        }

        let recorder = EntryRecorder::new(
            &head.headers,
            declared_length_of(&head.headers),
            self.cache_limit(),
        );
        // A streamed answer is shared with the followers as it arrives.
        let live = match &leader {
            Some(leader) if entry::is_event_stream(&head.headers) => {
                let live = LiveAnswer::new(entry::stored_headers(&head.headers));
                leader.go_live(Arc::clone(&live));
                // Led at a remote owner: its waiters follow it live too.
                self.tiers.feed(key, &live);
                Some(live)
            }
            _ => None,
        };
        let destination = Destination {
            live,
            key,
            ttl: policy.ttl,
            tiers: self.tiers.clone(),
            metrics: Arc::clone(&self.metrics),
            leader,
            upstream: Arc::clone(&upstream.name),
            origin,
        };
        let body = RecordingBody::new(
            incoming,
            recorder,
            destination,
            deadline,
            upstream.total_timeout,
        );
        // If the client left meanwhile, dropping the response here hands the
        // answer to a task that finishes recording it.
        let _ = head_tx.send(Response::from_parts(head, boxed(body)));
    }

    /// Reads a failed upstream answer whole (it is small) so that the
    /// followers can get it too. Past the size limit or the deadline the
    /// leader's client gets a 502 and the followers nothing.
    async fn record_failure(
        &self,
        head: http::response::Parts,
        incoming: Incoming,
        deadline: Instant,
        upstream: &Upstream,
        path: &str,
    ) -> Result<UpstreamFailure, Response<ProxyBody>> {
        let read = Limited::new(incoming, MAX_SHARED_FAILURE_BYTES).collect();
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(body)) => {
                let mut headers = http::HeaderMap::new();
                for name in SHARED_FAILURE_HEADERS {
                    for value in head.headers.get_all(name) {
                        headers.append(name, value.clone());
                    }
                }
                Ok(UpstreamFailure {
                    status: head.status,
                    headers,
                    body: body.to_bytes(),
                })
            }
            _ => {
                self.metrics.count_upstream_error(&upstream.name);
                Err(reply::error(
                    path,
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "the upstream answered {} and its error body could not be read; retry the request",
                        head.status
                    ),
                ))
            }
        }
    }

    /// Hands a failed upstream answer to the followers, and answers this
    /// request with a stale entry if stale-if-error allows one, else with
    /// the failure.
    async fn share_failure(
        &self,
        failure: UpstreamFailure,
        leader: Option<Leader>,
        status: CacheStatus,
        key: &CacheKey,
        policy: &RequestPolicy,
        reason: String,
    ) -> Response<ProxyBody> {
        let failure = Arc::new(failure);
        if let Some(leader) = leader {
            leader.fail(Arc::clone(&failure));
        }
        match self.stale_answer(&failure, key, policy, reason).await {
            Some(stale) => stale.response,
            None => failure_response(&failure, status, key),
        }
    }

    /// An entry that expired within the stale-if-error window, as the
    /// answer to a request whose upstream call failed with `failure`:
    /// only for 429, 500, 502, 503, 504 and 529 (timeouts and unreachable
    /// upstreams are 504 and 502 here), never for a `no-cache` request.
    async fn stale_answer(
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
        let mut response = Response::new(full(entry.body()));
        *response.headers_mut() = entry::hit_headers(&entry, tier, &key.to_string());
        response
            .headers_mut()
            .insert(headers::STATUS, CacheStatus::Stale.header_value());
        response.extensions_mut().insert(StaleServed {
            tier,
            reason: reason.clone(),
        });
        Some(StaleAnswer { response })
    }

    fn cache_limit(&self) -> u64 {
        self.cache
            .as_ref()
            .map_or(0, |c| c.settings.max_entry_bytes)
    }

    fn upstream_failed(&self, upstream: &Upstream, err: &UpstreamError) {
        self.metrics.count_upstream_error(&upstream.name);
        tracing::warn!(upstream = %upstream.name, error = %err, "upstream call failed");
    }

    /// Reads a cache route's body within the size and time limits and the
    /// budget of bytes held at once, into one buffer of its exact size.
    async fn read_body(
        &self,
        body: Incoming,
        headers: &http::HeaderMap,
        path: &str,
    ) -> Result<(Bytes, BufferPermit), Response<ProxyBody>> {
        let mut budget = BufferPermit::default();
        let declared = declared_length_of(headers);
        // A refused body is still read to its end, and dropped as it comes:
        // a client still sending would otherwise see its connection reset
        // instead of the 503 that tells it to retry.
        let mut refused = declared.and_then(|len| self.admission.grow(&mut budget, len).err());
        let read = async {
            let mut body = body;
            let capacity = match (refused, declared) {
                (None, Some(len)) => usize::try_from(len).unwrap_or(0),
                _ => 0,
            };
            let mut buffer = BytesMut::with_capacity(capacity);
            let mut received = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue; // trailers
                };
                received += data.len() as u64;
                if received > self.max_body_bytes {
                    return Ok(Err(self.too_large(path)));
                }
                if refused.is_some() {
                    continue;
                }
                if declared.is_none_or(|len| received > len) {
                    if let Err(limit) = self.admission.grow(&mut budget, data.len() as u64) {
                        refused = Some(limit);
                        buffer = BytesMut::new();
                        continue;
                    }
                }
                buffer.extend_from_slice(&data);
            }
            Ok::<_, hyper::Error>(match refused {
                Some(limit) => {
                    self.metrics.count_overload(limit);
                    Err(limits::overloaded(path, limit))
                }
                None => Ok(buffer.freeze()),
            })
        };
        match tokio::time::timeout(self.client_body_timeout, read).await {
            Ok(Ok(Ok(bytes))) => Ok((bytes, budget)),
            Ok(Ok(Err(response))) => Err(response),
            Ok(Err(err)) => Err(reply::error(
                path,
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {err}; send it again"),
            )),
            Err(_) => Err(reply::error(
                path,
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within server.client_body_timeout; send it again",
            )),
        }
    }

    fn too_large(&self, path: &str) -> Response<ProxyBody> {
        reply::error(
            path,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body exceeds {} bytes; send a smaller request or raise server.max_body_bytes",
                self.max_body_bytes
            ),
        )
    }

    /// Forwards an already-read body without caching.
    async fn bypass(
        &self,
        parts: Parts,
        body: Bytes,
        upstream: &Upstream,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        log.cache_status = Some(CacheStatus::Bypass);
        self.forward(parts, full(body), upstream)
            .await
            .tagged(CacheStatus::Bypass)
    }

    /// Forwards a request whose body is streamed as it arrives.
    async fn pass_through(
        &self,
        request: Request<Incoming>,
        upstream: &Upstream,
    ) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        self.forward(parts, boxed(Limited::new(body, limit)), upstream)
            .await
    }

    async fn forward(
        &self,
        parts: Parts,
        body: ProxyBody,
        upstream: &Upstream,
    ) -> Response<ProxyBody> {
        let path = parts.uri.path().to_string();
        let deadline = Instant::now() + upstream.total_timeout;
        let request = match upstream_request(parts, body, upstream, false) {
            Ok(request) => request,
            Err(err) => return reply::error(&path, err.status(), &err.to_string()),
        };
        let sent = Instant::now();
        match upstream.send(request).await {
            Ok(response) => {
                self.metrics
                    .observe_upstream(&upstream.name, sent.elapsed());
                let (mut head, incoming) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers);
                let body = DeadlineBody::new(incoming, deadline, upstream.total_timeout);
                Response::from_parts(head, boxed(body))
            }
            Err(err) => {
                self.upstream_failed(upstream, &err);
                reply::error(&path, err.status(), &err.to_string())
            }
        }
    }
}

/// Rewrites a client request for the upstream: its URI, no RelayCache
/// control headers, no Host (the client sets the upstream's). Hop-by-hop
/// headers were removed when the request was routed.
/// On cache routes the answer is asked for uncompressed, so one stored
/// copy serves every client whatever encodings it accepts.
fn upstream_request(
    mut parts: Parts,
    body: ProxyBody,
    upstream: &Upstream,
    identity_encoding: bool,
) -> Result<Request<ProxyBody>, UpstreamError> {
    parts.uri = upstream.uri_for(parts.uri.path_and_query().map_or("/", |p| p.as_str()))?;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(http::header::HOST);
    let ours: Vec<http::HeaderName> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-relaycache"))
        .cloned()
        .collect();
    for name in ours {
        parts.headers.remove(name);
    }
    if identity_encoding {
        parts.headers.remove(http::header::ACCEPT_ENCODING);
    }
    Ok(Request::from_parts(parts, body))
}

/// Upstream answers that stale-if-error may answer instead of (RFC 5861
/// names the 5xx; 429 and Anthropic's 529 "overloaded" are the same kind
/// of trouble).
fn is_stale_trigger(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504 | 529)
}

/// The stale-if-error window of a request: its own `stale-if-error=N`, else
/// `cache.stale_if_error`; `None` when off or when the request said
/// `no-cache`.
fn stale_window(policy: &RequestPolicy, cache: Option<&CacheLayer>) -> Option<Duration> {
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
struct StaleServed {
    tier: TierKind,
    reason: String,
}

/// A stale entry's response.
struct StaleAnswer {
    response: Response<ProxyBody>,
}

impl StaleAnswer {
    /// The response, with the log told what happened.
    fn logged(self, log: &mut AccessLog) -> Response<ProxyBody> {
        note_stale(&self.response, log);
        self.response
    }
}

/// Copies a stale answer's facts into the access log.
fn note_stale(response: &Response<ProxyBody>, log: &mut AccessLog) {
    if let Some(stale) = response.extensions().get::<StaleServed>() {
        log.cache_status = Some(CacheStatus::Stale);
        log.tier = Some(stale.tier);
        log.upstream_error = Some(stale.reason.clone());
    }
}

/// The answer to a request whose upstream call (its own or its leader's)
/// failed. Never stored.
fn failure_response(
    failure: &UpstreamFailure,
    status: CacheStatus,
    key: &CacheKey,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(failure.body.clone()));
    *response.status_mut() = failure.status;
    *response.headers_mut() = failure.headers.clone();
    tag_upstream_answer(response.headers_mut(), status, key);
    response
}

/// Marks an answer that came from the upstream (this request's call or its
/// leader's): what the cache did, and the key it was asked under.
fn tag_upstream_answer(map: &mut http::HeaderMap, status: CacheStatus, key: &CacheKey) {
    map.insert(headers::STATUS, status.header_value());
    if let Ok(value) = HeaderValue::from_str(&key.to_string()) {
        map.insert(headers::KEY, value);
    }
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    declared_length_of(request.headers())
}

fn declared_length_of(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

trait Tagged {
    fn tagged(self, status: CacheStatus) -> Self;
}

impl Tagged for Response<ProxyBody> {
    fn tagged(mut self, status: CacheStatus) -> Self {
        self.headers_mut()
            .insert(headers::STATUS, status.header_value());
        self
    }
}
