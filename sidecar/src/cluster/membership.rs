//! Who is in the cluster. Every configured address is probed with `Ping`
//! every `probe_interval`; a member that misses `failures_to_down` probes
//! in a row is down, and one that answers again rejoins. Members also
//! learn of each other from probe replies, so a client given one Service
//! name finds every member. Names are resolved again on every reconnect.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::future::join_all;

use super::placement;
use super::proto::PingRequest;
use super::roster::{self, MemberState, MemberStatus};
use super::security::{Connector, PeerClient};
use super::wire::{version_from_wire, version_to_wire};
use super::{Cluster, ClusterError};
use crate::key::CacheKey;

/// A live member as placement sees it.
#[derive(Clone)]
pub struct Member {
    /// Its advertised address.
    pub id: Arc<str>,
    /// Placement seed derived from the id.
    pub seed: u64,
    /// How to call it; `None` for this process itself.
    pub client: Option<PeerClient>,
}

impl Member {
    /// Whether this member is the process itself.
    pub fn is_local(&self) -> bool {
        self.client.is_none()
    }
}

/// The live members, sorted by id.
#[derive(Clone, Default)]
pub struct View {
    /// Live members that are not leaving.
    pub members: Vec<Member>,
    seeds: Vec<u64>,
}

impl View {
    fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        let seeds = members.iter().map(|m| m.seed).collect();
        Self { members, seeds }
    }

    /// The members that hold `key`, best first.
    pub fn replicas(&self, key: &CacheKey, count: usize) -> Vec<&Member> {
        placement::rank(&self.seeds, key, count)
            .into_iter()
            .map(|i| &self.members[i])
            .collect()
    }

    /// The ids, for comparing views.
    fn ids(&self) -> Vec<Arc<str>> {
        self.members.iter().map(|m| Arc::clone(&m.id)).collect()
    }
}

/// One address being probed.
struct Target {
    address: String,
    client: PeerClient,
    /// Learned from a probe reply rather than configured.
    discovered: bool,
    /// The id it answered with.
    id: Option<Arc<str>>,
    failures: u32,
    live: bool,
    leaving: bool,
    /// It answered with this process's own id.
    is_self: bool,
    last_answer: Option<Instant>,
}

/// The membership state.
pub struct Membership {
    self_id: Option<Arc<str>>,
    /// For a member: the only ids that may be members (`cache.ha.peers`
    /// and itself). `None` for a client, which learns members from the
    /// members it is configured with.
    allowed: Option<Vec<String>>,
    connector: Connector,
    targets: Mutex<Vec<Target>>,
    view: RwLock<Arc<View>>,
    leaving: std::sync::atomic::AtomicBool,
}

