//! One upstream call per question across the whole cluster: concurrent
//! identical misses through several members and clients wait on the key's
//! primary owner, which lets one of them lead. Real processes on loopback
//! in front of the mock upstream, whose call count is the proof.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use crate::common::*;
use relaycache::cluster::proto::ClaimRequest;

/// Three members and four clients of them, every process ready.
async fn members_and_clients(upstream: &str) -> (Vec<Relay>, Vec<Relay>) {
    cluster_of(upstream, 3, 4, |_| {}).await
}

/// `members` members and `clients` clients of them, each config passed
/// through `adjust`, every process ready.
async fn cluster_of(
    upstream: &str,
    members: usize,
    clients: usize,
    adjust: impl Fn(&mut relaycache::config::Config),
) -> (Vec<Relay>, Vec<Relay>) {
    let addresses = member_addresses(members);
    let start = |mut config: relaycache::config::Config| {
        adjust(&mut config);
        Relay::start(&config)
    };
    let members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| start(member_config(upstream, grpc, &addresses, 2)))
        .collect();
    let clients: Vec<Relay> = (0..clients)
        .map(|_| start(client_config(upstream, &addresses, 2)))
        .collect();
    for process in members.iter().chain(&clients) {
        process.wait_for_members(addresses.len() as u64).await;
    }
    (members, clients)
}

