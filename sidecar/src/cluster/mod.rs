//! The cache cluster (mode `ha`): members that share entries over gRPC.
//!
//! - [`membership`] probes the configured peers, re-resolving their names,
//!   and keeps the view of live members;
//! - [`placement`] gives each key its ordered replica set by rendezvous
//!   hashing over that view;
//! - [`replication`] reads from and writes to a key's replicas with quorums;
//! - [`flight`] makes one upstream call per question cluster-wide: misses
//!   wait on the key's primary owner, which lets one of them lead;
//! - [`roster`] describes the members and their state for `GET /members`;
//! - [`service`] answers other members and clients from this member's store;
//! - [`handoff`] passes entries to their new owners when a member leaves,
//!   and [`repair`] copies entries back to `replica_count` after changes;
//! - [`warmup`] fills a member that starts empty with the entries it owns
//!   before it is ready, and streams a member's entries for an export;
//! - [`security`] holds the shared token and mutual TLS;
//! - [`wire`] converts entries to and from protocol messages.
//!
//! A member's store is its memory tier: entries it owns as a replica live
//! beside those it keeps for its own clients.

pub mod channel;
pub mod flight;
pub mod handoff;
pub mod listener;
pub mod membership;
pub mod placement;
pub mod repair;
pub mod replication;
pub mod roster;
pub mod security;
pub mod service;
pub mod stream;
pub mod tier;
pub mod turn_io;
pub mod warmup;
pub mod wire;
pub mod writes;

/// Code generated from `proto/relaycache/cluster/v1/cluster.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("relaycache.cluster.v1");
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::{Environment, HaConfig};
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::tier::reserve::ReserveTier;
use crate::tier::MemoryTier;
use crate::version::Clock;

pub use membership::{Member, Membership, View};
pub use roster::{MemberState, MemberStatus, Role, Roster};
pub use tier::PeerTier;

/// Failure-detection and call timings for an `environment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Time between probes of each member.
    pub probe_interval: Duration,
    /// A probe unanswered for this long failed.
    pub probe_timeout: Duration,
    /// Consecutive failed probes before a member counts as down.
    pub failures_to_down: u32,
    /// Longest a read or write waits for one replica.
    pub call_timeout: Duration,
    /// Time between repair passes when nothing changed.
    pub repair_interval: Duration,
    /// Time to let views settle after a membership change before repairing.
    pub settle: Duration,
}

impl Timings {
    /// How long a member that never answers takes to count as down: the
    /// longest a starting process waits for the others.
    pub fn detection_window(self) -> Duration {
        self.probe_interval * self.failures_to_down + self.probe_timeout
    }

    /// The timings of `environment`.
    pub fn for_environment(environment: Environment) -> Self {
        let ms = Duration::from_millis;
        match environment {
            Environment::Local => Self {
                probe_interval: ms(200),
                probe_timeout: ms(200),
                failures_to_down: 3,
                call_timeout: ms(250),
                repair_interval: Duration::from_secs(10),
                settle: ms(600),
            },
            Environment::Lan => Self {
                probe_interval: ms(1000),
                probe_timeout: ms(1000),
                failures_to_down: 3,
                call_timeout: ms(500),
                repair_interval: Duration::from_secs(60),
                settle: ms(3000),
            },
            Environment::Wan => Self {
                probe_interval: ms(3000),
                probe_timeout: ms(3000),
                failures_to_down: 5,
                call_timeout: ms(2000),
                repair_interval: Duration::from_secs(300),
                settle: ms(10_000),
            },
        }
    }
}

/// The tenant and namespace of a client's request, as a member derives
/// them from its origin.
pub(crate) type OriginScope = (crate::key::Tenant, Option<Arc<str>>);

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The gRPC port could not be bound.
    #[error("cannot listen on cache.ha.bind_addr {addr}: {source}; pick a free port or stop what holds it")]
    Bind {
        /// The configured address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS files could not be read or used.
    #[error("cache.ha.tls: {0}")]
    Tls(String),
    /// A token cannot be sent as a header.
    #[error("cache.ha.{key} must be printable ASCII without line breaks")]
    Token {
        /// `token` or `client_token`.
        key: &'static str,
    },
    /// A member address could not be turned into an endpoint.
    #[error("cache.ha address {address:?} is not usable: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// Why.
        reason: String,
    },
}

