//! A local stand-in for the Anthropic Messages API and the OpenAI chat
//! completions API: JSON and SSE answers with `usage`, deterministic for a
//! given request body, plus switches that tests use to make it slow, fail,
//! hold a stream open or break it off.
//!
//! Request headers that steer one answer:
//! - `x-mock-delay-ms: N` waits before the response headers;
//! - `x-mock-status: N` answers with that status, an error body and
//!   `retry-after: 7`;
//! - `x-mock-gate: NAME` holds the answer (streams: after the first event)
//!   until [`MockUpstream::release`] is called for `NAME`;
//! - `x-mock-break-after: N` breaks a stream off after N events;
//! - `x-mock-event-delay-ms: N` pauses between stream events;
//! - `x-mock-answer-bytes: N` sets the answer size;
//! - `x-mock-cache-read-tokens: N` and `x-mock-cache-creation-tokens: N`
//!   add prompt-cache tokens to the answer's `usage`, in each provider's
//!   shape.
//!
//! OpenAI streams end with a `usage` chunk when the request sets
//! `stream_options.include_usage`, as OpenAI's do.
//!
//! Successful JSON answers carry `mock_request_digest`, the
//! [`request_digest`] of the request's credential and body, so that a
//! checker can tell whether an answer served (from cache or not) was made
//! for the request it answers; and the headers in [`IDENTIFYING_HEADERS`],
//! valued per call. Every answer carries `x-mock-call: N` (calls so far) and echoes the
//! `host` and `accept-encoding` it received as `x-mock-saw-*`.

pub mod prose;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

type Body = BoxBody<Bytes, std::io::Error>;

/// How the mock answers when a request does not say otherwise.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Size of the answer text in bytes.
    pub answer_bytes: usize,
    /// Pause between stream events.
    pub event_delay: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            answer_bytes: 5000,
            event_delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct State {
    options: MockOptions,
    calls: AtomicU64,
    fail_next: AtomicU64,
    gates: Mutex<HashMap<String, Arc<Notify>>>,
    last_headers: Mutex<HeaderMap>,
}

impl State {
    fn gate(&self, name: &str) -> Arc<Notify> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(name.to_string()).or_default())
    }
}

/// A running mock upstream.
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl MockUpstream {
    /// Starts serving on `addr` (use port 0 for any free port).
    pub async fn start(addr: &str, options: MockOptions) -> std::io::Result<Self> {
        Self::start_with(addr, options, None).await
    }

    /// Starts serving HTTPS on `addr` with the PEM certificate chain and
    /// key; ALPN offers h2 and http/1.1.
    pub async fn start_tls(
        addr: &str,
        options: MockOptions,
        cert_pem: &str,
        key_pem: &str,
    ) -> std::io::Result<Self> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(&e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start_with(
            addr,
            options,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_with(
        addr: &str,
        options: MockOptions,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            options,
            ..State::default()
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(serve(listener, Arc::clone(&state), tls, stopped));
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Makes the next `n` requests fail with 500.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Lets answers held by `x-mock-gate: name` continue.
    pub fn release(&self, name: &str) {
        self.state.gate(name).notify_waiters();
        self.state.gate(name).notify_one();
    }

    /// Headers of the most recent request.
    pub fn last_request_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
            _ = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(state, request).await) }
            });
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.parse().ok())
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    full(status, "application/json", body.to_string())
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let call = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = request.into_parts();
    if let Ok(mut last) = state.last_headers.lock() {
        *last = parts.headers.clone();
    }
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut response = respond(&state, &parts, &bytes, call).await;
    let headers = response.headers_mut();
    headers.insert("x-mock-call", HeaderValue::from(call));
    let version = if parts.version == http::Version::HTTP_2 {
        "h2"
    } else {
        "http/1.1"
    };
    headers.insert("x-mock-saw-version", HeaderValue::from_static(version));
    for (name, echo) in [
        ("host", "x-mock-saw-host"),
        ("accept-encoding", "x-mock-saw-accept-encoding"),
    ] {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(echo, value.clone());
        }
    }
    if parts
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("x-relaycache"))
    {
        headers.insert(
            "x-mock-saw-relaycache-header",
            HeaderValue::from_static("1"),
        );
    }
    response
}

