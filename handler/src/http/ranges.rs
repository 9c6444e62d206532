//! Byte ranges of a stored answer (RFC 9110 §14), so a large export's download can resume: one
//! range of the representation being sent (the gzipped bytes as stored, or the plain ones), only
//! while `If-Range` names that representation's ETag. Several ranges, other units or a malformed
//! header are ignored (the whole answer, 200), as the RFC allows.

use axum::http::HeaderValue;

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No usable range: the whole representation.
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A range that lies beyond the representation: 416.
    Unsatisfiable,
}

/// The range `range` asks for, if `if_range` (when sent) is `etag`, the representation's strong
/// validator.
pub fn wanted(
    range: Option<&HeaderValue>,
    if_range: Option<&HeaderValue>,
    etag: &str,
    len: u64,
) -> Wanted {
    let Some(range) = range.and_then(|v| v.to_str().ok()) else {
        return Wanted::Whole;
    };
    // A date, a weak tag or another representation's tag: the client's copy may differ.
    if if_range.is_some_and(|v| v.as_bytes() != etag.as_bytes()) {
        return Wanted::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (number(first), last.trim().is_empty(), number(last)) {
        // bytes=-N: the last N bytes.
        (None, false, Some(suffix)) if first.trim().is_empty() => match (suffix, len) {
            (0, _) | (_, 0) => Wanted::Unsatisfiable,
            _ => Wanted::Part {
                start: len - suffix.min(len),
                end: len - 1,
            },
        },
        // bytes=N-: from N to the end.
        (Some(start), true, None) if start < len => Wanted::Part {
            start,
            end: len - 1,
        },
        (Some(_), true, None) => Wanted::Unsatisfiable,
        // bytes=N-M
        (Some(start), false, Some(end)) if start <= end => {
            if start >= len {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => Wanted::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, if_range: Option<&str>) -> Wanted {
        let range = HeaderValue::from_str(range).unwrap();
        let if_range = if_range.map(|v| HeaderValue::from_str(v).unwrap());
        wanted(Some(&range), if_range.as_ref(), "\"10-abc\"", 10)
    }

    #[test]
    fn first_middle_last_and_open_ranges() {
        assert_eq!(ask("bytes=0-0", None), Wanted::Part { start: 0, end: 0 });
        assert_eq!(ask("bytes=3-6", None), Wanted::Part { start: 3, end: 6 });
        assert_eq!(ask("bytes=7-", None), Wanted::Part { start: 7, end: 9 });
        assert_eq!(ask("bytes=-3", None), Wanted::Part { start: 7, end: 9 });
        assert_eq!(ask("bytes=-30", None), Wanted::Part { start: 0, end: 9 });
        assert_eq!(ask("bytes=5-99", None), Wanted::Part { start: 5, end: 9 });
    }

    #[test]
    fn beyond_the_end_is_unsatisfiable_and_nonsense_is_ignored() {
        assert_eq!(ask("bytes=10-", None), Wanted::Unsatisfiable);
        assert_eq!(ask("bytes=12-20", None), Wanted::Unsatisfiable);
        assert_eq!(ask("bytes=-0", None), Wanted::Unsatisfiable);
        for ignored in [
            "bytes=5-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(ask(ignored, None), Wanted::Whole, "{ignored}");
        }
    }

    #[test]
    fn if_range_must_name_this_representation() {
        assert_eq!(
            ask("bytes=3-6", Some("\"10-abc\"")),
            Wanted::Part { start: 3, end: 6 }
        );
        assert_eq!(ask("bytes=3-6", Some("\"10-abd\"")), Wanted::Whole);
        assert_eq!(ask("bytes=3-6", Some("W/\"10-abc\"")), Wanted::Whole);
        assert_eq!(
            ask("bytes=3-6", Some("Wed, 02 Dec 2026 10:00:00 GMT")),
            Wanted::Whole
        );
        assert_eq!(wanted(None, None, "\"x\"", 10), Wanted::Whole);
    }
}
