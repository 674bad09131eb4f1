//! HA mode: real `relaycache` processes on loopback forming a cluster over
//! gRPC, in front of one mock upstream whose call count proves where each
//! answer came from.

use std::time::Duration;

use crate::common::*;
use relaycache::cluster::placement;
use relaycache::cluster::proto::GetRequest;
use relaycache::cluster::wire::entry_from_wire;
use relaycache::key::CacheKey;

/// Starts one member per address, all listing every address.
fn start_cluster(upstream: &str, addresses: &[String], replica_count: u32) -> Vec<Relay> {
    start_cluster_with(upstream, addresses, replica_count, |_, _| {})
}

/// Like [`start_cluster`], with `adjust(index, ha settings)` applied to each
/// member's config; members log at debug level.
fn start_cluster_with(
    upstream: &str,
    addresses: &[String],
    replica_count: u32,
    adjust: impl Fn(usize, &mut relaycache::config::HaConfig),
) -> Vec<Relay> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, grpc)| {
            let mut config = member_config(upstream, grpc, addresses, replica_count);
            config.log.level = "debug".into();
            adjust(i, &mut config.cache.ha);
            Relay::start(&config)
        })
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

/// A client (an injected sidecar) that starts next to a running cluster
/// answers its first request from the cluster: it does not take traffic
/// before it has found the members (the app container starts once the
/// sidecar listens, and its first questions must not go to the upstream
/// again). Found by the real-pod scenarios, which had to wait for the
/// sidecar to learn the members.
#[tokio::test]
async fn a_client_answers_its_first_request_from_the_cluster() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    let body = question("asked before the client started");
    let first = post_messages(&members[0], "k", &body, &[]).await;
    assert_eq!((first.status, first.cache_status()), (200, "miss"));
    members[0]
        .wait_for_stats("1 cluster write", |s| s["cluster"]["writes"] == 1)
        .await;

    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    let reply = post_messages(&client, "k", &body, &[]).await;
    assert_eq!(
        (
            reply.status,
            reply.cache_status(),
            reply.header("x-relaycache-tier")
        ),
        (200, "hit", "peer"),
        "the client's first request, sent as soon as it listens"
    );
    assert_eq!(upstream.calls(), 1, "the answer was paid for once");
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

    // The writer itself goes: it held every answer in its memory, so each
    // answer that survives is a copy it replicated.
    members[0].kill_hard();
    for member in &members[1..] {
        member.wait_for_members(2).await;
    }
    // A client-mode process (what an injected sidecar runs) starts with an
    // empty memory: every hit it gets comes from the surviving members.
    // Its config arrives in RELAYCACHE_CONFIG_YAML, as the webhook passes it.
    // It is given a bind address too, which a client must not open.
    let mut config = client_config(&upstream.url(), &addresses, 2);
    let unopened = format!("127.0.0.1:{}", free_port());
    config.cache.ha.bind_addr = unopened.clone();
    let client = Relay::start_inline(&config);
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

    // The client stores nothing for others: the members never count it
    // among themselves, it opens no cluster port, and answers stored
    // through the members do not land in its memory.
    for member in &members[1..] {
        assert_eq!(
            member.stats().await["cluster"]["members"],
            2,
            "the client was taken for a member"
        );
    }
    let refused = std::net::TcpStream::connect(&unopened)
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "a client opened its bind address {unopened}"
    );
    let held = client.stats().await["key_count"].clone();
    assert_eq!(held, 30, "the client keeps what it was asked for");
    for i in 0..10 {
        let reply = post_messages(&members[1], "k", &question(&format!("later {i}")), &[]).await;
        assert_eq!(reply.cache_status(), "miss");
    }
    members[1]
        .wait_for_stats("10 later cluster writes", |s| s["cluster"]["writes"] == 10)
        .await;
    assert_eq!(
        members[1].stats().await["cluster"]["write_quorum_failures"],
        0
    );
    assert_eq!(client.stats().await["key_count"], held);
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
        // It checked what it owned against the next owners, and whatever one
        // of them lacked was stored there (often nothing: readers through
        // the other members already hold copies).
        assert!(handoff["checked"].as_u64() > Some(0), "{handoff}");
        assert_eq!(handoff["stored"], handoff["queued"], "{handoff}");
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

