//! Readable cache keys: `<prefix>:<dataset>:<kind>:<canonical query>`, bounded in length.

use crate::datasets::Dataset;
use crate::query::QueryKind;

use super::Subject;

/// A canonical query longer than this is cut in cache keys, keeping a readable start and a
/// SHA-256 of the whole, so a client cannot make keys of any length (at most ~270 bytes).
pub const MAX_READABLE_QUERY: usize = 200;

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The key of an answer about `subject`.
    pub fn key(&self, dataset: &Dataset, subject: &Subject<'_>) -> String {
        match subject {
            Subject::Query(query) => {
                let kind = match query.kind {
                    QueryKind::List => "list",
                    QueryKind::Export => "export",
                    QueryKind::Facets => "facets",
                    QueryKind::Count => "count",
                };
                format!(
                    "{}:{}:{kind}:{}",
                    self.prefix,
                    dataset.name,
                    bounded(query.canonical(dataset))
                )
            }
            // Keys of facet answers also name their column, which the query string does not.
            Subject::Facets { query, column } => format!(
                "{}:{}:facets:{}:{}",
                self.prefix,
                dataset.name,
                dataset.columns[*column].name,
                bounded(query.canonical(dataset))
            ),
            Subject::Item(key) => {
                let key = bounded(key.to_text());
                format!("{}:{}:item:{key}", self.prefix, dataset.name)
            }
        }
    }

    /// What every key of `dataset`'s answers starts with.
    pub fn dataset_prefix(&self, dataset: &str) -> String {
        format!("{}:{dataset}:", self.prefix)
    }

    /// `<prefix>:<dataset>:lease:<kind>:<query>`: `lease` is no entry kind, so no entry key can
    /// be mistaken for a lease.
    pub fn lease_key(&self, key: &str) -> String {
        let rest = key
            .strip_prefix(&format!("{}:", self.prefix))
            .unwrap_or(key);
        match rest.split_once(':') {
            Some((dataset, tail)) => format!("{}:{dataset}:lease:{tail}", self.prefix),
            None => format!("{}:lease:{rest}", self.prefix),
        }
    }
}

/// `text` as it goes into a key: as it is up to [`MAX_READABLE_QUERY`] bytes, else its first
/// [`MAX_READABLE_QUERY`] bytes (to a character boundary) and a SHA-256 of the whole. A cut text
/// is at least 269 bytes long and an uncut one at most 200, so no query can be written to read
/// as another's cut key.
fn bounded(text: String) -> String {
    if text.len() <= MAX_READABLE_QUERY {
        return text;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut cut = MAX_READABLE_QUERY;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut key = String::with_capacity(cut + 72);
    key.push_str(&text[..cut]);
    key.push_str("~sha256=");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}
