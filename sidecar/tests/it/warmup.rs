//! Warm start on real processes: a member that starts empty pulls the
//! entries it owns from the other members and from the reserve before
//! `/readyz` says ready, so a rolling restart gated on readiness (what a
//! StatefulSet does) loses no answers. Also the cluster-wide export that
//! reads the other members through the same call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use relaycache::config::Config;

use crate::common::*;

/// Keys summed over members: each key is held by its owners only when
/// every write went through a client.
async fn held_copies(members: &[Relay]) -> u64 {
    let mut held = 0;
    for member in members {
        held += member.stats().await["key_count"].as_u64().unwrap_or(0);
    }
    held
}

/// Sends every question through `relay` (at most 8 at a time) and waits
/// until the members hold `copies` entries in all.
async fn fill(relay: &Relay, members: &[Relay], questions: &[String], answer_bytes: &str) {
    let statuses: Vec<u16> = futures::stream::iter(questions)
        .map(|body| async move {
            post_messages(relay, "k", body, &[("x-mock-answer-bytes", answer_bytes)])
                .await
                .status
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|&s| s == 200), "a write failed");
    let copies = 2 * questions.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while held_copies(members).await < copies {
        assert!(
            Instant::now() < deadline,
            "members hold {} of {copies} copies",
            held_copies(members).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member restarted from nothing (kill -9: no handoff of its own) is
/// not ready until it holds what it owns, which it pulled from the other
/// members rather than waiting for their repair (held to 1 entry a
/// second here, so it cannot be what filled it).
#[tokio::test]
async fn a_member_restarted_empty_pulls_what_it_owns_before_it_is_ready() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let config = |i: usize, repair_rate: u32| {
        let mut config = member_config(&upstream.url(), &addresses[i], &addresses, 2);
        config.cache.ha.repair_rate = repair_rate;
        config
    };
    let mut members: Vec<Relay> = (0..3).map(|i| Relay::start(&config(i, 1))).collect();
    for member in &members {
        member.wait_for_members(3).await;
    }
    let writer = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    writer.wait_for_members(3).await;
    let questions: Vec<String> = (0..300).map(|i| question(&format!("warm {i}"))).collect();
    fill(&writer, &members, &questions, "200").await;
    let owned = members[1].stats().await["key_count"].as_u64().unwrap();
    assert!(owned > 100, "member 1 owns {owned} of 300 keys");

    members[1].kill_hard();
    // Pulling at 200 entries a second takes about a second: long enough
    // to see /readyz say so.
    members[1] = Relay::start(&config(1, 200));
    let (warming, took) = members[1].wait_ready(Duration::from_secs(60)).await;
    assert!(warming, "/readyz said ready at once ({took:?})");
    let stats = members[1].stats().await;
    let pulled = stats["cluster"]["warmed_from_members"].as_u64().unwrap();
    let mut repaired = 0;
    for other in [&members[0], &members[2]] {
        repaired += other.stats().await["cluster"]["repaired"].as_u64().unwrap();
    }
    assert_eq!(stats["key_count"], owned, "{stats}");
    assert!(
        pulled + repaired >= owned && pulled + 10 >= owned,
        "pulled {pulled}, repaired {repaired}, owned {owned}"
    );
    assert_eq!(stats["cluster"]["warming"], false, "{stats}");
    assert!(
        !members[1]
            .logged(1, |l| l.contains("warm start done"))
            .await
            .is_empty(),
        "no summary line"
    );
    // What it pulled answers as its own: through the member, no upstream.
    let calls = upstream.calls();
    for body in &questions {
        let reply = post_messages(&members[1], "k", body, &[]).await;
        assert_eq!(reply.cache_status(), "hit");
    }
    assert_eq!(upstream.calls(), calls);
}

/// A member alone with a reserve (a one-member cluster, or the first
/// member of a new one) fills its memory from the reserve before it is
/// ready: its first answers after a restart come from memory.
#[tokio::test]
async fn a_member_warms_its_memory_from_the_reserve() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = member_addresses(1);
    let config = {
        let mut config = member_config(&upstream.url(), &grpc[0], &grpc, 2);
        config.cache.reserve.url = format!("file://{}", dir.path().display());
        config
    };
    let mut first = Relay::start(&config);
    first.wait_for_members(1).await;
    let questions: Vec<String> = (0..40).map(|i| question(&format!("kept {i}"))).collect();
    for body in &questions {
        assert_eq!(post_messages(&first, "k", body, &[]).await.status, 200);
    }
    first
        .wait_for_stats("40 reserve writes", |s| s["reserve"]["writes"] == 40)
        .await;
    first.kill_hard();

    let second = Relay::start(&config);
    second.wait_ready(Duration::from_secs(60)).await;
    let stats = second.stats().await;
    assert_eq!(stats["cluster"]["warmed_from_reserve"], 40, "{stats}");
    assert_eq!(stats["key_count"], 40, "{stats}");
    for body in &questions {
        let reply = post_messages(&second, "k", body, &[]).await;
        assert_eq!(
            (reply.cache_status(), reply.header("x-relaycache-tier")),
            ("hit", "memory")
        );
    }
    assert_eq!(upstream.calls(), 40);
}

/// How a rolling restart is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// SIGTERM: the member leaves and hands off, as Kubernetes stops a pod.
    Graceful,
    /// SIGKILL: a crash, or a node lost; no handoff.
    Crash,
}

