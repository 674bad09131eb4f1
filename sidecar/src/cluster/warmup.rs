//! Warm start and scans: a member that starts empty (a new pod, a restart,
//! a scale-up) pulls the entries it owns from the other members and from
//! the reserve before `/readyz` says ready, instead of waiting for their
//! repair passes to push them. Both sides stream: the serving member sends
//! batches from a snapshot of its keys ([`Cluster::scan_replies`]), the
//! pulling member stores each batch as it arrives, at most `repair_rate`
//! entries a second, within `cache.ha.warmup_timeout`.
//!
//! The same `Scan` call, without placement, is how an export at a member
//! reads the whole cluster ([`Cluster::scan_member`]).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::placement;
use super::proto::{ScanReply, ScanRequest};
use super::replication::{Kept, OwnerShare};
use super::security::PeerClient;
use super::wire::{entry_from_wire, entry_to_wire};
use super::{Cluster, View};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::metrics::cluster::PeerCall;

/// Most entries in one scan batch.
const SCAN_BATCH_ENTRIES: usize = 256;

/// A batch is sent once its bodies reach this many bytes, well under the
/// port's message limit.
const SCAN_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Most members a scan may place keys over.
const MAX_SCAN_MEMBERS: usize = 1024;

/// The stream of batches a `Scan` answers with.
pub(crate) type ScanReplies = Pin<Box<dyn Stream<Item = Result<ScanReply, Status>> + Send>>;

/// Which keys a scan sends: all, or those an owner is a replica of under a
/// given set of members.
struct Ownership {
    seeds: Vec<u64>,
    owner: usize,
    count: usize,
}

impl Ownership {
    /// Reads the placement part of a request; `None` when it names no
    /// members (every key is sent).
    fn of(request: &ScanRequest) -> Result<Option<Self>, Status> {
        if request.members.is_empty() {
            return Ok(None);
        }
        if request.members.len() > MAX_SCAN_MEMBERS {
            return Err(Status::invalid_argument(format!(
                "a scan may place keys over at most {MAX_SCAN_MEMBERS} members"
            )));
        }
        let owner = request
            .members
            .iter()
            .position(|m| *m == request.owner)
            .ok_or_else(|| Status::invalid_argument("a scan's owner must be one of its members"))?;
        if request.replica_count == 0 {
            return Err(Status::invalid_argument(
                "a scan with members needs a replica_count of at least 1",
            ));
        }
        Ok(Some(Self {
            seeds: request
                .members
                .iter()
                .map(|m| placement::seed_of(m))
                .collect(),
            owner,
            count: request.replica_count as usize,
        }))
    }

    fn owns(&self, key: &CacheKey) -> bool {
        placement::rank(&self.seeds, key, self.count).contains(&self.owner)
    }
}

/// How a warm start went.
#[derive(Debug, Default, Clone, Copy)]
struct Pulled {
    from_members: u64,
    from_reserve: u64,
    /// Members that could not be scanned (they are left to repair).
    members_failed: u64,
}

impl Cluster {
    /// Answers a `Scan`: the fresh entries of this member's memory that
    /// `request` selects, in batches, from a snapshot taken now (the
    /// entries themselves are shared, not copied, until encoded).
    pub(crate) fn scan_replies(&self, request: &ScanRequest) -> Result<ScanReplies, Status> {
        let filter = EntryFilter::from_query(&request.filter)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let ownership = Ownership::of(request)?;
        let mut selected = self
            .memory
            .entries()
            .into_iter()
            .filter(move |(key, entry)| {
                entry.is_fresh()
                    && filter.matches(entry)
                    && ownership.as_ref().is_none_or(|o| o.owns(key))
            })
            .peekable();
        let batches = futures::stream::iter(std::iter::from_fn(move || {
            selected.peek()?;
            let mut entries = Vec::new();
            let mut bytes = 0;
            while entries.len() < SCAN_BATCH_ENTRIES && bytes < SCAN_BATCH_BYTES {
                let Some((key, entry)) = selected.next() else {
                    break;
                };
                bytes += entry.body_len();
                entries.push(entry_to_wire(&key, &entry));
            }
            Some(Ok(ScanReply { entries }))
        }));
        Ok(Box::pin(batches))
    }

