//! Reads and writes against a key's replicas. Calls fan out in parallel;
//! each replica that fails is counted and the others carry on. A read
//! needs `read_quorum` answers and returns the freshest copy among them; a
//! write needs `write_quorum` acknowledgements, and a missed quorum is
//! counted and logged, never hidden. Below `member_count_quorum` live
//! members the cluster tier is skipped altogether.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};

use super::membership::Member;
use super::proto::{ClearRequest, DeleteRequest, GetRequest, PurgeRequest, SetRequest};
use super::security::PeerClient;
use super::wire::{entry_from_wire_within, entry_to_wire, origin_to_wire, received_from_wire};
use super::writes::ReplicaWrites;
use super::Cluster;
use crate::entry::filter::EntryFilter;
use crate::entry::{CachedResponse, Received};
use crate::key::{CacheKey, KeyOrigin};
use crate::metrics::cluster::PeerCall;
use crate::version::Version;

/// Keeps in `freshest` the copy with the higher version (`version` reads
/// it) of the one held so far and `candidate`. Equal versions are the same
/// write, so on a tie the copy already held stays.
fn keep_freshest<T>(freshest: &mut Option<T>, candidate: T, version: impl Fn(&T) -> Version) {
    if freshest
        .as_ref()
        .is_none_or(|held| version(&candidate) > version(held))
    {
        *freshest = Some(candidate);
    }
}

/// Whether a replica read asks the key's primary owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRead {
    /// Every replica is asked.
    Asked,
    /// This process claimed the key's flight at its primary owner first,
    /// and the owner answered with its copy: the other replicas are asked
    /// only when `read_quorum` needs more answers than the owner's (and
    /// this member's own, when it is a replica).
    Answered,
    /// This process claimed the key's flight at its primary owner first and
    /// leads it, so the owner has no copy: it is not asked again, and it
    /// counts towards the quorum. What it said of its share decides
    /// whether the other replicas are asked at all.
    Led(OwnerShare),
}

/// What a key's primary owner that gave a lead said of the keys it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerShare {
    /// It holds every copy the cluster holds of them (a complete warm
    /// start, and no doubt since), so its miss is the cluster's.
    Whole,
    /// It may lack some (no warm start, or one cut short, or a doubt
    /// raised since): the other replicas are asked.
    InDoubt,
}

/// Whether a replicated entry also gets a copy in the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveCopy {
    /// A new answer from the upstream: the key's primary owner writes the
    /// reserve copy, or this process when the primary does not take it.
    ByPrimaryOwner,
    /// No reserve copy: the entry came from the reserve (a promotion), or
    /// is a copy being moved between members.
    NotNeeded,
}

/// What became of an entry another process offered.
pub(super) enum Kept {
    /// Stored: newer than any copy held.
    Stored(Arc<CachedResponse>),
    /// Not stored: this copy, as new or newer, is held already.
    HeldAlready(Arc<CachedResponse>),
    /// Refused by the entry checks (see `Cluster::admit`).
    Refused,
}

impl Cluster {
    /// A version for an entry about to be stored.
    pub fn next_version(&self) -> Version {
        self.clock.tick()
    }

