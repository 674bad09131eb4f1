//! Stale-if-error: when the upstream fails, an answer that expired within
//! the window answers instead, from memory or from the cluster, with
//! `x-relaycache-status: stale` and its true age.

use std::time::Duration;

use crate::common::*;

/// A config whose answers expire after a second and stay usable for a
/// minute after that when the upstream fails.
fn stale_config(upstream: &str) -> relaycache::config::Config {
    let mut config = config_for(upstream);
    config.cache.ttl = Duration::from_secs(1);
    config.cache.stale_if_error = Duration::from_secs(60);
    config.upstreams[0].first_byte_timeout = Duration::from_millis(500);
    config
}

/// Stores `body`'s answer through `relay` and waits until it expired.
async fn store_and_expire(relay: &Relay, body: &str) -> Reply {
    let stored = post_messages(relay, "k", body, &[]).await;
    assert_eq!(stored.cache_status(), "miss");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    stored
}

fn assert_stale(reply: &Reply, stored: &Reply, what: &str) {
    assert_eq!(
        (reply.status, reply.cache_status()),
        (200, "stale"),
        "{what}: {}",
        reply.text()
    );
    assert_eq!(reply.body, stored.body, "{what}");
    let age: u64 = reply.header("age").parse().expect("an age header");
    assert!(age >= 1, "{what}: age {age}");
}

#[tokio::test]
async fn every_failure_kind_is_answered_by_the_expired_entry() {
    let upstream = mock().await;
    let relay = Relay::start(&stale_config(&upstream.url()));
    let body = question("stale on failure");
    let stored = store_and_expire(&relay, &body).await;
    for status in ["429", "500", "502", "503", "504", "529"] {
        let reply = post_messages(&relay, "k", &body, &[("x-mock-status", status)]).await;
        assert_stale(&reply, &stored, status);
    }
    // A timeout (first_byte_timeout 500 ms) is a failure too.
    let slow = post_messages(&relay, "k", &body, &[("x-mock-delay-ms", "1500")]).await;
    assert_stale(&slow, &stored, "timeout");
    assert_eq!(
        relay
            .metric("relaycache_requests_total{cache_status=\"stale\"}")
            .await,
        7.0
    );
    let lines = relay.wait_for_access_logs(8).await;
    let last = &lines[7];
    assert_eq!(last["cache"], "stale", "{last}");
    assert!(
        last["upstream_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 500ms")),
        "{last}"
    );
    // Unreachable: the upstream is gone.
    drop(upstream);
    let gone = post_messages(&relay, "k", &body, &[]).await;
    assert_stale(&gone, &stored, "unreachable");
}

#[tokio::test]
async fn never_for_other_answers_no_cache_requests_or_outside_the_window() {
    let upstream = mock().await;
    let relay = Relay::start(&stale_config(&upstream.url()));
    let body = question("not stale");
    store_and_expire(&relay, &body).await;
    // A 4xx other than 429 is the request's fault: passed on.
    let bad = post_messages(&relay, "k", &body, &[("x-mock-status", "400")]).await;
    assert_eq!((bad.status, bad.cache_status()), (400, "miss"));
    // A refresh asked for the upstream's answer, failure included.
    let refresh = post_messages(
        &relay,
        "k",
        &body,
        &[("x-mock-status", "503"), ("cache-control", "no-cache")],
    )
    .await;
    assert_eq!((refresh.status, refresh.cache_status()), (503, "refresh"));
    // The request's own window: 0 turns it off, and one shorter than the
    // entry's time since expiry does not reach it.
    for window in ["stale-if-error=0", "stale-if-error=0, max-age=60"] {
        let own = post_messages(
            &relay,
            "k",
            &body,
            &[("x-mock-status", "503"), ("cache-control", window)],
        )
        .await;
        assert_eq!((own.status, own.cache_status()), (503, "miss"), "{window}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let short = post_messages(
        &relay,
        "k",
        &body,
        &[
            ("x-mock-status", "503"),
            ("cache-control", "stale-if-error=1"),
        ],
    )
    .await;
    assert_eq!((short.status, short.cache_status()), (503, "miss"));
    // Another tenant never gets this tenant's stale answer.
    let other = post_messages(&relay, "other", &body, &[("x-mock-status", "503")]).await;
    assert_eq!(other.status, 503);
    // Off by default.
    let mut config = config_for(&upstream.url());
    config.cache.ttl = Duration::from_secs(1);
    let off = Relay::start(&config);
    store_and_expire(&off, &body).await;
    let failed = post_messages(&off, "k", &body, &[("x-mock-status", "503")]).await;
    assert_eq!(failed.status, 503);
}

#[tokio::test]
async fn a_client_gets_the_stale_answer_from_the_cluster() {
    let upstream = mock().await;
    let addresses = member_addresses(2);
    let members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| {
            let mut config = stale_config(&upstream.url());
            let cluster = member_config(&upstream.url(), grpc, &addresses, 2);
            config.cache.mode = cluster.cache.mode;
            config.cache.ha = cluster.cache.ha;
            Relay::start(&config)
        })
        .collect();
    for member in &members {
        member.wait_for_members(2).await;
    }
    let body = question("stale in the cluster");
    let stored = post_messages(&members[0], "k", &body, &[]).await;
    members[0]
        .wait_for_stats("the write", |s| s["cluster"]["writes"] == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // A client that never held the answer: the members' expired copies.
    let mut config = stale_config(&upstream.url());
    let client_side = client_config(&upstream.url(), &addresses, 2);
    config.cache.mode = client_side.cache.mode;
    config.cache.ha = client_side.cache.ha;
    let client = Relay::start(&config);
    client.wait_for_members(2).await;
    let reply = post_messages(&client, "k", &body, &[("x-mock-status", "529")]).await;
    assert_stale(&reply, &stored, "from the cluster");
    assert_eq!(reply.header("x-relaycache-tier"), "peer");
}

#[tokio::test]
async fn a_restarted_process_gets_the_stale_answer_from_the_reserve() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = stale_config(&upstream.url());
    config.cache.reserve.url = format!("file://{}", dir.path().display());
    config.cache.reserve.min_ttl = Duration::from_secs(1);
    let first = Relay::start(&config);
    let body = question("stale in the reserve");
    let stored = post_messages(&first, "k", &body, &[]).await;
    first
        .wait_for_stats("the reserve write", |s| s["reserve"]["writes"] == 1)
        .await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // A new process: nothing in memory, the expired answer in the reserve.
    let second = Relay::start(&config);
    let reply = post_messages(&second, "k", &body, &[("x-mock-status", "503")]).await;
    assert_stale(&reply, &stored, "from the reserve");
    assert_eq!(reply.header("x-relaycache-tier"), "reserve");
    // An expired answer is not a hit: with the upstream back, a miss.
    let fresh = post_messages(&second, "k", &body, &[]).await;
    assert_eq!(fresh.cache_status(), "miss");
}