/// A rolling restart's hard case: an owner that stays an owner restarted a
/// moment ago and has not been repaired yet, so the leaving member's copy
/// is the last one; its handoff must reach that owner too, not only the
/// member that newly becomes a replica.
#[tokio::test]
async fn a_leaving_member_hands_off_to_a_fellow_owner_that_restarted_empty() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    // Repair as slow as it goes, so that it cannot refill the restarted
    // member before the leave: only the handoff can.
    let slow_repair = |_: usize, ha: &mut relaycache::config::HaConfig| ha.repair_rate = 1;
    let mut members = start_cluster_with(&upstream.url(), &addresses, 2, slow_repair);
    wait_all(&members, 3).await;
    // Stored through a client, so only each key's two owners hold it.
    let writer = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    writer.wait_for_members(3).await;
    let keys: Vec<String> = (0..30)
        .map(|i| question(&format!("last copy {i}")))
        .collect();
    for body in &keys {
        assert_eq!(post_messages(&writer, "k", body, &[]).await.status, 200);
    }
    writer
        .wait_for_stats("30 cluster writes", |s| s["cluster"]["writes"] == 30)
        .await;
    drop(writer);

    // B restarts empty (kill -9: no handoff of its own).
    members[1].kill_hard();
    members[1] = Relay::start(&{
        let mut config = member_config(&upstream.url(), &addresses[1], &addresses, 2);
        config.cache.ha.repair_rate = 1;
        // Nor may it pull them itself.
        config.cache.ha.warmup_timeout = Duration::ZERO;
        config
    });
    wait_all(&members, 3).await;
    // A holds exactly the keys it owns (every write came through the
    // client, no read through A). For those it shares with B, B is an
    // owner before and after A leaves, yet holds nothing.
    let a_owned = members[0].stats().await["key_count"].as_u64().unwrap();
    assert!(a_owned > 0, "member a owns none of 30 keys");
    members[0].terminate();
    let status = members[0].wait_exit(Duration::from_secs(20));
    assert!(status.success(), "member a exited with {status}");
    // Then C dies without a word: what B holds is all that is left.
    members[2].kill_hard();
    members[1].wait_for_members(1).await;

    let reader = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    reader.wait_for_members(1).await;
    let mut hits = 0;
    for body in &keys {
        let reply = post_messages(&reader, "k", body, &[]).await;
        assert_eq!(reply.status, 200);
        hits += u64::from(reply.cache_status() == "hit");
    }
    // Keys B and C owned may be lost with C (two failures against
    // replica_count 2); none of those A owned may be.
    assert!(
        hits >= a_owned,
        "{hits} of 30 answers survived, but member a owned {a_owned} and handed them off"
    );
}

#[tokio::test]
async fn a_restarted_member_is_repaired_back_to_replica_count() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    for i in 0..30 {
        post_messages(&members[0], "k", &question(&format!("repair {i}")), &[]).await;
    }
    members[0]
        .wait_for_stats("30 cluster writes", |s| s["cluster"]["writes"] == 30)
        .await;

    // kill -9: no handoff. The member comes back empty under the same name.
    members[1].kill_hard();
    for member in [&members[0], &members[2]] {
        member.wait_for_members(2).await;
    }
    // Passes that ran while it was away repaired onto the other survivor;
    // only what is counted from here on speaks of the restarted member.
    let mut short_before = Vec::new();
    for member in [&members[0], &members[2]] {
        short_before.push(
            member.stats().await["cluster"]["under_replicated_found"]
                .as_u64()
                .unwrap(),
        );
    }
    members[1] = Relay::start(&{
        let mut config = member_config(&upstream.url(), &addresses[1], &addresses, 2);
        // Repair, not the warm start (tests/it/warmup.rs), refills it here.
        config.cache.ha.warmup_timeout = Duration::ZERO;
        config
    });
    wait_all(&members, 3).await;
    // Without a single request through it, repair copies its share back.
    let back = members[1]
        .wait_for_stats("entries repaired onto the restarted member", |s| {
            s["key_count"].as_u64() >= Some(10)
        })
        .await;
    let mut repaired = 0;
    for member in [&members[0], &members[2]] {
        repaired += member.stats().await["cluster"]["repaired"]
            .as_u64()
            .unwrap();
    }
    assert!(
        repaired >= back["key_count"].as_u64().unwrap(),
        "repaired {repaired}, held {back}"
    );
    // The gauge holds only the latest pass's figure, which a later pass may
    // already have set back to 0; the counter sums every pass, and the
    // passes after the restart must have found keys short.
    // A pass adds to it when it ends, which may be after its copies landed.
    let mut found_short = 0;
    for _ in 0..200 {
        found_short = 0;
        for (member, before) in [&members[0], &members[2]].iter().zip(&short_before) {
            found_short += member.stats().await["cluster"]["under_replicated_found"]
                .as_u64()
                .unwrap()
                - before;
        }
        if found_short > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        found_short > 0,
        "no repair pass after the restart counted the keys it found short"
    );
    println!(
        "repair after the restart found {found_short} keys short and copied {repaired} in all"
    );
    // `metric` panics when the series is not exported.
    members[0]
        .metric("relaycache_cluster_under_replicated_keys")
        .await;
    assert_eq!(upstream.calls(), 30);
}

