//! One upstream call per question across the cluster.
//!
//! Every process coalesces identical misses within itself (see
//! [`crate::coalesce`]); its one leader then asks the key's primary owner
//! with `Claim`. The owner keeps the cluster's flight for the key in the
//! same registry its own proxy uses, so whoever asks first (a request of
//! its own or a claim) leads, and everyone else waits there:
//!
//! - the owner holds a fresh entry: it is the answer;
//! - a flight is in progress: the claim waits for it (up to
//!   `cache.coalesce.wait_timeout`) and gets its entry or its failure;
//! - none: the caller leads, under a lease only it knows. It calls the
//!   upstream, and its `Set` of the answer lands the flight at the owner;
//!   a failure or an answer that may not be stored is given back with
//!   `Release`. A lease left behind (a leader that died) expires after
//!   `wait_timeout`, and its waiters call the upstream themselves.
//!
//! A streamed answer is shared live: a remote leader feeds its frames to
//! the owner as they arrive (`Feed`), and a claim that finds the flight
//! streaming gets the frames so far, then the tail (`Claim` replies
//! `live`, frames, `end`). A stream that breaks off breaks there too.
//!
//! A process calls the upstream alone only when the cluster is below
//! quorum, the owner cannot be reached, or the wait ran out. A client may
//! claim only its own requests' keys (it sends the origin, as with `Set`),
//! so no client can hold back or fail another tenant's askers.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::proto::{
    claim_reply, feed_message, ClaimReply, ClaimRequest, FeedMessage, FeedStart, Lead, LiveHead,
    NoAnswer, ReleaseRequest,
};
use super::replication::OwnerShare;
use super::security::PeerClient;
use super::wire::{
    entry_to_wire, failure_from_wire, failure_to_wire, headers_from_wire, headers_to_wire,
    received_from_wire,
};
use super::Cluster;
use crate::coalesce::{Flights, Join, Landing, Leader, UpstreamFailure};
use crate::entry::{self, CachedResponse};
use crate::key::{CacheKey, KeyOrigin};
use crate::live::LiveAnswer;
use crate::metrics::cluster::PeerCall;
use crate::metrics::FlightOutcome;

mod stream;

use stream::{live_parts, pipe, LivePart};

/// What the key's primary owner said to a miss.
#[derive(Debug)]
pub enum Claimed {
    /// The answer: a copy the owner held, or (`waited`) the entry landed
    /// by the flight the claim waited on.
    Answer {
        /// The entry.
        entry: Arc<CachedResponse>,
        /// Whether it came from a flight in progress.
        waited: bool,
        /// Its body, decoded when the entry was checked (see
        /// [`crate::entry::Received`]); `None` when it came uncompressed.
        decoded: Option<Bytes>,
    },
    /// This process leads: call the upstream, after asking the other
    /// replicas unless the owner holds its share. `Cluster::replicate`
    /// lands the flight; [`Cluster::release`] gives it back.
    Lead(OwnerShare),
    /// The leader's upstream call failed: answer with the same failure.
    Failed(Arc<UpstreamFailure>),
    /// The flight's answer is a stream in progress, followed here live;
    /// `piped` ends when it does.
    Live {
        /// The stream, as it arrives from the owner.
        live: Arc<LiveAnswer>,
        /// The task that feeds `live`.
        piped: tokio::task::JoinHandle<()>,
    },
    /// No flight to join: call the upstream alone, for this reason.
    Alone(&'static str),
}

/// What the owner answers a claim with: one outcome, a lead, or a live
/// stream.
pub(crate) enum ClaimAnswer {
    /// The entry, the failure, or nothing.
    Outcome(claim_reply::Outcome),
    /// The entry landed by the flight the claim waited on.
    Landed(super::proto::Entry),
    /// The lead: its reply stream stays open until the lead ends.
    Lead(LeadWatch),
    /// The flight's streamed answer in progress.
    Live(Arc<LiveAnswer>),
}

/// The replies to a claim, as the gRPC service streams them.
pub(crate) type ClaimReplies =
    std::pin::Pin<Box<dyn Stream<Item = Result<ClaimReply, tonic::Status>> + Send>>;

fn reply(outcome: claim_reply::Outcome) -> Result<ClaimReply, tonic::Status> {
    Ok(ClaimReply {
        outcome: Some(outcome),
        waited: false,
    })
}

impl ClaimAnswer {
    /// The owner's copy of `key`.
    pub(crate) fn held(key: &CacheKey, entry: &CachedResponse) -> Self {
        ClaimAnswer::Outcome(claim_reply::Outcome::Entry(entry_to_wire(key, entry)))
    }

