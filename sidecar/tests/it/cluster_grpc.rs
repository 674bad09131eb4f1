//! The cluster's gRPC protocol as another member or a client speaks it: a
//! real member process on loopback, called with the generated client.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use http::{HeaderMap, Method};
use relaycache::cluster::proto::cluster_client::ClusterClient;
use relaycache::cluster::proto::{
    self, ClearRequest, DeleteRequest, GetManyRequest, GetRequest, PingRequest, ScanRequest,
    SetBatchRequest, SetManyRequest, SetRequest, VersionsRequest,
};
use relaycache::cluster::wire::{entry_from_wire, entry_to_wire, version_from_wire};
use relaycache::config::Config;
use relaycache::entry::CachedResponse;
use relaycache::key::CacheKey;
use relaycache::version::Version;
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "grpc-test-token";

/// A one-member cluster with [`TOKEN`], and its gRPC address.
async fn member(upstream: &str) -> (Relay, String) {
    let grpc = member_addresses(1).remove(0);
    let mut config = member_config(upstream, &grpc, std::slice::from_ref(&grpc), 1);
    config.cache.ha.token = TOKEN.into();
    let relay = Relay::start(&config);
    relay.wait_for_members(1).await;
    (relay, grpc)
}

fn key(n: u8) -> CacheKey {
    CacheKey([n; 32])
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// An entry for `key` with body `body` at `version`, as sent.
fn entry(key: &CacheKey, body: &str, version: Version) -> proto::Entry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let mut entry = CachedResponse::new(&headers, body.as_bytes(), Duration::from_secs(600));
    entry.version = version;
    entry_to_wire(key, &entry)
}

fn at(wall_ms: u64, counter: u32) -> Version {
    Version {
        wall_ms,
        counter,
        origin: 7,
    }
}

/// The body of an entry as received.
fn body_of(entry: &proto::Entry) -> String {
    let (_, restored) = entry_from_wire(entry).expect("a well-formed, fresh entry");
    String::from_utf8(restored.body().to_vec()).unwrap()
}

/// `message` with `token`, or with no authorization at all.
fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(token) => with_token(message, token),
        None => tonic::Request::new(message),
    }
}

async fn held(client: &mut ClusterClient<Channel>, key: &CacheKey) -> Option<String> {
    held_entry(client, key).await.as_ref().map(body_of)
}

