//! Parsed questions by their raw query string. Parsing a list's, facets' or export's query
//! string and building its cache key cost a sixth of a cache hit (callgrind: ~8k of ~54k
//! instructions), and hot questions come back byte for byte. Parsing is pure (the catalog and
//! the limits are fixed for the life of the process), so a parsed question is kept under its
//! dataset, kind, column and raw text, and shared. The memo is bounded in bytes and emptied when
//! full: a client asking only new questions costs one parse each, as without it. Refused
//! questions are never kept.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::query::{Query, QueryKind};

/// A question as parsed, with the key of its cached answer.
pub struct Question {
    pub query: Query,
    pub key: String,
}

/// Bytes of questions kept (each counted as twice its raw text, its key and a fixed overhead:
/// a parsed query holds at most its raw text's values, decoded).
const MEMO_BYTES: usize = 4 << 20;
const OVERHEAD_BYTES: usize = 256;

#[derive(Default)]
pub struct Questions {
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    by_raw: HashMap<String, Arc<Question>, foldhash::fast::RandomState>,
    bytes: usize,
}

/// What a question is kept under: its dataset, kind, facet column and raw query string.
pub fn memo_key(dataset: &str, kind: QueryKind, column: Option<usize>, raw: &str) -> String {
    let kind = match kind {
        QueryKind::List => "l",
        QueryKind::Export => "e",
        QueryKind::Facets => "f",
        QueryKind::Count => "c",
    };
    let mut key = String::with_capacity(dataset.len() + raw.len() + 16);
    key.push_str(dataset);
    key.push('\0');
    key.push_str(kind);
    if let Some(column) = column {
        key.push_str(&column.to_string());
    }
    key.push('\0');
    key.push_str(raw);
    key
}

impl Questions {
    /// The question kept under `memo_key`, or the one `parse` makes (kept if it is valid).
    pub fn get_or_parse<E>(
        &self,
        memo_key: String,
        parse: impl FnOnce() -> Result<Question, E>,
    ) -> Result<Arc<Question>, E> {
        if let Some(question) = self.memo.lock().by_raw.get(&memo_key) {
            return Ok(Arc::clone(question));
        }
        let question = Arc::new(parse()?);
        let cost = 2 * memo_key.len() + question.key.len() + OVERHEAD_BYTES;
        let mut memo = self.memo.lock();
        if memo.bytes + cost > MEMO_BYTES {
            memo.by_raw.clear();
            memo.bytes = 0;
        }
        if memo
            .by_raw
            .insert(memo_key, Arc::clone(&question))
            .is_none()
        {
            memo.bytes += cost;
        }
        Ok(question)
    }

    /// `(questions, bytes)` kept.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        let memo = self.memo.lock();
        (memo.by_raw.len(), memo.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(key: &str) -> Result<Question, ()> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/movies.toml");
        let declaration = std::fs::read_to_string(path).unwrap();
        let dataset = crate::datasets::parse_declaration(&declaration, None).unwrap();
        Ok(Question {
            query: Query::parse(&dataset, QueryKind::List, "").unwrap(),
            key: key.to_owned(),
        })
    }

    #[test]
    fn a_question_is_parsed_once_and_refusals_are_not_kept() {
        let questions = Questions::default();
        let mut parses = 0;
        for _ in 0..3 {
            let asked = questions.get_or_parse(
                memo_key("movies", QueryKind::List, None, "limit=5"),
                || {
                    parses += 1;
                    question("k")
                },
            );
            assert_eq!(asked.unwrap().key, "k");
        }
        assert_eq!(parses, 1);
        let refused: Result<_, ()> = questions
            .get_or_parse(memo_key("movies", QueryKind::List, None, "limit=x"), || {
                Err(())
            });
        assert!(refused.is_err());
        assert_eq!(questions.usage().0, 1);
        // The kind and the column are part of what a question is kept under.
        assert_ne!(
            memo_key("movies", QueryKind::Facets, Some(1), "a"),
            memo_key("movies", QueryKind::Facets, Some(11), "a")
        );
        assert_ne!(
            memo_key("movies", QueryKind::List, None, "a"),
            memo_key("movies", QueryKind::Export, None, "a")
        );
    }

    #[test]
    fn the_memo_is_bounded_in_bytes() {
        let questions = Questions::default();
        let raw = "x".repeat(10_000);
        for n in 0..1_000 {
            let key = memo_key("movies", QueryKind::List, None, &format!("{raw}{n}"));
            questions.get_or_parse(key, || question("k")).unwrap();
        }
        let (kept, bytes) = questions.usage();
        assert!(bytes <= MEMO_BYTES, "{bytes}");
        assert!(kept < 1_000 && kept > 0, "{kept}");
    }
}
