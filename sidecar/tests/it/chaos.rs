//! Chaos with a checker: three members and two clients under continuous
//! load from several tenants while a nemesis kills, stops, partitions and
//! skews members, and a rogue client repeats every attack on the cluster
//! port. The mock upstream writes into each answer the digest of the
//! request's credential and body it answered; the checker verifies that
//! every answer served, hit or miss, carries the digest of its own request.
//!
//! `make test` runs it for `CHAOS_SECONDS` (75 by default, split evenly
//! over the phases); `make chaos` for 15 minutes. It is ignored by a plain
//! `cargo test` because it saturates the machine, which would make the
//! other tests of this binary, running beside it, miss their timeouts;
//! both targets run it alone (`--ignored`). Partitions need network
//! namespaces (root and `ip`), the clock jump needs libfaketime (`make
//! test-deps` installs it): without them those phases are skipped and say
//! why.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use http::{HeaderMap, Method};
use mock_upstream::{credential_of, request_digest};
use relaycache::cluster::proto::{
    self, ClearRequest, DeleteRequest, PingRequest, SetManyRequest, SetRequest,
};
use relaycache::cluster::wire::entry_to_wire;
use relaycache::config::Config;
use relaycache::entry::CachedResponse;
use relaycache::key::CacheKey;
use relaycache::version::Version;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const TENANTS: usize = 4;
const QUESTIONS: usize = 200;
/// One request in this many is a refresh (`Cache-Control: no-cache`), so
/// that writes and replication go on during every phase.
const REFRESH_ONE_IN: u64 = 20;
const WORKERS: usize = 6;
/// The member whose clock jumps (it runs under libfaketime throughout).
const SKEWED: usize = 2;

/// What each phase does to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nemesis {
    None,
    Kill,
    Stop,
    Partition,
    ClockJump,
}

impl Nemesis {
    const ALL: [Nemesis; 5] = [
        Nemesis::None,
        Nemesis::Kill,
        Nemesis::Stop,
        Nemesis::Partition,
        Nemesis::ClockJump,
    ];

    fn name(self) -> &'static str {
        match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill -9 member 1, restart",
            Nemesis::Stop => "SIGSTOP member 0, SIGCONT",
            Nemesis::Partition => "partition member 2, heal",
            Nemesis::ClockJump => "member 2's clock +30s, back",
        }
    }
}

/// Counters of one phase.
#[derive(Default)]
struct Tally {
    checked: AtomicU64,
    wrong: AtomicU64,
    hits: AtomicU64,
    refreshes: AtomicU64,
    errors: AtomicU64,
    upstream_calls: AtomicU64,
}

/// Where the processes run: loopback, or network namespaces (partitions).
struct Hosts {
    net: Option<crate::netns::Net>,
    upstream_port: u16,
    /// Members' gRPC ids (advertised addresses).
    grpc: Vec<String>,
    /// Where the test reaches each member's gRPC port.
    grpc_from_test: Vec<String>,
    /// libfaketime's offset file for the skewed member, when available.
    clock_file: Option<std::path::PathBuf>,
}

impl Hosts {
    fn upstream_for(&self, i: usize) -> String {
        match &self.net {
            Some(net) => format!("http://{}:{}", net.host_ip(i), self.upstream_port),
            None => format!("http://127.0.0.1:{}", self.upstream_port),
        }
    }

    fn listen_ip(&self, i: usize) -> String {
        match &self.net {
            Some(net) => net.member_ip(i),
            None => "127.0.0.1".into(),
        }
    }

    fn member_config(&self, i: usize) -> Config {
        let mut config = member_config(&self.upstream_for(i), &self.grpc[i], &self.grpc, 2);
        if self.net.is_some() {
            // The test (outside the namespaces) calls the port as a rogue
            // client would, over the member's own link.
            config.cache.ha.bind_addr = "0.0.0.0:3320".into();
        }
        config.server.listen = format!("{}:0", self.listen_ip(i));
        config.server.admin_listen = format!("{}:0", self.listen_ip(i));
        config
    }

    /// Client `j` runs next to member `j` (in its namespace), as a sidecar
    /// on that member's node would.
    fn client_config(&self, j: usize) -> Config {
        let mut config = client_config(&self.upstream_for(j), &self.grpc, 2);
        config.server.listen = format!("{}:0", self.listen_ip(j));
        config.server.admin_listen = format!("{}:0", self.listen_ip(j));
        config
    }

