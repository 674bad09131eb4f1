//! Bundles: entries exported from one cache and imported into another, as
//! one stream that neither side holds whole in memory.
//!
//! Layout (format 1):
//!
//! ```text
//! "RCBUNDLE" (8 bytes) | format: u16 LE | flags: u16 LE (0)     -- not compressed
//! zstd stream of records, each:
//!   length: u32 LE | payload (length bytes) | BLAKE3 of the payload (32 bytes)
//! payload: kind: u8, then
//!   1 = entry:  meta length: u32 LE | meta (JSON, EntryMeta) | header block | body
//!   2 = end:    JSON {"entries": N}
//! ```
//!
//! The header comes first and uncompressed, so a bundle of another format
//! is named as such before anything is decoded. Every record carries its
//! own digest, so damage is reported with the record's number, and every
//! good record before it is kept. A bundle without its end record was cut
//! off.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::compression::BodyEncoding;
use crate::entry::CachedResponse;
use crate::key::{CacheKey, Tenant};
use crate::version::Version;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"RCBUNDLE";

/// The bundle format this version writes and reads.
pub const FORMAT: u16 = 1;

/// The zstd level bundles are written with: answers are text, and level 3
/// keeps export bound by the network rather than the CPU.
const ZSTD_LEVEL: i32 = 3;

/// Largest record read: an entry is at most `cache.max_entry_bytes` plus
/// its headers; this bounds what a damaged length can make a reader
/// allocate.
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;

/// Records between flushes of the compressor: a cut bundle keeps every
/// record up to the last flush, so this bounds what a cut loses.
const FLUSH_EVERY_RECORDS: u64 = 64;

/// Payload bytes between flushes, for large entries.
const FLUSH_EVERY_BYTES: usize = 1024 * 1024;

const ENTRY_RECORD: u8 = 1;
const END_RECORD: u8 = 2;

/// What a bundle says about an entry besides its header block and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The cache key, hex.
    pub key: String,
    /// When the upstream answered, ms since the Unix epoch.
    pub created_ms: u64,
    /// How long after `created_ms` it may be served, ms.
    pub ttl_ms: u64,
    /// Its version (zero outside a cluster).
    pub version: (u64, u32, u64),
    /// The tenant id, hex, when known.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The request's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Length of the header block.
    pub header_len: u32,
    /// Length of the body.
    pub body_len: u32,
}

