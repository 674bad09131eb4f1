//! The annotation `relaycache.io/purge-before: <RFC 3339 time>`: the
//! operator asks a member's admin endpoint
//! (`DELETE /cache?created_before=TIME`, with the members' token, which a
//! member's `server.admin_token` is) to remove every entry created before
//! that time. A member fans the purge out to every member and the reserve,
//! so one suffices in mode `ha`.
//!
//! The status is the record: `status.lastPurge.before` holds the value last
//! purged, so each distinct value is applied once, across restarts of the
//! operator too. A failed purge leaves the annotation to be tried again,
//! with backoff; a value that is not a time is reported and left alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::ResourceExt;

use crate::crd::{ClusterMode, LastPurge, RelayCache, RelayCacheStatus};
use crate::status::{self, Observation, PURGED};

/// The annotation that asks for a purge.
pub const PURGE_ANNOTATION: &str = "relaycache.io/purge-before";
/// Bound on one call to a member's admin endpoint, answer included (a
/// member waits for every other member and the reserve before answering).
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on connecting to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from a member.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// First retry after a failed purge; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(10);
/// Longest wait between retries of a failed purge.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the annotation asks of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// No annotation.
    Nothing,
    /// Its value was purged already (`status.lastPurge.before`).
    Done,
    /// Its value is not an RFC 3339 time.
    Invalid(String),
    /// A purge of the entries created before `at`.
    Purge {
        /// The annotation's value as written.
        value: String,
        /// The time it names.
        at: Timestamp,
    },
}

/// What the annotation of `rc` asks, given what its status records.
pub fn wanted(rc: &RelayCache) -> Wanted {
    let Some(value) = rc.annotations().get(PURGE_ANNOTATION) else {
        return Wanted::Nothing;
    };
    let last = rc.status.as_ref().and_then(|s| s.last_purge.as_ref());
    if last.is_some_and(|last| last.before == *value) {
        return Wanted::Done;
    }
    match value.trim().parse::<Timestamp>() {
        Ok(at) => Wanted::Purge {
            value: value.clone(),
            at,
        },
        Err(_) => Wanted::Invalid(value.clone()),
    }
}

/// Reasons of the `Purged` condition and of the Events of a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeReason {
    /// The members confirmed the purge.
    Purged,
    /// The annotation is not an RFC 3339 time.
    InvalidPurgeTime,
    /// The RelayCache's mode has no cluster to purge through one member.
    PurgeUnsupported,
    /// No member confirmed the purge; it is tried again.
    PurgeFailed,
}

impl PurgeReason {
    /// The reason as the condition and the Event name it.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeReason::Purged => "Purged",
            PurgeReason::InvalidPurgeTime => "InvalidPurgeTime",
            PurgeReason::PurgeUnsupported => "PurgeUnsupported",
            PurgeReason::PurgeFailed => "PurgeFailed",
        }
    }
}

/// What a reconcile made of the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: no annotation and nothing to clear, or done already.
    Unchanged,
    /// The annotation is gone: a refusal or failure it caused is cleared.
    Cleared,
    /// The members confirmed the purge.
    Purged(LastPurge),
    /// Not tried, and not tried again until the annotation changes.
    Refused {
        /// Why.
        reason: PurgeReason,
        /// What to do, naming the annotation.
        message: String,
    },
    /// Tried and failed; tried again with backoff.
    Failed(String),
}

/// The next step for a reconcile: settled without asking anyone, or a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to ask a member.
    Settled(Outcome),
    /// Ask the members to purge what was created before `at`.
    Call {
        /// The annotation's value as written.
        value: String,
        /// The time it names.
        at: Timestamp,
    },
}

/// What to do about `wanted` for a RelayCache of `mode` with `ready` ready
/// members.
pub fn plan(wanted: Wanted, mode: ClusterMode, ready: i32) -> Plan {
    match wanted {
        Wanted::Nothing => Plan::Settled(Outcome::Cleared),
        Wanted::Done => Plan::Settled(Outcome::Unchanged),
        Wanted::Invalid(value) => Plan::Settled(Outcome::Refused {
            reason: PurgeReason::InvalidPurgeTime,
            message: format!(
                "annotation {PURGE_ANNOTATION}: {value:?} is not an RFC 3339 time; write one such as 2026-12-01T00:00:00Z (nothing was purged)"
            ),
        }),
        Wanted::Purge { .. } if mode != ClusterMode::Ha => Plan::Settled(Outcome::Refused {
            reason: PurgeReason::PurgeUnsupported,
            message: format!(
                "annotation {PURGE_ANNOTATION}: only a RelayCache of mode ha is purged by the operator; purge each member with relaycache cache purge (nothing was purged)"
            ),
        }),
        Wanted::Purge { .. } if ready < 1 => Plan::Settled(Outcome::Failed(
            "no member is ready to take the purge; it is tried again".into(),
        )),
        Wanted::Purge { value, at } => Plan::Call { value, at },
    }
}

/// A member as the operator reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its pod's name.
    pub name: String,
    /// `host:port` of its admin listener.
    pub admin: String,
}

