//! Metrics of the request path: requests by cache status, hits by tier,
//! the upstream, memory, overload refusals and the request log.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::{metric_set, set_count, CounterBy, IntGauge, TierStats};
use crate::headers::{CacheStatus, TierKind};
use crate::limits::OverloadLimit;

/// Label of upstream metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream name from the config.
    pub upstream: String,
}

fn upstream_histogram() -> Histogram {
    // 1 ms … ~65 s: LLM answers span cached-prompt quick to long generations.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Family of upstream first-byte histograms.
pub type UpstreamHistograms = Family<UpstreamLabels, Histogram, fn() -> Histogram>;

metric_set! {
    /// Metrics of the request path.
    pub struct ProxyMetrics {
        /// Requests on cache routes, by cache status
        requests: CounterBy<CacheStatus> => "requests",
        /// Requests that waited for an identical in-flight upstream call
        coalesced_waits: Counter => "coalesced_waits",
        /// Answers stored in memory
        stores: Counter => "stores",
        /// Answers evicted from memory to make room
        evictions: Counter => "evictions",
        /// Time from request sent to the upstream's response headers
        upstream_latency: UpstreamHistograms => "upstream_first_byte" in Seconds
            = UpstreamHistograms::new_with_constructor(upstream_histogram),
        /// Failed upstream exchanges (unreachable, timeout, broken body)
        upstream_errors: Family<UpstreamLabels, Counter> => "upstream_errors",
        /// Input tokens of answers served from cache (not counting those
        /// the provider read from its prompt cache)
        input_tokens_saved: Counter => "input_tokens_saved",
        /// Completion tokens of answers served from cache
        output_tokens_saved: Counter => "output_tokens_saved",
        /// Answer bytes served from cache instead of the upstream
        bytes_served_from_cache: Counter => "served_from_cache_bytes",
        /// Log lines dropped because standard output could not keep up
        /// (requests never wait for the log)
        log_lines_dropped: Counter => "log_lines_dropped",
        /// Answers held in memory
        entries: IntGauge => "memory_entries",
        /// Bytes held in memory (weighed)
        bytes: IntGauge => "memory_bytes",
        /// Answers served from cache, by the tier that answered (memory,
        /// peer, reserve)
        hits_by_tier: CounterBy<TierKind> => "hits",
        /// Requests and connections refused with 503 by an overload limit
        /// (server.max_connections, max_inflight, max_buffered_bytes)
        overloads: CounterBy<OverloadLimit> => "overload",
        /// Followers answered with their leader's upstream failure instead
        /// of calling the upstream again
        shared_failures: Counter => "coalesced_failures",
    }
}

impl ProxyMetrics {
    /// Counts one request on a cache route.
    pub fn count_request(&self, cache_status: CacheStatus) {
        self.requests.inc(cache_status);
    }

    /// Counts a hit answered by `tier`.
    pub fn count_hit(&self, tier: TierKind) {
        self.hits_by_tier.inc(tier);
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
    pub fn count_overload(&self, limit: OverloadLimit) {
        self.overloads.inc(limit);
    }

    /// Counts a failed upstream exchange.
    pub fn count_upstream_error(&self, upstream: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// Brings memory's gauges and the dropped-lines counter (kept by the
    /// log writer) up to date.
    pub(super) fn refresh(&self, memory: TierStats) {
        let dropped = crate::telemetry::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        set_count(&self.entries, memory.entries);
        set_count(&self.bytes, memory.bytes);
    }
}
