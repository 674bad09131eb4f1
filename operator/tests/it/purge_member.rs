//! The operator's purge call (`HttpMemberAdmin`) against a real relaycache
//! process: what was created before the time goes, what came after stays.
//! The process is `relaycache` from this workspace's target directory
//! (`cargo test --workspace` and `make test` build it); the test says so
//! and passes when it is not built.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;
use mock_upstream::{MockOptions, MockUpstream};
use relaycache_operator::reconcile::purge::{HttpMemberAdmin, MemberAdmin, PurgeError};

const TOKEN: &str = "members-token-for-the-test";

/// `target/debug/relaycache` next to this test's own `deps/` directory.
fn relaycache_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("relaycache");
    binary.is_file().then_some(binary)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    tag: &str,
) -> String {
    let body = serde_json::json!({"model": "claude-test", "max_tokens": 8,
        "messages": [{"role": "user", "content": tag}]});
    let request = http::Request::post(url)
        .header("x-api-key", "k1")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let status = response.headers()["x-relaycache-status"]
        .to_str()
        .unwrap()
        .to_string();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_member_purges_what_was_created_before_the_time_and_keeps_the_rest() {
    let Some(binary) = relaycache_binary() else {
        eprintln!("SKIPPED: target/debug/relaycache is not built; run cargo build --workspace (make test does)");
        return;
    };
    let upstream = MockUpstream::start("127.0.0.1:0", MockOptions::default())
        .await
        .unwrap();
    let (traffic, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("relaycache-purge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relaycache.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:{traffic}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  admin_token: \"${{RELAYCACHE_PEER_TOKEN}}\"\nupstreams:\n  - name: mock\n    url: \"{}\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    let _member = Member(
        Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RELAYCACHE_PEER_TOKEN", TOKEN)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("http://127.0.0.1:{traffic}/v1/messages");
    let health: http::Uri = format!("http://127.0.0.1:{admin}/healthz").parse().unwrap();
    let mut up = false;
    for _ in 0..200 {
        let request = http::Request::get(health.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "relaycache did not answer /healthz within 10 s");

    assert_eq!(post(&client, &url, "old").await, "miss");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(&client, &url, "new").await, "miss");

    let admin_address = format!("127.0.0.1:{admin}");
    let member = HttpMemberAdmin::new(Duration::from_secs(10));
    let refused = member
        .purge_before(&admin_address, "not-the-token", before)
        .await;
    assert!(
        matches!(refused, Err(PurgeError::Refused { status: 401, .. })),
        "{refused:?}"
    );
    let removed = member.purge_before(&admin_address, TOKEN, before).await;
    assert_eq!(removed, Ok(1), "only the entry created before the time");
    assert_eq!(post(&client, &url, "old").await, "miss", "purged");
    assert_eq!(post(&client, &url, "new").await, "hit", "kept");

    let unreachable = member
        .purge_before(&format!("127.0.0.1:{}", free_port()), TOKEN, before)
        .await;
    assert!(
        matches!(unreachable, Err(PurgeError::Unreachable(_))),
        "{unreachable:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