#[tokio::test]
async fn batched_and_single_calls_store_read_and_delete() {
    let upstream = mock().await;
    let (relay, grpc) = member(&upstream.url()).await;
    let mut client = grpc_client(&grpc).await;
    let now = now_ms();

    let ping = client
        .ping(with_token(PingRequest::default(), TOKEN))
        .await
        .expect("ping")
        .into_inner();
    assert_eq!(ping.id, grpc);
    assert_eq!(ping.members, [grpc.as_str()]);

    let first: Vec<proto::Entry> = (1..=3)
        .map(|n| entry(&key(n), &format!("answer {n}"), at(now, 0)))
        .collect();
    let stored = client
        .set_many(with_token(SetManyRequest { entries: first }, TOKEN))
        .await
        .expect("set_many")
        .into_inner()
        .stored;
    assert_eq!(stored, 3);
    assert_eq!(relay.stats().await["key_count"], 3);

    // GetMany returns what it holds and leaves out what it does not.
    let keys = [key(1), key(2), key(3), key(9)];
    let many = client
        .get_many(with_token(
            GetManyRequest {
                keys: keys.iter().map(|k| k.0.to_vec()).collect(),
            },
            TOKEN,
        ))
        .await
        .expect("get_many")
        .into_inner()
        .entries;
    let found: HashMap<Vec<u8>, String> =
        many.iter().map(|e| (e.key.clone(), body_of(e))).collect();
    assert_eq!(found.len(), 3, "{found:?}");
    for n in 1..=3 {
        assert_eq!(found[&key(n).0.to_vec()], format!("answer {n}"));
    }
    for e in &many {
        assert_eq!(version_from_wire(e.version.as_ref()), at(now, 0));
    }
    assert_eq!(
        held(&mut client, &key(2)).await.as_deref(),
        Some("answer 2")
    );
    assert_eq!(held(&mut client, &key(9)).await, None);

    // An older copy never replaces a newer one; a newer one does.
    let stored = client
        .set_many(with_token(
            SetManyRequest {
                entries: vec![
                    entry(&key(1), "older", at(now - 1, 5)),
                    entry(&key(2), "newer", at(now, 1)),
                    entry(&key(4), "answer 4", at(now, 0)),
                ],
            },
            TOKEN,
        ))
        .await
        .expect("set_many")
        .into_inner()
        .stored;
    assert_eq!(stored, 2);
    assert_eq!(
        held(&mut client, &key(1)).await.as_deref(),
        Some("answer 1")
    );
    assert_eq!(held(&mut client, &key(2)).await.as_deref(), Some("newer"));
    let single = client
        .set(with_token(
            SetRequest {
                entry: Some(entry(&key(3), "older", at(now - 1, 0))),
                ..SetRequest::default()
            },
            TOKEN,
        ))
        .await
        .expect("set")
        .into_inner();
    assert!(!single.stored);
    // An entry whose TTL ran out on the way is not kept.
    let mut expired = entry(&key(5), "expired", at(now, 0));
    expired.created_ms = 1_000;
    let stored = client
        .set_many(with_token(
            SetManyRequest {
                entries: vec![expired],
            },
            TOKEN,
        ))
        .await
        .expect("set_many")
        .into_inner()
        .stored;
    assert_eq!(stored, 0);

    // Versions answers in request order, absent for keys not held.
    let asked = [key(2), key(9), key(1)];
    let versions = client
        .versions(with_token(
            VersionsRequest {
                keys: asked.iter().map(|k| k.0.to_vec()).collect(),
            },
            TOKEN,
        ))
        .await
        .expect("versions")
        .into_inner()
        .versions;
    let listed: Vec<(Vec<u8>, Option<Version>)> = versions
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.version.as_ref().map(|v| version_from_wire(Some(v))),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (key(2).0.to_vec(), Some(at(now, 1))),
            (key(9).0.to_vec(), None),
            (key(1).0.to_vec(), Some(at(now, 0))),
        ]
    );

    let delete = |n: u8| {
        with_token(
            DeleteRequest {
                key: key(n).0.to_vec(),
            },
            TOKEN,
        )
    };
    assert!(
        client
            .delete(delete(1))
            .await
            .expect("delete")
            .into_inner()
            .removed
    );
    assert!(
        !client
            .delete(delete(1))
            .await
            .expect("delete")
            .into_inner()
            .removed
    );
    assert_eq!(held(&mut client, &key(1)).await, None);
    let left = client
        .get_many(with_token(
            GetManyRequest {
                keys: [key(1), key(2), key(3), key(4)]
                    .iter()
                    .map(|k| k.0.to_vec())
                    .collect(),
            },
            TOKEN,
        ))
        .await
        .expect("get_many")
        .into_inner()
        .entries;
    let mut left: Vec<String> = left.iter().map(body_of).collect();
    left.sort();
    assert_eq!(left, ["answer 3", "answer 4", "newer"]);
    assert_eq!(relay.stats().await["key_count"], 3);

    // Malformed requests are refused with a reason, not stored.
    let short_key = client
        .get(with_token(
            GetRequest {
                key: vec![1; 31],
                ..GetRequest::default()
            },
            TOKEN,
        ))
        .await
        .expect_err("a 31-byte key");
    assert_eq!(short_key.code(), Code::InvalidArgument);
    let too_many = client
        .get_many(with_token(
            GetManyRequest {
                keys: vec![key(1).0.to_vec(); 4097],
            },
            TOKEN,
        ))
        .await
        .expect_err("4097 keys");
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many}");
    assert_eq!(relay.stats().await["cluster"]["refused"], 0);
}

#[tokio::test]
async fn calls_without_the_token_are_refused() {
    let upstream = mock().await;
    let (relay, grpc) = member(&upstream.url()).await;
    let mut client = grpc_client(&grpc).await;
    let now = now_ms();
    let stored = client
        .set_many(with_token(
            SetManyRequest {
                entries: vec![entry(&key(1), "kept", at(now, 0))],
            },
            TOKEN,
        ))
        .await
        .expect("set_many with the token")
        .into_inner()
        .stored;
    assert_eq!(stored, 1);

    // Each call once without a token and once with a wrong one.
    let mut refusals = Vec::new();
    for token in [None, Some("not-the-token")] {
        let outcomes = [
            client
                .ping(request(PingRequest::default(), token))
                .await
                .err(),
            client
                .get(request(
                    GetRequest {
                        key: key(1).0.to_vec(),
                        ..GetRequest::default()
                    },
                    token,
                ))
                .await
                .err(),
            client
                .get_many(request(
                    GetManyRequest {
                        keys: vec![key(1).0.to_vec()],
                    },
                    token,
                ))
                .await
                .err(),
            client
                .set_many(request(
                    SetManyRequest {
                        entries: vec![entry(&key(2), "intruder", at(now, 9))],
                    },
                    token,
                ))
                .await
                .err(),
            client
                .versions(request(
                    VersionsRequest {
                        keys: vec![key(1).0.to_vec()],
                    },
                    token,
                ))
                .await
                .err(),
            client
                .delete(request(
                    DeleteRequest {
                        key: key(1).0.to_vec(),
                    },
                    token,
                ))
                .await
                .err(),
        ];
        for (call, outcome) in outcomes.into_iter().enumerate() {
            let status = outcome.unwrap_or_else(|| panic!("call {call} with {token:?} was served"));
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "call {call}: {status}"
            );
            assert!(!status.message().contains(TOKEN), "{status}");
            refusals.push(status);
        }
    }
    let stats = relay.stats().await;
    assert_eq!(stats["cluster"]["refused"], refusals.len());
    // Nothing the refused calls carried was stored or removed.
    assert_eq!(stats["key_count"], 1);
    assert_eq!(held(&mut client, &key(1)).await.as_deref(), Some("kept"));
    assert_eq!(held(&mut client, &key(2)).await, None);
}

