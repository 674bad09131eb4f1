//! Moving entries between caches: `GET /cache/export` streams a bundle of
//! the entries a filter selects, `POST /cache/import` stores a bundle's
//! entries. Neither holds the bundle whole: export encodes as it reads
//! the tiers, import decodes as the body arrives.
//!
//! What each covers: memory, then at a cluster member every other live
//! member's memory (through `Scan`), then the reserve; each key once, the
//! first copy found. At a cluster member, imported entries are replicated
//! to their owners like answers from the upstream, and an owner keeps a
//! newer version it holds. A client exports and imports only its own
//! memory and reserve: the cluster's entries are readable only by members.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::body::{boxed, BoxError, ProxyBody};
use crate::bundle::{BundleError, BundleReader, BundleWriter, BundledEntry, ChunkReader};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::tiers::Tiers;

/// Compressed bytes sent to the client at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// How long the rest of a refused bundle is read before the answer goes
/// out anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Entries decoded ahead of being stored.
const IMPORT_QUEUE: usize = 256;

/// Imported entries being written to their cluster owners at once: enough
/// to overlap the calls, few enough that none of them times out behind
/// the others.
const WRITES_IN_FLIGHT: usize = 32;

/// The content type of a bundle.
pub const BUNDLE_CONTENT_TYPE: &str = "application/vnd.relaycache.bundle";

/// The limits an imported entry is held to, as answers from the upstream.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// `cache.max_ttl`.
    pub max_ttl: Duration,
    /// `cache.max_entry_bytes`.
    pub max_entry_bytes: u64,
}

/// The answer to an export: the bundle, streamed as it is written.
pub fn export(tiers: Tiers, filter: EntryFilter) -> Response<ProxyBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        if let Err(err) = write_export(&tiers, &filter, &tx).await {
            tracing::warn!(error = %err, "export stopped; the bundle sent lacks its end, so an import reports it as cut off");
            let _ = tx.send(Err(Box::new(err))).await;
        }
    });
    let stream = tokio_stream_of(rx);
    let mut response = Response::new(boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(BUNDLE_CONTENT_TYPE),
    );
    response
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn write_export(
    tiers: &Tiers,
    filter: &EntryFilter,
    tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) -> io::Result<()> {
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped reading");
    let mut writer = BundleWriter::new(Vec::new())?;
    let mut sent: HashSet<CacheKey> = HashSet::new();
    for (key, entry) in tiers.memory().entries() {
        if filter.matches(&entry) {
            writer.entry(&key, &entry)?;
            sent.insert(key);
            send_ready(&mut writer, tx).await.map_err(|_| closed())?;
        }
    }
    if let Some(cluster) = tiers.cluster().filter(|cluster| !cluster.is_client()) {
        let (found_tx, found) = mpsc::channel::<(CacheKey, CachedResponse)>(64);
        let cluster = Arc::clone(cluster);
        let scan_filter = filter.clone();
        let scan =
            tokio::spawn(async move { cluster.scan_other_members(&scan_filter, found_tx).await });
        write_found(&mut writer, &mut sent, found, scan, tx).await?;
    }
    if let Some(reserve) = tiers.reserve() {
        let (found_tx, found) = mpsc::channel::<(CacheKey, CachedResponse)>(64);
        let reserve = reserve.clone();
        let scan_filter = filter.clone();
        let scan = tokio::spawn(async move {
            reserve
                .export_matching(&scan_filter, |_| true, found_tx)
                .await
                .map_err(|err| err.to_string())
        });
        write_found(&mut writer, &mut sent, found, scan, tx).await?;
    }
    let entries = writer.entries();
    let tail = writer.finish_into()?;
    if !tail.is_empty() {
        tx.send(Ok(Frame::data(Bytes::from(tail))))
            .await
            .map_err(|_| closed())?;
    }
    tracing::info!(%filter, entries, "exported");
    Ok(())
}

/// Writes the entries a scan finds that were not sent yet, then reports
/// how the scan ended.
async fn write_found(
    writer: &mut BundleWriter<Vec<u8>>,
    sent: &mut HashSet<CacheKey>,
    mut found: mpsc::Receiver<(CacheKey, CachedResponse)>,
    scan: tokio::task::JoinHandle<Result<(), String>>,
    tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) -> io::Result<()> {
    while let Some((key, entry)) = found.recv().await {
        if sent.insert(key) {
            writer.entry(&key, &entry)?;
            send_ready(writer, tx).await.map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped reading")
            })?;
        }
    }
    match scan.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(io::Error::other(err)),
        Err(err) => Err(io::Error::other(err.to_string())),
    }
}

