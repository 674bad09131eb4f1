//! The cache as a client sees it: hits, keys, tenants, per-request controls.

use std::time::Duration;

use crate::common::*;
use http::Method;
use relaycache::config::{Isolation, Mode};

#[tokio::test]
async fn identical_request_is_a_hit_with_the_same_answer() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let first = post_messages(&relay, "sk-a", &question("1"), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "miss");
    let second = post_messages(&relay, "sk-a", &question("1"), &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache_status(), "hit");
    assert_eq!(second.header("x-relaycache-tier"), "memory");
    assert_eq!(second.header("age"), "0");
    assert_eq!(second.header("content-type"), "application/json");
    assert_eq!(
        first.header("x-relaycache-key"),
        second.header("x-relaycache-key")
    );
    assert_eq!(first.body, second.body);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn key_ignores_formatting_and_configured_fields_but_not_content() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let base = r#"{"model":"m","max_tokens":5,"metadata":{"user_id":"alice"},"messages":[{"role":"user","content":"hi"}]}"#;
    let reordered = r#"{ "messages": [ {"content": "hi", "role": "user"} ],
        "metadata": {"user_id": "bob"}, "max_tokens": 5, "model": "m" }"#;
    assert_eq!(
        post_messages(&relay, "k", base, &[]).await.cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", reordered, &[])
            .await
            .cache_status(),
        "hit"
    );
    let other_content = base.replace("hi", "hello");
    assert_eq!(
        post_messages(&relay, "k", &other_content, &[])
            .await
            .cache_status(),
        "miss"
    );
    let streamed_false = base.replace(r#""model":"m""#, r#""model":"m","stream":false"#);
    assert_eq!(
        post_messages(&relay, "k", &streamed_false, &[])
            .await
            .cache_status(),
        "miss",
        "stream stays in the key"
    );
    let other_version =
        post_messages(&relay, "k", base, &[("anthropic-version", "2099-01-01")]).await;
    assert_eq!(
        other_version.cache_status(),
        "miss",
        "anthropic-version is part of the key"
    );
    assert_eq!(upstream.calls(), 4);
}

#[tokio::test]
async fn one_credential_never_reads_what_another_stored() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    assert_eq!(
        post_messages(&relay, "sk-alice", &question("t"), &[])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "sk-bob", &question("t"), &[])
            .await
            .cache_status(),
        "miss"
    );
    let bearer = send(
        Method::POST,
        &relay.url("/v1/messages"),
        &[
            ("authorization", "Bearer sk-alice"),
            ("anthropic-version", "2023-06-01"),
        ],
        question("t"),
    )
    .await;
    assert_eq!(bearer.cache_status(), "miss");
    assert_eq!(
        post_messages(&relay, "sk-alice", &question("t"), &[])
            .await
            .cache_status(),
        "hit"
    );
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn shared_and_header_isolation() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.isolation = Isolation::Shared;
    let shared = Relay::start(&config);
    assert_eq!(
        post_messages(&shared, "sk-1", &question("s"), &[])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&shared, "sk-2", &question("s"), &[])
            .await
            .cache_status(),
        "hit"
    );

    config.cache.isolation = Isolation::Header("x-team".into());
    let by_team = Relay::start(&config);
    let team_a = [("x-team", "a")];
    assert_eq!(
        post_messages(&by_team, "k", &question("h"), &team_a)
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&by_team, "k", &question("h"), &team_a)
            .await
            .cache_status(),
        "hit"
    );
    assert_eq!(
        post_messages(&by_team, "k", &question("h"), &[("x-team", "b")])
            .await
            .cache_status(),
        "miss"
    );
    // Without the header there is no tenant: never cached.
    assert_eq!(
        post_messages(&by_team, "k", &question("h"), &[])
            .await
            .cache_status(),
        "bypass"
    );
    assert_eq!(
        post_messages(&by_team, "k", &question("h"), &[])
            .await
            .cache_status(),
        "bypass"
    );
}

#[tokio::test]
async fn per_request_controls() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = question("controls");

    // no-store: answered, not kept.
    assert_eq!(
        post_messages(&relay, "k", &q, &[("cache-control", "no-store")])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &q, &[]).await.cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &q, &[]).await.cache_status(),
        "hit"
    );
    // no-cache: skips the lookup and refreshes the entry.
    let refreshed = post_messages(&relay, "k", &q, &[("cache-control", "no-cache")]).await;
    assert_eq!(refreshed.cache_status(), "refresh");
    assert_eq!(upstream.calls(), 3);
    let after = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(after.cache_status(), "hit");
    assert_eq!(after.body, refreshed.body);
    // x-relaycache: off passes through, and our headers never reach the upstream.
    let off = post_messages(&relay, "k", &q, &[("x-relaycache", "off")]).await;
    assert_eq!(off.cache_status(), "bypass");
    assert_eq!(off.header("x-mock-saw-relaycache-header"), "");
    assert_eq!(upstream.calls(), 4);
    // Namespaces separate entries.
    let ns = [("x-relaycache-namespace", "eval-1")];
    assert_eq!(
        post_messages(&relay, "k", &q, &ns).await.cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &q, &ns).await.cache_status(),
        "hit"
    );
}

