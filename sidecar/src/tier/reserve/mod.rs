//! L3, the reserve: answers kept for weeks in object storage (through the
//! `object_store` crate), so that a restart or an eviction does not send the
//! question to the provider again.
//!
//! Layout: one object per entry, `PREFIX/v2/SHARD/KEY.entry` (SHARD: the
//! first two hex digits of the key): the metadata's length, the metadata
//! (JSON, versioned, with the retention it was written with and the body's
//! BLAKE3 digest), then the answer's bytes. One write stores an entry, one
//! read serves it, and a store writes an object whole, so a reader never
//! sees half of a refresh; the digest, checked on every read, turns a
//! damaged object into a miss, never a wrong answer.
//!
//! Reading an entry in the second half of its retention extends it with a
//! small marker, `KEY.keep`, holding the new retention: the body is never
//! written again, and a marker cannot overwrite a newer entry (it only
//! ever extends). Such reads also read the marker, so an entry extended
//! once is not extended again until the second half of the new period.
//! Entries of the earlier two-object layout (`PREFIX/v1/`) are not read;
//! the sweep removes them once their retention has passed.
//!
//! Nothing here ever delays or fails a request: writes go through a bounded
//! queue that drops (and counts) when full, and a store that errors is a
//! miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::mpsc;

use super::{Tier, TierError, TierFuture, TierKind, TierStats};
use crate::config::ReserveConfig;
use crate::entry::filter::EntryFilter;
use crate::entry::{CachedResponse, Received};
use crate::key::CacheKey;
use crate::metrics::Metrics;

mod metadata;
mod store;

use metadata::{decode_object, unix_ms, Keep};
use store::{start_writer, sweep_forever};

/// Version of the metadata format; entries of another version are misses.
/// 2: `body_digest`. 3: one object per entry, retention markers.
const META_FORMAT: u32 = 3;
/// The format of an entry whose body is stored as a zstd frame.
const META_FORMAT_ZSTD: u32 = 4;
/// The directory under the prefix that holds entries of the one-object
/// layout.
const LAYOUT_DIR: &str = "v2";
/// Store writes in flight at once.
const WRITE_CONCURRENCY: usize = 8;

/// The reserve could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The URL or its options were refused by the store.
    #[error("cannot open the reserve store {url:?}: {reason}; check cache.reserve.url and cache.reserve.options")]
    Open {
        /// The configured URL.
        url: String,
        /// What the store said.
        reason: String,
    },
}

/// Work for the background writer.
enum Job {
    Write {
        key: CacheKey,
        entry: Arc<CachedResponse>,
    },
    Extend {
        key: CacheKey,
        /// The new end of the entry's retention.
        until: Keep,
    },
    Remove {
        key: CacheKey,
    },
}

/// Entry counts found by the last complete sweep.
#[derive(Default)]
struct Census {
    entries: AtomicU64,
    bytes: AtomicU64,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// Where the two-object layout kept entries; swept once expired.
    legacy_root: Path,
    settings: ReserveConfig,
    metrics: Arc<Metrics>,
    census: Census,
    /// How long expired entries are kept for stale-if-error, in ms.
    keep_stale_ms: std::sync::atomic::AtomicU64,
    /// The directory `root` is, for a local (`file://`) store.
    local_root: Option<std::path::PathBuf>,
}

/// The object-storage tier.
#[derive(Clone)]
pub struct ReserveTier {
    inner: Arc<Inner>,
    jobs: mpsc::Sender<Job>,
}