    /// The freshest copy of `key` among its replicas, if `read_quorum`
    /// replicas answered and one of them holds it, with the body decoded
    /// to check it (see [`Received`]). With [`OwnerRead::Led`] the primary
    /// owner is not asked; its claim answered for it.
    pub async fn lookup(&self, key: &CacheKey, owner: OwnerRead) -> Option<Received> {
        let view = self.view();
        if !self.has_quorum(&view) {
            self.metrics.cluster.skipped_below_quorum.inc();
            return None;
        }
        let replicas = view.replicas(key, self.settings.replica_count as usize);
        // This member's own store was looked at first (it is L1).
        let mut answers = replicas.iter().filter(|m| m.is_local()).count();
        let needed = self.settings.read_quorum as usize;
        let primary_is_local = replicas.first().is_some_and(|m| m.is_local());
        // A remote primary owner answered already, through the claim.
        let primary_claimed =
            owner != OwnerRead::Asked && !primary_is_local && !replicas.is_empty();
        if primary_claimed {
            answers += 1;
        }
        // A primary owner that warmed up completely holds what the cluster
        // holds of its keys: every write goes to it, and it pulled the rest
        // when it started. When its answer is quorum enough, its miss is
        // the cluster's: asked here (this member is the owner) or through
        // the claim that gave this process the lead, nobody else is asked,
        // and the flight goes straight on to the upstream. Without a
        // complete warm start (off, cut short, a member unreadable) the
        // others are asked, as repair may not have copied everything back
        // yet.
        let owner_share = if primary_is_local {
            self.own_share()
        } else {
            match owner {
                OwnerRead::Led(share) => share,
                OwnerRead::Asked | OwnerRead::Answered => OwnerShare::InDoubt,
            }
        };
        // Or the owner's copy, from its claim, is quorum enough.
        if answers >= needed && (owner_share == OwnerShare::Whole || owner == OwnerRead::Answered) {
            return None;
        }
        let timeout = self.timings.call_timeout;
        let mut calls: FuturesUnordered<_> = replicas
            .iter()
            .enumerate()
            .filter(|&(rank, _)| !(rank == 0 && primary_claimed))
            .filter_map(|(_, member)| member.client.clone())
            .map(|mut client| async move {
                let request = GetRequest {
                    key: key.0.to_vec(),
                    stale_within_ms: 0,
                };
                tokio::time::timeout(timeout, client.get(request)).await
            })
            .collect();
        if calls.is_empty() && answers >= needed {
            // Nobody left to ask.
            return None;
        }
        let mut freshest: Option<Received> = None;
        while let Some(result) = calls.next().await {
            match result {
                Ok(Ok(reply)) => {
                    self.metrics.cluster.count_call(PeerCall::Get, true);
                    answers += 1;
                    let found = reply
                        .into_inner()
                        .entry
                        .and_then(|e| received_from_wire(&e))
                        .filter(|(k, _)| k == key)
                        .and_then(|(_, Received { entry, decoded })| {
                            // Admitting may rebuild the entry, never change
                            // the answer's bytes, so the decoded copy holds.
                            let entry = self.admit(entry)?;
                            Some(Received { entry, decoded })
                        });
                    if let Some(received) = found {
                        self.observe(received.entry.version);
                        keep_freshest(&mut freshest, received, |r| r.entry.version);
                    }
                }
                Ok(Err(status)) => {
                    self.metrics.cluster.count_call(PeerCall::Get, false);
                    tracing::debug!(%key, %status, "replica read failed");
                }
                Err(_) => {
                    self.metrics.cluster.count_call(PeerCall::Get, false);
                    tracing::debug!(%key, ?timeout, "replica read timed out");
                }
            }
            if answers >= needed && freshest.is_some() {
                break;
            }
        }
        if answers < needed {
            self.metrics.cluster.read_quorum_failures.inc();
            tracing::debug!(%key, answers, needed, "cluster read below read_quorum; treated as a miss");
            return None;
        }
        freshest
    }

    /// The freshest copy of `key` among its replicas that expired no longer
    /// ago than `window`, for stale-if-error: any replica's answer will do
    /// (no read quorum), since the alternative is the upstream's failure.
    pub async fn lookup_stale(
        &self,
        key: &CacheKey,
        window: std::time::Duration,
    ) -> Option<Arc<CachedResponse>> {
        let view = self.view();
        let replicas = view.replicas(key, self.settings.replica_count as usize);
        let timeout = self.timings.call_timeout;
        let stale_within_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let calls = replicas
            .iter()
            .filter_map(|m| m.client.clone())
            .map(|mut client| async move {
                let request = GetRequest {
                    key: key.0.to_vec(),
                    stale_within_ms,
                };
                tokio::time::timeout(timeout, client.get(request)).await
            });
        let mut freshest: Option<CachedResponse> = None;
        for result in futures::future::join_all(calls).await {
            self.metrics
                .cluster
                .count_call(PeerCall::Get, matches!(result, Ok(Ok(_))));
            let found = match result {
                Ok(Ok(reply)) => reply.into_inner().entry,
                _ => None,
            };
            let found = found
                .and_then(|e| entry_from_wire_within(&e, window))
                .filter(|(k, _)| k == key)
                .and_then(|(_, entry)| self.admit(entry));
            if let Some(entry) = found {
                keep_freshest(&mut freshest, entry, |e| e.version);
            }
        }
        freshest.map(Arc::new)
    }

