//! The process: the command line, logs, and graceful shutdown.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn relaycache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(args)
        .output()
        .expect("run relaycache")
}

#[test]
fn config_init_prints_a_valid_commented_config() {
    let init = relaycache(&["config", "init"]);
    assert!(init.status.success());
    let text = String::from_utf8(init.stdout).unwrap();
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            > 40,
        "every key is commented"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaycache.yaml");
    std::fs::write(&path, &text).unwrap();
    let validate = relaycache(&["config", "validate", path.to_str().unwrap()]);
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
}

#[test]
fn config_validate_names_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: nowhere\nupstreams:\n  - name: x\n    url: ftp://x\ncache:\n  ttl: 0s\n",
    )
    .unwrap();
    let out = relaycache(&["config", "validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in ["server.listen:", "upstreams[0].url:", "cache.ttl:"] {
        assert!(stderr.contains(path), "{path} not named in:\n{stderr}");
    }

    std::fs::write(&path, "cache:\n  memory:\n    max_cst: 5\n").unwrap();
    let out = relaycache(&["config", "validate", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cache.memory") && stderr.contains("max_cst"),
        "{stderr}"
    );

    let serve = relaycache(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!serve.status.success(), "serve refuses a bad config");
    let inline = Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .arg("serve")
        .env("RELAYCACHE_CONFIG_YAML", "cache:\n  mode: sometimes\n")
        .output()
        .unwrap();
    assert!(
        !inline.status.success(),
        "serve refuses a bad inline config"
    );
    let said = String::from_utf8_lossy(&inline.stderr);
    assert!(
        said.contains("RELAYCACHE_CONFIG_YAML") && said.contains("cache.mode"),
        "{said}"
    );
}

#[tokio::test]
async fn one_log_line_per_request_and_no_credentials() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.log.level = "debug".into();
    let relay = Relay::start(&config);
    let secret = "sk-ant-api03-SECRET-do-not-log";
    let answer = post_messages(&relay, secret, &question("log"), &[]).await;
    post_messages(&relay, secret, &question("log"), &[]).await;
    send(
        http::Method::GET,
        &relay.url("/v1/models?api_key=QUERYSECRET"),
        &[("authorization", &format!("Bearer {secret}"))],
        "",
    )
    .await;
    let lines = relay.wait_for_access_logs(3).await;
    assert_eq!(lines.len(), 3);
    let (miss, hit, models) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(miss["cache"], "miss");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["tier"], "memory");
    for line in [miss, hit] {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/v1/messages");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], answer.body.len());
        assert_eq!(line["completed"], true);
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        models["path"], "/v1/models",
        "the query string is not logged"
    );
    let all = relay.logs().join("\n");
    assert!(
        !all.contains("SECRET"),
        "a credential reached the log:\n{all}"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let upstream = mock().await;
    let mut relay = Relay::start(&config_for(&upstream.url()));
    let url = relay.url("/v1/messages");
    let in_flight = tokio::spawn(async move {
        send(
            http::Method::POST,
            &url,
            &[("x-api-key", "k"), ("x-mock-gate", "drain")],
            question("drain"),
        )
        .await
    });
    while upstream.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(relay.addr).await.is_err(),
        "no new connections once shutdown began"
    );
    upstream.release("drain");
    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    let status = tokio::task::spawn_blocking(move || relay.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queued_log_line_is_written_before_exit() {
    let upstream = mock().await;
    let relay = std::sync::Arc::new(Relay::start(&config_for(&upstream.url())));
    // A burst of hits, then SIGTERM at once: the lines still queued for
    // the log writer must reach standard output before the process ends.
    let body = question("logged burst");
    let replies = post_concurrently(&relay, 400, &body, &[]).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let scraped = get(&relay.admin_url("/metrics")).await.text();
    assert_eq!(
        metric_in(&scraped, "relaycache_log_lines_dropped_total"),
        Some(0.0),
        "the dropped-lines counter is exported and zero at this rate"
    );
    let mut relay = std::sync::Arc::into_inner(relay).expect("no other holder");
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(20)).success());
    // The reader thread may still be draining the closed pipe.
    let mut logged = 0;
    for _ in 0..100 {
        logged = relay.access_logs().len();
        if logged >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(logged, 400, "access-log lines lost at shutdown");
    assert!(relay
        .logs()
        .iter()
        .any(|l| l.contains("relaycache stopped")));
}
