//! The gzip copy of a whole answer, made on a deflate state kept per thread. A new zlib state
//! allocates and zeroes ~300 KB (window, hash chains, hash table) before it compresses a byte:
//! for a 30 KB page that was a tenth of a miss's instructions. A kept state is only reset.

use std::cell::RefCell;

use flate2::{Compress, Compression, FlushCompress, Status};

/// RFC 1952's header: deflate, no flags, no time, "fastest" compression, unknown OS (what
/// flate2's `GzEncoder` writes at level 1).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff];

thread_local! {
    /// One per thread that stores answers (the runtime's workers): a few hundred KB each.
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// `body` gzipped at level 1, as every stored copy; `crc` is its CRC-32.
pub fn gzip(body: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATE.with(|cell| {
        let mut kept = cell.borrow_mut();
        let deflate = kept.get_or_insert_with(|| Compress::new(Compression::fast(), false));
        deflate.reset();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity() / 2 + 64);
            }
            let rest = &body[deflate.total_in() as usize..];
            match deflate.compress_vec(rest, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => break,
                Ok(Status::Ok | Status::BufError) => {}
                Err(error) => unreachable!("deflating into memory cannot fail: {error}"),
            }
        }
    });
    out.extend_from_slice(&crc.to_le_bytes());
    // ISIZE: the length modulo 2^32, as RFC 1952 says.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn gunzip(gzip: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gzip)
            .read_to_end(&mut plain)
            .unwrap();
        plain
    }

    fn crc(body: &[u8]) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(body);
        crc.sum()
    }

    #[test]
    fn a_kept_state_gzips_one_answer_after_another() {
        let page: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("{{\"id\":{i}}},").into_bytes())
            .take(300_000)
            .collect();
        let small = b"[]".to_vec();
        let first = gzip(&page, crc(&page));
        assert_eq!(gunzip(&first), page);
        assert!(first.len() < page.len() / 3);
        assert_eq!(gunzip(&gzip(&small, crc(&small))), small);
        assert_eq!(gunzip(&gzip(&[], crc(&[]))), b"");
        // The same bytes again, after other answers: nothing of theirs is left in the state.
        assert_eq!(gzip(&page, crc(&page)), first);
    }

    #[test]
    fn a_wrong_checksum_is_caught_by_the_reader() {
        let body = b"hello".to_vec();
        let gzip = gzip(&body, crc(&body) ^ 1);
        let mut plain = Vec::new();
        let read = flate2::read::GzDecoder::new(&gzip[..]).read_to_end(&mut plain);
        assert!(read.is_err());
    }
}
