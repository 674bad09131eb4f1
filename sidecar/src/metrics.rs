//! Prometheus metrics and the `/stats` summary.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::headers::{CacheStatus, TierKind};

/// Label of request counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// What the cache did.
    pub cache_status: CacheStatus,
}

/// Label of upstream metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream name from the config.
    pub upstream: String,
}

/// Label of overload refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverloadLabels {
    /// Which limit refused the request.
    pub limit: crate::limits::OverloadLimit,
}

/// Why the cluster port refused a call, an entry or a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterRefusal {
    /// A missing or wrong token.
    Token,
    /// A remote clock further ahead than `cache.ha.max_clock_skew`.
    ClockSkew,
    /// An entry whose version or `created` lies beyond the skew.
    EntryFromTheFuture,
    /// An entry larger than `cache.max_entry_bytes`.
    EntryTooLarge,
    /// A member named by an address `cache.ha.peers` does not list.
    NotAPeer,
    /// A member-only call (writes without an origin, deletes, clears,
    /// repair, handoff) from a caller holding only the clients' token.
    MemberOnly,
    /// A client's entry whose key is not the key of the request it came with.
    ForgedKey,
}

impl ClusterRefusal {
    /// Every reason, for sums.
    pub const ALL: [ClusterRefusal; 7] = [
        ClusterRefusal::Token,
        ClusterRefusal::ClockSkew,
        ClusterRefusal::EntryFromTheFuture,
        ClusterRefusal::EntryTooLarge,
        ClusterRefusal::NotAPeer,
        ClusterRefusal::MemberOnly,
        ClusterRefusal::ForgedKey,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRefusal::Token => "token",
            ClusterRefusal::ClockSkew => "clock_skew",
            ClusterRefusal::EntryFromTheFuture => "entry_from_the_future",
            ClusterRefusal::EntryTooLarge => "entry_too_large",
            ClusterRefusal::NotAPeer => "not_a_peer",
            ClusterRefusal::MemberOnly => "member_only",
            ClusterRefusal::ForgedKey => "forged_key",
        }
    }
}

/// What the key's primary owner said to a miss this process asked it
/// about (cluster-wide coalescing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlightOutcome {
    /// The owner had the answer, or the flight waited on landed one.
    Answer,
    /// This process led the flight.
    Lead,
    /// The flight's leader failed; its failure was the answer.
    Failed,
    /// The flight's answer was a stream in progress, followed live.
    Live,
    /// No flight to join (below quorum, owner unreachable, wait ran out):
    /// this process called the upstream alone.
    Alone,
}

impl FlightOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FlightOutcome::Answer => "answer",
            FlightOutcome::Lead => "lead",
            FlightOutcome::Failed => "failed",
            FlightOutcome::Live => "live",
            FlightOutcome::Alone => "alone",
        }
    }
}

/// Label of cluster-wide flight outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlightLabels {
    /// What the owner said.
    pub outcome: FlightOutcome,
}

/// Label values of closed sets are their `as_str` names.
macro_rules! label_values_from_as_str {
    ($($label:ty),* $(,)?) => {
        $(
            impl prometheus_client::encoding::EncodeLabelValue for $label {
                fn encode(
                    &self,
                    encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
                ) -> Result<(), std::fmt::Error> {
                    std::fmt::Write::write_str(encoder, self.as_str())
                }
            }
        )*
    };
}

label_values_from_as_str!(
    CacheStatus,
    crate::limits::OverloadLimit,
    ClusterRefusal,
    FlightOutcome,
    TierKind
);

/// Label of cluster refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why.
    pub reason: ClusterRefusal,
}

