//! The status of a RelayCache: what the StatefulSet reports, summed up in
//! the `Ready`, `Progressing` and `Degraded` conditions.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::RelayCacheStatus;

/// Condition type: every member runs the current configuration and is ready.
pub const READY: &str = "Ready";
/// Condition type: members are being created, removed or rolled.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the operator cannot make the cluster match the spec.
pub const DEGRADED: &str = "Degraded";
/// `Degraded` reason: an object the RelayCache does not own has a child's name.
pub const NAME_CONFLICT: &str = "NameConflict";
/// Condition type: what came of the annotation `relaycache.io/purge-before`
/// (set only once it was acted on, and kept until the next purge).
pub const PURGED: &str = "Purged";

/// The inputs of one status computation.
pub struct Observation<'a> {
    /// The status before this reconcile.
    pub previous: &'a RelayCacheStatus,
    /// `metadata.generation` of the RelayCache.
    pub generation: Option<i64>,
    /// When the conditions that change now changed.
    pub now: Timestamp,
}

impl Observation<'_> {
    /// A condition whose `lastTransitionTime` moves only when its status does.
    fn condition(&self, type_: &str, status: bool, reason: &str, message: String) -> Condition {
        let status = if status { "True" } else { "False" };
        let since = self
            .previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: self.generation,
        }
    }

    /// The spec cannot be turned into a cluster: `Degraded` with the reasons;
    /// the member counts stay as last seen, since no child was touched.
    pub fn invalid_spec(&self, message: &str) -> RelayCacheStatus {
        self.failed(
            "InvalidSpec",
            format!("invalid spec, nothing changed: {message}"),
        )
    }

    /// The proxy configuration could not be written (a bug of the operator,
    /// not of the spec): `Degraded`, nothing changed.
    pub fn render_failed(&self, message: &str) -> RelayCacheStatus {
        self.failed("RenderFailed", format!("nothing changed: {message}"))
    }

    /// Applying a child failed (a conflict, a quota, an admission webhook…).
    pub fn apply_failed(&self, message: &str) -> RelayCacheStatus {
        self.failed("ApplyFailed", message.to_string())
    }

    /// Objects the RelayCache does not own hold its children's names: it
    /// takes none of them over, and changes nothing.
    pub fn name_conflict(&self, message: &str) -> RelayCacheStatus {
        self.failed_waiting(
            NAME_CONFLICT,
            message.to_string(),
            "waiting for the names to be free",
        )
    }

    fn failed(&self, reason: &str, message: String) -> RelayCacheStatus {
        self.failed_waiting(reason, message, "waiting for a valid spec")
    }

    fn failed_waiting(&self, reason: &str, message: String, waiting: &str) -> RelayCacheStatus {
        let previous = self.previous;
        let ready = previous
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .is_some_and(|c| c.status == "True");
        RelayCacheStatus {
            observed_generation: self.generation,
            conditions: vec![
                self.condition(
                    READY,
                    ready,
                    if ready {
                        "AllMembersReady"
                    } else {
                        "MembersNotReady"
                    },
                    format!(
                        "{}/{} members ready (as last observed)",
                        previous.ready_replicas, previous.replicas
                    ),
                ),
                self.condition(PROGRESSING, false, reason, waiting.into()),
                self.condition(DEGRADED, true, reason, message),
            ]
            .into_iter()
            .chain(self.purge_condition())
            .collect(),
            ..previous.clone()
        }
    }

    /// The `Purged` condition as it was: a purge's outcome stays until the
    /// next purge changes it.
    fn purge_condition(&self) -> Option<Condition> {
        find(self.previous, PURGED).cloned()
    }

    /// The `Purged` condition after a purge was acted on: `done` when it was
    /// confirmed, else `reason` says why not.
    pub fn purge_outcome(&self, done: bool, reason: &str, message: String) -> Condition {
        self.condition(PURGED, done, reason, message)
    }

    /// The children were applied; the StatefulSet (as the apiserver returned
    /// it) says how far the members got.
    pub fn applied(
        &self,
        desired: i32,
        selector: String,
        config_hash: String,
        sts: &StatefulSet,
    ) -> RelayCacheStatus {
        let s = sts.status.clone().unwrap_or_default();
        let ready = s.ready_replicas.unwrap_or(0);
        let updated = s.updated_replicas.unwrap_or(0);
        let ready_condition = self.members_ready(desired, ready);
        let progressing = if s.replicas != desired {
            self.condition(
                PROGRESSING,
                true,
                "Scaling",
                format!("{} members, {desired} wanted", s.replicas),
            )
        } else if !rolled_out(sts, desired) {
            self.condition(
                PROGRESSING,
                true,
                "RollingUpdate",
                format!("{updated}/{desired} members run the current configuration"),
            )
        } else {
            self.condition(
                PROGRESSING,
                false,
                "Reconciled",
                "every member runs the current configuration".into(),
            )
        };
        RelayCacheStatus {
            observed_generation: self.generation,
            replicas: s.replicas,
            ready_replicas: ready,
            selector: Some(selector),
            config_hash: Some(config_hash),
            conditions: [
                ready_condition,
                progressing,
                self.condition(DEGRADED, false, "Reconciled", "spec applied".into()),
            ]
            .into_iter()
            .chain(self.purge_condition())
            .collect(),
            last_purge: self.previous.last_purge.clone(),
        }
    }
}

