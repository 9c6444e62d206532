//! The rules every cell obeys, whether it arrives in a CSV line (an import) or a JSON body (a
//! write): one place, so the two accept and refuse the same values, and a value the database
//! would refuse is refused here, by row, before it can fail a whole import.

use super::{Column, ColumnType, Value};

/// What the database engine adds to a declaration's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineRules {
    /// The longest text a filterable column (its hidden normalised key, a list's elements)
    /// holds; `None`: no limit.
    pub indexed_text_chars: Option<usize>,
    /// The longest text a sortable column holds (SQL Server indexes only bounded text).
    pub sorted_text_chars: Option<usize>,
    /// Whether lengths count UTF-16 code units, as SQL Server's `NVARCHAR(n)` does (an emoji is
    /// two), rather than characters.
    pub counts_utf16_units: bool,
}

impl EngineRules {
    /// `text`'s length as this engine's bounded text types count it.
    pub fn text_length(self, text: &str) -> usize {
        if self.counts_utf16_units {
            text.encode_utf16().count()
        } else {
            text.chars().count()
        }
    }
}

/// A value a request gives outside any row (a filter, a cursor, a key in the path), parsed as
/// `ty`: it obeys the rules every stored value does that a database would otherwise refuse with an
/// error of its own (NUL, years), so it is the client's 400, never a 500.
pub fn request_value(ty: super::ColumnType, raw: &str) -> Result<Value, String> {
    let value = Value::parse_scalar(ty, raw).map_err(|e| e.to_string())?;
    check_scalar(&value)?;
    Ok(value)
}

/// The rules any single value obeys, whatever its column: no NUL in text, years 1 to 9999.
pub fn check_scalar(value: &Value) -> Result<(), String> {
    match value {
        Value::Text(text) if text.contains('\0') => Err("must not contain NUL characters".into()),
        Value::Date(date) => years(chrono::Datelike::year(date)),
        Value::Timestamp(time) => years(chrono::Datelike::year(time)),
        _ => Ok(()),
    }
}

