//! The members a process knows and their state, as `GET /members` shows
//! them (and `relaycache top` reads them). Members are named by their
//! cluster (gRPC) address: that is what they advertise to each other;
//! their admin addresses are not exchanged.

use serde::{Deserialize, Serialize};

/// This process's part in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// No cluster: mode `single` (or `disabled`).
    Single,
    /// A member of a cluster (mode `ha`, `embedded: true`).
    Member,
    /// A client of a cluster (an injected sidecar).
    Client,
}

impl Role {
    /// The name `/members` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Member => "member",
            Role::Client => "client",
        }
    }
}

/// What this process's probes say of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answered its last probe.
    Alive,
    /// Still live, but missed its last probe(s): down after
    /// `failures_to_down` misses in a row.
    Suspect,
    /// Live and announced that it is leaving: keys are no longer placed
    /// on it.
    Leaving,
    /// Missed `failures_to_down` probes in a row, or never answered.
    Down,
}

impl MemberState {
    /// The state of a member whose probes found it `live` (or not),
    /// announcing `leaving`, after `failures` missed probes in a row.
    pub fn of(live: bool, leaving: bool, failures: u32) -> Self {
        match (live, leaving, failures) {
            (false, _, _) => MemberState::Down,
            (true, true, _) => MemberState::Leaving,
            (true, false, 0) => MemberState::Alive,
            (true, false, _) => MemberState::Suspect,
        }
    }

    /// The name `/members` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Leaving => "leaving",
            MemberState::Down => "down",
        }
    }
}

/// One member as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id (advertised cluster address), or the address probed when it
    /// never answered.
    pub id: String,
    /// Its state.
    pub state: MemberState,
    /// Whether it is the process that answered `/members`.
    #[serde(default)]
    pub this_process: bool,
    /// Milliseconds since it last answered a probe; `None` for this
    /// process and for a member that never answered.
    #[serde(default)]
    pub last_answer_ms: Option<u64>,
}

/// The body of `GET /members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// This process's part.
    pub role: Role,
    /// Live members (alive, suspect) placement uses, this one included.
    #[serde(default)]
    pub live: u64,
    /// Whether `live` reaches `member_count_quorum`.
    #[serde(default)]
    pub quorum: bool,
    /// Every member known, sorted by id (empty outside mode `ha`).
    #[serde(default)]
    pub members: Vec<MemberStatus>,
}

impl Roster {
    /// The roster of a process without a cluster.
    pub fn single() -> Self {
        Self {
            role: Role::Single,
            live: 0,
            quorum: false,
            members: Vec::new(),
        }
    }
}

/// One status per id, sorted by id, from (reached at its own address,
/// status) pairs: this process first, then a live one before a down one,
/// then the direct address before a Service name.
pub(crate) fn one_per_id(mut statuses: Vec<(bool, MemberStatus)>) -> Vec<MemberStatus> {
    statuses.sort_by_key(|(direct, s)| {
        (
            s.id.clone(),
            !s.this_process,
            s.state == MemberState::Down,
            !direct,
        )
    });
    statuses.dedup_by(|later, first| later.1.id == first.1.id);
    statuses.into_iter().map(|(_, status)| status).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_state_follows_its_probes() {
        assert_eq!(MemberState::of(true, false, 0), MemberState::Alive);
        assert_eq!(MemberState::of(true, false, 2), MemberState::Suspect);
        assert_eq!(MemberState::of(true, true, 1), MemberState::Leaving);
        assert_eq!(MemberState::of(false, false, 3), MemberState::Down);
        assert_eq!(MemberState::of(false, true, 0), MemberState::Down);
    }

    #[test]
    fn a_member_reached_twice_is_listed_once_by_its_best_line() {
        let status = |id: &str, state, last_answer_ms| MemberStatus {
            id: id.into(),
            state,
            this_process: false,
            last_answer_ms,
        };
        let listed = one_per_id(vec![
            (false, status("b:3320", MemberState::Down, Some(9000))),
            (true, status("b:3320", MemberState::Alive, Some(100))),
            // Through a Service name, alive: the direct line wins anyway.
            (false, status("c:3320", MemberState::Alive, Some(50))),
            (true, status("c:3320", MemberState::Alive, Some(150))),
            (true, status("a:3320", MemberState::Suspect, Some(400))),
        ]);
        assert_eq!(
            listed,
            vec![
                status("a:3320", MemberState::Suspect, Some(400)),
                status("b:3320", MemberState::Alive, Some(100)),
                status("c:3320", MemberState::Alive, Some(150)),
            ]
        );
        let json = serde_json::to_value(&listed[0]).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"id": "a:3320", "state": "suspect",
                "this_process": false, "last_answer_ms": 400})
        );
    }
}
