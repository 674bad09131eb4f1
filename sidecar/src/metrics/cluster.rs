//! Metrics of the cluster tier (mode `ha`): members, quorum, calls,
//! replication, repair, refusals and cluster-wide flights.

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;

use super::{closed_label, metric_set, ClosedLabels, CounterBy, IntGauge};

/// Why the cluster port refused a call, an entry or a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterRefusal {
    /// A missing or wrong token.
    Token,
    /// A remote clock further ahead than `cache.ha.max_clock_skew`.
    ClockSkew,
    /// An entry whose version or `created` lies beyond the skew.
    EntryFromTheFuture,
    /// An entry larger than `cache.max_entry_bytes`.
    EntryTooLarge,
    /// A member named by an address `cache.ha.peers` does not list.
    NotAPeer,
    /// A member-only call (writes without an origin, deletes, clears,
    /// repair, handoff) from a caller holding only the clients' token.
    MemberOnly,
    /// A client's entry whose key is not the key of the request it came with.
    ForgedKey,
}

impl ClusterRefusal {
    /// Every reason, in declaration order.
    pub const ALL: [ClusterRefusal; 7] = [
        ClusterRefusal::Token,
        ClusterRefusal::ClockSkew,
        ClusterRefusal::EntryFromTheFuture,
        ClusterRefusal::EntryTooLarge,
        ClusterRefusal::NotAPeer,
        ClusterRefusal::MemberOnly,
        ClusterRefusal::ForgedKey,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRefusal::Token => "token",
            ClusterRefusal::ClockSkew => "clock_skew",
            ClusterRefusal::EntryFromTheFuture => "entry_from_the_future",
            ClusterRefusal::EntryTooLarge => "entry_too_large",
            ClusterRefusal::NotAPeer => "not_a_peer",
            ClusterRefusal::MemberOnly => "member_only",
            ClusterRefusal::ForgedKey => "forged_key",
        }
    }
}

/// What the key's primary owner said to a miss this process asked it
/// about (cluster-wide coalescing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlightOutcome {
    /// The owner had the answer, or the flight waited on landed one.
    Answer,
    /// This process led the flight.
    Lead,
    /// The flight's leader failed; its failure was the answer.
    Failed,
    /// The flight's answer was a stream in progress, followed live.
    Live,
    /// No flight to join (below quorum, owner unreachable, wait ran out):
    /// this process called the upstream alone.
    Alone,
}

impl FlightOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [FlightOutcome; 5] = [
        FlightOutcome::Answer,
        FlightOutcome::Lead,
        FlightOutcome::Failed,
        FlightOutcome::Live,
        FlightOutcome::Alone,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FlightOutcome::Answer => "answer",
            FlightOutcome::Lead => "lead",
            FlightOutcome::Failed => "failed",
            FlightOutcome::Live => "live",
            FlightOutcome::Alone => "alone",
        }
    }
}

closed_label!(ClusterRefusal, "reason");
closed_label!(FlightOutcome, "outcome");

/// A call this process makes to another cluster member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerCall {
    /// Read replicas of a key.
    Get,
    /// Write one entry to a replica.
    Set,
    /// Write the entries queued for a replica (see `cluster::writes`).
    SetBatch,
    /// Write a batch of entries (handoff, repair).
    SetMany,
    /// List versions (repair).
    Versions,
    /// Delete a key on its replicas.
    Delete,
    /// Clear a member.
    Clear,
    /// Check that a member is alive.
    Ping,
    /// Claim a key's flight from its owner.
    Claim,
    /// Feed a live stream to the owner.
    Feed,
    /// Release a flight's lead.
    Release,
    /// Remove the entries a scoped purge selects.
    Purge,
    /// Stream the entries a member holds (warm start, export).
    Scan,
}

impl PeerCall {
    /// Every call, in declaration order.
    pub const ALL: [PeerCall; 13] = [
        PeerCall::Get,
        PeerCall::Set,
        PeerCall::SetBatch,
        PeerCall::SetMany,
        PeerCall::Versions,
        PeerCall::Delete,
        PeerCall::Clear,
        PeerCall::Ping,
        PeerCall::Claim,
        PeerCall::Feed,
        PeerCall::Release,
        PeerCall::Purge,
        PeerCall::Scan,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerCall::Get => "get",
            PeerCall::Set => "set",
            PeerCall::SetBatch => "set_batch",
            PeerCall::SetMany => "set_many",
            PeerCall::Versions => "versions",
            PeerCall::Delete => "delete",
            PeerCall::Clear => "clear",
            PeerCall::Purge => "purge",
            PeerCall::Scan => "scan",
            PeerCall::Ping => "ping",
            PeerCall::Claim => "claim",
            PeerCall::Feed => "feed",
            PeerCall::Release => "release",
        }
    }
}

