//! The cluster settings (`cache.ha`): whether this process is a member or a
//! client, whom it talks to, how many copies and answers it needs, and how
//! callers prove who they are.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Failure-detection timings of an HA cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Same host.
    Local,
    /// One data centre.
    Lan,
    /// Across regions.
    Wan,
}

/// Cluster settings (mode `ha`), with the names cc-relay's olric settings use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// Run a cluster member (true) or a client of one (false).
    pub embedded: bool,
    /// gRPC address for peers and clients.
    pub bind_addr: String,
    /// The `host:port` other members reach this one at. Empty: this host's
    /// name and the port of `bind_addr`. A member also recognises itself in
    /// `peers` by asking, so listing every member everywhere is fine.
    pub advertise_addr: String,
    /// Cluster members, `host:port`; names are re-resolved as they change.
    pub peers: Vec<String>,
    /// Members used by a client (`embedded: false`).
    pub addresses: Vec<String>,
    /// Copies of each entry.
    pub replica_count: u32,
    /// Answers needed for a read.
    pub read_quorum: u32,
    /// Acknowledgements needed for a write.
    pub write_quorum: u32,
    /// Live members needed to use the cluster at all.
    pub member_count_quorum: u32,
    /// Failure-detection timings.
    pub environment: Environment,
    /// Time to hand entries off on leave.
    #[serde(with = "humantime_serde")]
    pub leave_timeout: Duration,
    /// Entries per second that repair may copy to bring keys back to
    /// `replica_count` after members join or restart.
    pub repair_rate: u32,
    /// How long a member that starts empty may pull the entries it owns
    /// from the other members and the reserve (at most `repair_rate` a
    /// second) before `/readyz` says ready anyway. `0s` turns the warm
    /// start off: the member is ready at once and waits for repair.
    #[serde(with = "humantime_serde")]
    pub warmup_timeout: Duration,
    /// How far ahead of this member's wall clock another's clock, an
    /// entry's version or its creation time may be. Further is refused:
    /// a clock far in the future would make every later write lose.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// The members' secret: a member presents it to other members, and
    /// only a caller presenting it may write, delete, clear, repair or
    /// hand off. Clients must not hold it. Prefer an environment variable:
    /// `${RELAYCACHE_PEER_TOKEN}`.
    pub token: String,
    /// The clients' secret. A member lets a caller presenting it read and
    /// offer the answers to its own requests; a client presents it.
    /// Prefer `${RELAYCACHE_CLIENT_TOKEN}`.
    pub client_token: String,
    /// Runs a cluster without tokens or mutual TLS, open to anyone who
    /// reaches `bind_addr`: for a demo on one machine only.
    pub insecure: bool,
    /// Mutual TLS between members and clients.
    pub tls: PeerTlsConfig,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            bind_addr: "0.0.0.0:3320".into(),
            advertise_addr: String::new(),
            peers: Vec::new(),
            addresses: Vec::new(),
            replica_count: 2,
            read_quorum: 1,
            write_quorum: 1,
            member_count_quorum: 1,
            environment: Environment::Lan,
            leave_timeout: Duration::from_secs(5),
            repair_rate: 200,
            warmup_timeout: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(2),
            token: String::new(),
            client_token: String::new(),
            insecure: false,
            tls: PeerTlsConfig::default(),
        }
    }
}

/// Mutual TLS on the gRPC port: all three files set turns it on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// This member's certificate chain (PEM).
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The CA that signed every member's and client's certificate (PEM).
    pub ca_file: String,
}

impl PeerTlsConfig {
    /// Whether mutual TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() || !self.key_file.is_empty() || !self.ca_file.is_empty()
    }
}
