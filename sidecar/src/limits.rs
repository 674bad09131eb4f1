//! Overload limits: how many connections, requests and request-body bytes
//! the proxy holds at once. Beyond a limit the answer is a 503 in the
//! provider's error shape with `retry-after`, so the process sheds load
//! instead of dying of it.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ProxyBody;
use crate::reply;

/// Seconds a refused caller is told to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Request bodies are budgeted in KiB, so that a budget above 4 GiB still
/// fits a semaphore's `u32` acquisitions.
const BUDGET_UNIT: u64 = 1024;

/// The limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverloadLimit {
    /// `server.max_connections`.
    Connections,
    /// `server.max_inflight`.
    Inflight,
    /// `server.max_buffered_bytes`.
    BufferedBytes,
}

impl OverloadLimit {
    /// Every limit, in declaration order.
    pub const ALL: [OverloadLimit; 3] = [
        OverloadLimit::Connections,
        OverloadLimit::Inflight,
        OverloadLimit::BufferedBytes,
    ];

    /// The metric label, and the name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OverloadLimit::Connections => "connections",
            OverloadLimit::Inflight => "inflight",
            OverloadLimit::BufferedBytes => "buffered_bytes",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            OverloadLimit::Connections => "server.max_connections",
            OverloadLimit::Inflight => "server.max_inflight",
            OverloadLimit::BufferedBytes => "server.max_buffered_bytes",
        }
    }

    /// What the refused caller reads.
    pub fn message(self) -> String {
        format!(
            "relaycache is at its {} limit ({}); retry after {RETRY_AFTER_SECS}s, or raise the limit if the machine has room",
            self.as_str(),
            self.setting()
        )
    }
}

/// The 503 answer for a refused request on `path`.
pub fn overloaded(path: &str, limit: OverloadLimit) -> Response<ProxyBody> {
    let mut response = reply::error(path, StatusCode::SERVICE_UNAVAILABLE, &limit.message());
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_SECS),
    );
    response
}

/// A whole HTTP/1.1 503 answer written straight to a connection that is
/// over `server.max_connections`, before any request is read from it.
pub fn connection_refusal() -> Vec<u8> {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": "overloaded_error", "message": OverloadLimit::Connections.message()},
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\nx-relaycache-error: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Requests in flight, and the bytes of request bodies held at once.
#[derive(Debug, Clone)]
pub struct Admission {
    inflight: Arc<Semaphore>,
    buffered: Arc<Semaphore>,
}

/// A share of the body budget (empty by default, grown with
/// [`Admission::grow`]); returned when dropped.
#[derive(Debug, Default)]
pub struct BufferPermit(Option<OwnedSemaphorePermit>);

impl BufferPermit {
    /// Gives `bytes` of this share back early (for scratch space no longer
    /// needed), keeping the rest.
    pub fn release(&mut self, bytes: u64) {
        if let Some(permit) = self.0.as_mut() {
            let units = usize::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(usize::MAX);
            let units = units.min(permit.num_permits());
            drop(permit.split(units));
        }
    }
}

impl Admission {
    /// Limits from the configuration.
    pub fn new(max_inflight: usize, max_buffered_bytes: u64) -> Self {
        let units = usize::try_from(max_buffered_bytes / BUDGET_UNIT)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inflight: Arc::new(Semaphore::new(
                max_inflight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            buffered: Arc::new(Semaphore::new(units)),
        }
    }

    /// A slot for one request, held until its answer is sent.
    pub fn request(&self) -> Result<OwnedSemaphorePermit, OverloadLimit> {
        Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| OverloadLimit::Inflight)
    }

    /// Adds `bytes` to `permit`, or refuses when the budget has no room.
    pub fn grow(&self, permit: &mut BufferPermit, bytes: u64) -> Result<(), OverloadLimit> {
        let units =
            u32::try_from(bytes.div_ceil(BUDGET_UNIT)).map_err(|_| OverloadLimit::BufferedBytes)?;
        if units == 0 {
            return Ok(());
        }
        let more = Arc::clone(&self.buffered)
            .try_acquire_many_owned(units)
            .map_err(|_| OverloadLimit::BufferedBytes)?;
        match permit.0.as_mut() {
            Some(held) => held.merge(more),
            None => permit.0 = Some(more),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let admission = Admission::new(2, 10 * 1024);
        let mut first = BufferPermit::default();
        admission.grow(&mut first, 6 * 1024).unwrap();
        let mut second = BufferPermit::default();
        assert_eq!(
            admission.grow(&mut second, 6 * 1024),
            Err(OverloadLimit::BufferedBytes)
        );
        first.release(2 * 1024);
        admission.grow(&mut second, 6 * 1024).unwrap();
        drop(first);
        drop(second);
        let mut all = BufferPermit::default();
        admission.grow(&mut all, 10 * 1024).unwrap();
    }

    #[test]
    fn requests_in_flight_are_capped() {
        let admission = Admission::new(1, 1024);
        let held = admission.request().unwrap();
        assert_eq!(admission.request().err(), Some(OverloadLimit::Inflight));
        drop(held);
        assert!(admission.request().is_ok());
    }

    #[test]
    fn the_connection_refusal_is_one_complete_answer() {
        let text = String::from_utf8(connection_refusal()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "overloaded_error");
    }
}
