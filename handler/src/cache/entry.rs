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
    pub content_type: String,
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
            content_type: content_type.to_owned(),
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

    /// The stored form: one JSON header line, then the gzipped body as it is.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::json!({
            "epoch": self.stamp.epoch,
            "seq": self.stamp.seq,
            "content_type": self.content_type,
            "etag": self.etag,
            "compute_us": u64::try_from(self.compute_time.as_micros()).unwrap_or(u64::MAX),
        });
        let mut out = Vec::with_capacity(self.gzip_body.len() + 160);
        out.extend_from_slice(b"SC1 ");
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.gzip_body);
        out
    }

    /// Reads [`CachedResponse::encode`]'s form; `None` for anything else (treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<CachedResponse> {
        let rest = bytes.strip_prefix(b"SC1 ")?;
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let header: serde_json::Value = serde_json::from_slice(&rest[..newline]).ok()?;
        Some(CachedResponse {
            gzip_body: Bytes::copy_from_slice(&rest[newline + 1..]),
            content_type: header["content_type"].as_str()?.to_owned(),
            etag: header["etag"].as_str()?.to_owned(),
            compute_time: Duration::from_micros(header["compute_us"].as_u64()?),
            stamp: Stamp {
                epoch: header["epoch"].as_u64()?,
                seq: header["seq"].as_u64()?,
            },
        })
    }

    /// Bytes this entry holds, for the store's budget.
    pub fn size(&self) -> usize {
        self.gzip_body.len() + self.etag.len() + 64
    }
}
