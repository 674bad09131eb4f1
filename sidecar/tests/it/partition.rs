//! HA mode under a real network partition: three `relaycache` members, each
//! in its own network namespace, joined by a bridge (see `netns/mod.rs`).
//! The partition is `ip link set pc down` in the switch: member C loses
//! every other member, yet the test still reaches C (and C the upstream)
//! over C's own link, so the minority side can be observed while it is cut
//! off. Needs root (CAP_NET_ADMIN) and the `ip` tool; where the kernel or
//! the environment refuses to create namespaces or veth pairs the test says
//! so and passes without running.

use std::time::Instant;

use crate::common::*;
use crate::netns::{Member, Net, Refused, MEMBERS};

/// A write that missed its quorum shows in `/stats`, in `/metrics` and in
/// the log; returns the log line.
async fn missed_write_reported(member: &Member, failures: u64) -> serde_json::Value {
    assert_eq!(
        member
            .relay
            .metric("relaycache_cluster_write_quorum_failures_total")
            .await,
        failures as f64
    );
    let count = usize::try_from(failures).unwrap();
    let line = member
        .relay
        .logged(count, |l| l.contains("cluster write missed write_quorum"))
        .await
        .into_iter()
        .nth(count - 1)
        .unwrap_or_else(|| {
            panic!(
                "member {} counted {failures} missed write quorums but logged fewer: {:?}",
                member.name,
                member.logs()
            )
        });
    let line: serde_json::Value = serde_json::from_str(&line).expect("json log line");
    assert_eq!(line["level"], "WARN", "{line}");
    line
}

