use super::*;

fn usage(input: u64, output: u64, cache_read: u64, cache_creation: u64) -> TokenUsage {
    TokenUsage {
        input,
        output,
        cache_read,
        cache_creation,
    }
}

fn json_facts(body: &[u8]) -> AnswerFacts {
    AnswerFacts::of(body, false)
}

#[test]
fn anthropic_and_openai_usage_by_class() {
    let a = json_facts(
        br#"{"model":"claude-sonnet-4-5","usage":{"input_tokens":12,"output_tokens":34,
            "cache_read_input_tokens":100,"cache_creation_input_tokens":7}}"#,
    );
    assert_eq!(a.usage, usage(12, 34, 100, 7));
    assert_eq!(a.model.as_deref(), Some("claude-sonnet-4-5"));
    // OpenAI counts cached tokens inside the prompt.
    let chat = json_facts(
        br#"{"model":"gpt-4o","usage":{"prompt_tokens":50,"completion_tokens":6,"total_tokens":56,
            "prompt_tokens_details":{"cached_tokens":40}}}"#,
    );
    assert_eq!(chat.usage, usage(10, 6, 40, 0));
    let responses = json_facts(
        br#"{"object":"response","model":"gpt-5","usage":{"input_tokens":30,"output_tokens":2,
            "input_tokens_details":{"cached_tokens":12}}}"#,
    );
    assert_eq!(responses.usage, usage(18, 2, 12, 0));
    assert_eq!(json_facts(b"not json"), AnswerFacts::default());
    assert_eq!(
        json_facts(br#"{"usage":null,"model":""}"#),
        AnswerFacts::default()
    );
}

#[test]
fn streamed_usage() {
    let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1,\"cache_read_input_tokens\":9}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let facts = AnswerFacts::of(body, true);
    assert_eq!(facts.usage, usage(25, 15, 9, 0));
    assert_eq!(facts.model.as_deref(), Some("claude-haiku-4-5"));
    assert!(sse_is_complete(body));
    assert!(!sse_is_complete(&body[..body.len() - 50]));
    assert!(sse_is_complete(b"data: {}\n\ndata: [DONE]\n\n"));

    let responses = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-5-mini\",\"usage\":null}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5-mini\",\"usage\":{\"input_tokens\":8,\"output_tokens\":3}}}\n\n";
    let facts = AnswerFacts::of(responses, true);
    assert_eq!(facts.usage, usage(8, 3, 0, 0));
    assert_eq!(facts.model.as_deref(), Some("gpt-5-mini"));
}

#[test]
fn an_entry_from_another_member_counts_the_tokens_its_body_reports() {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let sent = CachedResponse::new(
        &h,
        br#"{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
        Duration::from_secs(60),
    );
    let received = CachedResponse::received(
        &sent.header_block(),
        BodyEncoding::Identity,
        &sent.body(),
        sent.created,
        sent.ttl,
        Version::default(),
    )
    .unwrap()
    .entry;
    assert_eq!(received.usage, usage(5, 6, 0, 0));
    assert_eq!(received.model.as_deref(), Some("gpt-4o"));
}

#[test]
fn only_headers_that_describe_the_answer_are_stored() {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("content-encoding", "gzip".parse().unwrap());
    h.insert("date", "x".parse().unwrap());
    h.insert("connection", "close".parse().unwrap());
    h.insert("anthropic-ratelimit-tokens-remaining", "9".parse().unwrap());
    h.insert("request-id", "req_1".parse().unwrap());
    h.insert("anthropic-organization-id", "org".parse().unwrap());
    h.insert("x-anything-new", "1".parse().unwrap());
    let kept = CachedResponse::new(&h, b"{}", Duration::from_secs(1)).headers();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains_key("content-type") && kept.contains_key("content-encoding"));
}

