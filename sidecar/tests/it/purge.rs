//! Scoped purge: `DELETE /cache?namespace=…&model=…&tenant=…&created_…`
//! and `relaycache cache purge` remove what they select, from memory, the
//! reserve and every member, and nothing else.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::*;
use http::Method;

const TOKEN: &str = "purge-token";

fn relaycache(args: &[&str]) -> Output {
    relaycache_with_token(args, TOKEN)
}

fn asked(model: &str, tag: &str) -> String {
    serde_json::json!({"model": model, "max_tokens": 8,
        "messages": [{"role": "user", "content": tag}]})
    .to_string()
}

fn purged(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("the purge's summary is JSON")
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339()
}

/// A request: its credential, body and extra headers.
type Asked = (
    &'static str,
    String,
    &'static [(&'static str, &'static str)],
);

/// What the cache answered to an entry's request.
async fn status_of(relay: &Relay, entry: &Asked) -> String {
    let (credential, body, extra) = entry;
    post_messages(relay, credential, body, extra)
        .await
        .cache_status()
        .to_string()
}

#[tokio::test]
async fn a_scoped_purge_removes_only_what_it_selects_from_memory_and_the_reserve() {
    let upstream = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&upstream.url());
    config.server.admin_token = TOKEN.into();
    config.cache.reserve.url = format!("file://{}", dir.path().display());
    let relay = Relay::start(&config);
    const EVAL: &[(&str, &str)] = &[("x-relaycache-namespace", "eval")];
    let entries: [Asked; 4] = [
        ("k1", asked("claude-test", "a"), EVAL),
        ("k1", asked("claude-test", "b"), &[]),
        ("k1", asked("gpt-test", "c"), EVAL),
        ("k2", asked("claude-test", "d"), EVAL),
    ];
    for (credential, body, extra) in &entries {
        assert_eq!(
            post_messages(&relay, credential, body, extra)
                .await
                .cache_status(),
            "miss"
        );
    }
    relay
        .wait_for_stats("four reserve writes", |s| s["reserve"]["writes"] == 4)
        .await;

    // Namespace and model together: only entry 0 (and 3, another tenant's).
    let admin = relay.admin_url("");
    let summary = purged(&relaycache(&[
        "cache",
        "purge",
        "--namespace",
        "eval",
        "--model",
        "claude-test",
        "--admin",
        &admin,
    ]));
    assert_eq!(
        summary["removed"], 4,
        "two from memory, two from the reserve: {summary}"
    );
    assert_eq!(summary["by_tier"]["memory"], 2, "{summary}");
    assert_eq!(summary["by_tier"]["reserve"], 2, "{summary}");
    // A purged entry is gone from the reserve too: the lookup reaches the upstream.
    assert_eq!(status_of(&relay, &entries[0]).await, "miss");
    assert_eq!(status_of(&relay, &entries[1]).await, "hit");
    assert_eq!(status_of(&relay, &entries[2]).await, "hit");
    assert_eq!(status_of(&relay, &entries[3]).await, "miss");

    // By tenant: only k2's.
    let tenant = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_relaycache"))
            .args(["key", "tenant"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"k2\n")?;
                child.wait_with_output()
            })
            .unwrap()
            .stdout,
    )
    .unwrap();
    let by_tenant = send(
        Method::DELETE,
        &relay.admin_url(&format!("/cache?tenant={}", tenant.trim())),
        &[("authorization", "Bearer purge-token")],
        "",
    )
    .await;
    assert_eq!(by_tenant.status, 200, "{}", by_tenant.text());
    assert_eq!(by_tenant.json()["by_tier"]["memory"], 1);
    assert_eq!(status_of(&relay, &entries[3]).await, "miss");
    assert_eq!(
        status_of(&relay, &entries[2]).await,
        "hit",
        "k1's entries stay"
    );

    // By time: entries created before now; one made after stays.
    relay
        .wait_for_stats("every reserve write", |s| {
            s["reserve"]["writes_in_flight"] == 0
        })
        .await;
    let cut = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = asked("claude-test", "made after the cut");
    post_messages(&relay, "k1", &late, &[]).await;
    let summary = purged(&relaycache(&[
        "cache",
        "purge",
        "--created-before",
        &rfc3339(cut),
        "--admin",
        &admin,
    ]));
    assert!(
        summary["by_tier"]["memory"].as_u64().unwrap() >= 4,
        "{summary}"
    );
    assert_eq!(status_of(&relay, &entries[1]).await, "miss");
    assert_eq!(
        post_messages(&relay, "k1", &late, &[]).await.cache_status(),
        "hit"
    );
}

