//! Reading a CSV source as every import reads it (and `handler datasets init`, which must read a
//! file the way an import will): gunzipped, CRLF as LF, records of any length.

use std::io::{BufReader, Read};

use anyhow::Context as _;

/// The CSV reader of every import (and of `handler datasets init`, which must read a file the
/// way an import will): gunzipped when `gzipped`, CRLF as LF, records of any length (a short one
/// is that line's rejection, not the end of the import).
pub fn csv_reader(reader: Box<dyn Read + Send>, gzipped: bool) -> csv::Reader<impl Read + Send> {
    let reader: Box<dyn Read + Send> = if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(reader)))
    } else {
        reader
    };
    csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(CrlfToLf::new(reader))
}

/// The header's column names as a declaration's `source` names them: trimmed, without a
/// byte-order mark.
pub fn header_names<R: Read>(csv: &mut csv::Reader<R>) -> anyhow::Result<Vec<String>> {
    let headers = csv.byte_headers().context("cannot read the header line")?;
    Ok(headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = String::from_utf8_lossy(h);
            // A byte-order mark is not part of the first column's name.
            if i == 0 {
                h.trim_start_matches('\u{feff}').trim().to_owned()
            } else {
                h.trim().to_owned()
            }
        })
        .collect())
}

/// Turns `\r\n` into `\n`. The csv crate counts a CRLF record's line one short (it has not yet
/// consumed the `\n` when the next record starts), and rejections must name the right line.
struct CrlfToLf<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// A `\r` that ended the last chunk: held back until we know whether `\n` follows.
    pending_cr: bool,
    eof: bool,
}

impl<R: Read> CrlfToLf<R> {
    fn new(inner: R) -> Self {
        CrlfToLf {
            inner,
            buf: vec![0; 1 << 16].into_boxed_slice(),
            start: 0,
            end: 0,
            pending_cr: false,
            eof: false,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let offset = usize::from(self.pending_cr);
        if self.pending_cr {
            self.buf[0] = b'\r';
        }
        let n = self.inner.read(&mut self.buf[offset..])?;
        self.start = 0;
        if n == 0 {
            self.eof = true;
            self.pending_cr = false;
            self.end = offset; // a lone final `\r` is kept
            return Ok(());
        }
        let len = offset + n;
        let mut write = 0;
        for read in 0..len {
            if self.buf[read] == b'\r' && read + 1 < len && self.buf[read + 1] == b'\n' {
                continue;
            }
            self.buf[write] = self.buf[read];
            write += 1;
        }
        self.pending_cr = self.buf[write - 1] == b'\r';
        self.end = write - usize::from(self.pending_cr);
        Ok(())
    }
}

impl<R: Read> Read for CrlfToLf<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.start == self.end && !self.eof {
            self.fill()?;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        /// Hands out at most `chunk` bytes per read, to split CRLFs across reads.
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        CrlfToLf::new(Trickle(input, chunk))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn crlf_becomes_lf_even_split_across_reads() {
        for chunk in [1, 2, 3, 1000] {
            assert_eq!(
                through(b"a\r\nb\r\n\r\nc\rd\r", chunk),
                b"a\nb\n\nc\rd\r",
                "chunk {chunk}"
            );
        }
    }
}
