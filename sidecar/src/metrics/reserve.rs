//! Metrics of the reserve (object-storage) tier.

use prometheus_client::metrics::counter::Counter;

use super::{metric_set, IntGauge};

metric_set! {
    /// Metrics of the reserve (object-storage) tier.
    pub struct ReserveMetrics => ReserveStats {
        /// Reserve entries at the last complete sweep
        entries: IntGauge => "entries" [u64],
        /// Reserve bytes at the last complete sweep
        bytes: IntGauge => "bytes" [u64],
        /// Answers served from the reserve
        reads: Counter => "reads" [u64],
        /// Entries written to the reserve
        writes: Counter => "writes" [u64],
        /// Reserve writes queued or under way
        writes_in_flight: IntGauge => "writes_in_flight" [u64],
        /// Reserve store operations that failed
        failures: Counter => "failures" [u64],
        /// Reserve writes dropped because the queue was full
        dropped: Counter => "dropped" [u64],
        /// Answers kept out of the reserve (TTL below min_ttl, or too large)
        not_admitted: Counter => "not_admitted" [u64],
        /// Reserve retention extensions written
        extensions: Counter => "extensions" [u64],
        /// Unreadable reserve entries removed
        removed: Counter => "removed" [u64],
        /// Expired reserve entries removed by the sweeper
        expired: Counter => "expired" [u64],
        /// Reserve reads whose body did not match its metadata's digest
        /// (served as misses)
        mismatches: Counter => "mismatches" [u64],
        /// Answer bytes served from the reserve instead of the upstream
        upstream_bytes_saved: Counter => "upstream_bytes_saved" [u64],
        /// Prompt tokens of answers served from the reserve
        input_tokens_saved: Counter => "input_tokens_saved" [u64],
        /// Completion tokens of answers served from the reserve
        output_tokens_saved: Counter => "output_tokens_saved" [u64],
    }
}