/// Metrics of the reserve (object-storage) tier.
#[derive(Default)]
pub struct ReserveMetrics {
    /// Answers served from the reserve.
    pub reads: Counter,
    /// Entries written.
    pub writes: Counter,
    /// Store operations that failed.
    pub failures: Counter,
    /// Writes dropped because the queue was full.
    pub dropped: Counter,
    /// Answers kept out (TTL below min_ttl or too large).
    pub not_admitted: Counter,
    /// Retention extensions written.
    pub extensions: Counter,
    /// Entries removed because they could not be read.
    pub removed: Counter,
    /// Entries removed by the sweeper because they expired.
    pub expired: Counter,
    /// Reads whose body did not match its metadata's digest (misses).
    pub mismatches: Counter,
    /// Answer bytes served from the reserve instead of the upstream.
    pub upstream_bytes_saved: Counter,
    /// Prompt tokens of answers served from the reserve.
    pub input_tokens_saved: Counter,
    /// Completion tokens of answers served from the reserve.
    pub output_tokens_saved: Counter,
    /// Entries at the last complete sweep.
    pub entries: Gauge<i64, AtomicI64>,
    /// Bytes at the last complete sweep.
    pub bytes: Gauge<i64, AtomicI64>,
    /// Store writes under way.
    pub in_flight: std::sync::atomic::AtomicU64,
}

impl ReserveMetrics {
    /// Store writes under way.
    pub fn writes_in_flight(&self) -> u64 {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "mismatches",
                "Reserve reads whose body did not match its metadata's digest (served as misses)",
                &self.mismatches,
            ),
            ("reads", "Answers served from the reserve", &self.reads),
            ("writes", "Entries written to the reserve", &self.writes),
            (
                "failures",
                "Reserve store operations that failed",
                &self.failures,
            ),
            (
                "dropped",
                "Reserve writes dropped because the queue was full",
                &self.dropped,
            ),
            (
                "not_admitted",
                "Answers kept out of the reserve (TTL or size)",
                &self.not_admitted,
            ),
            (
                "extensions",
                "Reserve retention extensions written",
                &self.extensions,
            ),
            (
                "removed",
                "Unreadable reserve entries removed",
                &self.removed,
            ),
            (
                "expired",
                "Expired reserve entries removed by the sweeper",
                &self.expired,
            ),
            (
                "upstream_bytes_saved",
                "Answer bytes served from the reserve",
                &self.upstream_bytes_saved,
            ),
            (
                "input_tokens_saved",
                "Prompt tokens of answers served from the reserve",
                &self.input_tokens_saved,
            ),
            (
                "output_tokens_saved",
                "Completion tokens of answers served from the reserve",
                &self.output_tokens_saved,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "entries",
            "Reserve entries at the last complete sweep",
            self.entries.clone(),
        );
        registry.register(
            "bytes",
            "Reserve bytes at the last complete sweep",
            self.bytes.clone(),
        );
    }
}

/// Counters a tier can report for `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (as the tier weighs them).
    pub bytes: u64,
    /// Entries removed to make room.
    pub evictions: u64,
}

/// Label of hit counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// The tier that answered.
    pub tier: TierKind,
}

/// Label of cluster calls.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerCallLabels {
    /// The call: get, set, set_many, versions, delete, clear, ping.
    pub op: &'static str,
    /// ok or error.
    pub outcome: &'static str,
}

