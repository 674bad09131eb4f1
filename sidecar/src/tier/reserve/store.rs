//! The reserve's work against the object store, off the request path:
//! the background writer (writes, retention extensions, removals) and
//! the sweeper that removes expired and orphaned objects and counts
//! what is held.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio::sync::{mpsc, Semaphore};

use super::metadata::unix_ms;
use super::metadata::Metadata;
use super::{Inner, Job, WRITE_CONCURRENCY};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;

impl Inner {
    pub(super) fn paths(&self, key: &CacheKey) -> (Path, Path) {
        let hex = key.to_string();
        let shard = self.root.child(&hex[..2]);
        (
            shard.child(format!("{hex}.meta")),
            shard.child(format!("{hex}.body")),
        )
    }

    pub(super) fn failed(&self, operation: &'static str, err: &object_store::Error) {
        self.metrics.reserve.failures.inc();
        tracing::warn!(operation, error = %err, "reserve store operation failed; serving without it");
    }

    pub(super) async fn write(
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

    pub(super) async fn put_meta(
        &self,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), object_store::Error> {
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
    pub(super) async fn extend(
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

    pub(super) async fn remove(&self, key: &CacheKey) -> Result<bool, object_store::Error> {
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

    pub(super) async fn run(&self, job: Job) {
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

    pub(super) async fn run_job(&self, job: Job) {
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
    pub(super) async fn sweep(
        &self,
        cursor: Option<Path>,
        census: &mut (u64, u64),
    ) -> Option<Path> {
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
    /// The bytes of the object at `path`; `None` when it is gone.
    async fn get_if_present(
        &self,
        path: &Path,
    ) -> Result<Option<bytes::Bytes>, object_store::Error> {
        match self.store.get(path).await {
            Ok(found) => found.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The key and decoded metadata of a listed object, when it is an
    /// entry's readable `.meta` that still exists.
    async fn listed_metadata(
        &self,
        object: &object_store::ObjectMeta,
    ) -> Result<Option<(CacheKey, Metadata)>, object_store::Error> {
        let name = object.location.filename().unwrap_or_default();
        let Some(key) = name.strip_suffix(".meta").and_then(CacheKey::from_hex) else {
            return Ok(None);
        };
        let Some(bytes) = self.get_if_present(&object.location).await? else {
            return Ok(None);
        };
        Ok(Metadata::decode(&bytes, &key).map(|meta| (key, meta)))
    }

    /// Removes every entry whose metadata `filter` selects; how many. Reads
    /// each entry's metadata object once.
    pub(super) async fn purge_matching(
        &self,
        filter: &EntryFilter,
    ) -> Result<u64, object_store::Error> {
        let mut listing = self.store.list(Some(&self.root));
        let mut removed = 0;
        while let Some(object) = listing.next().await {
            let Some((key, meta)) = self.listed_metadata(&object?).await? else {
                continue;
            };
            if meta.is_selected_by(filter) && self.remove(&key).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Sends every fresh entry `filter` selects to `to`, read without
    /// extending its retention (an export is not a use). Stops early when
    /// `to` is closed.
    pub(super) async fn export_matching(
        &self,
        filter: &EntryFilter,
        wanted: impl Fn(&CacheKey) -> bool,
        to: mpsc::Sender<(CacheKey, CachedResponse)>,
    ) -> Result<(), object_store::Error> {
        let mut listing = self.store.list(Some(&self.root));
        let now = unix_ms(SystemTime::now());
        while let Some(object) = listing.next().await {
            let Some((key, meta)) = self.listed_metadata(&object?).await? else {
                continue;
            };
            if !(meta.is_kept(now, 0) && meta.is_selected_by(filter) && wanted(&key)) {
                continue;
            }
            let (_, body_path) = self.paths(&key);
            let Some(body) = self.get_if_present(&body_path).await? else {
                continue;
            };
            if let Some(entry) = meta.restore(body) {
                if to.send((key, entry)).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Removes a body whose metadata never arrived (the process stopped
    /// between the two writes), once no write in flight can still add it.
    pub(super) async fn remove_if_orphan(&self, hex: &str, body: &object_store::ObjectMeta) {
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

pub(super) async fn write_behind(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(WRITE_CONCURRENCY));
    while let Some(job) = queue.recv().await {
        // Counted since `enqueue`, so that `flush` never sees a job
        // neither queued nor in flight while it waits for a slot.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            inner.metrics.reserve.writes_in_flight.dec();
            return;
        };
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            inner.run(job).await;
            inner.metrics.reserve.writes_in_flight.dec();
            drop(slot);
        });
    }
}

pub(super) async fn sweep_forever(inner: Arc<Inner>) {
    let mut cursor = None;
    let mut census = (0, 0);
    loop {
        cursor = inner.sweep(cursor, &mut census).await;
        tokio::time::sleep(inner.settings.sweep_interval).await;
    }
}