/// Why a value breaks a rule, in words that follow the column's name: `"title": must not …`.
pub fn check(
    column: &Column,
    is_key: bool,
    value: &Value,
    engine: EngineRules,
) -> Result<(), String> {
    match value {
        Value::Null if !column.nullable || is_key => Err("is required".into()),
        Value::Date(_) | Value::Timestamp(_) => check_scalar(value),
        Value::Text(text) => {
            // A required text (or a key) says something: blank is as good as missing.
            if (is_key || !column.nullable) && text.trim().is_empty() {
                return Err("must not be empty".into());
            }
            let limit = [
                column
                    .filterable
                    .then_some(engine.indexed_text_chars)
                    .flatten(),
                column
                    .sortable
                    .then_some(engine.sorted_text_chars)
                    .flatten(),
            ];
            check_text(column, text, limit.into_iter().flatten().min(), engine)
        }
        Value::List(items) => {
            let separator = column.list_delimiter.as_deref().map(|d| match d.trim() {
                "" => d,
                trimmed => trimmed,
            });
            for item in items {
                if item.trim().is_empty() {
                    return Err("must not have empty elements".into());
                }
                if let Some(separator) = separator
                    && item.contains(separator)
                {
                    return Err(format!("elements must not contain {separator:?}"));
                }
                let limit = column
                    .filterable
                    .then_some(engine.indexed_text_chars)
                    .flatten();
                check_text(column, item, limit, engine)?;
            }
            // Elements that run into a delimiter of several characters ("a|" before "||") would
            // read back split elsewhere.
            if let Some(delimiter) = column.list_delimiter.as_deref()
                && Value::parse_list(&value.to_text_with(delimiter), delimiter) != *value
            {
                return Err(format!(
                    "elements must not run into the delimiter {delimiter:?}"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Every engine stores years 1 to 9999 (PostgreSQL and SQL Server refuse others).
fn years(year: i32) -> Result<(), String> {
    if (1..=9999).contains(&year) {
        Ok(())
    } else {
        Err("must be between the years 1 and 9999".into())
    }
}

/// NUL, and the declared length or the engine's (`engine_limit`), whichever is shorter, counted
/// as the engine counts (`engine`).
fn check_text(
    column: &Column,
    text: &str,
    engine_limit: Option<usize>,
    engine: EngineRules,
) -> Result<(), String> {
    // PostgreSQL's text cannot hold NUL at all; elsewhere it would end strings early.
    if text.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    let limit = match (column.max_length, engine_limit) {
        (Some(declared), Some(engine)) => Some(declared.min(engine)),
        (declared, engine) => declared.or(engine),
    };
    if let Some(max) = limit
        && column.ty == ColumnType::Text
        && engine.text_length(text) > max
    {
        return Err(match engine.counts_utf16_units {
            true => format!("longer than {max} characters (counted as UTF-16: an emoji is two)"),
            false => format!("longer than {max} characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(ty: ColumnType) -> Column {
        Column::plain("c", ty)
    }

    #[test]
    fn one_table_of_rules() {
        let none = EngineRules::default();
        let mysql = EngineRules {
            indexed_text_chars: Some(512),
            sorted_text_chars: None,
            counts_utf16_units: false,
        };
        let sql_server = EngineRules {
            indexed_text_chars: Some(450),
            sorted_text_chars: Some(450),
            counts_utf16_units: true,
        };
        let text = column(ColumnType::Text);
        let short = Column {
            max_length: Some(3),
            ..column(ColumnType::Text)
        };
        let required = Column {
            nullable: false,
            ..column(ColumnType::Text)
        };
        let filtered = Column {
            filterable: true,
            ..column(ColumnType::Text)
        };
        let list = Column {
            list_delimiter: Some(",".into()),
            filterable: true,
            ..column(ColumnType::Text)
        };
        let piped = Column {
            list_delimiter: Some("||".into()),
            ..column(ColumnType::Text)
        };
        let pipes = |items: &[&str]| Value::List(items.iter().map(|i| (*i).to_owned()).collect());
        let date = column(ColumnType::Date);
        let long = Value::Text("x".repeat(600));
        let ymd = |y, m, d| Value::Date(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let cases: Vec<(&Column, bool, Value, EngineRules, Option<&str>)> = vec![
            (
                &text,
                false,
                Value::Text("a\0b".into()),
                none,
                Some("must not contain NUL characters"),
            ),
            (&text, false, Value::Text("fine".into()), none, None),
            (
                &piped,
                false,
                pipes(&["a|", "b"]),
                none,
                Some("elements must not run into the delimiter \"||\""),
            ),
            (&piped, false, pipes(&["a", "|b"]), none, None),
            (&piped, false, pipes(&["a|b", "c"]), none, None),
            (
                &short,
                false,
                Value::Text("abcd".into()),
                none,
                Some("longer than 3 characters"),
            ),
            (&short, false, Value::Text("äöü".into()), none, None),
            (&required, false, Value::Null, none, Some("is required")),
            (&text, true, Value::Null, none, Some("is required")),
            (
                &text,
                true,
                Value::Text("  ".into()),
                none,
                Some("must not be empty"),
            ),
            (&text, false, Value::Text(String::new()), none, None),
            (&filtered, false, long.clone(), none, None),
            (
                &filtered,
                false,
                long.clone(),
                mysql,
                Some("longer than 512 characters"),
            ),
            (&text, false, long, mysql, None),
            // 300 emoji: 300 characters, 600 UTF-16 units (what SQL Server's NVARCHAR counts).
            (&filtered, false, Value::Text("🎬".repeat(300)), mysql, None),
            (
                &filtered,
                false,
                Value::Text("🎬".repeat(300)),
                sql_server,
                Some("longer than 450 characters (counted as UTF-16: an emoji is two)"),
            ),
            (
                &filtered,
                false,
                Value::Text("é".repeat(450)),
                sql_server,
                None,
            ),
            (
                &short,
                false,
                Value::Text("🎬🎬".into()),
                sql_server,
                Some("longer than 3 characters (counted as UTF-16: an emoji is two)"),
            ),
            (&short, false, Value::Text("🎬".into()), sql_server, None),
            (
                &list,
                false,
                Value::List(vec!["a".into(), " ".into()]),
                none,
                Some("must not have empty elements"),
            ),
            (
                &list,
                false,
                Value::List(vec!["a,b".into()]),
                none,
                Some("elements must not contain \",\""),
            ),
            (
                &list,
                false,
                Value::List(vec!["a\0".into()]),
                none,
                Some("must not contain NUL characters"),
            ),
            (
                &list,
                false,
                Value::List(vec!["y".repeat(513)]),
                mysql,
                Some("longer than 512 characters"),
            ),
            (&date, false, ymd(2024, 2, 29), none, None),
            (
                &date,
                false,
                ymd(10000, 1, 1),
                none,
                Some("must be between the years 1 and 9999"),
            ),
            (
                &date,
                false,
                ymd(0, 1, 1),
                none,
                Some("must be between the years 1 and 9999"),
            ),
        ];
        for (column, is_key, value, engine, expected) in cases {
            assert_eq!(
                check(column, is_key, &value, engine).err().as_deref(),
                expected,
                "{value:?}"
            );
        }
    }
}
