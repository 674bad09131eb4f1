//! Answers kept compressed: the zstd codec entries are stored with in
//! memory, on peers and in the reserve, and the choice, per client, of
//! sending a hit as stored or decoded.
//!
//! Model answers are prose and JSON around it, which zstd shrinks about
//! 2.2 times at level 1; the memory budget then holds that many more
//! answers, and peers and the reserve move that many fewer bytes. A hit
//! goes to a client that accepts `zstd` exactly as stored; other clients
//! get it decoded, which costs microseconds per answer.

use std::cell::RefCell;

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::version::Version;
use relaycache_config::{Codec, CompressionConfig};

/// How a stored body is encoded (named so in the reserve's metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// As the upstream sent it.
    #[default]
    Identity,
    /// One zstd frame that names its decoded size and carries a checksum.
    Zstd,
}

/// Largest body a zstd frame from another process may decode to: as much
/// as one cluster message may carry uncompressed, so that a small frame
/// cannot make a member hold more than a plain message could. A frame
/// that claims more is refused unread.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// Bodies stored compressed must shrink by at least this fraction
/// (one eighth), or they are kept as received: decoding costs every hit
/// that does not accept zstd, and is worth it only for real savings.
const MIN_SAVING_DIVISOR: usize = 8;

/// The store's compression settings (`cache.compression`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    level: i32,
    min_bytes: usize,
}

impl Compression {
    /// The settings of a validated configuration; `None` when the codec is
    /// `none`.
    pub fn from_config(config: &CompressionConfig) -> Option<Self> {
        match config.codec {
            Codec::None => None,
            Codec::Zstd => Some(Self {
                level: config.level,
                min_bytes: usize::try_from(config.min_bytes).unwrap_or(usize::MAX),
            }),
        }
    }

    /// The zstd frame of `body`, when it is long enough and shrinks enough
    /// to be worth storing compressed; `None` keeps it as it is.
    pub fn compress(&self, body: &[u8]) -> Option<Vec<u8>> {
        if body.len() < self.min_bytes {
            return None;
        }
        let frame = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let compressor = match slot.as_mut() {
                Some((level, compressor)) if *level == self.level => compressor,
                _ => {
                    let mut compressor = zstd::bulk::Compressor::new(self.level).ok()?;
                    // A checksum, so that a damaged frame from a peer or the
                    // reserve is refused, not served as another answer.
                    compressor
                        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                        .ok()?;
                    &mut slot.insert((self.level, compressor)).1
                }
            };
            compressor.compress(body).ok()
        })?;
        (frame.len() <= body.len() - body.len() / MIN_SAVING_DIVISOR).then_some(frame)
    }
}

thread_local! {
    /// One compression context per thread, reused: a new one per answer
    /// would allocate its tables each time.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Why a stored body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame does not say how large it decodes to.
    #[error("the zstd frame does not name its decoded size")]
    UnknownSize,
    /// The frame decodes to more than [`MAX_DECODED_BYTES`].
    #[error("the zstd frame decodes to {0} bytes, more than any stored answer")]
    TooLarge(u64),
    /// The frame is damaged.
    #[error("the zstd frame is damaged: {0}")]
    Damaged(String),
}

/// The decoded size a zstd frame names, checked against
/// [`MAX_DECODED_BYTES`].
pub fn decoded_size(frame: &[u8]) -> Result<usize, DecodeError> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| DecodeError::Damaged("not a zstd frame".to_string()))?
        .ok_or(DecodeError::UnknownSize)?;
    match usize::try_from(size) {
        Ok(size) if size <= MAX_DECODED_BYTES => Ok(size),
        _ => Err(DecodeError::TooLarge(size)),
    }
}

/// Decodes a zstd frame that names its size; the result is exactly that
/// size, or an error.
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let size = decoded_size(frame)?;
    let body = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(decompressor) => decompressor,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|err| DecodeError::Damaged(err.to_string()))?,
            ),
        };
        decompressor
            .decompress(frame, size)
            .map_err(|err| DecodeError::Damaged(err.to_string()))
    })?;
    if body.len() == size {
        Ok(body)
    } else {
        Err(DecodeError::Damaged(format!(
            "it decoded to {} bytes, not the {size} it names",
            body.len()
        )))
    }
}

/// Whether a request's `accept-encoding` allows a zstd body: `zstd` or
/// `*` listed without `q=0`.
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    crate::headers::list_items(headers, http::header::ACCEPT_ENCODING).any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (name.eq_ignore_ascii_case("zstd") || name == "*") && !refused
    })
}

/// Marks a hit's headers as carrying a zstd body.
pub fn tag_zstd(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("zstd"),
    );
    tag_varies(headers);
}

