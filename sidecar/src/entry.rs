//! A stored answer, and what is learned from an answer when it is stored:
//! whether it is complete and how many tokens it cost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::compression::{self, BodyEncoding, Compression};
use crate::key::Tenant;
use crate::version::Version;

pub mod filter;

/// Tokens an answer cost, from its `usage`, by the class each is priced
/// at; a hit saves them again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens not read from the provider's prompt cache (Anthropic
    /// `input_tokens`; OpenAI `prompt_tokens` or `input_tokens` less their
    /// `cached_tokens`).
    pub input: u64,
    /// Output tokens (`output_tokens` / `completion_tokens`).
    pub output: u64,
    /// Input tokens read from the provider's prompt cache (Anthropic
    /// `cache_read_input_tokens`, OpenAI `cached_tokens`).
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic
    /// `cache_creation_input_tokens`; OpenAI reports none).
    pub cache_creation: u64,
}

impl TokenUsage {
    /// The larger count of each class: streamed answers report running
    /// totals, and the last is the largest.
    fn max(self, other: Self) -> Self {
        Self {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: self.cache_read.max(other.cache_read),
            cache_creation: self.cache_creation.max(other.cache_creation),
        }
    }
}

/// A complete 200 answer, ready to be served again.
///
/// Headers and body live in one exact-size buffer (an encoded header block,
/// then the body as stored), so an entry costs one allocation close to its
/// size and a hit serves the stored body and header values as zero-copy
/// slices of it.
///
/// The stored body is the upstream's, or its zstd frame
/// ([`CachedResponse::compressed`]). Every way an entry is built checks a
/// zstd body decodes to the size it names, so [`CachedResponse::body`]
/// cannot fail on an entry that exists.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    data: Bytes,
    header_len: usize,
    encoding: BodyEncoding,
    /// Length of the body as the upstream sent it.
    body_len: usize,
    /// When the upstream answered.
    pub created: SystemTime,
    /// How long it may be served.
    pub ttl: Duration,
    /// Tokens the answer cost.
    pub usage: TokenUsage,
    /// The model that answered, as the answer names it.
    pub model: Option<Arc<str>>,
    /// The tenant of the request it answers (`None` for entries stored
    /// before entries carried it).
    pub tenant: Option<Tenant>,
    /// The request's `x-relaycache-namespace`.
    pub namespace: Option<Arc<str>>,
    /// Orders copies of the same key across cluster members (zero outside
    /// a cluster).
    pub version: Version,
}

/// An entry rebuilt from another process's parts or read back from the
/// reserve, and its body decoded when it came compressed: checking the
/// frame (and, from another process, reading the answer's usage and
/// model) decodes it, and the hit that asked for the entry can serve that
/// copy to a client that does not accept zstd instead of decoding the
/// frame a second time.
pub struct Received {
    /// The entry, stored compressed as it came.
    pub entry: CachedResponse,
    /// Its body decoded; `None` when it came as the upstream sent it.
    pub decoded: Option<Bytes>,
}

/// Bookkeeping per entry outside its buffer (the cache's node, key, the
/// entry struct), counted against the memory budget so that `max_cost`
/// tracks real memory even for many small entries.
const ENTRY_OVERHEAD: usize = 512;

impl CachedResponse {
    /// An entry for a complete answer (headers are filtered with [`stored_headers`]).
    pub fn new(headers: &HeaderMap, body: &[u8], ttl: Duration) -> Self {
        let mut recorder = EntryRecorder::new(headers, Some(body.len() as u64), u64::MAX);
        recorder.push(body);
        recorder.build(ttl)
    }

    /// An entry read back from a longer-lived tier, keeping its original
    /// creation time, token usage and model; `ttl` runs from `created`.
    /// `None` when a zstd body does not decode to the size it names.
    /// The body decoded to check it comes along.
    pub fn restore(
        headers: &HeaderMap,
        encoding: BodyEncoding,
        stored_body: &[u8],
        created: SystemTime,
        ttl: Duration,
        usage: TokenUsage,
        model: Option<Arc<str>>,
    ) -> Option<Received> {
        // Decoding checks the frame; the hit that asked may serve the
        // decoded copy (see [`Received`]).
        let decoded = match encoding {
            BodyEncoding::Identity => None,
            BodyEncoding::Zstd => Some(Bytes::from(compression::decompress(stored_body).ok()?)),
        };
        let mut recorder = EntryRecorder::new(headers, Some(stored_body.len() as u64), u64::MAX);
        recorder.push(stored_body);
        let mut entry = recorder.assemble(ttl, AnswerFacts { usage, model });
        entry.encoding = encoding;
        entry.body_len = decoded.as_ref().map_or(stored_body.len(), Bytes::len);
        entry.created = created;
        entry.ttl = created.elapsed().map(|age| ttl + age).unwrap_or(ttl);
        Some(Received { entry, decoded })
    }