/// Label of cluster calls: the call, and whether it succeeded.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct PeerCallLabels {
    /// The call.
    pub op: PeerCall,
    /// Whether it succeeded (`outcome="ok"`, else `"error"`).
    pub ok: bool,
}

impl EncodeLabelSet for PeerCallLabels {
    fn encode(&self, encoder: LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let outcome = if self.ok { "ok" } else { "error" };
        [("op", self.op.as_str()), ("outcome", outcome)].encode(encoder)
    }
}

impl ClosedLabels for PeerCallLabels {
    fn all() -> Vec<Self> {
        PeerCall::ALL
            .iter()
            .flat_map(|&op| [false, true].map(|ok| PeerCallLabels { op, ok }))
            .collect()
    }

    fn index(&self) -> usize {
        self.op as usize * 2 + usize::from(self.ok)
    }
}

metric_set! {
    /// Metrics of the cluster tier (mode `ha`).
    pub struct ClusterMetrics => ClusterStats {
        /// 1 while the cluster runs open (cache.ha.insecure): anyone who
        /// reaches the gRPC port may write to it or wipe it
        insecure: IntGauge => "insecure" [bool],
        /// Live cluster members seen, this process included when a member
        members: IntGauge => "members" [u64],
        /// 1 while member_count_quorum members are live, else 0
        quorum: IntGauge => "quorum" [bool],
        /// Calls to other members, by call and outcome
        calls: CounterBy<PeerCallLabels> => "calls" [u64],
        /// Cluster writes finished (whether or not they met the quorum)
        writes: Counter => "writes" [u64],
        /// Cluster reads with fewer answers than read_quorum
        read_quorum_failures: Counter => "read_quorum_failures" [u64],
        /// Cluster writes with fewer acknowledgements than write_quorum
        write_quorum_failures: Counter => "write_quorum_failures" [u64],
        /// Replica writes that failed (each replica counted)
        replica_write_failures: Counter => "replica_write_failures" [u64],
        /// Cluster reads and writes skipped below member_count_quorum
        skipped_below_quorum: Counter => "skipped_below_quorum" [u64],
        /// Keys the last repair pass found short of replica_count, before
        /// copying them
        under_replicated_keys: IntGauge => "under_replicated_keys" [u64],
        /// Keys repair passes found short of replica_count, summed over
        /// passes: what the gauge cannot show once a later pass finds none
        under_replicated_found: Counter => "under_replicated_found" [u64],
        /// Entries copied by repair
        repaired: Counter => "repaired" [u64],
        /// Entries handed to new owners on leave
        handed_off: Counter => "handed_off" [u64],
        /// 1 while this member pulls the entries it owns before it is ready
        warming: IntGauge => "warming" [bool],
        /// 1 while this member knows it holds what the cluster holds of
        /// the keys it owns first (after a complete warm start, or a pull
        /// after it may have missed writes): its misses of those keys
        /// ask no other member
        holds_its_share: IntGauge => "holds_its_share" [bool],
        /// Entries a warm start pulled from other members
        warmed_from_members: Counter => "warmed_from_members" [u64],
        /// Entries a warm start pulled from the reserve
        warmed_from_reserve: Counter => "warmed_from_reserve" [u64],
        /// Cluster calls, entries, clocks and members refused, by reason
        /// (token, clock_skew, entry_from_the_future, entry_too_large,
        /// not_a_peer, member_only, forged_key)
        refused: CounterBy<ClusterRefusal> => "refused" [u64],
        /// Members that joined, left or failed
        membership_changes: Counter => "membership_changes" [u64],
        /// Misses asked of their key's primary owner, by outcome (answer,
        /// lead, failed, live, alone)
        flights: CounterBy<FlightOutcome> => "flights" [u64],
    }
}

impl ClusterMetrics {
    /// Counts one miss asked of its key's owner.
    pub fn count_flight(&self, outcome: FlightOutcome) {
        self.flights.inc(outcome);
    }

    /// Counts one refusal.
    pub fn count_refusal(&self, reason: ClusterRefusal) {
        self.refused.inc(reason);
    }

    /// Counts one call to another member.
    pub fn count_call(&self, op: PeerCall, ok: bool) {
        self.calls.inc(PeerCallLabels { op, ok });
    }
}