async fn respond(
    state: &State,
    parts: &http::request::Parts,
    body: &Bytes,
    call: u64,
) -> Response<Body> {
    let headers = &parts.headers;
    if let Some(ms) = number(headers, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let path = parts.uri.path();
    if parts.method == Method::GET {
        return match path {
            "/v1/models" => full(
                StatusCode::OK,
                "application/json",
                json!({"data": [{"id": "mock-model", "type": "model"}]}).to_string(),
            ),
            "/__mock/stats" => full(
                StatusCode::OK,
                "application/json",
                json!({"calls": call - 1}).to_string(),
            ),
            _ => anthropic_error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "no such path on the mock",
            ),
        };
    }
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return anthropic_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "mock failure",
        );
    }
    if let Some(status) =
        number(headers, "x-mock-status").and_then(|s| StatusCode::from_u16(s as u16).ok())
    {
        let mut response = anthropic_error(status, "api_error", "mock status");
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("7"));
        return response;
    }
    let is_llm = matches!(
        path,
        "/v1/messages"
            | "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/responses"
            | "/v1/embeddings"
    );
    if !is_llm {
        return full(
            StatusCode::OK,
            "application/json",
            json!({"path": path, "received_bytes": body.len()}).to_string(),
        );
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "request body is not valid JSON",
            )
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let size =
        number(headers, "x-mock-answer-bytes").map_or(state.options.answer_bytes, |n| n as usize);
    let text = prose::answer_text(body, size);
    let input_tokens = (body.len() / 4).max(1) as u64;
    let output_tokens = (text.len() / 4).max(1) as u64;
    let prompt_cache = PromptCache::asked(headers);
    let gate = header(headers, "x-mock-gate").map(|name| state.gate(name));
    let streamed = request.get("stream") == Some(&Value::Bool(true));
    if streamed {
        let events = if path == "/v1/messages" {
            let usage =
                prompt_cache.anthropic(json!({"input_tokens": input_tokens, "output_tokens": 1}));
            anthropic_events(&model, &text, usage, output_tokens, call)
        } else {
            let usage = request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .then(|| prompt_cache.openai(openai_usage(input_tokens, output_tokens)));
            openai_events(&model, &text, call, usage)
        };
        let break_after = number(headers, "x-mock-break-after").map(|n| n as usize);
        let delay = number(headers, "x-mock-event-delay-ms")
            .map_or(state.options.event_delay, Duration::from_millis);
        return stream(events, gate, break_after, delay);
    }
    if let Some(gate) = gate {
        gate.notified().await;
    }
    let digest = request_digest(&credential_of(headers), body);
    let value = match path {
        "/v1/messages" => json!({
            "id": format!("msg_mock_{call}"), "type": "message", "role": "assistant", "model": model,
            "mock_request_digest": digest,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": prompt_cache.anthropic(json!({"input_tokens": input_tokens, "output_tokens": output_tokens}))
        }),
        "/v1/embeddings" => json!({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens}
        }),
        _ => json!({
            "id": format!("chatcmpl-mock-{call}"), "object": "chat.completion", "model": model,
            "mock_request_digest": digest,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": prompt_cache.openai(openai_usage(input_tokens, output_tokens))
        }),
    };
    let mut response = full(StatusCode::OK, "application/json", value.to_string());
    identify_the_caller(response.headers_mut(), call);
    response
}

/// The credential headers a request carried, as [`request_digest`] reads
/// them: `x-api-key` and `authorization`, absent ones empty.
pub fn credential_of(headers: &HeaderMap) -> String {
    let value = |name| header(headers, name).unwrap_or_default();
    format!(
        "x-api-key={}\nauthorization={}",
        value("x-api-key"),
        value("authorization")
    )
}