    /// Writes `entry` (already versioned and in local memory) to its
    /// replicas, and its reserve copy as `reserve_copy` says.
    /// A client must send the request the entry answers (`origin`), from
    /// which the members derive the key again; without one it writes
    /// nothing.
    pub async fn replicate(
        &self,
        key: CacheKey,
        entry: Arc<CachedResponse>,
        reserve_copy: ReserveCopy,
        origin: Option<&KeyOrigin>,
    ) {
        if self.is_client() && origin.is_none() {
            tracing::debug!(%key, "not offered to the cluster: a client writes only with the request's origin");
            return;
        }
        let origin = origin.map(origin_to_wire);
        let from_upstream = reserve_copy == ReserveCopy::ByPrimaryOwner;
        let view = self.view();
        let admit_locally = |why: &str| {
            if let (true, Some(reserve)) = (from_upstream, &self.reserve) {
                tracing::trace!(%key, why, "writing the reserve copy here");
                reserve.admit(key, &entry);
            }
        };
        if !self.has_quorum(&view) {
            self.metrics.cluster.skipped_below_quorum.inc();
            self.metrics.cluster.writes.inc();
            admit_locally("the cluster is below member_count_quorum");
            return;
        }
        let replicas = view.replicas(&key, self.settings.replica_count as usize);
        let mut acks = replicas.iter().filter(|m| m.is_local()).count();
        if replicas.first().is_none_or(|primary| primary.is_local()) {
            admit_locally("this member is the primary owner");
        }
        let message = entry_to_wire(&key, &entry);
        let mut calls: FuturesUnordered<_> = replicas
            .iter()
            .enumerate()
            .filter_map(|(rank, member)| Some((rank, self.writes_to(member)?)))
            .map(|(rank, writes)| {
                let write = writes.write(SetRequest {
                    entry: Some(message.clone()),
                    admit_to_reserve: from_upstream && rank == 0,
                    origin: origin.clone(),
                });
                async move { (rank, write.await) }
            })
            .collect();
        while let Some((rank, ok)) = calls.next().await {
            if ok {
                acks += 1;
            } else {
                self.metrics.cluster.replica_write_failures.inc();
                if rank == 0 {
                    // The primary owner did not take it: keep the reserve copy anyway.
                    admit_locally("the primary owner did not acknowledge");
                }
            }
        }
        let needed = self.settings.write_quorum as usize;
        self.metrics.cluster.writes.inc();
        if acks < needed {
            self.metrics.cluster.write_quorum_failures.inc();
            tracing::warn!(
                %key,
                acks,
                needed,
                replicas = replicas.len(),
                "cluster write missed write_quorum; the answer is served but may be missing from the cluster"
            );
        }
    }

    /// The write queue to `member`; `None` for this process itself.
    fn writes_to(&self, member: &Member) -> Option<Arc<ReplicaWrites>> {
        let client = member.client.as_ref()?;
        let mut queues = self
            .replica_writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let writes = queues.entry(Arc::clone(&member.id)).or_insert_with(|| {
            // A write waits in the queue, then for its call: twice the
            // call's own limit (at least 2 s, as answers may be large).
            let timeout = self
                .timings
                .call_timeout
                .max(std::time::Duration::from_secs(2));
            Arc::new(ReplicaWrites::new(
                client.clone(),
                timeout,
                Arc::clone(&self.metrics),
            ))
        });
        Some(Arc::clone(writes))
    }

    /// Stores an entry from another process unless the entry checks refuse
    /// it or a version as new is held.
    pub(super) fn keep_newer(&self, key: CacheKey, entry: CachedResponse) -> Kept {
        let Some(entry) = self.admit(entry) else {
            return Kept::Refused;
        };
        self.observe(entry.version);
        if let Some(held) = self.memory.lookup(&key) {
            if held.version >= entry.version {
                return Kept::HeldAlready(held);
            }
        }
        let entry = Arc::new(entry);
        self.memory.insert(key, Arc::clone(&entry));
        Kept::Stored(entry)
    }