#[test]
fn entry_is_one_exact_buffer_and_round_trips() {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert(
        "content-language",
        "v\u{e9}"
            .parse::<HeaderValue>()
            .unwrap_or(HeaderValue::from_static("v")),
    );
    let body = br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#;
    let entry = CachedResponse::new(&h, body, Duration::from_secs(1));
    assert_eq!(&entry.body()[..], &body[..]);
    assert_eq!(entry.headers(), h);
    assert_eq!(entry.usage, usage(3, 4, 0, 0));
    assert!(entry.weight() as usize >= body.len() + ENTRY_OVERHEAD);
}

#[test]
fn recorder_limits_and_completeness() {
    let mut json = HeaderMap::new();
    json.insert("content-type", "application/json".parse().unwrap());
    let mut recorder = EntryRecorder::new(&json, None, 10);
    assert!(recorder.push(b"0123456789"));
    assert!(!recorder.push(b"x"), "over the limit");
    assert!(recorder.finish(Duration::from_secs(1)).is_none());

    let mut sse = HeaderMap::new();
    sse.insert("content-type", "text/event-stream".parse().unwrap());
    let mut broken = EntryRecorder::new(&sse, None, 1 << 20);
    broken.push(b"event: message_start\ndata: {}\n\n");
    assert!(
        broken.finish(Duration::from_secs(1)).is_none(),
        "no terminal event"
    );
    let mut whole = EntryRecorder::new(&sse, None, 1 << 20);
    whole.push(b"event: message_start\ndata: {}\n\n");
    whole.push(b"event: message_stop\ndata: {}\n\n");
    let entry = whole.finish(Duration::from_secs(1)).unwrap();
    assert!(entry.body().ends_with(b"data: {}\n\n"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn event_stream() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec("[ -~\u{e9}\u{1F600}]{0,40}", 0..12).prop_map(|texts| {
            let mut body = String::from(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n",
            );
            for text in texts {
                let data = serde_json::json!({"type": "content_block_delta", "delta": {"text": text}});
                body.push_str(&format!("event: content_block_delta\ndata: {data}\n\n"));
            }
            body.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
            body.into_bytes()
        })
    }

    fn split(body: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        at.push(0);
        at.push(body.len());
        at.sort_unstable();
        at.windows(2).map(|w| body[w[0]..w[1]].to_vec()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_recorded_stream_replays_byte_for_byte_however_it_arrived(
            body in event_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let mut sse = HeaderMap::new();
            sse.insert("content-type", HeaderValue::from_static("text/event-stream"));
            let mut recorder = EntryRecorder::new(&sse, None, 1 << 20);
            for chunk in split(&body, &cuts) {
                prop_assert!(recorder.push(&chunk));
            }
            let entry = recorder.finish(Duration::from_secs(5));
            prop_assert!(entry.is_some(), "a complete stream is stored");
            let entry = entry.unwrap();
            prop_assert_eq!(&entry.body()[..], &body[..]);
            prop_assert_eq!(entry.usage.input, 3);
        }

        #[test]
        fn a_stream_cut_before_its_end_is_never_stored(
            body in event_stream(),
            cut in any::<prop::sample::Index>(),
        ) {
            let end = body.len() - "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".len();
            let at = cut.index(end + 1);
            let mut sse = HeaderMap::new();
            sse.insert("content-type", HeaderValue::from_static("text/event-stream"));
            let mut recorder = EntryRecorder::new(&sse, None, 1 << 20);
            recorder.push(&body[..at]);
            prop_assert!(recorder.finish(Duration::from_secs(5)).is_none());
        }
    }
}

fn default_compression() -> Compression {
    Compression::from_config(&relaycache_config::CompressionConfig::default())
        .expect("zstd is the default codec")
}

/// An Anthropic-shaped answer whose text is `words` words of prose.
fn prose_answer(words: usize) -> Vec<u8> {
    let vocabulary = [
        "the", "answer", "is", "cached", "and", "served", "again", "when", "a", "request",
        "repeats", "so", "provider", "calls", "once", "memory", "holds",
    ];
    let text: Vec<&str> = (0..words)
        .map(|i| vocabulary[(i * 5 + i / 7) % vocabulary.len()])
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "type": "message",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": text.join(" ")}],
        "usage": {"input_tokens": 12, "output_tokens": words},
    }))
    .unwrap()
}