/// A 64-bit FNV-1a digest, in hex, of `credential` (see [`credential_of`])
/// and the request body: which request an answer was made for. Not a
/// security measure, a test oracle.
pub fn request_digest(credential: &str, body: &[u8]) -> String {
    let digest = credential
        .as_bytes()
        .iter()
        .chain(b"\n")
        .chain(body)
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{digest:016x}")
}

/// Headers a real provider sends that name this call, its caller's
/// organisation and project, or its rate limits; a cache must never
/// replay them to anyone else.
pub const IDENTIFYING_HEADERS: [&str; 9] = [
    "request-id",
    "x-request-id",
    "anthropic-organization-id",
    "openai-organization",
    "openai-project",
    "cf-ray",
    "set-cookie",
    "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-remaining-tokens",
];

fn identify_the_caller(headers: &mut HeaderMap, call: u64) {
    for name in IDENTIFYING_HEADERS {
        if let Ok(value) = HeaderValue::from_str(&format!("{name}-of-call-{call}")) {
            headers.insert(name, value);
        }
    }
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(400).map(|c| c.iter().collect()).collect()
}

/// Prompt-cache tokens a request asks the mock to report in its answer's
/// usage (`x-mock-cache-read-tokens`, `x-mock-cache-creation-tokens`), as
/// a provider does when part of the prompt came from its prompt cache.
#[derive(Debug, Clone, Copy, Default)]
struct PromptCache {
    read: Option<u64>,
    creation: Option<u64>,
}

impl PromptCache {
    fn asked(headers: &HeaderMap) -> Self {
        Self {
            read: number(headers, "x-mock-cache-read-tokens"),
            creation: number(headers, "x-mock-cache-creation-tokens"),
        }
    }

    /// Anthropic reports them beside `input_tokens`, which excludes them.
    fn anthropic(self, mut usage: Value) -> Value {
        if let Some(read) = self.read {
            usage["cache_read_input_tokens"] = json!(read);
        }
        if let Some(creation) = self.creation {
            usage["cache_creation_input_tokens"] = json!(creation);
        }
        usage
    }

    /// OpenAI counts cache reads inside `prompt_tokens` and names them in
    /// `prompt_tokens_details.cached_tokens`; it has no cache writes.
    fn openai(self, mut usage: Value) -> Value {
        if let Some(read) = self.read {
            let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0) + read;
            let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
            usage["prompt_tokens"] = json!(prompt);
            usage["total_tokens"] = json!(prompt + completion);
            usage["prompt_tokens_details"] = json!({"cached_tokens": read});
        }
        usage
    }
}

fn openai_usage(input: u64, output: u64) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

fn anthropic_events(model: &str, text: &str, usage: Value, output: u64, call: u64) -> Vec<Bytes> {
    let mut events = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {"id": format!("msg_mock_{call}"), "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "usage": usage}}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for piece in chunks(text) {
        events.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": output}}),
    ));
    events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    events
}

/// OpenAI sends `usage` in a last chunk without choices, and only when
/// the request asked for it (`stream_options.include_usage`).
fn openai_events(model: &str, text: &str, call: u64, usage: Option<Value>) -> Vec<Bytes> {
    let mut events: Vec<Bytes> = chunks(text)
        .into_iter()
        .map(|piece| {
            sse(
                None,
                &json!({"id": format!("chatcmpl-mock-{call}"), "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
            )
        })
        .collect();
    if let Some(usage) = usage {
        events.push(sse(
            None,
            &json!({"id": format!("chatcmpl-mock-{call}"), "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": usage}),
        ));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn stream(
    events: Vec<Bytes>,
    gate: Option<Arc<Notify>>,
    break_after: Option<usize>,
    delay: Duration,
) -> Response<Body> {
    let (mut sender, body) = Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if break_after == Some(i) {
                sender.abort(std::io::Error::other("mock broke the stream off"));
                return;
            }
            if sender.send_data(event).await.is_err() {
                return;
            }
            if i == 0 {
                if let Some(gate) = &gate {
                    gate.notified().await;
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    response
}