    /// The body exactly as the upstream sent it (decoded, when stored
    /// compressed).
    pub fn body(&self) -> Bytes {
        let stored = self.data.slice(self.header_len..);
        match self.encoding {
            BodyEncoding::Identity => stored,
            BodyEncoding::Zstd => match compression::decompress(&stored) {
                Ok(body) => Bytes::from(body),
                Err(err) => {
                    // Unreachable: every constructor checked the frame.
                    tracing::error!(error = %err, "a stored answer did not decode");
                    Bytes::new()
                }
            },
        }
    }

    /// The body as stored, and its encoding: what a hit sends to a client
    /// that accepts it, and what goes to peers and the reserve.
    pub fn stored_body(&self) -> (BodyEncoding, Bytes) {
        (self.encoding, self.data.slice(self.header_len..))
    }

    /// Length of the body as the upstream sent it.
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// The entry with its body compressed, when `compression` finds it
    /// worth it; unchanged otherwise, and always when the upstream already
    /// encoded the body (its `content-encoding` is kept and replayed).
    pub fn compressed(self, compression: Option<&Compression>) -> Self {
        let Some(compression) = compression else {
            return self;
        };
        if self.encoding != BodyEncoding::Identity
            || self.header_block_names(http::header::CONTENT_ENCODING.as_str())
        {
            return self;
        }
        let Some(frame) = compression.compress(&self.data[self.header_len..]) else {
            return self;
        };
        let mut data = Vec::with_capacity(self.header_len + frame.len());
        data.extend_from_slice(&self.data[..self.header_len]);
        data.extend_from_slice(&frame);
        Self {
            data: Bytes::from(data),
            encoding: BodyEncoding::Zstd,
            ..self
        }
    }

    /// Whether the header block holds a header called `name` (lowercase).
    fn header_block_names(&self, name: &str) -> bool {
        header_records(&self.data[..self.header_len]).any(|(n, _)| n == name.as_bytes())
    }

    /// The encoded header block, as [`CachedResponse::received`] takes it.
    pub fn header_block(&self) -> Bytes {
        self.data.slice(..self.header_len)
    }

    /// Rebuilds an entry from the parts another process sent, with the body
    /// it decoded (see [`Received`]); `None` when the header block is
    /// malformed, or a zstd body does not decode to the size it names (at
    /// most [`compression::MAX_DECODED_BYTES`]). Its usage and model are
    /// read from the body, as from an upstream's answer, never taken from
    /// the sender.
    pub fn received(
        header_block: &[u8],
        encoding: BodyEncoding,
        stored_body: &[u8],
        created: SystemTime,
        ttl: Duration,
        version: Version,
    ) -> Option<Received> {
        if !header_block_is_well_formed(header_block) {
            return None;
        }
        let decoded = match encoding {
            BodyEncoding::Identity => None,
            BodyEncoding::Zstd => Some(Bytes::from(compression::decompress(stored_body).ok()?)),
        };
        let body = decoded.as_deref().unwrap_or(stored_body);
        let mut data = Vec::with_capacity(header_block.len() + stored_body.len());
        data.extend_from_slice(header_block);
        data.extend_from_slice(stored_body);
        let facts = AnswerFacts::of(body, is_event_stream_block(header_block));
        let entry = Self {
            data: Bytes::from(data),
            header_len: header_block.len(),
            encoding,
            body_len: body.len(),
            created,
            ttl,
            version,
            usage: facts.usage,
            model: facts.model,
            tenant: None,
            namespace: None,
        };
        Some(Received { entry, decoded })
    }