impl Observation<'_> {
    /// Ready: serving at full strength, whatever configuration the members
    /// run (Progressing says whether a roll or a scale is under way).
    fn members_ready(&self, desired: i32, ready: i32) -> Condition {
        if desired == 0 {
            return self.condition(READY, true, "ScaledToZero", "no members requested".into());
        }
        self.condition(
            READY,
            ready >= desired,
            if ready >= desired {
                "AllMembersReady"
            } else {
                "MembersNotReady"
            },
            format!("{ready}/{desired} members ready"),
        )
    }
}

/// Whether the StatefulSet controller has seen the latest template and
/// finished rolling it out to `desired` members.
fn rolled_out(sts: &StatefulSet, desired: i32) -> bool {
    let s = sts.status.clone().unwrap_or_default();
    let updated = s.updated_replicas.unwrap_or(0);
    let observed =
        s.observed_generation.is_some() && s.observed_generation >= sts.metadata.generation;
    observed
        && updated >= desired
        && match (&s.current_revision, &s.update_revision) {
            (Some(current), Some(update)) => current == update,
            _ => desired == 0,
        }
}

impl Observation<'_> {
    /// The StatefulSet (and with it the configuration) was held back because
    /// the spec asks for a change the apiserver refuses (`reason`, and what
    /// to do in `message`); the other children were applied. The counts come
    /// from the StatefulSet as it stands, and the configuration hash stays
    /// the one the members run.
    pub fn held_back(
        &self,
        selector: String,
        sts: &StatefulSet,
        reason: &str,
        message: String,
    ) -> RelayCacheStatus {
        let running = sts.spec.replicas.unwrap_or(1);
        let mut status = self.applied(running, selector, String::new(), sts);
        status.config_hash = self.previous.config_hash.clone();
        for condition in &mut status.conditions {
            if condition.type_ == DEGRADED {
                *condition = self.condition(DEGRADED, true, reason, message.clone());
            }
        }
        status
    }
}