#[tokio::test]
async fn forty_concurrent_misses_over_members_and_clients_make_one_upstream_call() {
    let upstream = mock().await;
    let (members, clients) = members_and_clients(&upstream.url()).await;
    let everyone: Vec<Arc<Relay>> = members.into_iter().chain(clients).map(Arc::new).collect();
    let q = question("cluster-herd");
    let replies = post_spread(&everyone, 40, &q, &[("x-mock-delay-ms", "1000")]).await;

    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        upstream.calls(),
        1,
        "40 identical concurrent misses over 3 members and 4 clients must make one upstream call"
    );
    let first = replies[0].json()["id"].clone();
    assert!(
        replies.iter().all(|r| r.json()["id"] == first),
        "every asker got the one answer"
    );
    let misses = replies
        .iter()
        .filter(|r| r.cache_status() == "miss")
        .count();
    assert_eq!(
        misses, 1,
        "one asker led; the others were served its answer"
    );
    // Every process whose leader waited at the owner logged its answer as
    // coalesced, as its own followers did: none of the 39 says otherwise.
    let mut logged = Vec::new();
    for (index, process) in everyone.iter().enumerate() {
        // post_spread sends request i through process i mod their count.
        let sent = (0..40).filter(|i| i % everyone.len() == index).count();
        logged.extend(process.wait_for_access_logs(sent).await);
    }
    let waited = logged.iter().filter(|l| l["coalesced"] == true).count();
    assert_eq!(waited, 39, "coalesced answers of 40: {logged:?}");
    // Every process's own memory now holds it.
    for process in &everyone {
        let again = post_messages(process, "k", &q, &[]).await;
        assert_eq!(again.cache_status(), "hit");
    }
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_failing_leader_hands_its_failure_to_followers_across_the_cluster() {
    let upstream = mock().await;
    let (members, clients) = members_and_clients(&upstream.url()).await;
    let everyone: Vec<Arc<Relay>> = members.into_iter().chain(clients).map(Arc::new).collect();
    let q = question("cluster-overloaded");
    let overloaded = [("x-mock-status", "529"), ("x-mock-delay-ms", "800")];
    let replies = post_spread(&everyone, 14, &q, &overloaded).await;

    assert!(
        replies.iter().all(|r| r.status == 529),
        "every asker sees the provider's overload: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        upstream.calls(),
        1,
        "during an overload one question makes one call, cluster-wide"
    );
    // Nothing was stored: the next ask calls the upstream again.
    let after = post_messages(&everyone[4], "k", &q, &[]).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.cache_status(), "miss");
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn an_unreachable_owner_never_stops_an_answer() {
    // Every member is gone: the clients' claims find nobody, and each
    // client answers from the upstream on its own, as before there was a
    // cluster.
    let upstream = mock().await;
    let (mut members, clients) = members_and_clients(&upstream.url()).await;
    for member in &mut members {
        member.kill_hard();
    }
    let clients: Vec<Arc<Relay>> = clients.into_iter().map(Arc::new).collect();
    let q = question("owner-gone");
    let replies = post_spread(&clients, 8, &q, &[("x-mock-delay-ms", "300")]).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(
        (1..=4).contains(&upstream.calls()),
        "each client leads its own askers: {} calls",
        upstream.calls()
    );
}
#[tokio::test]
async fn a_client_claims_only_keys_of_its_own_requests() {
    let upstream = mock().await;
    let addresses = member_addresses(1);
    let config = member_config(&upstream.url(), &addresses[0], &addresses, 1);
    let member = Relay::start(&config);
    member.wait_for_members(1).await;
    let mut grpc = grpc_client(&addresses[0]).await;
    let (victim_key, _) = client_request(&config, "victim-key", &question("victim"));
    let (_, own_origin) = client_request(&config, "attacker-key", &question("attacker"));

    // A claim on another tenant's key, with no origin or with the
    // attacker's own request as origin, would let the attacker hold that
    // tenant's askers back or hand them a forged failure.
    for origin in [None, Some(own_origin)] {
        let claim = ClaimRequest {
            key: victim_key.0.to_vec(),
            wait_ms: 100,
            origin,
        };
        let refused = grpc
            .claim(with_token(claim, CLIENT_TOKEN))
            .await
            .expect_err("a forged claim is refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
    assert_eq!(
        member
            .metric("relaycache_cluster_refused_total{reason=\"forged_key\"}")
            .await,
        2.0
    );
    // The victim's own ask is not held back by anything.
    let reply = post_messages(&member, "victim-key", &question("victim"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.cache_status(), "miss");
    // Once the key is held, a claim gets the copy as `Get` would, origin
    // or not: reading needs no origin, only the flight does.
    let claim = ClaimRequest {
        key: victim_key.0.to_vec(),
        wait_ms: 100,
        origin: None,
    };
    let first = grpc
        .claim(with_token(claim, CLIENT_TOKEN))
        .await
        .expect("a claim of a held key is answered")
        .into_inner()
        .message()
        .await
        .expect("a reply")
        .expect("a first reply");
    let Some(relaycache::cluster::proto::claim_reply::Outcome::Entry(entry)) = first.outcome else {
        panic!("the held copy, not {first:?}");
    };
    let (key, entry) = relaycache::cluster::wire::entry_from_wire(&entry).expect("a fresh entry");
    assert_eq!(key, victim_key);
    assert_eq!(entry.body(), reply.body);
    assert_eq!(
        member
            .metric("relaycache_cluster_refused_total{reason=\"forged_key\"}")
            .await,
        2.0
    );
}

/// One member (whose coalescing waits at most `wait_timeout`), its gRPC
/// address, a new question, and a client's claim of it, not yet sent.
async fn member_and_claim(
    tag: &str,
    wait_timeout: Duration,
) -> (MockUpstream, Relay, String, String, ClaimRequest) {
    let upstream = mock().await;
    let addresses = member_addresses(1);
    let mut config = member_config(&upstream.url(), &addresses[0], &addresses, 1);
    config.cache.coalesce.wait_timeout = wait_timeout;
    let member = Relay::start(&config);
    member.wait_for_members(1).await;
    let q = question(tag);
    let (key, origin) = client_request(&config, "k", &q);
    let claim = ClaimRequest {
        key: key.0.to_vec(),
        wait_ms: 100,
        origin: Some(origin),
    };
    (upstream, member, addresses[0].clone(), q, claim)
}

/// Sends `claim` with the clients' token and asserts that it leads; the
/// claim's open reply stream.
async fn claim_lead(
    address: &str,
    claim: ClaimRequest,
) -> tonic::Streaming<relaycache::cluster::proto::ClaimReply> {
    let mut grpc = grpc_client(address).await;
    let mut replies = grpc
        .claim(with_token(claim, CLIENT_TOKEN))
        .await
        .expect("a client's claim of its own request is served")
        .into_inner();
    let first = replies
        .message()
        .await
        .expect("a reply")
        .expect("a first reply");
    assert!(
        matches!(
            first.outcome,
            Some(relaycache::cluster::proto::claim_reply::Outcome::Lead(_))
        ),
        "the first claim leads: {first:?}"
    );
    replies
}

#[tokio::test]
async fn a_lead_whose_holder_vanished_expires_and_its_waiters_ask_the_upstream() {
    // A client claims the lead over gRPC and is never heard of again: the
    // member's own askers wait for it at most cache.coalesce.wait_timeout,
    // then call the upstream themselves.
    let (upstream, member, address, q, claim) =
        member_and_claim("vanished-leader", Duration::from_millis(1500)).await;
    // The claim stays open (the holder's connection is alive), but no
    // answer ever comes: a stalled leader.
    let held = claim_lead(&address, claim).await;

    let started = std::time::Instant::now();
    let asked = post_messages(&member, "k", &q, &[]).await;
    assert_eq!(asked.status, 200);
    assert_eq!(asked.cache_status(), "miss");
    assert_eq!(upstream.calls(), 1, "the waiter called the upstream itself");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "it waited on the lead first ({:?})",
        started.elapsed()
    );
    drop(held);
}

#[tokio::test]
async fn a_claim_cut_off_after_it_led_releases_the_lead_at_once() {
    // The request that led went away with its claim (a client cut off
    // mid-claim, a process that died): the owner sees the claim's stream
    // end and releases the lead, so nobody waits out wait_timeout (here a
    // minute) for an answer that will never come.
    let (upstream, member, address, q, claim) =
        member_and_claim("cut-off-claim", Duration::from_secs(60)).await;
    let replies = claim_lead(&address, claim).await;
    drop(replies);

    let asked = try_send(
        http::Method::POST,
        &member.url("/v1/messages"),
        &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        q.clone(),
        Duration::from_secs(20),
    )
    .await
    .expect("answered well before the minute an orphaned lead would hold it");
    assert_eq!(asked.status, 200);
    assert_eq!(asked.cache_status(), "miss");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_streamed_miss_is_followed_live_across_the_cluster() {
    let upstream = mock().await;
    let (members, clients) = cluster_of(&upstream.url(), 2, 2, |config| {
        config.cache.streaming = true;
    })
    .await;
    let q = streamed_question("cluster-live");
    let gate = [("x-mock-gate", "cluster-live")];
    // A client leads: whichever member owns the key, the stream reaches it
    // through the client's feed.
    let leader = open_messages(&clients[0], "k", &q, &gate).await;
    assert_eq!(leader.headers()["x-relaycache-status"], "miss");
    let mut leader = leader.into_body();
    let first = next_text(&mut leader, "the leader's first event").await;

    let mut followers = Vec::new();
    for process in [&clients[1], &members[0], &members[1]] {
        let follower = tokio::time::timeout(
            Duration::from_secs(5),
            open_messages(process, "k", &q, &gate),
        )
        .await
        .expect("a follower elsewhere in the cluster waits for the whole stream");
        assert_eq!(follower.headers()["x-relaycache-status"], "hit");
        let mut body = follower.into_body();
        // The mock still holds the rest: this can only be the live stream.
        assert_eq!(
            next_text(&mut body, "a follower's first event").await,
            first
        );
        followers.push(body);
    }
    upstream.release("cluster-live");
    let rest = leader
        .collect()
        .await
        .expect("the leader's stream")
        .to_bytes();
    for body in followers {
        let got = body
            .collect()
            .await
            .expect("a follower's stream")
            .to_bytes();
        assert_eq!(got, rest, "every follower gets the same tail");
    }
    assert!(String::from_utf8_lossy(&rest).contains("event: message_stop"));
    assert_eq!(
        upstream.calls(),
        1,
        "one upstream call for the whole cluster"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_off_breaks_its_followers_across_the_cluster() {
    let upstream = mock().await;
    let (_members, clients) = cluster_of(&upstream.url(), 2, 2, |config| {
        config.cache.streaming = true;
    })
    .await;
    let q = streamed_question("cluster-live-break");
    let breaking = [
        ("x-mock-break-after", "4"),
        ("x-mock-event-delay-ms", "100"),
    ];
    let leader = open_messages(&clients[0], "k", &q, &breaking).await;
    let mut leader = leader.into_body();
    next_text(&mut leader, "the leader's first event").await;
    let follower = open_messages(&clients[1], "k", &q, &breaking).await;
    assert_eq!(follower.headers()["x-relaycache-status"], "hit");
    let err = follower
        .into_body()
        .collect()
        .await
        .expect_err("the follower sees the break, as its SDK must");
    assert!(leader.collect().await.is_err(), "the leader sees it too");
    assert_eq!(upstream.calls(), 1, "{err}");
    let again = post_messages(&clients[1], "k", &q, &[]).await;
    assert_eq!(
        again.cache_status(),
        "miss",
        "a broken stream is never stored"
    );
}