    /// The replies: the outcome alone, or `live`, each frame, and `end`.
    pub(crate) fn into_replies(self) -> ClaimReplies {
        match self {
            ClaimAnswer::Outcome(outcome) => Box::pin(futures::stream::iter([reply(outcome)])),
            ClaimAnswer::Landed(entry) => Box::pin(futures::stream::iter([Ok(ClaimReply {
                outcome: Some(claim_reply::Outcome::Entry(entry)),
                waited: true,
            })])),
            ClaimAnswer::Lead(watch) => {
                let lead = reply(claim_reply::Outcome::Lead(Lead {
                    lease: watch.lease,
                    owner_holds_its_share: watch.owner_share == OwnerShare::Whole,
                }));
                let open = futures::stream::unfold(watch, |mut watch| async move {
                    let _ = (&mut watch.ended).await;
                    None::<(Result<ClaimReply, tonic::Status>, LeadWatch)>
                });
                Box::pin(futures::stream::iter([lead]).chain(open))
            }
            ClaimAnswer::Live(live) => {
                let head = reply(claim_reply::Outcome::Live(LiveHead {
                    headers: headers_to_wire(live.headers()),
                }));
                let frames = live_parts(&live).map(|part| {
                    reply(match part {
                        LivePart::Frame(data) => claim_reply::Outcome::Frame(data),
                        LivePart::End(end) => claim_reply::Outcome::End(end),
                    })
                });
                Box::pin(futures::stream::iter([head]).chain(frames))
            }
        }
    }
}

/// The leases this process holds at owners, and the leads other processes
/// hold here.
pub struct FlightTable {
    /// The process's one registry of flights, shared with its proxy.
    flights: Arc<Flights>,
    /// Leads taken here by other processes: the lease and the flight.
    remote_leads: Mutex<HashMap<CacheKey, RemoteLead>>,
    /// Leads this process took at owners: the lease and who holds it.
    held: Mutex<HashMap<CacheKey, HeldLease>>,
    /// Lease numbers nobody else can guess: a per-process random hasher
    /// over a counter.
    lease_hasher: RandomState,
    lease_counter: AtomicU64,
    /// Longest a claim waits, and a remote lead lives.
    wait_timeout: Duration,
    /// Most askers waiting on one key.
    max_waiters: usize,
}

struct RemoteLead {
    lease: u64,
    leader: Leader,
    /// Dropped with the lead: ends the claim's reply stream.
    _ended: tokio::sync::oneshot::Sender<()>,
}

struct HeldLease {
    lease: u64,
    owner: PeerClient,
    /// The claim's reply stream, open while the lead is held: if this
    /// process goes away (or the request that led is cut off mid-claim),
    /// the owner sees the stream end and releases the lead at once.
    _claim: tonic::Streaming<ClaimReply>,
}

/// At the owner, inside a lead's reply stream: releases the lead (if it is
/// still held) when the stream ends, as it does when its claimant goes
/// away.
pub(crate) struct LeadWatch {
    cluster: Arc<Cluster>,
    key: CacheKey,
    lease: u64,
    /// Told to the claimant with the lead.
    owner_share: OwnerShare,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl Drop for LeadWatch {
    fn drop(&mut self) {
        if self
            .cluster
            .release_remote_lead(&self.key, self.lease, None)
        {
            tracing::debug!(key = %self.key, "a lead's claimant went away; its waiters ask again");
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl FlightTable {
    /// A table over `flights`, with `cache.coalesce`'s wait and bound.
    pub fn new(flights: Arc<Flights>, wait_timeout: Duration, max_waiters: usize) -> Self {
        Self {
            flights,
            remote_leads: Mutex::default(),
            held: Mutex::default(),
            lease_hasher: RandomState::new(),
            lease_counter: AtomicU64::new(0),
            wait_timeout,
            max_waiters,
        }
    }

    /// The registry the proxy coalesces in.
    pub fn flights(&self) -> &Arc<Flights> {
        &self.flights
    }

    fn next_lease(&self) -> u64 {
        let n = self.lease_counter.fetch_add(1, Ordering::Relaxed);
        self.lease_hasher.hash_one(n)
    }
}

impl Cluster {
    /// The registry of flights this process coalesces misses in.
    pub fn flights(&self) -> &Arc<Flights> {
        self.flight_table.flights()
    }

    /// Asks the key's primary owner about a miss this process is about to
    /// fill (its local flight's leader asks). `origin`: the request, which
    /// a client must send.
    pub async fn claim(&self, key: &CacheKey, origin: Option<&KeyOrigin>) -> Claimed {
        let claimed = self.ask_owner(key, origin).await;
        let outcome = match &claimed {
            Claimed::Answer { .. } => FlightOutcome::Answer,
            Claimed::Lead(_) => FlightOutcome::Lead,
            Claimed::Failed(_) => FlightOutcome::Failed,
            Claimed::Live { .. } => FlightOutcome::Live,
            Claimed::Alone(_) => FlightOutcome::Alone,
        };
        self.metrics.cluster.count_flight(outcome);
        claimed
    }

    async fn ask_owner(&self, key: &CacheKey, origin: Option<&KeyOrigin>) -> Claimed {
        let view = self.view();
        if !self.has_quorum(&view) {
            return Claimed::Alone("the cluster is below member_count_quorum");
        }
        let Some(owner) = view.replicas(key, 1).first().map(|m| m.client.clone()) else {
            return Claimed::Alone("no live member");
        };
        // This member owns the key: the local flight is the cluster's.
        let Some(mut owner) = owner else {
            return Claimed::Lead(self.own_share());
        };
        if self.is_client() && origin.is_none() {
            return Claimed::Alone("a client claims only with the request's origin");
        }
        let table = &self.flight_table;
        let request = ClaimRequest {
            key: key.0.to_vec(),
            wait_ms: u64::try_from(table.wait_timeout.as_millis()).unwrap_or(u64::MAX),
            origin: origin.map(super::wire::origin_to_wire),
        };
        let timeout = table.wait_timeout + self.timings.call_timeout;
        let first = async {
            let mut replies = owner.claim(request).await?.into_inner();
            let first = replies.message().await?;
            Ok::<_, tonic::Status>((first, replies))
        };
        let (first, replies) = match tokio::time::timeout(timeout, first).await {
            Ok(Ok((Some(first), replies))) => (first, replies),
            Ok(Ok((None, _))) => {
                self.metrics.cluster.count_call(PeerCall::Claim, false);
                return Claimed::Alone("the owner's reply was empty");
            }
            Ok(Err(status)) => {
                self.metrics.cluster.count_call(PeerCall::Claim, false);
                tracing::debug!(%key, %status, "the key's owner refused a claim");
                return Claimed::Alone("the key's owner refused the claim");
            }
            Err(_) => {
                self.metrics.cluster.count_call(PeerCall::Claim, false);
                return Claimed::Alone(
                    "the key's owner did not answer within cache.coalesce.wait_timeout",
                );
            }
        };
        self.metrics.cluster.count_call(PeerCall::Claim, true);
        match first.outcome {
            Some(claim_reply::Outcome::Entry(wire)) => {
                let admitted = received_from_wire(&wire)
                    .filter(|(k, _)| k == key)
                    .and_then(|(_, received)| {
                        let decoded = received.decoded;
                        self.admit(received.entry).map(|entry| (entry, decoded))
                    });
                match admitted {
                    Some((entry, decoded)) => {
                        self.observe(entry.version);
                        Claimed::Answer {
                            entry: Arc::new(entry),
                            waited: first.waited,
                            decoded,
                        }
                    }
                    None => Claimed::Alone("the owner's entry was refused"),
                }
            }
            Some(claim_reply::Outcome::Lead(Lead {
                lease,
                owner_holds_its_share,
            })) => {
                let held = HeldLease {
                    lease,
                    owner,
                    _claim: replies,
                };
                locked(&table.held).insert(*key, held);
                Claimed::Lead(if owner_holds_its_share {
                    OwnerShare::Whole
                } else {
                    OwnerShare::InDoubt
                })
            }
            Some(claim_reply::Outcome::Failure(failure)) => match failure_from_wire(failure) {
                Some(failure) => Claimed::Failed(Arc::new(failure)),
                None => Claimed::Alone("the owner sent a failure that is not one"),
            },
            Some(claim_reply::Outcome::NoAnswer(NoAnswer { reason })) => {
                tracing::debug!(%key, %reason, "the key's owner had no answer to share");
                Claimed::Alone("the flight had no answer to share")
            }
            Some(claim_reply::Outcome::Live(head)) => {
                let Some(headers) = headers_from_wire(head.headers) else {
                    return Claimed::Alone("the owner's live headers were malformed");
                };
                let live = LiveAnswer::new(entry::stored_headers(&headers));
                let limit = self.checks.max_entry_bytes;
                let piped = tokio::spawn({
                    let live = Arc::clone(&live);
                    async move { pipe(replies, &live, limit).await }
                });
                Claimed::Live { live, piped }
            }
            Some(claim_reply::Outcome::Frame(_) | claim_reply::Outcome::End(_)) | None => {
                Claimed::Alone("the owner's first reply was not an outcome")
            }
        }
    }

    /// Sends a streamed answer this process leads at a remote owner to
    /// that owner as it arrives, so that its waiters follow it live. Does
    /// nothing when no lease is held for `key`.
    pub fn feed(&self, key: CacheKey, live: &Arc<LiveAnswer>) {
        let held = locked(&self.flight_table.held)
            .get(&key)
            .map(|held| (held.lease, held.owner.clone()));
        let Some((lease, mut owner)) = held else {
            return;
        };
        let start = FeedMessage {
            part: Some(feed_message::Part::Start(FeedStart {
                key: key.0.to_vec(),
                lease,
                headers: headers_to_wire(live.headers()),
            })),
        };
        let parts = live_parts(live).map(|part| FeedMessage {
            part: Some(match part {
                LivePart::Frame(data) => feed_message::Part::Frame(data),
                LivePart::End(end) => feed_message::Part::End(end),
            }),
        });
        let messages = futures::stream::iter([start]).chain(parts);
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let ok = owner.feed(messages).await.is_ok();
            metrics.cluster.count_call(PeerCall::Feed, ok);
        });
    }

    /// At the owner: a remote leader's streamed answer, shared with the
    /// flight's waiters as it arrives.
    pub(crate) async fn serve_feed(
        &self,
        mut messages: tonic::Streaming<FeedMessage>,
    ) -> Result<(), tonic::Status> {
        let start = match messages.message().await? {
            Some(FeedMessage {
                part: Some(feed_message::Part::Start(start)),
            }) => start,
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "a feed starts with its key, lease and headers",
                ))
            }
        };
        let key = super::wire::key_from_wire(&start.key).ok_or_else(|| {
            tonic::Status::invalid_argument("a key must be 32 bytes (the x-relaycache-key hash)")
        })?;
        let headers = headers_from_wire(start.headers)
            .ok_or_else(|| tonic::Status::invalid_argument("a feed's headers are malformed"))?;
        let live = LiveAnswer::new(entry::stored_headers(&headers));
        {
            let leads = locked(&self.flight_table.remote_leads);
            match leads.get(&key) {
                // The lease is the proof: only the claim that led knows it.
                Some(lead) if lead.lease == start.lease => lead.leader.go_live(Arc::clone(&live)),
                _ => {
                    return Err(tonic::Status::failed_precondition(
                        "no lead with this lease: it landed, expired or was never given",
                    ))
                }
            }
        }
        pipe(messages, &live, self.checks.max_entry_bytes).await;
        Ok(())
    }

