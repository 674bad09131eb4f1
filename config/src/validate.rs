//! Checks that parsed values make sense, collecting every problem at once.

use std::fmt;
use std::net::SocketAddr;

use super::{Config, HaConfig, Isolation, Mode};

/// One problem, at a key path, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `upstreams[1].url`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigIssues(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", issue.path, issue.message)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Collector(Vec<ConfigIssue>);

impl Collector {
    fn check(&mut self, ok: bool, path: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.0.push(ConfigIssue {
                path: path.into(),
                message: message.into(),
            });
        }
    }

    fn socket_addr(&mut self, value: &str, path: &str) {
        self.check(
            value.parse::<SocketAddr>().is_ok(),
            path,
            format!("{value:?} is not an address; write IP:PORT such as \"127.0.0.1:8787\""),
        );
    }

    fn path_prefix(&mut self, value: &str, path: String) {
        self.check(
            value.starts_with('/'),
            path,
            format!("{value:?} must start with '/', such as \"/v1/messages\""),
        );
    }
}

/// `host:port` with a name or an IP and a port number: what peer lists hold.
fn is_host_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn check_ha(ha: &HaConfig, c: &mut Collector) {
    const HOST_PORT: &str = "write host:port, such as \"relaycache-0.relaycache-peers:3320\"";
    if ha.embedded {
        c.socket_addr(&ha.bind_addr, "cache.ha.bind_addr");
        for (i, peer) in ha.peers.iter().enumerate() {
            c.check(
                is_host_port(peer),
                format!("cache.ha.peers[{i}]"),
                format!("{peer:?} is not a peer address; {HOST_PORT}"),
            );
        }
        c.check(
            ha.advertise_addr.is_empty() || is_host_port(&ha.advertise_addr),
            "cache.ha.advertise_addr",
            format!("{:?} is not an address; {HOST_PORT}", ha.advertise_addr),
        );
    } else {
        c.check(
            !ha.addresses.is_empty(),
            "cache.ha.addresses",
            "a client (embedded: false) needs the address of at least one cluster member",
        );
        for (i, address) in ha.addresses.iter().enumerate() {
            c.check(
                is_host_port(address),
                format!("cache.ha.addresses[{i}]"),
                format!("{address:?} is not a member address; {HOST_PORT}"),
            );
        }
    }
    c.check(
        ha.replica_count >= 1,
        "cache.ha.replica_count",
        "must be at least 1",
    );
    for (field, value) in [
        ("read_quorum", ha.read_quorum),
        ("write_quorum", ha.write_quorum),
    ] {
        c.check(
            (1..=ha.replica_count.max(1)).contains(&value),
            format!("cache.ha.{field}"),
            format!(
                "{value} is outside 1..=replica_count ({}); a quorum cannot need more copies than exist",
                ha.replica_count
            ),
        );
    }
    c.check(
        ha.member_count_quorum >= 1,
        "cache.ha.member_count_quorum",
        "must be at least 1",
    );
    c.check(
        !ha.max_clock_skew.is_zero(),
        "cache.ha.max_clock_skew",
        "must be longer than 0s (2s suits machines synchronised by NTP)",
    );
    c.check(
        ha.repair_rate >= 1,
        "cache.ha.repair_rate",
        "must be at least 1 entry per second",
    );
    check_ha_credentials(ha, c);
    let tls = &ha.tls;
    if tls.enabled() {
        for (field, value) in [
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
            ("ca_file", &tls.ca_file),
        ] {
            c.check(
                !value.is_empty(),
                format!("cache.ha.tls.{field}"),
                "mutual TLS needs cert_file, key_file and ca_file together",
            );
            c.check(
                value.is_empty() || std::path::Path::new(value).is_file(),
                format!("cache.ha.tls.{field}"),
                format!("{value:?} is not a readable file"),
            );
        }
    }
}

