//! Test harness: a real `relaycache` process on loopback in front of the
//! mock upstream (in this test process, on a real socket), and a plain
//! HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relaycache::config::{Config, LogFormat, UpstreamConfig};

pub(crate) use mock_upstream::{MockOptions, MockUpstream};

/// A running relaycache process.
pub(crate) struct Relay {
    child: Child,
    /// Traffic listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// A config pointing every path at `upstream`, listening on free ports,
/// logging JSON.
pub(crate) fn config_for(upstream: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    config.upstreams = vec![UpstreamConfig {
        name: "mock".into(),
        url: upstream.into(),
        ..UpstreamConfig::default()
    }];
    config.log.format = LogFormat::Json;
    config
}

impl Relay {
    /// Starts relaycache with `config` and waits until it listens.
    pub(crate) fn start(config: &Config) -> Self {
        Self::launch(config, false, &[])
    }

    /// Starts relaycache with `config` given as YAML text in
    /// `RELAYCACHE_CONFIG_YAML`, as an injected sidecar gets it.
    pub(crate) fn start_inline(config: &Config) -> Self {
        Self::launch(config, true, &[])
    }

    /// Starts relaycache behind a command prefix that execs it, such as
    /// `ip netns exec NS` (so the child's pid is relaycache's own).
    pub(crate) fn start_prefixed(config: &Config, prefix: &[&str]) -> Self {
        Self::launch(config, false, prefix)
    }

    /// Starts relaycache on a config file with this text (which must log
    /// JSON), with `env` added to its environment.
    pub(crate) fn start_yaml(text: &str, env: &[(&str, &str)]) -> Self {
        Self::launch_text(text, false, &[], env)
    }

    fn launch(config: &Config, inline: bool, prefix: &[&str]) -> Self {
        Self::launch_text(
            &config.try_to_yaml().expect("render config"),
            inline,
            prefix,
            &[],
        )
    }

    fn launch_text(text: &str, inline: bool, prefix: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relaycache.yaml");
        std::fs::write(&path, text).expect("write config");
        let binary = env!("CARGO_BIN_EXE_relaycache");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.arg("serve");
        if inline {
            command.env("RELAYCACHE_CONFIG_YAML", text);
        } else {
            command.arg("--config").arg(&path);
        }
        let mut child = command
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relaycache");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("relaycache listening") {
                    let _ = ready_tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("relaycache did not report listening within 20s");
        let fields: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let addr = fields["traffic"].as_str().unwrap().parse().unwrap();
        let admin = fields["admin"].as_str().unwrap().parse().unwrap();
        Self {
            child,
            addr,
            admin,
            logs,
            _dir: dir,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: peak RSS).
    pub(crate) fn memory_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("a number of kB");
        kib * 1024
    }

    /// `http://ADDR/path` on the traffic listener.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADMIN/path` on the admin listener.
    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Every log line so far.
    pub(crate) fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines that match `wanted`, once there are at least `count`
    /// of them (waiting at most 10 s; fewer after that). A counter moves
    /// just before its line is written through the asynchronous log
    /// writer, so a test reads the line this way rather than race it.
    pub(crate) async fn logged(&self, count: usize, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut matching = Vec::new();
        for _ in 0..100 {
            matching = self.logs().into_iter().filter(|l| wanted(l)).collect();
            if matching.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        matching
    }

    /// The access-log lines (one per request) parsed as JSON.
    pub(crate) fn access_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "request")
            .collect()
    }