    /// The entry as an answer from the upstream would have been stored:
    /// its TTL at most `max_ttl`, and only [`STORED_HEADERS`] kept. For
    /// entries that arrive from other processes, which must not be able to
    /// store what the upstream path never would.
    pub fn limited(self, max_ttl: Duration) -> Self {
        let headers = self.headers();
        let all_storable = headers.keys().all(|name| !is_unstorable_header(name));
        let mut entry = if all_storable {
            self
        } else {
            let mut rebuilt = Self::new(&headers, &self.body(), self.ttl);
            rebuilt.created = self.created;
            rebuilt.usage = self.usage;
            rebuilt.model = self.model;
            rebuilt.tenant = self.tenant;
            rebuilt.namespace = self.namespace;
            rebuilt.version = self.version;
            rebuilt
        };
        entry.ttl = entry.ttl.min(max_ttl);
        entry
    }

    /// Whether the entry may still be served.
    pub fn is_fresh(&self) -> bool {
        self.created.elapsed().map_or(true, |age| age < self.ttl)
    }

    /// Whether the entry expired, but no longer ago than `window`: what
    /// stale-if-error may serve when the upstream fails.
    pub fn is_stale_within(&self, window: Duration) -> bool {
        self.created
            .elapsed()
            .is_ok_and(|age| age >= self.ttl && age - self.ttl <= window)
    }

    /// The stored response headers.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let block = &self.data[..self.header_len];
        for (name, value) in header_records(block) {
            let name = HeaderName::from_bytes(name);
            let value = HeaderValue::from_maybe_shared(self.data.slice_ref(value));
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        headers
    }

    /// Bytes this entry costs in memory, for the cache's weigher.
    pub fn weight(&self) -> u32 {
        u32::try_from(self.data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }

    /// Whole seconds since the upstream answered (the `age` header).
    pub fn age_secs(&self) -> u64 {
        self.created.elapsed().map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// The (name, value) records of an encoded header block, each a name
/// length and a value length (u16, little-endian), then both; a record cut
/// off at the end is left out.
fn header_records(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let lengths = block.get(at..at + 4)?;
        let name_len = usize::from(u16::from_le_bytes([lengths[0], lengths[1]]));
        let value_len = usize::from(u16::from_le_bytes([lengths[2], lengths[3]]));
        let name_at = at + 4;
        let value_at = name_at + name_len;
        let end = value_at + value_len;
        let record = (block.get(name_at..value_at)?, block.get(value_at..end)?);
        at = end;
        Some(record)
    })
}

/// Whether an encoded header block says its body is an event stream.
fn is_event_stream_block(block: &[u8]) -> bool {
    header_records(block)
        .any(|(name, value)| name == b"content-type" && is_event_stream_type(value))
}

/// Whether `block` is a sequence of (name length, value length, name,
/// value) records with valid header names and values, ending exactly.
fn header_block_is_well_formed(block: &[u8]) -> bool {
    let mut covered = 0;
    for (name, value) in header_records(block) {
        if HeaderName::from_bytes(name).is_err() || HeaderValue::from_bytes(value).is_err() {
            return false;
        }
        covered += 4 + name.len() + value.len();
    }
    // Records stop at one cut off: the block must end with the last.
    covered == block.len()
}

/// Records an answer into an entry as it streams past, up to a size limit.
pub struct EntryRecorder {
    buffer: Option<BytesMut>,
    header_len: usize,
    limit: u64,
    event_stream: bool,
}

impl EntryRecorder {
    /// Starts an entry for a response with `headers`; `body_len` (the
    /// Content-Length, if any) lets the buffer be allocated once, exactly.
    /// Bodies longer than `limit` are not recorded.
    pub fn new(headers: &HeaderMap, body_len: Option<u64>, limit: u64) -> Self {
        let kept: Vec<(&HeaderName, &HeaderValue)> = headers
            .iter()
            .filter(|(name, value)| {
                !is_unstorable_header(name)
                    && name.as_str().len() <= 0xffff
                    && value.len() <= 0xffff
            })
            .collect();
        let header_len: usize = kept
            .iter()
            .map(|(n, v)| 4 + n.as_str().len() + v.len())
            .sum();
        let body_capacity = body_len.filter(|len| *len <= limit).unwrap_or(0);
        let capacity = header_len + usize::try_from(body_capacity).unwrap_or(0);
        let mut buffer = BytesMut::with_capacity(capacity);
        for (name, value) in kept {
            // Both lengths were checked to fit in u16 above.
            buffer.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
            buffer.extend_from_slice(&(value.len() as u16).to_le_bytes());
            buffer.extend_from_slice(name.as_str().as_bytes());
            buffer.extend_from_slice(value.as_bytes());
        }
        Self {
            buffer: (body_len.unwrap_or(0) <= limit).then_some(buffer),
            header_len,
            limit,
            event_stream: is_event_stream(headers),
        }
    }

