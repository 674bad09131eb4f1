//! Checks that parsed values make sense, collecting every problem at once.

use std::fmt;
use std::net::SocketAddr;

use super::{
    CacheConfig, CoalesceConfig, Config, HaConfig, Isolation, Mode, PeerTlsConfig, ReserveConfig,
    ServerConfig, UpstreamConfig,
};

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
    if ha.embedded {
        check_member_addresses(ha, c);
    } else {
        check_client_addresses(ha, c);
    }
    check_ha_quorums(ha, c);
    check_ha_credentials(ha, c);
    check_ha_tls(&ha.tls, c);
}

/// The hint after a cluster address that is not `host:port`.
const HOST_PORT: &str = "write host:port, such as \"relaycache-0.relaycache-peers:3320\"";

/// A member's listener, its peers and the address it advertises.
fn check_member_addresses(ha: &HaConfig, c: &mut Collector) {
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
}

/// A client (`embedded: false`) needs at least one member to ask.
fn check_client_addresses(ha: &HaConfig, c: &mut Collector) {
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

/// Copies, quorums within them, and the clock and repair settings.
fn check_ha_quorums(ha: &HaConfig, c: &mut Collector) {
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
}

/// Mutual TLS needs all three files, each readable.
fn check_ha_tls(tls: &PeerTlsConfig, c: &mut Collector) {
    if !tls.enabled() {
        return;
    }
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
        check_server(&self.server, &mut c);
        check_upstreams(&self.upstreams, &mut c);
        let cache = &self.cache;
        if cache.mode == Mode::Ha {
            check_ha(&cache.ha, &mut c);
        }
        if !cache.reserve.url.is_empty() {
            check_reserve(&cache.reserve, &mut c);
        }
        check_cache(cache, &mut c);
        check_key(cache, &mut c);
        check_coalesce(&cache.coalesce, &mut c);
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

/// Listeners on two ports, and limits that let at least one request through.
fn check_server(server: &ServerConfig, c: &mut Collector) {
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
}

/// At least one upstream, each valid, each with a name of its own.
fn check_upstreams(upstreams: &[UpstreamConfig], c: &mut Collector) {
    c.check(
        !upstreams.is_empty(),
        "upstreams",
        "needs at least one upstream, such as {name: anthropic, url: \"https://api.anthropic.com\"}",
    );
    for (i, upstream) in upstreams.iter().enumerate() {
        check_upstream(i, upstream, c);
    }
    for (i, name) in upstreams.iter().map(|u| &u.name).enumerate() {
        let first = upstreams.iter().position(|u| &u.name == name);
        c.check(
            first == Some(i) || name.is_empty(),
            format!("upstreams[{i}].name"),
            format!("{name:?} is used twice; give each upstream its own name"),
        );
    }
}

/// Upstream `i`: a name, an http(s) URL, a readable CA file, path prefixes
/// and timeouts that fit each other.
fn check_upstream(i: usize, upstream: &UpstreamConfig, c: &mut Collector) {
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

/// A configured reserve: a store URL the proxy knows, and a retention,
/// queue and sweep that do something.
fn check_reserve(reserve: &ReserveConfig, c: &mut Collector) {
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

/// TTLs, cache routes, and entry sizes that fit the memory tier.
fn check_cache(cache: &CacheConfig, c: &mut Collector) {
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
    c.check(
        (1..=19).contains(&cache.compression.level),
        "cache.compression.level",
        "must be between 1 (fastest) and 19 (smallest)",
    );
    for (model, price) in &cache.prices {
        c.check(
            !model.is_empty(),
            "cache.prices",
            "model names must not be empty",
        );
        for field in price.invalid_fields() {
            c.check(
                false,
                format!("cache.prices.{model}.{field}"),
                "must be a number of US dollars per million tokens, 0 or more",
            );
        }
    }
}

/// What goes into a key: field paths, header names, and a credential
/// header whenever isolation is per credential.
fn check_key(cache: &CacheConfig, c: &mut Collector) {
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
}

/// Coalescing that lets at least one follower wait, for some time.
fn check_coalesce(coalesce: &CoalesceConfig, c: &mut Collector) {
    c.check(
        coalesce.max_waiters > 0,
        "cache.coalesce.max_waiters",
        "must be greater than 0 (set coalesce.enabled: false to turn coalescing off)",
    );
    c.check(
        !coalesce.wait_timeout.is_zero(),
        "cache.coalesce.wait_timeout",
        "must be longer than 0s",
    );
}

#[cfg(test)]
mod tests;
