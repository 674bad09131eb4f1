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