    /// Appends body bytes; returns false once the body is over the limit
    /// (nothing more is recorded).
    pub fn push(&mut self, data: &[u8]) -> bool {
        if let Some(buffer) = self.buffer.as_mut() {
            if (buffer.len() - self.header_len + data.len()) as u64 > self.limit {
                self.buffer = None;
            } else {
                buffer.extend_from_slice(data);
            }
        }
        self.buffer.is_some()
    }

    /// Whether the body is still being recorded.
    pub fn is_recording(&self) -> bool {
        self.buffer.is_some()
    }

    /// The entry, if the recorded body is one worth keeping: within the
    /// limit, and for event streams ending in their terminal event.
    pub fn finish(self, ttl: Duration) -> Option<CachedResponse> {
        let buffer = self.buffer.as_ref()?;
        if self.event_stream && !sse_is_complete(&buffer[self.header_len..]) {
            return None;
        }
        Some(self.build(ttl))
    }

    /// The entry, with its usage and model read from the recorded body.
    fn build(self, ttl: Duration) -> CachedResponse {
        let facts = match &self.buffer {
            Some(buffer) => AnswerFacts::of(&buffer[self.header_len..], self.event_stream),
            None => AnswerFacts::default(),
        };
        self.assemble(ttl, facts)
    }

    /// The entry, with `facts` as its usage and model.
    fn assemble(self, ttl: Duration, facts: AnswerFacts) -> CachedResponse {
        let buffer = self.buffer.unwrap_or_default();
        // Keep exactly what was recorded: a buffer that grew keeps spare
        // capacity, which would live as long as the entry.
        let data = if buffer.len() == buffer.capacity() {
            buffer.freeze()
        } else {
            Bytes::copy_from_slice(&buffer)
        };
        CachedResponse {
            header_len: self.header_len,
            encoding: BodyEncoding::Identity,
            body_len: data.len() - self.header_len,
            data,
            created: SystemTime::now(),
            ttl,
            usage: facts.usage,
            model: facts.model,
            tenant: None,
            namespace: None,
            version: Version::default(),
        }
    }
}

/// The headers an answer is stored (and replayed) with: none naming the
/// caller it was first sent to.
pub fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if !is_unstorable_header(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream_type(v.as_bytes()))
}

/// Whether a `content-type` value names an event stream.
fn is_event_stream_type(content_type: &[u8]) -> bool {
    content_type
        .trim_ascii_start()
        .starts_with(b"text/event-stream")
}

/// Whether a recorded SSE body ends with its provider's terminal event
/// (Anthropic `message_stop`, OpenAI chat `[DONE]`, Responses
/// `response.completed`). A stream that ended cleanly on the wire but
/// without one broke off upstream and must not be stored.
pub fn sse_is_complete(body: &[u8]) -> bool {
    let tail_start = body.len().saturating_sub(4096);
    let tail = String::from_utf8_lossy(&body[tail_start..]);
    tail.lines().any(|line| {
        let line = line.trim();
        line == "event: message_stop"
            || line == "data: [DONE]"
            || line == "event: response.completed"
    })
}

/// Response headers replayed from the cache: only those that describe the
/// answer itself. An allow list, because providers keep adding headers that
/// name the call, the caller's organisation or project, or its rate limits
/// (`request-id`, `anthropic-organization-id`, `openai-project`, `cf-ray`,
/// `*-ratelimit-*`, `set-cookie`, …), and none of those may reach another
/// caller.
pub const STORED_HEADERS: [&str; 3] = ["content-type", "content-encoding", "content-language"];

fn is_unstorable_header(name: &HeaderName) -> bool {
    !STORED_HEADERS.contains(&name.as_str())
}

/// Whether the upstream forbids storing this response.
pub fn upstream_forbids_store(headers: &HeaderMap) -> bool {
    crate::headers::list_items(headers, http::header::CACHE_CONTROL)
        .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private"))
}

