//! The annotation's decisions, and the calls to members through a fake
//! [`MemberAdmin`]; `reconcile_tests.rs` drives them through a reconcile.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::crd::RelayCacheStatus;
use crate::resources::testing::rc;

/// Answers by admin address; an address it has no answer for is
/// unreachable. Records every call as (address, token, time).
#[derive(Default)]
pub(crate) struct FakeAdmin {
    pub(crate) answers: BTreeMap<String, Result<i64, PurgeError>>,
    pub(crate) calls: Mutex<Vec<(String, String, String)>>,
}

impl FakeAdmin {
    pub(crate) fn answering(answers: &[(&str, Result<i64, PurgeError>)]) -> Self {
        Self {
            answers: answers
                .iter()
                .map(|(admin, answer)| (admin.to_string(), answer.clone()))
                .collect(),
            calls: Mutex::default(),
        }
    }

    pub(crate) fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl MemberAdmin for FakeAdmin {
    fn purge_before<'a>(
        &'a self,
        admin: &'a str,
        token: &'a str,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<i64, PurgeError>> {
        self.calls
            .lock()
            .unwrap()
            .push((admin.into(), token.into(), at.to_string()));
        let answer = self
            .answers
            .get(admin)
            .cloned()
            .unwrap_or_else(|| Err(PurgeError::Unreachable("connection refused".into())));
        Box::pin(async move { answer })
    }
}

fn annotated(value: Option<&str>, last_before: Option<&str>) -> RelayCache {
    let mut web = rc("web", json!({}));
    if let Some(value) = value {
        web.metadata.annotations = Some(BTreeMap::from([(
            PURGE_ANNOTATION.to_string(),
            value.to_string(),
        )]));
    }
    web.status = last_before.map(|before| RelayCacheStatus {
        last_purge: Some(LastPurge {
            before: before.into(),
            time: "2026-01-01T00:00:00Z".into(),
            removed: 3,
            member: "web-0".into(),
        }),
        ..RelayCacheStatus::default()
    });
    web
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn members(n: i32) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("web-{i}"),
            admin: format!("web-{i}.web-peers.cache.svc:9787"),
        })
        .collect()
}

#[test]
fn no_annotation_wants_nothing_and_clears() {
    assert_eq!(
        wanted(&annotated(None, Some("2026-01-01T00:00:00Z"))),
        Wanted::Nothing
    );
    assert_eq!(
        plan(Wanted::Nothing, ClusterMode::Ha, 3),
        Plan::Settled(Outcome::Cleared)
    );
}

#[test]
fn the_value_last_purged_is_not_purged_again() {
    let web = annotated(Some("2026-12-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"));
    assert_eq!(wanted(&web), Wanted::Done);
    assert_eq!(
        plan(Wanted::Done, ClusterMode::Ha, 3),
        Plan::Settled(Outcome::Unchanged)
    );
}

#[test]
fn a_new_value_asks_for_a_call() {
    let web = annotated(
        Some("2026-12-01T01:00:00+01:00"),
        Some("2026-11-01T00:00:00Z"),
    );
    let want = wanted(&web);
    assert_eq!(
        want,
        Wanted::Purge {
            value: "2026-12-01T01:00:00+01:00".into(),
            at: at("2026-12-01T00:00:00Z"),
        }
    );
    assert_eq!(
        plan(want, ClusterMode::Ha, 1),
        Plan::Call {
            value: "2026-12-01T01:00:00+01:00".into(),
            at: at("2026-12-01T00:00:00Z"),
        }
    );
    // Never purged before: the same.
    assert!(matches!(
        wanted(&annotated(Some("2026-12-01T00:00:00Z"), None)),
        Wanted::Purge { .. }
    ));
}

#[test]
fn an_invalid_time_is_refused_naming_the_annotation_and_the_form() {
    for value in ["yesterday", "2026-12-01", "2026-12-01T00:00:00", ""] {
        let want = wanted(&annotated(Some(value), None));
        assert_eq!(want, Wanted::Invalid(value.into()), "{value:?}");
        let Plan::Settled(Outcome::Refused { reason, message }) = plan(want, ClusterMode::Ha, 3)
        else {
            panic!("{value:?} must be refused");
        };
        assert_eq!(reason, PurgeReason::InvalidPurgeTime);
        assert!(message.contains(PURGE_ANNOTATION), "{message}");
        assert!(message.contains("2026-12-01T00:00:00Z"), "{message}");
    }
}

#[test]
fn no_ready_member_fails_without_a_call_and_other_modes_are_refused() {
    let want = || Wanted::Purge {
        value: "2026-12-01T00:00:00Z".into(),
        at: at("2026-12-01T00:00:00Z"),
    };
    let Plan::Settled(Outcome::Failed(message)) = plan(want(), ClusterMode::Ha, 0) else {
        panic!("no ready member must fail");
    };
    assert!(message.contains("no member is ready"), "{message}");
    for mode in [ClusterMode::Single, ClusterMode::Disabled] {
        assert!(matches!(
            plan(want(), mode, 3),
            Plan::Settled(Outcome::Refused {
                reason: PurgeReason::PurgeUnsupported,
                ..
            })
        ));
    }
}