/// Secure by default: a member needs the members' token or mutual TLS, a
/// client the clients' token or mutual TLS, unless `insecure` says
/// otherwise on purpose. A client never holds the members' token.
fn check_ha_credentials(ha: &HaConfig, c: &mut Collector) {
    const DEMO: &str = "(or set cache.ha.insecure: true for a demo on one machine)";
    if ha.embedded {
        c.check(
            ha.insecure || !ha.token.is_empty() || ha.tls.enabled(),
            "cache.ha.token",
            format!(
                "a member needs the members' token, such as \"${{RELAYCACHE_PEER_TOKEN}}\", or mutual TLS (cache.ha.tls) {DEMO}; without either anyone who reaches cache.ha.bind_addr could write to or wipe the cache"
            ),
        );
        c.check(
            ha.client_token.is_empty() || ha.client_token != ha.token,
            "cache.ha.client_token",
            "must differ from cache.ha.token, or every client could act as a member",
        );
    } else {
        c.check(
            ha.token.is_empty(),
            "cache.ha.token",
            "a client (embedded: false) must not hold the members' token; move the value to cache.ha.client_token and give it the clients' token",
        );
        c.check(
            ha.insecure || !ha.client_token.is_empty() || ha.tls.enabled(),
            "cache.ha.client_token",
            format!(
                "a client needs the clients' token, such as \"${{RELAYCACHE_CLIENT_TOKEN}}\", or mutual TLS (cache.ha.tls) {DEMO}"
            ),
        );
    }
}

impl Config {
    /// Returns every problem in the configuration, each at its key path.
    pub fn validate(&self) -> Result<(), ConfigIssues> {
        let mut c = Collector::default();
        let server = &self.server;
        c.socket_addr(&server.listen, "server.listen");
        c.socket_addr(&server.admin_listen, "server.admin_listen");
        c.check(
            server.listen != server.admin_listen || server.listen.ends_with(":0"),
            "server.admin_listen",
            "must differ from server.listen; the admin endpoints need their own port",
        );
        c.check(
            server.max_body_bytes > 0,
            "server.max_body_bytes",
            "must be greater than 0",
        );
        for (field, value) in [
            ("max_connections", server.max_connections as u64),
            ("max_inflight", server.max_inflight as u64),
            ("max_buffered_bytes", server.max_buffered_bytes),
        ] {
            c.check(
                value > 0,
                format!("server.{field}"),
                "must be greater than 0",
            );
        }
        c.check(
            server.max_buffered_bytes >= server.max_body_bytes,
            "server.max_buffered_bytes",
            "must be at least server.max_body_bytes, or no body of the largest size could ever be read",
        );
        for (field, value) in [
            ("header_read_timeout", server.header_read_timeout),
            ("client_body_timeout", server.client_body_timeout),
        ] {
            c.check(
                !value.is_zero(),
                format!("server.{field}"),
                "must be longer than 0s",
            );
        }

        c.check(
            !self.upstreams.is_empty(),
            "upstreams",
            "needs at least one upstream, such as {name: anthropic, url: \"https://api.anthropic.com\"}",
        );
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let at = |field: &str| format!("upstreams[{i}].{field}");
            c.check(!upstream.name.is_empty(), at("name"), "must not be empty");
            let url_ok = url::Url::parse(&upstream.url)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            c.check(
                url_ok,
                at("url"),
                format!(
                    "{:?} is not an http(s) URL; write e.g. \"https://api.anthropic.com\"",
                    upstream.url
                ),
            );
            c.check(
                upstream.ca_file.is_empty() || std::path::Path::new(&upstream.ca_file).is_file(),
                at("ca_file"),
                format!(
                    "{:?} is not a readable file; give the path of a PEM file of CA certificates",
                    upstream.ca_file
                ),
            );
            for (j, prefix) in upstream.paths.iter().enumerate() {
                c.path_prefix(prefix, at(&format!("paths[{j}]")));
            }
            for (field, value) in [
                ("connect_timeout", upstream.connect_timeout),
                ("first_byte_timeout", upstream.first_byte_timeout),
                ("total_timeout", upstream.total_timeout),
            ] {
                c.check(!value.is_zero(), at(field), "must be longer than 0s");
            }
            c.check(
                upstream.total_timeout >= upstream.first_byte_timeout,
                at("total_timeout"),
                "must be at least first_byte_timeout",
            );
        }
        for (i, name) in self.upstreams.iter().map(|u| &u.name).enumerate() {
            let first = self.upstreams.iter().position(|u| &u.name == name);
            c.check(
                first == Some(i) || name.is_empty(),
                format!("upstreams[{i}].name"),
                format!("{name:?} is used twice; give each upstream its own name"),
            );
        }