/// What an answer says about itself: the tokens it cost and the model
/// that wrote it. Only these fields are read; serde skips the rest of the
/// answer without building it.
#[derive(Debug, Default, PartialEq)]
pub struct AnswerFacts {
    /// Tokens by class.
    pub usage: TokenUsage,
    /// The answer's `model`.
    pub model: Option<Arc<str>>,
}

impl AnswerFacts {
    /// The facts of a JSON answer, or of a recorded event stream.
    pub fn of(body: &[u8], event_stream: bool) -> Self {
        if event_stream {
            Self::of_stream(body)
        } else {
            serde_json::from_slice::<Answer>(body)
                .map(Answer::facts)
                .unwrap_or_default()
        }
    }

    /// Anthropic reports input and prompt-cache tokens in `message_start`
    /// and the running output in `message_delta`; OpenAI chat in a last
    /// chunk; the Responses API in `response.completed`. The model is named
    /// by the first event that names one.
    fn of_stream(body: &[u8]) -> Self {
        let mut facts = Self::default();
        for line in body.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<StreamEvent>(data.trim_ascii()) else {
                continue;
            };
            let own = Answer {
                usage: event.usage,
                model: event.model,
            };
            for answer in [Some(own), event.message, event.response]
                .into_iter()
                .flatten()
            {
                let found = answer.facts();
                facts.usage = facts.usage.max(found.usage);
                if facts.model.is_none() {
                    facts.model = found.model;
                }
            }
        }
        facts
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    usage: Option<UsageFields>,
    #[serde(default)]
    model: Option<String>,
}

impl Answer {
    fn facts(self) -> AnswerFacts {
        AnswerFacts {
            usage: self.usage.map(UsageFields::usage).unwrap_or_default(),
            model: self.model.filter(|m| !m.is_empty()).map(Arc::from),
        }
    }
}

/// One event of a stream: an answer itself (OpenAI chunks, Anthropic
/// `message_delta`), or one wrapped in `message` (Anthropic
/// `message_start`) or `response` (Responses API).
#[derive(serde::Deserialize)]
struct StreamEvent {
    #[serde(default)]
    usage: Option<UsageFields>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<Answer>,
    #[serde(default)]
    response: Option<Answer>,
}

#[derive(serde::Deserialize)]
struct UsageFields {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedTokens>,
    input_tokens_details: Option<CachedTokens>,
}

#[derive(serde::Deserialize)]
struct CachedTokens {
    cached_tokens: Option<u64>,
}

impl UsageFields {
    fn usage(self) -> TokenUsage {
        // OpenAI's cached tokens are part of its prompt count; Anthropic's
        // cache reads are counted beside `input_tokens`.
        let cached = [self.prompt_tokens_details, self.input_tokens_details]
            .into_iter()
            .flatten()
            .filter_map(|details| details.cached_tokens)
            .sum::<u64>();
        let prompt = self.input_tokens.unwrap_or(0) + self.prompt_tokens.unwrap_or(0);
        TokenUsage {
            input: prompt.saturating_sub(cached),
            output: self.output_tokens.unwrap_or(0) + self.completion_tokens.unwrap_or(0),
            cache_read: self.cache_read_input_tokens.unwrap_or(0) + cached,
            cache_creation: self.cache_creation_input_tokens.unwrap_or(0),
        }
    }
}

/// Adds the answer headers of a cache hit.
pub fn hit_headers(entry: &CachedResponse, tier: crate::tier::TierKind, key: &str) -> HeaderMap {
    let mut headers = entry.headers();
    tag_hit(&mut headers, tier, key, entry.age_secs());
    headers
}

/// Marks an answer's headers as a hit from `tier` under `key`, answered
/// `age_secs` after the upstream's answer.
pub fn tag_hit(headers: &mut HeaderMap, tier: crate::tier::TierKind, key: &str, age_secs: u64) {
    headers.insert(crate::headers::STATUS, HeaderValue::from_static("hit"));
    headers.insert(
        crate::headers::TIER,
        HeaderValue::from_static(tier.as_str()),
    );
    if let Ok(value) = HeaderValue::from_str(key) {
        headers.insert(crate::headers::KEY, value);
    }
    headers.insert(http::header::AGE, HeaderValue::from(age_secs));
}

#[cfg(test)]
mod tests;
