use super::*;

fn issues(yaml: &str) -> Vec<ConfigIssue> {
    match Config::from_yaml(yaml) {
        Err(super::super::ConfigError::Invalid(issues)) => issues.0,
        other => panic!("expected validation issues, got {other:?}"),
    }
}

#[test]
fn every_mistake_is_named_by_path() {
    let found = issues(
        r#"
server:
  listen: "8787"
  admin_listen: "8787"
upstreams:
  - name: a
    url: "ftp://example.com"
    paths: ["v1/messages"]
    ca_file: "/nonexistent/ca.pem"
  - name: a
    url: "https://ok.example.com"
cache:
  ttl: 2h
  max_ttl: 1h
  memory:
    max_cost: 10
"#,
    );
    let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "server.listen",
        "server.admin_listen",
        "upstreams[0].url",
        "upstreams[0].paths[0]",
        "upstreams[0].ca_file",
        "upstreams[1].name",
        "cache.max_ttl",
        "cache.memory.max_cost",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(found.iter().all(|i| !i.message.is_empty()));
}

#[test]
fn ha_settings_and_reserve_urls_are_checked() {
    let found = issues(
        "cache:\n  mode: ha\n  ha:\n    token: m\n    peers: [\"a:3320\", \"b\"]\n    replica_count: 2\n    read_quorum: 3\n    write_quorum: 0\n    tls:\n      cert_file: /nonexistent.pem\n  reserve:\n    url: ftp://x/y\n    queue: 0\n",
    );
    let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cache.ha.peers[1]",
            "cache.ha.read_quorum",
            "cache.ha.write_quorum",
            "cache.ha.tls.cert_file",
            "cache.ha.tls.key_file",
            "cache.ha.tls.ca_file",
            "cache.reserve.url",
            "cache.reserve.queue"
        ]
    );
    let client = issues("cache:\n  mode: ha\n  ha:\n    embedded: false\n");
    assert_eq!(client[0].path, "cache.ha.addresses");
    assert!(Config::from_yaml(
        "cache:\n  mode: ha\n  ha:\n    embedded: false\n    addresses: [\"rc.default.svc:3320\"]\n    client_token: c\n"
    )
    .is_ok());
    assert!(Config::from_yaml("cache:\n  reserve:\n    url: file:///tmp/x\n").is_ok());
}

#[test]
fn a_cluster_is_secure_unless_it_says_otherwise() {
    let paths = |yaml: &str| -> Vec<String> {
        match Config::from_yaml(yaml) {
            Ok(_) => Vec::new(),
            Err(_) => issues(yaml).into_iter().map(|i| i.path).collect(),
        }
    };
    let member = "cache:\n  mode: ha\n  ha:\n";
    let client = "cache:\n  mode: ha\n  ha:\n    embedded: false\n    addresses: [\"m:3320\"]\n";
    assert_eq!(paths(member), ["cache.ha.token"]);
    assert!(paths(&format!("{member}    token: m\n")).is_empty());
    assert!(paths(&format!("{member}    insecure: true\n")).is_empty());
    assert_eq!(
        paths(&format!(
            "{member}    token: same\n    client_token: same\n"
        )),
        ["cache.ha.client_token"]
    );
    assert_eq!(paths(client), ["cache.ha.client_token"]);
    assert_eq!(
        paths(&format!("{client}    token: m\n    client_token: c\n")),
        ["cache.ha.token"]
    );
    assert!(paths(&format!("{client}    client_token: c\n")).is_empty());
    assert!(paths(&format!("{client}    insecure: true\n")).is_empty());
}
