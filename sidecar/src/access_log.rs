//! One log line per request, written when the response body has been sent
//! (or the client went away), so the line carries the bytes really sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::headers::CacheStatus;

/// What is known about a request, filled in as it is handled. Holds no
/// headers and no query string, so no credential can reach the log.
#[derive(Debug)]
pub struct AccessLog {
    start: Instant,
    /// HTTP method.
    pub method: http::Method,
    /// Path without the query.
    pub path: String,
    /// Upstream chosen, if any.
    pub upstream: Option<Arc<str>>,
    /// Response status.
    pub status: StatusCode,
    /// What the cache did (None on routes that are not cached).
    pub cache_status: Option<CacheStatus>,
    /// Tier that answered a hit.
    pub tier: Option<crate::tier::TierKind>,
    /// Whether the request waited for an identical upstream call.
    pub coalesced: bool,
    /// Whether the answer came from the reserve tier.
    pub reserve_used: bool,
    /// Why a request was not cached, or which limit refused it.
    pub bypass_reason: Option<&'static str>,
    /// How the upstream failed, when a stale entry answered instead.
    pub upstream_error: Option<String>,
    /// The request's place under `server.max_inflight`, held until the
    /// answer is sent.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: u64,
    completed: bool,
}

impl AccessLog {
    /// Starts the record of a request.
    pub fn new(method: http::Method, path: &str) -> Self {
        Self {
            start: Instant::now(),
            method,
            path: path.to_string(),
            upstream: None,
            status: StatusCode::OK,
            cache_status: None,
            tier: None,
            coalesced: false,
            reserve_used: false,
            bypass_reason: None,
            upstream_error: None,
            slot: None,
            bytes: 0,
            completed: false,
        }
    }

    fn write(&self) {
        tracing::info!(
            target: "relaycache::access",
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            cache = self.cache_status.map(CacheStatus::as_str).unwrap_or("-"),
            tier = self.tier.map_or("-", crate::tier::TierKind::as_str),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            coalesced = self.coalesced,
            reserve_used = self.reserve_used,
            bypass_reason = self.bypass_reason.unwrap_or("-"),
            upstream_error = self.upstream_error.as_deref().unwrap_or("-"),
            latency_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            completed = self.completed,
            "request"
        );
    }
}

/// A response body that writes its request's log line when dropped.
pub struct LoggedBody {
    inner: ProxyBody,
    log: AccessLog,
    declared_length: Option<u64>,
}

impl LoggedBody {
    /// Wraps `inner`; `log` is written once the body is done with.
    /// `declared_length` is the response's Content-Length: the server stops
    /// polling once that many bytes went out, so reaching it means complete.
    pub fn new(inner: ProxyBody, log: AccessLog, declared_length: Option<u64>) -> Self {
        Self {
            inner,
            log,
            declared_length,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.log.completed = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() || self.declared_length == Some(self.log.bytes) {
            self.log.completed = true;
        }
        self.log.write();
    }
}