/// One process's part in a cluster: a member (`embedded: true`) or a client.
pub struct Cluster {
    settings: HaConfig,
    timings: Timings,
    /// This member's id (its advertised address); `None` for a client.
    self_id: Option<Arc<str>>,
    clock: Clock,
    checks: EntryChecks,
    membership: Membership,
    memory: MemoryTier,
    reserve: Option<ReserveTier>,
    metrics: Arc<Metrics>,
    leaving: AtomicBool,
    /// True while a warm start pulls what this member owns.
    warming: AtomicBool,
    /// True once a warm start pulled everything this member owns from
    /// every member it saw: then a key this member is the primary owner of
    /// and does not hold is not in the cluster (see `Cluster::lookup`).
    holds_its_share: AtomicBool,
    /// Set when this member may have missed writes of its own keys (see
    /// `Cluster::doubt_its_share`): it pulls its share again, and until
    /// then does not count on holding it.
    share_in_doubt: AtomicBool,
    /// Wakes repair when the membership changed.
    changed: Notify,
    /// Flips to true when the process stops, ending background tasks.
    stopping: watch::Sender<bool>,
    /// The flights this process leads or waits on, and those others lead
    /// here.
    flight_table: flight::FlightTable,
    /// The replica writes on their way to each member, by member id.
    replica_writes: std::sync::Mutex<HashMap<Arc<str>, Arc<writes::ReplicaWrites>>>,
}

/// What every entry from another process must meet, as an answer from the
/// upstream does (`cache.max_ttl`, `cache.max_entry_bytes`), and how a
/// client's entry is tied to its request.
#[derive(Debug, Clone)]
pub struct EntryChecks {
    /// Derives the key of a client's request again (the cluster's key
    /// settings are the same everywhere).
    pub keys: crate::key::KeyBuilder,
    /// Longest TTL kept; longer ones are cut to it.
    pub max_ttl: std::time::Duration,
    /// Largest body kept; larger entries are refused.
    pub max_entry_bytes: u64,
}