    /// Gives a lead held at the key's owner back: with the upstream's
    /// failure for the waiters, or without one when the answer may not be
    /// stored (or was stored and the owner did not take it). Does nothing
    /// when no lease is held.
    pub fn release(self: &Arc<Self>, key: CacheKey, failure: Option<Arc<UpstreamFailure>>) {
        let Some(held) = locked(&self.flight_table.held).remove(&key) else {
            return;
        };
        let Some(failure) = failure else {
            // Closing the claim's stream is the release: the owner ends a
            // lead whose stream ends (see `LeadWatch`), and a lead the
            // answer's `Set` landed is gone already. No call needed.
            drop(held);
            return;
        };
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            // `held` keeps the claim open until the owner has the failure:
            // closing it first would release the waiters with nothing.
            let mut owner = held.owner.clone();
            let request = ReleaseRequest {
                key: key.0.to_vec(),
                lease: held.lease,
                failure: Some(failure_to_wire(&failure)),
            };
            let timeout = cluster.timings.call_timeout;
            let ok = matches!(
                tokio::time::timeout(timeout, owner.release(request)).await,
                Ok(Ok(_))
            );
            cluster.metrics.cluster.count_call(PeerCall::Release, ok);
            drop(held);
        });
    }

    /// At the owner: a claim's answer, after `wait` at most.
    pub(crate) async fn serve_claim(
        self: &Arc<Self>,
        key: CacheKey,
        wait: Duration,
    ) -> ClaimAnswer {
        let table = &self.flight_table;
        let held = |entry: &CachedResponse| ClaimAnswer::held(&key, entry);
        if let Some(entry) = self.memory.lookup(&key) {
            return held(&entry);
        }
        let no_answer = |reason: &str| {
            ClaimAnswer::Outcome(claim_reply::Outcome::NoAnswer(NoAnswer {
                reason: reason.to_string(),
            }))
        };
        match table.flights.join(key, table.max_waiters) {
            Join::Lead(leader) => {
                // It may have landed between the lookup and the join.
                if let Some(entry) = self.memory.lookup(&key) {
                    leader.land(Some(Arc::clone(&entry)));
                    return held(&entry);
                }
                let lease = table.next_lease();
                let (ended_tx, ended) = tokio::sync::oneshot::channel();
                let lead = RemoteLead {
                    lease,
                    leader,
                    _ended: ended_tx,
                };
                locked(&table.remote_leads).insert(key, lead);
                self.expire_lead_later(key, lease);
                // Said only of keys this member owns first in its own
                // view: a claimant with another view must ask around.
                let owns_first = self
                    .view()
                    .replicas(&key, 1)
                    .first()
                    .is_some_and(|m| m.is_local());
                ClaimAnswer::Lead(LeadWatch {
                    cluster: Arc::clone(self),
                    key,
                    lease,
                    owner_share: if owns_first {
                        self.own_share()
                    } else {
                        OwnerShare::InDoubt
                    },
                    ended,
                })
            }
            Join::Follow(follower) => match follower.wait(wait.min(table.wait_timeout)).await {
                Landing::Answer(entry) => ClaimAnswer::Landed(entry_to_wire(&key, &entry)),
                Landing::Failed(failure) => {
                    ClaimAnswer::Outcome(claim_reply::Outcome::Failure(failure_to_wire(&failure)))
                }
                Landing::Live(live) => ClaimAnswer::Live(live),
                Landing::Nothing => no_answer("the leader's answer may not be stored"),
                Landing::TimedOut => no_answer("waited cache.coalesce.wait_timeout for the leader"),
            },
            Join::Alone => no_answer("cache.coalesce.max_waiters already wait on this key"),
        }
    }

    /// At the owner: an entry stored for `key` lands the flight a remote
    /// leader holds, handing the entry to everyone waiting.
    pub(crate) fn land_remote_lead(&self, key: &CacheKey, entry: &Arc<CachedResponse>) {
        let lead = locked(&self.flight_table.remote_leads).remove(key);
        if let Some(lead) = lead {
            lead.leader.land(Some(Arc::clone(entry)));
        }
    }

    /// At the owner: ends a remote lead by its lease. False when the lease
    /// is not the key's current one (landed, expired, or never given).
    pub(crate) fn release_remote_lead(
        &self,
        key: &CacheKey,
        lease: u64,
        failure: Option<UpstreamFailure>,
    ) -> bool {
        let lead = {
            let mut leads = locked(&self.flight_table.remote_leads);
            match leads.get(key) {
                Some(lead) if lead.lease == lease => leads.remove(key),
                _ => None,
            }
        };
        let Some(lead) = lead else {
            return false;
        };
        match failure {
            Some(failure) => lead.leader.fail(Arc::new(failure)),
            None => drop(lead.leader),
        }
        true
    }

    /// Ends a remote lead that outlives `wait_timeout`: its leader died or
    /// hangs, and its waiters gave up on it by then anyway.
    fn expire_lead_later(self: &Arc<Self>, key: CacheKey, lease: u64) {
        let cluster = Arc::clone(self);
        let wait = self.flight_table.wait_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if cluster.release_remote_lead(&key, lease, None) {
                tracing::debug!(%key, "a remote lead expired without an answer");
            }
        });
    }
}