#[tokio::test]
async fn bad_filters_and_missing_tokens_are_refused_and_remove_nothing() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.server.admin_token = TOKEN.into();
    let relay = Relay::start(&config);
    post_messages(&relay, "k", &question("kept"), &[]).await;
    let auth = [("authorization", "Bearer purge-token")];
    for (query, says) in [
        ("team=a", "unknown purge filter"),
        ("tenant=nothex", "64 hex"),
        ("created_before=yesterday", "RFC 3339"),
    ] {
        let reply = send(
            Method::DELETE,
            &relay.admin_url(&format!("/cache?{query}")),
            &auth,
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{query}");
        assert!(reply.text().contains(says), "{query}: {}", reply.text());
    }
    let no_token = send(
        Method::DELETE,
        &relay.admin_url("/cache?model=claude-test"),
        &[],
        "",
    )
    .await;
    assert_eq!(no_token.status, 401);
    let nothing_named = relaycache(&["cache", "purge", "--admin", &relay.admin_url("")]);
    assert_eq!(nothing_named.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing_named.stderr).contains("--all"));
    let unreachable = relaycache(&["cache", "purge", "--all", "--admin", "http://127.0.0.1:9"]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
    assert_eq!(relay.stats().await["key_count"], 1, "nothing was removed");
}

#[tokio::test]
async fn a_purge_at_one_member_removes_the_selection_from_every_member() {
    let upstream = mock().await;
    let (members, _) = members_with_admin_token(&upstream.url(), 3, TOKEN).await;
    let bodies: Vec<String> = (0..6)
        .map(|i| asked("claude-test", &format!("q{i}")))
        .collect();
    let eval = [("x-relaycache-namespace", "eval")];
    for (i, body) in bodies.iter().enumerate() {
        let extra: &[(&str, &str)] = if i % 2 == 0 { &eval } else { &[] };
        post_messages(&members[0], "k", body, extra).await;
        // Read through every member, so each holds a copy in memory.
        for member in &members[1..] {
            assert_eq!(
                post_messages(member, "k", body, extra).await.cache_status(),
                "hit"
            );
        }
    }
    let calls = upstream.calls();
    let summary = purged(&relaycache(&[
        "cache",
        "purge",
        "--namespace",
        "eval",
        "--admin",
        &members[1].admin_url(""),
    ]));
    assert!(
        summary["by_tier"]["peer"].as_u64().unwrap() >= 6,
        "{summary}"
    );
    for (i, body) in bodies.iter().enumerate() {
        let extra: &[(&str, &str)] = if i % 2 == 0 { &eval } else { &[] };
        let expected = if i % 2 == 0 { "miss" } else { "hit" };
        let reply = post_messages(&members[2], "k", body, extra).await;
        assert_eq!(reply.cache_status(), expected, "entry {i}");
    }
    assert_eq!(
        upstream.calls(),
        calls + 3,
        "only the purged entries were asked again"
    );
}

#[tokio::test]
async fn an_answer_a_client_stored_is_purged_by_its_requests_scope() {
    let upstream = mock().await;
    let grpc = member_addresses(1);
    let mut config = member_config(&upstream.url(), &grpc[0], &grpc, 1);
    config.server.admin_token = TOKEN.into();
    let member = Relay::start(&config);
    member.wait_for_members(1).await;
    let client = Relay::start(&client_config(&upstream.url(), &grpc, 1));
    client.wait_for_members(1).await;
    let team = [("x-relaycache-namespace", "team-a")];
    let body = asked("claude-test", "stored by a client");
    assert_eq!(
        post_messages(&client, "k", &body, &team)
            .await
            .cache_status(),
        "miss"
    );
    member
        .wait_for_stats("the client's copy at the member", |s| s["key_count"] == 1)
        .await;
    let admin = member.admin_url("");
    let other = purged(&relaycache(&[
        "cache",
        "purge",
        "--namespace",
        "team-b",
        "--admin",
        &admin,
    ]));
    assert_eq!(other["removed"], 0, "{other}");
    let own = purged(&relaycache(&[
        "cache",
        "purge",
        "--namespace",
        "team-a",
        "--admin",
        &admin,
    ]));
    assert_eq!(own["by_tier"]["memory"], 1, "{own}");
    assert_eq!(
        post_messages(&member, "k", &body, &team)
            .await
            .cache_status(),
        "miss"
    );
}
