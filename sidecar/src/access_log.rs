//! One log line per request, written when the response body has been sent
//! (or the client went away), so the line carries the bytes really sent.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::config::LogFormat;
use crate::headers::CacheStatus;

/// What is known about a request, filled in as it is handled. Holds no
/// headers and no query string, so no credential can reach the log.
#[derive(Debug)]
pub struct AccessLog {
    start: Instant,
    /// HTTP method.
    pub method: http::Method,
    /// Path without the query.
    pub path: String,
    /// Upstream chosen, if any.
    pub upstream: Option<Arc<str>>,
    /// Response status.
    pub status: StatusCode,
    /// What the cache did (None on routes that are not cached).
    pub cache_status: Option<CacheStatus>,
    /// Tier that answered a hit.
    pub tier: Option<crate::tier::TierKind>,
    /// Whether the request waited for an identical upstream call.
    pub coalesced: bool,
    /// Whether the answer came from the reserve tier.
    pub reserve_used: bool,
    /// Why a request was not cached, or which limit refused it.
    pub bypass_reason: Option<&'static str>,
    /// How the upstream failed, when a stale entry answered instead.
    pub upstream_error: Option<String>,
    /// The request's place under `server.max_inflight`, held until the
    /// answer is sent.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: u64,
    completed: bool,
}

impl AccessLog {
    /// Starts the record of a request.
    pub fn new(method: http::Method, path: &str) -> Self {
        Self {
            start: Instant::now(),
            method,
            path: path.to_string(),
            upstream: None,
            status: StatusCode::OK,
            cache_status: None,
            tier: None,
            coalesced: false,
            reserve_used: false,
            bypass_reason: None,
            upstream_error: None,
            slot: None,
            bytes: 0,
            completed: false,
        }
    }

    /// Writes the request's line: by hand into the log's queue when the
    /// installed log takes lines directly, through tracing otherwise (a
    /// terminal, or no log installed).
    fn write(&self) {
        if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            return;
        }
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let Some(sink) = crate::telemetry::access_sink() else {
            self.write_event(latency_ms);
            return;
        };
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return self.write_event(latency_ms);
            };
            line.clear();
            self.format_line(sink.format, SystemTime::now(), latency_ms, &mut line);
            sink.write(&line);
        });
    }

    /// The line through tracing's formatter.
    fn write_event(&self, latency_ms: f64) {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            cache = self.cache_status.map(CacheStatus::as_str).unwrap_or("-"),
            tier = self.tier.map_or("-", crate::tier::TierKind::as_str),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            coalesced = self.coalesced,
            reserve_used = self.reserve_used,
            bypass_reason = self.bypass_reason.unwrap_or("-"),
            upstream_error = self.upstream_error.as_deref().unwrap_or("-"),
            latency_ms,
            bytes = self.bytes,
            completed = self.completed,
            "request"
        );
    }

    /// The fields of [`write_event`](Self::write_event), in its order,
    /// each as tracing records it.
    fn fields(&self, latency_ms: f64) -> [(&'static str, Field<'_>); 13] {
        [
            ("method", Field::Shown(self.method.as_str())),
            ("path", Field::Shown(&self.path)),
            ("status", Field::Count(u64::from(self.status.as_u16()))),
            (
                "cache",
                Field::Text(self.cache_status.map_or("-", CacheStatus::as_str)),
            ),
            (
                "tier",
                Field::Text(self.tier.map_or("-", crate::tier::TierKind::as_str)),
            ),
            (
                "upstream",
                Field::Text(self.upstream.as_deref().unwrap_or("-")),
            ),
            ("coalesced", Field::Flag(self.coalesced)),
            ("reserve_used", Field::Flag(self.reserve_used)),
            (
                "bypass_reason",
                Field::Text(self.bypass_reason.unwrap_or("-")),
            ),
            (
                "upstream_error",
                Field::Text(self.upstream_error.as_deref().unwrap_or("-")),
            ),
            ("latency_ms", Field::Measure(latency_ms)),
            ("bytes", Field::Count(self.bytes)),
            ("completed", Field::Flag(self.completed)),
        ]
    }

    /// Appends the line tracing's formatter writes for
    /// [`write_event`](Self::write_event) (without colours), byte for byte,
    /// at `now`. Going through the formatter cost about a tenth of a
    /// hit's CPU; this costs a fraction of that.
    fn format_line(&self, format: LogFormat, now: SystemTime, latency_ms: f64, out: &mut Vec<u8>) {
        let timestamp = humantime::format_rfc3339_micros(now);
        // What goes before each field's name, between name and value, and
        // after the last field.
        let (before, between, end): (&[u8], &[u8], &[u8]) = match format {
            LogFormat::Text => {
                let _ = write!(out, "{timestamp}  INFO request");
                (b" ", b"=", b"\n")
            }
            LogFormat::Json => {
                let _ = write!(
                    out,
                    r#"{{"timestamp":"{timestamp}","level":"INFO","message":"request""#
                );
                (b",\"", b"\":", b"}\n")
            }
        };
        for (name, value) in self.fields(latency_ms) {
            out.extend_from_slice(before);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(between);
            match format {
                LogFormat::Text => value.write_text(out),
                LogFormat::Json => value.write_json(out),
            }
        }
        out.extend_from_slice(end);
    }
}

/// The target of request lines, which `RUST_LOG` can filter on.
const ACCESS_TARGET: &str = "relaycache::access";

