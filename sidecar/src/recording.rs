//! The body of a miss: relays the upstream's answer to the client frame by
//! frame while recording it, and stores the entry when the answer is
//! complete. A client that leaves early does not stop the recording: the
//! rest of the answer is read by a task of its own, because it is paid for
//! and other requests may be waiting for it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, DeadlineExceeded};
use crate::coalesce::Leader;
use crate::entry::EntryRecorder;
use crate::key::{CacheKey, KeyOrigin, Tenant};
use crate::live::LiveAnswer;
use crate::metrics::Metrics;
use crate::tiers::Tiers;
use crate::upstream::error_chain;

/// Where a finished recording goes.
pub struct Destination {
    /// Key to store under.
    pub key: CacheKey,
    /// TTL of the entry.
    pub ttl: Duration,
    /// Where it is stored.
    pub tiers: Tiers,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Followers to hand the entry to.
    pub leader: Option<Leader>,
    /// Upstream name, for logs and metrics.
    pub upstream: Arc<str>,
    /// The request answered, when this process is a cluster client: the
    /// members derive the key from it before storing the copy.
    pub origin: Option<KeyOrigin>,
    /// The followers' live view of a streamed answer.
    pub live: Option<Arc<LiveAnswer>>,
    /// Whose answer it is: what a scoped purge selects it by.
    pub scope: RequestScope,
}

/// The tenant and namespace of the request an entry answers.
#[derive(Debug, Clone)]
pub struct RequestScope {
    /// The request's tenant.
    pub tenant: Tenant,
    /// The request's `x-relaycache-namespace`.
    pub namespace: Option<Arc<str>>,
}

impl Destination {
    /// Stores a complete recording (if worth keeping) and releases followers.
    fn complete(self, recorder: EntryRecorder) {
        let entry = recorder.finish(self.ttl).map(|entry| {
            let mut entry = self.tiers.compress(entry);
            self.tiers.stamp(&mut entry);
            entry.tenant = Some(self.scope.tenant.clone());
            entry.namespace = self.scope.namespace.clone();
            Arc::new(entry)
        });
        if entry.is_none() {
            tracing::debug!(key = %self.key, "answer not stored: over max_entry_bytes or an incomplete stream");
        }
        if let Some(entry) = &entry {
            self.tiers.store_answer(self.key, entry, self.origin);
            self.metrics.proxy.stores.inc();
        }
        if let Some(live) = &self.live {
            match &entry {
                Some(_) => live.complete(),
                None => live.break_off("it ended without its final event"),
            }
        }
        if let Some(leader) = self.leader {
            leader.land(entry);
        }
    }

    /// Records a frame, and shares it with live followers while it is
    /// recorded: past `cache.max_entry_bytes` nothing is kept, so
    /// followers cannot be given the rest.
    fn record(&self, recorder: &mut EntryRecorder, data: &Bytes) {
        let recording = recorder.push(data);
        if let Some(live) = &self.live {
            if recording {
                live.push(data);
            } else {
                live.break_off(
                    "it is larger than cache.max_entry_bytes, so it was not kept to share",
                );
            }
        }
    }

    /// Gives up on a recording; followers try on their own.
    fn fail(self, reason: &str) {
        if let Some(live) = &self.live {
            live.break_off(reason);
        }
        self.metrics.proxy.count_upstream_error(&self.upstream);
        tracing::warn!(upstream = %self.upstream, reason, "upstream answer broke off; not stored");
    }
}

/// Relays and records an upstream body.
pub struct RecordingBody {
    /// `None` only once handed to the task that finishes an abandoned answer.
    incoming: Option<Incoming>,
    /// `Some` until the recording is completed or given up.
    recording: Option<(EntryRecorder, Destination)>,
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
}

impl RecordingBody {
    /// Relays `incoming` into `recorder`, for `destination`, failing at
    /// `deadline` (`limit` is the configured total timeout, for the error).
    pub fn new(
        incoming: Incoming,
        recorder: EntryRecorder,
        destination: Destination,
        deadline: Instant,
        limit: Duration,
    ) -> Self {
        Self {
            incoming: Some(incoming),
            recording: Some((recorder, destination)),
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            limit,
        }
    }

    fn complete_if_ended(&mut self) {
        if self.incoming.as_ref().is_none_or(Body::is_end_stream) {
            if let Some((recorder, destination)) = self.recording.take() {
                destination.complete(recorder);
            }
        }
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(incoming) = this.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((recorder, destination))) =
                    (frame.data_ref(), this.recording.as_mut())
                {
                    destination.record(recorder, data);
                }
                this.complete_if_ended();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                if let Some((_, destination)) = this.recording.take() {
                    destination.fail(&error_chain(&err));
                }
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Ready(None) => {
                if let Some((recorder, destination)) = this.recording.take() {
                    destination.complete(recorder);
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if let Some((_, destination)) = this.recording.take() {
                        destination.fail("total_timeout exceeded");
                    }
                    Poll::Ready(Some(Err(Box::new(DeadlineExceeded(this.limit)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        self.complete_if_ended();
        let Some((recorder, destination)) = self.recording.take() else {
            return;
        };
        if !recorder.is_recording() && destination.leader.is_none() {
            return; // Too big to keep and nobody waiting: let the upstream go.
        }
        let (Ok(runtime), Some(incoming)) =
            (tokio::runtime::Handle::try_current(), self.incoming.take())
        else {
            return;
        };
        let deadline = self.deadline;
        tracing::debug!(key = %destination.key, "client left before the answer ended; finishing it in the background");
        runtime.spawn(finish_abandoned(incoming, recorder, destination, deadline));
    }
}

/// Reads the rest of an answer whose client went away, then stores it.
async fn finish_abandoned(
    mut incoming: Incoming,
    mut recorder: EntryRecorder,
    destination: Destination,
    deadline: Instant,
) {
    loop {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    destination.record(&mut recorder, data);
                }
            }
            Ok(None) => return destination.complete(recorder),
            Ok(Some(Err(err))) => return destination.fail(&error_chain(&err)),
            Err(_) => return destination.fail("total_timeout exceeded"),
        }
    }
}