/// Sends what the writer has compressed once there is a chunk of it.
async fn send_ready(
    writer: &mut BundleWriter<Vec<u8>>,
    tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) -> Result<(), mpsc::error::SendError<Result<Frame<Bytes>, BoxError>>> {
    if writer.output_len() >= CHUNK_BYTES {
        let chunk = writer.take_output();
        tx.send(Ok(Frame::data(Bytes::from(chunk)))).await?;
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ImportSummary {
    /// Entry records read whole.
    pub records: u64,
    /// Entries stored.
    pub imported: u64,
    /// Entries not stored because a newer version is held.
    pub kept_newer: u64,
    /// Entries that expired before they arrived.
    pub expired: u64,
    /// Entries over `cache.max_entry_bytes`.
    pub too_large: u64,
    /// Whether the bundle was read to its end.
    pub complete: bool,
    /// Why it was not, naming the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads a bundle from a request body, storing each entry as it is decoded.
pub async fn import(tiers: &Tiers, body: Incoming, limits: ImportLimits) -> ImportSummary {
    // The decoder runs on a blocking thread; waiting for it to take each
    // chunk is what bounds the memory an import holds.
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(16);
    // Once the decoder stops (a bundle of another format, a damaged
    // record), the rest of the body is still read and dropped as it comes:
    // a client still sending would otherwise see its connection reset
    // instead of the summary that says what was wrong.
    let feeder = tokio::spawn(async move {
        let mut body = body;
        let mut decoding = true;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let (true, Ok(data)) = (decoding, frame.into_data()) {
                decoding = chunk_tx.send(data).await.is_ok();
            }
        }
    });
    let (entry_tx, mut entries) = mpsc::channel::<Result<BundledEntry, BundleError>>(IMPORT_QUEUE);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader::new(chunk_rx);
        let mut bundle = match BundleReader::new(reader) {
            Ok(bundle) => bundle,
            Err(err) => {
                let _ = entry_tx.blocking_send(Err(err));
                return;
            }
        };
        loop {
            match bundle.next_entry() {
                Ok(Some(entry)) => {
                    if entry_tx.blocking_send(Ok(entry)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    let _ = entry_tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    let mut summary = ImportSummary::default();
    let mut writing = FuturesUnordered::new();
    while let Some(next) = entries.recv().await {
        match next {
            Ok(bundled) => {
                summary.records += 1;
                if let Some(write) = store(tiers, bundled, limits, &mut summary).await {
                    writing.push(write);
                }
                if writing.len() >= WRITES_IN_FLIGHT {
                    writing.next().await;
                }
            }
            Err(err) => {
                summary.error = Some(err.to_string());
                break;
            }
        }
    }
    drop(entries);
    while writing.next().await.is_some() {}
    let _ = decoder.await;
    if tokio::time::timeout(DRAIN_TIMEOUT, feeder).await.is_err() {
        tracing::warn!("an import's client kept sending after the bundle ended; answering anyway");
    }
    summary.complete = summary.error.is_none();
    summary
}

/// Checks one imported entry, and returns its write unless it expired, is
/// too large, or a newer version of it is held.
async fn store<'a>(
    tiers: &'a Tiers,
    bundled: BundledEntry,
    limits: ImportLimits,
    summary: &mut ImportSummary,
) -> Option<impl std::future::Future<Output = ()> + 'a> {
    let BundledEntry { key, entry } = bundled;
    let entry = entry.limited(limits.max_ttl);
    if !entry.is_fresh() {
        summary.expired += 1;
        return None;
    }
    if entry.body_len() as u64 > limits.max_entry_bytes {
        summary.too_large += 1;
        return None;
    }
    let held = match tiers.memory().lookup(&key) {
        Some(held) => Some(held),
        None => match tiers.reserve() {
            Some(reserve) => reserve.lookup(&key).await,
            None => None,
        },
    };
    if held.is_some_and(|held| is_newer_or_same(&held, &entry)) {
        summary.kept_newer += 1;
        return None;
    }
    summary.imported += 1;
    Some(tiers.store_and_replicate(key, Arc::new(tiers.compress(entry))))
}

/// Whether `held` is at least as new as `arriving`: by cluster version,
/// then (outside a cluster, where versions are zero) by creation time.
fn is_newer_or_same(held: &CachedResponse, arriving: &CachedResponse) -> bool {
    (held.version, held.created) >= (arriving.version, arriving.created)
}

/// The status of an import's answer: 200 when whole, 422 when the bundle
/// was damaged or cut (what was read before is kept and counted).
pub fn import_status(summary: &ImportSummary) -> StatusCode {
    if summary.complete {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}
