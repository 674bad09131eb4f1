//! Money saved: the tokens of every answer served from cache, by class and
//! model, priced with `cache.prices` over the built-in table.

use crate::common::*;
use http::Method;
use relaycache::config::ModelPrice;

/// Dollars per million tokens of claude-sonnet-4-5 in the built-in table.
const SONNET: (f64, f64, f64, f64) = (3.0, 15.0, 0.3, 3.75);

fn dollars(prices: (f64, f64, f64, f64), tokens: (u64, u64, u64, u64)) -> f64 {
    (prices.0 * tokens.0 as f64
        + prices.1 * tokens.1 as f64
        + prices.2 * tokens.2 as f64
        + prices.3 * tokens.3 as f64)
        / 1e6
}

fn saved_header(reply: &Reply) -> Option<f64> {
    reply
        .headers
        .get("x-relaycache-saved-usd")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn an_anthropic_hit_saves_each_token_class_at_its_price() {
    let upstream = mock().await;
    let relay = Relay::start(&config_for(&upstream.url()));
    let model = "claude-sonnet-4-5-20250929";
    let body = serde_json::json!({"model": model, "max_tokens": 64,
        "messages": [{"role": "user", "content": "what did this save?"}]})
    .to_string();
    let prompt_cache = [
        ("x-mock-cache-read-tokens", "1000"),
        ("x-mock-cache-creation-tokens", "200"),
    ];
    let miss = post_messages(&relay, "k", &body, &prompt_cache).await;
    assert_eq!(miss.cache_status(), "miss");
    assert_eq!(saved_header(&miss), None, "a miss saved nothing");
    let usage = miss.json()["usage"].clone();
    let tokens = (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
        1000,
        200,
    );
    let expected = dollars(SONNET, tokens);

    let hit = post_messages(&relay, "k", &body, &prompt_cache).await;
    assert_eq!(hit.cache_status(), "hit");
    let saved = saved_header(&hit).expect("a priced hit says what it saved");
    assert!((saved - expected).abs() < 1e-6, "{saved} vs {expected}");
    post_messages(&relay, "k", &body, &prompt_cache).await;

    let stats = relay.stats().await;
    let per_model = &stats["models"][model];
    assert_eq!(per_model["hits"], 2, "{stats}");
    assert_eq!(per_model["input_tokens"], 2 * tokens.0, "{stats}");
    assert_eq!(per_model["output_tokens"], 2 * tokens.1, "{stats}");
    assert_eq!(per_model["cache_read_tokens"], 2000, "{stats}");
    assert_eq!(per_model["cache_creation_tokens"], 400, "{stats}");
    assert!(
        close(per_model["saved_usd"].as_f64().unwrap(), 2.0 * expected),
        "{stats}"
    );
    assert!(close(stats["saved_usd"].as_f64().unwrap(), 2.0 * expected));

    let metrics =
        String::from_utf8_lossy(&get(&relay.admin_url("/metrics")).await.body).to_string();
    let series =
        |name: &str| metric_in(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    assert!(close(
        series(&format!(
            "relaycache_cost_saved_usd_total{{model=\"{model}\"}}"
        )),
        2.0 * expected
    ));
    for (class, count) in [
        ("input", 2 * tokens.0),
        ("output", 2 * tokens.1),
        ("cache_read", 2000),
        ("cache_creation", 400),
    ] {
        let name = format!("relaycache_tokens_saved_total{{model=\"{model}\",class=\"{class}\"}}");
        assert_eq!(series(&name), count as f64, "{name}");
    }
}

#[tokio::test]
async fn an_openai_stream_is_priced_from_its_usage_chunk() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.streaming = true;
    let relay = Relay::start(&config);
    let body = serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream and price"}]})
    .to_string();
    let ask = || async {
        send(
            Method::POST,
            &relay.url("/v1/chat/completions"),
            &[
                ("authorization", "Bearer k"),
                ("content-type", "application/json"),
                ("x-mock-cache-read-tokens", "300"),
            ],
            body.clone(),
        )
        .await
    };
    let miss = ask().await;
    assert_eq!(miss.cache_status(), "miss");
    let text = miss.text();
    let usage_line = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find_map(|event| event.get("usage").cloned())
        .expect("the stream ends with a usage chunk");
    let prompt = usage_line["prompt_tokens"].as_u64().unwrap();
    let completion = usage_line["completion_tokens"].as_u64().unwrap();
    // OpenAI counts cache reads inside prompt_tokens; they are priced as
    // cache reads, the rest as input.
    let expected = dollars((0.15, 0.6, 0.075, 0.15), (prompt - 300, completion, 300, 0));

    let hit = ask().await;
    assert_eq!(hit.cache_status(), "hit");
    let saved = saved_header(&hit).expect("saved header on a streamed hit");
    assert!((saved - expected).abs() < 1e-6, "{saved} vs {expected}");
    let stats = relay.stats().await;
    assert_eq!(stats["models"]["gpt-4o-mini"]["input_tokens"], prompt - 300);
    assert_eq!(stats["models"]["gpt-4o-mini"]["cache_read_tokens"], 300);
}

#[tokio::test]
async fn unknown_models_count_tokens_and_configured_prices_apply() {
    let upstream = mock().await;
    let mut config = config_for(&upstream.url());
    config.cache.prices.insert(
        "house-model".into(),
        ModelPrice {
            input: 10.0,
            output: 20.0,
            cache_read: None,
            cache_creation: None,
        },
    );
    let relay = Relay::start(&config);

    let unpriced = question("unpriced"); // model claude-test: not in the table
    post_messages(&relay, "k", &unpriced, &[]).await;
    let hit = post_messages(&relay, "k", &unpriced, &[]).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(saved_header(&hit), None, "no price, no dollars");

    let house = serde_json::json!({"model": "house-model-2", "max_tokens": 8,
        "messages": [{"role": "user", "content": "priced by config"}]})
    .to_string();
    let miss = post_messages(&relay, "k", &house, &[]).await;
    let usage = miss.json()["usage"].clone();
    let expected = dollars(
        (10.0, 20.0, 10.0, 10.0),
        (
            usage["input_tokens"].as_u64().unwrap(),
            usage["output_tokens"].as_u64().unwrap(),
            0,
            0,
        ),
    );
    let hit = post_messages(&relay, "k", &house, &[]).await;
    let saved = saved_header(&hit).expect("a configured price applies");
    assert!((saved - expected).abs() < 1e-6, "{saved} vs {expected}");

    let stats = relay.stats().await;
    assert!(
        stats["models"]["claude-test"]["output_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(stats["models"]["claude-test"]["saved_usd"], 0.0);
    let metrics =
        String::from_utf8_lossy(&get(&relay.admin_url("/metrics")).await.body).to_string();
    assert!(
        !metrics.contains("relaycache_cost_saved_usd_total{model=\"claude-test\"}"),
        "an unpriced model has no dollar series"
    );
}