    fn prefix(&self, host: usize, skewed: bool) -> Vec<String> {
        let mut prefix = Vec::new();
        if let Some(net) = &self.net {
            prefix.extend(["ip", "netns", "exec"].map(String::from));
            prefix.push(net.namespace(crate::netns::MEMBERS[host]));
        }
        if let (true, Some(file)) = (skewed, &self.clock_file) {
            prefix.push("env".into());
            prefix.push(format!("LD_PRELOAD={LIBFAKETIME}"));
            prefix.push(format!("FAKETIME_TIMESTAMP_FILE={}", file.display()));
            prefix.push("FAKETIME_NO_CACHE=1".into());
            prefix.push("FAKETIME_DONT_FAKE_MONOTONIC=1".into());
        }
        prefix
    }

    fn start(&self, config: &Config, host: usize, skewed: bool) -> Relay {
        let prefix = self.prefix(host, skewed);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        if prefix.is_empty() {
            Relay::start(config)
        } else {
            Relay::start_prefixed(config, &prefix)
        }
    }
}

/// The load: tenants asking the same questions through every process.
struct Load {
    urls: Mutex<Vec<String>>,
    phase: AtomicUsize,
    tallies: Vec<Tally>,
    keys_seen: Mutex<Vec<String>>,
    wrong_examples: Mutex<Vec<String>>,
    stop: std::sync::atomic::AtomicBool,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn worker(load: Arc<Load>, seed: u64) {
    let mut rng = seed | 1;
    while !load.stop.load(Ordering::Relaxed) {
        let tenant = format!("tenant-{}", xorshift(&mut rng) % TENANTS as u64);
        let body = question(&format!("chaos {}", xorshift(&mut rng) % QUESTIONS as u64));
        let url = {
            let urls = load.urls.lock().unwrap();
            urls[(xorshift(&mut rng) % urls.len() as u64) as usize].clone()
        };
        let tally = &load.tallies[load.phase.load(Ordering::Relaxed)];
        let mut headers = vec![
            ("x-api-key", tenant.as_str()),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ];
        if xorshift(&mut rng).is_multiple_of(REFRESH_ONE_IN) {
            headers.push(("cache-control", "no-cache"));
        }
        let reply = try_send(
            Method::POST,
            &url,
            &headers,
            body.clone(),
            Duration::from_secs(3),
        )
        .await;
        let reply = match reply {
            Ok(reply) if reply.status == 200 => reply,
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut sent = HeaderMap::new();
        sent.insert("x-api-key", tenant.parse().unwrap());
        let expected = request_digest(&credential_of(&sent), body.as_bytes());
        let served = reply.json()["mock_request_digest"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        tally.checked.fetch_add(1, Ordering::Relaxed);
        if served != expected {
            tally.wrong.fetch_add(1, Ordering::Relaxed);
            let mut examples = load.wrong_examples.lock().unwrap();
            if examples.len() < 5 {
                examples.push(format!(
                    "{tenant} via {url} ({}): expected {expected}, served {served}: {}",
                    reply.cache_status(),
                    reply.text()
                ));
            }
        }
        match reply.cache_status() {
            "hit" => {
                tally.hits.fetch_add(1, Ordering::Relaxed);
            }
            "refresh" => {
                tally.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let key = reply.header("x-relaycache-key").to_string();
        let mut keys = load.keys_seen.lock().unwrap();
        if keys.len() < 64 && !key.is_empty() && !keys.contains(&key) {
            keys.push(key);
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn forged_entry(key: &CacheKey, ttl: Duration, wall_ms: u64) -> proto::Entry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("set-cookie", "session=rogue".parse().unwrap());
    let mut entry = CachedResponse::new(&headers, br#"{"forged":true}"#, ttl);
    entry.version = Version {
        wall_ms,
        counter: 0,
        origin: 666,
    };
    entry_to_wire(key, &entry)
}

/// Every attack on the cluster port, over and over; the number of times a
/// member accepted one.
async fn rogue(load: Arc<Load>, targets: Vec<String>, config: Config) -> (u64, u64) {
    let (mut attempts, mut accepted) = (0u64, 0u64);
    // The rogue's own request: the only key its origin can prove.
    let (own_key, origin) = client_request(&config, "rogue-key", &question("chaos 1"));
    let mut round = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        round += 1;
        let target = &targets[(round % targets.len() as u64) as usize];
        let victim = load
            .keys_seen
            .lock()
            .unwrap()
            .get((round % 64) as usize)
            .and_then(|hex| CacheKey::from_hex(hex))
            .unwrap_or(CacheKey([9; 32]));
        let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut client = relaycache::cluster::proto::cluster_client::ClusterClient::new(channel);
        let future = now_ms() + 3_600_000;
        let now = now_ms();
        // Forged writes under a victim's key, without and with the clients'
        // token, bare and with the rogue's own request; and under its own
        // key with a version an hour ahead.
        let forged_sets = [
            (None, &victim, now, None),
            (Some(CLIENT_TOKEN), &victim, now, None),
            (Some(CLIENT_TOKEN), &victim, now, Some(origin.clone())),
            (Some(CLIENT_TOKEN), &own_key, future, Some(origin.clone())),
        ];
        let mut outcomes = Vec::new();
        for (token, key, wall_ms, origin) in forged_sets {
            let request = SetRequest {
                entry: Some(forged_entry(key, Duration::from_secs(600), wall_ms)),
                admit_to_reserve: true,
                origin,
            };
            let request = match token {
                Some(token) => with_token(request, token),
                None => tonic::Request::new(request),
            };
            let reply = client.set(request).await;
            outcomes.push(reply.is_ok_and(|r| r.into_inner().stored));
        }
        outcomes.extend([
            client
                .set_many(with_token(
                    SetManyRequest {
                        entries: vec![forged_entry(
                            &victim,
                            Duration::from_secs(10 * 365 * 86_400),
                            now_ms(),
                        )],
                    },
                    CLIENT_TOKEN,
                ))
                .await
                .is_ok(),
            client
                .delete(with_token(
                    DeleteRequest {
                        key: victim.0.to_vec(),
                    },
                    CLIENT_TOKEN,
                ))
                .await
                .is_ok(),
            client
                .clear(with_token(ClearRequest {}, CLIENT_TOKEN))
                .await
                .is_ok(),
        ]);
        attempts += outcomes.len() as u64;
        accepted += outcomes.iter().filter(|&&ok| ok).count() as u64;
        // A pinned clock and a join from an address nobody lists: answered
        // (pings are a client's to make) but without effect.
        let pin = PingRequest {
            from: "127.0.0.1:1".into(),
            clock: Some(proto::Version {
                wall_ms: u64::MAX,
                counter: u32::MAX,
                origin: 666,
            }),
        };
        let _ = client.ping(with_token(pin, CLIENT_TOKEN)).await;
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (attempts, accepted)
}

fn chaos_seconds() -> u64 {
    std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75)
        .max(Nemesis::ALL.len() as u64 * 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "loads the machine for CHAOS_SECONDS: make unit and make chaos run it on its own"]
async fn every_answer_served_under_chaos_is_its_own_requests() {
    let net = match crate::netns::Net::create('x', 2) {
        Ok(net) => Some(net),
        Err(crate::netns::Refused(why)) => {
            eprintln!("partitions skipped: cannot create network namespaces here ({why}); the other nemeses run on loopback");
            None
        }
    };
    let upstream = MockUpstream::start("0.0.0.0:0", MockOptions::default())
        .await
        .expect("mock upstream");
    let clock_dir = tempfile::tempdir().unwrap();
    let clock_file = std::path::Path::new(LIBFAKETIME).exists().then(|| {
        let file = clock_dir.path().join("offset");
        std::fs::write(&file, "+0s\n").unwrap();
        file
    });
    if clock_file.is_none() {
        eprintln!("clock jump skipped: libfaketime is not installed (make test-deps installs the faketime package)");
    }
    let grpc: Vec<String> = match &net {
        Some(net) => (0..3)
            .map(|i| format!("{}:3320", net.cluster_ip(i)))
            .collect(),
        None => member_addresses(3),
    };
    let grpc_from_test = match &net {
        Some(net) => (0..3)
            .map(|i| format!("{}:3320", net.member_ip(i)))
            .collect(),
        None => grpc.clone(),
    };
    let hosts = Hosts {
        net,
        upstream_port: upstream.addr.port(),
        grpc,
        grpc_from_test,
        clock_file,
    };
    let member_configs: Vec<Config> = (0..3).map(|i| hosts.member_config(i)).collect();
    let mut members: Vec<Relay> = (0..3)
        .map(|i| hosts.start(&member_configs[i], i, i == SKEWED))
        .collect();
    let clients: Vec<Relay> = (0..2)
        .map(|j| hosts.start(&hosts.client_config(j), j, false))
        .collect();
    for relay in members.iter().chain(&clients) {
        relay.wait_for_members(3).await;
    }
    let url = |relay: &Relay| relay.url("/v1/messages");
    let load = Arc::new(Load {
        urls: Mutex::new(members.iter().chain(&clients).map(url).collect()),
        phase: AtomicUsize::new(0),
        tallies: Nemesis::ALL.iter().map(|_| Tally::default()).collect(),
        keys_seen: Mutex::new(Vec::new()),
        wrong_examples: Mutex::new(Vec::new()),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(Arc::clone(&load), 0x9e37_79b9 * (w as u64 + 1))))
        .collect();
    let attacker = tokio::spawn(rogue(
        Arc::clone(&load),
        hosts.grpc_from_test.clone(),
        member_configs[0].clone(),
    ));

    let phase_time = Duration::from_secs(chaos_seconds() / Nemesis::ALL.len() as u64);
    let mut skipped = Vec::new();
    for (index, nemesis) in Nemesis::ALL.into_iter().enumerate() {
        let calls_before = upstream.calls();
        load.phase.store(index, Ordering::Relaxed);
        let started = Instant::now();
        let half = phase_time / 2;
        match nemesis {
            Nemesis::None => tokio::time::sleep(phase_time).await,
            Nemesis::Kill => {
                members[1].kill_hard();
                tokio::time::sleep(half).await;
                members[1] = hosts.start(&member_configs[1], 1, false);
                load.urls.lock().unwrap()[1] = url(&members[1]);
            }
            Nemesis::Stop => {
                members[0].pause();
                tokio::time::sleep(half).await;
                members[0].resume();
            }
            Nemesis::Partition => match &hosts.net {
                Some(net) => {
                    net.set_port('c', false);
                    tokio::time::sleep(half).await;
                    net.set_port('c', true);
                }
                None => skipped.push(nemesis),
            },
            Nemesis::ClockJump => match &hosts.clock_file {
                Some(file) => {
                    std::fs::write(file, "+30s\n").unwrap();
                    tokio::time::sleep(half).await;
                    std::fs::write(file, "+0s\n").unwrap();
                }
                None => skipped.push(nemesis),
            },
        }
        tokio::time::sleep(phase_time.saturating_sub(started.elapsed())).await;
        load.tallies[index]
            .upstream_calls
            .store(upstream.calls() - calls_before, Ordering::Relaxed);
    }
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    let (attempts, accepted) = attacker.await.expect("rogue");

    println!("chaos: {} s per phase, {WORKERS} workers, {TENANTS} tenants x {QUESTIONS} questions, 3 members + 2 clients{}", phase_time.as_secs(), if hosts.net.is_some() { " in network namespaces" } else { " on loopback" });
    println!("| nemesis | answers checked | wrong | hit ratio (refreshes excluded) | upstream calls | failed requests |");
    println!("|---|---|---|---|---|---|");
    let mut wrong_total = 0;
    for (nemesis, tally) in Nemesis::ALL.iter().zip(&load.tallies) {
        let checked = tally.checked.load(Ordering::Relaxed);
        let wrong = tally.wrong.load(Ordering::Relaxed);
        wrong_total += wrong;
        let note = if skipped.contains(nemesis) {
            " (skipped)"
        } else {
            ""
        };
        println!(
            "| {}{note} | {checked} | {wrong} | {:.3} | {} | {} |",
            nemesis.name(),
            tally.hits.load(Ordering::Relaxed) as f64
                / (checked - tally.refreshes.load(Ordering::Relaxed)).max(1) as f64,
            tally.upstream_calls.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
        assert!(checked > 0, "no answer was checked during {nemesis:?}");
    }
    println!("rogue: {attempts} attacks, {accepted} accepted");
    assert_eq!(
        wrong_total,
        0,
        "answers served for another request: {:?}",
        load.wrong_examples.lock().unwrap()
    );
    assert_eq!(accepted, 0, "a member accepted a rogue client's attack");
    // Healed: every process sees the whole cluster again.
    for relay in members.iter().chain(&clients) {
        relay.wait_for_members(3).await;
    }
    let refused: f64 = {
        let mut sum = 0.0;
        for member in &members {
            sum += member
                .metric("relaycache_cluster_refused_total{reason=\"member_only\"}")
                .await;
        }
        sum
    };
    assert!(
        refused > 0.0,
        "the rogue's member-only calls were not counted"
    );
}