/// Metrics of the cluster tier (mode `ha`).
#[derive(Default)]
pub struct ClusterMetrics {
    /// Whether the cluster runs open (`cache.ha.insecure`), for `/stats`.
    pub insecure: std::sync::atomic::AtomicBool,
    /// Live members this process sees, itself included when a member.
    pub members: Gauge<i64, AtomicI64>,
    /// 1 while at least `member_count_quorum` members are live, else 0.
    pub quorum: Gauge<i64, AtomicI64>,
    /// Calls to other members, by call and outcome.
    pub calls: Family<PeerCallLabels, Counter>,
    /// Cluster writes finished (whether or not they met the quorum).
    pub writes: Counter,
    /// Cluster reads that got fewer than `read_quorum` answers.
    pub read_quorum_failures: Counter,
    /// Cluster writes acknowledged by fewer than `write_quorum` replicas.
    pub write_quorum_failures: Counter,
    /// Replica writes that failed (each replica counted).
    pub replica_write_failures: Counter,
    /// Lookups and writes skipped because the cluster was below quorum.
    pub skipped_below_quorum: Counter,
    /// Keys the last repair pass found with fewer copies than
    /// `replica_count` (before it copied them).
    pub under_replicated_keys: Gauge<i64, AtomicI64>,
    /// Keys found short of `replica_count`, summed over every repair pass:
    /// what the gauge cannot show once a later pass finds none.
    pub under_replicated_found: Counter,
    /// Entries copied by repair.
    pub repaired: Counter,
    /// Entries handed to new owners on leave.
    pub handed_off: Counter,
    /// Calls, entries and clocks refused, by reason.
    pub refused: Family<RefusalLabels, Counter>,
    /// Membership changes seen (joins, leaves, failures).
    pub membership_changes: Counter,
    /// Misses asked of their key's owner, by what it said.
    pub flights: Family<FlightLabels, Counter>,
}

impl ClusterMetrics {
    /// Counts one miss asked of its key's owner.
    pub fn count_flight(&self, outcome: FlightOutcome) {
        self.flights.get_or_create(&FlightLabels { outcome }).inc();
    }