    /// Whether this member is still pulling what it owns.
    pub fn is_warming(&self) -> bool {
        self.warming.load(Ordering::Acquire)
    }

    /// Pulls the entries this member owns from the other members, then
    /// from the reserve, before it counts as ready (see the module). Runs
    /// once, at start.
    pub(super) async fn warm_up(self: Arc<Self>) {
        let timeout = self.settings.warmup_timeout;
        if timeout.is_zero() {
            return;
        }
        self.warming.store(true, Ordering::Release);
        self.metrics.cluster.warming.set(1);
        let started = Instant::now();
        let mut pulled = Pulled::default();
        let pulling = self.pull_owned(&mut pulled);
        let finished = tokio::time::timeout(timeout, pulling).await.is_ok();
        self.warming.store(false, Ordering::Release);
        self.metrics.cluster.warming.set(0);
        self.hold_share_if_whole(finished, &pulled);
        if finished {
            tracing::info!(
                from_members = pulled.from_members,
                from_reserve = pulled.from_reserve,
                members_failed = pulled.members_failed,
                took = ?started.elapsed(),
                "warm start done: pulled the entries this member owns"
            );
        } else {
            tracing::warn!(
                from_members = pulled.from_members,
                from_reserve = pulled.from_reserve,
                ?timeout,
                "warm start ran out of cache.ha.warmup_timeout; ready anyway, repair copies the rest (raise warmup_timeout or repair_rate to wait for all of it)"
            );
        }
    }

    /// Whether this member holds its share of the cluster's copies: of
    /// every key it owns first, every copy any member holds.
    pub(crate) fn own_share(&self) -> OwnerShare {
        if self.holds_its_share.load(Ordering::Acquire) {
            OwnerShare::Whole
        } else {
            OwnerShare::InDoubt
        }
    }

    /// Stops counting on holding this member's share: a member went down
    /// in its view, or this process stood still for longer than it takes
    /// the others to count it down. Either way the others may have written
    /// keys it owns around it, so its misses of them ask the other
    /// replicas again until [`Cluster::pull_share_again`] has pulled them.
    pub(crate) fn doubt_its_share(&self, why: &'static str) {
        self.share_in_doubt.store(true, Ordering::Release);
        // The repair loop pulls once views settled.
        self.changed.notify_one();
        if self.holds_its_share.swap(false, Ordering::AcqRel) {
            self.metrics.cluster.holds_its_share.set(0);
            tracing::info!(
                why,
                "this member may lack answers to keys it owns; its misses of them ask the other replicas until it pulled them again"
            );
        }
    }

    /// After [`Cluster::doubt_its_share`], pulls the entries this member
    /// owns from the other members once it sees every peer it lists (one
    /// it cannot reach may hold writes that went around it), and counts on
    /// holding its share again if every member could be read. Does
    /// nothing without a warm start (`cache.ha.warmup_timeout` 0), which
    /// never counts on it.
    pub(super) async fn pull_share_again(&self) {
        if self.settings.warmup_timeout.is_zero()
            || self.is_warming()
            || !self.share_in_doubt.load(Ordering::Acquire)
        {
            return;
        }
        let view = self.view();
        if !self.sees_every_peer(&view) {
            return;
        }
        // Cleared first: a doubt raised during the pull stands.
        self.share_in_doubt.store(false, Ordering::Release);
        let mut pulled = Pulled::default();
        let mut pace = Pace::new(self.settings.repair_rate);
        let pulling = self.pull_owned_from_members(&view, &mut pace, &mut pulled);
        let finished = tokio::time::timeout(self.settings.warmup_timeout, pulling)
            .await
            .is_ok();
        if self.hold_share_if_whole(finished, &pulled) {
            tracing::info!(
                from_members = pulled.from_members,
                "pulled the entries this member owns again; its misses of them ask no other member"
            );
        } else {
            self.share_in_doubt.store(true, Ordering::Release);
            tracing::info!(
                from_members = pulled.from_members,
                members_failed = pulled.members_failed,
                "could not pull every entry this member owns; tries again at the next repair pass"
            );
        }
    }