#[tokio::test]
async fn ttl_from_config_and_request() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.ttl = Duration::from_secs(1);
    let relay = Relay::start(&config);
    let short = question("ttl-default");
    let long = question("ttl-long");
    assert_eq!(
        post_messages(&relay, "k", &short, &[]).await.cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &long, &[("x-relaycache-ttl", "1h")])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &short, &[]).await.cache_status(),
        "hit"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        post_messages(&relay, "k", &short, &[]).await.cache_status(),
        "miss",
        "expired after 1s"
    );
    assert_eq!(
        post_messages(&relay, "k", &long, &[]).await.cache_status(),
        "hit",
        "kept for the 1h asked for"
    );
    let max_age = question("max-age");
    assert_eq!(
        post_messages(&relay, "k", &max_age, &[("cache-control", "max-age=0")])
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        post_messages(&relay, "k", &max_age, &[])
            .await
            .cache_status(),
        "miss",
        "max-age=0 stores nothing"
    );
}

#[tokio::test]
async fn only_complete_200_answers_are_stored() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = question("errors");
    let failing = [("x-mock-status", "529")];
    let first = post_messages(&relay, "k", &q, &failing).await;
    assert_eq!(first.status, 529);
    assert_eq!(first.json()["error"]["message"], "mock status");
    assert_eq!(post_messages(&relay, "k", &q, &failing).await.status, 529);
    assert_eq!(upstream.calls(), 2, "errors are never served from cache");
}

