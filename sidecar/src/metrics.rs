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

use crate::headers::CacheStatus;
use crate::tier::TierStats;

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
        let counters: [(&str, &str, &Counter); 11] = [
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
    /// Entries in memory (set when scraped).
    pub entries: Gauge<i64, AtomicI64>,
    /// Bytes in memory (set when scraped).
    pub bytes: Gauge<i64, AtomicI64>,
    /// The request counters by status, resolved once: counting a request
    /// must not take the family's lock and hash its labels.
    by_status: [Counter; 4],
    /// The reserve tier.
    pub reserve: ReserveMetrics,
}

fn status_index(status: CacheStatus) -> usize {
    match status {
        CacheStatus::Hit => 0,
        CacheStatus::Miss => 1,
        CacheStatus::Bypass => 2,
        CacheStatus::Refresh => 3,
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
        let by_status = [
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Bypass,
            CacheStatus::Refresh,
        ]
        .map(|cache_status| {
            requests
                .get_or_create(&StatusLabels { cache_status })
                .clone()
        });
        Self {
            reserve,
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
            entries,
            bytes,
        }
    }

    /// Counts one request on a cache route.
    pub fn count_request(&self, cache_status: CacheStatus) {
        self.by_status[status_index(cache_status)].inc();
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
