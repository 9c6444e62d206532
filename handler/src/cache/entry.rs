//! A finished response as stored: gzipped once, with its ETag.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use bytes::Bytes;

use super::Stamp;

/// How a data GET was answered, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// Not cached at all (e.g. exports, for now).
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Bypass => "BYPASS",
        }
    }
}

#[derive(Debug)]
pub struct CachedResponse {
    pub gzip_body: Bytes,
    pub content_type: &'static str,
    /// Strong validator of the uncompressed body: `"<length>-<crc32>"`, the same on every instance.
    pub etag: String,
    pub compute_time: Duration,
    pub stamp: Stamp,
}

impl CachedResponse {
    pub fn new(
        body: &[u8],
        content_type: &'static str,
        compute_time: Duration,
        stamp: Stamp,
    ) -> Self {
        let mut crc = flate2::Crc::new();
        crc.update(body);
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        encoder
            .write_all(body)
            .expect("writing to a Vec cannot fail");
        let gzip_body = Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"));
        CachedResponse {
            gzip_body,
            content_type,
            etag: format!("\"{}-{:08x}\"", body.len(), crc.sum()),
            compute_time,
            stamp,
        }
    }

    /// The body for a client that does not accept gzip.
    pub fn plain_body(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.gzip_body.len() * 4);
        flate2::read::GzDecoder::new(self.gzip_body.as_ref())
            .read_to_end(&mut out)
            .expect("we compressed this ourselves");
        Bytes::from(out)
    }

    /// Bytes this entry holds, for the store's budget.
    pub fn size(&self) -> usize {
        self.gzip_body.len() + self.etag.len() + 64
    }
}
