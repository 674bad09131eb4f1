//! The reserve tier through real processes: a file store that survives a
//! restart, a real S3-compatible server (moto), and a store that is down,
//! refuses access, or runs out of disk. Requests never fail because of it.

use std::time::Duration;

use crate::common::*;
use relaycache::config::Config;

fn with_reserve(upstream: &MockUpstream, url: &str) -> Config {
    let mut config = config_for(&upstream.url());
    config.cache.reserve.url = url.to_string();
    config.cache.reserve.sweep_interval = Duration::from_millis(200);
    config
}

fn file_url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[tokio::test]
async fn a_restarted_process_answers_from_the_file_reserve() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_reserve(&upstream, &file_url(dir.path()));

    let mut first = Relay::start(&config);
    let original = post_messages(&first, "k", &question("kept"), &[]).await;
    assert_eq!(original.cache_status(), "miss");
    first
        .wait_for_stats("reserve write", |s| s["reserve"]["writes"] == 1)
        .await;
    first.terminate();
    assert!(first.wait_exit(Duration::from_secs(15)).success());

    let second = Relay::start(&config);
    let restored = post_messages(&second, "k", &question("kept"), &[]).await;
    assert_eq!(restored.cache_status(), "hit");
    assert_eq!(restored.header("x-relaycache-tier"), "reserve");
    assert_eq!(restored.body, original.body);
    assert_eq!(restored.header("content-type"), "application/json");
    let promoted = post_messages(&second, "k", &question("kept"), &[]).await;
    assert_eq!(
        promoted.header("x-relaycache-tier"),
        "memory",
        "promoted to memory"
    );
    assert_eq!(upstream.calls(), 1);

    let logs = second.wait_for_access_logs(2).await;
    assert_eq!(logs[0]["reserve_used"], true);
    assert_eq!(logs[0]["tier"], "reserve");
    let stats = second
        .wait_for_stats("sweep census", |s| s["reserve"]["entries"] == 1)
        .await;
    assert_eq!(stats["reserve"]["reads"], 1);
    assert_eq!(
        stats["reserve"]["upstream_bytes_saved"],
        original.body.len()
    );
    assert!(stats["reserve"]["output_tokens_saved"].as_u64().unwrap() > 0);
    // Another credential never reads it, in any tier.
    assert_eq!(
        post_messages(&second, "other", &question("kept"), &[])
            .await
            .cache_status(),
        "miss"
    );
}

#[tokio::test]
async fn admission_respects_min_ttl_no_store_and_purge() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_reserve(&upstream, &file_url(dir.path()));
    config.server.admin_token = "t".into();
    let relay = Relay::start(&config);
    post_messages(
        &relay,
        "k",
        &question("short"),
        &[("x-relaycache-ttl", "1m")],
    )
    .await;
    post_messages(
        &relay,
        "k",
        &question("nostore"),
        &[("cache-control", "no-store")],
    )
    .await;
    let kept = post_messages(&relay, "k", &question("long"), &[]).await;
    let stats = relay
        .wait_for_stats("one write", |s| s["reserve"]["writes"] == 1)
        .await;
    assert_eq!(
        stats["reserve"]["not_admitted"], 1,
        "TTL below min_ttl stays out; no-store is never stored"
    );

    let key = kept.header("x-relaycache-key");
    let purge = send(
        http::Method::DELETE,
        &relay.admin_url(&format!("/cache/{key}")),
        &[("authorization", "Bearer t")],
        "",
    )
    .await;
    assert_eq!(purge.status, 200);
    assert_eq!(
        post_messages(&relay, "k", &question("long"), &[])
            .await
            .cache_status(),
        "miss",
        "purge removes the entry from every tier"
    );
}