    /// Counts on holding this member's share after a pull that `finished`
    /// having read every member, unless a doubt was raised meanwhile (the
    /// pull that follows it settles that one); true when it does.
    fn hold_share_if_whole(&self, finished: bool, pulled: &Pulled) -> bool {
        let whole =
            finished && pulled.members_failed == 0 && !self.share_in_doubt.load(Ordering::Acquire);
        if whole {
            self.holds_its_share.store(true, Ordering::Release);
            self.metrics.cluster.holds_its_share.set(1);
        }
        whole
    }

    /// Whether `view` holds every peer `cache.ha.peers` lists.
    fn sees_every_peer(&self, view: &View) -> bool {
        let me = self.self_id.as_deref().unwrap_or_default();
        let expected = self.settings.peers.iter().filter(|p| *p != me).count() + 1;
        view.members.len() >= expected
    }

    async fn pull_owned(&self, pulled: &mut Pulled) {
        let view = self.wait_for_peers().await;
        let mut pace = Pace::new(self.settings.repair_rate);
        self.pull_owned_from_members(&view, &mut pace, pulled).await;
        self.pull_owned_from_reserve(&view, &mut pace, pulled).await;
    }

    /// Streams from every other member of `view` the entries this member
    /// is a replica of.
    async fn pull_owned_from_members(&self, view: &View, pace: &mut Pace, pulled: &mut Pulled) {
        let Some(me) = self.self_id.clone() else {
            return;
        };
        let members: Vec<String> = view.members.iter().map(|m| m.id.to_string()).collect();
        let count = self.settings.replica_count;
        for member in &view.members {
            let Some(client) = member.client.clone() else {
                continue;
            };
            let request = ScanRequest {
                filter: String::new(),
                members: members.clone(),
                owner: me.to_string(),
                replica_count: count,
            };
            match self.pull_from_member(client, request, pace).await {
                Ok(stored) => pulled.from_members += stored,
                Err((stored, status)) => {
                    pulled.from_members += stored;
                    pulled.members_failed += 1;
                    tracing::warn!(member = %member.id, %status, "could not pull this member's share from a member; repair copies what it lacks later");
                }
            }
        }
    }

