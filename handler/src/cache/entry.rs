//! A finished response as stored: gzipped once, with its ETag; a plain and a brotli copy made
//! once per instance when clients ask for them.

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;

use super::Stamp;
use super::fresh::PageEnd;

/// Compressed size up to which an entry also keeps its uncompressed body (lists and items do;
/// whole-dataset exports do not, so caching them never multiplies their size in memory).
pub const SMALL_ENTRY_BYTES: usize = 1 << 20;
/// Uncompressed size up to which any entry, once a client without gzip asks for it, keeps its
/// plain body too (a 5 MB export is then served at the speed of its bytes, not of inflate).
pub const PLAIN_KEEP_BYTES: usize = 32 << 20;
/// Uncompressed sizes for which a brotli copy is made (below, it saves a few dozen bytes; above,
/// the answer is not held whole).
const BROTLI_SIZES: std::ops::RangeInclusive<u64> = 1024..=PLAIN_KEEP_BYTES as u64;
/// Brotli quality 5 and a 4 MiB window: smaller than gzip at level 9, made at about gzip -6's
/// speed (measured in bench/README.md); made once per entry, so a higher quality could pay, but
/// a 5 MB export at 11 takes seconds of a core.
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
/// Brotli copies made at once per instance (each takes a blocking thread until done): a client
/// asking for many large answers at once cannot take every core.
static BROTLI_SLOTS: LazyLock<Arc<tokio::sync::Semaphore>> =
    LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(1)));

/// How a data GET was answered, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Not cached at all (exports, for now), or the cache is unreachable.
    Bypass,
    /// The database failed; this is the last good answer, past its freshness.
    Stale,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Bypass => "BYPASS",
            Outcome::Stale => "STALE",
        }
    }
}

#[derive(Debug)]
pub struct CachedResponse {
    pub gzip_body: Bytes,
    /// The uncompressed body, kept for clients that do not accept gzip: known when this instance
    /// computed the answer, decompressed once on first need when it came from Redis.
    plain: std::sync::OnceLock<Bytes>,
    /// The body compressed with brotli, once a client asked for it (see [`Self::brotli_or_start`]).
    brotli: std::sync::OnceLock<Bytes>,
    /// Whether a request has started making the brotli copy.
    brotli_started: AtomicBool,
    /// Whether the memory tier holds this entry: only then is a brotli copy worth making (an
    /// entry held by nobody after its response would have it made again for every request).
    kept: AtomicBool,
    pub content_type: String,
    /// Strong validator of the uncompressed body: `"<length>-<crc32>"`, the same on every instance.
    pub etag: String,
    /// The validator of the gzipped representation (`"<length>-<crc32>-gzip"`): a byte range of
    /// one encoding must never be resumed from the other.
    pub gzip_etag: String,
    /// The validator of the brotli representation (`"<length>-<crc32>-br"`).
    pub brotli_etag: String,
    pub compute_time: Duration,
    pub stamp: Stamp,
    /// When the answer stops being fresh (Unix milliseconds); it is kept a while longer to be
    /// served as STALE if the database fails.
    pub expires_at_ms: u64,
    /// For a page followed by another: where it ends, so writes beyond it leave it alone.
    pub page_end: Option<PageEnd>,
    /// The last write (of the stamp's epoch) already checked against this copy and found not to
    /// change it, so the next check reads only the writes after it. Kept in memory only.
    pub checked_through: std::sync::atomic::AtomicU64,
}

pub fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

impl CachedResponse {
    pub fn new(
        body: impl Into<Vec<u8>>,
        content_type: &str,
        compute_time: Duration,
        stamp: Stamp,
        ttl: Duration,
    ) -> Self {
        let mut body = body.into();
        // The memory tier counts the length: a body built with room to spare gives it back.
        body.shrink_to_fit();
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        let mut gzip = super::gzip::gzip(&body, crc.sum());
        gzip.shrink_to_fit();
        let gzip_body = Bytes::from(gzip);
        let len = body.len();
        CachedResponse {
            gzip_body,
            plain: std::sync::OnceLock::from(Bytes::from(body)),
            brotli: std::sync::OnceLock::new(),
            brotli_started: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            content_type: content_type.to_owned(),
            gzip_etag: format!("\"{len}-{:08x}-gzip\"", crc.sum()),
            brotli_etag: format!("\"{len}-{:08x}-br\"", crc.sum()),
            etag: format!("\"{len}-{:08x}\"", crc.sum()),
            compute_time,
            stamp,
            expires_at_ms: unix_ms()
                .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            page_end: None,
            checked_through: std::sync::atomic::AtomicU64::new(stamp.seq),
        }
    }

