//! The tiers this process holds itself: memory (L1) and the reserve in
//! object storage (L3), and the interface every tier implements (the
//! cluster's, L2, is [`crate::cluster::PeerTier`]). [`crate::tiers`]
//! owns all three and the rules between them.

pub mod memory;
pub mod reserve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;

pub use crate::headers::TierKind;
pub use crate::metrics::TierStats;
pub use memory::MemoryTier;

/// A boxed future, so tiers can be used behind `dyn Tier`.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// A tier could not do what was asked. Callers treat it as a miss and carry on.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier's backend is unreachable or refused the operation.
    #[error("{} tier unavailable: {reason}", tier.as_str())]
    Unavailable {
        /// Which tier.
        tier: TierKind,
        /// What failed.
        reason: String,
    },
    /// This process may not do that to the tier: a cluster client purging
    /// the cluster, which only members may.
    #[error("{0}")]
    NotAllowed(&'static str),
}

/// One level of the cache, in the spirit of cc-relay's Cache interface.
/// `set` carries the TTL inside the entry.
pub trait Tier: Send + Sync {
    /// Which tier this is.
    fn kind(&self) -> TierKind;
    /// The fresh entry under `key`, if any.
    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Arc<CachedResponse>>>;
    /// Stores `entry` under `key` for `entry.ttl`.
    fn set<'a>(&'a self, key: CacheKey, entry: Arc<CachedResponse>) -> TierFuture<'a, ()>;
    /// Removes `key`; true if something was removed.
    fn delete<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, bool>;
    /// Whether a fresh entry exists under `key`.
    fn exists<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, bool> {
        Box::pin(async move { Ok(self.get(key).await?.is_some()) })
    }
    /// Removes every entry.
    fn clear(&self) -> TierFuture<'_, ()>;
    /// Removes the entries `filter` selects; how many.
    fn purge_matching<'a>(&'a self, filter: &'a EntryFilter) -> TierFuture<'a, u64>;
    /// Flushes and releases resources before exit.
    fn close(&self) -> TierFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    /// Counters, for tiers that keep them.
    fn stats(&self) -> TierFuture<'_, Option<TierStats>> {
        Box::pin(async { Ok(None) })
    }
    /// Checks the backend is reachable, for tiers that have one.
    fn ping(&self) -> TierFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}