thread_local! {
    /// Each thread's line buffer, reused from line to line.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One field's value, in the form tracing records it.
enum Field<'a> {
    /// Recorded with `%` (Display): written as it is.
    Shown(&'a str),
    /// A string: quoted and escaped.
    Text(&'a str),
    Count(u64),
    Flag(bool),
    Measure(f64),
}

impl Field<'_> {
    fn write_text(&self, out: &mut Vec<u8>) {
        match *self {
            Field::Shown(shown) => out.extend_from_slice(shown.as_bytes()),
            Field::Text(text)
                if text
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') =>
            {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
            Field::Text(text) => {
                let _ = write!(out, "{text:?}");
            }
            Field::Count(count) => {
                let _ = write!(out, "{count}");
            }
            Field::Flag(flag) => {
                let _ = write!(out, "{flag}");
            }
            Field::Measure(measure) => {
                let _ = write!(out, "{measure:?}");
            }
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        let _ = match *self {
            Field::Shown(text) | Field::Text(text) => serde_json::to_writer(&mut *out, text),
            Field::Count(count) => serde_json::to_writer(&mut *out, &count),
            Field::Flag(flag) => serde_json::to_writer(&mut *out, &flag),
            Field::Measure(measure) => serde_json::to_writer(&mut *out, &measure),
        };
    }
}

/// A response body that writes its request's log line when dropped.
pub struct LoggedBody {
    inner: ProxyBody,
    log: AccessLog,
    declared_length: Option<u64>,
}

impl LoggedBody {
    /// Wraps `inner`; `log` is written once the body is done with.
    /// `declared_length` is the response's Content-Length: the server stops
    /// polling once that many bytes went out, so reaching it means complete.
    pub fn new(inner: ProxyBody, log: AccessLog, declared_length: Option<u64>) -> Self {
        Self {
            inner,
            log,
            declared_length,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.log.completed = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() || self.declared_length == Some(self.log.bytes) {
            self.log.completed = true;
        }
        self.log.write();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::EnvFilter;

    use super::*;
    use crate::telemetry::subscriber;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn quiet_hit() -> AccessLog {
        let mut log = AccessLog::new(http::Method::POST, "/v1/messages");
        log.cache_status = Some(CacheStatus::Hit);
        log.tier = Some(crate::tier::TierKind::Memory);
        log.upstream = Some(Arc::from("anthropic"));
        log.bytes = 5287;
        log.completed = true;
        log
    }

    fn troubled_miss() -> AccessLog {
        let mut log = AccessLog::new(http::Method::PUT, "/v1/odd%20path");
        log.status = StatusCode::SERVICE_UNAVAILABLE;
        log.cache_status = Some(CacheStatus::Miss);
        log.coalesced = true;
        log.reserve_used = true;
        log.bypass_reason = Some("body is not one JSON object");
        log.upstream_error =
            Some("connect \"refused\"\n\tat C:\\path – é \u{7f}\u{200b} {\"json\":1}".into());
        log.bytes = u64::MAX;
        log
    }

    /// The line tracing's formatter writes for `log`, as `init` sets it up.
    fn through_tracing(log: &AccessLog, format: LogFormat, latency_ms: f64) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let dispatch = subscriber(EnvFilter::new("info"), move || sink.clone(), format, false);
        tracing::dispatcher::with_default(&dispatch, || log.write_event(latency_ms));
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn by_hand(log: &AccessLog, format: LogFormat, latency_ms: f64) -> String {
        let mut line = Vec::new();
        log.format_line(format, SystemTime::now(), latency_ms, &mut line);
        String::from_utf8(line).unwrap()
    }

    /// The hand-written line is the formatter's, byte for byte, for text
    /// and JSON, plain fields and ones that need escaping; only the
    /// timestamps (taken at two moments) differ, and by little.
    #[test]
    fn a_line_written_by_hand_is_the_line_tracing_writes() {
        const STAMP: usize = "2026-12-03T04:23:27.522608Z".len();
        let logs = [quiet_hit(), troubled_miss()];
        let latencies = [0.228158, 0.1 + 0.2, 1e-7, 12_345.678_9, 0.0, 2.0];
        for (log, format) in logs
            .iter()
            .flat_map(|log| [(log, LogFormat::Text), (log, LogFormat::Json)])
        {
            let at = match format {
                LogFormat::Text => 0,
                LogFormat::Json => r#"{"timestamp":""#.len(),
            };
            for latency_ms in latencies {
                let reference = through_tracing(log, format, latency_ms);
                let mine = by_hand(log, format, latency_ms);
                let (theirs_at, mine_at) = (&reference[at..at + STAMP], &mine[at..at + STAMP]);
                let apart = humantime::parse_rfc3339(mine_at)
                    .unwrap()
                    .duration_since(humantime::parse_rfc3339(theirs_at).unwrap())
                    .unwrap();
                assert!(
                    apart < std::time::Duration::from_secs(5),
                    "{theirs_at} vs {mine_at}"
                );
                let same_stamp =
                    format!("{}{mine_at}{}", &reference[..at], &reference[at + STAMP..]);
                assert_eq!(mine, same_stamp, "{format:?} at {latency_ms}");
                if format == LogFormat::Json {
                    let parsed: serde_json::Value = serde_json::from_str(&mine).unwrap();
                    assert_eq!(parsed["latency_ms"], serde_json::json!(latency_ms));
                }
            }
        }
    }
}