#[tokio::test]
async fn a_partition_shows_the_quorum_behaviour_and_heals() {
    let started = Instant::now();
    let net = match Net::create('p', 0) {
        Ok(net) => net,
        Err(Refused(why)) => {
            eprintln!(
                "skipped: cannot create network namespaces and veth pairs here ({why}); \
                 the partition test needs root (or CAP_NET_ADMIN) and the `ip` tool from iproute2"
            );
            return;
        }
    };
    // Every member reaches the mock over its own link, never the bridge, so
    // the upstream stays reachable from the cut-off member.
    let upstream = MockUpstream::start("0.0.0.0:0", MockOptions::default())
        .await
        .expect("mock upstream");
    let port = upstream.addr.port();
    let grpc: Vec<String> = (0..3)
        .map(|i| format!("{}:3320", net.cluster_ip(i)))
        .collect();
    let members: Vec<Member> = MEMBERS
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let upstream_url = format!("http://{}:{port}", net.host_ip(i));
            // Every entry on every member (replica_count 3) and a write
            // quorum of all three: with all members up each write is fully
            // acknowledged, and with one cut off no placement can find a
            // third replica (placement only ranks live members), so every
            // write on the majority side misses its quorum, whatever the
            // key and whatever the timing. member_count_quorum 2 lets the
            // majority keep using the cluster and puts the lone member below it.
            let mut config = member_config(&upstream_url, &grpc[i], &grpc, 3);
            config.server.listen = format!("{}:0", net.member_ip(i));
            config.server.admin_listen = format!("{}:0", net.member_ip(i));
            let ha = &mut config.cache.ha;
            ha.read_quorum = 2;
            ha.write_quorum = 3;
            ha.member_count_quorum = 2;
            Member::start(name, &net.namespace(name), &config)
        })
        .collect();
    let [a, b, c] = &members[..] else {
        unreachable!()
    };
    for member in &members {
        member.wait_for_members(3).await;
    }

    // Healthy: a write through A reaches all three replicas, C included.
    let before = question("before the partition");
    assert_eq!(a.post(&before).await.cache_status(), "miss");
    a.wait_for("the first write", |s| s["cluster"]["writes"] == 1)
        .await;
    assert_eq!(a.cluster("write_quorum_failures").await, 0);
    let reply = c.post(&before).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 1);

    // Cut C off. Each side sees the other down after its missed probes.
    net.set_port('c', false);
    let partitioned = Instant::now();
    a.wait_for_members(2).await;
    b.wait_for_members(2).await;
    let minority = c
        .wait_for("C alone and below quorum", |s| {
            s["cluster"]["members"] == 1 && s["cluster"]["quorum"] == false
        })
        .await;
    // /stats shows C alone before the writer thread has written the line.
    let down = c
        .relay
        .logged(1, |l| l.contains("member is down") && l.contains(&grpc[0]))
        .await;
    assert!(!down.is_empty(), "C logged A down: {:?}", c.logs());

    // The minority stays ready and says why it does not use the cluster.
    let ready = c.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        ready
            .text()
            .contains("cluster: below quorum (1 live members"),
        "{}",
        ready.text()
    );
    assert!(
        a.admin_get("/readyz")
            .await
            .text()
            .contains("cluster: ok (2 live members"),
        "the majority keeps its quorum"
    );
    // C still answers: the upstream once, then its own memory. The cluster
    // tier is skipped for the lookup and for the write (two skips), so
    // nothing is read from or written to peers and no quorum is missed.
    let skipped = minority["cluster"]["skipped_below_quorum"]
        .as_u64()
        .unwrap();
    let alone = question("asked on the minority side");
    let reply = c.post(&alone).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    assert_eq!(upstream.calls(), 2);
    let reply = c.post(&alone).await;
    assert_eq!(
        (
            reply.status,
            reply.cache_status(),
            reply.header("x-relaycache-tier")
        ),
        (200, "hit", "memory")
    );
    let after = c
        .wait_for("the lookup and the write skipped", |s| {
            s["cluster"]["skipped_below_quorum"] == skipped + 2
        })
        .await;
    for field in [
        "read_quorum_failures",
        "write_quorum_failures",
        "replica_write_failures",
    ] {
        assert_eq!(
            after["cluster"][field], minority["cluster"][field],
            "{field}"
        );
    }
    assert_eq!(after["cluster"]["write_quorum_failures"], 0);

    // The majority keeps working: an answer stored through A is a hit
    // through B, paid for once. Its write reaches the two live replicas,
    // one short of write_quorum, and that is reported.
    let majority = question("asked on the majority side");
    assert_eq!(a.post(&majority).await.cache_status(), "miss");
    let stats = a
        .wait_for("the write on the majority side", |s| {
            s["cluster"]["writes"] == 2
        })
        .await;
    assert_eq!(stats["cluster"]["write_quorum_failures"], 1, "{stats}");
    // C was no longer placed: no replica was even tried.
    assert_eq!(stats["cluster"]["replica_write_failures"], 0, "{stats}");
    let warning = missed_write_reported(a, 1).await;
    assert_eq!(
        (&warning["acks"], &warning["needed"], &warning["replicas"]),
        (&2.into(), &3.into(), &2.into()),
        "{warning}"
    );
    let reply = b.post(&majority).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 3);
    let cut_for = partitioned.elapsed();

    // Heal: C rejoins, every member sees three again, quorum returns.
    net.set_port('c', true);
    let healed = Instant::now();
    for member in &members {
        member.wait_for_members(3).await;
    }
    let rejoined = c
        .wait_for("C back in quorum", |s| s["cluster"]["quorum"] == true)
        .await;
    assert_eq!(rejoined["cluster"]["members"], 3);
    let ready = c.admin_get("/readyz").await.text();
    assert!(ready.contains("cluster: ok (3 live members"), "{ready}");
    let rejoin_took = healed.elapsed();
    // What the majority stored while C was away is a hit through C (from a
    // peer, or from C's memory if repair copied it there first).
    let reply = c.post(&majority).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 3);
    // And writes are fully acknowledged again.
    let healed_write = question("after the heal");
    assert_eq!(a.post(&healed_write).await.cache_status(), "miss");
    let stats = a
        .wait_for("the write after the heal", |s| s["cluster"]["writes"] == 3)
        .await;
    assert_eq!(stats["cluster"]["write_quorum_failures"], 1, "{stats}");
    let reply = c.post(&healed_write).await;
    assert_eq!(
        (
            reply.status,
            reply.cache_status(),
            reply.header("x-relaycache-tier")
        ),
        (200, "hit", "memory"),
        "C holds its replica of a write made after the heal"
    );
    assert_eq!(upstream.calls(), 4);
    println!(
        "partition held {cut_for:?}; rejoined {rejoin_took:?} after the heal; test took {:?}",
        started.elapsed()
    );
    drop(members);
    drop(net);
}
