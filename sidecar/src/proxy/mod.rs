//! The request path: route, read the body, key it, look it up, coalesce
//! identical misses, call the upstream, stream the answer back while
//! recording it, and store what is complete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{AccessLog, LoggedBody};
use crate::body::{boxed, full, DeadlineBody, ProxyBody};
use crate::coalesce::Flights;
use crate::compression::{self, BodyEncoding, DecodedAnswers};
use crate::config::{CacheConfig, Config, Mode, Replay};
use crate::entry::{self, CachedResponse};
use crate::headers::{self, CacheStatus};
use crate::key::explain::EXPLAIN_HEADER;
use crate::key::{CacheKey, KeyBuilder, KeyOrigin, KeyParts, Tenant};
use crate::limits::{self, Admission, BufferPermit};
use crate::metrics::Metrics;
use crate::policy::RequestPolicy;
use crate::reply;
use crate::tier::TierKind;
use crate::tiers::Tiers;
use crate::upstream::{Upstream, UpstreamError, Upstreams};

mod fetch;
mod lookup;
mod stale;

use fetch::upstream_request;

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

/// Decoded copies of hot compressed answers get 1/32 of `max_cost` on top
/// of it (3.2 MiB at the default 100 MiB, about 600 answers of 5 KB).
const DECODED_BUDGET_DIVISOR: u64 = 32;

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
    decoded: DecodedAnswers,
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
            decoded: DecodedAnswers::new(config.cache.memory.max_cost / DECODED_BUDGET_DIVISOR),
        })
    }

    /// A hit's answer: the entry's headers and its body. A body stored as
    /// a zstd frame goes as it is (`content-encoding: zstd`) to a client
    /// that accepts zstd, and decoded to any other; either way the answer
    /// varies by `accept-encoding`. `decoded`: the body decoded already,
    /// if it was.
    fn stored_answer(
        &self,
        entry: &CachedResponse,
        tier: TierKind,
        key: &CacheKey,
        decoded: Option<Bytes>,
        policy: &RequestPolicy,
    ) -> Response<ProxyBody> {
        let (encoding, stored) = entry.stored_body();
        let mut headers = entry::hit_headers(entry, tier, &key.to_string());
        let body = match encoding {
            BodyEncoding::Identity => stored,
            BodyEncoding::Zstd if policy.accepts_zstd => {
                compression::tag_zstd(&mut headers);
                stored
            }
            BodyEncoding::Zstd => {
                compression::tag_varies(&mut headers);
                self.decoded.body(key, entry, decoded)
            }
        };
        let mut response = Response::new(full(body));
        *response.headers_mut() = headers;
        response
    }

    /// Handles one client request; never fails, errors become responses.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let mut log = AccessLog::new(request.method().clone(), request.uri().path());
        let slot = match self.admission.request() {
            Ok(slot) => slot,
            Err(limit) => {
                self.metrics.proxy.count_overload(limit);
                log.bypass_reason = Some(limit.as_str());
                let response = limits::overloaded(request.uri().path(), limit);
                log.status = response.status();
                return response.map(|body| boxed(LoggedBody::new(body, log, None)));
            }
        };
        log.slot = Some(slot);
        let explain = request.headers().contains_key(EXPLAIN_HEADER);
        let mut response = self.route(request, &mut log).await;
        if explain && !response.headers().contains_key(EXPLAIN_HEADER) {
            explain_not_cached(&mut response, &log);
        }
        log.status = response.status();
        if let Some(status) = log.cache_status {
            self.metrics.proxy.count_request(status);
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
        let explain = request.headers().contains_key(EXPLAIN_HEADER);
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
        // An explanation needs the full key, so it skips the alias shortcut.
        if policy.lookup && !explain {
            let known = cache.aliases.get(&raw_key);
            if let Some((key, entry)) = known.and_then(|k| Some((k, self.tiers.in_memory(&k)?))) {
                return self.serve_hit(&entry, &key, TierKind::Memory, None, &policy, log);
            }
        }
        // Keying needs scratch space up to the body's size (see
        // `canonical`); it comes out of the same budget as bodies.
        if let Err(limit) = self.admission.grow(&mut budget, body.len() as u64) {
            self.metrics.proxy.count_overload(limit);
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
        let explanation = explain
            .then(|| cache.keys.explain(key_parts, &body).ok())
            .flatten()
            .and_then(|explained| explained.explanation.header_value());
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
        let mut response = self.lookup_or_fetch(cache, keyed, &upstream, log).await;
        if let Some(explanation) = explanation {
            response.headers_mut().insert(EXPLAIN_HEADER, explanation);
        }
        response
    }

    fn cache_limit(&self) -> u64 {
        self.cache
            .as_ref()
            .map_or(0, |c| c.settings.max_entry_bytes)
    }

    fn upstream_failed(&self, upstream: &Upstream, err: &UpstreamError) {
        self.metrics.proxy.count_upstream_error(&upstream.name);
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
                    self.metrics.proxy.count_overload(limit);
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
                    .proxy
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

/// The explanation of a request that was not keyed: why it is not cached.
fn explain_not_cached(response: &mut Response<ProxyBody>, log: &AccessLog) {
    let reason = match (log.bypass_reason, log.cache_status) {
        (Some(reason), _) => reason,
        (None, Some(CacheStatus::Bypass)) => "x-relaycache: off",
        (None, _) => "not a cache route (a POST to one of cache.routes)",
    };
    let text = serde_json::json!({"cached": false, "reason": reason}).to_string();
    if let Ok(value) = http::HeaderValue::from_str(&text) {
        response.headers_mut().insert(EXPLAIN_HEADER, value);
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