impl Membership {
    /// Starts with every configured address unprobed (so not yet live).
    /// A member (`self_id` set) admits only the ids in `addresses` (its
    /// `cache.ha.peers`) and itself.
    pub fn new(
        self_id: Option<Arc<str>>,
        addresses: &[String],
        connector: Connector,
    ) -> Result<Self, ClusterError> {
        let allowed = self_id.as_ref().map(|id| {
            let mut allowed = addresses.to_vec();
            allowed.push(id.to_string());
            allowed
        });
        let mut targets = Vec::new();
        for address in addresses {
            targets.push(Target::new(
                address.clone(),
                connector.client(address)?,
                false,
            ));
        }
        let membership = Self {
            self_id,
            allowed,
            connector,
            targets: Mutex::new(targets),
            view: RwLock::new(Arc::new(View::default())),
            leaving: false.into(),
        };
        membership.refresh_view();
        Ok(membership)
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The live members with or without this one: what handoff compares.
    pub fn view_with_self(&self, include_self: bool) -> View {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        self.build_view(&targets, include_self)
    }

    fn build_view(&self, targets: &[Target], include_self: bool) -> View {
        let mut members: Vec<Member> = Vec::new();
        // A member reached both through a Service name and directly shows
        // up twice; prefer the direct address.
        let mut live: Vec<&Target> = targets
            .iter()
            .filter(|t| t.live && !t.leaving && !t.is_self && t.id.is_some())
            .filter(|t| t.id.as_deref().is_some_and(|id| self.may_be_member(id)))
            .collect();
        live.sort_by_key(|t| t.id.as_deref() != Some(t.address.as_str()));
        for target in live {
            let Some(id) = &target.id else { continue };
            if members.iter().any(|m| &m.id == id) {
                continue;
            }
            members.push(Member {
                id: Arc::clone(id),
                seed: placement::seed_of(id),
                client: Some(target.client.clone()),
            });
        }
        if let (true, Some(id)) = (include_self, &self.self_id) {
            members.push(Member {
                id: Arc::clone(id),
                seed: placement::seed_of(id),
                client: None,
            });
        }
        View::new(members)
    }

    /// Whether an address was learned (from another member's reply) but
    /// not probed yet: the view may still be missing a member.
    pub fn has_unprobed_targets(&self) -> bool {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets
            .iter()
            .any(|t| !t.live && t.failures == 0 && t.last_answer.is_none())
    }

    /// Takes this member out of its own view: it is leaving.
    pub fn mark_leaving(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        self.refresh_view();
    }

    /// Rebuilds the view; true when the set of live members changed.
    pub fn refresh_view(&self) -> bool {
        let include_self = !self.leaving.load(std::sync::atomic::Ordering::Acquire);
        let view = {
            let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            self.build_view(&targets, include_self)
        };
        let mut current = self.view.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.ids() != view.ids();
        *current = Arc::new(view);
        changed
    }

    /// Addresses of members this one sees live (for probe replies).
    pub fn live_ids(&self) -> Vec<String> {
        self.view()
            .members
            .iter()
            .map(|m| m.id.to_string())
            .collect()
    }

    /// Whether `id` may be in the view: for a member, only what
    /// `cache.ha.peers` lists (and itself); for a client, any id its
    /// members report.
    pub fn may_be_member(&self, id: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| a == id))
    }

    /// Starts probing `address` if nothing probes it yet (a member heard of
    /// from a probe reply or a caller). False when a member was told of an
    /// address its `cache.ha.peers` does not list: such an address is
    /// never probed, so it can never join.
    pub fn learn(&self, address: &str) -> bool {
        if address.is_empty() || self.self_id.as_deref() == Some(address) {
            return true;
        }
        if !self.may_be_member(address) {
            tracing::debug!(
                address,
                "not learning an address that cache.ha.peers does not list"
            );
            return false;
        }
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let known = targets
            .iter()
            .any(|t| t.address == address || t.id.as_deref() == Some(address));
        if known {
            return true;
        }
        match self.connector.client(address) {
            Ok(client) => {
                tracing::debug!(address, "learned of a member");
                targets.push(Target::new(address.to_string(), client, true));
            }
            Err(err) => {
                tracing::debug!(address, %err, "ignoring a member address that cannot be used")
            }
        }
        true
    }

    /// Every member known with its state, sorted by id: this process
    /// (a member) and every address probed, one line per id (a member
    /// reached both through a Service name and directly shows once).
    pub fn statuses(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        let mut statuses: Vec<(bool, MemberStatus)> = {
            let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            targets
                .iter()
                .filter(|t| !t.is_self)
                .filter(|t| t.id.as_deref().is_none_or(|id| self.may_be_member(id)))
                .map(|t| {
                    let direct = t.id.as_deref() == Some(t.address.as_str());
                    let status = MemberStatus {
                        id: t.id.as_deref().unwrap_or(&t.address).to_string(),
                        state: MemberState::of(t.live, t.leaving, t.failures),
                        this_process: false,
                        last_answer_ms: t.last_answer.map(|at| {
                            u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX)
                        }),
                    };
                    (direct, status)
                })
                .collect()
        };
        if let Some(id) = &self.self_id {
            let leaving = self.leaving.load(std::sync::atomic::Ordering::Acquire);
            let status = MemberStatus {
                id: id.to_string(),
                state: MemberState::of(true, leaving, 0),
                this_process: true,
                last_answer_ms: None,
            };
            statuses.push((true, status));
        }
        roster::one_per_id(statuses)
    }

    fn snapshot(&self) -> Vec<(usize, String, PeerClient)> {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_self)
            .map(|(i, t)| (i, t.address.clone(), t.client.clone()))
            .collect()
    }
}