/// Why a bundle could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle at all.
    #[error("this is not a relaycache bundle (it does not start with RCBUNDLE)")]
    NotABundle,
    /// A bundle of a format this version does not read.
    #[error("bundle format {found} is not supported; this relaycache reads format {FORMAT} (export it again with this version)")]
    Format {
        /// The format the bundle says it has.
        found: u16,
    },
    /// The stream ended inside record `record`, or before the end record.
    #[error("the bundle is cut off at record {record}; the {kept} record(s) before it are whole")]
    Truncated {
        /// The 1-based number of the record that is incomplete.
        record: u64,
        /// Records read whole before it.
        kept: u64,
    },
    /// Record `record` does not match its digest or cannot be decoded.
    #[error("record {record} is damaged ({reason}); the {kept} record(s) before it are whole")]
    Damaged {
        /// The 1-based number of the damaged record.
        record: u64,
        /// Records read whole before it.
        kept: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One entry as a bundle carries it.
#[derive(Debug, Clone)]
pub struct BundledEntry {
    /// Its key.
    pub key: CacheKey,
    /// The entry.
    pub entry: CachedResponse,
}

/// Writes a bundle record by record.
pub struct BundleWriter<W: Write> {
    out: zstd::stream::write::Encoder<'static, W>,
    entries: u64,
    unflushed: usize,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<W: Write> BundleWriter<W> {
    /// Starts a bundle: writes the header.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        out.write_all(&0u16.to_le_bytes())?;
        Ok(Self {
            out: zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?,
            entries: 0,
            unflushed: 0,
        })
    }

    /// Writes one entry.
    pub fn entry(&mut self, key: &CacheKey, entry: &CachedResponse) -> io::Result<()> {
        let header_block = entry.header_block();
        let body = entry.body();
        let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "entry over 4 GiB");
        let meta = EntryMeta {
            key: key.to_string(),
            created_ms: unix_ms(entry.created),
            ttl_ms: u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX),
            version: (
                entry.version.wall_ms,
                entry.version.counter,
                entry.version.origin,
            ),
            tenant: entry.tenant.as_ref().map(Tenant::id),
            namespace: entry.namespace.as_deref().map(str::to_string),
            header_len: u32::try_from(header_block.len()).map_err(|_| too_large())?,
            body_len: u32::try_from(body.len()).map_err(|_| too_large())?,
        };
        let meta = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let mut payload = Vec::with_capacity(5 + meta.len() + header_block.len() + body.len());
        payload.push(ENTRY_RECORD);
        payload.extend_from_slice(
            &u32::try_from(meta.len())
                .map_err(|_| too_large())?
                .to_le_bytes(),
        );
        payload.extend_from_slice(&meta);
        payload.extend_from_slice(&header_block);
        payload.extend_from_slice(&body);
        self.record(&payload)?;
        self.entries += 1;
        self.unflushed += payload.len();
        if self.entries.is_multiple_of(FLUSH_EVERY_RECORDS) || self.unflushed >= FLUSH_EVERY_BYTES {
            self.out.flush()?;
            self.unflushed = 0;
        }
        Ok(())
    }

    fn record(&mut self, payload: &[u8]) -> io::Result<()> {
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_RECORD_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        self.out.write_all(&length.to_le_bytes())?;
        self.out.write_all(payload)?;
        self.out.write_all(blake3::hash(payload).as_bytes())
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the end record and finishes the stream; the number of entries.
    pub fn finish(self) -> io::Result<u64> {
        let entries = self.entries;
        self.finish_into()?;
        Ok(entries)
    }

    /// Writes the end record, finishes the stream and gives the output back.
    pub fn finish_into(mut self) -> io::Result<W> {
        let mut payload = vec![END_RECORD];
        payload.extend_from_slice(
            serde_json::json!({"entries": self.entries})
                .to_string()
                .as_bytes(),
        );
        self.record(&payload)?;
        let mut out = self.out.finish()?;
        out.flush()?;
        Ok(out)
    }
}

impl BundleWriter<Vec<u8>> {
    /// Compressed bytes written so far and not yet taken.
    pub fn output_len(&self) -> usize {
        self.out.get_ref().len()
    }

    /// Takes the compressed bytes written so far; the bundle goes on in
    /// the emptied buffer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(self.out.get_mut())
    }
}

/// Reads a bundle record by record.
pub struct BundleReader<R: Read> {
    input: zstd::stream::read::Decoder<'static, io::BufReader<R>>,
    /// Records read whole.
    read: u64,
    ended: bool,
}

impl<R: Read> BundleReader<R> {
    /// Opens a bundle: checks its header.
    pub fn new(mut input: R) -> Result<Self, BundleError> {
        let mut header = [0u8; 12];
        if let Err(err) = input.read_exact(&mut header) {
            return Err(match err.kind() {
                io::ErrorKind::UnexpectedEof => BundleError::NotABundle,
                _ => BundleError::Io(err),
            });
        }
        if &header[..8] != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let found = u16::from_le_bytes([header[8], header[9]]);
        if found != FORMAT {
            return Err(BundleError::Format { found });
        }
        Ok(Self {
            input: zstd::stream::read::Decoder::new(input)?,
            read: 0,
            ended: false,
        })
    }

    /// Entry records read whole so far.
    pub fn records_read(&self) -> u64 {
        self.read
    }

    fn truncated(&self) -> BundleError {
        BundleError::Truncated {
            record: self.read + 1,
            kept: self.read,
        }
    }

