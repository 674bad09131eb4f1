use super::cluster::{PeerCall, PeerCallLabels};
use super::*;
use crate::limits::OverloadLimit;

/// Every closed label set lists each value once, at its own index, so no
/// count falls through to the family's slow path.
fn assert_closed<L: ClosedLabels>() {
    let all = L::all();
    for (position, labels) in all.iter().enumerate() {
        assert_eq!(labels.index(), position, "{labels:?} sits at {position}");
    }
}

#[test]
fn closed_label_sets_index_every_value_at_its_position() {
    assert_closed::<CacheStatus>();
    assert_closed::<TierKind>();
    assert_closed::<OverloadLimit>();
    assert_closed::<ClusterRefusal>();
    assert_closed::<FlightOutcome>();
    assert_closed::<PeerCallLabels>();
    assert_eq!(PeerCallLabels::all().len(), PeerCall::ALL.len() * 2);
}

fn exposition(metrics: &Metrics) -> String {
    metrics.encode(TierStats::default(), TierStats::default())
}

/// The help line of `name`, as exported (the encoder ends it with a period).
fn help_of<'a>(exposition: &'a str, name: &str) -> &'a str {
    let prefix = format!("# HELP {name} ");
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no help line for {name} in\n{exposition}"))
}

#[test]
fn each_metric_is_exported_with_its_doc_comment_as_help() {
    let metrics = Metrics::new();
    let text = exposition(&metrics);
    assert_eq!(
        help_of(&text, "relaycache_coalesced_failures"),
        "Followers answered with their leader's upstream failure instead of calling the upstream again."
    );
    assert_eq!(
        help_of(&text, "relaycache_reserve_mismatches"),
        "Reserve reads whose body did not match its metadata's digest (served as misses)."
    );
    assert_eq!(
        help_of(&text, "relaycache_upstream_first_byte_seconds"),
        "Time from request sent to the upstream's response headers."
    );
    assert!(
        text.contains("# TYPE relaycache_cluster_flights counter"),
        "{text}"
    );
}

#[test]
fn labelled_counters_export_every_value_and_count_under_the_right_one() {
    let metrics = Metrics::new();
    metrics.proxy.count_request(CacheStatus::Stale);
    metrics.proxy.count_hit(TierKind::Reserve);
    metrics.proxy.count_overload(OverloadLimit::BufferedBytes);
    metrics.cluster.count_refusal(ClusterRefusal::ForgedKey);
    metrics.cluster.count_call(PeerCall::SetMany, false);
    metrics.cluster.count_flight(FlightOutcome::Live);
    let text = exposition(&metrics);
    for line in [
        r#"relaycache_requests_total{cache_status="stale"} 1"#,
        r#"relaycache_requests_total{cache_status="hit"} 0"#,
        r#"relaycache_hits_total{tier="reserve"} 1"#,
        r#"relaycache_overload_total{limit="buffered_bytes"} 1"#,
        r#"relaycache_cluster_refused_total{reason="forged_key"} 1"#,
        r#"relaycache_cluster_calls_total{op="set_many",outcome="error"} 1"#,
        r#"relaycache_cluster_calls_total{op="set_many",outcome="ok"} 0"#,
        r#"relaycache_cluster_flights_total{outcome="live"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

fn held(entries: u64, bytes: u64) -> TierStats {
    TierStats {
        entries,
        bytes,
        evictions: 0,
    }
}

#[test]
fn stats_read_the_same_counters_the_exposition_shows() {
    let metrics = Metrics::new();
    for status in [CacheStatus::Hit, CacheStatus::Hit, CacheStatus::Hit] {
        metrics.proxy.count_request(status);
    }
    metrics.proxy.count_request(CacheStatus::Miss);
    metrics.proxy.count_hit(TierKind::Peer);
    metrics.reserve.reads.inc_by(4);
    metrics.cluster.count_refusal(ClusterRefusal::Token);
    metrics.cluster.count_refusal(ClusterRefusal::NotAPeer);
    metrics.cluster.quorum.set(1);
    let (memory, reserve) = (held(7, 700), held(3, 300));
    let stats = metrics.stats(memory, reserve);
    assert_eq!((stats.hits, stats.misses), (3, 1));
    assert!((stats.hit_ratio - 0.75).abs() < f64::EPSILON);
    assert_eq!(stats.peer_hits, 1);
    assert_eq!((stats.key_count, stats.bytes_used), (7, 700));
    assert_eq!(
        (
            stats.reserve.entries,
            stats.reserve.bytes,
            stats.reserve.reads
        ),
        (3, 300, 4)
    );
    assert_eq!(stats.cluster.refused, 2);
    assert!(stats.cluster.quorum);
    assert!(!stats.cluster.insecure);
    let text = metrics.encode(memory, reserve);
    assert!(text.contains("relaycache_reserve_entries 3\n"), "{text}");
    assert!(text.contains("relaycache_memory_bytes 700\n"), "{text}");
}

#[test]
fn stats_of_an_older_version_still_parse() {
    // A /stats body without the fields added since (reserve mismatches,
    // cluster calls and flights) reads as zeros for them.
    let old = serde_json::json!({
        "hits": 1, "misses": 0, "bypasses": 0, "coalesced_waits": 0,
        "key_count": 1, "bytes_used": 10, "evictions": 0, "hit_ratio": 1.0,
        "input_tokens_saved": 0, "output_tokens_saved": 0,
        "reserve": {"entries": 0, "bytes": 0, "reads": 0, "writes": 0}
    });
    let stats: Stats = serde_json::from_value(old).expect("an older /stats parses");
    assert_eq!(stats.reserve.mismatches, 0);
    assert_eq!(stats.cluster.flights, 0);
}
