//! JSON Schemas of values, rows, request bodies and filter parameters, exactly as the validator
//! (`datasets::validate`, `datasets::rules`) and the query parser (`query`) accept them: a
//! client generated from the document sends nothing the server refuses, and the server refuses
//! what the document forbids (checked by schemathesis in `.ci/run`).

use serde_json::{Map, Value as Json, json};

use crate::config::QueryLimits;
use crate::datasets::rules::EngineRules;
use crate::datasets::{Column, ColumnType, Dataset};

/// Text without NUL (PostgreSQL cannot store it; every engine's rule, see `rules`).
const NO_NUL: &str = "^[^\\u0000]*$";
/// Text without NUL that is not blank: keys and required text.
const NOT_BLANK: &str = "^[^\\u0000]*[^\\u0000\\s][^\\u0000]*$";
/// Dates every engine stores (years 1 to 9999). Days stop at 28 so that every date the pattern
/// allows exists; the server also takes the 29th to 31st where the month has them.
const DATE: &str =
    "(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])";
/// Timestamps in UTC (an offset could move a year-1 or year-9999 instant out of range).
const TIME: &str = "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?Z";
/// Integers and floats as query text (JSON bodies carry numbers).
const INTEGER_TEXT: &str = "-?[0-9]{1,18}";
const FLOAT_TEXT: &str = "-?[0-9]{1,15}(\\.[0-9]{1,6})?";

/// What the server takes for one value of `column` in a JSON body (not null: see [`nullable`]).
pub fn value_schema(column: &Column, is_key: bool, engine: EngineRules) -> Json {
    if column.is_list() {
        let delimiter = column
            .list_delimiter
            .as_deref()
            .map(|d| match d.trim() {
                "" => d,
                trimmed => trimmed,
            })
            .unwrap_or(",");
        let forbidden = format!("\\u0000{}", regex_escape(delimiter));
        let mut item = json!({
            "type": "string",
            "minLength": 1,
            // Not blank, no NUL, never the delimiter the CSV form splits on.
            "pattern": format!("^[^{forbidden}]*[^{forbidden}\\s][^{forbidden}]*$"),
        });
        if let Some(max) = text_limit(column, engine) {
            item["maxLength"] = json!(max);
        }
        return json!({"type": "array", "items": item});
    }
    let mut schema = match column.ty {
        ColumnType::Text => {
            let required = is_key || !column.nullable;
            json!({"type": "string", "pattern": if required { NOT_BLANK } else { NO_NUL }})
        }
        ColumnType::Integer => json!({"type": "integer", "format": "int64",
            "minimum": i64::MIN, "maximum": i64::MAX}),
        ColumnType::Float => json!({"type": "number", "format": "double"}),
        ColumnType::Boolean => json!({"type": "boolean"}),
        ColumnType::Date => json!({"type": "string", "format": "date",
            "pattern": format!("^{DATE}$")}),
        ColumnType::Timestamp => json!({"type": "string", "format": "date-time",
            "pattern": format!("^{DATE}{TIME}$")}),
    };
    if column.ty == ColumnType::Text {
        if let Some(max) = text_limit(column, engine) {
            schema["maxLength"] = json!(max);
        }
        if is_key || !column.nullable {
            schema["minLength"] = json!(1);
        }
    }
    schema
}

/// The declared length or the engine's, whichever is shorter (see `rules::check`).
fn text_limit(column: &Column, engine: EngineRules) -> Option<usize> {
    let engine = [
        column
            .filterable
            .then_some(engine.indexed_text_chars)
            .flatten(),
        (column.sortable && !column.is_list())
            .then_some(engine.sorted_text_chars)
            .flatten(),
    ]
    .into_iter()
    .flatten()
    .min();
    match (column.max_length, engine) {
        (Some(declared), Some(engine)) => Some(declared.min(engine)),
        (declared, engine) => declared.or(engine),
    }
}

fn nullable(mut schema: Json) -> Json {
    let ty = schema["type"].clone();
    schema["type"] = json!([ty, "null"]);
    schema
}

fn with_description(mut schema: Json, column: &Column) -> Json {
    if let Some(description) = &column.description {
        schema["description"] = json!(description);
    }
    schema
}

/// A row as the server sends it: every column, nullable ones as `null` when empty.
pub fn row_schema(dataset: &Dataset, engine: EngineRules) -> Json {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (index, column) in dataset.columns.iter().enumerate() {
        let mut schema = value_schema(column, index == dataset.key.column, engine);
        if column.nullable && index != dataset.key.column {
            schema = nullable(schema);
        }
        properties.insert(column.name.clone(), with_description(schema, column));
        required.push(column.name.clone());
    }
    json!({"type": "object", "title": dataset.title, "description": dataset.description,
        "properties": properties, "required": required})
}