    /// An answer that was gzipped while it streamed (an export): the uncompressed body is never
    /// held in memory, only its length and CRC for the ETag.
    pub fn from_gzip(
        gzip_body: Bytes,
        plain_len: u64,
        crc: u32,
        content_type: &str,
        compute_time: Duration,
        stamp: Stamp,
        ttl: Duration,
    ) -> Self {
        CachedResponse {
            gzip_body,
            plain: std::sync::OnceLock::new(),
            brotli: std::sync::OnceLock::new(),
            brotli_started: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            content_type: content_type.to_owned(),
            gzip_etag: format!("\"{plain_len}-{crc:08x}-gzip\""),
            brotli_etag: format!("\"{plain_len}-{crc:08x}-br\""),
            etag: format!("\"{plain_len}-{crc:08x}\""),
            compute_time,
            stamp,
            expires_at_ms: unix_ms()
                .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            page_end: None,
            checked_through: std::sync::atomic::AtomicU64::new(stamp.seq),
        }
    }

    /// The answer is a page that ends at `end` (see [`PageEnd`]).
    pub fn ending_at(mut self, end: Option<PageEnd>) -> Self {
        self.page_end = end;
        self
    }

    /// The length of the uncompressed body (what its ETag records).
    pub fn plain_len(&self) -> u64 {
        parse_etag(&self.etag).map_or(0, |(len, _)| len)
    }

    /// Whether the uncompressed body may be kept in memory beside the compressed one.
    pub fn is_small(&self) -> bool {
        self.gzip_body.len() <= SMALL_ENTRY_BYTES
    }

    /// The whole body for a client that does not accept gzip: decompressed on first need and
    /// kept beside the compressed bytes (and counted with them), so every later plain hit is
    /// served as stored bytes; `None` beyond [`PLAIN_KEEP_BYTES`] (decompressed as it is sent).
    pub fn plain_body(&self) -> Option<Bytes> {
        if let Some(plain) = self.plain.get() {
            return Some(plain.clone());
        }
        let (len, _) = parse_etag(&self.etag)?;
        if len > PLAIN_KEEP_BYTES as u64 {
            return None;
        }
        let plain = gunzip_checked(&self.gzip_body, &self.etag)?;
        Some(self.plain.get_or_init(|| plain).clone())
    }

