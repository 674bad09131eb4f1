use super::*;

/// A `/stats` body with these counts (the rest zero).
pub(crate) fn stats(hits: u64, misses: u64, bypasses: u64, saved_usd: f64) -> Stats {
    serde_json::from_value(serde_json::json!({
        "hits": hits, "misses": misses, "bypasses": bypasses,
        "coalesced_waits": 0, "key_count": misses, "bytes_used": 2048 * misses,
        "evictions": 0, "hit_ratio": ratio(hits, hits + misses),
        "input_tokens_saved": 10 * hits, "output_tokens_saved": 20 * hits,
        "saved_usd": saved_usd, "reserve": {},
    }))
    .expect("a /stats body")
}

/// A reading of `stats(hits, misses, bypasses, saved_usd)`, these hits by
/// tier, upstream buckets (see [`histogram`]) and upstream errors.
pub(crate) fn reading(
    (hits, misses, bypasses): (u64, u64, u64),
    saved_usd: f64,
    hits_by_tier: ByTier<u64>,
    buckets: [u64; 5],
    upstream_errors: u64,
) -> Reading {
    Reading {
        stats: stats(hits, misses, bypasses, saved_usd),
        metrics: MetricFigures {
            hits_by_tier,
            upstream: histogram(buckets),
            upstream_errors,
        },
    }
}

/// Buckets at 1, 2, 4 and 8 ms and +Inf with these cumulative counts.
pub(crate) fn histogram(counts: [u64; 5]) -> Histogram {
    let bounds = [0.001, 0.002, 0.004, 0.008, f64::INFINITY];
    Histogram {
        buckets: bounds.into_iter().zip(counts).collect(),
    }
}

const METRICS: &str = r#"# HELP relaycache_hits Answers served from cache.
# TYPE relaycache_hits counter
relaycache_hits_total{tier="memory"} 7
relaycache_hits_total{tier="peer"} 2
relaycache_hits_total{tier="reserve"} 1
relaycache_requests_total{cache_status="hit"} 10
# TYPE relaycache_upstream_first_byte_seconds histogram
relaycache_upstream_first_byte_seconds_sum{upstream="anthropic"} 0.01
relaycache_upstream_first_byte_seconds_count{upstream="anthropic"} 3
relaycache_upstream_first_byte_seconds_bucket{le="0.001",upstream="anthropic"} 1
relaycache_upstream_first_byte_seconds_bucket{le="0.002",upstream="anthropic"} 3
relaycache_upstream_first_byte_seconds_bucket{le="+Inf",upstream="anthropic"} 3
relaycache_upstream_first_byte_seconds_bucket{upstream="a \"quoted\", name",le="0.001"} 0
relaycache_upstream_first_byte_seconds_bucket{upstream="a \"quoted\", name",le="0.002"} 1
relaycache_upstream_first_byte_seconds_bucket{upstream="a \"quoted\", name",le="+Inf"} 2
relaycache_upstream_errors_total{upstream="anthropic"} 4
relaycache_upstream_errors_total{upstream="openai"} 1
not a sample line
# EOF
"#;

#[test]
fn metrics_text_gives_hits_by_tier_summed_buckets_and_errors() {
    let figures = MetricFigures::parse(METRICS);
    assert_eq!(figures.hits_by_tier, [7, 2, 1]);
    assert_eq!(
        figures.upstream.buckets,
        vec![(0.001, 1), (0.002, 4), (f64::INFINITY, 5)],
        "summed over upstreams, whatever the label order"
    );
    assert_eq!(figures.upstream.count(), 5);
    assert_eq!(figures.upstream_errors, 5);
    assert_eq!(MetricFigures::parse(""), MetricFigures::default());
}

#[test]
fn quantiles_interpolate_inside_their_bucket() {
    // 10 calls between 1 and 2 ms.
    let h = histogram([0, 10, 10, 10, 10]);
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
    assert!(close(h.quantile(0.5), 0.0015), "{:?}", h.quantile(0.5));
    assert!(close(h.quantile(0.99), 0.00199), "{:?}", h.quantile(0.99));
    // The first bucket starts at 0.
    assert!(close(histogram([4, 4, 4, 4, 4]).quantile(0.5), 0.0005));
    // 90 fast, 10 beyond the last finite bucket: p99 is that bound.
    let tail = histogram([90, 90, 90, 90, 100]);
    assert!(close(tail.quantile(0.5), 0.0005 * 50.0 / 45.0));
    assert!(close(tail.quantile(0.99), 0.008));
    assert_eq!(histogram([0; 5]).quantile(0.5), None);
    assert_eq!(Histogram::default().latency(), Latency::default());
}

#[test]
fn since_keeps_only_the_later_observations_and_restarts_from_zero() {
    let earlier = histogram([1, 2, 3, 4, 5]);
    let later = histogram([1, 12, 13, 14, 15]);
    assert_eq!(later.since(&earlier), histogram([0, 10, 10, 10, 10]));
    let restarted = histogram([0, 1, 1, 1, 1]);
    assert_eq!(restarted.since(&earlier), restarted);
    assert_eq!(
        later.since(&Histogram::default()),
        later,
        "against nothing, all of it"
    );
}

#[test]
fn rates_are_the_change_over_the_interval() {
    let earlier = reading((10, 10, 0), 0.5, [8, 2, 0], [0, 10, 10, 10, 10], 0);
    let later = reading((25, 15, 4), 0.75, [18, 6, 1], [0, 10, 15, 15, 15], 1);
    let rates = Rates::between(&earlier, &later, Duration::from_secs(2));
    assert_eq!(rates.seconds, 2.0);
    assert_eq!(rates.requests_per_s, (44.0 - 20.0) / 2.0);
    assert_eq!(rates.hits_per_s, [5.0, 2.0, 0.5]);
    assert_eq!(rates.lookups, 20);
    assert_eq!(rates.hit_ratio, 15.0 / 20.0);
    assert_eq!(rates.tier_ratios, [0.5, 0.2, 0.05]);
    assert!((rates.saved_usd_per_s - 0.125).abs() < 1e-12);
    assert_eq!(rates.tokens_per_s, 15.0 * 30.0 / 2.0);
    // The 5 calls of the interval all took 2 to 4 ms.
    assert_eq!(rates.upstream.calls, 5);
    assert!(rates
        .upstream
        .p50
        .is_some_and(|p| (p - 0.003).abs() < 1e-12));

    // A restart: counters went down, so the later reading is all new.
    let restarted = Rates::between(&later, &earlier, Duration::from_secs(1));
    assert_eq!(restarted.requests_per_s, 20.0);
    assert_eq!(restarted.hit_ratio, 0.5);
    assert!((restarted.saved_usd_per_s - 0.5).abs() < 1e-12);
}

#[test]
fn a_reading_sums_requests_tokens_and_tier_shares() {
    let reading = reading((3, 1, 2), 0.0, [2, 1, 0], [0; 5], 0);
    assert_eq!(reading.requests(), 6);
    assert_eq!(reading.lookups(), 4);
    assert_eq!(reading.tokens_saved(), 90);
    assert_eq!(reading.tier_ratios(), [0.5, 0.25, 0.0]);
}