    fn damaged(&self, reason: impl Into<String>) -> BundleError {
        BundleError::Damaged {
            record: self.read + 1,
            kept: self.read,
            reason: reason.into(),
        }
    }

    /// Fills `buffer`, or says the bundle was cut off (a damaged zstd
    /// frame reads as damage).
    fn fill(&mut self, buffer: &mut [u8]) -> Result<(), BundleError> {
        match self.input.read_exact(buffer) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated()),
            Err(err) if err.kind() == io::ErrorKind::Other => Err(self.damaged(err.to_string())),
            Err(err) => Err(BundleError::Io(err)),
        }
    }

    /// The next entry, or `None` after the end record.
    pub fn next_entry(&mut self) -> Result<Option<BundledEntry>, BundleError> {
        if self.ended {
            return Ok(None);
        }
        let mut length = [0u8; 4];
        self.fill(&mut length)?;
        let length = u32::from_le_bytes(length);
        if length == 0 || length > MAX_RECORD_BYTES {
            return Err(self.damaged(format!("a record length of {length} bytes")));
        }
        let mut payload = vec![0u8; length as usize];
        self.fill(&mut payload)?;
        let mut digest = [0u8; 32];
        self.fill(&mut digest)?;
        if blake3::hash(&payload).as_bytes() != &digest {
            return Err(self.damaged("its digest does not match"));
        }
        let decoded = match payload[0] {
            ENTRY_RECORD => self.decode_entry(&payload[1..]).map(Some),
            END_RECORD => {
                self.ended = true;
                Ok(None)
            }
            kind => Err(self.damaged(format!("unknown record kind {kind}"))),
        };
        if matches!(decoded, Ok(Some(_))) {
            self.read += 1;
        }
        decoded
    }

    fn decode_entry(&self, payload: &[u8]) -> Result<BundledEntry, BundleError> {
        let meta_len = payload
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| self.damaged("an entry without its metadata"))?;
        let meta_bytes = payload
            .get(4..4 + meta_len)
            .ok_or_else(|| self.damaged("metadata longer than its record"))?;
        let meta: EntryMeta = serde_json::from_slice(meta_bytes)
            .map_err(|err| self.damaged(format!("metadata: {err}")))?;
        let rest = &payload[4 + meta_len..];
        let (header_len, body_len) = (meta.header_len as usize, meta.body_len as usize);
        if rest.len() != header_len + body_len {
            return Err(self.damaged("lengths that do not add up to the record"));
        }
        let key = CacheKey::from_hex(&meta.key).ok_or_else(|| self.damaged("a malformed key"))?;
        let created = UNIX_EPOCH + Duration::from_millis(meta.created_ms);
        let version = Version {
            wall_ms: meta.version.0,
            counter: meta.version.1,
            origin: meta.version.2,
        };
        let mut entry = CachedResponse::received(
            &rest[..header_len],
            BodyEncoding::Identity,
            &rest[header_len..],
            created,
            Duration::from_millis(meta.ttl_ms),
            version,
        )
        .ok_or_else(|| self.damaged("a malformed header block"))?
        .entry;
        entry.tenant = meta.tenant.as_deref().and_then(Tenant::from_id);
        entry.namespace = meta.namespace.as_deref().map(Arc::from);
        Ok(BundledEntry { key, entry })
    }
}