impl Cluster {
    /// Builds the cluster state from validated settings. Nothing runs until
    /// [`Cluster::start`].
    pub fn new(
        settings: &HaConfig,
        checks: EntryChecks,
        memory: MemoryTier,
        reserve: Option<ReserveTier>,
        coalesce: &crate::config::CoalesceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ClusterError> {
        let timings = Timings::for_environment(settings.environment);
        let self_id: Option<Arc<str>> = settings
            .embedded
            .then(|| advertised_address(settings).into());
        let origin = self_id
            .as_deref()
            .map_or_else(|| std::process::id().into(), placement::seed_of);
        let connector = security::Connector::new(settings, timings)?;
        let targets = if settings.embedded {
            &settings.peers
        } else {
            &settings.addresses
        };
        let membership = Membership::new(self_id.clone(), targets, connector)?;
        let (stopping, _) = watch::channel(false);
        Ok(Arc::new(Self {
            settings: settings.clone(),
            timings,
            self_id,
            clock: Clock::new(origin, settings.max_clock_skew),
            checks,
            membership,
            memory,
            reserve,
            metrics,
            leaving: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            holds_its_share: AtomicBool::new(false),
            share_in_doubt: AtomicBool::new(false),
            changed: Notify::new(),
            stopping,
            flight_table: flight::FlightTable::new(
                Arc::default(),
                coalesce.wait_timeout,
                coalesce.max_waiters,
            ),
            replica_writes: std::sync::Mutex::default(),
        }))
    }

    /// Binds the gRPC port (members only) and starts probing and repair.
    /// Returns the address the port is bound to.
    pub async fn start(self: &Arc<Self>) -> Result<Option<std::net::SocketAddr>, ClusterError> {
        if self.settings.insecure {
            self.metrics.cluster.insecure.set(1);
            tracing::warn!(
                "cache.ha.insecure is true: anyone who reaches the cluster port may read, write and wipe this cache; set cache.ha.token and cache.ha.client_token outside a one-machine demo"
            );
        }
        let bound = if self.settings.embedded {
            Some(service::serve(Arc::clone(self)).await?)
        } else {
            None
        };
        tokio::spawn(membership::probe_loop(Arc::clone(self)));
        if self.settings.embedded {
            if !self.settings.warmup_timeout.is_zero() {
                // Set before start returns, so /readyz never says ready
                // before the pull began.
                self.warming.store(true, Ordering::Release);
            }
            tokio::spawn(Arc::clone(self).warm_up());
            tokio::spawn(repair::repair_loop(Arc::clone(self)));
        } else {
            self.wait_for_members().await;
        }
        tracing::info!(
            id = self.self_id.as_deref().unwrap_or("client"),
            grpc = ?bound,
            environment = ?self.settings.environment,
            replica_count = self.settings.replica_count,
            "cluster tier started"
        );
        Ok(bound)
    }

    /// A client waits, before it takes traffic, until the probes have found
    /// `member_count_quorum` members and probed every member they were
    /// told of, at most one failure-detection window (`probe_interval` ×
    /// `failures_to_down`, plus a probe's timeout). An injected sidecar's
    /// app starts once the sidecar listens, and its first questions would
    /// otherwise go to the upstream again only because the members had not
    /// been asked yet; and a client that knew one member of three (its
    /// Service address answers for one) would place its first answers on
    /// the wrong owners, where other clients do not look. Members do not
    /// wait here: their warm start does ([`warmup`]).
    async fn wait_for_members(&self) {
        let (view, found) = self
            .wait_for_view(|view| self.has_quorum(view) && !self.membership.has_unprobed_targets())
            .await;
        let live = view.members.len();
        if found {
            tracing::info!(live, "found the cluster's members");
        } else {
            tracing::warn!(
                live,
                member_count_quorum = self.settings.member_count_quorum,
                waited = ?self.timings.detection_window(),
                "the cluster's members did not answer in time; serving from memory, reserve and upstream until they do (check cache.ha.addresses and the members' health)"
            );
        }
    }

    /// Polls the view until `done` holds, at most one failure-detection
    /// window (a member that has not answered by then counts as down).
    /// Returns the last view, and whether `done` held.
    async fn wait_for_view(&self, done: impl Fn(&View) -> bool) -> (Arc<View>, bool) {
        let deadline = tokio::time::Instant::now() + self.timings.detection_window();
        let step = (self.timings.probe_interval / 10).max(Duration::from_millis(10));
        loop {
            let view = self.view();
            if done(&view) {
                return (view, true);
            }
            if tokio::time::Instant::now() >= deadline {
                return (view, false);
            }
            tokio::time::sleep(step).await;
        }
    }

    /// An entry that arrived from another process, checked as an answer
    /// from the upstream is: `None` (counted) when it is too large or its
    /// version or creation lies beyond the allowed clock skew; otherwise
    /// with its TTL capped and only storable headers kept.
    pub(crate) fn admit(
        &self,
        entry: crate::entry::CachedResponse,
    ) -> Option<crate::entry::CachedResponse> {
        use crate::metrics::ClusterRefusal;
        if entry.body_len() as u64 > self.checks.max_entry_bytes {
            self.metrics
                .cluster
                .count_refusal(ClusterRefusal::EntryTooLarge);
            return None;
        }
        let created_ms = wire::unix_ms(entry.created);
        if self.clock.is_from_the_future(entry.version) || self.clock.is_too_far_ahead(created_ms) {
            self.metrics
                .cluster
                .count_refusal(ClusterRefusal::EntryFromTheFuture);
            return None;
        }
        Some(entry.limited(self.checks.max_ttl))
    }

    /// Notes a version seen elsewhere; one beyond the allowed skew is
    /// ignored and counted.
    pub(crate) fn observe(&self, seen: crate::version::Version) {
        if !self.clock.observe(seen) {
            self.metrics
                .cluster
                .count_refusal(crate::metrics::ClusterRefusal::ClockSkew);
            tracing::debug!(
                ?seen,
                "ignored a clock further ahead than cache.ha.max_clock_skew"
            );
        }
    }

    /// Whether a client's entry for `key` answers the request `origin`
    /// describes: the key derived from it here must be `key`. Counted
    /// when not, a missing origin included.
    /// The tenant and namespace of the request `origin` describes.
    pub(crate) fn scope_of_origin(&self, origin: &crate::key::KeyOrigin) -> Option<OriginScope> {
        let tenant = self.checks.keys.tenant(&origin.headers).ok()?;
        Some((tenant, origin.namespace.as_deref().map(Arc::from)))
    }

    pub(crate) fn is_own_request(
        &self,
        key: &CacheKey,
        origin: Option<&crate::key::KeyOrigin>,
    ) -> bool {
        let derived = origin.and_then(|origin| self.checks.keys.key_of_origin(origin));
        let own = derived.as_ref() == Some(key);
        if !own {
            self.metrics
                .cluster
                .count_refusal(crate::metrics::ClusterRefusal::ForgedKey);
            tracing::warn!(%key, ?origin, "refused a client's entry whose key is not its request's key");
        }
        own
    }

    /// Whether this process is a client of the cluster, not a member.
    pub fn is_client(&self) -> bool {
        self.self_id.is_none()
    }

    /// The current view of live members.
    pub fn view(&self) -> Arc<View> {
        self.membership.view()
    }

    /// Whether enough members are live to use the cluster tier.
    pub fn has_quorum(&self, view: &View) -> bool {
        view.members.len() >= self.settings.member_count_quorum as usize
    }

    /// One line for `/readyz`: members seen and whether the tier is in use.
    pub fn readiness_detail(&self) -> String {
        let view = self.view();
        let live = view.members.len();
        let needed = self.settings.member_count_quorum;
        if self.is_warming() {
            let stats = &self.metrics.cluster;
            format!(
                "cluster: warming up ({live} live members): pulled {} entries from members and {} from the reserve so far; ready when done, or after cache.ha.warmup_timeout ({:?})\n",
                stats.warmed_from_members.get(),
                stats.warmed_from_reserve.get(),
                self.settings.warmup_timeout
            )
        } else if self.has_quorum(&view) {
            format!("cluster: ok ({live} live members, member_count_quorum {needed})\n")
        } else {
            format!(
                "cluster: below quorum ({live} live members, member_count_quorum {needed}); serving from memory, reserve and upstream only\n"
            )
        }
    }

    /// What `GET /members` shows: this process's role, the members it
    /// knows and their state.
    pub fn roster(&self) -> Roster {
        let view = self.view();
        Roster {
            role: if self.is_client() {
                Role::Client
            } else {
                Role::Member
            },
            live: view.members.len() as u64,
            quorum: self.has_quorum(&view),
            members: self.membership.statuses(),
        }
    }

    /// Whether this member announced that it is leaving.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Announces the leave: probes answer `leaving`, so other members stop
    /// placing keys here, and this member's own view drops itself.
    pub fn begin_leave(&self) {
        if self.settings.embedded && !self.leaving.swap(true, Ordering::AcqRel) {
            self.membership.mark_leaving();
            tracing::info!("leaving the cluster: other members stop placing keys here");
        }
    }

    /// Stops background tasks and the gRPC port.
    pub fn stop(&self) {
        let _ = self.stopping.send(true);
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }
}

/// The address other members reach this one at: `advertise_addr`, or the
/// host name with the port of `bind_addr`.
fn advertised_address(settings: &HaConfig) -> String {
    if !settings.advertise_addr.is_empty() {
        return settings.advertise_addr.clone();
    }
    let port = settings
        .bind_addr
        .rsplit_once(':')
        .map_or("3320", |(_, port)| port);
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a silent member stays live before it counts as down.
    fn down_after(t: Timings) -> Duration {
        t.probe_interval * t.failures_to_down
    }

    #[test]
    fn timings_match_docs_cluster_md_and_grow_from_local_to_lan_to_wan() {
        let [local, lan, wan] =
            [Environment::Local, Environment::Lan, Environment::Wan].map(Timings::for_environment);
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // The table in docs/cluster.md: probe interval and timeout, misses before
        // down, replica call timeout, repair interval.
        let table = |t: Timings| {
            (
                t.probe_interval,
                t.probe_timeout,
                t.failures_to_down,
                t.call_timeout,
                t.repair_interval,
            )
        };
        assert_eq!(table(local), (ms(200), ms(200), 3, ms(250), s(10)));
        assert_eq!(table(lan), (s(1), s(1), 3, ms(500), s(60)));
        assert_eq!(table(wan), (s(3), s(3), 5, s(2), s(300)));

        for (quick, slow) in [(local, lan), (lan, wan)] {
            assert!(quick.probe_interval < slow.probe_interval);
            assert!(quick.probe_timeout < slow.probe_timeout);
            assert!(quick.call_timeout < slow.call_timeout);
            assert!(down_after(quick) < down_after(slow));
            assert!(quick.repair_interval < slow.repair_interval);
            assert!(quick.settle < slow.settle);
        }
        for t in [local, lan, wan] {
            // A probe gives up before the next one is due, so a dead
            // member's misses pile up once per interval.
            assert!(t.probe_timeout <= t.probe_interval, "{t:?}");
            // Members probe out of phase, so they notice the same change up
            // to a probe round apart; repair waits that out before it
            // compares copies.
            assert!(t.settle >= t.probe_interval + t.probe_timeout, "{t:?}");
        }
    }
}
