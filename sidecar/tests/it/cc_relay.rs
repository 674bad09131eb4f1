//! cc-relay configuration files run unchanged: the two-node cluster of
//! cc-relay's caching docs forms a cluster on loopback, and `relaycache
//! config migrate` turns every example into a native file that
//! `relaycache config validate` accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/cc-relay")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).expect("read fixture")
}

/// The variables that would secure a cc-relay cluster, emptied so that a
/// developer's environment cannot change what the test runs.
const NO_TOKENS: [(&str, &str); 2] = [
    ("RELAYCACHE_PEER_TOKEN", ""),
    ("RELAYCACHE_CLIENT_TOKEN", ""),
];

/// Node `n`'s file of cc-relay's two-node example, adapted to loopback
/// only where it must be: its gRPC port instead of 3320, and its peer at
/// 127.0.0.1 and that peer's gossip port (bind port + 2) instead of
/// cc-relay-N:3322. What follows the documented `cache` section only
/// points it at the mock upstream, on free ports, logging JSON (the
/// harness reads its log), in cc-relay's own spelling.
fn two_node_file(n: usize, own: u16, peer: u16, upstream: &str) -> String {
    let other = 3 - n;
    let documented = fixture(&format!("two-node-{n}.yaml"));
    let adapted = documented
        .replace("\"0.0.0.0:3320\"", &format!("\"127.0.0.1:{own}\""))
        .replace(
            &format!("\"cc-relay-{other}:3322\""),
            &format!("\"127.0.0.1:{}\"", peer + 2),
        );
    assert_ne!(adapted, documented);
    format!(
        "{adapted}
server:
  listen: \"127.0.0.1:0\"
  admin_listen: \"127.0.0.1:0\"
logging:
  level: info
  format: json
providers:
  - name: mock
    type: anthropic
    enabled: true
    base_url: \"{upstream}\"
"
    )
}

#[tokio::test]
async fn the_two_node_cluster_of_cc_relays_docs_forms_and_shares_answers() {
    let upstream = mock().await;
    let ports = [free_port(), free_port()];
    // A member is known by its host name and bind port; cc-relay's example
    // names its nodes by host name (in Compose: `hostname:`), here both
    // hosts are 127.0.0.1.
    let mut env = NO_TOKENS.to_vec();
    env.push(("HOSTNAME", "127.0.0.1"));
    let nodes: Vec<Relay> = (1..=2)
        .map(|n| {
            let text = two_node_file(n, ports[n - 1], ports[2 - n], &upstream.url());
            Relay::start_yaml(&text, &env)
        })
        .collect();
    for node in &nodes {
        node.wait_for_members(2).await;
    }
    nodes[1].wait_ready(Duration::from_secs(30)).await;
    let ready = get(&nodes[1].admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Each said at start how it read its peer's gossip port.
    let said = nodes[0]
        .logged(1, |l| {
            l.contains(&(ports[1] + 2).to_string()) && l.contains("gossip")
        })
        .await;
    assert_eq!(said.len(), 1, "{:?}", nodes[0].logs());

    let body = question("cc-relay two-node");
    let first = post_messages(&nodes[0], "k", &body, &[]).await;
    assert_eq!((first.status, first.cache_status()), (200, "miss"));
    nodes[0]
        .wait_for_stats("1 cluster write", |s| s["cluster"]["writes"] == 1)
        .await;
    let second = post_messages(&nodes[1], "k", &body, &[]).await;
    assert_eq!((second.status, second.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 1, "the answer was paid for once");
}

fn relaycache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(args)
        .envs(NO_TOKENS)
        .env_remove("RUST_LOG")
        .output()
        .expect("run relaycache")
}

#[test]
fn config_migrate_turns_every_cc_relay_example_into_a_valid_native_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        let path = fixtures().join(&name);
        let migrated = relaycache(&["config", "migrate", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&migrated.stderr);
        assert!(migrated.status.success(), "migrate {name}: {stderr}");
        assert!(!stderr.is_empty(), "migrate {name} gave no notices");
        let native = dir.path().join(&name);
        std::fs::write(&native, &migrated.stdout).expect("write migrated");
        let checked = relaycache(&["config", "validate", native.to_str().expect("utf-8 path")]);
        assert!(
            checked.status.success(),
            "validate the migrated {name}: {}\n{}",
            String::from_utf8_lossy(&checked.stderr),
            String::from_utf8_lossy(&migrated.stdout)
        );
        // The migrated file is native: it carries no notices of its own.
        assert!(
            !String::from_utf8_lossy(&checked.stderr).contains("cc-relay"),
            "{name}"
        );
    }
}

#[test]
fn config_validate_accepts_a_cc_relay_file_and_prints_its_notices() {
    let path = fixtures().join("single.yaml");
    let out = relaycache(&["config", "validate", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("num_counters"), "{stderr}");
    assert!(stderr.contains("cache.memory.max_cost"), "{stderr}");
}