#[test]
fn a_compressed_entry_keeps_its_answer_facts_and_decodes_to_the_upstream_body() {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let body = prose_answer(800);
    let plain = CachedResponse::new(&h, &body, Duration::from_secs(60));
    let packed = plain.clone().compressed(Some(&default_compression()));
    let (encoding, stored) = packed.stored_body();
    assert_eq!(encoding, BodyEncoding::Zstd);
    assert!(
        stored.len() * 2 < body.len(),
        "{} of {}",
        stored.len(),
        body.len()
    );
    assert!(packed.weight() < plain.weight());
    assert_eq!(packed.body(), body, "decodes to the upstream's bytes");
    assert_eq!(packed.body_len(), body.len());
    assert_eq!(packed.usage, plain.usage);
    assert_eq!(packed.model, plain.model);
    assert_eq!(packed.headers(), plain.headers());

    // As another member receives it: checked, facts read from the decoded
    // body, which is kept for the hit that asked.
    let with_copy = CachedResponse::received(
        &packed.header_block(),
        encoding,
        &stored,
        packed.created,
        packed.ttl,
        Version::default(),
    )
    .expect("a good frame is taken");
    assert_eq!(with_copy.decoded.as_deref(), Some(&body[..]));
    let received = with_copy.entry;
    assert_eq!(received.body(), body);
    assert_eq!(received.usage, usage(12, 800, 0, 0));
    assert_eq!(
        received.stored_body().1,
        stored,
        "kept as sent, not re-encoded"
    );

    let plain_copy = CachedResponse::received(
        &plain.header_block(),
        BodyEncoding::Identity,
        &plain.body(),
        plain.created,
        plain.ttl,
        Version::default(),
    )
    .expect("a plain body is taken");
    assert_eq!(plain_copy.decoded, None, "nothing was decoded");
}

#[test]
fn compression_leaves_short_encoded_or_disabled_answers_as_received() {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let short = CachedResponse::new(&h, &prose_answer(5), Duration::from_secs(60));
    let short = short.compressed(Some(&default_compression()));
    assert_eq!(short.stored_body().0, BodyEncoding::Identity);

    let long = CachedResponse::new(&h, &prose_answer(800), Duration::from_secs(60));
    assert_eq!(
        long.clone().compressed(None).stored_body().0,
        BodyEncoding::Identity
    );

    // The upstream encoded it itself: replayed with its own content-encoding.
    h.insert("content-encoding", "gzip".parse().unwrap());
    let gzipped = CachedResponse::new(&h, &prose_answer(800), Duration::from_secs(60));
    let gzipped = gzipped.compressed(Some(&default_compression()));
    assert_eq!(gzipped.stored_body().0, BodyEncoding::Identity);
}

#[test]
fn a_zstd_body_from_another_process_that_does_not_decode_is_refused() {
    let h = HeaderMap::new();
    let packed = CachedResponse::new(&h, &prose_answer(800), Duration::from_secs(60))
        .compressed(Some(&default_compression()));
    let (_, stored) = packed.stored_body();
    let parts = |body: &[u8]| {
        CachedResponse::received(
            &packed.header_block(),
            BodyEncoding::Zstd,
            body,
            packed.created,
            packed.ttl,
            Version::default(),
        )
    };
    assert!(parts(&stored[..stored.len() - 3]).is_none(), "cut off");
    assert!(parts(b"{\"plain\":\"json\"}").is_none(), "not a frame");
    let mut flipped = stored.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    // Frames carry a checksum: a flipped byte is never taken as an answer.
    assert!(parts(&flipped).is_none(), "a flipped byte");
}