    /// Waits until `n` access-log lines were written (they are written when
    /// a response body is done with).
    pub(crate) async fn wait_for_access_logs(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let logs = self.access_logs();
            if logs.len() >= n {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "expected {n} access-log lines, got {:?}",
            self.access_logs()
        );
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "relaycache did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `/stats` JSON.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let reply = get(&self.admin_url("/stats")).await;
        assert_eq!(reply.status, 200);
        reply.json()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, fully read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text ("" when absent).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `x-relaycache-status`.
    pub(crate) fn cache_status(&self) -> &str {
        self.header("x-relaycache-status")
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Which call of the mock upstream produced this answer: its
    /// `x-mock-call` on a miss; on a hit (which replays no such header)
    /// the number in the answer's `id` (`msg_mock_N`, `chatcmpl-mock-N`).
    pub(crate) fn mock_call(&self) -> String {
        let header = self.header("x-mock-call");
        if !header.is_empty() {
            return header.to_string();
        }
        mock_call_of(&self.body).unwrap_or_default()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The mock upstream's call number in an answer body's `id`.
pub(crate) fn mock_call_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value["id"].as_str()?;
    Some(id.rsplit(['_', '-']).next()?.to_string())
}

/// Sends a request and reads the whole answer.
pub(crate) async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_send(method, url, headers, body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|err| panic!("{url}: {err}"))
}

/// Sends a request and reads the whole answer within `timeout`; an error
/// says what failed instead of panicking (for tests where failures are
/// expected, such as chaos).
pub(crate) async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    timeout: Duration,
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.into()))
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body broke off: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// POST with the usual Anthropic headers and credential `key`.
pub(crate) async fn post_messages(
    relay: &Relay,
    key: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        Method::POST,
        &relay.url("/v1/messages"),
        &headers,
        body.to_string(),
    )
    .await
}

/// GET a URL.
pub(crate) async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// A small Messages request; `tag` makes it unique.
pub(crate) fn question(tag: &str) -> String {
    serde_json::json!({
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("question {tag}")}]
    })
    .to_string()
}

/// Starts the mock upstream on a free port.
pub(crate) async fn mock() -> MockUpstream {
    MockUpstream::start("127.0.0.1:0", MockOptions::default())
        .await
        .expect("mock upstream")
}

