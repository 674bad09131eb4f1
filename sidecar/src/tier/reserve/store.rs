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

use super::metadata::Metadata;
use super::metadata::{decode_header, decode_object, encode_object, header_len, unix_ms, Keep};
use super::{Inner, Job, WRITE_CONCURRENCY};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;

/// How long the local writer lets jobs gather after it emptied the queue.
const LOCAL_WRITER_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The layout under the root, one rule for the store's paths and a local
/// store's files: the shard (the key's first two hex digits), then the
/// entry object's and its retention marker's names.
fn object_names(key: &CacheKey) -> (String, String, String) {
    let hex = key.to_string();
    (
        hex[..2].to_string(),
        format!("{hex}.entry"),
        format!("{hex}.keep"),
    )
}

/// Bytes read from the start of an entry object to find its metadata:
/// enough for any answer's headers, so one ranged read usually does.
const HEADER_PROBE_BYTES: u64 = 8 * 1024;

impl Inner {
    /// The entry object's path and its retention marker's.
    pub(super) fn paths(&self, key: &CacheKey) -> (Path, Path) {
        let (shard, entry, keep) = object_names(key);
        let shard = self.root.child(shard);
        (shard.child(entry), shard.child(keep))
    }

    /// Whether a local store certainly has no entry under `key`: one stat
    /// of its file, on the request's thread. Every miss asks the reserve,
    /// and a local store's read goes through the blocking pool, whose
    /// handoff costs far more than the stat; a stat needs only the
    /// directory, which the kernel keeps cached. Anything but "not found"
    /// leaves the answer to the store.
    pub(super) fn surely_absent(&self, key: &CacheKey) -> bool {
        let Some(root) = &self.local_root else {
            return false;
        };
        let (shard, entry, _) = object_names(key);
        let file = root.join(shard).join(entry);
        matches!(std::fs::symlink_metadata(file), Err(err) if err.kind() == std::io::ErrorKind::NotFound)
    }

    pub(super) fn failed(&self, operation: &'static str, err: &object_store::Error) {
        self.metrics.reserve.failures.inc();
        tracing::warn!(operation, error = %err, "reserve store operation failed; serving without it");
    }

    /// One write: metadata and body in one object.
    pub(super) async fn write(
        &self,
        key: &CacheKey,
        entry: &CachedResponse,
    ) -> Result<(), object_store::Error> {
        let (entry_path, _) = self.paths(key);
        let meta = Metadata::describe(key, entry, self.settings.retention);
        let (_, stored_body) = entry.stored_body();
        self.store
            .put(
                &entry_path,
                PutPayload::from(encode_object(&meta, &stored_body)),
            )
            .await
            .map(|_| ())
    }

    /// The retention a marker extends its entry to; 0 when there is none
    /// (or it cannot be read: the entry's own retention then holds).
    pub(super) async fn extended_until(&self, keep_path: &Path) -> u64 {
        match self.get_if_present(keep_path).await {
            Ok(Some(bytes)) => Keep::decode(&bytes).map_or(0, |keep| keep.retention_until_ms),
            Ok(None) => 0,
            Err(err) => {
                self.failed("read marker", &err);
                0
            }
        }
    }

    /// Extends an entry's retention with its marker; the body is not
    /// written. A marker only ever extends, so a late one cannot undo a
    /// refresh.
    async fn extend(&self, key: &CacheKey, until: Keep) -> Result<(), object_store::Error> {
        let (_, keep_path) = self.paths(key);
        self.store
            .put(&keep_path, PutPayload::from(until.encode()))
            .await
            .map(|_| ())
    }