    /// The brotli copy, if it is made; otherwise, if the answer is worth one and a slot is free,
    /// starts making it on a blocking thread (this request is answered in another encoding, the
    /// next ones in brotli). Made once per entry, and counted in its size from then on.
    pub fn brotli_or_start(self: &Arc<Self>) -> Option<Bytes> {
        if let Some(brotli) = self.brotli.get() {
            return Some(brotli.clone());
        }
        if !BROTLI_SIZES.contains(&self.plain_len())
            || !self.kept.load(Ordering::Relaxed)
            || self.brotli_started.load(Ordering::Relaxed)
        {
            return None;
        }
        let slot = Arc::clone(&BROTLI_SLOTS).try_acquire_owned().ok()?;
        if self.brotli_started.swap(true, Ordering::AcqRel) {
            return None;
        }
        let entry = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if let Some(brotli) = entry.compress_brotli() {
                let _ = entry.brotli.set(brotli);
            }
        });
        None
    }

    /// The brotli copy if it is made, without starting one.
    pub fn brotli_made(&self) -> Option<Bytes> {
        self.brotli.get().cloned()
    }

    /// The memory tier holds this entry (see `kept`).
    pub fn mark_kept(&self) {
        self.kept.store(true, Ordering::Relaxed);
    }

    /// The body compressed with brotli (`None` if the stored bytes do not decompress to what the
    /// ETag names: they came from outside the process).
    fn compress_brotli(&self) -> Option<Bytes> {
        let plain = match self.plain.get() {
            Some(plain) => plain.clone(),
            None => gunzip_checked(&self.gzip_body, &self.etag)?,
        };
        let mut out = Vec::with_capacity(plain.len() / 6 + 64);
        {
            let mut writer =
                brotli::CompressorWriter::new(&mut out, 1 << 16, BROTLI_QUALITY, BROTLI_WINDOW);
            writer.write_all(&plain).ok()?;
        }
        out.shrink_to_fit();
        Some(Bytes::from(out))
    }

    /// The stored form: one JSON header line, then the gzipped body as it is.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::json!({
            "epoch": self.stamp.epoch,
            "seq": self.stamp.seq,
            "content_type": self.content_type,
            "etag": self.etag,
            "compute_us": u64::try_from(self.compute_time.as_micros()).unwrap_or(u64::MAX),
            "expires_at_ms": self.expires_at_ms,
            "page_end": self.page_end.as_ref().map(|end| [&end.sort_value, &end.key, &end.next_key]),
        });
        let mut out = Vec::with_capacity(self.gzip_body.len() + 160);
        out.extend_from_slice(b"SC1 ");
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.gzip_body);
        out
    }

    /// Reads [`CachedResponse::encode`]'s form; `None` for anything else (treated as a miss, and
    /// overwritten by the answer computed instead). Bytes from Redis are input like any other:
    /// the body must be a whole gzip stream of the length and CRC its ETag names (a small one is
    /// decompressed and checked now; a large one has its gzip trailer compared, and is checked
    /// again as it is decompressed for a client).
    pub fn decode(bytes: Vec<u8>) -> Option<CachedResponse> {
        let bytes = Bytes::from(bytes);
        let rest = bytes.strip_prefix(b"SC1 ")?;
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let header: serde_json::Value = serde_json::from_slice(&rest[..newline]).ok()?;
        // The body is a view of what Redis returned, not a copy.
        let gzip_body = bytes.slice(4 + newline + 1..);
        let etag = header["etag"].as_str()?.to_owned();
        let (len, crc) = parse_etag(&etag)?;
        let plain = std::sync::OnceLock::new();
        if gzip_body.len() <= SMALL_ENTRY_BYTES {
            let _ = plain.set(gunzip_checked(&gzip_body, &etag)?);
        } else if gzip_trailer(&gzip_body)? != (crc, len as u32) {
            return None;
        }
        let stamp = Stamp {
            epoch: header["epoch"].as_u64()?,
            seq: header["seq"].as_u64()?,
        };
        Some(CachedResponse {
            gzip_body,
            plain,
            brotli: std::sync::OnceLock::new(),
            brotli_started: AtomicBool::new(false),
            kept: AtomicBool::new(false),
            content_type: header["content_type"].as_str()?.to_owned(),
            gzip_etag: format!("\"{len}-{crc:08x}-gzip\""),
            brotli_etag: format!("\"{len}-{crc:08x}-br\""),
            etag,
            compute_time: Duration::from_micros(header["compute_us"].as_u64()?),
            stamp,
            expires_at_ms: header["expires_at_ms"].as_u64()?,
            page_end: match &header["page_end"] {
                serde_json::Value::Array(end) if end.len() == 3 => Some(PageEnd {
                    sort_value: end[0].clone(),
                    key: end[1].clone(),
                    next_key: end[2].clone(),
                }),
                _ => None,
            },
            checked_through: std::sync::atomic::AtomicU64::new(stamp.seq),
        })
    }

    pub fn is_expired(&self) -> bool {
        unix_ms() >= self.expires_at_ms
    }

    /// Probabilistic early refresh ("XFetch", Vattani et al., VLDB 2015): as expiry nears, a
    /// growing share of readers (more for answers slow to compute) recompute it early, so a hot
    /// entry is refreshed before it expires instead of by a crowd after. `random` is in (0, 1].
    pub fn should_refresh_early(&self, random: f64) -> bool {
        let delta_ms = self.compute_time.as_secs_f64() * 1000.0;
        let gap = -delta_ms * random.clamp(f64::MIN_POSITIVE, 1.0).ln();
        unix_ms() as f64 + gap >= self.expires_at_ms as f64
    }

    /// Bytes this entry holds, for the store's budget.
    pub fn size(&self) -> usize {
        self.gzip_body.len()
            + self.plain.get().map_or(0, Bytes::len)
            + self.brotli.get().map_or(0, Bytes::len)
            + self.etag.len()
            + self.gzip_etag.len()
            + self.brotli_etag.len()
            + self.content_type.len()
            + std::mem::size_of::<CachedResponse>()
    }
}

/// `"<length>-<crc32 hex>"` → (length, crc).
fn parse_etag(etag: &str) -> Option<(u64, u32)> {
    let (len, crc) = etag.strip_prefix('"')?.strip_suffix('"')?.split_once('-')?;
    Some((len.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
}

/// The CRC32 and length (mod 2^32) a gzip stream's trailer records.
fn gzip_trailer(gzip: &[u8]) -> Option<(u32, u32)> {
    let trailer = gzip.get(gzip.len().checked_sub(8)?..)?;
    let crc = u32::from_le_bytes(trailer[..4].try_into().ok()?);
    let len = u32::from_le_bytes(trailer[4..].try_into().ok()?);
    Some((crc, len))
}

/// The decompressed body, if `gzip` is one whole gzip stream of what `etag` describes.
fn gunzip_checked(gzip: &[u8], etag: &str) -> Option<Bytes> {
    let (len, crc) = parse_etag(etag)?;
    let capacity = usize::try_from(len).ok()?;
    // The ETag's length is outside input too: never reserve more than a gzip stream this size
    // can hold (deflate expands at most ~1032:1).
    let mut out = Vec::with_capacity(capacity.min(gzip.len().saturating_mul(1032)));
    let mut decoder = flate2::read::GzDecoder::new(gzip).take(len + 1);
    decoder.read_to_end(&mut out).ok()?;
    let mut check = flate2::Crc::new();
    check.update(&out);
    (out.len() as u64 == len && check.sum() == crc).then(|| Bytes::from(out))
}