    /// Reads from the reserve the entries this member is a replica of and
    /// does not hold.
    async fn pull_owned_from_reserve(&self, view: &View, pace: &mut Pace, pulled: &mut Pulled) {
        if let Some(reserve) = self.reserve.clone() {
            let seeds: Vec<u64> = view.members.iter().map(|m| m.seed).collect();
            let own = view.members.iter().position(|m| m.is_local());
            let count = self.settings.replica_count as usize;
            let memory = self.memory.clone();
            let wanted = move |key: &CacheKey| {
                own.is_some_and(|own| placement::rank(&seeds, key, count).contains(&own))
                    && memory.lookup(key).is_none()
            };
            let (found_tx, mut found) = mpsc::channel::<(CacheKey, CachedResponse)>(64);
            let scan = tokio::spawn(async move {
                reserve
                    .export_matching(&EntryFilter::default(), wanted, found_tx)
                    .await
            });
            while let Some((key, entry)) = found.recv().await {
                self.memory.insert(key, Arc::new(entry));
                pulled.from_reserve += 1;
                self.metrics.cluster.warmed_from_reserve.inc();
                pace.one_more().await;
            }
            match scan.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%err, "warm start could not read the reserve; its entries are read on demand");
                }
                Err(err) => tracing::warn!(%err, "warm start's reserve scan stopped"),
            }
        }
    }

    /// Streams one member's entries that this member owns into memory.
    /// Returns how many were stored, with the error that ended it early.
    async fn pull_from_member(
        &self,
        client: PeerClient,
        request: ScanRequest,
        pace: &mut Pace,
    ) -> Result<u64, (u64, Status)> {
        let mut stored = 0;
        let result = async {
            let mut entries = scanned(client, request).await?;
            while let Some((key, entry)) = entries.next().await.transpose()? {
                if matches!(self.keep_newer(key, entry), Kept::Stored(_)) {
                    stored += 1;
                    self.metrics.cluster.warmed_from_members.inc();
                }
                pace.one_more().await;
            }
            Ok(())
        }
        .await;
        self.metrics
            .cluster
            .count_call(PeerCall::Scan, result.is_ok());
        result.map(|()| stored).map_err(|status| (stored, status))
    }

    /// Waits until the probes have found every configured peer, at most one
    /// failure-detection window: peers that have not answered by then are
    /// not live (a member starting first does not wait longer for members
    /// that do not exist yet). Not after the first probe round: a new
    /// pod's peers' names may take a moment to resolve, and a member that
    /// gave up on them then would pull nothing.
    async fn wait_for_peers(&self) -> Arc<View> {
        let (view, _) = self.wait_for_view(|view| self.sees_every_peer(view)).await;
        view
    }

    /// Reads every fresh entry `filter` selects from the memory of every
    /// other live member, one member after another, sending each to `to`
    /// as it arrives: an export at a member covers the whole cluster.
    /// Keys held by several members are sent once per holder; the
    /// receiver keeps the first. A member that fails ends the scan with
    /// an error naming it, so an export never looks whole without it.
    pub(crate) async fn scan_other_members(
        &self,
        filter: &EntryFilter,
        to: mpsc::Sender<(CacheKey, CachedResponse)>,
    ) -> Result<(), String> {
        let view = self.view();
        for member in &view.members {
            let Some(client) = member.client.clone() else {
                continue;
            };
            if let Err(status) = self.scan_member(client, filter, &to).await {
                return Err(format!(
                    "member {} could not be read ({}); export again once it is back or gone",
                    member.id,
                    status.message()
                ));
            }
        }
        Ok(())
    }

    async fn scan_member(
        &self,
        client: PeerClient,
        filter: &EntryFilter,
        to: &mpsc::Sender<(CacheKey, CachedResponse)>,
    ) -> Result<(), Status> {
        let request = ScanRequest {
            filter: filter.to_query(),
            ..ScanRequest::default()
        };
        let result = async {
            let mut entries = scanned(client, request).await?;
            while let Some(found) = entries.next().await.transpose()? {
                if to.send(found).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        self.metrics
            .cluster
            .count_call(PeerCall::Scan, result.is_ok());
        result
    }
}

/// The entries a member's `Scan` answer holds, one by one as its batches
/// arrive; malformed or expired ones are skipped.
async fn scanned(
    mut client: PeerClient,
    request: ScanRequest,
) -> Result<impl Stream<Item = Result<(CacheKey, CachedResponse), Status>>, Status> {
    let batches = client.scan(request).await?.into_inner();
    Ok(batches
        .map_ok(|batch| {
            futures::stream::iter(
                batch
                    .entries
                    .into_iter()
                    .filter_map(|wire| entry_from_wire(&wire))
                    .map(Ok),
            )
        })
        .try_flatten())
}

/// Keeps a pull or a repair pass to `rate` entries a second, measured
/// from its start.
pub(super) struct Pace {
    started: Instant,
    rate: f64,
    done: u64,
}

impl Pace {
    pub(super) fn new(rate: u32) -> Self {
        Self {
            started: Instant::now(),
            rate: f64::from(rate.max(1)),
            done: 0,
        }
    }

    /// Counts one entry and waits if the work is ahead of its rate.
    async fn one_more(&mut self) {
        self.add(1).await;
    }

    /// Counts `entries` and waits if the work is ahead of its rate.
    pub(super) async fn add(&mut self, entries: u64) {
        self.done += entries;
        let due = Duration::from_secs_f64(self.done as f64 / self.rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            // Sleeping per entry would cost more than the entries; wait in
            // steps of at least 10 ms.
            if wait >= Duration::from_millis(10) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}