/// Asks `members` in turn to purge what was created before `at`; the first
/// that confirms has purged every member and the reserve.
pub async fn call(
    value: &str,
    at: Timestamp,
    members: &[Member],
    token: &str,
    admin: &dyn MemberAdmin,
) -> Outcome {
    let mut errors = Vec::new();
    for member in members {
        match admin.purge_before(&member.admin, token, at).await {
            Ok(removed) => {
                return Outcome::Purged(LastPurge {
                    before: value.to_string(),
                    time: Timestamp::now().to_string(),
                    removed,
                    member: member.name.clone(),
                })
            }
            Err(err) => errors.push(format!("{}: {err}", member.name)),
        }
    }
    if errors.is_empty() {
        return Outcome::Failed("no member to ask; it is tried again".into());
    }
    Outcome::Failed(format!(
        "no member confirmed the purge ({}); it is tried again",
        errors.join("; ")
    ))
}

/// Writes `outcome` into `next` (the `Purged` condition, `lastPurge`) and
/// returns the Event it deserves: one per purge and per failed attempt; a
/// refusal only when it is new, so a resync repeats none.
pub fn record(
    observation: &Observation<'_>,
    next: &mut RelayCacheStatus,
    outcome: &Outcome,
) -> Option<Event> {
    let previous = status::find(observation.previous, PURGED);
    let (event_type, reason, message) = match outcome {
        Outcome::Unchanged => return None,
        Outcome::Cleared => {
            // A success stays as the record; a complaint about an annotation
            // that is gone does not.
            next.conditions
                .retain(|c| c.type_ != PURGED || c.status == "True");
            return None;
        }
        Outcome::Purged(last) => {
            next.last_purge = Some(last.clone());
            let message = format!(
                "removed {} entries created before {} (asked member {})",
                last.removed, last.before, last.member
            );
            (EventType::Normal, PurgeReason::Purged, message)
        }
        Outcome::Refused { reason, message } => {
            let repeated =
                previous.is_some_and(|c| c.reason == reason.as_str() && c.message == *message);
            set_purge_condition(next, observation, false, *reason, message.clone());
            if repeated {
                return None;
            }
            (EventType::Warning, *reason, message.clone())
        }
        Outcome::Failed(message) => (
            EventType::Warning,
            PurgeReason::PurgeFailed,
            message.clone(),
        ),
    };
    let done = reason == PurgeReason::Purged;
    set_purge_condition(next, observation, done, reason, message.clone());
    Some(Event {
        type_: event_type,
        reason: reason.as_str().into(),
        note: Some(message),
        action: "Purge".into(),
        secondary: None,
    })
}

fn set_purge_condition(
    next: &mut RelayCacheStatus,
    observation: &Observation<'_>,
    done: bool,
    reason: PurgeReason,
    message: String,
) {
    let condition = observation.purge_outcome(done, reason.as_str(), message);
    next.conditions.retain(|c| c.type_ != PURGED);
    next.conditions.push(condition);
}

/// Failed purges per RelayCache, for the backoff of their retries.
#[derive(Debug, Default)]
pub struct Retries(Mutex<HashMap<String, u32>>);

impl Retries {
    /// Counts a failure of `key`'s purge; the wait before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let failures = map.entry(key.to_string()).or_insert(0);
        *failures = failures.saturating_add(1);
        backoff(*failures)
    }

    /// Forgets `key`'s failures (its purge succeeded, or is no longer asked).
    pub fn reset(&self, key: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.remove(key);
    }
}

/// The wait after `failures` failed purges in a row: 10 s, doubled each
/// time, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// Why a member did not confirm a purge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    /// No connection, or it broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The member answered with an error status.
    #[error("answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The member's message.
        message: String,
    },
    /// A 200 whose body has no count of removed entries.
    #[error("unreadable answer: {0}")]
    Unreadable(String),
}

/// A member's admin endpoint, as the operator calls it.
pub trait MemberAdmin: Send + Sync {
    /// `DELETE http://ADMIN/cache?created_before=AT` with `token` as the
    /// bearer; the number of entries removed.
    fn purge_before<'a>(
        &'a self,
        admin: &'a str,
        token: &'a str,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<i64, PurgeError>>;
}

/// [`MemberAdmin`] over plain HTTP, each call bounded by a timeout.
pub struct HttpMemberAdmin {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl HttpMemberAdmin {
    /// A client whose calls end after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    async fn purge(&self, admin: &str, token: &str, at: Timestamp) -> Result<i64, PurgeError> {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(format!("http://{admin}/cache?created_before={at}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|err| PurgeError::Unreachable(format!("invalid request: {err}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| PurgeError::Unreachable(error_chain(&err)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|err| PurgeError::Unreachable(format!("reading the answer: {err}")))?
            .to_bytes();
        let answer: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if status != StatusCode::OK {
            let message = answer
                .as_ref()
                .and_then(|a| a["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(PurgeError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        answer
            .as_ref()
            .and_then(|a| a["removed"].as_i64())
            .ok_or_else(|| {
                PurgeError::Unreadable("no number \"removed\" in the member's answer".into())
            })
    }
}

impl Default for HttpMemberAdmin {
    fn default() -> Self {
        Self::new(PURGE_TIMEOUT)
    }
}

impl MemberAdmin for HttpMemberAdmin {
    fn purge_before<'a>(
        &'a self,
        admin: &'a str,
        token: &'a str,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<i64, PurgeError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.purge(admin, token, at))
                .await
                .map_err(|_| PurgeError::Timeout(self.timeout))?
        })
    }
}

/// An error and its sources, as one line (a client error alone says only
/// "client error (Connect)").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "purge_tests.rs"]
pub(crate) mod tests;