/// The options a store is opened with: its provider's variables from the
/// environment (`AWS_*` for `s3://`, `GOOGLE_*` for `gs://`, `AZURE_*`
/// for Azure), which is how Kubernetes passes a `credentialsSecret`,
/// then `cache.reserve.options`, which win. Variables that are not store
/// options (`AWS_PAGER`, …) are left out.
fn store_options(
    url: &url::Url,
    configured: &std::collections::BTreeMap<String, String>,
    environment: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    use std::str::FromStr;
    let is_option: fn(&str) -> bool = match url.scheme() {
        "s3" | "s3a" => |key| object_store::aws::AmazonS3ConfigKey::from_str(key).is_ok(),
        "gs" => |key| object_store::gcp::GoogleConfigKey::from_str(key).is_ok(),
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            |key| object_store::azure::AzureConfigKey::from_str(key).is_ok()
        }
        _ => |_| false,
    };
    let prefix = match url.scheme() {
        "s3" | "s3a" => "aws_",
        "gs" => "google_",
        _ => "azure_",
    };
    environment
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .filter(|(key, _)| key.starts_with(prefix) && is_option(key))
        .chain(configured.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

impl ReserveTier {
    /// Opens the store and starts the writer and the sweeper. Must be called
    /// inside a tokio runtime.
    pub fn open(settings: &ReserveConfig, metrics: Arc<Metrics>) -> Result<Self, ReserveError> {
        let open_error = |reason: String| ReserveError::Open {
            url: settings.url.clone(),
            reason,
        };
        let url = url::Url::parse(&settings.url).map_err(|e| open_error(e.to_string()))?;
        let options = store_options(&url, &settings.options, std::env::vars());
        let (store, prefix) =
            object_store::parse_url_opts(&url, options).map_err(|e| open_error(e.to_string()))?;
        if url.scheme() == "file" {
            // The local store refuses to write into a directory that does not exist yet.
            std::fs::create_dir_all(url.path()).map_err(|e| open_error(e.to_string()))?;
        }
        let inner = Arc::new(Inner {
            store: Arc::from(store),
            legacy_root: prefix.child("v1"),
            root: prefix.child(LAYOUT_DIR),
            settings: settings.clone(),
            metrics,
            census: Census::default(),
            keep_stale_ms: std::sync::atomic::AtomicU64::new(0),
            local_root: (url.scheme() == "file")
                .then(|| url.to_file_path().ok())
                .flatten()
                .map(|dir| dir.join(LAYOUT_DIR)),
        });
        let (jobs, queue) = mpsc::channel(settings.queue);
        start_writer(Arc::clone(&inner), queue)
            .map_err(|e| open_error(format!("cannot start the reserve's writer: {e}")))?;
        tokio::spawn(sweep_forever(Arc::clone(&inner)));
        Ok(Self { inner, jobs })
    }

    /// Keeps expired entries `window` longer (neither the sweep nor a read
    /// removes them), so that [`ReserveTier::lookup_stale`] finds them.
    pub fn keep_stale_for(&self, window: Duration) {
        self.inner.keep_stale_ms.store(
            u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The live entry under `key`, if the reserve has one. Store errors, a
    /// store slower than `read_timeout`, and undecodable entries are misses
    /// (and counted; undecodable entries are removed).
    pub async fn lookup(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let received = self.lookup_within(key, None).await?;
        Some(Arc::new(received.entry))
    }

    /// [`lookup`](Self::lookup), with the body decoded to check the entry
    /// (see [`Received`]), for the hit that asked.
    pub async fn lookup_received(&self, key: &CacheKey) -> Option<Received> {
        self.lookup_within(key, None).await
    }

    /// The entry under `key` if it expired no longer ago than `window`
    /// (stale-if-error), or is fresh.
    pub async fn lookup_stale(
        &self,
        key: &CacheKey,
        window: Duration,
    ) -> Option<Arc<CachedResponse>> {
        let received = self.lookup_within(key, Some(window)).await?;
        Some(Arc::new(received.entry))
    }

    async fn lookup_within(
        &self,
        key: &CacheKey,
        stale_within: Option<Duration>,
    ) -> Option<Received> {
        let timeout = self.inner.settings.read_timeout;
        match tokio::time::timeout(timeout, self.read(key, stale_within)).await {
            Ok(found) => found,
            Err(_) => {
                self.inner.metrics.reserve.failures.inc();
                tracing::warn!(
                    ?timeout,
                    "reserve store did not answer within read_timeout; treating it as a miss"
                );
                None
            }
        }
    }

    async fn read(&self, key: &CacheKey, stale_within: Option<Duration>) -> Option<Received> {
        let inner = &self.inner;
        if inner.surely_absent(key) {
            return None;
        }
        let (entry_path, keep_path) = inner.paths(key);
        let object = match inner.get_if_present(&entry_path).await {
            Ok(Some(object)) => object,
            Ok(None) => return None,
            Err(err) => {
                inner.failed("read", &err);
                return None;
            }
        };
        let Some((meta, body)) = decode_object(object, key) else {
            tracing::warn!(%key, "reserve entry is unreadable (another format, or damaged); removing it");
            self.enqueue(Job::Remove { key: *key });
            return None;
        };
        let now = unix_ms(SystemTime::now());
        let retention_ms = u64::try_from(inner.settings.retention.as_millis()).unwrap_or(u64::MAX);
        // In the second half of its own retention an entry may have been
        // extended: only then is its marker worth a read.
        let mut retained_until = meta.retention_until_ms;
        if retained_until.saturating_sub(now) < retention_ms / 2 {
            retained_until = retained_until.max(inner.extended_until(&keep_path).await);
        }
        let keep_stale_ms = inner
            .keep_stale_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if !meta.is_kept(now, keep_stale_ms, retained_until) {
            self.enqueue(Job::Remove { key: *key });
            return None;
        }
        let fresh = now < meta.fresh_until_ms;
        let stale_ok = stale_within.is_some_and(|window| {
            now.saturating_sub(meta.fresh_until_ms)
                <= u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
        });
        if !fresh && !stale_ok {
            return None;
        }
        let Some(received) = meta.restore(body) else {
            self.mismatch(key);
            return None;
        };
        let entry = &received.entry;
        let metrics = &inner.metrics;
        metrics.reserve.reads.inc();
        metrics
            .reserve
            .upstream_bytes_saved
            .inc_by(entry.body_len() as u64);
        metrics.reserve.input_tokens_saved.inc_by(entry.usage.input);
        metrics
            .reserve
            .output_tokens_saved
            .inc_by(entry.usage.output);
        // A marker on every read would cost a store write per hit; once
        // per half retention period keeps entries alive as well.
        if retained_until.saturating_sub(now) < retention_ms / 2 {
            self.enqueue(Job::Extend {
                key: *key,
                until: Keep {
                    retention_until_ms: now.saturating_add(retention_ms),
                },
            });
        }
        Some(received)
    }

    /// A body that does not match its metadata (a damaged object): a miss,
    /// counted, and the entry removed. An object is written whole, so it is
    /// never a refresh under way.
    fn mismatch(&self, key: &CacheKey) {
        self.inner.metrics.reserve.mismatches.inc();
        tracing::warn!(%key, "reserve body does not match its metadata (digest or length); removing the entry");
        self.enqueue(Job::Remove { key: *key });
    }

    /// Queues `entry` to be written if it qualifies (TTL at least `min_ttl`,
    /// body at most `max_entry_bytes`). Never waits.
    pub fn admit(&self, key: CacheKey, entry: &Arc<CachedResponse>) {
        let settings = &self.inner.settings;
        if entry.ttl < settings.min_ttl || entry.body_len() as u64 > settings.max_entry_bytes {
            self.inner.metrics.reserve.not_admitted.inc();
            return;
        }
        self.enqueue(Job::Write {
            key,
            entry: Arc::clone(entry),
        });
    }

    fn enqueue(&self, job: Job) {
        // Counted before it is queued, and until it is done (see
        // `start_writer`): one gauge that `flush` can trust.
        self.inner.metrics.reserve.writes_in_flight.inc();
        if self.jobs.try_send(job).is_err() {
            self.inner.metrics.reserve.writes_in_flight.dec();
            self.inner.metrics.reserve.dropped.inc();
        }
    }

    /// Sends every fresh entry `filter` selects whose key is `wanted` to
    /// `to` (an export, see [`crate::bundle`], or a member's warm start),
    /// without extending retention. Bodies of entries not selected are
    /// not read.
    pub async fn export_matching(
        &self,
        filter: &EntryFilter,
        wanted: impl Fn(&CacheKey) -> bool,
        to: tokio::sync::mpsc::Sender<(CacheKey, CachedResponse)>,
    ) -> Result<(), TierError> {
        self.inner
            .export_matching(filter, wanted, to)
            .await
            .map_err(unavailable)
    }

    /// Entries and bytes as counted by the last complete sweep.
    pub fn census(&self) -> TierStats {
        TierStats {
            entries: self.inner.census.entries.load(Ordering::Relaxed),
            bytes: self.inner.census.bytes.load(Ordering::Relaxed),
            evictions: 0,
        }
    }

    /// Waits up to `timeout` for queued writes to reach the store.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.metrics.reserve.writes_in_flight.get() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Tier for ReserveTier {
    fn kind(&self) -> TierKind {
        TierKind::Reserve
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, Option<Arc<CachedResponse>>> {
        Box::pin(async move { Ok(self.lookup(key).await) })
    }

    fn set<'a>(&'a self, key: CacheKey, entry: Arc<CachedResponse>) -> TierFuture<'a, ()> {
        Box::pin(async move {
            self.admit(key, &entry);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> TierFuture<'a, bool> {
        Box::pin(async move { self.inner.remove(key).await.map_err(unavailable) })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut listing = inner.store.list(Some(&inner.root));
            while let Some(object) = listing.next().await {
                let object = object.map_err(unavailable)?;
                match inner.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(unavailable(err)),
                }
            }
            Ok(())
        })
    }

    fn purge_matching<'a>(&'a self, filter: &'a EntryFilter) -> TierFuture<'a, u64> {
        Box::pin(async move { self.inner.purge_matching(filter).await.map_err(unavailable) })
    }

    fn close(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            if !self.flush(Duration::from_secs(5)).await {
                tracing::warn!("reserve writes still queued at shutdown were dropped");
            }
            Ok(())
        })
    }

    fn stats(&self) -> TierFuture<'_, Option<TierStats>> {
        Box::pin(async move { Ok(Some(self.census())) })
    }

    fn ping(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            let mut listing = self.inner.store.list(Some(&self.inner.root));
            match listing.next().await {
                Some(Err(err)) => Err(unavailable(err)),
                _ => Ok(()),
            }
        })
    }
}

fn unavailable(err: object_store::Error) -> TierError {
    TierError::Unavailable {
        tier: TierKind::Reserve,
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests;
