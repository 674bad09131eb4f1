//! Answers stored compressed: memory holds the zstd frame, a hit goes as
//! stored to clients that accept zstd and decoded to the rest, a peer
//! hands the frame on as it is, and the official SDK reads both forms.

use relaycache::config::Codec;

use crate::common::*;

/// A prose answer of this many bytes from the mock.
const ANSWER_BYTES: (&str, &str) = ("x-mock-answer-bytes", "6000");

async fn stored_answer(relay: &Relay, body: &str) -> Reply {
    let miss = post_messages(relay, "k", body, &[ANSWER_BYTES]).await;
    assert_eq!((miss.status, miss.cache_status()), (200, "miss"));
    assert_eq!(
        miss.header("content-encoding"),
        "",
        "a miss is relayed as the upstream sent it"
    );
    relay
        .wait_for_stats("the stored answer", |s| s["key_count"] == 1)
        .await;
    miss
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_goes_as_stored_to_clients_that_accept_zstd_and_decoded_to_the_rest() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let body = question("compressed");
    let miss = stored_answer(&relay, &body).await;
    let answer = miss.body.clone();
    assert!(answer.len() > 6000, "{} bytes", answer.len());

    let packed = post_messages(&relay, "k", &body, &[("accept-encoding", "gzip, zstd")]).await;
    assert_eq!((packed.status, packed.cache_status()), (200, "hit"));
    assert_eq!(packed.header("content-encoding"), "zstd");
    assert!(packed.header("vary").contains("accept-encoding"));
    assert_eq!(
        packed.header("content-length"),
        packed.body.len().to_string()
    );
    assert!(
        packed.body.len() * 2 < answer.len(),
        "{} bytes sent for a {}-byte answer",
        packed.body.len(),
        answer.len()
    );
    assert_eq!(zstd::decode_all(&packed.body[..]).unwrap(), answer);

    for accept in [
        &[("accept-encoding", "gzip, deflate, br")][..],
        &[("accept-encoding", "zstd;q=0")],
        &[],
    ] {
        let plain = post_messages(&relay, "k", &body, accept).await;
        assert_eq!(
            (plain.status, plain.cache_status()),
            (200, "hit"),
            "{accept:?}"
        );
        assert_eq!(plain.header("content-encoding"), "", "{accept:?}");
        assert_eq!(
            plain.body, answer,
            "{accept:?}: decoded to the upstream's bytes"
        );
    }
    assert_eq!(upstream.calls(), 1);

    // A refreshed answer replaces the decoded copy kept for hot answers:
    // plain clients never get the old one.
    let refreshed = post_messages(&relay, "k", &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(refreshed.cache_status(), "refresh");
    assert_ne!(refreshed.mock_call(), miss.mock_call());
    for _ in 0..3 {
        let plain = post_messages(&relay, "k", &body, &[]).await;
        assert_eq!(plain.cache_status(), "hit");
        assert_eq!(plain.body, refreshed.body, "the refreshed answer, decoded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_holds_the_compressed_answer() {
    let upstream = mock().await;
    let mut used = Vec::new();
    for codec in [Codec::Zstd, Codec::None] {
        let mut config = config_for(&upstream.url());
        config.cache.compression.codec = codec;
        let relay = Relay::start(&config);
        let answer = stored_answer(&relay, &question("memory")).await.body;
        let bytes_used = relay.stats().await["bytes_used"].as_u64().unwrap();
        used.push((codec, bytes_used, answer.len()));
    }
    let [(_, zstd, answer_len), (_, none, _)] = used[..] else {
        unreachable!()
    };
    // Both count 512 bytes of bookkeeping and the header block.
    assert!(none > answer_len as u64, "{used:?}");
    assert!(
        zstd * 2 < none,
        "compressed {zstd} bytes against {none}: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_hands_the_frame_on_and_the_client_serves_either_form() {
    let upstream = mock().await;
    let grpc = member_addresses(1);
    let member = Relay::start(&member_config(&upstream.url(), &grpc[0], &grpc, 1));
    member.wait_for_members(1).await;
    let client = Relay::start(&client_config(&upstream.url(), &grpc, 1));
    client.wait_for_members(1).await;
    let body = question("through a peer");
    let answer = stored_answer(&member, &body).await.body;

    let packed = post_messages(
        &client,
        "k",
        &body,
        &[
            ("accept-encoding", "zstd"),
            ("cache-control", "only-if-cached"),
        ],
    )
    .await;
    assert_eq!(
        (
            packed.status,
            packed.cache_status(),
            packed.header("x-relaycache-tier")
        ),
        (200, "hit", "peer")
    );
    assert_eq!(packed.header("content-encoding"), "zstd");
    assert_eq!(zstd::decode_all(&packed.body[..]).unwrap(), answer);
    // Now in the client's memory, still compressed; a plain client gets it decoded.
    let plain = post_messages(&client, "k", &body, &[]).await;
    assert_eq!(
        (plain.cache_status(), plain.header("x-relaycache-tier")),
        ("hit", "memory")
    );
    assert_eq!(plain.body, answer);
    // A client that does not accept zstd, asking a peer: it serves the body
    // the peer read decoded to check the frame.
    let plain_client = Relay::start(&client_config(&upstream.url(), &grpc, 1));
    plain_client.wait_for_members(1).await;
    let from_peer = post_messages(
        &plain_client,
        "k",
        &body,
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(
        (
            from_peer.status,
            from_peer.cache_status(),
            from_peer.header("x-relaycache-tier")
        ),
        (200, "hit", "peer")
    );
    assert_eq!(from_peer.header("content-encoding"), "");
    assert_eq!(from_peer.body, answer, "decoded to the upstream's bytes");
    let used = client.stats().await["bytes_used"].as_u64().unwrap();
    assert!(
        used < answer.len() as u64,
        "{used} bytes in memory for {}",
        answer.len()
    );
    assert_eq!(upstream.calls(), 1);
}

/// The official Anthropic SDK for Python, with zstd support (as
/// `make test-deps` installs it): it asks for zstd and reads the hit as
/// sent; told to accept only gzip, it reads the decoded hit. Streams too.
const SDK_SCRIPT: &str = r#"
import json, sys
import anthropic

def ask(client, stream):
    params = dict(model="claude-test", max_tokens=64,
                  messages=[{"role": "user", "content": "a question for the SDK"}],
                  extra_headers={"x-mock-answer-bytes": "6000"})
    if stream:
        with client.messages.stream(**params) as s:
            text = "".join(s.text_stream)
            return s.response.headers, text
    raw = client.messages.with_raw_response.create(**params)
    return raw.headers, raw.parse().content[0].text

report = {}
for stream in (False, True):
    for accept in ("default", "gzip, deflate"):
        headers = {} if accept == "default" else {"accept-encoding": accept}
        client = anthropic.Anthropic(max_retries=0, default_headers=headers)
        got, text = ask(client, stream)
        report[f"{'stream' if stream else 'message'} {accept}"] = {
            "status": got.get("x-relaycache-status"),
            "encoding": got.get("content-encoding", ""),
            "text": text,
        }
json.dump(report, sys.stdout)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_reads_compressed_and_decoded_hits_plain_and_streamed() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    let relay = Relay::start(&config);
    let base_url = relay.url("").trim_end_matches('/').to_string();
    let run = || {
        let base_url = base_url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args(["-c", SDK_SCRIPT])
                .env("ANTHROPIC_BASE_URL", base_url)
                .env("ANTHROPIC_API_KEY", "sk-ant-example")
                .output()
                .expect("python3 runs")
        })
    };
    // The first run stores both answers (the first call of each form is a
    // miss); the second reads every one as a hit.
    for round in ["first", "second"] {
        let out = run().await.unwrap();
        assert!(
            out.status.success(),
            "the SDK failed ({round} run); make test-deps installs anthropic and backports.zstd:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = |name: &str| {
            report[name]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let seen: Vec<String> = [
            "message default",
            "message gzip, deflate",
            "stream default",
            "stream gzip, deflate",
        ]
        .iter()
        .map(|name| {
            format!(
                "{name}: {} {:?} {} chars",
                report[name]["status"],
                report[name]["encoding"],
                text(name).len()
            )
        })
        .collect();
        assert!(
            text("message default").len() > 1000,
            "{round} run: {seen:?}"
        );
        assert!(text("stream default").len() > 1000, "{round} run: {seen:?}");
        assert_eq!(
            text("message default"),
            text("message gzip, deflate"),
            "{round} run: {seen:?}"
        );
        assert_eq!(
            text("stream default"),
            text("stream gzip, deflate"),
            "{round} run: {seen:?}"
        );
        if round == "second" {
            for name in ["message default", "stream default"] {
                assert_eq!(report[name]["status"], "hit", "{seen:?}");
                assert_eq!(
                    report[name]["encoding"], "zstd",
                    "the SDK asks for zstd and reads it: {seen:?}"
                );
            }
            for name in ["message gzip, deflate", "stream gzip, deflate"] {
                assert_eq!(report[name]["status"], "hit", "{seen:?}");
                assert_eq!(report[name]["encoding"], "", "{seen:?}");
            }
        }
    }
    assert_eq!(upstream.calls(), 2, "one call per form, message and stream");
}
