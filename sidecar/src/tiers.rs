//! The tiers together: memory (L1), the cluster (L2, mode `ha`) and the
//! reserve (L3), and the rules between them. The request path, the
//! recorder and the admin endpoints go through [`Tiers`] only, so the rules
//! live here once:
//!
//! - a lookup below memory asks the cluster, then the reserve; a hit there
//!   is promoted into memory, and a reserve hit into the cluster too;
//! - an answer from the upstream is stored in memory and goes to the
//!   cluster, whose primary owner writes the reserve copy; without a
//!   cluster it goes to the reserve directly;
//! - a purge goes through every tier, nearest first.

use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::flight::Claimed;
use crate::cluster::replication::{OwnerRead, ReserveCopy};
use crate::cluster::{Cluster, PeerTier};
use crate::coalesce::UpstreamFailure;
use crate::compression::{BodyEncoding, Compression};
use crate::entry::filter::EntryFilter;
use crate::entry::{CachedResponse, Received};
use crate::headers::TierKind;
use crate::key::{CacheKey, KeyOrigin};
use crate::live::LiveAnswer;
use crate::tier::reserve::ReserveTier;
use crate::tier::{MemoryTier, Tier, TierError};

/// An entry [`Tiers::below_memory`] found, and where.
pub struct FoundBelow {
    /// The entry, now in memory too.
    pub entry: Arc<CachedResponse>,
    /// The tier that held it.
    pub tier: TierKind,
    /// Its body, when reading it back decoded it already (a reserve
    /// hit); the hit serves that copy to a client that does not accept
    /// zstd instead of decoding again.
    pub decoded: Option<Bytes>,
}

/// Every tier this process uses, nearest first.
#[derive(Clone)]
pub struct Tiers {
    memory: MemoryTier,
    peers: Option<PeerTier>,
    reserve: Option<ReserveTier>,
    compression: Option<Compression>,
}

impl Tiers {
    /// The tiers of one process; `peers` in mode `ha`, `reserve` when
    /// configured; new answers stored with `compression` (`None`: as
    /// received).
    pub fn new(
        memory: MemoryTier,
        peers: Option<PeerTier>,
        reserve: Option<ReserveTier>,
        compression: Option<Compression>,
    ) -> Self {
        Self {
            memory,
            peers,
            reserve,
            compression,
        }
    }

    /// A new answer (from the upstream, or an import) in the form every
    /// tier keeps it: compressed when `cache.compression` finds it worth
    /// it.
    pub fn compress(&self, entry: CachedResponse) -> CachedResponse {
        entry.compressed(self.compression.as_ref())
    }

    /// A reserve entry stored as received (written while compression was
    /// off, or by a release from before it) in the form a new answer takes,
    /// so that memory and the cluster keep it compressed from now on.
    fn kept_as_new(&self, entry: Arc<CachedResponse>) -> Arc<CachedResponse> {
        if self.compression.is_none() || entry.stored_body().0 != BodyEncoding::Identity {
            return entry;
        }
        Arc::new(self.compress(CachedResponse::clone(&entry)))
    }

    /// L1.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// L3, when configured.
    pub fn reserve(&self) -> Option<&ReserveTier> {
        self.reserve.as_ref()
    }