    /// Counts one refusal.
    pub fn count_refusal(&self, reason: ClusterRefusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts one call to another member.
    pub fn count_call(&self, op: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.calls
            .get_or_create(&PeerCallLabels { op, outcome })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &Gauge<i64, AtomicI64>); 3] = [
            ("members", "Live cluster members seen", &self.members),
            (
                "quorum",
                "1 while member_count_quorum members are live, else 0",
                &self.quorum,
            ),
            (
                "under_replicated_keys",
                "Keys the last repair pass found short of replica_count, before copying them",
                &self.under_replicated_keys,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let counters: [(&str, &str, &Counter); 9] = [
            ("writes", "Cluster writes finished", &self.writes),
            (
                "read_quorum_failures",
                "Cluster reads with fewer answers than read_quorum",
                &self.read_quorum_failures,
            ),
            (
                "write_quorum_failures",
                "Cluster writes with fewer acknowledgements than write_quorum",
                &self.write_quorum_failures,
            ),
            (
                "replica_write_failures",
                "Replica writes that failed",
                &self.replica_write_failures,
            ),
            (
                "skipped_below_quorum",
                "Cluster reads and writes skipped below member_count_quorum",
                &self.skipped_below_quorum,
            ),
            (
                "under_replicated_found",
                "Keys repair passes found short of replica_count, summed over passes",
                &self.under_replicated_found,
            ),
            ("repaired", "Entries copied by repair", &self.repaired),
            (
                "handed_off",
                "Entries handed to new owners on leave",
                &self.handed_off,
            ),
            (
                "membership_changes",
                "Members that joined, left or failed",
                &self.membership_changes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register("calls", "Calls to other members", self.calls.clone());
        registry.register(
            "refused",
            "Cluster calls, entries, clocks and members refused, by reason (token, clock_skew, entry_from_the_future, entry_too_large, not_a_peer, member_only, forged_key)",
            self.refused.clone(),
        );
        registry.register(
            "flights",
            "Misses asked of their key's primary owner, by outcome (answer, lead, failed, live, alone)",
            self.flights.clone(),
        );
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats {
            insecure: self.insecure.load(std::sync::atomic::Ordering::Relaxed),
            members: u64::try_from(self.members.get()).unwrap_or(0),
            quorum: self.quorum.get() == 1,
            writes: self.writes.get(),
            read_quorum_failures: self.read_quorum_failures.get(),
            write_quorum_failures: self.write_quorum_failures.get(),
            replica_write_failures: self.replica_write_failures.get(),
            skipped_below_quorum: self.skipped_below_quorum.get(),
            under_replicated_keys: u64::try_from(self.under_replicated_keys.get()).unwrap_or(0),
            under_replicated_found: self.under_replicated_found.get(),
            repaired: self.repaired.get(),
            handed_off: self.handed_off.get(),
            refused: ClusterRefusal::ALL
                .iter()
                .map(|&reason| self.refused.get_or_create(&RefusalLabels { reason }).get())
                .sum(),
        }
    }
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Requests on cache routes by cache status.
    pub requests: Family<StatusLabels, Counter>,
    /// Requests that waited for another request's identical upstream call.
    pub coalesced_waits: Counter,
    /// Answers stored in memory.
    pub stores: Counter,
    /// Answers removed from memory to make room.
    pub evictions: Counter,
    /// Time to the upstream's response headers.
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    /// Upstream exchanges that failed (unreachable, timeout, broken body).
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Prompt tokens not paid for again thanks to hits.
    pub input_tokens_saved: Counter,
    /// Completion tokens not paid for again thanks to hits.
    pub output_tokens_saved: Counter,
    /// Answer bytes served from the cache.
    pub bytes_served_from_cache: Counter,
    /// Log lines dropped because standard output fell behind (brought up
    /// to date with the log writer's own counter when scraped).
    pub log_lines_dropped: Counter,
    /// Entries in memory (set when scraped).
    pub entries: Gauge<i64, AtomicI64>,
    /// Bytes in memory (set when scraped).
    pub bytes: Gauge<i64, AtomicI64>,
    /// The request counters by status, resolved once: counting a request
    /// must not take the family's lock and hash its labels.
    by_status: [Counter; 5],
    /// The reserve tier.
    pub reserve: ReserveMetrics,
    /// The cluster tier.
    pub cluster: ClusterMetrics,
    /// Hits by the tier that answered.
    pub hits_by_tier: Family<TierLabels, Counter>,
    /// The hit counters of memory, peer and reserve, resolved once.
    by_tier: [Counter; 3],
    /// Requests and connections refused by an overload limit.
    pub overloads: Family<OverloadLabels, Counter>,
    /// Followers answered with their leader's failed upstream answer
    /// instead of calling the upstream themselves.
    pub shared_failures: Counter,
}

fn status_index(status: CacheStatus) -> usize {
    match status {
        CacheStatus::Hit => 0,
        CacheStatus::Miss => 1,
        CacheStatus::Bypass => 2,
        CacheStatus::Refresh => 3,
        CacheStatus::Stale => 4,
    }
}

fn upstream_histogram() -> Histogram {
    // 1 ms … ~65 s: LLM answers span cached-prompt quick to long generations.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `relaycache` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("relaycache");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests on cache routes, by cache status",
            requests.clone(),
        );
        let coalesced_waits = Counter::default();
        registry.register(
            "coalesced_waits",
            "Requests that waited for an identical in-flight upstream call",
            coalesced_waits.clone(),
        );
        let stores = Counter::default();
        registry.register("stores", "Answers stored in memory", stores.clone());
        let evictions = Counter::default();
        registry.register(
            "evictions",
            "Answers evicted from memory to make room",
            evictions.clone(),
        );
        let upstream_latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            upstream_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "upstream_first_byte",
            "Time from request sent to the upstream's response headers",
            prometheus_client::registry::Unit::Seconds,
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges",
            upstream_errors.clone(),
        );
        let input_tokens_saved = Counter::default();
        registry.register(
            "input_tokens_saved",
            "Prompt tokens of answers served from cache",
            input_tokens_saved.clone(),
        );
        let output_tokens_saved = Counter::default();
        registry.register(
            "output_tokens_saved",
            "Completion tokens of answers served from cache",
            output_tokens_saved.clone(),
        );
        let bytes_served_from_cache = Counter::default();
        registry.register(
            "served_from_cache_bytes",
            "Answer bytes served from cache instead of the upstream",
            bytes_served_from_cache.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because standard output could not keep up (requests never wait for the log)",
            log_lines_dropped.clone(),
        );
        let entries = Gauge::<i64, AtomicI64>::default();
        registry.register("memory_entries", "Answers held in memory", entries.clone());
        let bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "memory_bytes",
            "Bytes held in memory (weighed)",
            bytes.clone(),
        );
        let reserve = ReserveMetrics::default();
        reserve.register(registry.sub_registry_with_prefix("reserve"));
        let cluster = ClusterMetrics::default();
        cluster.register(registry.sub_registry_with_prefix("cluster"));
        let hits_by_tier = Family::<TierLabels, Counter>::default();
        registry.register(
            "hits",
            "Answers served from cache, by the tier that answered (memory, peer, reserve)",
            hits_by_tier.clone(),
        );
        let overloads = Family::<OverloadLabels, Counter>::default();
        registry.register(
            "overload",
            "Requests and connections refused with 503 by an overload limit (server.max_connections, max_inflight, max_buffered_bytes)",
            overloads.clone(),
        );
        let shared_failures = Counter::default();
        registry.register(
            "coalesced_failures",
            "Followers answered with their leader's upstream failure instead of calling the upstream again",
            shared_failures.clone(),
        );
        let by_status = [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Bypass,
            CacheStatus::Refresh,
            CacheStatus::Stale,
        ]
        .map(|cache_status| {
            requests
                .get_or_create(&StatusLabels { cache_status })
                .clone()
        });
        let by_tier =
            TierKind::ALL.map(|tier| hits_by_tier.get_or_create(&TierLabels { tier }).clone());
        Self {
            overloads,
            shared_failures,
            reserve,
            cluster,
            hits_by_tier,
            by_tier,
            by_status,
            registry: root,
            requests,
            coalesced_waits,
            stores,
            evictions,
            upstream_latency,
            upstream_errors,
            input_tokens_saved,
            output_tokens_saved,
            bytes_served_from_cache,
            log_lines_dropped,
            entries,
            bytes,
        }
    }

    /// Counts one request on a cache route.
    pub fn count_request(&self, cache_status: CacheStatus) {
        self.by_status[status_index(cache_status)].inc();
    }

    /// Counts a hit answered by `tier`.
    pub fn count_hit(&self, tier: TierKind) {
        self.by_tier[tier as usize].inc();
    }

    fn requests_with(&self, cache_status: CacheStatus) -> u64 {
        self.by_status[status_index(cache_status)].get()
    }

    /// Records the upstream's time to headers.
    pub fn observe_upstream(&self, upstream: &str, elapsed: Duration) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request or connection refused by `limit`.
    pub fn count_overload(&self, limit: crate::limits::OverloadLimit) {
        self.overloads
            .get_or_create(&OverloadLabels { limit })
            .inc();
    }

    /// Counts a failed upstream exchange.
    pub fn count_upstream_error(&self, upstream: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition, after refreshing the tier gauges.
    pub fn encode(&self, memory: TierStats, reserve: TierStats) -> String {
        let dropped = crate::telemetry::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        self.reserve
            .entries
            .set(i64::try_from(reserve.entries).unwrap_or(i64::MAX));
        self.reserve
            .bytes
            .set(i64::try_from(reserve.bytes).unwrap_or(i64::MAX));
        self.entries
            .set(i64::try_from(memory.entries).unwrap_or(i64::MAX));
        self.bytes
            .set(i64::try_from(memory.bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The `/stats` summary.
    pub fn stats(&self, memory: TierStats, reserve: TierStats) -> Stats {
        let r = &self.reserve;
        let hits = self.requests_with(CacheStatus::Hit);
        let misses =
            self.requests_with(CacheStatus::Miss) + self.requests_with(CacheStatus::Refresh);
        let lookups = hits + misses;
        Stats {
            hits,
            misses,
            bypasses: self.requests_with(CacheStatus::Bypass),
            coalesced_waits: self.coalesced_waits.get(),
            key_count: memory.entries,
            bytes_used: memory.bytes,
            evictions: self.evictions.get(),
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            input_tokens_saved: self.input_tokens_saved.get(),
            output_tokens_saved: self.output_tokens_saved.get(),
            reserve: ReserveStats {
                entries: reserve.entries,
                bytes: reserve.bytes,
                reads: r.reads.get(),
                writes: r.writes.get(),
                failures: r.failures.get(),
                dropped: r.dropped.get(),
                not_admitted: r.not_admitted.get(),
                expired: r.expired.get(),
                upstream_bytes_saved: r.upstream_bytes_saved.get(),
                input_tokens_saved: r.input_tokens_saved.get(),
                output_tokens_saved: r.output_tokens_saved.get(),
            },
            peer_hits: self.by_tier[TierKind::Peer as usize].get(),
            cluster: self.cluster.stats(),
        }
    }
}

/// The `/stats` JSON body.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Stats {
    /// Answers served from cache.
    pub hits: u64,
    /// Lookups that went to the upstream (misses and refreshes).
    pub misses: u64,
    /// Requests on cache routes that were not cached.
    pub bypasses: u64,
    /// Requests that waited for an identical upstream call.
    pub coalesced_waits: u64,
    /// Entries in memory.
    pub key_count: u64,
    /// Bytes in memory.
    pub bytes_used: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// hits / (hits + misses).
    pub hit_ratio: f64,
    /// Prompt tokens saved by hits.
    pub input_tokens_saved: u64,
    /// Completion tokens saved by hits.
    pub output_tokens_saved: u64,
    /// The reserve tier.
    pub reserve: ReserveStats,
    /// Hits answered by another cluster member.
    #[serde(default)]
    pub peer_hits: u64,
    /// The cluster tier (zeros outside mode `ha`).
    #[serde(default)]
    pub cluster: ClusterStats,
}

/// The cluster part of `/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ClusterStats {
    /// Whether the cluster runs open (`cache.ha.insecure: true`): anyone
    /// who reaches the gRPC port may write to it or wipe it.
    #[serde(default)]
    pub insecure: bool,
    /// Live members seen.
    pub members: u64,
    /// Whether member_count_quorum members are live.
    pub quorum: bool,
    /// Cluster writes finished.
    pub writes: u64,
    /// Reads with fewer answers than read_quorum.
    pub read_quorum_failures: u64,
    /// Writes with fewer acknowledgements than write_quorum.
    pub write_quorum_failures: u64,
    /// Replica writes that failed.
    pub replica_write_failures: u64,
    /// Reads and writes skipped below member_count_quorum.
    pub skipped_below_quorum: u64,
    /// Keys short of replica_count at the last repair pass.
    pub under_replicated_keys: u64,
    /// Keys short of replica_count, summed over every repair pass.
    #[serde(default)]
    pub under_replicated_found: u64,
    /// Entries copied by repair.
    pub repaired: u64,
    /// Entries handed off on leave.
    pub handed_off: u64,
    /// Calls, entries, clocks and members refused, every reason summed.
    pub refused: u64,
}

/// The reserve part of `/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ReserveStats {
    /// Entries at the last complete sweep.
    pub entries: u64,
    /// Bytes at the last complete sweep.
    pub bytes: u64,
    /// Answers served from the reserve.
    pub reads: u64,
    /// Entries written.
    pub writes: u64,
    /// Store operations that failed.
    pub failures: u64,
    /// Writes dropped because the queue was full.
    pub dropped: u64,
    /// Answers kept out (TTL or size).
    pub not_admitted: u64,
    /// Expired entries removed.
    pub expired: u64,
    /// Upstream answer bytes the reserve saved.
    pub upstream_bytes_saved: u64,
    /// Prompt tokens the reserve saved.
    pub input_tokens_saved: u64,
    /// Completion tokens the reserve saved.
    pub output_tokens_saved: u64,
}