/// What a reader saw while every member was restarted in turn.
#[derive(Debug, Default)]
struct RollingFigures {
    requests: u64,
    hits: u64,
    /// Hits from the reader's own memory, which say nothing of the cluster.
    own_memory_hits: u64,
    upstream_calls: u64,
    took: Duration,
    /// Of every answer asked once more after the last member is ready,
    /// through a new client, those still held: what the restart kept.
    kept: u64,
}

impl RollingFigures {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.requests.max(1) as f64
    }

    fn kept_ratio(&self, entries: usize) -> f64 {
        self.kept as f64 / entries.max(1) as f64
    }
}

/// Three members holding `entries` answers (each on its two owners), a
/// reader asking for them in turn, 4 at a time, while each member is
/// restarted and the next waits until `/readyz` says ready, as a
/// StatefulSet's rolling update does.
async fn rolling_restart(entries: usize, warm: bool, restart: Restart) -> RollingFigures {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let config = |i: usize| {
        let mut config = member_config(&upstream.url(), &addresses[i], &addresses, 2);
        // Fast enough that a warm start of thousands of entries takes
        // seconds, the same in both runs.
        config.cache.ha.repair_rate = 5000;
        if !warm {
            config.cache.ha.warmup_timeout = Duration::ZERO;
        }
        config
    };
    let mut members: Vec<Relay> = (0..3).map(|i| Relay::start(&config(i))).collect();
    for member in &members {
        member.wait_for_members(3).await;
    }
    // Answers large enough that the reader's 1 MiB memory holds few.
    let answer_bytes = if entries > 5000 { "1024" } else { "4096" };
    let questions: Arc<Vec<String>> = Arc::new(
        (0..entries)
            .map(|i| question(&format!("rolling {i}")))
            .collect(),
    );
    {
        let writer = Relay::start(&client_config(&upstream.url(), &addresses, 2));
        writer.wait_for_members(3).await;
        fill(&writer, &members, &questions, answer_bytes).await;
    }
    let reader: Arc<Relay> = Arc::new({
        let mut config: Config = client_config(&upstream.url(), &addresses, 2);
        config.cache.memory.max_cost = 1024 * 1024;
        config.cache.max_entry_bytes = 64 * 1024;
        Relay::start(&config)
    });
    reader.wait_for_members(3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let load = {
        let (reader, stop, counts, questions) = (
            Arc::clone(&reader),
            Arc::clone(&stop),
            Arc::clone(&counts),
            Arc::clone(&questions),
        );
        let answer_bytes = answer_bytes.to_string();
        tokio::spawn(async move {
            let next = AtomicU64::new(0);
            let one = || async {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % questions.len();
                let reply = post_messages(
                    &reader,
                    "k",
                    &questions[i],
                    &[("x-mock-answer-bytes", &answer_bytes)],
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                counts[0].fetch_add(1, Ordering::Relaxed);
                if reply.cache_status() == "hit" {
                    counts[1].fetch_add(1, Ordering::Relaxed);
                    if reply.header("x-relaycache-tier") == "memory" {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                futures::join!(one(), one(), one(), one());
            }
        })
    };

    let calls_before = upstream.calls();
    let started = Instant::now();
    for (i, member) in members.iter_mut().enumerate() {
        match restart {
            Restart::Crash => member.kill_hard(),
            Restart::Graceful => {
                member.terminate();
                let status =
                    tokio::task::block_in_place(|| member.wait_exit(Duration::from_secs(30)));
                assert!(status.success(), "member {i} exited with {status}");
            }
        }
        *member = tokio::task::block_in_place(|| Relay::start(&config(i)));
        member.wait_ready(Duration::from_secs(120)).await;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the reader's load");
    let upstream_calls = upstream.calls() - calls_before;
    let checker = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    checker.wait_for_members(3).await;
    let kept = futures::stream::iter(questions.iter())
        .map(|body| async {
            let reply = post_messages(
                &checker,
                "k",
                body,
                &[("x-mock-answer-bytes", answer_bytes)],
            )
            .await;
            u64::from(reply.cache_status() == "hit")
        })
        .buffer_unordered(8)
        .fold(0, |sum, hit| async move { sum + hit })
        .await;
    RollingFigures {
        kept,
        requests: counts[0].load(Ordering::Relaxed),
        hits: counts[1].load(Ordering::Relaxed),
        own_memory_hits: counts[2].load(Ordering::Relaxed),
        upstream_calls,
        took,
    }
}

/// With warm start, a rolling restart of crashing members gated on
/// readiness answers everything from the cache: each member is back to
/// its share before the next one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_gated_on_readiness_loses_no_answers() {
    let figures = rolling_restart(1500, true, Restart::Crash).await;
    println!("warm start, crash, 1500 entries: {figures:?}");
    assert!(figures.requests > 100, "{figures:?}");
    assert!(
        figures.hit_ratio() >= 0.99,
        "hit ratio {:.4} during the rolling restart: {figures:?}",
        figures.hit_ratio()
    );
    assert_eq!(figures.kept, 1500, "answers lost: {figures:?}");
}

/// The figures of the closing note: the hit ratio during a rolling
/// restart of 3 members holding `RELAYCACHE_WARMUP_ENTRIES` (20,000)
/// entries, without and with warm start, after crashes and after graceful
/// stops. Slow (about 11 minutes); docs/cluster.md has the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of minutes: cargo test -p relaycache --test it -- --ignored warmup::warm_start_figures"]
async fn warm_start_figures() {
    let entries = std::env::var("RELAYCACHE_WARMUP_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rows = Vec::new();
    for restart in [Restart::Crash, Restart::Graceful] {
        for warm in [false, true] {
            let figures = rolling_restart(entries, warm, restart).await;
            println!("{restart:?} warm={warm}: {figures:?}");
            rows.push((restart, warm, figures));
        }
    }
    println!("\n{entries} entries, 3 members, replica_count 2, repair_rate 5000");
    println!("| restart | warm start | restart took | requests during | hit ratio during | of which the reader's own memory | upstream calls during | answers kept after |");
    println!("|---|---|---|---|---|---|---|---|");
    for (restart, warm, f) in rows {
        println!(
            "| {restart:?} | {} | {:.1} s | {} | {:.2}% | {} | {} | {:.2}% |",
            if warm { "on" } else { "off" },
            f.took.as_secs_f64(),
            f.requests,
            100.0 * f.hit_ratio(),
            f.own_memory_hits,
            f.upstream_calls,
            100.0 * f.kept_ratio(entries)
        );
    }
}
