//! Bad input and bad upstreams get clear errors and lose nothing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn oversized_bodies_get_413_without_reaching_the_upstream() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.server.max_body_bytes = 1000;
    let relay = Relay::start(&config);
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let reply = post_messages(&relay, "k", &big, &[]).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["type"], "request_too_large");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("server.max_body_bytes"));

    // Without a Content-Length (chunked), the limit holds while reading.
    let (mut sender, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    tokio::spawn(async move {
        for _ in 0..4 {
            let _ = sender.send_data(Bytes::from(vec![b' '; 500])).await;
        }
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::channel::Channel<Bytes, std::convert::Infallible>>();
    let request = http::Request::post(relay.url("/v1/messages"))
        .header("x-api-key", "k")
        .body(body)
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn invalid_json_reaches_the_upstream_and_its_400_comes_back_uncached() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    for _ in 0..2 {
        let reply = post_messages(&relay, "k", "{not json", &[]).await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.cache_status(), "bypass");
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_in_the_providers_shape() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let relay = Relay::start(&config_for(&format!("http://127.0.0.1:{port}")));
    let reply = post_messages(&relay, "k", &question("down"), &[]).await;
    assert_eq!(reply.status, 502);
    let body = reply.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{body}"
    );
    let chat = send(
        Method::POST,
        &relay.url("/v1/chat/completions"),
        &[],
        r#"{"model":"m"}"#,
    )
    .await;
    assert_eq!(chat.status, 502);
    assert_eq!(
        chat.json()["error"]["type"],
        "server_error",
        "OpenAI's shape on OpenAI paths"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504_and_the_proxy_keeps_serving() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.upstreams[0].first_byte_timeout = Duration::from_millis(300);
    let relay = Relay::start(&config);
    let reply = post_messages(
        &relay,
        "k",
        &question("slow"),
        &[("x-mock-delay-ms", "3000")],
    )
    .await;
    assert_eq!(reply.status, 504);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("first_byte_timeout"));
    let next = post_messages(&relay, "k", &question("slow"), &[]).await;
    assert_eq!(
        (next.status, next.cache_status()),
        (200, "miss"),
        "the timeout stored nothing"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.server.header_read_timeout = Duration::from_millis(300);
    config.server.client_body_timeout = Duration::from_millis(300);
    let relay = Relay::start(&config);

    // Headers that never finish: the connection is closed.
    let mut stalled = TcpStream::connect(relay.addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "connection with unfinished headers was not closed"
    );

    // A body that never finishes on a cache route: 408.
    let mut slow_body = TcpStream::connect(relay.addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\ncontent-length: 100\r\n\r\n{\"model\"")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow_body.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn total_timeout_cuts_off_a_stalled_stream_and_stores_nothing() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    config.upstreams[0].first_byte_timeout = Duration::from_millis(400);
    config.upstreams[0].total_timeout = Duration::from_millis(600);
    let relay = Relay::start(&config);
    let q = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"slow"}]}"#;
    // ~15 events 200 ms apart: the head arrives at once, the rest too late.
    let slow = [("x-mock-event-delay-ms", "200")];
    let response = open_messages(&relay, "k", q, &slow).await;
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await;
    assert!(
        read.expect("the proxy cut the stream off").is_err(),
        "the client sees the cut"
    );
    let again = post_messages(&relay, "k", q, &[]).await;
    assert_eq!(
        again.cache_status(),
        "miss",
        "a cut-off answer is not stored"
    );
    relay
        .wait_for_stats("upstream error counted", |s| s["misses"] == 2)
        .await;
    let metrics = get(&relay.admin_url("/metrics")).await;
    assert!(String::from_utf8_lossy(&metrics.body)
        .contains("relaycache_upstream_errors_total{upstream=\"mock\"} 1"));
}
