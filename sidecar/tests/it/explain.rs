//! Why did this miss: `x-relaycache-explain` on live requests, and
//! `relaycache key explain | diff | tenant` agreeing with the proxy.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::*;

const CREDENTIAL: &str = "sk-explain-secret";

/// Runs `relaycache ARGS`, with `stdin` on its standard input.
fn relaycache(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run relaycache");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("relaycache output")
}

fn explanation(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(reply.header("x-relaycache-explain")).expect("explanation is JSON")
}

#[tokio::test]
async fn a_live_explanation_matches_the_key_and_the_command_line() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let body = question("explain me");
    let ask = [("x-relaycache-explain", "1")];
    let miss = post_messages(&relay, CREDENTIAL, &body, &ask).await;
    assert_eq!(miss.cache_status(), "miss");
    let live = explanation(&miss);
    assert_eq!(live["key"], miss.header("x-relaycache-key"));
    assert!(
        !miss.header("x-relaycache-explain").contains(CREDENTIAL),
        "the credential never appears"
    );
    let hit = post_messages(&relay, CREDENTIAL, &body, &ask).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(explanation(&hit), live, "a hit explains the same key");
    assert!(
        !upstream
            .last_request_headers()
            .contains_key("x-relaycache-explain"),
        "the request header is not forwarded"
    );

    // The command line keys the same request the same way.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    std::fs::write(&file, &body).unwrap();
    let credential_header = format!("x-api-key: {CREDENTIAL}");
    let explained = relaycache(
        &[
            "key",
            "explain",
            file.to_str().unwrap(),
            "--json",
            "-H",
            &credential_header,
            "-H",
            "anthropic-version: 2023-06-01",
        ],
        "",
    );
    assert!(explained.status.success(), "{explained:?}");
    let offline: serde_json::Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(offline, live);

    let tenant = relaycache(&["key", "tenant"], &format!("{CREDENTIAL}\n"));
    assert!(tenant.status.success(), "{tenant:?}");
    assert_eq!(
        String::from_utf8_lossy(&tenant.stdout).trim(),
        live["tenant"]
    );
    for output in [&explained, &tenant] {
        let printed = format!("{output:?}");
        assert!(!printed.contains(CREDENTIAL), "{printed}");
    }
}

#[tokio::test]
async fn a_request_that_is_not_cached_says_why() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let no_credential = send(
        http::Method::POST,
        &relay.url("/v1/messages"),
        &[
            ("content-type", "application/json"),
            ("x-relaycache-explain", "1"),
        ],
        question("who am i"),
    )
    .await;
    assert_eq!(
        explanation(&no_credential),
        serde_json::json!({"cached": false, "reason": "no credential header"})
    );
    let not_json = post_messages(&relay, "k", "[1, 2]", &[("x-relaycache-explain", "1")]).await;
    assert_eq!(
        explanation(&not_json)["reason"],
        "body is not one JSON object"
    );
}

#[test]
fn key_diff_names_the_first_differing_part() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let config = write(
        "relaycache.yaml",
        "cache:\n  key:\n    ignore_fields: [metadata.user_id]\n",
    );
    let a = write(
        "a.json",
        r#"{"model":"m","metadata":{"user_id":"u1"},"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let b = write(
        "b.json",
        r#"{"messages":[{"content":"hi","role":"user"}],"metadata":{"user_id":"u2"},"model":"m"}"#,
    );
    let c = write(
        "c.json",
        r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#,
    );
    let diff = |x: &str, y: &str, extra: &[&str]| {
        let mut args = vec!["key", "diff", x, y, "-c", &config, "-H", "x-api-key: k"];
        args.extend_from_slice(extra);
        relaycache(&args, "")
    };
    let same = diff(&a, &b, &[]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(String::from_utf8_lossy(&same.stdout).trim(), "same key");
    let body = diff(&a, &c, &[]);
    assert_eq!(body.status.code(), Some(1), "{body:?}");
    assert_eq!(
        String::from_utf8_lossy(&body.stdout).trim(),
        "body at $.messages[0].content"
    );
    let header = diff(
        &a,
        &b,
        &[
            "--a-header",
            "anthropic-beta: x",
            "--b-header",
            "anthropic-beta: y",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&header.stdout).trim(),
        "header anthropic-beta"
    );
    let bad = relaycache(&["key", "explain", &a, "-H", "no colon"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'Name: value'"));
}