/// Which body a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `POST`: every required column; the key too unless the server assigns it (a generated
    /// key may not be given at all).
    Create,
    /// `PUT`: every required column but the key, which is the path's (repeating it is allowed
    /// when equal, and not documented).
    Replace,
    /// `PATCH`: at least one column to change, never the key.
    Patch,
}

pub fn body_schema(dataset: &Dataset, body: Body, engine: EngineRules) -> Json {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (index, column) in dataset.columns.iter().enumerate() {
        let is_key = index == dataset.key.column;
        if is_key && (body != Body::Create || dataset.key.generated) {
            continue;
        }
        let mut schema = value_schema(column, is_key, engine);
        if column.nullable && !is_key {
            schema = nullable(schema);
        }
        let needed = if is_key {
            !dataset.key.assigned
        } else {
            !column.nullable
        };
        if needed && body != Body::Patch {
            required.push(column.name.clone());
        }
        properties.insert(column.name.clone(), with_description(schema, column));
    }
    let mut schema = json!({"type": "object", "properties": properties,
        "required": required, "additionalProperties": false});
    if body == Body::Patch {
        schema["minProperties"] = json!(1);
    }
    schema
}

/// The filter parameters of a dataset's reads: `col`, `col.in`, and the range forms.
pub fn filter_parameters(dataset: &Dataset, limits: &QueryLimits) -> Vec<Json> {
    let mut out = Vec::new();
    for column in dataset.columns.iter().filter(|c| c.filterable) {
        let (equals, description) = if column.is_list() {
            (
                text_parameter(column, limits),
                "has this element (case-insensitive); repeat to require several",
            )
        } else if column.ty == ColumnType::Text {
            (text_parameter(column, limits), "equals (case-insensitive)")
        } else {
            (scalar_parameter(column), "equals")
        };
        out.push(
            json!({"name": column.name, "in": "query", "description": description,
            "schema": equals}),
        );
        let any_of = if column.is_list() {
            "has any of these elements: comma-separated, \\, for a comma inside a value"
        } else {
            "equals any of these values: comma-separated, \\, for a comma inside a value"
        };
        out.push(json!({"name": format!("{}.in", column.name), "in": "query",
            "description": any_of, "schema": any_of_parameter(column, limits)}));
        if column.supports_range() {
            for op in ["gt", "gte", "lt", "lte"] {
                out.push(
                    json!({"name": format!("{}.{op}", column.name), "in": "query",
                    "schema": scalar_parameter(column)}),
                );
            }
        }
    }
    out
}

fn text_parameter(column: &Column, limits: &QueryLimits) -> Json {
    let max = column
        .max_length
        .map_or(limits.max_value_chars, |m| m.min(limits.max_value_chars));
    json!({"type": "string", "maxLength": max, "pattern": NO_NUL})
}

fn scalar_parameter(column: &Column) -> Json {
    match column.ty {
        ColumnType::Integer => json!({"type": "integer", "format": "int64",
            "minimum": i64::MIN, "maximum": i64::MAX}),
        ColumnType::Float => json!({"type": "number", "format": "double"}),
        ColumnType::Boolean => json!({"type": "boolean"}),
        ColumnType::Date => json!({"type": "string", "pattern": format!("^{DATE}$")}),
        ColumnType::Timestamp => json!({"type": "string", "pattern": format!("^{DATE}{TIME}$")}),
        ColumnType::Text => json!({"type": "string", "pattern": NO_NUL}),
    }
}

/// `a,b,c`: one value, then at most `max_any_of - 1` more, each as its column's filter takes it.
fn any_of_parameter(column: &Column, limits: &QueryLimits) -> Json {
    let one = match column.ty {
        ColumnType::Text => {
            let max = column
                .max_length
                .map_or(limits.max_value_chars, |m| m.min(limits.max_value_chars));
            // A character but `,` and `\`, or `\` and the character it escapes.
            format!("([^,\\\\\\u0000]|\\\\[^\\u0000]){{0,{max}}}")
        }
        ColumnType::Integer => INTEGER_TEXT.to_owned(),
        ColumnType::Float => FLOAT_TEXT.to_owned(),
        ColumnType::Boolean => "(true|false)".to_owned(),
        ColumnType::Date => DATE.to_owned(),
        ColumnType::Timestamp => format!("{DATE}{TIME}"),
    };
    let more = limits.max_any_of.saturating_sub(1);
    json!({"type": "string", "minLength": 1,
        "pattern": format!("^{one}(,{one}){{0,{more}}}$")})
}

fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        if "\\^$.|?*+()[]{}-/".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