#[tokio::test]
async fn the_first_member_that_confirms_is_the_only_one_asked_after_it() {
    let admin = FakeAdmin::answering(&[("web-1.web-peers.cache.svc:9787", Ok(7))]);
    let outcome = call(
        "2026-12-01T00:00:00Z",
        at("2026-12-01T00:00:00Z"),
        &members(3),
        "tok",
        &admin,
    )
    .await;
    let Outcome::Purged(last) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        (last.before.as_str(), last.removed, last.member.as_str()),
        ("2026-12-01T00:00:00Z", 7, "web-1")
    );
    assert!(last.time.parse::<Timestamp>().is_ok(), "{}", last.time);
    let calls = admin.calls();
    assert_eq!(
        calls.len(),
        2,
        "web-0 failed, web-1 confirmed, web-2 not asked"
    );
    assert_eq!(
        calls[1],
        (
            "web-1.web-peers.cache.svc:9787".into(),
            "tok".into(),
            "2026-12-01T00:00:00Z".into()
        )
    );
}

#[tokio::test]
async fn when_no_member_confirms_every_error_is_reported() {
    let refused = PurgeError::Refused {
        status: 502,
        message: "member web-2 did not answer; retry the purge".into(),
    };
    let admin = FakeAdmin::answering(&[("web-1.web-peers.cache.svc:9787", Err(refused))]);
    let outcome = call(
        "2026-12-01T00:00:00Z",
        at("2026-12-01T00:00:00Z"),
        &members(2),
        "tok",
        &admin,
    )
    .await;
    let Outcome::Failed(message) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        message.contains("web-0: unreachable: connection refused"),
        "{message}"
    );
    assert!(
        message.contains("web-1: answered 502: member web-2"),
        "{message}"
    );
}

fn observation(previous: &RelayCacheStatus) -> Observation<'_> {
    Observation {
        previous,
        generation: Some(1),
        now: at("2026-12-02T00:00:00Z"),
    }
}

fn purged_condition(status: &RelayCacheStatus) -> Option<(String, String)> {
    status::find(status, PURGED).map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn a_purge_is_recorded_in_last_purge_a_condition_and_a_normal_event() {
    let previous = RelayCacheStatus::default();
    let mut next = RelayCacheStatus::default();
    let last = LastPurge {
        before: "2026-12-01T00:00:00Z".into(),
        time: "2026-12-02T00:00:00Z".into(),
        removed: 4,
        member: "web-0".into(),
    };
    let event = record(
        &observation(&previous),
        &mut next,
        &Outcome::Purged(last.clone()),
    )
    .expect("an event");
    assert_eq!(next.last_purge, Some(last));
    assert_eq!(
        purged_condition(&next),
        Some(("True".into(), "Purged".into()))
    );
    assert_eq!(
        (event.type_, event.reason.as_str()),
        (EventType::Normal, "Purged")
    );
    assert_eq!(
        event.note.as_deref(),
        Some("removed 4 entries created before 2026-12-01T00:00:00Z (asked member web-0)")
    );
}

#[test]
fn a_refusal_is_an_event_once_and_a_failure_every_time() {
    let refused = Outcome::Refused {
        reason: PurgeReason::InvalidPurgeTime,
        message: "bad".into(),
    };
    let mut first = RelayCacheStatus::default();
    let event = record(
        &observation(&RelayCacheStatus::default()),
        &mut first,
        &refused,
    );
    assert_eq!(event.map(|e| e.type_), Some(EventType::Warning));
    assert_eq!(
        purged_condition(&first),
        Some(("False".into(), "InvalidPurgeTime".into()))
    );
    let mut again = first.clone();
    assert!(record(&observation(&first), &mut again, &refused).is_none());
    assert_eq!(again.conditions, first.conditions);

    let failed = Outcome::Failed("unreachable".into());
    let mut next = first.clone();
    let event = record(&observation(&first), &mut next, &failed).expect("an event");
    assert_eq!(event.reason, "PurgeFailed");
    let mut retried = next.clone();
    assert!(record(&observation(&next), &mut retried, &failed).is_some());

    // The annotation removed: the complaint goes, a success would stay.
    let mut cleared = retried.clone();
    assert!(record(&observation(&retried), &mut cleared, &Outcome::Cleared).is_none());
    assert_eq!(purged_condition(&cleared), None);
}

#[test]
fn retries_back_off_to_five_minutes_and_reset() {
    let retries = Retries::default();
    let waits: Vec<u64> = (0..7)
        .map(|_| retries.failed("cache/web").as_secs())
        .collect();
    assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
    retries.reset("cache/web");
    assert_eq!(retries.failed("cache/web").as_secs(), 10);
    assert_eq!(backoff(u32::MAX), RETRY_MAX);
}