        let cache = &self.cache;
        if cache.mode == Mode::Ha {
            check_ha(&cache.ha, &mut c);
        }
        let reserve = &cache.reserve;
        if !reserve.url.is_empty() {
            let scheme = url::Url::parse(&reserve.url).map(|u| u.scheme().to_string());
            c.check(
                matches!(scheme.as_deref(), Ok("file" | "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "memory")),
                "cache.reserve.url",
                format!(
                    "{:?} is not a store URL; use file:///path, s3://bucket/prefix, gs://bucket, az://container or memory://",
                    reserve.url
                ),
            );
            c.check(
                !reserve.retention.is_zero(),
                "cache.reserve.retention",
                "must be longer than 0s",
            );
            c.check(
                reserve.queue > 0,
                "cache.reserve.queue",
                "must be greater than 0",
            );
            c.check(
                reserve.sweep_batch > 0,
                "cache.reserve.sweep_batch",
                "must be greater than 0",
            );
            c.check(
                !reserve.sweep_interval.is_zero(),
                "cache.reserve.sweep_interval",
                "must be longer than 0s",
            );
        }
        c.check(!cache.ttl.is_zero(), "cache.ttl", "must be longer than 0s");
        c.check(
            cache.max_ttl >= cache.ttl,
            "cache.max_ttl",
            "must be at least cache.ttl",
        );
        for (i, route) in cache.routes.iter().enumerate() {
            c.path_prefix(route, format!("cache.routes[{i}]"));
        }
        c.check(
            cache.max_entry_bytes > 0,
            "cache.max_entry_bytes",
            "must be greater than 0",
        );
        c.check(
            cache.memory.max_cost >= 1024 * 1024,
            "cache.memory.max_cost",
            "must be at least 1048576 (1 MiB)",
        );
        c.check(
            cache.max_entry_bytes <= cache.memory.max_cost,
            "cache.max_entry_bytes",
            "must not exceed cache.memory.max_cost",
        );
        for (i, field) in cache.key.ignore_fields.iter().enumerate() {
            c.check(
                !field.is_empty() && field.split('.').all(|part| !part.is_empty()),
                format!("cache.key.ignore_fields[{i}]"),
                format!("{field:?} is not a dotted field path such as \"metadata.user_id\""),
            );
        }
        for (list, names) in [
            ("credential_headers", &cache.key.credential_headers),
            ("headers", &cache.key.headers),
        ] {
            for (i, name) in names.iter().enumerate() {
                c.check(
                    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                        && name.bytes().all(|b| !b.is_ascii_uppercase()),
                    format!("cache.key.{list}[{i}]"),
                    format!("{name:?} is not a lower-case HTTP header name such as \"x-api-key\""),
                );
            }
        }
        c.check(
            cache.isolation != Isolation::Credential || !cache.key.credential_headers.is_empty(),
            "cache.key.credential_headers",
            "must name at least one header under isolation: credential (such as x-api-key), or no request could be cached",
        );
        c.check(
            cache.coalesce.max_waiters > 0,
            "cache.coalesce.max_waiters",
            "must be greater than 0 (set coalesce.enabled: false to turn coalescing off)",
        );
        c.check(
            !cache.coalesce.wait_timeout.is_zero(),
            "cache.coalesce.wait_timeout",
            "must be longer than 0s",
        );
        c.check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            format!(
                "{:?} is not a level; use error, warn, info, debug or trace",
                self.log.level
            ),
        );

        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigIssues(c.0))
        }
    }
}

#[cfg(test)]
mod tests {
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
        let client =
            "cache:\n  mode: ha\n  ha:\n    embedded: false\n    addresses: [\"m:3320\"]\n";
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
}
