//! One upstream call per question across the whole cluster: concurrent
//! identical misses through several members and clients wait on the key's
//! primary owner, which lets one of them lead. Real processes on loopback
//! in front of the mock upstream, whose call count is the proof.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use relaycache::cluster::proto::ClaimRequest;

/// Three members and four clients of them, every process ready.
async fn members_and_clients(upstream: &str) -> (Vec<Relay>, Vec<Relay>) {
    let addresses = member_addresses(3);
    let members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| Relay::start(&member_config(upstream, grpc, &addresses, 2)))
        .collect();
    let clients: Vec<Relay> = (0..4)
        .map(|_| Relay::start(&client_config(upstream, &addresses, 2)))
        .collect();
    for process in members.iter().chain(&clients) {
        process.wait_for_members(3).await;
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
}

#[tokio::test]
async fn a_lead_whose_holder_vanished_expires_and_its_waiters_ask_the_upstream() {
    // A client claims the lead over gRPC and is never heard of again: the
    // member's own askers wait for it at most cache.coalesce.wait_timeout,
    // then call the upstream themselves.
    let upstream = mock().await;
    let addresses = member_addresses(1);
    let mut config = member_config(&upstream.url(), &addresses[0], &addresses, 1);
    config.cache.coalesce.wait_timeout = Duration::from_millis(1500);
    let member = Relay::start(&config);
    member.wait_for_members(1).await;
    let q = question("vanished-leader");
    let (key, origin) = client_request(&config, "k", &q);
    let mut grpc = grpc_client(&addresses[0]).await;
    let claim = ClaimRequest {
        key: key.0.to_vec(),
        wait_ms: 100,
        origin: Some(origin),
    };
    let reply = grpc
        .claim(with_token(claim, CLIENT_TOKEN))
        .await
        .expect("a client's claim of its own request is served")
        .into_inner();
    assert!(
        matches!(
            reply.outcome,
            Some(relaycache::cluster::proto::claim_reply::Outcome::Lead(_))
        ),
        "the first claim leads: {reply:?}"
    );

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
}