/// A `Read` over chunks an async task hands over, for decoding a bundle
/// on a blocking thread as it arrives. Must be read outside the async
/// runtime's workers (`spawn_blocking`, or a thread of its own).
pub struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChunkReader {
    /// Reads the chunks `chunks` receives, in order, until it closes.
    pub fn new(chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        Self {
            chunks,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buffer.len().min(self.current.len());
        buffer[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn entry(i: u32) -> (CacheKey, CachedResponse) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let body = format!(r#"{{"model":"m","n":{i},"usage":{{"input_tokens":{i}}}}}"#);
        let mut entry = CachedResponse::new(&headers, body.as_bytes(), Duration::from_secs(600));
        entry.namespace = i.is_multiple_of(2).then(|| Arc::from("even"));
        entry.tenant = Tenant::from_id(&format!("{i:064x}"));
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        (CacheKey(key), entry)
    }

    fn bundle(count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = BundleWriter::new(&mut out).unwrap();
        for i in 0..count {
            let (key, entry) = entry(i);
            writer.entry(&key, &entry).unwrap();
        }
        assert_eq!(writer.entries(), u64::from(count));
        assert_eq!(writer.finish().unwrap(), u64::from(count));
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<BundledEntry>, Option<BundleError>) {
        let mut reader = match BundleReader::new(bytes) {
            Ok(reader) => reader,
            Err(err) => return (Vec::new(), Some(err)),
        };
        let mut entries = Vec::new();
        loop {
            match reader.next_entry() {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => return (entries, None),
                Err(err) => return (entries, Some(err)),
            }
        }
    }

    #[test]
    fn entries_round_trip_with_their_scope_and_version() {
        let originals: Vec<(CacheKey, CachedResponse)> = (0..50).map(entry).collect();
        let mut bytes = Vec::new();
        let mut writer = BundleWriter::new(&mut bytes).unwrap();
        for (key, entry) in &originals {
            writer.entry(key, entry).unwrap();
        }
        writer.finish().unwrap();
        let (entries, error) = read_all(&bytes);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(entries.len(), 50);
        for (read, (key, original)) in entries.iter().zip(&originals) {
            let key = *key;
            assert_eq!(read.key, key);
            assert_eq!(read.entry.body(), original.body());
            assert_eq!(read.entry.headers(), original.headers());
            assert_eq!(read.entry.namespace, original.namespace);
            assert_eq!(read.entry.tenant, original.tenant);
            assert_eq!(read.entry.usage, original.usage);
            assert_eq!(unix_ms(read.entry.created), unix_ms(original.created));
        }
    }

    #[test]
    fn a_cut_bundle_keeps_every_whole_record_and_names_the_cut_one() {
        let bytes = bundle(200);
        let (entries, error) = read_all(&bytes[..bytes.len() / 2]);
        match error {
            Some(BundleError::Truncated { record, kept }) => {
                assert_eq!(kept, entries.len() as u64);
                assert_eq!(record, kept + 1);
                assert!(kept > 0 && kept < 200, "{kept}");
            }
            other => panic!("expected a cut bundle, got {other:?}"),
        }
        // Cut exactly before the end record: every entry, then the cut.
        let (entries, error) = read_all(&bytes[..bytes.len() - 1]);
        assert!(
            matches!(
                error,
                Some(BundleError::Truncated { .. }) | Some(BundleError::Damaged { .. })
            ),
            "{error:?}"
        );
        assert!(entries.len() >= 190, "{}", entries.len());
    }

    #[test]
    fn another_format_and_other_files_are_refused_by_name() {
        let mut bytes = bundle(3);
        bytes[8] = 2;
        assert!(matches!(
            read_all(&bytes).1,
            Some(BundleError::Format { found: 2 })
        ));
        let text = read_all(b"{\"not\": \"a bundle\"}").1.unwrap().to_string();
        assert!(text.contains("not a relaycache bundle"), "{text}");
        assert!(matches!(read_all(b"RC").1, Some(BundleError::NotABundle)));
    }

    #[test]
    fn a_flipped_byte_is_damage_at_its_record() {
        // An uncompressible bundle would be needed to flip a byte of a
        // record's payload; flipping inside the zstd stream is reported as
        // damage (or a cut) at the record being read, never as success.
        let bytes = bundle(100);
        for at in [40, bytes.len() / 3, bytes.len() / 2] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x55;
            let (entries, error) = read_all(&damaged);
            let error = error.unwrap_or_else(|| panic!("byte {at}: read as whole"));
            assert!(
                matches!(
                    error,
                    BundleError::Damaged { .. } | BundleError::Truncated { .. }
                ),
                "{error:?}"
            );
            assert!(entries.len() < 100);
        }
    }
}