/// A header block as the wire carries it, with any headers at all.
fn raw_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.extend_from_slice(&(name.len() as u16).to_le_bytes());
        block.extend_from_slice(&(value.len() as u16).to_le_bytes());
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Stores `entry` with a member's credential; whether it was stored.
async fn set(client: &mut ClusterClient<Channel>, entry: proto::Entry) -> bool {
    client
        .set(with_token(
            SetRequest {
                entry: Some(entry),
                ..SetRequest::default()
            },
            TOKEN,
        ))
        .await
        .expect("set")
        .into_inner()
        .stored
}

async fn held_entry(client: &mut ClusterClient<Channel>, key: &CacheKey) -> Option<proto::Entry> {
    client
        .get(with_token(
            GetRequest {
                key: key.0.to_vec(),
                ..GetRequest::default()
            },
            TOKEN,
        ))
        .await
        .expect("get")
        .into_inner()
        .entry
}

#[tokio::test]
async fn entries_from_the_wire_are_checked_like_answers_from_the_upstream() {
    let upstream = mock().await;
    let grpc = member_addresses(1).remove(0);
    let mut config = member_config(&upstream.url(), &grpc, std::slice::from_ref(&grpc), 1);
    config.cache.ha.token = TOKEN.into();
    config.cache.max_ttl = Duration::from_secs(3600);
    config.cache.max_entry_bytes = 2000;
    let relay = Relay::start(&config);
    relay.wait_for_members(1).await;
    let mut client = grpc_client(&grpc).await;
    let now = now_ms();

    // A 10-year TTL is cut to cache.max_ttl.
    let mut decade = entry(&key(30), "long", at(now, 0));
    decade.ttl_ms = 10 * 365 * 24 * 3600 * 1000;
    assert!(set(&mut client, decade).await);
    let held = held_entry(&mut client, &key(30)).await.expect("stored");
    assert!(
        held.ttl_ms <= 3600 * 1000 + 1000,
        "a forged TTL of ten years was kept: {} ms",
        held.ttl_ms
    );

    // Headers never stored from an upstream answer are not stored from a peer.
    let mut cookie = entry(&key(31), "cookie", at(now, 0));
    cookie.header_block = raw_header_block(&[
        ("content-type", "application/json"),
        ("set-cookie", "session=attacker"),
        ("request-id", "req_forged"),
    ]);
    assert!(set(&mut client, cookie).await);
    let held = held_entry(&mut client, &key(31)).await.expect("stored");
    let (_, restored) = entry_from_wire(&held).expect("well formed");
    assert!(
        !restored.headers().contains_key("set-cookie"),
        "a forged set-cookie was stored: {:?}",
        restored.headers()
    );
    assert!(!restored.headers().contains_key("request-id"));
    assert_eq!(restored.headers()["content-type"], "application/json");

    // Created an hour from now: it would stay fresh forever.
    let mut future = entry(&key(32), "future", at(now, 0));
    future.created_ms = now + 3600 * 1000;
    assert!(
        !set(&mut client, future).await,
        "an entry from the future was stored"
    );
    assert!(held_entry(&mut client, &key(32)).await.is_none());

    // A version an hour ahead would win over every honest refresh.
    let ahead = entry(&key(33), "ahead", at(now + 3600 * 1000, 0));
    assert!(
        !set(&mut client, ahead).await,
        "a version from the future was stored"
    );

    // Larger than cache.max_entry_bytes.
    let big = entry(&key(34), &"x".repeat(5000), at(now, 0));
    assert!(
        !set(&mut client, big).await,
        "an entry over max_entry_bytes was stored"
    );

    let metrics = get(&relay.admin_url("/metrics")).await.text();
    for reason in ["entry_from_the_future", "entry_too_large"] {
        let series = format!("relaycache_cluster_refused_total{{reason=\"{reason}\"}}");
        assert!(
            metric_in(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series} not counted"
        );
    }
}

