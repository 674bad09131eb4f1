//! `relaycache top --once` against real processes: a single process's
//! figures, a cluster's members through one member's `/members`, and a
//! process that does not answer.

use crate::common::*;

/// `relaycache top ARGS` as a subprocess: its exit code and output.
async fn top(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .arg("top")
        .args(args)
        .env("RELAYCACHE_ADMIN_TOKEN", "a-token-top-sends")
        .output()
        .await
        .expect("run relaycache top");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).expect("utf-8 stdout"),
        String::from_utf8(output.stderr).expect("utf-8 stderr"),
    )
}

/// The figures after `label` on the snapshot's line for it.
fn line<'a>(snapshot: &'a str, label: &str) -> &'a str {
    snapshot
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{snapshot}"))
}

fn sonnet_question(tag: &str) -> String {
    serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("top {tag}")}]})
    .to_string()
}

#[tokio::test]
async fn once_shows_a_processs_hits_hit_ratio_tokens_and_dollars_saved() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.server.admin_token = "a-token-top-sends".into();
    let relay = Relay::start(&config);
    for tag in ["a", "b"] {
        let body = sonnet_question(tag);
        assert_eq!(
            post_messages(&relay, "k", &body, &[]).await.cache_status(),
            "miss"
        );
        for _ in 0..2 {
            assert_eq!(
                post_messages(&relay, "k", &body, &[]).await.cache_status(),
                "hit"
            );
        }
    }
    let stats = relay.wait_for_stats("4 hits", |s| s["hits"] == 4).await;
    let saved_usd = stats["saved_usd"].as_f64().unwrap();
    assert!(saved_usd > 0.0, "claude-sonnet-4-5 is priced: {stats}");
    let input = stats["input_tokens_saved"].as_u64().unwrap();
    let output = stats["output_tokens_saved"].as_u64().unwrap();
    assert!(input > 0 && output > 0, "{stats}");

    let url = format!("http://{}", relay.admin);
    let (code, snapshot, stderr) = top(&["--once", "--admin", &url]).await;
    assert_eq!(code, 0, "{snapshot}{stderr}");
    assert!(!snapshot.contains('\u{1b}'), "no escape codes:\n{snapshot}");
    assert!(
        snapshot.starts_with("relaycache top: 1 of 1 processes up\n"),
        "{snapshot}"
    );
    assert!(
        snapshot.contains(&format!("{url}  up  single\n")),
        "{snapshot}"
    );
    let bytes = stats["bytes_used"].as_u64().unwrap() as f64 / 1024.0;
    let expected = [
        ("requests", "6  hits 4  misses 2  bypasses 0".to_string()),
        (
            "hit ratio",
            "66.7%  memory 66.7%  peer 0.0%  reserve 0.0%".into(),
        ),
        ("hits by tier", "memory 4  peer 0  reserve 0".into()),
        (
            "tokens saved",
            format!(
                "{}  input {input}  output {output}  cache_read 0  cache_creation 0",
                input + output
            ),
        ),
        ("saved", format!("${saved_usd:.6}")),
        ("memory", format!("2 entries  {bytes:.1} KiB")),
        ("rates", "follow from the next reading".into()),
    ];
    for (label, figures) in expected {
        assert_eq!(line(&snapshot, label), figures, "{label}");
    }
    let upstream_line = line(&snapshot, "upstream");
    assert!(
        upstream_line.starts_with("p50 ") && upstream_line.ends_with("(2 calls)  errors 0"),
        "{upstream_line}"
    );
    assert!(
        !snapshot.contains("members as"),
        "a single process has none:\n{snapshot}"
    );

    let members = get(&relay.admin_url("/members")).await.json();
    assert_eq!(
        members,
        serde_json::json!({"role": "single", "live": 0, "quorum": false, "members": []})
    );
}

#[tokio::test]
async fn once_against_one_member_lists_every_member_and_its_state() {
    let upstream = mock().await;
    let addresses = member_addresses(3);
    let mut members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| Relay::start(&member_config(&upstream.url(), grpc, &addresses, 2)))
        .collect();
    for member in &members {
        member.wait_for_members(3).await;
    }
    let url = format!("http://{}", members[0].admin);
    let (code, snapshot, stderr) = top(&["--once", "--admin", &url]).await;
    assert_eq!(code, 0, "{snapshot}{stderr}");
    assert!(
        snapshot.contains(&format!("{url}  up  member\n")),
        "{snapshot}"
    );
    assert!(
        snapshot.contains(&format!(
            "members as {url} sees them\n  3 live, quorum yes\n"
        )),
        "{snapshot}"
    );
    for (i, address) in addresses.iter().enumerate() {
        let member = line(&snapshot, address);
        let expected = if i == 0 {
            "alive    this process"
        } else {
            "alive"
        };
        assert_eq!(member, expected, "{snapshot}");
    }

    // A client sees the same members, and says it is a client.
    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    client.wait_for_members(3).await;
    let roster = get(&client.admin_url("/members")).await.json();
    assert_eq!(roster["role"], "client", "{roster}");
    assert_eq!(roster["live"], 3, "{roster}");
    let states: Vec<(&str, &str)> = roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    let mut expected: Vec<(&str, &str)> = addresses.iter().map(|a| (a.as_str(), "alive")).collect();
    expected.sort();
    assert_eq!(states, expected, "{roster}");

    // A member that dies is down, and stays listed.
    members[2].kill_hard();
    members[0].wait_for_members(2).await;
    let (code, snapshot, _) = top(&["--once", "--admin", &url]).await;
    assert_eq!(code, 0, "{snapshot}");
    assert!(snapshot.contains("  2 live, quorum yes\n"), "{snapshot}");
    let dead = line(&snapshot, &addresses[2]);
    assert!(dead.starts_with("down     last answer "), "{snapshot}");
}

#[tokio::test]
async fn an_unreachable_process_is_down_beside_the_figures_of_the_others() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    post_messages(&relay, "k", &question("x"), &[]).await;
    post_messages(&relay, "k", &question("x"), &[]).await;
    relay.wait_for_stats("1 hit", |s| s["hits"] == 1).await;
    let up = format!("http://{}", relay.admin);
    let gone = format!("127.0.0.1:{}", free_port());
    let (code, snapshot, stderr) = top(&["--once", "--admin", &up, "--admin", &gone]).await;
    assert_eq!(code, 1, "one process down exits 1:\n{snapshot}{stderr}");
    assert!(
        snapshot.starts_with("relaycache top: 1 of 2 processes up\n"),
        "{snapshot}"
    );
    assert_eq!(
        line(&snapshot, "requests"),
        "2  hits 1  misses 1  bypasses 0"
    );
    let down = line(&snapshot, &format!("http://{gone}"));
    assert!(down.starts_with("down: "), "{snapshot}");
    assert!(
        down.contains("onnection refused"),
        "the cause is shown: {down}"
    );
}

#[tokio::test]
async fn without_a_terminal_and_without_once_top_says_so_and_exits_2() {
    let (code, stdout, stderr) = top(&["--admin", "127.0.0.1:1"]).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("not a terminal; use --once"), "{stderr}");
}
