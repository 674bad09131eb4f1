//! The admin listener: health, readiness, stats, metrics and purge.

use crate::common::*;
use http::Method;

#[tokio::test]
async fn health_stats_and_metrics() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    assert_eq!(get(&relay.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&relay.admin_url("/readyz")).await.status, 200);
    assert_eq!(get(&relay.admin_url("/nope")).await.status, 404);
    assert_eq!(
        get(&relay.url("/healthz")).await.status,
        404,
        "admin is not on the traffic port"
    );

    let answer_len = post_messages(&relay, "k", &question("s"), &[])
        .await
        .body
        .len() as u64;
    post_messages(&relay, "k", &question("s"), &[]).await;
    post_messages(&relay, "k", &question("s"), &[("x-relaycache", "off")]).await;
    let stats = relay.stats().await;
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["bypasses"], 1);
    assert_eq!(stats["key_count"], 1);
    assert_eq!(stats["hit_ratio"], 0.5);
    // The answer compressed, with its headers and 512 bytes of bookkeeping.
    let bytes_used = stats["bytes_used"].as_u64().unwrap();
    assert!(
        (1000..answer_len).contains(&bytes_used),
        "{bytes_used} bytes used for a {answer_len}-byte answer: {stats}"
    );
    assert!(stats["input_tokens_saved"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["output_tokens_saved"].as_u64().unwrap() >= 1250,
        "{stats}"
    );

    let metrics = get(&relay.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for expected in [
        "relaycache_requests_total{cache_status=\"hit\"} 1",
        "relaycache_requests_total{cache_status=\"miss\"} 1",
        "relaycache_requests_total{cache_status=\"bypass\"} 1",
        "relaycache_memory_entries 1",
        // The miss, the bypass, and the /healthz probe passed through above.
        "relaycache_upstream_first_byte_seconds_count{upstream=\"mock\"} 3",
        "relaycache_evictions_total 0",
        "relaycache_coalesced_waits_total 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.contains("relaycache_output_tokens_saved_total"));
}

#[tokio::test]
async fn purge_needs_the_token() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.server.admin_token = "purge-token".into();
    let relay = Relay::start(&config);
    let first = post_messages(&relay, "k", &question("p1"), &[]).await;
    post_messages(&relay, "k", &question("p2"), &[]).await;
    let key = first.header("x-relaycache-key").to_string();
    let one = relay.admin_url(&format!("/cache/{key}"));

    assert_eq!(send(Method::DELETE, &one, &[], "").await.status, 401);
    assert_eq!(
        send(
            Method::DELETE,
            &one,
            &[("authorization", "Bearer wrong")],
            ""
        )
        .await
        .status,
        401
    );
    let bad_key = send(
        Method::DELETE,
        &relay.admin_url("/cache/xyz"),
        &[("authorization", "Bearer purge-token")],
        "",
    )
    .await;
    assert_eq!(bad_key.status, 400);
    let purged = send(
        Method::DELETE,
        &one,
        &[("authorization", "Bearer purge-token")],
        "",
    )
    .await;
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["removed"], true);
    assert_eq!(
        post_messages(&relay, "k", &question("p1"), &[])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &question("p2"), &[])
            .await
            .cache_status(),
        "hit"
    );

    let all = send(
        Method::DELETE,
        &relay.admin_url("/cache"),
        &[("authorization", "Bearer purge-token")],
        "",
    )
    .await;
    assert_eq!(all.status, 200);
    assert_eq!(
        post_messages(&relay, "k", &question("p2"), &[])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(relay.stats().await["key_count"], 1);
}

#[tokio::test]
async fn purge_is_off_without_a_token() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let reply = send(
        Method::DELETE,
        &relay.admin_url("/cache"),
        &[("authorization", "Bearer ")],
        "",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("server.admin_token"));
}
