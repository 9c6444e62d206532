//! Typed cell values: parsed from CSV fields and query parameters, written as JSON and CSV.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, SecondsFormat, SubsecRound as _, Utc};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "integer",
            ColumnType::Float => "number",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date (YYYY-MM-DD)",
            ColumnType::Timestamp => "timestamp (RFC 3339)",
        }
    }
}

/// One cell. List columns hold `List` of `Text` elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Date(NaiveDate),
    Timestamp(DateTime<Utc>),
    List(Vec<String>),
}

/// Why a raw string is not a value of the expected type; the message is shown to users.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConversionError(pub String);

impl Value {
    /// Parses a scalar (never a list) from its text form, as found in a CSV field or a query string.
    pub fn parse_scalar(ty: ColumnType, raw: &str) -> Result<Value, ConversionError> {
        let bad = || ConversionError(format!("{raw:?} is not a valid {}", ty.name()));
        Ok(match ty {
            ColumnType::Text => Value::Text(raw.to_owned()),
            ColumnType::Integer => Value::Integer(parse_integer(raw.trim()).ok_or_else(bad)?),
            ColumnType::Float => {
                let f: f64 = raw.trim().parse().map_err(|_| bad())?;
                if !f.is_finite() {
                    return Err(bad());
                }
                Value::Float(f)
            }
            ColumnType::Boolean => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => Value::Boolean(true),
                "false" | "f" | "no" | "0" => Value::Boolean(false),
                _ => return Err(bad()),
            },
            ColumnType::Date => {
                Value::Date(NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").map_err(|_| bad())?)
            }
            // Microseconds, as every engine stores them: the value compared in Rust (cache
            // freshness, cursors) is then the one the database compares.
            ColumnType::Timestamp => Value::Timestamp(
                DateTime::parse_from_rfc3339(raw.trim())
                    .map_err(|_| bad())?
                    .with_timezone(&Utc)
                    .trunc_subsecs(6),
            ),
        })
    }

    /// Splits a list field on its delimiter, trimming elements and dropping empty ones.
    pub fn parse_list(raw: &str, delimiter: &str) -> Value {
        fn elements<'a>(parts: impl Iterator<Item = &'a str>) -> Value {
            let kept = parts.map(str::trim).filter(|e| !e.is_empty());
            Value::List(kept.map(str::to_owned).collect())
        }
        let mut chars = delimiter.chars();
        match (chars.next(), chars.next()) {
            // One character, the usual case (`|`, `,`): a search for a char is a memchr.
            (Some(c), None) => elements(raw.split(c)),
            _ => elements(raw.split(delimiter)),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Appends the value as JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Text(s) => write_json_string(out, s),
            Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Value::Float(f) => {
                // serde_json prints finite floats exactly and never as NaN/inf (we reject those).
                serde_json::to_writer(&mut *out, f).expect("writing to a Vec cannot fail")
            }
            Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Date(_) | Value::Timestamp(_) => {
                out.push(b'"');
                out.extend_from_slice(self.to_text().as_bytes());
                out.push(b'"');
            }
            Value::List(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_string(out, item);
                }
                out.push(b']');
            }
        }
    }

    /// The inverse of [`Value::to_json`] for a cell of `column`; `None` when it does not fit.
    pub fn from_json(column: &super::Column, json: &serde_json::Value) -> Option<Value> {
        use serde_json::Value as Json;
        Some(match (json, column.is_list(), column.ty) {
            (Json::Null, _, _) => Value::Null,
            (Json::Array(items), true, _) => Value::List(
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?,
            ),
            (Json::String(s), false, ColumnType::Text) => Value::Text(s.clone()),
            (Json::String(s), false, ty @ (ColumnType::Date | ColumnType::Timestamp)) => {
                Value::parse_scalar(ty, s).ok()?
            }
            // JSON has one number type: 12.0 is the integer 12 (JSON Schema agrees), as far as
            // a float holds integers exactly (2^53); beyond, only integer digits are exact.
            (Json::Number(n), false, ColumnType::Integer) => {
                Value::Integer(n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() <= 2f64.powi(53))
                        .map(|f| f as i64)
                })?)
            }
            (Json::Number(n), false, ColumnType::Float) => Value::Float(n.as_f64()?),
            (Json::Bool(b), false, ColumnType::Boolean) => Value::Boolean(*b),
            _ => return None,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut buf = Vec::new();
        self.write_json(&mut buf);
        serde_json::from_slice(&buf).expect("write_json writes valid JSON")
    }

    /// The canonical text form: what CSV export writes and what a query parameter would parse back.
    /// Lists are joined with `delimiter`.
    pub fn to_text_with(&self, delimiter: &str) -> String {
        match self {
            Value::List(items) => items.join(delimiter),
            other => other.to_text(),
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Text(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => {
                let mut s = String::new();
                write!(s, "{f}").expect("writing to a String cannot fail");
                s
            }
            Value::Boolean(b) => b.to_string(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Timestamp(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Value::List(items) => items.join(", "),
        }
    }
}

/// How text equality compares: trimmed and lower-cased, so `genres=drama` matches "Drama".
/// Cache keys use the same form so that equal questions share one key.
pub fn normalise_text(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Accepts "90" and also "90.0": real CSV exports often write whole numbers as floats.
fn parse_integer(raw: &str) -> Option<i64> {
    if let Ok(i) = raw.parse::<i64>() {
        return Some(i);
    }
    let (whole, fraction) = raw.split_once('.')?;
    if fraction.is_empty() || !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_accept_whole_floats_only() {
        assert_eq!(
            Value::parse_scalar(ColumnType::Integer, "90.0"),
            Ok(Value::Integer(90))
        );
        assert_eq!(
            Value::parse_scalar(ColumnType::Integer, "-12"),
            Ok(Value::Integer(-12))
        );
        assert!(Value::parse_scalar(ColumnType::Integer, "90.5").is_err());
        assert!(Value::parse_scalar(ColumnType::Integer, "1e3").is_err());
        assert!(Value::parse_scalar(ColumnType::Integer, "99999999999999999999").is_err());
    }

    #[test]
    fn floats_refuse_nan_and_infinity() {
        assert_eq!(
            Value::parse_scalar(ColumnType::Float, "1.5"),
            Ok(Value::Float(1.5))
        );
        assert!(Value::parse_scalar(ColumnType::Float, "NaN").is_err());
        assert!(Value::parse_scalar(ColumnType::Float, "inf").is_err());
    }

    #[test]
    fn timestamps_are_normalised_to_utc() {
        let v = Value::parse_scalar(ColumnType::Timestamp, "2013-01-01T05:00:00-05:00").unwrap();
        assert_eq!(v.to_text(), "2013-01-01T10:00:00Z");
        assert!(Value::parse_scalar(ColumnType::Timestamp, "yesterday").is_err());
    }

    #[test]
    fn lists_split_and_trim() {
        assert_eq!(
            Value::parse_list("Comedy, Drama,, ", ","),
            Value::List(vec!["Comedy".into(), "Drama".into()])
        );
    }

    #[test]
    fn json_output_escapes_and_keeps_unicode() {
        let mut out = Vec::new();
        Value::List(vec!["8½".into(), "say \"hi\"".into()]).write_json(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"["8½","say \"hi\""]"#);
        assert_eq!(Value::Float(90.0).to_json(), serde_json::json!(90.0));
    }

    #[test]
    fn error_messages_name_the_value_and_type() {
        let err = Value::parse_scalar(ColumnType::Integer, "abc").unwrap_err();
        assert_eq!(err.to_string(), "\"abc\" is not a valid integer");
    }
}
