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

use super::proto::{claim_reply, ClaimRequest, Lead, NoAnswer, ReleaseRequest};
use super::security::PeerClient;
use super::wire::{entry_from_wire, entry_to_wire, failure_from_wire, failure_to_wire};
use super::Cluster;
use crate::coalesce::{Flights, Join, Landing, Leader, UpstreamFailure};
use crate::entry::CachedResponse;
use crate::key::{CacheKey, KeyOrigin};
use crate::metrics::FlightOutcome;

/// What the key's primary owner said to a miss.
#[derive(Debug)]
pub enum Claimed {
    /// The answer, held by the owner or landed by the flight waited on.
    Answer(Arc<CachedResponse>),
    /// This process leads: call the upstream. `Cluster::replicate` lands
    /// the flight; [`Cluster::release`] gives it back.
    Lead,
    /// The leader's upstream call failed: answer with the same failure.
    Failed(Arc<UpstreamFailure>),
    /// No flight to join: call the upstream alone, for this reason.
    Alone(&'static str),
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
}

struct HeldLease {
    lease: u64,
    owner: PeerClient,
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
            Claimed::Answer(_) => FlightOutcome::Answer,
            Claimed::Lead => FlightOutcome::Lead,
            Claimed::Failed(_) => FlightOutcome::Failed,
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
            return Claimed::Lead;
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
        let reply = match tokio::time::timeout(timeout, owner.claim(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                self.metrics.cluster.count_call("claim", false);
                tracing::debug!(%key, %status, "the key's owner refused a claim");
                return Claimed::Alone("the key's owner refused the claim");
            }
            Err(_) => {
                self.metrics.cluster.count_call("claim", false);
                return Claimed::Alone(
                    "the key's owner did not answer within cache.coalesce.wait_timeout",
                );
            }
        };
        self.metrics.cluster.count_call("claim", true);
        match reply.outcome {
            Some(claim_reply::Outcome::Entry(wire)) => {
                let entry = entry_from_wire(&wire)
                    .filter(|(k, _)| k == key)
                    .and_then(|(_, entry)| self.admit(entry));
                match entry {
                    Some(entry) => {
                        self.observe(entry.version);
                        Claimed::Answer(Arc::new(entry))
                    }
                    None => Claimed::Alone("the owner's entry was refused"),
                }
            }
            Some(claim_reply::Outcome::Lead(Lead { lease })) => {
                locked(&table.held).insert(*key, HeldLease { lease, owner });
                Claimed::Lead
            }
            Some(claim_reply::Outcome::Failure(failure)) => match failure_from_wire(failure) {
                Some(failure) => Claimed::Failed(Arc::new(failure)),
                None => Claimed::Alone("the owner sent a failure that is not one"),
            },
            Some(claim_reply::Outcome::NoAnswer(NoAnswer { reason })) => {
                tracing::debug!(%key, %reason, "the key's owner had no answer to share");
                Claimed::Alone("the flight had no answer to share")
            }
            None => Claimed::Alone("the owner's reply was empty"),
        }
    }

    /// Gives a lead held at the key's owner back: with the upstream's
    /// failure for the waiters, or without one when the answer may not be
    /// stored (or was stored and the owner did not take it). Does nothing
    /// when no lease is held.
    pub fn release(self: &Arc<Self>, key: CacheKey, failure: Option<Arc<UpstreamFailure>>) {
        let Some(held) = locked(&self.flight_table.held).remove(&key) else {
            return;
        };
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            let mut owner = held.owner;
            let request = ReleaseRequest {
                key: key.0.to_vec(),
                lease: held.lease,
                failure: failure.as_deref().map(failure_to_wire),
            };
            let timeout = cluster.timings.call_timeout;
            let ok = matches!(
                tokio::time::timeout(timeout, owner.release(request)).await,
                Ok(Ok(_))
            );
            cluster.metrics.cluster.count_call("release", ok);
        });
    }

    /// At the owner: a claim's answer, after `wait` at most.
    pub(crate) async fn serve_claim(
        self: &Arc<Self>,
        key: CacheKey,
        wait: Duration,
    ) -> claim_reply::Outcome {
        let table = &self.flight_table;
        let held = |entry: &CachedResponse| claim_reply::Outcome::Entry(entry_to_wire(&key, entry));
        if let Some(entry) = self.memory.lookup(&key) {
            return held(&entry);
        }
        let no_answer = |reason: &str| {
            claim_reply::Outcome::NoAnswer(NoAnswer {
                reason: reason.to_string(),
            })
        };
        match table.flights.join(key, table.max_waiters) {
            Join::Lead(leader) => {
                // It may have landed between the lookup and the join.
                if let Some(entry) = self.memory.lookup(&key) {
                    leader.land(Some(Arc::clone(&entry)));
                    return held(&entry);
                }
                let lease = table.next_lease();
                locked(&table.remote_leads).insert(key, RemoteLead { lease, leader });
                self.expire_lead_later(key, lease);
                claim_reply::Outcome::Lead(Lead { lease })
            }
            Join::Follow(follower) => match follower
                .wait_for_entry(wait.min(table.wait_timeout))
                .await
            {
                Landing::Answer(entry) => held(&entry),
                Landing::Failed(failure) => {
                    claim_reply::Outcome::Failure(failure_to_wire(&failure))
                }
                Landing::Nothing | Landing::Live(_) => {
                    no_answer("the leader's answer may not be stored")
                }
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
