//! Answers only from the cache: `Cache-Control: only-if-cached`,
//! `cache.replay: strict` and `x-relaycache: record`, in single mode, on
//! members and on clients; and the Anthropic SDK suite of
//! `examples/sdk-replay` recording once, then replaying with no upstream.

use std::path::PathBuf;
use std::time::Duration;

use relaycache::config::Replay;

use crate::common::*;

const ONLY_IF_CACHED: (&str, &str) = ("cache-control", "only-if-cached");

/// Asserts the 504 a request only the cache may answer gets on a miss.
fn assert_not_cached(reply: &Reply) {
    assert_eq!(
        (reply.status, reply.cache_status()),
        (504, "miss"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("x-should-retry"), "false");
    let body = reply.json();
    assert_eq!(body["type"], "error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not in the cache") && message.contains("x-relaycache: record"),
        "{message}"
    );
}

#[tokio::test]
async fn only_if_cached_answers_a_miss_with_504_and_never_calls_the_upstream() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let body = question("only if cached");
    assert_not_cached(&post_messages(&relay, "k", &body, &[ONLY_IF_CACHED]).await);
    assert_eq!(upstream.calls(), 0);

    let stored = post_messages(&relay, "k", &body, &[]).await;
    assert_eq!(stored.cache_status(), "miss");
    let hit = post_messages(&relay, "k", &body, &[ONLY_IF_CACHED]).await;
    assert_eq!((hit.status, hit.cache_status()), (200, "hit"));
    assert_eq!(hit.body, stored.body);
    // Another tenant's only-if-cached request is a miss too.
    assert_not_cached(&post_messages(&relay, "other", &body, &[ONLY_IF_CACHED]).await);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        relay
            .metric("relaycache_requests_total{cache_status=\"miss\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn strict_replay_answers_only_from_the_cache_and_record_fills_it() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.replay = Replay::Strict;
    let relay = Relay::start(&config);
    let body = question("replayed");
    assert_not_cached(&post_messages(&relay, "k", &body, &[]).await);
    assert_eq!(upstream.calls(), 0);

    let record = ("x-relaycache", "record");
    let recorded = post_messages(&relay, "k", &body, &[record]).await;
    assert_eq!((recorded.status, recorded.cache_status()), (200, "refresh"));
    let replayed = post_messages(&relay, "k", &body, &[]).await;
    assert_eq!((replayed.status, replayed.cache_status()), (200, "hit"));
    assert_eq!(replayed.body, recorded.body);
    // Recording again calls the upstream again and replaces the answer.
    let again = post_messages(&relay, "k", &body, &[record]).await;
    assert_eq!(again.mock_call(), "2");
    assert_eq!(
        post_messages(&relay, "k", &body, &[]).await.mock_call(),
        "2"
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn members_and_clients_answer_only_if_cached_from_the_cluster() {
    let upstream = mock().await;
    let addresses = member_addresses(2);
    let members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| Relay::start(&member_config(&upstream.url(), grpc, &addresses, 2)))
        .collect();
    for member in &members {
        member.wait_for_members(2).await;
    }
    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    client.wait_for_members(2).await;
    let body = question("cluster replay");
    assert_not_cached(&post_messages(&client, "k", &body, &[ONLY_IF_CACHED]).await);
    assert_not_cached(&post_messages(&members[1], "k", &body, &[ONLY_IF_CACHED]).await);

    post_messages(&members[0], "k", &body, &[]).await;
    members[0]
        .wait_for_stats("the write", |s| s["cluster"]["writes"] == 1)
        .await;
    // The client holds nothing itself: the answer comes from a member.
    let hit = post_messages(&client, "k", &body, &[ONLY_IF_CACHED]).await;
    assert_eq!(
        (
            hit.status,
            hit.cache_status(),
            hit.header("x-relaycache-tier")
        ),
        (200, "hit", "peer")
    );
    // The other member is a replica (replica_count 2 of 2).
    let hit = post_messages(&members[1], "k", &body, &[ONLY_IF_CACHED]).await;
    assert_eq!((hit.status, hit.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 1);
}

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/sdk-replay")
}

/// Runs the example suite against `relay` with the official SDK; its
/// combined output, and whether it passed.
async fn run_suite(relay: &Relay, args: &[&str]) -> (bool, String) {
    let base_url = relay.url("");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("python3")
            .args(&args)
            .current_dir(example_dir())
            .env("ANTHROPIC_BASE_URL", base_url.trim_end_matches('/'))
            .env("ANTHROPIC_API_KEY", "sk-ant-example")
            .output()
            .expect("python3 runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .expect("the suite's thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_suite_records_once_then_replays_with_no_upstream() {
    let sdk = std::process::Command::new("python3")
        .args(["-c", "import anthropic"])
        .output()
        .expect("python3 runs");
    assert!(
        sdk.status.success(),
        "the official Anthropic SDK for Python is missing; make test-deps installs it (pip install anthropic)"
    );
    let upstream = mock().await;
    let reserve = tempfile::tempdir().unwrap();
    let mut config = config_for(&upstream.url());
    config.cache.ttl = Duration::from_secs(24 * 3600);
    config.cache.reserve.url = format!("file://{}", reserve.path().display());

    // Record: the provider (the mock) is there.
    let mut recorder = Relay::start(&config);
    let (passed, output) = run_suite(&recorder, &["-m", "unittest", "test_summaries.py"]).await;
    assert!(passed, "recording run failed:\n{output}");
    let calls = upstream.calls();
    assert!(calls >= 2, "{calls} upstream calls while recording");
    recorder.terminate();
    assert!(recorder.wait_exit(Duration::from_secs(20)).success());

    // Replay: no upstream at all, strict replay, a new process.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut replay_config = config_for(&dead);
    replay_config.cache = config.cache.clone();
    replay_config.cache.replay = Replay::Strict;
    drop(upstream);
    let replayer = Relay::start(&replay_config);
    let (passed, output) = run_suite(&replayer, &["-m", "unittest", "test_summaries.py"]).await;
    assert!(passed, "replay run failed:\n{output}");

    // A prompt never recorded: the SDK raises, naming the cause.
    let (passed, output) = run_suite(
        &replayer,
        &[
            "-c",
            "import test_summaries as t\n\
             try:\n    t.ask('never recorded')\n\
             except Exception as e:\n    print(type(e).__name__, e)\n    raise SystemExit(0)\n\
             raise SystemExit('no error')",
        ],
    )
    .await;
    assert!(passed, "{output}");
    assert!(
        output.contains("Error code: 504") && output.contains("not in the cache"),
        "{output}"
    );
}
