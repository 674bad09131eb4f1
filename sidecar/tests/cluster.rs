//! HA mode: real `relaycache` processes on loopback forming a cluster over
//! gRPC, in front of one mock upstream whose call count proves where each
//! answer came from.

mod common;

use std::time::Duration;

use common::*;

/// Starts one member per address, all listing every address.
fn start_cluster(upstream: &str, addresses: &[String], replica_count: u32) -> Vec<Relay> {
    addresses
        .iter()
        .map(|grpc| Relay::start(&member_config(upstream, grpc, addresses, replica_count)))
        .collect()
}

async fn wait_all(members: &[Relay], n: u64) {
    for member in members {
        member.wait_for_members(n).await;
    }
}

#[tokio::test]
async fn an_answer_stored_through_one_member_is_a_hit_through_every_member() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;

    let keys: Vec<String> = (0..10).map(|i| question(&format!("shared {i}"))).collect();
    for body in &keys {
        let first = post_messages(&members[0], "k", body, &[]).await;
        assert_eq!((first.status, first.cache_status()), (200, "miss"));
    }
    members[0]
        .wait_for_stats("10 cluster writes", |s| s["cluster"]["writes"] == 10)
        .await;
    let mut tiers = Vec::new();
    for member in &members[1..] {
        for body in &keys {
            let reply = post_messages(member, "k", body, &[]).await;
            assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
            tiers.push(reply.header("x-relaycache-tier").to_string());
        }
    }
    assert_eq!(upstream.calls(), 10, "every answer was paid for once");
    // Replicas hold their copies in memory; the member that is not a
    // replica of a key fetches it from a peer.
    assert!(tiers.iter().any(|t| t == "peer"), "{tiers:?}");
    assert!(
        tiers.iter().all(|t| t == "peer" || t == "memory"),
        "{tiers:?}"
    );
    let peer_hits: u64 = {
        let mut sum = 0;
        for member in &members[1..] {
            sum += member.stats().await["peer_hits"].as_u64().unwrap();
        }
        sum
    };
    assert_eq!(
        peer_hits as usize,
        tiers.iter().filter(|t| *t == "peer").count()
    );

    // A different credential never reads another tenant's entry.
    let other = post_messages(&members[1], "other-key", &keys[0], &[]).await;
    assert_eq!(other.cache_status(), "miss");
}

#[tokio::test]
async fn kill_9_of_a_member_keeps_every_answer_available() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    let keys: Vec<String> = (0..30).map(|i| question(&format!("durable {i}"))).collect();
    for body in &keys {
        assert_eq!(post_messages(&members[0], "k", body, &[]).await.status, 200);
    }
    members[0]
        .wait_for_stats("30 cluster writes", |s| s["cluster"]["writes"] == 30)
        .await;
    assert_eq!(
        members[0].stats().await["cluster"]["write_quorum_failures"],
        0
    );

    members[1].kill_hard();
    // A client-mode process (what an injected sidecar runs) starts with an
    // empty memory: every hit it gets comes from the surviving members.
    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    client.wait_for_members(2).await;
    for body in &keys {
        let reply = post_messages(&client, "k", body, &[]).await;
        assert_eq!(
            (
                reply.status,
                reply.cache_status(),
                reply.header("x-relaycache-tier")
            ),
            (200, "hit", "peer"),
            "an answer was lost with the killed member"
        );
    }
    assert_eq!(upstream.calls(), 30);
    // The client stores nothing for others: it has no gRPC port.
    assert!(client
        .logs()
        .iter()
        .any(|l| l.contains("cluster tier started") && l.contains("client")));
}

#[tokio::test]
async fn rolling_restart_keeps_the_hit_ratio() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    let working_set: Vec<String> = (0..40).map(|i| question(&format!("rolling {i}"))).collect();
    for (i, body) in working_set.iter().enumerate() {
        post_messages(&members[i % 3], "k", body, &[]).await;
    }
    let paid = upstream.calls();
    assert_eq!(paid, 40);
    for member in &members {
        member
            .wait_for_stats("writes replicated", |s| {
                s["cluster"]["writes"].as_u64() > Some(0)
            })
            .await;
    }

    // Steady state: one pass over the working set through every member.
    let mut steady = (0u32, 0u32);
    for (i, body) in working_set.iter().enumerate() {
        let reply = post_messages(&members[(i + 1) % 3], "k", body, &[]).await;
        steady.1 += 1;
        steady.0 += u32::from(reply.cache_status() == "hit");
    }

    // Restart each member in turn (SIGTERM: leave and hand off), sending
    // the working set through the other two while it is away and after it
    // is back.
    let mut during = (0u32, 0u32);
    for restarting in 0..3 {
        members[restarting].terminate();
        let status = members[restarting].wait_exit(Duration::from_secs(20));
        assert!(status.success(), "member {restarting} exited with {status}");
        let handoff = members[restarting]
            .logs()
            .into_iter()
            .find(|l| l.contains("handed entries to their new owners"))
            .unwrap_or_else(|| {
                panic!(
                    "member {restarting} did not hand off: {:?}",
                    members[restarting].logs()
                )
            });
        let handoff: serde_json::Value = serde_json::from_str(&handoff).unwrap();
        assert!(handoff["queued"].as_u64() > Some(0), "{handoff}");
        let others: Vec<usize> = (0..3).filter(|&m| m != restarting).collect();
        for (i, body) in working_set.iter().enumerate() {
            let reply = post_messages(&members[others[i % 2]], "k", body, &[]).await;
            assert_eq!(reply.status, 200);
            during.1 += 1;
            during.0 += u32::from(reply.cache_status() == "hit");
        }
        members[restarting] = Relay::start(&member_config(
            &upstream.url(),
            &addresses[restarting],
            &addresses,
            2,
        ));
        wait_all(&members, 3).await;
        // The restarted member starts empty; its answers come from peers.
        for body in &working_set {
            let reply = post_messages(&members[restarting], "k", body, &[]).await;
            assert_eq!(reply.status, 200);
            during.1 += 1;
            during.0 += u32::from(reply.cache_status() == "hit");
        }
    }
    let steady_ratio = f64::from(steady.0) / f64::from(steady.1);
    let rolling_ratio = f64::from(during.0) / f64::from(during.1);
    println!(
        "hit ratio: steady {steady_ratio:.3} ({}/{}), during a rolling restart {rolling_ratio:.3} ({}/{}) = {:.1}% of steady",
        steady.0,
        steady.1,
        during.0,
        during.1,
        100.0 * rolling_ratio / steady_ratio
    );
    assert_eq!(
        steady_ratio, 1.0,
        "steady state serves the whole working set from cache"
    );
    assert!(
        rolling_ratio >= 0.95 * steady_ratio,
        "hit ratio during the rolling restart fell to {rolling_ratio:.3}"
    );
}