/// Marks a hit of a compressed entry as depending on `accept-encoding`,
/// so that caches between here and the client key on it.
pub fn tag_varies(headers: &mut HeaderMap) {
    headers.append(
        http::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
}

/// Decoded bodies of the compressed answers hit most often by clients that
/// do not accept zstd, so that a hot answer is decoded once rather than on
/// every hit. Bounded in bytes; moka's admission keeps answers hit once
/// out. A copy is used only for the exact entry it was decoded from (same
/// version and creation time), so a refreshed answer is never served old.
pub struct DecodedAnswers {
    bodies: Option<moka::sync::Cache<CacheKey, DecodedBody>>,
}

#[derive(Clone)]
struct DecodedBody {
    version: Version,
    created: SystemTime,
    body: Bytes,
}

/// Bookkeeping per decoded copy, counted against its budget.
const DECODED_OVERHEAD: usize = 128;

impl DecodedAnswers {
    /// A cache of at most `budget` bytes of decoded bodies (none at 0).
    pub fn new(budget: u64) -> Self {
        let bodies = (budget > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(budget)
                .weigher(|_, decoded: &DecodedBody| {
                    u32::try_from(decoded.body.len() + DECODED_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { bodies }
    }

    /// The decoded body of `entry`, stored under `key`; `decoded`: that
    /// body, when the caller decoded it already (an entry just received,
    /// whose frame was decoded to check it), so it is not decoded again.
    pub fn body(&self, key: &CacheKey, entry: &CachedResponse, decoded: Option<Bytes>) -> Bytes {
        let decode = || decoded.unwrap_or_else(|| entry.body());
        let Some(bodies) = &self.bodies else {
            return decode();
        };
        let same_entry =
            |held: &DecodedBody| held.version == entry.version && held.created == entry.created;
        if let Some(held) = bodies.get(key).filter(same_entry) {
            return held.body;
        }
        let body = decode();
        bodies.insert(
            *key,
            DecodedBody {
                version: entry.version,
                created: entry.created,
                body: body.clone(),
            },
        );
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_on() -> Compression {
        Compression {
            level: 3,
            min_bytes: 64,
        }
    }

    fn prose(len: usize) -> Vec<u8> {
        let words = [
            "the", "cache", "answered", "before", "provider", "did", "and", "then",
        ];
        let mut text = String::new();
        let mut i = 0usize;
        while text.len() < len {
            text.push_str(words[(i * 7 + i / 3) % words.len()]);
            text.push(' ');
            i += 1;
        }
        text.into_bytes()
    }

    #[test]
    fn a_compressed_body_decodes_to_itself() {
        let body = prose(5000);
        let frame = zstd_on().compress(&body).expect("prose compresses");
        assert!(
            frame.len() < body.len() / 2,
            "{} of {}",
            frame.len(),
            body.len()
        );
        assert_eq!(decoded_size(&frame).unwrap(), body.len());
        assert_eq!(decompress(&frame).unwrap(), body);
    }

    /// An entry of `body` stored compressed.
    fn packed(body: &[u8]) -> CachedResponse {
        let entry =
            CachedResponse::new(&HeaderMap::new(), body, std::time::Duration::from_secs(60))
                .compressed(Some(&zstd_on()));
        assert_eq!(entry.stored_body().0, BodyEncoding::Zstd);
        entry
    }

    #[test]
    fn a_hot_answer_is_decoded_once_and_a_copy_decoded_already_is_not_decoded_again() {
        let body = prose(5000);
        let entry = packed(&body);
        let answers = DecodedAnswers::new(1 << 20);
        let key = CacheKey([1; 32]);
        assert_eq!(answers.body(&key, &entry, None), body, "decoded");
        // The copy given is what the caller decoded from this entry; a
        // marker in its place shows that it is served without a decode.
        let other_key = CacheKey([2; 32]);
        let given = Bytes::from_static(b"the copy the caller decoded");
        assert_eq!(answers.body(&other_key, &entry, Some(given.clone())), given);
        let uncached = DecodedAnswers::new(0);
        assert_eq!(uncached.body(&key, &entry, Some(given.clone())), given);
        assert_eq!(uncached.body(&key, &entry, None), body);
    }

    #[test]
    fn short_or_incompressible_bodies_stay_as_they_are() {
        assert_eq!(zstd_on().compress(&prose(40)), None, "under min_bytes");
        // Random bytes do not shrink by an eighth.
        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        assert_eq!(zstd_on().compress(&noise), None);
    }

    #[test]
    fn damaged_or_oversized_frames_are_refused() {
        let frame = zstd_on().compress(&prose(5000)).unwrap();
        let mut cut = frame.clone();
        cut.truncate(frame.len() - 5);
        assert!(matches!(decompress(&cut), Err(DecodeError::Damaged(_))));
        assert!(matches!(
            decompress(b"not zstd at all"),
            Err(DecodeError::Damaged(_))
        ));
        // A frame without its size (streamed) is refused, not guessed at.
        let mut unsized_frame = Vec::new();
        {
            use std::io::Write as _;
            let mut encoder = zstd::stream::write::Encoder::new(&mut unsized_frame, 3).unwrap();
            encoder.include_contentsize(false).unwrap();
            encoder.write_all(&prose(1000)).unwrap();
            encoder.finish().unwrap();
        }
        assert!(matches!(
            decompress(&unsized_frame),
            Err(DecodeError::UnknownSize)
        ));
        // A bomb: a small frame claiming a huge body.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_DECODED_BYTES + 1], 1).unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(decompress(&bomb), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn accept_encoding_is_read_as_http_says() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::ACCEPT_ENCODING, value.parse().unwrap());
            accepts_zstd(&headers)
        };
        assert!(accepts("zstd"));
        assert!(accepts("gzip, deflate, zstd"));
        assert!(accepts("gzip, ZSTD;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip, deflate, br"));
        assert!(!accepts("zstd;q=0"));
        assert!(!accepts("gzip, zstd; q=0.0"));
        assert!(!accepts("identity"));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }
}