#[tokio::test]
async fn s3_compatible_store_round_trip() {
    let Some(s3) = S3Server::start(&[]) else {
        return;
    };
    s3.create_bucket("relaycache").await;
    let upstream = mock().await;
    let mut config = with_reserve(&upstream, "s3://relaycache/answers");
    config.cache.reserve.options = s3.options("relaycache-test");

    let first = Relay::start(&config);
    let original = post_messages(&first, "k", &question("s3"), &[]).await;
    first
        .wait_for_stats("reserve write", |s| s["reserve"]["writes"] == 1)
        .await;
    drop(first);

    let second = Relay::start(&config);
    let restored = post_messages(&second, "k", &question("s3"), &[]).await;
    assert_eq!(restored.header("x-relaycache-tier"), "reserve");
    assert_eq!(restored.body, original.body);
    assert_eq!(second.stats().await["reserve"]["failures"], 0);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn s3_credentials_come_from_the_environment_as_kubernetes_passes_them() {
    // On Kubernetes the reserve's credentialsSecret reaches the members as
    // AWS_* environment variables, and cache.reserve.options must not hold
    // them (they would land in a ConfigMap).
    let Some(s3) = S3Server::start(&[]) else {
        return;
    };
    s3.create_bucket("relaycache-env").await;
    let upstream = mock().await;
    let mut config = with_reserve(&upstream, "s3://relaycache-env/answers");
    let mut options = s3.options("unused");
    options.remove("aws_access_key_id");
    options.remove("aws_secret_access_key");
    config.cache.reserve.options = options;
    let relay = Relay::start_prefixed(
        &config,
        &[
            "env",
            "AWS_ACCESS_KEY_ID=relaycache-env-key",
            "AWS_SECRET_ACCESS_KEY=relaycache-test-secret",
            // Not a store option: ignored, not refused.
            "AWS_PAGER=",
        ],
    );
    post_messages(&relay, "k", &question("env-credentials"), &[]).await;
    relay
        .wait_for_stats("a reserve write with the environment's credentials", |s| {
            s["reserve"]["writes"] == 1
        })
        .await;
    assert_eq!(relay.stats().await["reserve"]["failures"], 0);
    let logs = relay.logs().join("\n");
    assert!(
        !logs.contains("relaycache-test-secret"),
        "the secret is never logged"
    );
}

/// Every request succeeds from the upstream; the store's trouble shows in
/// the failure counter.
async fn requests_survive(relay: &Relay, upstream: &MockUpstream) {
    for i in 0..3 {
        let reply = post_messages(relay, "k", &question(&format!("fault-{i}")), &[]).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
        let again = post_messages(relay, "k", &question(&format!("fault-{i}")), &[]).await;
        assert_eq!(
            (again.status, again.header("x-relaycache-tier")),
            (200, "memory")
        );
    }
    assert_eq!(upstream.calls(), 3);
    relay
        .wait_for_stats("reserve failures counted", |s| {
            s["reserve"]["failures"].as_u64() >= Some(3)
        })
        .await;
}

#[tokio::test]
async fn an_unreachable_store_costs_nothing_but_a_metric() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let upstream = mock().await;
    let mut config = with_reserve(&upstream, "s3://relaycache/answers");
    config.cache.reserve.options = [
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "k".into()),
        ("aws_secret_access_key", "s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    config.cache.reserve.read_timeout = Duration::from_millis(300);
    config.cache.reserve.write_timeout = Duration::from_millis(500);
    let relay = Relay::start(&config);
    requests_survive(&relay, &upstream).await;
}

#[tokio::test]
async fn access_denied_is_counted_not_served() {
    // With INITIAL_NO_AUTH_ACTION_COUNT=0 moto checks credentials, and the
    // ones relaycache presents belong to nobody.
    let Some(s3) = S3Server::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let upstream = mock().await;
    let mut config = with_reserve(&upstream, "s3://relaycache/answers");
    config.cache.reserve.options = s3.options("AKIANOBODY");
    let relay = Relay::start(&config);
    requests_survive(&relay, &upstream).await;
    assert!(!relay
        .logged(1, |l| l.contains("reserve store operation failed"))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_full_disk_is_counted_and_requests_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // 8 KiB of tmpfs: no 40 KB answer fits, even compressed (about 16 KB).
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount rights)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let upstream = MockUpstream::start(
        "127.0.0.1:0",
        MockOptions {
            answer_bytes: 40_000,
            ..MockOptions::default()
        },
    )
    .await
    .unwrap();
    let relay = Relay::start(&with_reserve(&upstream, &file_url(dir.path())));
    requests_survive(&relay, &upstream).await;
}
