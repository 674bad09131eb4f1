//! Streamed (SSE) answers: passed through as they arrive; recorded only
//! when complete and enabled.

use std::time::Duration;

use crate::common::*;
use http_body_util::BodyExt;

#[tokio::test]
async fn first_event_is_not_held_back() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = streamed_question("incremental");
    let response = open_messages(&relay, "k", &q, &[("x-mock-gate", "first-event")]).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    // The mock holds the rest of the stream until released: the first event
    // can only arrive here if the proxy forwards it as it comes.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event held back by the proxy")
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("event: message_start"), "{first}");
    upstream.release("first-event");
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("event: message_stop"));
}

#[tokio::test]
async fn streams_are_not_cached_by_default() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = streamed_question("default");
    assert_eq!(
        post_messages(&relay, "k", &q, &[]).await.cache_status(),
        "bypass"
    );
    assert_eq!(
        post_messages(&relay, "k", &q, &[]).await.cache_status(),
        "bypass"
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn complete_streams_are_replayed_when_enabled() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    let relay = Relay::start(&config);
    let q = streamed_question("replay");
    let first = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(first.cache_status(), "miss");
    let second = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(second.cache_status(), "hit");
    assert_eq!(second.header("content-type"), "text/event-stream");
    assert_eq!(first.body, second.body, "the same events, byte for byte");
    assert_eq!(upstream.calls(), 1);
    let stats = relay.stats().await;
    assert!(
        stats["output_tokens_saved"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[tokio::test]
async fn broken_streams_are_not_stored() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    let relay = Relay::start(&config);
    let q = streamed_question("broken");
    let breaking = [("x-mock-break-after", "3"), ("x-mock-event-delay-ms", "20")];
    let response = open_messages(&relay, "k", &q, &breaking).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.into_body().collect().await.is_err(),
        "the client sees the break too"
    );
    let again = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(
        again.cache_status(),
        "miss",
        "a broken stream was not stored"
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn an_answer_is_still_stored_when_its_client_leaves_midway() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    let relay = Relay::start(&config);
    let q = streamed_question("abandoned");
    let response = open_messages(&relay, "k", &q, &[("x-mock-gate", "abandoned")]).await;
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap();
    assert!(first.is_some());
    drop(body); // the client leaves after the first event
    tokio::time::sleep(Duration::from_millis(200)).await;
    upstream.release("abandoned");

    let mut replay = None;
    for _ in 0..50 {
        let reply = post_messages(&relay, "k", &q, &[]).await;
        if reply.cache_status() == "hit" {
            replay = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay = replay.expect("the abandoned answer was recorded and stored");
    assert!(String::from_utf8_lossy(&replay.body).contains("event: message_stop"));
    assert_eq!(
        upstream.calls(),
        1,
        "recorded from the first call, not fetched again"
    );
}

/// The streaming cache's config: `cache.streaming: true`.
fn streaming_config(upstream: &str) -> relaycache::config::Config {
    let mut config = config_for(upstream);
    config.cache.streaming = true;
    config
}

#[tokio::test]
async fn a_follower_reads_the_leaders_stream_live() {
    let upstream = mock().await;
    let relay = Relay::start(&streaming_config(&upstream.url()));
    let q = streamed_question("live-fan-out");
    let gate = [("x-mock-gate", "live")];
    let leader = open_messages(&relay, "k", &q, &gate).await;
    let mut leader = leader.into_body();
    let leaders_first = next_text(&mut leader, "the leader's first event").await;

    // The rest of the stream is held by the mock: the follower's first
    // event can only come from the leader's stream in progress.
    let follower = tokio::time::timeout(
        Duration::from_secs(5),
        open_messages(&relay, "k", &q, &gate),
    )
    .await
    .expect("the follower's answer waits for the leader's whole stream");
    assert_eq!(follower.status(), 200);
    assert_eq!(follower.headers()["x-relaycache-status"], "hit");
    assert_eq!(follower.headers()["content-type"], "text/event-stream");
    let mut follower = follower.into_body();
    let followers_first = next_text(&mut follower, "the follower's first event").await;
    assert_eq!(followers_first, leaders_first, "the same first event, live");

    upstream.release("live");
    let leaders_rest = leader
        .collect()
        .await
        .expect("the leader's stream")
        .to_bytes();
    let followers_rest = follower
        .collect()
        .await
        .expect("the follower's stream")
        .to_bytes();
    assert_eq!(leaders_rest, followers_rest, "the same tail, byte for byte");
    assert!(String::from_utf8_lossy(&followers_rest).contains("event: message_stop"));
    assert_eq!(upstream.calls(), 1);
    // Joining after the end: the stored replay.
    let late = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(late.cache_status(), "hit");
    assert_eq!(
        late.body,
        [leaders_first.as_bytes(), &leaders_rest[..]].concat(),
        "the replay is the whole stream"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_off_breaks_its_followers_and_is_not_stored() {
    let upstream = mock().await;
    let relay = Relay::start(&streaming_config(&upstream.url()));
    let q = streamed_question("live-break");
    let breaking = [
        ("x-mock-break-after", "4"),
        ("x-mock-event-delay-ms", "100"),
    ];
    let leader = open_messages(&relay, "k", &q, &breaking).await;
    let mut leader = leader.into_body();
    next_text(&mut leader, "the leader's first event").await;
    let follower = open_messages(&relay, "k", &q, &breaking).await;
    assert_eq!(
        follower.headers()["x-relaycache-status"],
        "hit",
        "the follower joined the leader's flight"
    );
    let follower = follower.into_body().collect().await;
    let err = follower.expect_err("the follower sees the break, as its SDK must");
    assert!(leader.collect().await.is_err(), "the leader sees it too");
    assert_eq!(upstream.calls(), 1, "{err}");
    let again = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(
        again.cache_status(),
        "miss",
        "a broken stream is never stored"
    );
}