    pub(super) async fn remove(&self, key: &CacheKey) -> Result<bool, object_store::Error> {
        let (entry_path, keep_path) = self.paths(key);
        let mut removed = false;
        for (path, counts) in [(entry_path, true), (keep_path, false)] {
            match self.store.delete(&path).await {
                Ok(()) => removed |= counts,
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
            Job::Extend { key, until } => match self.extend(&key, until).await {
                Ok(()) => {
                    reserve.extensions.inc();
                }
                Err(err) => self.failed("extend", &err),
            },
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
        // The entry listed last: its marker comes right after it.
        let mut last_entry: Option<String> = None;
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
            if let Some(hex) = name.strip_suffix(".keep") {
                if last_entry.as_deref() != Some(hex) {
                    self.remove_if_orphan(hex, &object).await;
                }
                continue;
            }
            let Some(key) = name.strip_suffix(".entry").and_then(CacheKey::from_hex) else {
                continue;
            };
            last_entry = Some(key.to_string());
            let live = match self.header_of(&object, &key).await {
                Ok(Some(meta)) => self.is_kept(&key, &meta, now).await,
                Ok(None) => false,
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
            self.sweep_legacy().await;
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
    pub(super) async fn get_if_present(
        &self,
        path: &Path,
    ) -> Result<Option<bytes::Bytes>, object_store::Error> {
        match self.store.get(path).await {
            Ok(found) => found.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The metadata of a listed entry object, reading only its first
    /// bytes; `None` when it is unreadable (another format, damaged).
    async fn header_of(
        &self,
        object: &object_store::ObjectMeta,
        key: &CacheKey,
    ) -> Result<Option<Metadata>, object_store::Error> {
        let size = object.size;
        let first = self
            .store
            .get_range(&object.location, 0..HEADER_PROBE_BYTES.min(size))
            .await?;
        let Some(end) = header_len(&first) else {
            return Ok(None);
        };
        if end as u64 <= first.len() as u64 {
            return Ok(decode_header(&first, key));
        }
        if end as u64 > size {
            return Ok(None);
        }
        let header = self
            .store
            .get_range(&object.location, 0..end as u64)
            .await?;
        Ok(decode_header(&header, key))
    }

    /// Whether a listed entry is kept at `now`, its marker included when
    /// its own retention has passed.
    async fn is_kept(&self, key: &CacheKey, meta: &Metadata, now: u64) -> bool {
        let keep_stale_ms = self.keep_stale_ms.load(Ordering::Relaxed);
        if meta.is_kept(now, keep_stale_ms, 0) {
            return true;
        }
        let (_, keep_path) = self.paths(key);
        meta.is_kept(now, keep_stale_ms, self.extended_until(&keep_path).await)
    }

    /// The key and metadata of a listed object, when it is an entry object
    /// in this format that still exists.
    async fn listed_metadata(
        &self,
        object: &object_store::ObjectMeta,
    ) -> Result<Option<(CacheKey, Metadata)>, object_store::Error> {
        let name = object.location.filename().unwrap_or_default();
        let Some(key) = name.strip_suffix(".entry").and_then(CacheKey::from_hex) else {
            return Ok(None);
        };
        match self.header_of(object, &key).await {
            Ok(meta) => Ok(meta.map(|meta| (key, meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
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
            let object = object?;
            let name = object.location.filename().unwrap_or_default();
            // The key is in the name: entries not wanted are never read.
            let Some(key) = name.strip_suffix(".entry").and_then(CacheKey::from_hex) else {
                continue;
            };
            if !wanted(&key) {
                continue;
            }
            let Some(bytes) = self.get_if_present(&object.location).await? else {
                continue;
            };
            let Some((meta, body)) = decode_object(bytes, &key) else {
                continue;
            };
            if !(meta.is_selected_by(filter) && self.is_kept(&key, &meta, now).await) {
                continue;
            }
            if let Some(received) = meta.restore(body) {
                if to.send((key, received.entry)).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Removes a marker whose entry is gone (removed while the marker was
    /// being written), once no write in flight can still add the entry.
    pub(super) async fn remove_if_orphan(&self, hex: &str, marker: &object_store::ObjectMeta) {
        let Some(key) = CacheKey::from_hex(hex) else {
            return;
        };
        let age = (chrono::Utc::now() - marker.last_modified)
            .to_std()
            .unwrap_or_default();
        if age < self.settings.write_timeout * 2 {
            return;
        }
        let (entry_path, _) = self.paths(&key);
        match self.store.head(&entry_path).await {
            Err(object_store::Error::NotFound { .. }) => {
                match self.store.delete(&marker.location).await {
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

    /// Removes objects of the two-object layout (`v1/`) older than the
    /// retention: they are no longer read, and nothing extends them. At
    /// most `sweep_batch` per full sweep; the listing's dates suffice.
    async fn sweep_legacy(&self) {
        let mut listing = self
            .store
            .list(Some(&self.legacy_root))
            .take(self.settings.sweep_batch);
        let retention =
            chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        let now = chrono::Utc::now();
        while let Some(item) = listing.next().await {
            let Ok(object) = item else {
                return;
            };
            if object.last_modified + retention < now {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => self.failed("sweep", &err),
                }
            }
        }
    }
}

/// Starts the writer that drains `queue`: a thread of its own for a local
/// store, tasks on the runtime for a remote one.
pub(super) fn start_writer(inner: Arc<Inner>, queue: mpsc::Receiver<Job>) -> std::io::Result<()> {
    if inner.local_root.is_some() {
        std::thread::Builder::new()
            .name("relaycache-reserve".into())
            .spawn(move || write_locally(inner, queue))?;
    } else {
        tokio::spawn(write_behind(inner, queue));
    }
    Ok(())
}

/// Writes a local store's jobs one after another on this thread, which
/// runs outside the tokio runtime: the local store then does its file
/// work right here. Inside the runtime it hands every operation to the
/// blocking pool, and on a miss that handoff (futex wakes and context
/// switches) cost as much CPU as creating, writing and renaming the file.
/// A local file system does not stall like a network store, so
/// `write_timeout` is not applied here.
fn write_locally(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
    let run = |job| {
        futures::executor::block_on(inner.run_job(job));
        inner.metrics.reserve.writes_in_flight.dec();
    };
    while let Some(job) = queue.blocking_recv() {
        run(job);
        while let Ok(job) = queue.try_recv() {
            run(job);
        }
        // Let jobs gather before waiting again: while the writer waits,
        // every queued job costs its request a wake-up of this thread.
        std::thread::sleep(LOCAL_WRITER_PAUSE);
    }
}

async fn write_behind(inner: Arc<Inner>, mut queue: mpsc::Receiver<Job>) {
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