    /// Runs `call` against every other live member at once, counting each
    /// outcome as `op`; the answers of those that replied.
    async fn on_every_member<T, F, Fut>(&self, op: PeerCall, call: F) -> (Vec<T>, usize)
    where
        F: Fn(PeerClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let view = self.view();
        let calls = view
            .members
            .iter()
            .filter_map(|m| m.client.clone())
            .map(|client| tokio::time::timeout(self.timings.call_timeout, call(client)));
        let mut replies = Vec::new();
        let mut failed = 0;
        for result in futures::future::join_all(calls).await {
            self.metrics
                .cluster
                .count_call(op, matches!(result, Ok(Ok(_))));
            match result {
                Ok(Ok(reply)) => replies.push(reply.into_inner()),
                _ => failed += 1,
            }
        }
        (replies, failed)
    }

    /// Removes `key` from every live member (members keep copies for their
    /// own clients too). True if any member held it.
    pub async fn delete_everywhere(&self, key: &CacheKey) -> bool {
        let (replies, _) = self
            .on_every_member(PeerCall::Delete, |mut client| async move {
                let request = DeleteRequest {
                    key: key.0.to_vec(),
                };
                client.delete(request).await
            })
            .await;
        replies.iter().any(|r| r.removed)
    }

    /// Removes every entry from every live member; the number of members
    /// that did not confirm.
    pub async fn clear_everywhere(&self) -> usize {
        let (_, failed) = self
            .on_every_member(PeerCall::Clear, |mut client| async move {
                client.clear(ClearRequest {}).await
            })
            .await;
        failed
    }

    /// Removes the entries `filter` selects from every live member: how
    /// many they removed, and how many members did not confirm.
    pub async fn purge_everywhere(&self, filter: &EntryFilter) -> (u64, usize) {
        let query = filter.to_query();
        let (replies, failed) = self
            .on_every_member(PeerCall::Purge, |mut client| {
                let request = PurgeRequest {
                    filter: query.clone(),
                };
                async move { client.purge(request).await }
            })
            .await;
        (replies.iter().map(|reply| reply.removed).sum(), failed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderMap;

    use super::*;
    use crate::version::Clock;

    fn copy(body: &str, version: Version) -> CachedResponse {
        let mut entry =
            CachedResponse::new(&HeaderMap::new(), body.as_bytes(), Duration::from_secs(60));
        entry.version = version;
        entry
    }

    /// Every order in which the replicas may answer.
    fn orders<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in orders(&rest) {
                tail.insert(0, first.clone());
                all.push(tail);
            }
        }
        all
    }

    fn pick(answers: &[(&'static str, Version)]) -> String {
        let mut freshest = None;
        for &(body, version) in answers {
            keep_freshest(&mut freshest, copy(body, version), |e| e.version);
        }
        let body = freshest.expect("a copy was kept").body();
        String::from_utf8(body.to_vec()).expect("utf-8 body")
    }

    #[test]
    fn the_freshest_copy_wins_whatever_order_the_replicas_answer_in() {
        let version = |wall_ms, counter, origin| Version {
            wall_ms,
            counter,
            origin,
        };
        let answers = [
            ("v1", version(1_000, 0, 9)),
            ("v2", version(1_000, 4, 1)),
            ("v3", version(1_001, 0, 1)),
        ];
        for order in orders(&answers) {
            assert_eq!(pick(&order), "v3", "{order:?}");
        }
        // Same wall time and counter: the writer's id breaks the tie.
        let tie = [("low", version(5, 1, 1)), ("high", version(5, 1, 2))];
        for order in orders(&tie) {
            assert_eq!(pick(&order), "high", "{order:?}");
        }
        // Identical versions: the first answer stays.
        let same = version(5, 1, 1);
        assert_eq!(pick(&[("first", same), ("second", same)]), "first");
    }

    #[test]
    fn a_refresh_by_a_member_whose_clock_lags_still_wins() {
        // A minute apart, within the allowed skew (here two minutes).
        let ahead = Clock::new(1, Duration::from_secs(120));
        let behind = Clock::new(2, Duration::from_secs(120));
        // A version from a member whose wall clock runs a minute fast.
        let fast_wall = ahead.tick().wall_ms + 60_000;
        let old = Version {
            wall_ms: fast_wall,
            counter: 0,
            origin: ahead.origin(),
        };
        // The lagging member saw that copy before refreshing the key.
        behind.observe(old);
        let refreshed = behind.tick();
        assert!(refreshed.wall_ms >= fast_wall, "{refreshed:?}");
        for order in orders(&[("stale", old), ("refreshed", refreshed)]) {
            assert_eq!(pick(&order), "refreshed", "{order:?}");
        }
    }
}
