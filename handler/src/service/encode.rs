//! Answers as bytes: rows as JSON objects, a list page with its cursor, facet counts, and
//! exports (JSON, NDJSON, CSV with formula cells neutralised) gzipped as they are produced.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::cache::{CachedResponse, Stamp};
use crate::datasets::{Dataset, Row, Value};
use crate::query::{Cursor, ExportFormat, Query, encode_cursor};

/// A page of a list: `{"items": [...], "next_cursor": ...}` from `limit + 1` rows.
pub(super) fn list_body(dataset: &Dataset, query: &Query, mut rows: Vec<Row>) -> Vec<u8> {
    let has_more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if has_more => Some(encode_cursor(
            dataset,
            query.sort,
            &Cursor {
                sort_value: last[query.sort.column].clone(),
                key: last[dataset.key.column].clone(),
            },
        )),
        _ => None,
    };
    let mut body = Vec::with_capacity(rows.len() * 256 + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_row_json(dataset, row, &mut body);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, &cursor);
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    body
}

/// Facet counts: `{"column": ..., "values": [{"value", "count"}]}`.
pub(super) fn facets_body(column: &str, values: Vec<(Value, u64)>) -> Vec<u8> {
    let body = serde_json::json!({
        "column": column,
        "values": values
            .into_iter()
            .map(|(value, count)| serde_json::json!({"value": value.to_json(), "count": count}))
            .collect::<Vec<_>>(),
    });
    body.to_string().into_bytes()
}

/// An export's bytes gzipped as they are produced, with the length and CRC its ETag needs.
pub(super) struct Capture {
    started: Instant,
    gzip: flate2::write::GzEncoder<Vec<u8>>,
    crc: flate2::Crc,
    len: u64,
}

impl Capture {
    pub(super) fn new(started: Instant) -> Self {
        let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        Capture {
            started,
            gzip,
            crc: flate2::Crc::new(),
            len: 0,
        }
    }

    pub(super) fn add(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        // Writing to a Vec cannot fail.
        let _ = self.gzip.write_all(bytes);
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(super) fn compressed_len(&self) -> usize {
        self.gzip.get_ref().len()
    }

    pub(super) fn finish(
        self,
        content_type: &str,
        stamp: Stamp,
        ttl: std::time::Duration,
    ) -> CachedResponse {
        let compute_time = self.started.elapsed();
        let mut gzip = self.gzip.finish().unwrap_or_default();
        gzip.shrink_to_fit(); // the entry holds what it counts, not the doubled buffer
        let gzip = Bytes::from(gzip);
        CachedResponse::from_gzip(
            gzip,
            self.len,
            self.crc.sum(),
            content_type,
            compute_time,
            stamp,
            ttl,
        )
    }
}

/// Writes batches of rows in one export format.
pub(super) struct ExportEncoder {
    dataset: Arc<Dataset>,
    format: ExportFormat,
    first: bool,
}

impl ExportEncoder {
    pub(super) fn new(dataset: Arc<Dataset>, format: ExportFormat) -> Self {
        ExportEncoder {
            dataset,
            format,
            first: true,
        }
    }

    pub(super) fn head(&mut self) -> Bytes {
        match self.format {
            ExportFormat::Json => Bytes::from_static(b"["),
            ExportFormat::Ndjson => Bytes::new(),
            ExportFormat::Csv => {
                let names = self.dataset.columns.iter().map(|c| c.name.as_str());
                csv_line(names)
            }
        }
    }

    pub(super) fn rows(&mut self, rows: &[Row]) -> Bytes {
        let mut out = Vec::with_capacity(rows.len() * 256);
        match self.format {
            ExportFormat::Json => {
                for row in rows {
                    if !std::mem::take(&mut self.first) {
                        out.push(b',');
                    }
                    write_row_json(&self.dataset, row, &mut out);
                }
            }
            ExportFormat::Ndjson => {
                for row in rows {
                    write_row_json(&self.dataset, row, &mut out);
                    out.push(b'\n');
                }
            }
            ExportFormat::Csv => {
                let mut writer = csv::WriterBuilder::new().from_writer(out);
                let neutralise = !self.dataset.csv_keep_formulas;
                for row in rows {
                    let fields = row
                        .iter()
                        .zip(&self.dataset.columns)
                        .map(|(value, column)| {
                            let text =
                                value.to_text_with(column.list_delimiter.as_deref().unwrap_or(","));
                            match value {
                                Value::Text(_) | Value::List(_) if neutralise => {
                                    neutralise_formula(text)
                                }
                                _ => text,
                            }
                        });
                    writer
                        .write_record(fields)
                        .expect("writing to a Vec cannot fail");
                }
                out = writer.into_inner().expect("flushing a Vec cannot fail");
            }
        }
        Bytes::from(out)
    }

    pub(super) fn tail(format: ExportFormat) -> Bytes {
        match format {
            ExportFormat::Json => Bytes::from_static(b"]"),
            ExportFormat::Ndjson | ExportFormat::Csv => Bytes::new(),
        }
    }
}

/// OWASP's rule against CSV injection: a text cell that a spreadsheet would read as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`, which
/// spreadsheets show as text. Numbers are never text cells, so `-5` stays a number.
fn neutralise_formula(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    }
}

fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> Bytes {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    writer
        .write_record(fields)
        .expect("writing to a Vec cannot fail");
    Bytes::from(writer.into_inner().expect("flushing a Vec cannot fail"))
}

/// A row as a JSON object, columns in declaration order.
pub fn write_row_json(dataset: &Dataset, row: &Row, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (column, value)) in dataset.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(column.name.as_bytes()); // identifiers need no escaping
        out.extend_from_slice(b"\":");
        value.write_json(out);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_other_text_is_not() {
        for (text, expected) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1+1", "'+1+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("Plain title", "Plain title"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(neutralise_formula(text.to_owned()), expected, "{text:?}");
        }
    }
}