#[tokio::test]
async fn a_remote_clock_far_ahead_cannot_pin_the_members_clock() {
    let upstream = mock().await;
    let (relay, grpc) = member(&upstream.url()).await;
    let mut client = grpc_client(&grpc).await;
    let pinned = PingRequest {
        clock: Some(relaycache::cluster::wire::version_to_wire(Version {
            wall_ms: u64::MAX,
            counter: u32::MAX,
            origin: 666,
        })),
        ..PingRequest::default()
    };
    client.ping(with_token(pinned, TOKEN)).await.expect("ping");
    // The member's next writes must carry a version near its own clock, or
    // no honest refresh could ever replace them.
    let reply = post_messages(&relay, "k", &question("after-the-ping"), &[]).await;
    assert_eq!(reply.cache_status(), "miss");
    let key = CacheKey::from_hex(reply.header("x-relaycache-key")).expect("a key");
    let held = held_entry(&mut client, &key).await.expect("stored");
    let version = version_from_wire(held.version.as_ref());
    assert!(
        version.wall_ms <= now_ms() + 2000,
        "the member's clock was pinned: {version:?}"
    );
    let metrics = get(&relay.admin_url("/metrics")).await.text();
    assert!(
        metric_in(
            &metrics,
            "relaycache_cluster_refused_total{reason=\"clock_skew\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the far clock is counted"
    );
}

#[tokio::test]
async fn a_ping_from_an_address_outside_the_peer_list_never_makes_a_member() {
    let upstream = mock().await;
    let (relay, grpc) = member(&upstream.url()).await;
    // A process that holds the token (a leaked or shared one) and answers
    // probes, but that no member lists in cache.ha.peers.
    let rogue_grpc = member_addresses(1).remove(0);
    let mut rogue_config = member_config(
        &upstream.url(),
        &rogue_grpc,
        std::slice::from_ref(&rogue_grpc),
        1,
    );
    rogue_config.cache.ha.token = TOKEN.into();
    let rogue = Relay::start(&rogue_config);
    rogue.wait_for_members(1).await;

    let mut client = grpc_client(&grpc).await;
    let join = PingRequest {
        from: rogue_grpc.clone(),
        ..PingRequest::default()
    };
    let reply = client
        .ping(with_token(join, TOKEN))
        .await
        .expect("the ping is answered")
        .into_inner();
    assert_eq!(reply.members, [grpc.as_str()]);
    // Several probe rounds (environment: local probes every few hundred ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = relay.stats().await;
    assert_eq!(
        stats["cluster"]["members"], 1,
        "a ping from an unlisted address made a member: {stats}"
    );
    let reply = client
        .ping(with_token(PingRequest::default(), TOKEN))
        .await
        .expect("ping")
        .into_inner();
    assert!(
        !reply.members.contains(&rogue_grpc),
        "the rogue is spread to others through probe replies: {:?}",
        reply.members
    );
    let metrics = get(&relay.admin_url("/metrics")).await.text();
    assert!(
        metric_in(
            &metrics,
            "relaycache_cluster_refused_total{reason=\"not_a_peer\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the attempt is counted"
    );
}

// Roles: what a caller holding only the clients' token (every injected
// sidecar holds it) can and cannot do.

/// A one-member cluster with the test harness's members' and clients'
/// tokens, its config and its gRPC address.
async fn member_with_roles(upstream: &str) -> (Relay, Config, String) {
    let grpc = member_addresses(1).remove(0);
    let config = member_config(upstream, &grpc, std::slice::from_ref(&grpc), 1);
    let relay = Relay::start(&config);
    relay.wait_for_members(1).await;
    (relay, config, grpc)
}

/// The value of `relaycache_cluster_refused_total{reason}`.
async fn refused(relay: &Relay, reason: &str) -> f64 {
    relay
        .metric(&format!(
            "relaycache_cluster_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
}

#[tokio::test]
async fn a_forged_set_from_a_client_never_reaches_another_tenant() {
    let upstream = mock().await;
    let (relay, _, grpc) = member_with_roles(&upstream.url()).await;
    let body = question("victim's question");
    let first = post_messages(&relay, "victim-key", &body, &[]).await;
    assert_eq!(first.cache_status(), "miss");
    let victim_key = CacheKey::from_hex(first.header("x-relaycache-key")).expect("hex key");

    // An app pod's sidecar holds the clients' token. It writes a forged
    // answer, a newer version than the victim's, under the victim's key.
    let mut attacker = grpc_client(&grpc).await;
    let mut forged = entry(&victim_key, "forged answer", at(now_ms() + 500, 0));
    forged.header_block = raw_header_block(&[
        ("content-type", "application/json"),
        ("set-cookie", "session=attacker"),
    ]);
    let outcome = attacker
        .set(with_token(
            SetRequest {
                entry: Some(forged),
                ..SetRequest::default()
            },
            CLIENT_TOKEN,
        ))
        .await;
    let status = outcome.expect_err("a client's set without its request is stored");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");

    let again = post_messages(&relay, "victim-key", &body, &[]).await;
    assert_eq!(
        (again.cache_status(), again.mock_call().as_str()),
        ("hit", "1"),
        "the victim was served {:?}",
        again.text()
    );
    assert!(!again.headers.contains_key("set-cookie"));
    assert_eq!(refused(&relay, "forged_key").await, 1.0);
}

#[tokio::test]
async fn a_client_stores_only_the_answers_to_its_own_requests() {
    let upstream = mock().await;
    let (relay, config, grpc) = member_with_roles(&upstream.url()).await;
    let body = question("shared wording");
    let victim = post_messages(&relay, "victim-key", &body, &[]).await;
    let victim_key = CacheKey::from_hex(victim.header("x-relaycache-key")).expect("hex key");

    // The attacker's own request, as its sidecar would describe it.
    let (own_key, origin) = client_request(&config, "attacker-key", &body);
    assert!(
        origin.headers.iter().all(|h| h.name != "content-type"),
        "only the headers the key reads travel: {:?}",
        origin.headers.iter().map(|h| &h.name).collect::<Vec<_>>()
    );
    let mut attacker = grpc_client(&grpc).await;
    let offer = |key: &CacheKey, text: &str| SetRequest {
        entry: Some(entry(key, text, at(now_ms() + 500, 0))),
        admit_to_reserve: true,
        origin: Some(origin.clone()),
    };

    // Its own request's origin does not make the victim's key its own.
    let status = attacker
        .set(with_token(offer(&victim_key, "forged"), CLIENT_TOKEN))
        .await
        .expect_err("a client stored under another tenant's key");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert_eq!(refused(&relay, "forged_key").await, 1.0);

    // Under its own key the member derives the same key and stores it.
    let stored = attacker
        .set(with_token(offer(&own_key, "own answer"), CLIENT_TOKEN))
        .await
        .expect("a client's set of its own answer")
        .into_inner()
        .stored;
    assert!(stored);
    let own = post_messages(&relay, "attacker-key", &body, &[]).await;
    assert_eq!(
        (own.cache_status(), own.text()),
        ("hit", "own answer".to_string())
    );
    let theirs = post_messages(&relay, "victim-key", &body, &[]).await;
    assert_eq!(
        (theirs.cache_status(), theirs.mock_call().as_str()),
        ("hit", "1")
    );
}

/// SetBatch carries the writes that queue up for a member; each write in
/// it is held to what Set holds it to, so a batch cannot smuggle a forged
/// answer in among genuine ones.
#[tokio::test]
async fn a_clients_batch_stores_only_the_answers_to_its_own_requests() {
    let upstream = mock().await;
    let (relay, config, grpc) = member_with_roles(&upstream.url()).await;
    let body = question("batched wording");
    let victim = post_messages(&relay, "victim-key", &body, &[]).await;
    let victim_key = CacheKey::from_hex(victim.header("x-relaycache-key")).expect("hex key");
    let (own_key, origin) = client_request(&config, "attacker-key", &body);
    let offer = |key: &CacheKey, text: &str, origin: Option<proto::Origin>| SetRequest {
        entry: Some(entry(key, text, at(now_ms() + 500, 0))),
        admit_to_reserve: false,
        origin,
    };
    let mut attacker = grpc_client(&grpc).await;
    let outcomes = attacker
        .set_batch(with_token(
            SetBatchRequest {
                writes: vec![
                    offer(&victim_key, "forged, no origin", None),
                    offer(&victim_key, "forged, own origin", Some(origin.clone())),
                    offer(&own_key, "own answer", Some(origin.clone())),
                ],
            },
            CLIENT_TOKEN,
        ))
        .await
        .expect("a client's batch is answered write by write")
        .into_inner()
        .outcomes;
    let taken: Vec<(bool, bool)> = outcomes
        .iter()
        .map(|o| (o.stored, o.refused.is_empty()))
        .collect();
    assert_eq!(taken, vec![(false, false), (false, false), (true, true)]);
    assert!(
        outcomes[0].refused.contains("only for its own request"),
        "{:?}",
        outcomes[0].refused
    );
    assert_eq!(refused(&relay, "forged_key").await, 2.0);
    let theirs = post_messages(&relay, "victim-key", &body, &[]).await;
    assert_eq!(
        (theirs.cache_status(), theirs.mock_call().as_str()),
        ("hit", "1"),
        "the victim was served {:?}",
        theirs.text()
    );
    let own = post_messages(&relay, "attacker-key", &body, &[]).await;
    assert_eq!(
        (own.cache_status(), own.text()),
        ("hit", "own answer".to_string())
    );
    // A batch is bounded like every other batched call.
    let writes = vec![offer(&own_key, "x", Some(origin.clone())); 4097];
    let status = attacker
        .set_batch(with_token(SetBatchRequest { writes }, CLIENT_TOKEN))
        .await
        .expect_err("4,097 writes in one call");
    assert!(status.message().contains("at most 4096"), "{status}");
}

#[tokio::test]
async fn member_only_calls_from_a_client_are_refused() {
    let upstream = mock().await;
    let (relay, _, grpc) = member_with_roles(&upstream.url()).await;
    post_messages(&relay, "k", &question("kept"), &[]).await;
    let held_key = CacheKey::from_hex(
        post_messages(&relay, "k", &question("kept"), &[])
            .await
            .header("x-relaycache-key"),
    )
    .expect("hex key");
    let mut client = grpc_client(&grpc).await;

    // Reads and pings are a client's to make.
    client
        .ping(with_token(PingRequest::default(), CLIENT_TOKEN))
        .await
        .expect("a client's ping");
    let read = client
        .get(with_token(
            GetRequest {
                key: held_key.0.to_vec(),
                ..GetRequest::default()
            },
            CLIENT_TOKEN,
        ))
        .await
        .expect("a client's read")
        .into_inner();
    assert!(read.entry.is_some());

    let now = now_ms();
    let outcomes = [
        (
            "SetMany",
            client
                .set_many(with_token(
                    SetManyRequest {
                        entries: vec![entry(&key(2), "intruder", at(now, 9))],
                    },
                    CLIENT_TOKEN,
                ))
                .await
                .err(),
        ),
        (
            "Versions",
            client
                .versions(with_token(
                    VersionsRequest {
                        keys: vec![held_key.0.to_vec()],
                    },
                    CLIENT_TOKEN,
                ))
                .await
                .err(),
        ),
        (
            "Delete",
            client
                .delete(with_token(
                    DeleteRequest {
                        key: held_key.0.to_vec(),
                    },
                    CLIENT_TOKEN,
                ))
                .await
                .err(),
        ),
        (
            "Clear",
            client
                .clear(with_token(ClearRequest {}, CLIENT_TOKEN))
                .await
                .err(),
        ),
        (
            // Reads every tenant's answers: for members only.
            "Scan",
            client
                .scan(with_token(ScanRequest::default(), CLIENT_TOKEN))
                .await
                .err(),
        ),
    ];
    for (call, outcome) in outcomes {
        let status = outcome.unwrap_or_else(|| panic!("{call} from a client was served"));
        assert_eq!(status.code(), Code::PermissionDenied, "{call}: {status}");
        assert!(status.message().contains("cache.ha.token"), "{status}");
    }
    assert_eq!(refused(&relay, "member_only").await, 5.0);
    let stats = relay.stats().await;
    assert_eq!(stats["key_count"], 1, "{stats}");
    let hit = post_messages(&relay, "k", &question("kept"), &[]).await;
    assert_eq!(hit.cache_status(), "hit");
}

#[tokio::test]
async fn a_clients_ping_never_makes_a_member() {
    let upstream = mock().await;
    let (relay, _, grpc) = member_with_roles(&upstream.url()).await;
    // A process answering probes whose address the attacker claims.
    let rogue_grpc = member_addresses(1).remove(0);
    let rogue = Relay::start(&member_config(
        &upstream.url(),
        &rogue_grpc,
        std::slice::from_ref(&rogue_grpc),
        1,
    ));
    rogue.wait_for_members(1).await;
    let mut client = grpc_client(&grpc).await;
    let join = PingRequest {
        from: rogue_grpc.clone(),
        ..PingRequest::default()
    };
    client
        .ping(with_token(join, CLIENT_TOKEN))
        .await
        .expect("the ping is answered");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay.stats().await["cluster"]["members"], 1);
}

fn relaycache_command(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run relaycache")
}

#[test]
fn mode_ha_without_credentials_is_refused_unless_insecure_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaycache.yaml");
    let path = path.to_str().unwrap();
    let cases = [
        // A member as the README's first cluster example once showed it.
        (
            "cache:\n  mode: ha\n  ha:\n    peers: [\"127.0.0.1:3320\"]\n",
            "cache.ha.token:",
        ),
        // A client handed the members' token.
        (
            "cache:\n  mode: ha\n  ha:\n    embedded: false\n    addresses: [\"127.0.0.1:3320\"]\n    token: members-secret\n",
            "cache.ha.client_token",
        ),
        // A client with no credential.
        (
            "cache:\n  mode: ha\n  ha:\n    embedded: false\n    addresses: [\"127.0.0.1:3320\"]\n",
            "cache.ha.client_token:",
        ),
    ];
    for (yaml, named) in cases {
        std::fs::write(path, yaml).unwrap();
        let out = relaycache_command(&["config", "validate", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}\n{stderr}");
        assert!(stderr.contains(named), "{named} not named in:\n{stderr}");
        assert!(!stderr.contains("members-secret"), "{stderr}");
        let serve = relaycache_command(&["serve", "--config", path]);
        assert!(!serve.status.success(), "serve started with:\n{yaml}");
    }
    std::fs::write(
        path,
        "cache:\n  mode: ha\n  ha:\n    peers: [\"127.0.0.1:3320\"]\n    insecure: true\n",
    )
    .unwrap();
    let out = relaycache_command(&["config", "validate", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_insecure_cluster_says_so_at_start_and_in_stats() {
    let upstream = mock().await;
    let grpc = member_addresses(1).remove(0);
    let relay = Relay::start(&insecure_member_config(
        &upstream.url(),
        &grpc,
        std::slice::from_ref(&grpc),
        1,
    ));
    relay.wait_for_members(1).await;
    assert_eq!(relay.stats().await["cluster"]["insecure"], true);
    assert!(
        !relay
            .logged(1, |l| l.contains("WARN") && l.contains("cache.ha.insecure"))
            .await
            .is_empty(),
        "no warning: {:?}",
        relay.logs()
    );
    let (secure, _, _) = member_with_roles(&upstream.url()).await;
    assert_eq!(secure.stats().await["cluster"]["insecure"], false);
}

#[tokio::test]
async fn a_clients_purge_stops_at_its_own_memory() {
    let upstream = mock().await;
    let (member, _, grpc) = member_with_roles(&upstream.url()).await;
    let mut config = client_config(&upstream.url(), std::slice::from_ref(&grpc), 1);
    config.server.admin_token = "purge-token".into();
    let client = Relay::start(&config);
    client.wait_for_members(1).await;
    let body = question("kept by the member");
    post_messages(&member, "k", &body, &[]).await;
    let through_client = post_messages(&client, "k", &body, &[]).await;
    assert_eq!(through_client.cache_status(), "hit");
    let key = through_client.header("x-relaycache-key").to_string();

    let auth = [("authorization", "Bearer purge-token")];
    for path in ["/cache".to_string(), format!("/cache/{key}")] {
        let purge = send(Method::DELETE, &client.admin_url(&path), &auth, "").await;
        assert_eq!(purge.status, 403, "{path}: {}", purge.text());
        assert!(
            purge.text().contains("member's admin port"),
            "{}",
            purge.text()
        );
    }
    assert_eq!(
        client.stats().await["key_count"],
        0,
        "its memory was purged"
    );
    assert_eq!(member.stats().await["key_count"], 1, "the member kept it");
    assert_eq!(refused(&member, "member_only").await, 0.0);
}

/// What a member streams to a member warming up, or to an export: every
/// fresh entry, or exactly those an owner is a replica of under the
/// members named, in batches; a request it cannot read is refused.
#[tokio::test]
async fn a_scan_streams_the_entries_an_owner_owns_in_batches() {
    use futures::StreamExt;
    use relaycache::cluster::placement;

    let upstream = mock().await;
    let (_relay, grpc) = member(&upstream.url()).await;
    let mut client = grpc_client(&grpc).await;
    let keys: Vec<CacheKey> = (0u32..600)
        .map(|i| CacheKey(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let now = now_ms();
    for chunk in keys.chunks(200) {
        let entries = chunk.iter().map(|k| entry(k, "held", at(now, 0))).collect();
        let stored = client
            .set_many(with_token(SetManyRequest { entries }, TOKEN))
            .await
            .expect("set_many")
            .into_inner()
            .stored;
        assert_eq!(stored, 200);
    }

    async fn scan(
        client: &mut ClusterClient<Channel>,
        request: ScanRequest,
    ) -> Result<(usize, Vec<CacheKey>), tonic::Status> {
        let mut batches = client.scan(with_token(request, TOKEN)).await?.into_inner();
        let (mut count, mut keys) = (0, Vec::new());
        while let Some(batch) = batches.next().await {
            count += 1;
            for wire in batch?.entries {
                keys.push(entry_from_wire(&wire).expect("a fresh entry").0);
            }
        }
        keys.sort_unstable_by_key(|k| k.0);
        Ok((count, keys))
    }

    let (batches, all) = scan(&mut client, ScanRequest::default())
        .await
        .expect("a scan of everything");
    let mut expected = keys.clone();
    expected.sort_unstable_by_key(|k| k.0);
    assert_eq!(all, expected, "every entry once");
    assert!(batches >= 3, "600 entries in {batches} batches");

    // Placed over this member and one that is not running: only the keys
    // the other one is the primary owner of.
    let members = vec![grpc.clone(), "127.0.0.9:1".to_string()];
    let seeds: Vec<u64> = members.iter().map(|m| placement::seed_of(m)).collect();
    let (_, owned) = scan(
        &mut client,
        ScanRequest {
            members: members.clone(),
            owner: members[1].clone(),
            replica_count: 1,
            ..ScanRequest::default()
        },
    )
    .await
    .expect("a scan for an owner");
    let mut wanted: Vec<CacheKey> = keys
        .iter()
        .filter(|k| placement::rank(&seeds, k, 1) == [1])
        .copied()
        .collect();
    wanted.sort_unstable_by_key(|k| k.0);
    assert!(
        (200..400).contains(&wanted.len()),
        "{} of 600 keys",
        wanted.len()
    );
    assert_eq!(owned, wanted);

    for (bad, says) in [
        (
            ScanRequest {
                filter: "model=a&bogus=1".into(),
                ..ScanRequest::default()
            },
            "bogus",
        ),
        (
            ScanRequest {
                members: members.clone(),
                owner: "127.0.0.9:2".into(),
                replica_count: 1,
                ..ScanRequest::default()
            },
            "owner",
        ),
        (
            ScanRequest {
                members,
                owner: grpc.clone(),
                replica_count: 0,
                ..ScanRequest::default()
            },
            "replica_count",
        ),
    ] {
        let status = scan(&mut client, bad).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains(says), "{status}");
    }
}

/// Calls `Get` of a key the member lacks on a connection of its own whose
/// stream window is `window` bytes, reading the reply without ever giving
/// the member more credit. Returns the reply's message bytes and its
/// `grpc-status`, or why they did not arrive within 3 s.
async fn get_within_window(grpc: &str, window: u32) -> Result<(usize, String), String> {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(grpc).await.unwrap();
    let (mut sender, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let message = GetRequest {
        key: key(9).0.to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let call = http::Request::post(format!("http://{grpc}/relaycache.cluster.v1.Cluster/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (reply, mut send) = sender.send_request(call, false).unwrap();
    send.send_data(framed.into(), true).unwrap();
    let patience = Duration::from_secs(3);
    let mut body = tokio::time::timeout(patience, reply)
        .await
        .map_err(|_| "no reply headers".to_string())?
        .unwrap()
        .into_body();
    let mut received = 0;
    loop {
        match tokio::time::timeout(patience, body.data()).await {
            Ok(Some(data)) => received += data.unwrap().len(),
            Ok(None) => break,
            Err(_) => return Err(format!("stuck after {received} bytes of the reply")),
        }
    }
    let trailers = tokio::time::timeout(patience, body.trailers())
        .await
        .map_err(|_| format!("no trailers after {received} bytes"))?
        .unwrap()
        .unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((received, status))
}

/// Trailers are not flow-controlled in HTTP/2, so a member sends a reply's
/// status right after its message, queued together: a caller whose window
/// the message just filled still learns how the call ended, and a caller
/// with room reads the whole reply in one wake.
#[tokio::test]
async fn a_reply_ends_without_waiting_for_flow_control_credit() {
    let upstream = mock().await;
    let (_member, grpc) = member(&upstream.url()).await;
    let (size, status) = get_within_window(&grpc, 1 << 20).await.unwrap();
    assert_eq!(status, "0", "a Get of a missing key succeeds");
    assert!(size > 0, "the reply carries a message");
    let exact = get_within_window(&grpc, u32::try_from(size).unwrap()).await;
    assert_eq!(
        exact,
        Ok((size, "0".to_string())),
        "with a window the reply's message fills exactly, the member held back the trailers until the caller gave credit"
    );
}