/// Whether a condition is `True` in a status.
pub fn is_true(status: &RelayCacheStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The condition of a type, if set.
pub fn find<'a>(status: &'a RelayCacheStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn sts(generation: i64, status: StatefulSetStatus) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: StatefulSetSpec::default(),
            status: Some(status),
        }
    }

    fn settled(replicas: i32, ready: i32) -> StatefulSetStatus {
        StatefulSetStatus {
            observed_generation: Some(2),
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(replicas),
            current_revision: Some("r2".into()),
            update_revision: Some("r2".into()),
            ..StatefulSetStatus::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn observe(
        previous: &RelayCacheStatus,
        now: Timestamp,
        sts: &StatefulSet,
        desired: i32,
    ) -> RelayCacheStatus {
        Observation {
            previous,
            generation: Some(7),
            now,
        }
        .applied(desired, "a=b".into(), "hash".into(), sts)
    }

    fn summary(status: &RelayCacheStatus) -> Vec<(String, String, String)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn triple(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    #[test]
    fn all_members_ready_and_rolled_is_ready() {
        let status = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(2, settled(3, 3)),
            3,
        );
        assert_eq!(
            summary(&status),
            [
                triple("Ready", "True", "AllMembersReady"),
                triple("Progressing", "False", "Reconciled"),
                triple("Degraded", "False", "Reconciled")
            ]
        );
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(status.observed_generation, Some(7));
        assert_eq!(status.selector.as_deref(), Some("a=b"));
        assert_eq!(status.config_hash.as_deref(), Some("hash"));
        assert!(status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(7)));
    }

    #[test]
    fn a_new_template_not_yet_seen_or_rolled_is_progressing() {
        // The StatefulSet controller has not seen generation 3 yet; the
        // members still serve, so the cache is ready meanwhile.
        let unseen = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(3, settled(3, 3)),
            3,
        );
        assert_eq!(
            summary(&unseen)[1],
            triple("Progressing", "True", "RollingUpdate")
        );
        assert_eq!(
            summary(&unseen)[0],
            triple("Ready", "True", "AllMembersReady")
        );

        let rolling = StatefulSetStatus {
            updated_replicas: Some(1),
            update_revision: Some("r3".into()),
            ..settled(3, 3)
        };
        let status = observe(&RelayCacheStatus::default(), at(0), &sts(2, rolling), 3);
        assert_eq!(
            summary(&status)[1],
            triple("Progressing", "True", "RollingUpdate")
        );
        assert_eq!(
            status.conditions[1].message,
            "1/3 members run the current configuration"
        );
    }

    #[test]
    fn scaling_is_progressing_until_the_counts_match() {
        let status = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(2, settled(3, 3)),
            5,
        );
        assert_eq!(
            summary(&status)[1],
            triple("Progressing", "True", "Scaling")
        );
        assert_eq!(status.conditions[1].message, "3 members, 5 wanted");
        assert_eq!(status.conditions[0].message, "3/5 members ready");
    }

    #[test]
    fn zero_replicas_is_ready() {
        let none = StatefulSetStatus {
            observed_generation: Some(2),
            ..StatefulSetStatus::default()
        };
        let status = observe(&RelayCacheStatus::default(), at(0), &sts(2, none), 0);
        assert_eq!(summary(&status)[0], triple("Ready", "True", "ScaledToZero"));
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(2, settled(3, 1)),
            3,
        );
        let second = observe(&first, at(60), &sts(2, settled(3, 2)), 3);
        let ready = find(&second, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.last_transition_time,
            Time(at(0)),
            "still not ready: unchanged"
        );
        let third = observe(&second, at(120), &sts(2, settled(3, 3)), 3);
        assert_eq!(
            find(&third, READY).unwrap().last_transition_time,
            Time(at(120))
        );
    }

    #[test]
    fn held_back_is_degraded_with_the_counts_and_hash_of_what_runs() {
        let good = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(2, settled(3, 3)),
            3,
        );
        let mut running = sts(2, settled(3, 3));
        running.spec.replicas = Some(3);
        let held = Observation {
            previous: &good,
            generation: Some(8),
            now: at(10),
        }
        .held_back(
            "a=b".into(),
            &running,
            "VolumeClaimTemplatesChanged",
            "revert it".into(),
        );
        assert_eq!(
            summary(&held),
            [
                triple("Ready", "True", "AllMembersReady"),
                triple("Progressing", "False", "Reconciled"),
                triple("Degraded", "True", "VolumeClaimTemplatesChanged")
            ]
        );
        assert_eq!(find(&held, DEGRADED).unwrap().message, "revert it");
        assert_eq!(
            find(&held, DEGRADED).unwrap().last_transition_time,
            Time(at(10))
        );
        assert_eq!(
            held.config_hash.as_deref(),
            Some("hash"),
            "the hash members run"
        );
        assert_eq!((held.replicas, held.ready_replicas), (3, 3));
        assert_eq!(held.observed_generation, Some(8));
    }

    #[test]
    fn a_render_failure_is_degraded_with_its_own_reason() {
        let failed = Observation {
            previous: &RelayCacheStatus::default(),
            generation: Some(1),
            now: at(0),
        }
        .render_failed("cannot write");
        assert_eq!(
            summary(&failed)[2],
            triple("Degraded", "True", "RenderFailed")
        );
        assert!(find(&failed, DEGRADED)
            .unwrap()
            .message
            .contains("cannot write"));
    }

    #[test]
    fn invalid_spec_is_degraded_and_keeps_the_last_counts() {
        let good = observe(
            &RelayCacheStatus::default(),
            at(0),
            &sts(2, settled(3, 3)),
            3,
        );
        let bad = Observation {
            previous: &good,
            generation: Some(8),
            now: at(10),
        }
        .invalid_spec("spec.cache.ttl: \"x\" is not a duration");
        assert_eq!(
            summary(&bad),
            [
                triple("Ready", "True", "AllMembersReady"),
                triple("Progressing", "False", "InvalidSpec"),
                triple("Degraded", "True", "InvalidSpec")
            ]
        );
        let degraded = find(&bad, DEGRADED).unwrap();
        assert!(
            degraded.message.contains("spec.cache.ttl"),
            "{}",
            degraded.message
        );
        assert_eq!(degraded.last_transition_time, Time(at(10)));
        assert_eq!((bad.replicas, bad.ready_replicas), (3, 3));
        assert_eq!(bad.observed_generation, Some(8));
        assert_eq!(bad.config_hash.as_deref(), Some("hash"));
        assert!(is_true(&bad, DEGRADED) && !is_true(&good, DEGRADED));
    }
}
