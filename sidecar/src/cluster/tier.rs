//! L2: the cache cluster as a tier. Reads ask the key's replicas; writes go
//! to them in the background, so a response never waits for replication.

use std::sync::Arc;

use super::replication::{OwnerRead, ReserveCopy};
use super::Cluster;
use crate::entry::filter::EntryFilter;
use crate::entry::{CachedResponse, Received};
use crate::key::{CacheKey, KeyOrigin};
use crate::tier::{Tier, TierError, TierFuture, TierKind};

/// Why a client's purge stops at its own memory.
const CLIENTS_DO_NOT_PURGE: &str = "this process is a cluster client, and only members may purge the cluster; its own memory was purged, purge the cluster through a member's admin port";

/// The cluster tier of a member or client.
#[derive(Clone)]
pub struct PeerTier {
    cluster: Arc<Cluster>,
}

impl PeerTier {
    /// A tier over `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    /// The cluster behind the tier.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The freshest copy among the key's replicas (the primary owner left
    /// out when `owner` says a claim there follows), with the body decoded
    /// to check it.
    pub async fn lookup(&self, key: &CacheKey, owner: OwnerRead) -> Option<Received> {
        self.cluster.lookup(key, owner).await
    }

    /// A copy among the key's replicas that expired no longer ago than
    /// `window` (stale-if-error).
    pub async fn lookup_stale(
        &self,
        key: &CacheKey,
        window: std::time::Duration,
    ) -> Option<Arc<CachedResponse>> {
        self.cluster.lookup_stale(key, window).await
    }

    /// Stamps a new entry with the cluster's next version.
    pub fn stamp(&self, entry: &mut CachedResponse) {
        entry.version = self.cluster.next_version();
    }

    /// Whether this process is a client: its writes need the request's
    /// origin (see [`Cluster::replicate`]).
    pub fn is_client(&self) -> bool {
        self.cluster.is_client()
    }

    /// Replicates `entry` in the background, with its reserve copy as
    /// `reserve_copy` says. `origin`: the request it answers, which a
    /// client must send.
    pub fn replicate(
        &self,
        key: CacheKey,
        entry: Arc<CachedResponse>,
        reserve_copy: ReserveCopy,
        origin: Option<KeyOrigin>,
    ) {
        let cluster = Arc::clone(&self.cluster);
        tokio::spawn(async move {
            cluster
                .replicate(key, entry, reserve_copy, origin.as_ref())
                .await;
            // The owner's copy landed any flight this process led there;
            // if the owner did not take it, its waiters must not wait on.
            cluster.release(key, None);
        });
    }
}

impl Tier for PeerTier {
    fn kind(&self) -> TierKind {
        TierKind::Peer
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(async move {
            let found = self.lookup(key, OwnerRead::Asked).await;
            Ok(found.map(|received| Arc::new(received.entry)))
        })
    }

    fn set<'a>(&'a self, key: CacheKey, entry: Arc<CachedResponse>) -> TierFuture<'a, ()> {
        Box::pin(async move {
            self.cluster
                .replicate(key, entry, ReserveCopy::NotNeeded, None)
                .await;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, bool> {
        Box::pin(async move {
            if self.is_client() {
                return Err(TierError::NotAllowed(CLIENTS_DO_NOT_PURGE));
            }
            Ok(self.cluster.delete_everywhere(key).await)
        })
    }

    fn purge_matching<'a>(&'a self, filter: &'a EntryFilter) -> TierFuture<'a, u64> {
        Box::pin(async move {
            if self.is_client() {
                return Err(TierError::NotAllowed(CLIENTS_DO_NOT_PURGE));
            }
            match self.cluster.purge_everywhere(filter).await {
                (removed, 0) => Ok(removed),
                (_, failed) => Err(TierError::Unavailable {
                    tier: TierKind::Peer,
                    reason: format!("{failed} member(s) did not confirm the purge"),
                }),
            }
        })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            if self.is_client() {
                return Err(TierError::NotAllowed(CLIENTS_DO_NOT_PURGE));
            }
            match self.cluster.clear_everywhere().await {
                0 => Ok(()),
                failed => Err(TierError::Unavailable {
                    tier: TierKind::Peer,
                    reason: format!("{failed} member(s) did not confirm the purge"),
                }),
            }
        })
    }
}