    /// The cluster behind L2, in mode `ha`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.peers.as_ref().map(PeerTier::cluster)
    }

    /// Whether this process is a cluster client, whose writes to the
    /// cluster carry the request they answer.
    pub fn is_cluster_client(&self) -> bool {
        self.peers.as_ref().is_some_and(PeerTier::is_client)
    }

    /// The fresh entry in memory, if any: the fast path.
    pub fn in_memory(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.memory.lookup(key)
    }

    /// The cluster, then the reserve. A hit is promoted into memory, and a
    /// reserve hit also into the cluster (with `origin`, the request, when
    /// this process is a cluster client). With [`OwnerRead::Led`] this
    /// process leads the key's flight at its primary owner (see
    /// [`Tiers::claim`]), which lacks the key: a hit is given to the
    /// cluster too, which lands the flight there and repairs the owner.
    pub async fn below_memory(
        &self,
        key: &CacheKey,
        origin: impl FnOnce() -> Option<KeyOrigin>,
        owner: OwnerRead,
    ) -> Option<FoundBelow> {
        if let Some(peers) = &self.peers {
            if let Some(Received { entry, decoded }) = peers.lookup(key, owner).await {
                let entry = Arc::new(entry);
                self.memory.insert(*key, Arc::clone(&entry));
                if matches!(owner, OwnerRead::Led(_)) {
                    peers.replicate(*key, Arc::clone(&entry), ReserveCopy::NotNeeded, origin());
                }
                return Some(FoundBelow {
                    entry,
                    tier: TierKind::Peer,
                    decoded,
                });
            }
        }
        let Received { entry, decoded } = self.reserve.as_ref()?.lookup_received(key).await?;
        let entry = self.kept_as_new(Arc::new(entry));
        self.memory.insert(*key, Arc::clone(&entry));
        if let Some(peers) = &self.peers {
            peers.replicate(*key, Arc::clone(&entry), ReserveCopy::NotNeeded, origin());
        }
        Some(FoundBelow {
            entry,
            tier: TierKind::Reserve,
            decoded,
        })
    }

    /// Whether this process shares its misses with a cluster: its flight
    /// leaders ask the key's owner with [`Tiers::claim`] first.
    pub fn has_cluster(&self) -> bool {
        self.peers.is_some()
    }

    /// Asks the key's primary owner about a miss this process's flight
    /// leader is about to fill (mode `ha`; alone otherwise), before any
    /// other tier below memory: the owner's reply carries its copy, and
    /// a lead says whether anyone else needs asking
    /// ([`Tiers::below_memory`] with [`OwnerRead::Led`]). An answer is
    /// kept in memory.
    pub async fn claim(&self, key: &CacheKey, origin: Option<&KeyOrigin>) -> Claimed {
        let Some(peers) = &self.peers else {
            return Claimed::Alone("no cluster");
        };
        let mut claimed = peers.cluster().claim(key, origin).await;
        if let Claimed::Answer { entry, decoded, .. } = &mut claimed {
            // A read quorum above one answer reads the other replicas too,
            // and the freshest copy wins.
            if let Some(other) = peers.lookup(key, OwnerRead::Answered).await {
                if other.entry.version > entry.version {
                    *entry = Arc::new(other.entry);
                    *decoded = other.decoded;
                }
            }
            self.memory.insert(*key, Arc::clone(entry));
        }
        claimed
    }

    /// Shares a streamed answer this process leads at a remote owner with
    /// that owner as it arrives (mode `ha`, with a lead taken through
    /// [`Tiers::claim`]).
    pub fn feed(&self, key: CacheKey, live: &Arc<LiveAnswer>) {
        if let Some(peers) = &self.peers {
            peers.cluster().feed(key, live);
        }
    }

    /// Gives back a lead taken with [`Tiers::claim`]: the upstream failed
    /// (`failure`), or the answer may not be stored.
    pub fn release(&self, key: CacheKey, failure: Option<Arc<UpstreamFailure>>) {
        if let Some(peers) = &self.peers {
            peers.cluster().release(key, failure);
        }
    }

    /// An entry that expired no longer ago than `window`, from memory, the
    /// cluster or the reserve, for when the upstream failed
    /// (stale-if-error). Not
    /// promoted: it answers one failure, it is not fresh.
    pub async fn stale(
        &self,
        key: &CacheKey,
        window: std::time::Duration,
    ) -> Option<(Arc<CachedResponse>, TierKind)> {
        if let Some(entry) = self.memory.lookup_stale(key, window) {
            return Some((entry, TierKind::Memory));
        }
        if let Some(peers) = &self.peers {
            if let Some(entry) = peers.lookup_stale(key, window).await {
                return Some((entry, TierKind::Peer));
            }
        }
        let entry = self.reserve.as_ref()?.lookup_stale(key, window).await?;
        Some((entry, TierKind::Reserve))
    }

    /// Stamps a new answer with the cluster's next version (mode `ha`).
    pub fn stamp(&self, entry: &mut CachedResponse) {
        if let Some(peers) = &self.peers {
            peers.stamp(entry);
        }
    }

    /// Stores an answer fresh from the upstream in every tier, in the
    /// background beyond memory. `origin`: the request it answers, which a
    /// cluster client must send with it.
    pub fn store_answer(
        &self,
        key: CacheKey,
        entry: &Arc<CachedResponse>,
        origin: Option<KeyOrigin>,
    ) {
        if let Some(peers) = self.store_here(key, entry) {
            peers.replicate(key, Arc::clone(entry), ReserveCopy::ByPrimaryOwner, origin);
        }
    }

    /// Stores an entry that is not an answer to a request in flight (an
    /// import): as [`Tiers::store_answer`], but the cluster write is done
    /// when this returns, so a caller storing many keeps the number of
    /// writes in flight to what it awaits at once.
    pub async fn store_and_replicate(&self, key: CacheKey, entry: Arc<CachedResponse>) {
        if let Some(peers) = self.store_here(key, &entry) {
            peers
                .cluster()
                .replicate(key, entry, ReserveCopy::ByPrimaryOwner, None)
                .await;
        }
    }

    /// Stores a new entry in memory and, without a cluster, in the reserve.
    /// The cluster, when there is one, is the caller's to write (it writes
    /// the reserve copy too).
    fn store_here(&self, key: CacheKey, entry: &Arc<CachedResponse>) -> Option<&PeerTier> {
        self.memory.insert(key, Arc::clone(entry));
        match (&self.peers, &self.reserve) {
            (Some(peers), _) => Some(peers),
            (None, Some(reserve)) => {
                reserve.admit(key, entry);
                None
            }
            (None, None) => None,
        }
    }

    /// Every tier, nearest first.
    fn each(&self) -> Vec<&dyn Tier> {
        let mut tiers: Vec<&dyn Tier> = vec![&self.memory];
        if let Some(peers) = &self.peers {
            tiers.push(peers);
        }
        if let Some(reserve) = &self.reserve {
            tiers.push(reserve);
        }
        tiers
    }

    /// Removes every entry from every tier, nearest first; stops at the
    /// first tier that cannot.
    pub async fn purge_all(&self) -> Result<(), TierError> {
        for tier in self.each() {
            tier.clear().await?;
        }
        Ok(())
    }

    /// Removes the entries `filter` selects from every tier, nearest first;
    /// how many each removed. Stops at the first tier that cannot.
    pub async fn purge_matching(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<(TierKind, u64)>, TierError> {
        let mut removed = Vec::new();
        for tier in self.each() {
            removed.push((tier.kind(), tier.purge_matching(filter).await?));
        }
        Ok(removed)
    }

    /// Removes `key` from every tier; whether any held it.
    pub async fn purge(&self, key: &CacheKey) -> Result<bool, TierError> {
        let mut removed = false;
        for tier in self.each() {
            removed |= tier.delete(key).await?;
        }
        Ok(removed)
    }

    /// Flushes the tiers this process holds before exit.
    pub async fn close(&self) {
        if let Err(err) = self.memory.close().await {
            tracing::warn!(%err, "closing memory");
        }
        if let Some(reserve) = &self.reserve {
            if let Err(err) = reserve.close().await {
                tracing::warn!(%err, "closing the reserve; queued writes may be lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::config::{CompressionConfig, ReserveConfig};
    use crate::metrics::Metrics;

    /// Tiers of an empty memory over a reserve that holds `entry` under
    /// `key`, with compression at its default, and what they find below
    /// memory for `key`: a reserve hit.
    async fn read_back(key: CacheKey, entry: &Arc<CachedResponse>) -> (Tiers, FoundBelow) {
        let metrics = Arc::new(Metrics::new());
        let reserve = ReserveTier::open(
            &ReserveConfig {
                url: "memory://".into(),
                min_ttl: Duration::from_secs(1),
                ..ReserveConfig::default()
            },
            Arc::clone(&metrics),
        )
        .expect("a memory reserve");
        reserve.admit(key, entry);
        assert!(reserve.flush(Duration::from_secs(5)).await, "written");
        let memory = MemoryTier::new(1 << 20, Duration::ZERO, metrics.proxy.evictions.clone());
        let compression = Compression::from_config(&CompressionConfig::default());
        let tiers = Tiers::new(memory, None, Some(reserve), compression);
        let found = tiers
            .below_memory(&key, || None, OwnerRead::Asked)
            .await
            .expect("a reserve hit");
        assert_eq!(found.tier, TierKind::Reserve);
        (tiers, found)
    }

    /// An answer of some 4 KB of prose, as JSON, and its headers.
    fn prose_answer() -> (HeaderMap, String) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let text = "the same plain sentence, again and again. ".repeat(100);
        (
            headers,
            format!(r#"{{"content":[{{"type":"text","text":"{text}"}}]}}"#),
        )
    }

    /// A reserve entry written as received, as every entry was before
    /// compression and is while `codec: none`, is compressed when it is
    /// promoted: memory holds the frame, which decodes to the answer.
    #[tokio::test]
    async fn a_plain_reserve_entry_is_kept_compressed_once_read_back() {
        let (headers, answer) = prose_answer();
        let plain = Arc::new(CachedResponse::new(
            &headers,
            answer.as_bytes(),
            Duration::from_secs(600),
        ));
        assert_eq!(plain.stored_body().0, BodyEncoding::Identity);
        let key = CacheKey([7; 32]);
        let (tiers, found) = read_back(key, &plain).await;
        assert_eq!(
            found.decoded, None,
            "read back as received: nothing decoded"
        );
        let held = tiers.in_memory(&key).expect("promoted to memory");
        for entry in [&found.entry, &held] {
            assert_eq!(entry.stored_body().0, BodyEncoding::Zstd);
            assert!(entry.stored_body().1.len() * 4 < answer.len());
            assert_eq!(entry.body(), answer.as_bytes());
        }
    }

    /// Reading a compressed entry back decodes its frame to check it; the
    /// hit gets that body, so a client without zstd costs no second
    /// decode.
    #[tokio::test]
    async fn a_compressed_reserve_hit_comes_with_the_body_it_decoded() {
        let (headers, answer) = prose_answer();
        let compression = Compression::from_config(&CompressionConfig::default());
        let stored = Arc::new(
            CachedResponse::new(&headers, answer.as_bytes(), Duration::from_secs(600))
                .compressed(compression.as_ref()),
        );
        assert_eq!(stored.stored_body().0, BodyEncoding::Zstd);
        let key = CacheKey([8; 32]);
        let (_tiers, found) = read_back(key, &stored).await;
        assert_eq!(
            found.entry.stored_body(),
            stored.stored_body(),
            "kept as stored"
        );
        assert_eq!(found.decoded.as_deref(), Some(answer.as_bytes()));
    }
}