/// Which upstream call (the number in the answer's `id`) the copy of `key`
/// held by the member at `address` came from, asked over gRPC; `None` if it
/// holds none.
async fn held_call(address: &str, key: &CacheKey) -> Option<String> {
    let reply = grpc_client(address)
        .await
        .get(with_token(
            GetRequest {
                key: key.0.to_vec(),
                ..GetRequest::default()
            },
            CLIENT_TOKEN,
        ))
        .await
        .expect("get")
        .into_inner();
    let (_, entry) = entry_from_wire(&reply.entry?).expect("a well-formed, fresh entry");
    mock_call_of(&entry.body())
}

#[tokio::test]
async fn the_freshest_version_wins_after_a_refresh() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    let body = question("versioned");
    let first = post_messages(&members[0], "k", &body, &[]).await;
    assert_eq!(
        (first.cache_status(), first.mock_call().as_str()),
        ("miss", "1")
    );
    members[0]
        .wait_for_stats("first write", |s| s["cluster"]["writes"] == 1)
        .await;
    // The key's replicas with all three up, computed as every member does.
    let key = CacheKey::from_hex(first.header("x-relaycache-key")).expect("a key header");
    let seeds: Vec<u64> = addresses.iter().map(|a| placement::seed_of(a)).collect();
    let replicas = placement::rank(&seeds, &key, 2);
    let (stale, fresh) = (replicas[0], replicas[1]);
    let other = (0..3).find(|i| !replicas.contains(i)).unwrap();
    assert_eq!(
        held_call(&addresses[stale], &key).await.as_deref(),
        Some("1")
    );

    // One replica stalls with v1 in its memory; the others carry on
    // without it, so the refresh lands on them only.
    members[stale].pause();
    members[fresh].wait_for_members(2).await;
    members[other].wait_for_members(2).await;
    // The reader starts now, so that it reads as soon as it sees the
    // stalled replica back, before repair would bring that copy up to date.
    let mut config = client_config(&upstream.url(), &addresses, 2);
    config.cache.ha.read_quorum = 2;
    let client = Relay::start(&config);
    client.wait_for_members(2).await;
    let writes = members[other].stats().await["cluster"]["writes"]
        .as_u64()
        .unwrap();
    let refreshed = post_messages(
        &members[other],
        "k",
        &body,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(
        (refreshed.cache_status(), refreshed.mock_call().as_str()),
        ("refresh", "2")
    );
    members[other]
        .wait_for_stats("refresh write", |s| {
            s["cluster"]["writes"].as_u64() == Some(writes + 1)
        })
        .await;
    assert_eq!(
        held_call(&addresses[fresh], &key).await.as_deref(),
        Some("2")
    );

    members[stale].resume();
    client.wait_for_members(3).await;
    // Both replicas must answer; they hold v1 and v2, and v2 must win.
    let read = post_messages(&client, "k", &body, &[]).await;
    let stale_then = held_call(&addresses[stale], &key).await;
    if stale_then.as_deref() == Some("1") {
        println!("the stalled replica still held v1 after the read: the client chose between disagreeing copies");
    } else {
        println!("repair refreshed the stalled replica before the read ({stale_then:?}); the unit test in replication.rs covers the choice");
    }
    assert_eq!(
        (
            read.cache_status(),
            read.header("x-relaycache-tier"),
            read.mock_call().as_str()
        ),
        ("hit", "peer", "2")
    );
    assert_eq!(client.stats().await["cluster"]["read_quorum_failures"], 0);
    // Repair brings the stalled replica up to the freshest version.
    let mut repaired = None;
    for _ in 0..400 {
        repaired = held_call(&addresses[stale], &key).await;
        if repaired.as_deref() == Some("2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        repaired.as_deref(),
        Some("2"),
        "the stale copy was never repaired"
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn below_member_count_quorum_the_cluster_tier_is_skipped_and_said() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster_with(&upstream.url(), &addresses, 3, |_, ha| {
        ha.write_quorum = 3;
        ha.member_count_quorum = 3;
    });
    wait_all(&members, 3).await;
    members[0].wait_ready(Duration::from_secs(30)).await;
    let ready = get(&members[0].admin_url("/readyz")).await;
    assert!(
        ready.text().contains("cluster: ok (3 live members"),
        "{}",
        ready.text()
    );

    members[2].kill_hard();
    members[0].wait_for_members(2).await;
    let ready = get(&members[0].admin_url("/readyz")).await;
    assert_eq!(
        ready.status, 200,
        "it still serves from memory and the upstream"
    );
    assert!(ready.text().contains("below quorum"), "{}", ready.text());
    let reply = post_messages(&members[0], "k", &question("alone"), &[]).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    let again = post_messages(&members[0], "k", &question("alone"), &[]).await;
    assert_eq!(
        (again.cache_status(), again.header("x-relaycache-tier")),
        ("hit", "memory")
    );
    let stats = members[0]
        .wait_for_stats("a write skipped below quorum", |s| {
            s["cluster"]["skipped_below_quorum"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(stats["cluster"]["quorum"], false);
    assert_eq!(
        members[0].metric("relaycache_cluster_quorum").await,
        0.0,
        "the quorum gauge says so too"
    );
}

#[tokio::test]
async fn a_missed_write_quorum_is_counted_and_logged() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster_with(&upstream.url(), &addresses, 3, |_, ha| {
        ha.write_quorum = 3;
    });
    wait_all(&members, 3).await;
    members[2].kill_hard();
    members[0].wait_for_members(2).await;
    // Two live members cannot give three acknowledgements.
    let reply = post_messages(&members[0], "k", &question("short"), &[]).await;
    assert_eq!(reply.status, 200, "the client still gets its answer");
    members[0]
        .wait_for_stats("the missed quorum", |s| {
            s["cluster"]["write_quorum_failures"] == 1
        })
        .await;
    let logged = members[0]
        .logged(1, |l| {
            l.contains("missed write_quorum") && l.contains("\"acks\":2")
        })
        .await;
    assert!(
        !logged.is_empty(),
        "the missed quorum is logged with its acks"
    );
    // The copy that did land is still shared.
    let other = post_messages(&members[1], "k", &question("short"), &[]).await;
    assert_eq!(other.cache_status(), "hit");
}

#[tokio::test]
async fn members_without_the_token_are_refused_and_it_is_never_logged() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster_with(&upstream.url(), &addresses, 2, |i, ha| {
        ha.token = if i < 2 { "s3cret-peer-token" } else { "wrong" }.into();
    });
    members[0].wait_for_members(2).await;
    members[1].wait_for_members(2).await;
    members[0]
        .wait_for_stats("refused calls", |s| {
            s["cluster"]["refused"].as_u64() > Some(0)
        })
        .await;
    // The outsider sees nobody but itself, however long it probes.
    members[2]
        .wait_for_stats("refused by the others", |s| s["cluster"]["members"] == 1)
        .await;
    assert_eq!(members[0].stats().await["cluster"]["members"], 2);
    post_messages(&members[0], "k", &question("secret"), &[]).await;
    let hit = post_messages(&members[1], "k", &question("secret"), &[]).await;
    assert_eq!(hit.cache_status(), "hit");
    for member in &members {
        assert!(
            member
                .logs()
                .iter()
                .all(|l| !l.contains("s3cret-peer-token")),
            "the token was logged"
        );
    }
}

#[tokio::test]
async fn a_client_without_the_clients_token_never_reaches_the_cluster() {
    let upstream = mock().await;
    let addresses = member_addresses(2);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 2).await;
    let body = question("members only");
    assert_eq!(
        post_messages(&members[0], "k", &body, &[])
            .await
            .cache_status(),
        "miss"
    );
    members[0]
        .wait_for_stats("the write", |s| s["cluster"]["writes"] == 1)
        .await;
    for member in &members {
        assert_eq!(member.stats().await["cluster"]["refused"], 0);
    }

    // With the clients' token, a client gets the stored answer from the cluster.
    let trusted = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    trusted.wait_for_members(2).await;
    let hit = post_messages(&trusted, "k", &body, &[]).await;
    assert_eq!(
        (hit.cache_status(), hit.header("x-relaycache-tier")),
        ("hit", "peer")
    );
    for member in &members {
        assert_eq!(member.stats().await["cluster"]["refused"], 0);
    }

    // Without it, every probe is refused and counted by the members.
    let mut config = client_config(&upstream.url(), &addresses, 2);
    config.cache.ha.client_token = "not-the-clients-token".into();
    config.log.level = "debug".into();
    let stranger = Relay::start(&config);
    for member in &members {
        member
            .wait_for_stats("the stranger's calls refused", |s| {
                s["cluster"]["refused"].as_u64() > Some(0)
            })
            .await;
    }
    for _ in 0..200 {
        if stranger.logs().iter().any(|l| l.contains("probe refused")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        stranger.logs().iter().any(|l| l.contains("probe refused")),
        "the stranger never heard it was refused"
    );
    assert_eq!(stranger.stats().await["cluster"]["members"], 0);
    // So its lookup never reaches the cluster: the stored answer is a miss.
    let reply = post_messages(&stranger, "k", &body, &[]).await;
    assert_eq!(
        (
            reply.status,
            reply.cache_status(),
            reply.mock_call().as_str()
        ),
        (200, "miss", "2")
    );
    let stats = stranger.stats().await;
    assert_eq!(stats["peer_hits"], 0);
    assert!(
        stats["cluster"]["skipped_below_quorum"].as_u64() > Some(0),
        "{stats}"
    );
    assert_eq!(upstream.calls(), 2);
}

/// A CA: its certificate in PEM and the issuer that signs with it.
fn certificate_authority() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// A certificate for 127.0.0.1 signed by `issuer`, and its key, in PEM.
fn loopback_certificate(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Waits until `member` has logged at least `n` refused probes of
/// `address`; bounded.
async fn wait_for_refused_probes(member: &Relay, address: &str, n: usize) {
    let count = || {
        member
            .logs()
            .iter()
            .filter(|l| l.contains("probe refused") && l.contains(address))
            .count()
    };
    for _ in 0..200 {
        if count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused: Vec<String> = member
        .logs()
        .into_iter()
        .filter(|l| l.contains("probe refused"))
        .collect();
    panic!(
        "{} refused probes of {address:?} logged, expected {n}; every refused probe: {refused:?}",
        count()
    );
}

#[tokio::test]
async fn mutual_tls_between_members() {
    let (ca_pem, issuer) = certificate_authority();
    let (rogue_ca_pem, rogue_issuer) = certificate_authority();
    assert_ne!(ca_pem, rogue_ca_pem);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", &ca_pem);
    let (member_cert, member_key) = loopback_certificate(&issuer);
    let cert_file = write("member.pem", &member_cert);
    let key_file = write("member.key", &member_key);
    // The rogue trusts the cluster's CA but holds a certificate from
    // another one.
    let (rogue_cert, rogue_key) = loopback_certificate(&rogue_issuer);
    let rogue_cert_file = write("rogue.pem", &rogue_cert);
    let rogue_key_file = write("rogue.key", &rogue_key);

    let upstream = mock().await;
    // 0 and 1 are members; 2 speaks plaintext; 3 is the rogue.
    let addresses = member_addresses(4);
    let members = start_cluster_with(&upstream.url(), &addresses, 2, |i, ha| match i {
        0 | 1 => {
            ha.tls.cert_file = cert_file.clone();
            ha.tls.key_file = key_file.clone();
            ha.tls.ca_file = ca_file.clone();
        }
        3 => {
            ha.tls.cert_file = rogue_cert_file.clone();
            ha.tls.key_file = rogue_key_file.clone();
            ha.tls.ca_file = ca_file.clone();
        }
        _ => {}
    });
    members[0].wait_for_members(2).await;
    members[1].wait_for_members(2).await;
    post_messages(&members[0], "k", &question("over tls"), &[]).await;
    members[0]
        .wait_for_stats("a write over TLS", |s| s["cluster"]["writes"] == 1)
        .await;
    let hit = post_messages(&members[1], "k", &question("over tls"), &[]).await;
    assert_eq!(hit.cache_status(), "hit");
    // Neither outsider can join: each has probed the members, and been
    // probed by them, over and over without a single handshake completing.
    for outsider in [2, 3] {
        for member in 0..2 {
            wait_for_refused_probes(&members[outsider], &addresses[member], 3).await;
            wait_for_refused_probes(&members[member], &addresses[outsider], 3).await;
        }
        assert_eq!(
            members[outsider].stats().await["cluster"]["members"],
            1,
            "outsider {outsider} joined"
        );
    }
    for member in &members[..2] {
        assert_eq!(member.stats().await["cluster"]["members"], 2);
    }
}

/// A client configured with one member's address (as an injected sidecar
/// is, with the members' Service name) hears of the others in that
/// member's reply, and probes them before it takes traffic: with one
/// member of three in its view it would place its first answers on the
/// wrong owners, where other clients do not look.
#[tokio::test]
async fn a_client_knows_every_member_before_it_takes_traffic() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    let writer = Relay::start(&client_config(&upstream.url(), &addresses[..1], 2));
    let found = writer
        .logged(1, |l| l.contains("found the cluster's members"))
        .await;
    let found: serde_json::Value = serde_json::from_str(&found[0]).unwrap();
    assert_eq!(found["live"], 3, "{found}");

    // So a second client, knowing another member first, finds the answer.
    let body = question("placed right");
    assert_eq!(
        post_messages(&writer, "k", &body, &[]).await.cache_status(),
        "miss"
    );
    writer
        .wait_for_stats("the write replicated", |s| s["cluster"]["writes"] == 1)
        .await;
    let reader = Relay::start(&client_config(&upstream.url(), &addresses[2..], 2));
    reader.wait_for_members(3).await;
    let reply = post_messages(&reader, "k", &body, &[]).await;
    assert_eq!(
        (reply.cache_status(), reply.header("x-relaycache-tier")),
        ("hit", "peer")
    );
    assert_eq!(upstream.calls(), 1);
}

/// A member that crashes takes its copies with it (no handoff). Placement
/// ranks the members for each key, and dropping one keeps the others'
/// order: each key it held is now owned first by the member that held the
/// other copy. So the primary owner's shortcut (a member whose warm start
/// pulled its share asks no one about its own keys) still finds every
/// answer, with repair slowed to one entry a second so that it cannot
/// have copied them over first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_member_crashes_its_keys_new_owners_still_answer_from_the_cache() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster_with(&upstream.url(), &addresses, 2, |_, ha| {
        ha.repair_rate = 1;
    });
    wait_all(&members, 3).await;
    for member in &members {
        member.wait_ready(Duration::from_secs(30)).await;
    }
    const ANSWERS: u64 = 40;
    let questions: Vec<String> = (0..ANSWERS)
        .map(|i| question(&format!("moved {i}")))
        .collect();
    for body in &questions {
        let reply = post_messages(&members[1], "k", body, &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    members[1]
        .wait_for_stats("every write replicated", |s| {
            s["cluster"]["writes"].as_u64() >= Some(ANSWERS)
        })
        .await;
    // No handoff: its copies are gone with it.
    members[2].kill_hard();
    members[0].wait_for_members(2).await;
    members[1].wait_for_members(2).await;
    for (i, body) in questions.iter().enumerate() {
        let reply = post_messages(&members[0], "k", body, &[]).await;
        assert_eq!(
            (reply.status, reply.cache_status()),
            (200, "hit"),
            "moved {i} went to the upstream"
        );
    }
    assert_eq!(upstream.calls(), ANSWERS);
}

/// A miss at the key's primary owner calls nobody before the upstream: it
/// holds whatever the cluster holds of its keys (writes reach it first,
/// warm start and repair fill it after a restart), and its flight is the
/// cluster's. At any other member a miss claims the flight at the owner
/// first, whose reply carries the owner's copy: the owner is asked once,
/// not read and then claimed. The answer's write ends the flight there
/// without another call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_at_the_keys_primary_owner_asks_no_other_member() {
    let upstream = mock().await;
    let addresses = member_addresses(2);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 2).await;
    // Ready: each member's warm start pulled its share (none yet).
    for member in &members {
        member.wait_ready(Duration::from_secs(30)).await;
    }
    let calls = |op: &'static str| {
        let member = &members[0];
        async move {
            member
                .metric(&format!(
                    "relaycache_cluster_calls_total{{op=\"{op}\",outcome=\"ok\"}}"
                ))
                .await
        }
    };
    let (gets0, claims0, releases0) = (
        calls("get").await,
        calls("claim").await,
        calls("release").await,
    );
    const MISSES: u64 = 24;
    for i in 0..MISSES {
        let reply = post_messages(&members[0], "k", &question(&format!("owner-{i}")), &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    let gets = calls("get").await - gets0;
    let claims = calls("claim").await - claims0;
    // Member 1 is the primary owner of about half the keys: those misses
    // claimed there (one Claim each). With two replicas of each key,
    // member 0 holds the other copy itself, so no miss read anyone first.
    assert!(
        claims > 0.0 && claims < MISSES as f64,
        "{claims} claims for {MISSES} misses"
    );
    assert_eq!(gets, 0.0, "replica reads for {MISSES} misses");
    assert_eq!(upstream.calls(), MISSES);
    // A lead whose answer its Set landed at the owner is over there: ending
    // the claim is enough, no Release call follows.
    members[0]
        .wait_for_stats("every write replicated", |s| {
            s["cluster"]["writes"].as_u64() >= Some(MISSES)
        })
        .await;
    assert_eq!(
        calls("release").await - releases0,
        0.0,
        "Release calls after {claims} landed leads"
    );
    // Replica writes went as SetBatch calls (one write each, or several
    // when they queued up), none as a lone Set.
    assert!(calls("set_batch").await >= 1.0);
    assert_eq!(calls("set").await, 0.0);
    // Every answer is still a hit at the other member.
    for i in 0..MISSES {
        let hit = post_messages(
            &members[1],
            "k",
            &question(&format!("owner-{i}")),
            &[("cache-control", "only-if-cached")],
        )
        .await;
        assert_eq!((hit.status, hit.cache_status()), (200, "hit"), "owner-{i}");
    }
}

/// Misses asked by a process that holds no copy of the key: a member that
/// is not one of its replicas, and a client. Each claims the key's flight
/// at its primary owner first; the owner warmed up completely, so its lead
/// says it holds its share, and nobody else is read before the upstream.
/// One call per miss, where reading the other replica and then claiming
/// made two in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_where_no_copy_is_held_claims_at_the_owner_and_reads_no_replica() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let members = start_cluster(&upstream.url(), &addresses, 2);
    wait_all(&members, 3).await;
    for member in &members {
        member.wait_ready(Duration::from_secs(30)).await;
        assert_eq!(member.stats().await["cluster"]["holds_its_share"], true);
    }
    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    client.wait_for_members(3).await;
    let seeds: Vec<u64> = addresses.iter().map(|a| placement::seed_of(a)).collect();
    let ok = |op: &str| format!("relaycache_cluster_calls_total{{op=\"{op}\",outcome=\"ok\"}}");
    const MISSES: usize = 30;
    for (asker, name) in [(&members[0], "member"), (&client, "client")] {
        let (gets0, claims0) = (
            asker.metric(&ok("get")).await,
            asker.metric(&ok("claim")).await,
        );
        let (mut no_copy, mut claimed_remotely) = (0, 0);
        for i in 0..MISSES {
            let reply = post_messages(asker, "k", &question(&format!("{name} {i}")), &[]).await;
            assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
            let key = CacheKey::from_hex(reply.header("x-relaycache-key")).expect("a key header");
            let replicas = placement::rank(&seeds, &key, 2);
            if name == "client" || !replicas[..2].contains(&0) {
                no_copy += 1;
            }
            if name == "client" || replicas[0] != 0 {
                claimed_remotely += 1;
            }
        }
        assert!(
            no_copy > 0,
            "no key of {MISSES} left the {name} without a copy"
        );
        let gets = asker.metric(&ok("get")).await - gets0;
        let claims = asker.metric(&ok("claim")).await - claims0;
        assert_eq!(
            gets, 0.0,
            "the {name} read replicas for {MISSES} misses ({no_copy} of keys it holds no copy of)"
        );
        assert_eq!(claims, claimed_remotely as f64, "claims by the {name}");
    }
    assert_eq!(upstream.calls(), 2 * MISSES as u64);
    // The client's questions again, at member 2: those it holds no copy of
    // are answered by the owner's claim reply. A copy the owner held is no
    // wait on another's upstream call, and the access log says so.
    for i in 0..MISSES {
        let reply = post_messages(&members[2], "k", &question(&format!("client {i}")), &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    }
    let peer_hits: Vec<_> = members[2]
        .access_logs()
        .into_iter()
        .filter(|line| line["tier"] == "peer")
        .collect();
    assert!(!peer_hits.is_empty(), "member 2 held a copy of every key");
    for line in &peer_hits {
        assert_eq!(line["coalesced"], false, "{line}");
    }
    assert_eq!(upstream.calls(), 2 * MISSES as u64);
}

/// The key's primary owner came back empty and without a warm start, so it
/// cannot say it holds its share: a member holding no copy that claims the
/// flight there reads the other replica before the upstream, answers from
/// it, and gives the copy back to the owner with the flight. The other
/// members' repair is slowed to one entry a second, so that it cannot have
/// copied the keys back first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_from_an_owner_in_doubt_reads_the_other_replica_before_the_upstream() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members = start_cluster_with(&upstream.url(), &addresses, 2, |_, ha| {
        ha.repair_rate = 1;
    });
    wait_all(&members, 3).await;
    // Written through a client, so that no member holds a copy it does
    // not own.
    let writer = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    writer.wait_for_members(3).await;
    const WRITTEN: usize = 30;
    let mut keys = Vec::new();
    for i in 0..WRITTEN {
        let body = question(&format!("doubt {i}"));
        let reply = post_messages(&writer, "k", &body, &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
        keys.push((
            body,
            CacheKey::from_hex(reply.header("x-relaycache-key")).expect("a key"),
        ));
    }
    writer
        .wait_for_stats("every write replicated", |s| {
            s["cluster"]["writes"].as_u64() >= Some(WRITTEN as u64)
        })
        .await;

    members[1].kill_hard();
    for member in [&members[0], &members[2]] {
        member.wait_for_members(2).await;
    }
    members[1] = Relay::start(&{
        let mut config = member_config(&upstream.url(), &addresses[1], &addresses, 2);
        config.cache.ha.warmup_timeout = Duration::ZERO;
        config.cache.ha.repair_rate = 1;
        config
    });
    wait_all(&members, 3).await;
    let seeds: Vec<u64> = addresses.iter().map(|a| placement::seed_of(a)).collect();
    let calls = upstream.calls();
    let gets = "relaycache_cluster_calls_total{op=\"get\",outcome=\"ok\"}";
    let (mut asked, mut read_around) = (0, 0.0);
    for (body, key) in &keys {
        let replicas = placement::rank(&seeds, key, 2);
        // Keys the restarted member owns first, and that repair has not
        // copied back to it yet (it copies one a second).
        if replicas[0] != 1 || held_call(&addresses[1], key).await.is_some() {
            continue;
        }
        // The member that is no replica of it. While the owner was away
        // it was one, and repair may have copied the key to it then.
        let asking = (0..3)
            .find(|m| !replicas.contains(m))
            .expect("three members");
        if held_call(&addresses[asking], key).await.is_some() {
            continue;
        }
        let asker = &members[asking];
        let gets0 = asker.metric(gets).await;
        let reply = post_messages(asker, "k", body, &[]).await;
        assert_eq!(
            (
                reply.status,
                reply.cache_status(),
                reply.header("x-relaycache-tier")
            ),
            (200, "hit", "peer"),
            "a key the restarted owner lacks went to the upstream"
        );
        read_around += asker.metric(gets).await - gets0;
        asked += 1;
        // The copy came back to the owner with the flight.
        let mut back = None;
        for _ in 0..200 {
            back = held_call(&addresses[1], key).await;
            if back.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back.is_some(), "the owner was not given the copy back");
    }
    // Repair may copy a key back between the look and the ask, and then
    // the claim finds it at the owner; most are read around.
    assert!(
        read_around * 2.0 >= f64::from(asked),
        "{read_around} replica reads for {asked} keys the owner lacked"
    );
    assert!(asked > 0, "member 1 owns no key of {WRITTEN}");
    assert_eq!(upstream.calls(), calls);
}