/// Sends a Messages request with credential `key` and returns the response
/// as soon as its headers arrive, so a test can read the body frame by frame.
pub(crate) async fn open_messages(
    relay: &Relay,
    key: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::post(relay.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    client.request(request).await.expect("request failed")
}

/// Sends `n` identical Messages requests at once and returns their replies.
pub(crate) async fn post_concurrently(
    relay: &Arc<Relay>,
    n: usize,
    body: &str,
    extra: &[(&'static str, &'static str)],
) -> Vec<Reply> {
    post_spread(std::slice::from_ref(relay), n, body, extra).await
}

/// Sends `n` identical Messages requests at once, spread round-robin over
/// `relays`; the replies in the order sent.
pub(crate) async fn post_spread(
    relays: &[Arc<Relay>],
    n: usize,
    body: &str,
    extra: &[(&'static str, &'static str)],
) -> Vec<Reply> {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let relay = Arc::clone(&relays[i % relays.len()]);
            let body = body.to_string();
            let extra = extra.to_vec();
            tokio::spawn(async move { post_messages(&relay, "k", &body, &extra).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for request in requests {
        replies.push(request.await.expect("request task"));
    }
    replies
}

/// A local S3-compatible server (moto), for the reserve tier's tests.
pub(crate) struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts moto's server. `None` (with a note on stderr) where moto is
    /// not installed and this is not CI; `make test` installs it, and CI
    /// must not skip.
    pub(crate) fn start(extra_env: &[(&str, &str)]) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut command = Command::new("moto_server");
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: cannot start moto_server ({err}); `make test` installs it");
                return None;
            }
            Err(err) => panic!("moto_server is required in CI: {err}"),
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = Self { child, endpoint };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moto_server did not listen on {port} within 10s");
    }

    /// Creates a bucket (moto accepts unsigned requests when auth is off).
    pub(crate) async fn create_bucket(&self, name: &str) {
        let reply = send(
            Method::PUT,
            &format!("{}/{name}", self.endpoint),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "create bucket: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    /// Store options for relaycache's `cache.reserve.options`.
    pub(crate) fn options(&self, key_id: &str) -> std::collections::BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", key_id),
            ("aws_secret_access_key", "relaycache-test-secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Polls `/stats` until `pick` returns true, at most 30 s (the deadline
    /// only bounds a failing run).
    pub(crate) async fn wait_for_stats(
        &self,
        what: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..600 {
            let stats = self.stats().await;
            if pick(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not reached; last stats {}", self.stats().await);
    }
}

/// A free TCP port on loopback for a process a test starts (and may
/// restart on the same port). Ports come from 20000-31999, below Linux's
/// ephemeral range: nothing else in the tests binds there (processes
/// listening on port 0 and outgoing connections get ephemeral ports), and
/// this binary never hands out one port twice, so a member restarted on its
/// old port finds it free. Handed out ports are checked bindable first.
pub(crate) fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() % 12_000;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 12_000, "every test port of 20000-31999 was handed out");
        let port = 20_000 + u16::try_from((start + n) % 12_000).expect("below 12000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `count` gRPC addresses on loopback for a test cluster.
pub(crate) fn member_addresses(count: usize) -> Vec<String> {
    (0..count)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// The members' token of test clusters.
pub(crate) const MEMBER_TOKEN: &str = "test-members-token";

/// The clients' token of test clusters.
pub(crate) const CLIENT_TOKEN: &str = "test-clients-token";

/// A cluster member's config: mode ha on `grpc`, every address in `peers`
/// (itself included, as a StatefulSet lists them), local timings, the
/// members' and the clients' test tokens.
pub(crate) fn member_config(
    upstream: &str,
    grpc: &str,
    peers: &[String],
    replica_count: u32,
) -> Config {
    let mut config = config_for(upstream);
    config.cache.mode = relaycache::config::Mode::Ha;
    let ha = &mut config.cache.ha;
    ha.bind_addr = grpc.to_string();
    ha.advertise_addr = grpc.to_string();
    ha.peers = peers.to_vec();
    ha.replica_count = replica_count;
    ha.environment = relaycache::config::Environment::Local;
    ha.leave_timeout = Duration::from_secs(5);
    ha.token = MEMBER_TOKEN.into();
    ha.client_token = CLIENT_TOKEN.into();
    config
}

/// A client-mode config (an injected sidecar): memory plus the cluster.
pub(crate) fn client_config(upstream: &str, members: &[String], replica_count: u32) -> Config {
    let mut config = member_config(upstream, "127.0.0.1:0", &[], replica_count);
    config.cache.ha.embedded = false;
    config.cache.ha.addresses = members.to_vec();
    config.cache.ha.token = String::new();
    config
}

/// A member's config of an open cluster (`cache.ha.insecure`), as a demo
/// on one machine runs it: no tokens.
pub(crate) fn insecure_member_config(
    upstream: &str,
    grpc: &str,
    peers: &[String],
    replica_count: u32,
) -> Config {
    let mut config = member_config(upstream, grpc, peers, replica_count);
    config.cache.ha.token = String::new();
    config.cache.ha.client_token = String::new();
    config.cache.ha.insecure = true;
    config
}

/// `count` members of one cluster (`replica_count` 2) whose admin
/// endpoints take `admin_token`, each seeing all of them.
pub(crate) async fn members_with_admin_token(
    upstream: &str,
    count: usize,
    admin_token: &str,
) -> (Vec<Relay>, Vec<String>) {
    let addresses = member_addresses(count);
    let members: Vec<Relay> = addresses
        .iter()
        .map(|grpc| {
            let mut config = member_config(upstream, grpc, &addresses, 2);
            config.server.admin_token = admin_token.into();
            Relay::start(&config)
        })
        .collect();
    for member in &members {
        member.wait_for_members(count as u64).await;
    }
    (members, addresses)
}

impl Relay {
    /// Polls `/readyz` until it answers 200, at most `limit`. Returns whether
    /// it said "warming up" first, and how long it took.
    pub(crate) async fn wait_ready(&self, limit: Duration) -> (bool, Duration) {
        let started = Instant::now();
        let mut warming = false;
        loop {
            let reply = get(&self.admin_url("/readyz")).await;
            match reply.status {
                200 => return (warming, started.elapsed()),
                503 => {
                    let text = reply.text();
                    assert!(text.starts_with("warming up"), "{text}");
                    assert!(text.contains("warmup_timeout"), "{text}");
                    warming = true;
                }
                other => panic!("/readyz answered {other}: {}", reply.text()),
            }
            assert!(
                started.elapsed() < limit,
                "not ready after {limit:?}: {}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL: no leave, no handoff.
    pub(crate) fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until this process sees `n` live cluster members.
    pub(crate) async fn wait_for_members(&self, n: u64) -> serde_json::Value {
        self.wait_for_stats(&format!("{n} live members"), |s| {
            s["cluster"]["members"] == n
        })
        .await
    }

    /// A series from `/metrics`, by its exact name with labels. Panics
    /// (with the whole text) when the series is absent, so that asserting
    /// a zero cannot pass for a metric that is not exported at all.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = get(&self.admin_url("/metrics")).await.text();
        metric_in(&text, series).unwrap_or_else(|| {
            panic!("no series {series:?} in /metrics:\n{text}");
        })
    }

    /// Stops the process with SIGSTOP: it keeps its memory and sockets but
    /// answers nothing, as a member stalled by the kernel or a debugger.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`Relay::pause`]d process run again.
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

/// The value of `series` (name and labels, exactly) in Prometheus text.
pub(crate) fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            if name != series {
                return None;
            }
            value.parse().ok()
        })
}

/// A gRPC client of one member's cluster port, speaking plaintext.
pub(crate) async fn grpc_client(
    address: &str,
) -> relaycache::cluster::proto::cluster_client::ClusterClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the cluster port {address}: {e}"));
    relaycache::cluster::proto::cluster_client::ClusterClient::new(channel)
}

/// `message` as a request carrying `authorization: Bearer TOKEN`, as
/// members and clients send it.
pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// A Messages request with credential `api_key` and `body`, as a cluster
/// client describes it when it stores the answer: its key (derived as the
/// proxy derives it under `config`) and its origin as sent.
pub(crate) fn client_request(
    config: &Config,
    api_key: &str,
    body: &str,
) -> (
    relaycache::key::CacheKey,
    relaycache::cluster::proto::Origin,
) {
    let keys = relaycache::key::KeyBuilder::new(&config.cache.key, config.cache.isolation.clone());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", api_key.parse().expect("a header value"));
    headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let tenant = keys.tenant(&headers).expect("a credential");
    let parts = relaycache::key::KeyParts {
        tenant: &tenant,
        method: "POST",
        path: "/v1/messages",
        headers: &headers,
        namespace: None,
    };
    let (key, _) = keys.key(parts, body.as_bytes()).expect("a JSON body");
    let origin = keys.origin(parts, &Bytes::from(body.to_string()));
    (key, relaycache::cluster::wire::origin_to_wire(&origin))
}

/// A streamed (`"stream": true`) Messages request about `tag`.
pub(crate) fn streamed_question(tag: &str) -> String {
    serde_json::json!({"model": "m", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": tag}]})
    .to_string()
}

/// The next data frame of `body` as text, within 5 s.
pub(crate) async fn next_text(body: &mut hyper::body::Incoming, what: &str) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap_or_else(|_| panic!("{what}: no frame within 5 s"))
        .unwrap_or_else(|| panic!("{what}: the body ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    String::from_utf8(frame.into_data().expect("a data frame").to_vec()).expect("utf-8")
}

/// Runs `relaycache ARGS` to its end with `token` as the admin token
/// (`RELAYCACHE_ADMIN_TOKEN`) and nothing on standard input.
pub(crate) fn relaycache_with_token(args: &[&str], token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(args)
        .env("RELAYCACHE_ADMIN_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run relaycache")
}
