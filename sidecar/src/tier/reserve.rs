//! L3, the reserve: answers kept for weeks in object storage (through the
//! `object_store` crate), so that a restart or an eviction does not send the
//! question to the provider again.
//!
//! Layout: `PREFIX/v1/SHARD/KEY.body` holds the answer's bytes and
//! `PREFIX/v1/SHARD/KEY.meta` its metadata (JSON, versioned), where SHARD is
//! the first two hex digits of the key. The metadata is written after the
//! body, so a readable `.meta` means a complete entry; reading extends the
//! retention by rewriting only the small `.meta`.
//!
//! The two objects are bound by the body's BLAKE3 digest in the metadata,
//! checked on every read: a body that does not match its metadata (a
//! refresh caught half-way, a damaged object) is a miss, never a wrong
//! answer. A retention extension is a conditional update of the `.meta`
//! it read (`PutMode::Update` on its ETag), so it never puts old metadata
//! over a newer entry's.
//!
//! Nothing here ever delays or fails a request: writes go through a bounded
//! queue that drops (and counts) when full, and a store that errors is a
//! miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use super::{Tier, TierError, TierFuture, TierKind, TierStats};
use crate::config::ReserveConfig;
use crate::entry::{CachedResponse, TokenUsage};
use crate::key::CacheKey;
use crate::metrics::Metrics;

/// Version of the metadata format; entries of another version are misses.
/// 2: `body_digest`.
const META_FORMAT: u32 = 2;
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

/// What is kept beside each body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Metadata {
    format: u32,
    key: String,
    created_ms: u64,
    fresh_until_ms: u64,
    retention_until_ms: u64,
    body_len: u64,
    /// BLAKE3 of the body, hex.
    body_digest: String,
    headers: Vec<(String, String)>,
    input_tokens: u64,
    output_tokens: u64,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Metadata {
    fn describe(key: &CacheKey, entry: &CachedResponse, retention: Duration) -> Self {
        let created = unix_ms(entry.created);
        Self {
            format: META_FORMAT,
            key: key.to_string(),
            created_ms: created,
            fresh_until_ms: created
                .saturating_add(u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX)),
            retention_until_ms: unix_ms(SystemTime::now() + retention),
            body_len: entry.body_len() as u64,
            body_digest: blake3::hash(&entry.body()).to_hex().to_string(),
            headers: entry
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            input_tokens: entry.usage.input,
            output_tokens: entry.usage.output,
        }
    }

    /// Whether the entry may still be served at `now_ms`.
    /// Whether the entry is kept: fresh, or expired no longer ago than
    /// `keep_stale_ms` (for stale-if-error), and within its retention.
    fn is_kept(&self, now_ms: u64, keep_stale_ms: u64) -> bool {
        now_ms < self.fresh_until_ms.saturating_add(keep_stale_ms)
            && now_ms < self.retention_until_ms
    }

    fn decode(bytes: &[u8], key: &CacheKey) -> Option<Self> {
        let meta: Self = serde_json::from_slice(bytes).ok()?;
        (meta.format == META_FORMAT && meta.key == key.to_string()).then_some(meta)
    }

    /// Whether `body` is the one this metadata describes.
    fn describes(&self, body: &[u8]) -> bool {
        body.len() as u64 == self.body_len
            && blake3::hash(body).to_hex().as_str() == self.body_digest
    }

    fn restore(&self, body: Bytes) -> Option<CachedResponse> {
        if !self.describes(&body) {
            return None;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            );
        }
        let now = unix_ms(SystemTime::now());
        let ttl = Duration::from_millis(self.fresh_until_ms.saturating_sub(now));
        let mut entry = CachedResponse::restore(
            &headers,
            &body,
            from_unix_ms(self.created_ms),
            ttl,
            TokenUsage {
                input: self.input_tokens,
                output: self.output_tokens,
            },
        );
        // The TTL as stored, from creation: an expired entry then knows how
        // long ago it expired (for stale-if-error).
        entry.ttl = Duration::from_millis(self.fresh_until_ms.saturating_sub(self.created_ms));
        Some(entry)
    }
}

