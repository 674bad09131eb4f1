//! Concurrent identical misses make one upstream call, and the waiters do
//! not fail with the leader.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let upstream = mock().await;
    let relay = std::sync::Arc::new(Relay::start(&config_for(&upstream.url())));
    let q = question("herd");
    let replies = post_concurrently(&relay, 20, &q, &[("x-mock-delay-ms", "400")]).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let bodies: Vec<_> = replies.into_iter().map(|r| r.body).collect();
    assert_eq!(
        upstream.calls(),
        1,
        "one upstream call for 20 identical requests"
    );
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let stats = relay.stats().await;
    assert_eq!(stats["coalesced_waits"], 19);
}

#[tokio::test]
async fn waiters_survive_the_leaders_client_going_away() {
    let upstream = mock().await;
    let relay = std::sync::Arc::new(Relay::start(&config_for(&upstream.url())));
    let q = question("leader-leaves");
    let gate = [("x-mock-gate", "leader-leaves")];

    let leader = {
        let relay = std::sync::Arc::clone(&relay);
        let q = q.clone();
        tokio::spawn(async move { post_messages(&relay, "k", &q, &gate).await })
    };
    while upstream.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let follower = {
        let relay = std::sync::Arc::clone(&relay);
        let q = q.clone();
        tokio::spawn(async move { post_messages(&relay, "k", &q, &gate).await })
    };
    // Give the follower time to join the flight, then drop the leader's client.
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.abort();
    let _ = leader.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    upstream.release("leader-leaves");

    let reply = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.cache_status(), "hit", "served the leader's answer");
    assert_eq!(upstream.calls(), 1);
    // The answer the leader's client abandoned was still stored.
    assert_eq!(
        post_messages(&relay, "k", &q, &[]).await.cache_status(),
        "hit"
    );
}

#[tokio::test]
async fn waiters_retry_when_the_leaders_answer_cannot_be_stored() {
    // Until issue 13 a failed leader also sent its followers back to the
    // upstream; failures are now shared (see the next test). What still
    // sends them back is an answer that may not be stored: each follower
    // needs an answer of its own.
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.max_entry_bytes = 1000;
    let relay = std::sync::Arc::new(Relay::start(&config));
    let q = question("too-big-to-share");
    let replies = post_concurrently(
        &relay,
        5,
        &q,
        &[("x-mock-delay-ms", "300"), ("x-mock-answer-bytes", "5000")],
    )
    .await;
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body.len() > 5000));
    assert!(
        upstream.calls() >= 2,
        "an answer that is not stored is not handed to the waiters"
    );
}

#[tokio::test]
async fn a_leaders_failure_is_shared_with_its_followers_not_multiplied() {
    let upstream = mock().await;
    let relay = std::sync::Arc::new(Relay::start(&config_for(&upstream.url())));
    let q = question("rate-limited");
    let replies = post_concurrently(
        &relay,
        50,
        &q,
        &[("x-mock-status", "429"), ("x-mock-delay-ms", "400")],
    )
    .await;
    assert_eq!(
        upstream.calls(),
        1,
        "50 identical requests during a 429 made more than one upstream call"
    );
    for reply in &replies {
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), "7");
        assert_eq!(reply.cache_status(), "miss");
        assert_eq!(reply.json()["error"]["message"], "mock status");
    }
    let later = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(
        (later.status, later.cache_status()),
        (200, "miss"),
        "a failure is never stored"
    );
}