/// A member that stood still (SIGSTOP here; a frozen VM or a long pause in
/// production) for longer than it takes the others to count it down
/// missed the writes they made meanwhile, some of them of keys it owns
/// first. Back, it cannot count on holding its share: its misses of those
/// keys ask the other replica (and are hits) until it has pulled its share
/// again, and only then go straight to the upstream as before. The other
/// member's repair is slowed to one entry a second, so that it cannot have
/// pushed them over first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_from_a_pause_asks_for_its_own_keys_until_it_pulled_them_again() {
    let upstream = mock().await;
    let addresses = member_addresses(2);
    let members = start_cluster_with(&upstream.url(), &addresses, 2, |i, ha| {
        ha.repair_rate = if i == 0 { 5000 } else { 1 };
    });
    wait_all(&members, 2).await;
    for member in &members {
        member.wait_ready(Duration::from_secs(30)).await;
    }
    let (paused, other) = (&members[0], &members[1]);
    assert_eq!(
        paused.stats().await["cluster"]["holds_its_share"],
        true,
        "after a complete warm start"
    );

    paused.pause();
    other.wait_for_members(1).await;
    const WRITTEN: usize = 24;
    let mut owned_by_paused = Vec::new();
    let seeds: Vec<u64> = addresses.iter().map(|a| placement::seed_of(a)).collect();
    for i in 0..WRITTEN {
        let body = question(&format!("while paused {i}"));
        let reply = post_messages(other, "k", &body, &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
        let key = CacheKey::from_hex(reply.header("x-relaycache-key")).expect("a key header");
        if placement::rank(&seeds, &key, 2)[0] == 0 {
            owned_by_paused.push(body);
        }
    }
    assert!(
        !owned_by_paused.is_empty(),
        "no key of {WRITTEN} is owned by member 0"
    );
    let calls = upstream.calls();

    paused.resume();
    other.wait_for_members(2).await;
    paused.wait_for_members(2).await;
    // Its probe loop runs as soon as it resumes; give it time to notice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for body in &owned_by_paused {
        let reply = post_messages(paused, "k", body, &[]).await;
        assert_eq!(
            (reply.status, reply.cache_status()),
            (200, "hit"),
            "a key member 0 owns, written while it was paused, went to the upstream"
        );
    }
    assert_eq!(upstream.calls(), calls);

    // Once it pulled its share again, its own keys' misses ask nobody.
    paused
        .wait_for_stats("its share pulled again", |s| {
            s["cluster"]["holds_its_share"] == true
        })
        .await;
    let gets = "relaycache_cluster_calls_total{op=\"get\",outcome=\"ok\"}";
    let gets_before = paused.metric(gets).await;
    for i in 0..WRITTEN {
        let reply = post_messages(paused, "k", &question(&format!("after {i}")), &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    assert_eq!(paused.metric(gets).await - gets_before, 0.0);
}