impl Target {
    fn new(address: String, client: PeerClient, discovered: bool) -> Self {
        Self {
            address,
            client,
            discovered,
            id: None,
            failures: 0,
            live: false,
            leaving: false,
            is_self: false,
            last_answer: None,
        }
    }
}

/// What one probe found.
struct Probe {
    id: String,
    leaving: bool,
    members: Vec<String>,
}

/// Probes every address each `probe_interval` until the process stops.
pub async fn probe_loop(cluster: Arc<Cluster>) {
    let mut stopping = cluster.stopping();
    let timings = cluster.timings;
    let mut interval = tokio::time::interval(timings.probe_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Past this long without a round, the other members have stopped
    // waiting for this one's answers and count it down.
    let counted_down_after = timings.probe_interval * timings.failures_to_down;
    let mut last_round = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopping.changed() => return,
        }
        if last_round.elapsed() > counted_down_after {
            cluster.doubt_its_share(
                "this process stood still for longer than it takes the other members to count it down",
            );
        }
        probe_round(&cluster).await;
        last_round = Instant::now();
    }
}

async fn probe_round(cluster: &Cluster) {
    let membership = &cluster.membership;
    let timings = cluster.timings;
    let from = cluster.self_id.as_deref().unwrap_or_default().to_string();
    let probes = membership
        .snapshot()
        .into_iter()
        .map(|(index, address, mut client)| {
            let request = PingRequest {
                from: from.clone(),
                clock: Some(version_to_wire(cluster.clock.tick())),
            };
            async move {
                let answer =
                    tokio::time::timeout(timings.probe_timeout, client.ping(request)).await;
                let probe = match answer {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        cluster.observe(version_from_wire(reply.clock.as_ref()));
                        Some(Probe {
                            id: reply.id,
                            leaving: reply.leaving,
                            members: reply.members,
                        })
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(%address, %status, "probe refused");
                        None
                    }
                    Err(_) => None,
                };
                (index, address, probe)
            }
        });
    let results = join_all(probes).await;
    let mut learned = Vec::new();
    let mut lost_a_member = false;
    {
        let mut targets = membership.targets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for (index, address, probe) in results {
            let Some(target) = targets.get_mut(index).filter(|t| t.address == address) else {
                continue;
            };
            match probe {
                Some(probe) => {
                    if !target.live {
                        tracing::info!(member = %probe.id, %address, "member is up");
                    }
                    target.is_self = membership.self_id.as_deref() == Some(probe.id.as_str());
                    target.id = Some(probe.id.into());
                    target.failures = 0;
                    target.live = true;
                    target.leaving = probe.leaving;
                    target.last_answer = Some(now);
                    learned.extend(probe.members);
                }
                None => {
                    target.failures = target.failures.saturating_add(1);
                    if target.live && target.failures >= timings.failures_to_down {
                        target.live = false;
                        lost_a_member = true;
                        tracing::warn!(
                            member = target.id.as_deref().unwrap_or(&address),
                            failures = target.failures,
                            "member is down: it missed its probes"
                        );
                    }
                }
            }
        }
        // Forget discovered members that stayed down for a long time.
        let forget_after = timings.probe_interval * timings.failures_to_down * 20;
        targets.retain(|t| {
            !t.discovered
                || t.live
                || t.last_answer
                    .is_some_and(|at| now.duration_since(at) < forget_after)
        });
    }
    if lost_a_member {
        // This process cannot tell a member that failed from its own side
        // of a partition, where the others write its keys elsewhere.
        cluster.doubt_its_share("a member stopped answering its probes");
    }
    for address in learned {
        if !membership.learn(&address) {
            cluster
                .metrics
                .cluster
                .count_refusal(crate::metrics::ClusterRefusal::NotAPeer);
        }
    }
    let changed = membership.refresh_view();
    let view = membership.view();
    let metrics = &cluster.metrics.cluster;
    metrics
        .members
        .set(i64::try_from(view.members.len()).unwrap_or(i64::MAX));
    metrics.quorum.set(i64::from(cluster.has_quorum(&view)));
    if changed {
        metrics.membership_changes.inc();
        tracing::info!(
            members = ?view.members.iter().map(|m| m.id.as_ref()).collect::<Vec<_>>(),
            "cluster membership changed"
        );
        cluster.changed.notify_one();
    }
}
