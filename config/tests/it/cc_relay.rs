//! cc-relay configuration files (the examples of cc-relay's caching docs,
//! under `config/tests/cc-relay/`) load unchanged, meaning what they meant
//! to cc-relay.

use std::path::PathBuf;
use std::time::Duration;

use relaycache_config::{Config, Environment, Mode};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cc-relay")
        .join(name)
}

fn load(name: &str) -> Config {
    Config::load(&fixture(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

#[test]
fn single_mode_reads_ristretto_max_cost_as_memory_max_cost() {
    let config = load("single.yaml");
    assert_eq!(config.cache.mode, Mode::Single);
    assert_eq!(config.cache.memory.max_cost, 104_857_600);
}

#[test]
fn the_embedded_member_example_lists_its_peer_at_the_bind_port() {
    let config = load("embedded.yaml");
    let ha = &config.cache.ha;
    assert_eq!(config.cache.mode, Mode::Ha);
    assert!(ha.embedded);
    assert_eq!(ha.bind_addr, "0.0.0.0:3320");
    assert_eq!(ha.peers, ["other-node:3320"]);
    assert_eq!(ha.environment, Environment::Lan);
    assert_eq!(
        (
            ha.replica_count,
            ha.read_quorum,
            ha.write_quorum,
            ha.member_count_quorum
        ),
        (2, 1, 1, 2)
    );
    assert_eq!(ha.leave_timeout, Duration::from_secs(5));
}

#[test]
fn the_client_example_keeps_its_member_addresses() {
    let config = load("client.yaml");
    assert!(!config.cache.ha.embedded);
    assert_eq!(config.cache.ha.addresses, ["olric-1:3320", "olric-2:3320"]);
}

#[test]
fn the_two_node_cluster_lists_each_other_at_the_bind_port() {
    assert_eq!(load("two-node-1.yaml").cache.ha.peers, ["cc-relay-2:3320"]);
    assert_eq!(load("two-node-2.yaml").cache.ha.peers, ["cc-relay-1:3320"]);
}

#[test]
fn the_three_node_compose_files_list_the_other_two_at_the_bind_port() {
    for (n, peers) in [
        (1, ["cc-relay-2:3320", "cc-relay-3:3320"]),
        (2, ["cc-relay-1:3320", "cc-relay-3:3320"]),
        (3, ["cc-relay-1:3320", "cc-relay-2:3320"]),
    ] {
        let config = load(&format!("compose-node{n}.yaml"));
        assert_eq!(config.cache.ha.peers, peers, "node {n}");
        assert_eq!(config.cache.ha.bind_addr, "0.0.0.0:3320");
    }
}

#[test]
fn a_file_with_every_cc_relay_section_loads() {
    let config = load("full.yaml");
    assert_eq!(config.server.listen, "0.0.0.0:8787");
    assert_eq!(config.server.max_inflight, 100);
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.cache.memory.max_cost, 52_428_800);
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "anthropic-pool");
    assert_eq!(config.upstreams[0].url, "https://api.anthropic.com");
    assert_eq!(config.upstreams[0].total_timeout, Duration::from_secs(600));
}

#[test]
fn a_native_file_with_a_typo_is_still_refused() {
    let err = Config::from_yaml("cache:\n  memroy:\n    max_cost: 1048576\n").unwrap_err();
    assert!(err.to_string().contains("memroy"), "{err}");
}
