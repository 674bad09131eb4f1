//! A miss: the upstream call in a task of its own, the answer streamed
//! back while it is recorded, and a failed answer shared with the
//! followers.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::stale::{is_stale_trigger, note_stale, stale_window};
use super::{declared_length_of, Keyed, Proxy};
use crate::access_log::AccessLog;
use crate::body::{boxed, full, DeadlineBody, ProxyBody};
use crate::coalesce::{
    is_shared_failure, Leader, UpstreamFailure, MAX_SHARED_FAILURE_BYTES, SHARED_FAILURE_HEADERS,
};
use crate::entry::{self, EntryRecorder};
use crate::headers::{self, CacheStatus};
use crate::key::CacheKey;
use crate::live::LiveAnswer;
use crate::policy::RequestPolicy;
use crate::recording::{Destination, RecordingBody, RequestScope};
use crate::reply;
use crate::upstream::{Upstream, UpstreamError};

impl Proxy {
    /// Calls the upstream in a task of its own, so that neither a client
    /// that goes away nor a slow one stops the answer from being stored and
    /// handed to the followers.
    pub(super) async fn fetch(
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

    pub(super) async fn fetch_and_record(
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
            tenant,
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
            .proxy
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
            scope: RequestScope {
                tenant,
                namespace: policy.namespace.as_deref().map(Arc::from),
            },
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
    pub(super) async fn record_failure(
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
                self.metrics.proxy.count_upstream_error(&upstream.name);
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
    pub(super) async fn share_failure(
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
}

/// Rewrites a client request for the upstream: its URI, no RelayCache
/// control headers, no Host (the client sets the upstream's). Hop-by-hop
/// headers were removed when the request was routed.
/// On cache routes the answer is asked for uncompressed, so one stored
/// copy serves every client whatever encodings it accepts.
pub(super) fn upstream_request(
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

/// The answer to a request whose upstream call (its own or its leader's)
/// failed. Never stored.
pub(super) fn failure_response(
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
pub(super) fn tag_upstream_answer(map: &mut http::HeaderMap, status: CacheStatus, key: &CacheKey) {
    map.insert(headers::STATUS, status.header_value());
    if let Ok(value) = HeaderValue::from_str(&key.to_string()) {
        map.insert(headers::KEY, value);
    }
}