#[tokio::test]
async fn other_paths_and_methods_pass_through_untouched() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let models = get(&relay.url("/v1/models")).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "mock-model");
    assert_eq!(
        models.cache_status(),
        "",
        "not a cache route: no cache headers"
    );
    let upload = send(
        Method::POST,
        &relay.url("/v1/files"),
        &[("x-api-key", "k")],
        vec![b'x'; 300_000],
    )
    .await;
    assert_eq!(upload.json()["received_bytes"], 300_000);
    let again = send(
        Method::POST,
        &relay.url("/v1/files"),
        &[("x-api-key", "k")],
        vec![b'x'; 300_000],
    )
    .await;
    assert_eq!(again.cache_status(), "");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn headers_are_rewritten_for_the_upstream() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let reply = post_messages(
        &relay,
        "k",
        &question("hdr"),
        &[
            ("accept-encoding", "gzip"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("x-relaycache-ttl", "60"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-mock-saw-host"),
        upstream.addr.to_string(),
        "Host is the upstream's"
    );
    assert_eq!(
        reply.header("x-mock-saw-accept-encoding"),
        "",
        "cache routes ask for identity encoding"
    );
    let seen = upstream.last_request_headers();
    assert!(
        !seen.contains_key("x-hop"),
        "headers named by Connection are hop-by-hop"
    );
    assert!(
        !seen.contains_key("x-relaycache-ttl"),
        "our controls stay with us"
    );
    assert_eq!(
        seen.get("x-api-key").unwrap(),
        "k",
        "the credential is forwarded"
    );
}

#[tokio::test]
async fn openai_chat_completions_are_cached_too() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let headers = [
        ("authorization", "Bearer sk-o"),
        ("content-type", "application/json"),
    ];
    let url = relay.url("/v1/chat/completions");
    let first = send(Method::POST, &url, &headers, body).await;
    let second = send(Method::POST, &url, &headers, body).await;
    assert_eq!(
        (first.cache_status(), second.cache_status()),
        ("miss", "hit")
    );
    assert_eq!(second.json()["object"], "chat.completion");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn disabled_mode_is_a_plain_proxy() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.mode = Mode::Disabled;
    let relay = Relay::start(&config);
    let first = post_messages(&relay, "k", &question("d"), &[]).await;
    let second = post_messages(&relay, "k", &question("d"), &[]).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.cache_status(), "");
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn byte_identical_repeats_and_reformatted_requests_share_an_entry() {
    // Repeats of the exact bytes take the raw-key shortcut once a request
    // hit; a reformatted body still finds the entry by its canonical key.
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let compact = r#"{"model":"m","messages":[{"role":"user","content":"alias"}]}"#;
    let spaced = r#"{ "messages": [{"role": "user", "content": "alias"}], "model": "m" }"#;
    assert_eq!(
        post_messages(&relay, "k", compact, &[])
            .await
            .cache_status(),
        "miss"
    );
    for body in [compact, compact, spaced, spaced, compact] {
        assert_eq!(
            post_messages(&relay, "k", body, &[]).await.cache_status(),
            "hit"
        );
    }
    // The shortcut never crosses tenants or bypasses controls.
    assert_eq!(
        post_messages(&relay, "other", compact, &[])
            .await
            .cache_status(),
        "miss"
    );
    let refresh = post_messages(&relay, "k", compact, &[("cache-control", "no-cache")]).await;
    assert_eq!(refresh.cache_status(), "refresh");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let request = http::Request::post(relay.url("/v1/messages"))
            .header("x-api-key", "k")
            .body(Full::new(Bytes::from(question("h2"))))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        statuses.push(
            response.headers()["x-relaycache-status"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(statuses, ["miss", "hit"]);
    assert_eq!(upstream.calls(), 1);
}

/// Sends a Messages request with exactly `headers` (no default credential).
async fn post_with(relay: &Relay, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(
        Method::POST,
        &relay.url("/v1/messages"),
        &all,
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn every_credential_header_makes_its_own_tenant_and_none_is_a_bypass() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = question("tenants");
    let azure_a = post_with(&relay, &[("api-key", "AAA")], &q).await;
    assert_eq!(azure_a.cache_status(), "miss");
    let azure_b = post_with(&relay, &[("api-key", "BBB")], &q).await;
    assert_eq!(
        azure_b.cache_status(),
        "miss",
        "api-key BBB read what api-key AAA stored"
    );
    let gemini = post_with(&relay, &[("x-goog-api-key", "AAA")], &q).await;
    assert_eq!(
        gemini.cache_status(),
        "miss",
        "the header's name is part of the tenant"
    );
    let anonymous = post_with(&relay, &[], &q).await;
    assert_eq!(
        anonymous.cache_status(),
        "bypass",
        "a request without a credential is never cached"
    );
    let again = post_with(&relay, &[], &q).await;
    assert_eq!(again.cache_status(), "bypass");
    let logs = relay.wait_for_access_logs(5).await;
    assert!(
        logs.iter()
            .any(|l| l["bypass_reason"] == "no credential header"),
        "the log line says why: {logs:?}"
    );

    // Both x-api-key and Authorization: both are the tenant.
    let a = post_with(
        &relay,
        &[
            ("x-api-key", "placeholder"),
            ("authorization", "Bearer sk-A"),
        ],
        &q,
    )
    .await;
    assert_eq!(a.cache_status(), "miss");
    let b = post_with(
        &relay,
        &[
            ("x-api-key", "placeholder"),
            ("authorization", "Bearer sk-B"),
        ],
        &q,
    )
    .await;
    assert_eq!(
        b.cache_status(),
        "miss",
        "Authorization sk-B read what sk-A stored"
    );
    let a_again = post_with(
        &relay,
        &[
            ("x-api-key", "placeholder"),
            ("authorization", "Bearer sk-A"),
        ],
        &q,
    )
    .await;
    assert_eq!(a_again.cache_status(), "hit");
    assert_eq!(upstream.calls(), 7);
}

#[tokio::test]
async fn headers_that_change_openai_answers_are_keyed() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = question("openai-headers");
    for header in ["openai-organization", "openai-project", "openai-beta"] {
        let first = post_messages(&relay, "k", &q, &[(header, "a")]).await;
        assert_eq!(first.cache_status(), "miss", "{header}");
        let second = post_messages(&relay, "k", &q, &[(header, "b")]).await;
        assert_eq!(
            second.cache_status(),
            "miss",
            "{header}: b was served what a stored"
        );
        let repeat = post_messages(&relay, "k", &q, &[(header, "a")]).await;
        assert_eq!(repeat.cache_status(), "hit", "{header}");
    }
}

#[tokio::test]
async fn a_connection_header_cannot_strip_a_keyed_header_after_keying() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.isolation = Isolation::Shared;
    let relay = Relay::start(&config);
    let q = question("beta");
    // The upstream never sees anthropic-beta here: Connection names it.
    let attacker = post_messages(
        &relay,
        "attacker",
        &q,
        &[("anthropic-beta", "x"), ("connection", "anthropic-beta")],
    )
    .await;
    assert_eq!(attacker.cache_status(), "miss");
    assert!(!upstream
        .last_request_headers()
        .contains_key("anthropic-beta"));
    let victim = post_messages(&relay, "victim", &q, &[("anthropic-beta", "x")]).await;
    assert_eq!(
        victim.cache_status(),
        "miss",
        "an answer produced without beta x was served as the answer for beta x"
    );
    assert_eq!(
        upstream.last_request_headers()["anthropic-beta"],
        "x",
        "the victim's own call carried its beta"
    );
    let plain = post_messages(&relay, "victim", &q, &[]).await;
    assert_eq!(
        plain.cache_status(),
        "hit",
        "what the upstream answered without beta is the answer without beta"
    );
}

#[tokio::test]
async fn headers_that_identify_the_first_caller_are_never_replayed() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let q = question("identity");
    let first = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(first.cache_status(), "miss");
    for name in mock_upstream::IDENTIFYING_HEADERS {
        assert!(
            first.headers.contains_key(name),
            "the caller's own miss carries {name}"
        );
    }
    let hit = post_messages(&relay, "k", &q, &[]).await;
    assert_eq!(hit.cache_status(), "hit");
    for name in mock_upstream::IDENTIFYING_HEADERS {
        assert!(
            !hit.headers.contains_key(name),
            "a hit replayed {name}: {:?}",
            hit.headers.get(name)
        );
    }
    assert_eq!(hit.header("content-type"), "application/json");
}
