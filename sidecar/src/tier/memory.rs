//! L1: answers in this process's memory, a moka cache weighed by bytes with
//! a TTL per entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use prometheus_client::metrics::counter::Counter;

use super::{Tier, TierFuture, TierKind, TierStats};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;

/// Expires each entry at `created + ttl` plus the stale-if-error window
/// (during which it is kept but only served when the upstream fails), so
/// an entry restored from a longer-lived tier keeps its original deadline
/// rather than a new full TTL.
struct EntryTtl {
    keep_stale: Duration,
}

impl EntryTtl {
    fn remaining(&self, entry: &CachedResponse) -> Duration {
        entry
            .ttl
            .saturating_sub(entry.created.elapsed().unwrap_or_default())
            + self.keep_stale
    }
}

impl Expiry<CacheKey, Arc<CachedResponse>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.remaining(value))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.remaining(value))
    }
}

/// The in-memory tier.
#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<CacheKey, Arc<CachedResponse>>,
    evictions: Counter,
    max_cost: u64,
    /// Whether expired entries are kept (stale-if-error).
    keeps_stale: bool,
    /// When expired entries were last swept out to make room.
    last_sweep: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// Sweeps for expired entries run at most this often: each one has the
/// cache's housekeeping walk every entry.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl MemoryTier {
    /// A tier holding at most `max_cost` bytes of answers, counting
    /// entries evicted for room in `evictions`. Expired entries stay
    /// `keep_stale` longer (still within `max_cost`), for stale-if-error.
    pub fn new(max_cost: u64, keep_stale: Duration, evictions: Counter) -> Self {
        let counter = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(max_cost)
            .weigher(|_key: &CacheKey, entry: &Arc<CachedResponse>| entry.weight())
            .expire_after(EntryTtl { keep_stale })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counter.inc();
                }
            })
            .support_invalidation_closures()
            .build();
        Self {
            cache,
            evictions,
            max_cost,
            keeps_stale: !keep_stale.is_zero(),
            last_sweep: Arc::default(),
        }
    }

    /// Before an insert that would overflow `max_cost`: expired entries
    /// kept for stale-if-error go first, ahead of any fresh one, however
    /// often they were read.
    fn make_room(&self, weight: u64) {
        if !self.keeps_stale || self.cache.weighted_size() + weight <= self.max_cost {
            return;
        }
        {
            let mut last = match self.last_sweep.lock() {
                Ok(last) => last,
                Err(poisoned) => poisoned.into_inner(),
            };
            if last.is_some_and(|at| at.elapsed() < SWEEP_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(err) = self
            .cache
            .invalidate_entries_if(|_, entry| !entry.is_fresh())
        {
            tracing::debug!(%err, "could not sweep expired entries");
        }
        // The cache's own housekeeping removes them, off the request path.
    }

    /// The entry under `key`. Synchronous: a memory lookup never waits on
    /// I/O, and the request path avoids a boxed future for it.
    pub fn lookup(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.cache.get(key).filter(|entry| entry.is_fresh())
    }

    /// The entry under `key` if it expired no longer ago than `window`.
    pub fn lookup_stale(&self, key: &CacheKey, window: Duration) -> Option<Arc<CachedResponse>> {
        self.cache
            .get(key)
            .filter(|entry| entry.is_stale_within(window))
    }

    /// Stores `entry`.
    pub fn insert(&self, key: CacheKey, entry: Arc<CachedResponse>) {
        self.make_room(u64::from(entry.weight()));
        self.cache.insert(key, entry);
    }

    /// A snapshot of every fresh entry, for handoff and repair.
    pub fn entries(&self) -> Vec<(CacheKey, Arc<CachedResponse>)> {
        self.cache
            .iter()
            .filter(|(_, entry)| entry.is_fresh())
            .map(|(key, entry)| (*key, entry))
            .collect()
    }

    /// Removes the entries `filter` selects, expired ones included; how
    /// many.
    pub fn purge_matching(&self, filter: &EntryFilter) -> u64 {
        let selected: Vec<CacheKey> = self
            .cache
            .iter()
            .filter(|(_, entry)| filter.matches(entry))
            .map(|(key, _)| *key)
            .collect();
        let removed = selected
            .iter()
            .filter(|key| self.cache.remove(*key).is_some())
            .count();
        u64::try_from(removed).unwrap_or(u64::MAX)
    }

    /// Up-to-date counters (runs moka's pending maintenance first).
    pub fn current_stats(&self) -> TierStats {
        self.cache.run_pending_tasks();
        TierStats {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            evictions: self.evictions.get(),
        }
    }
}

impl Tier for MemoryTier {
    fn kind(&self) -> TierKind {
        TierKind::Memory
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(async move { Ok(self.lookup(key)) })
    }

    fn set<'a>(&'a self, key: CacheKey, entry: Arc<CachedResponse>) -> TierFuture<'a, ()> {
        Box::pin(async move {
            self.insert(key, entry);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, bool> {
        Box::pin(async move { Ok(self.cache.remove(key).is_some()) })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            self.cache.invalidate_all();
            self.cache.run_pending_tasks();
            Ok(())
        })
    }

    fn purge_matching<'a>(&'a self, filter: &'a EntryFilter) -> TierFuture<'a, u64> {
        Box::pin(async move { Ok(MemoryTier::purge_matching(self, filter)) })
    }

    fn stats(&self) -> TierFuture<'_, Option<TierStats>> {
        Box::pin(async move { Ok(Some(self.current_stats())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn entry(bytes: usize, ttl: Duration) -> Arc<CachedResponse> {
        Arc::new(CachedResponse::new(
            &HeaderMap::new(),
            &vec![b'x'; bytes],
            ttl,
        ))
    }

    #[tokio::test]
    async fn stores_expires_and_deletes() {
        let tier = MemoryTier::new(1 << 20, Duration::ZERO, Counter::default());
        let key = CacheKey([1; 32]);
        tier.set(key, entry(10, Duration::from_millis(200)))
            .await
            .unwrap();
        assert!(tier.exists(&key).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            tier.get(&key).await.unwrap().is_none(),
            "expired entries are never served"
        );

        tier.set(key, entry(10, Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(tier.delete(&key).await.unwrap());
        assert!(!tier.exists(&key).await.unwrap());
    }

    #[tokio::test]
    async fn weighs_by_bytes_and_evicts() {
        let tier = MemoryTier::new(100_000, Duration::ZERO, Counter::default());
        for i in 0..50u8 {
            tier.insert(CacheKey([i; 32]), entry(10_000, Duration::from_secs(60)));
        }
        let stats = tier.current_stats();
        assert!(stats.bytes <= 100_000, "{stats:?}");
        assert!(stats.entries < 50 && stats.evictions > 0, "{stats:?}");
    }

    #[test]
    fn entries_kept_for_stale_if_error_go_before_fresh_ones() {
        // Room for about five entries of 10 kB.
        let tier = MemoryTier::new(55_000, Duration::from_secs(3600), Counter::default());
        let stale = CacheKey([200; 32]);
        tier.insert(stale, entry(10_000, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(20));
        // Hot: a policy that weighs only use would keep it over fresh ones.
        for _ in 0..50 {
            assert!(tier
                .lookup_stale(&stale, Duration::from_secs(3600))
                .is_some());
        }
        for i in 0..8u8 {
            tier.insert(CacheKey([i; 32]), entry(10_000, Duration::from_secs(60)));
            tier.cache.run_pending_tasks();
        }
        assert!(
            tier.lookup_stale(&stale, Duration::from_secs(3600))
                .is_none(),
            "under pressure the expired entry goes first"
        );
        let fresh = (0..8u8)
            .filter(|i| tier.lookup(&CacheKey([*i; 32])).is_some())
            .count();
        assert!(fresh >= 4, "fresh entries fill the room: {fresh}");
    }
}