/// Work for the background writer.
enum Job {
    Write {
        key: CacheKey,
        entry: Arc<CachedResponse>,
    },
    Extend {
        key: CacheKey,
        meta: Box<Metadata>,
        /// The `.meta` object the extension was computed from; a newer one
        /// is left alone.
        read: object_store::UpdateVersion,
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
    settings: ReserveConfig,
    metrics: Arc<Metrics>,
    census: Census,
    /// How long expired entries are kept for stale-if-error, in ms.
    keep_stale_ms: std::sync::atomic::AtomicU64,
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
            root: prefix.child("v1"),
            settings: settings.clone(),
            metrics,
            census: Census::default(),
            keep_stale_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let (jobs, queue) = mpsc::channel(settings.queue);
        tokio::spawn(write_behind(Arc::clone(&inner), queue));
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
        self.lookup_within(key, None).await
    }

    /// The entry under `key` if it expired no longer ago than `window`
    /// (stale-if-error), or is fresh.
    pub async fn lookup_stale(
        &self,
        key: &CacheKey,
        window: Duration,
    ) -> Option<Arc<CachedResponse>> {
        self.lookup_within(key, Some(window)).await
    }

    async fn lookup_within(
        &self,
        key: &CacheKey,
        stale_within: Option<Duration>,
    ) -> Option<Arc<CachedResponse>> {
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

    async fn read(
        &self,
        key: &CacheKey,
        stale_within: Option<Duration>,
    ) -> Option<Arc<CachedResponse>> {
        let inner = &self.inner;
        let (meta_path, body_path) = inner.paths(key);
        let (meta, body) = tokio::join!(inner.store.get(&meta_path), inner.store.get(&body_path));
        let meta = match meta {
            Ok(found) => {
                let read = object_store::UpdateVersion {
                    e_tag: found.meta.e_tag.clone(),
                    version: found.meta.version.clone(),
                };
                found.bytes().await.map(|bytes| (bytes, read))
            }
            Err(err) => Err(err),
        };
        let (meta_bytes, meta_version) = match meta {
            Ok(read) => read,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(err) => {
                inner.failed("read", &err);
                return None;
            }
        };
        let Some(meta) = Metadata::decode(&meta_bytes, key) else {
            tracing::warn!(%key, "reserve entry has unreadable metadata; removing it");
            self.enqueue(Job::Remove { key: *key });
            return None;
        };
        let now = unix_ms(SystemTime::now());
        let keep_stale_ms = inner
            .keep_stale_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if !meta.is_kept(now, keep_stale_ms) {
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
        let body = match body {
            Ok(found) => {
                let modified = found.meta.last_modified;
                found.bytes().await.map(|bytes| (bytes, modified))
            }
            Err(err) => Err(err),
        };
        let entry = match body {
            Ok((body, modified)) => match meta.restore(body) {
                Some(entry) => entry,
                None => {
                    self.mismatch(key, modified);
                    return None;
                }
            },
            Err(object_store::Error::NotFound { .. }) => {
                tracing::warn!(%key, "reserve entry has metadata but no body; removing it");
                self.enqueue(Job::Remove { key: *key });
                return None;
            }
            Err(err) => {
                inner.failed("read", &err);
                return None;
            }
        };
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
        let retention_ms = u64::try_from(inner.settings.retention.as_millis()).unwrap_or(u64::MAX);
        // Rewriting the metadata on every read would cost a store write per
        // hit; once per half retention period keeps entries alive as well.
        if meta.retention_until_ms.saturating_sub(now) < retention_ms / 2 {
            let mut extended = meta;
            extended.retention_until_ms = now.saturating_add(retention_ms);
            self.enqueue(Job::Extend {
                key: *key,
                meta: Box::new(extended),
                read: meta_version,
            });
        }
        Some(Arc::new(entry))
    }

    /// A body that does not match its metadata: a miss, counted. The entry
    /// is removed, unless the body is recent enough to be a refresh whose
    /// metadata is still on its way (removing it would lose the new entry).
    fn mismatch(&self, key: &CacheKey, body_modified: chrono::DateTime<chrono::Utc>) {
        self.inner.metrics.reserve.mismatches.inc();
        let age = (chrono::Utc::now() - body_modified)
            .to_std()
            .unwrap_or_default();
        if age < self.inner.settings.write_timeout * 2 {
            tracing::debug!(%key, "reserve body does not match its metadata, and may be a refresh under way; a miss");
            return;
        }
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
        if self.jobs.try_send(job).is_err() {
            self.inner.metrics.reserve.dropped.inc();
        }
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
        while self.jobs.capacity() < self.jobs.max_capacity()
            || self.inner.metrics.reserve.writes_in_flight() > 0
        {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Inner {
    fn paths(&self, key: &CacheKey) -> (Path, Path) {
        let hex = key.to_string();
        let shard = self.root.child(&hex[..2]);
        (
            shard.child(format!("{hex}.meta")),
            shard.child(format!("{hex}.body")),
        )
    }

    fn failed(&self, operation: &'static str, err: &object_store::Error) {
        self.metrics.reserve.failures.inc();
        tracing::warn!(operation, error = %err, "reserve store operation failed; serving without it");
    }

    async fn write(
        &self,
        key: &CacheKey,
        entry: &CachedResponse,
    ) -> Result<(), object_store::Error> {
        let (meta_path, body_path) = self.paths(key);
        let meta = Metadata::describe(key, entry, self.settings.retention);
        self.store
            .put(&body_path, PutPayload::from(entry.body()))
            .await?;
        self.put_meta(&meta_path, &meta).await
    }

    async fn put_meta(&self, path: &Path, meta: &Metadata) -> Result<(), object_store::Error> {
        let bytes = serde_json::to_vec(meta).unwrap_or_default();
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
    }

    /// Writes `meta` over the `.meta` object only if it is still the one
    /// read (`read`). Returns false when it changed meanwhile. Stores
    /// without conditional updates (the local file system) get the
    /// closest equivalent: the ETag is checked just before the write.
    async fn extend(
        &self,
        path: &Path,
        meta: &Metadata,
        read: object_store::UpdateVersion,
    ) -> Result<bool, object_store::Error> {
        let bytes = serde_json::to_vec(meta).unwrap_or_default();
        let options = object_store::PutOptions::from(object_store::PutMode::Update(read.clone()));
        match self
            .store
            .put_opts(path, PutPayload::from(bytes.clone()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented) => {
                let current = match self.store.head(path).await {
                    Ok(current) => current,
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(err) => return Err(err),
                };
                if current.e_tag != read.e_tag || current.version != read.version {
                    return Ok(false);
                }
                self.store.put(path, PutPayload::from(bytes)).await?;
                Ok(true)
            }
            Err(err) => Err(err),
        }
    }

    async fn remove(&self, key: &CacheKey) -> Result<bool, object_store::Error> {
        let (meta_path, body_path) = self.paths(key);
        let mut removed = false;
        for path in [meta_path, body_path] {
            match self.store.delete(&path).await {
                Ok(()) => removed = true,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
    }

    async fn run(&self, job: Job) {
        let timeout = self.settings.write_timeout;
        if tokio::time::timeout(timeout, self.run_job(job))
            .await
            .is_err()
        {
            self.metrics.reserve.failures.inc();
            tracing::warn!(
                ?timeout,
                "reserve write did not finish within write_timeout; abandoned"
            );
        }
    }

    async fn run_job(&self, job: Job) {
        let reserve = &self.metrics.reserve;
        match job {
            Job::Write { key, entry } => match self.write(&key, &entry).await {
                Ok(()) => {
                    reserve.writes.inc();
                }
                Err(err) => self.failed("write", &err),
            },
            Job::Extend { key, meta, read } => {
                let (meta_path, _) = self.paths(&key);
                match self.extend(&meta_path, &meta, read).await {
                    Ok(true) => {
                        reserve.extensions.inc();
                    }
                    Ok(false) => {
                        tracing::debug!(%key, "reserve metadata changed since it was read; extension skipped");
                    }
                    Err(err) => self.failed("extend", &err),
                }
            }
            Job::Remove { key } => match self.remove(&key).await {
                Ok(_) => {
                    reserve.removed.inc();
                }
                Err(err) => self.failed("remove", &err),
            },
        }
    }

    /// Looks at up to `sweep_batch` objects after `cursor`: removes entries
    /// that expired or cannot be read, counts the rest. Returns the cursor
    /// for the next run (`None` once the whole store was covered).
    async fn sweep(&self, cursor: Option<Path>, census: &mut (u64, u64)) -> Option<Path> {
        let listing = match &cursor {
            Some(offset) => self.store.list_with_offset(Some(&self.root), offset),
            None => self.store.list(Some(&self.root)),
        };
        let mut listing = listing.take(self.settings.sweep_batch);
        let now = unix_ms(SystemTime::now());
        let mut last = None;
        let mut seen = 0;
        while let Some(item) = listing.next().await {
            seen += 1;
            let object = match item {
                Ok(object) => object,
                Err(err) => {
                    self.failed("sweep", &err);
                    return cursor;
                }
            };
            last = Some(object.location.clone());
            census.1 += object.size;
            let name = object.location.filename().unwrap_or_default();
            if let Some(hex) = name.strip_suffix(".body") {
                self.remove_if_orphan(hex, &object).await;
                continue;
            }
            let Some(hex) = name.strip_suffix(".meta") else {
                continue;
            };
            let Some(key) = CacheKey::from_hex(hex) else {
                continue;
            };
            let live = match self.store.get(&object.location).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .ok()
                    .and_then(|bytes| Metadata::decode(&bytes, &key))
                    .is_some_and(|meta| {
                        meta.is_kept(
                            now,
                            self.keep_stale_ms
                                .load(std::sync::atomic::Ordering::Relaxed),
                        )
                    }),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(err) => {
                    self.failed("sweep", &err);
                    continue;
                }
            };
            if live {
                census.0 += 1;
            } else {
                match self.remove(&key).await {
                    Ok(_) => {
                        self.metrics.reserve.expired.inc();
                    }
                    Err(err) => self.failed("sweep", &err),
                }
            }
        }
        if seen < self.settings.sweep_batch {
            self.census.entries.store(census.0, Ordering::Relaxed);
            self.census.bytes.store(census.1, Ordering::Relaxed);
            *census = (0, 0);
            None
        } else {
            last
        }
    }
}

impl Inner {
    /// Removes a body whose metadata never arrived (the process stopped
    /// between the two writes), once no write in flight can still add it.
    async fn remove_if_orphan(&self, hex: &str, body: &object_store::ObjectMeta) {
        let Some(key) = CacheKey::from_hex(hex) else {
            return;
        };
        let age = (chrono::Utc::now() - body.last_modified)
            .to_std()
            .unwrap_or_default();
        if age < self.settings.write_timeout * 2 {
            return;
        }
        let (meta_path, _) = self.paths(&key);
        match self.store.head(&meta_path).await {
            Err(object_store::Error::NotFound { .. }) => {
                match self.store.delete(&body.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        self.metrics.reserve.removed.inc();
                    }
                    Err(err) => self.failed("sweep", &err),
                }
            }
            Ok(_) => {}
            Err(err) => self.failed("sweep", &err),
        }
    }
}

async fn write_behind(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(WRITE_CONCURRENCY));
    while let Some(job) = queue.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let inner = Arc::clone(&inner);
        inner
            .metrics
            .reserve
            .in_flight
            .fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            inner.run(job).await;
            inner
                .metrics
                .reserve
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
            drop(slot);
        });
    }
}

async fn sweep_forever(inner: Arc<Inner>) {
    let mut cursor = None;
    let mut census = (0, 0);
    loop {
        cursor = inner.sweep(cursor, &mut census).await;
        tokio::time::sleep(inner.settings.sweep_interval).await;
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
mod tests {

    #[test]
    fn credentials_come_from_the_environment_and_configured_options_win() {
        let s3 = url::Url::parse("s3://bucket/prefix").unwrap();
        let configured = [("aws_region".to_string(), "eu-west-1".to_string())]
            .into_iter()
            .collect();
        let environment = [
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_PAGER", ""),
            ("GOOGLE_SERVICE_ACCOUNT", "not for s3"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let options = store_options(&s3, &configured, environment.clone().into_iter());
        assert_eq!(
            options,
            [
                ("aws_access_key_id", "id"),
                ("aws_region", "us-east-1"),
                ("aws_region", "eu-west-1"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
            "the provider's options from the environment, then the configured ones (applied last, so they win)"
        );
        let file = url::Url::parse("file:///var/cache/llm").unwrap();
        assert!(store_options(&file, &Default::default(), environment.into_iter()).is_empty());
    }

    use super::*;

    fn entry(ttl: Duration) -> Arc<CachedResponse> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Arc::new(CachedResponse::new(
            &headers,
            br#"{"usage":{"input_tokens":7,"output_tokens":9}}"#,
            ttl,
        ))
    }

    fn settings(url: &str) -> ReserveConfig {
        ReserveConfig {
            url: url.into(),
            min_ttl: Duration::from_secs(1),
            ..ReserveConfig::default()
        }
    }

    async fn written(reserve: &ReserveTier, metrics: &Metrics, n: u64) {
        for _ in 0..200 {
            if metrics.reserve.writes.get() >= n && reserve.flush(Duration::from_secs(1)).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("reserve write did not complete");
    }

    #[tokio::test]
    async fn round_trip_in_memory_store() {
        let metrics = Arc::new(Metrics::new());
        let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
        let key = CacheKey([3; 32]);
        let stored = entry(Duration::from_secs(60));
        reserve.admit(key, &stored);
        written(&reserve, &metrics, 1).await;
        let found = reserve.lookup(&key).await.expect("reserve hit");
        assert_eq!(found.body(), stored.body());
        assert_eq!(found.headers(), stored.headers());
        assert_eq!(found.usage, stored.usage);
        // The TTL still runs from the original creation.
        assert!(found.ttl.abs_diff(Duration::from_secs(60)) < Duration::from_millis(50));
        let drift = stored
            .created
            .duration_since(found.created)
            .unwrap_or_default();
        assert!(
            drift < Duration::from_millis(1),
            "created is kept (to the millisecond)"
        );
        assert_eq!(metrics.reserve.reads.get(), 1);
        assert_eq!(metrics.reserve.input_tokens_saved.get(), 7);
        assert!(reserve.lookup(&CacheKey([4; 32])).await.is_none());
    }

    #[tokio::test]
    async fn admission_and_expiry() {
        let metrics = Arc::new(Metrics::new());
        let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
        reserve.admit(CacheKey([5; 32]), &entry(Duration::from_millis(500)));
        assert_eq!(
            metrics.reserve.not_admitted.get(),
            1,
            "TTL below min_ttl stays out"
        );

        let key = CacheKey([6; 32]);
        reserve.admit(key, &entry(Duration::from_millis(1100)));
        written(&reserve, &metrics, 1).await;
        assert!(reserve.lookup(&key).await.is_some());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            reserve.lookup(&key).await.is_none(),
            "expired entries are never served"
        );
    }

    #[tokio::test]
    async fn corrupt_metadata_is_a_miss_and_is_removed() {
        let metrics = Arc::new(Metrics::new());
        let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
        let key = CacheKey([7; 32]);
        reserve.admit(key, &entry(Duration::from_secs(60)));
        written(&reserve, &metrics, 1).await;
        let (meta_path, _) = reserve.inner.paths(&key);
        reserve
            .inner
            .store
            .put(&meta_path, PutPayload::from_static(b"{not json"))
            .await
            .unwrap();
        assert!(reserve.lookup(&key).await.is_none());
        reserve.flush(Duration::from_secs(2)).await;
        assert!(matches!(
            reserve.inner.store.head(&meta_path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    /// An answer whose body reports `tokens` in its usage, padded so that
    /// every such body has the same length.
    fn answer(tokens: u64) -> Arc<CachedResponse> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let digits = tokens.to_string();
        let pad = "x".repeat(12 - digits.len());
        let body =
            format!(r#"{{"usage":{{"input_tokens":{digits},"output_tokens":1}},"pad":"{pad}"}}"#);
        Arc::new(CachedResponse::new(
            &headers,
            body.as_bytes(),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn answers_report_their_tokens_and_have_one_length() {
        assert_eq!(answer(7).usage.input, 7);
        assert_eq!(answer(40).usage.input, 40);
        assert_eq!(answer(7).body_len(), answer(40).body_len());
    }

    /// Whether a restored entry's metadata (usage) belongs to its body.
    fn consistent(found: &CachedResponse) -> bool {
        let reported =
            crate::entry::CachedResponse::new(&HeaderMap::new(), &found.body(), found.ttl);
        reported.usage == found.usage
    }

    #[tokio::test]
    async fn a_body_that_does_not_match_its_metadata_is_a_counted_miss() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut config = settings(&format!("file://{}", dir.path().display()));
        config.write_timeout = Duration::from_millis(100);
        let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
        let key = CacheKey([8; 32]);
        reserve.admit(key, &answer(1));
        written(&reserve, &metrics, 1).await;
        // Same length, other content: only a digest tells them apart.
        let (meta_path, body_path) = reserve.inner.paths(&key);
        reserve
            .inner
            .store
            .put(&body_path, PutPayload::from(answer(2).body()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            reserve.lookup(&key).await.is_none(),
            "a body that is not the one its metadata describes was served"
        );
        assert_eq!(metrics.reserve.mismatches.get(), 1);
        reserve.flush(Duration::from_secs(2)).await;
        assert!(matches!(
            reserve.inner.store.head(&meta_path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    /// A read computes an extension, a refresh lands, then the extension
    /// is written: it must not put the old metadata over the new body.
    async fn stale_extension_never_overwrites_a_refresh(url: &str) {
        let metrics = Arc::new(Metrics::new());
        let reserve = ReserveTier::open(&settings(url), Arc::clone(&metrics)).unwrap();
        let key = CacheKey([9; 32]);
        reserve.admit(key, &answer(1));
        written(&reserve, &metrics, 1).await;
        let (meta_path, _) = reserve.inner.paths(&key);
        let read = reserve.inner.store.get(&meta_path).await.unwrap();
        let version = object_store::UpdateVersion {
            e_tag: read.meta.e_tag.clone(),
            version: read.meta.version.clone(),
        };
        let mut old = Metadata::decode(&read.bytes().await.unwrap(), &key).unwrap();
        old.retention_until_ms += 1000;
        // Local files carry their modification time in the ETag; let it move.
        tokio::time::sleep(Duration::from_millis(20)).await;
        reserve.admit(key, &answer(2));
        written(&reserve, &metrics, 2).await;
        reserve
            .inner
            .run_job(Job::Extend {
                key,
                meta: Box::new(old),
                read: version,
            })
            .await;
        let found = reserve.lookup(&key).await.expect("the refresh is kept");
        assert_eq!(found.body(), answer(2).body(), "{url}");
        assert!(consistent(&found), "{url}: metadata of another body");
        assert_eq!(metrics.reserve.extensions.get(), 0, "{url}");
    }

    #[tokio::test]
    async fn a_stale_extension_never_overwrites_a_refresh() {
        stale_extension_never_overwrites_a_refresh("memory://").await;
        let dir = tempfile::tempdir().unwrap();
        stale_extension_never_overwrites_a_refresh(&format!("file://{}", dir.path().display()))
            .await;
    }

    #[tokio::test]
    async fn concurrent_refreshes_and_extensions_never_serve_mixed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut config = settings(&format!("file://{}", dir.path().display()));
        // Reads of an entry older than half its retention extend it.
        config.retention = Duration::from_secs(2);
        let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
        let key = CacheKey([10; 32]);
        reserve.admit(key, &answer(0));
        written(&reserve, &metrics, 1).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let writer = {
            let reserve = reserve.clone();
            tokio::spawn(async move {
                for n in 1..=40 {
                    reserve.admit(key, &answer(n));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let mut served = 0;
        for _ in 0..300 {
            if let Some(found) = reserve.lookup(&key).await {
                assert!(consistent(&found), "served a body with another's metadata");
                served += 1;
            }
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        reserve.flush(Duration::from_secs(5)).await;
        let last = reserve
            .lookup(&key)
            .await
            .expect("the last refresh is kept");
        assert!(consistent(&last));
        assert!(served > 0);
    }

    #[tokio::test]
    async fn sweep_removes_expired_and_counts_live() {
        let metrics = Arc::new(Metrics::new());
        let mut config = settings("memory://");
        config.sweep_batch = 3;
        let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
        for i in 0..4u8 {
            reserve.admit(CacheKey([10 + i; 32]), &entry(Duration::from_secs(60)));
        }
        reserve.admit(CacheKey([20; 32]), &entry(Duration::from_millis(1050)));
        written(&reserve, &metrics, 5).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut cursor = None;
        let mut census = (0, 0);
        // 10 objects, 3 per run: the census lands when a run reaches the end.
        for _ in 0..4 {
            cursor = reserve.inner.sweep(cursor, &mut census).await;
        }
        assert!(cursor.is_none());
        assert_eq!(reserve.census().entries, 4);
        assert_eq!(metrics.reserve.expired.get(), 1);
    }

    #[tokio::test]
    async fn sweep_removes_bodies_whose_metadata_never_arrived() {
        let metrics = Arc::new(Metrics::new());
        let mut config = settings("memory://");
        config.write_timeout = Duration::from_millis(10);
        let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
        let key = CacheKey([30; 32]);
        let (_, body_path) = reserve.inner.paths(&key);
        reserve
            .inner
            .store
            .put(&body_path, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        let kept = CacheKey([31; 32]);
        reserve.admit(kept, &entry(Duration::from_secs(60)));
        written(&reserve, &metrics, 1).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        reserve.inner.sweep(None, &mut (0, 0)).await;
        assert!(matches!(
            reserve.inner.store.head(&body_path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(
            reserve.lookup(&kept).await.is_some(),
            "complete entries stay"
        );
    }
}
