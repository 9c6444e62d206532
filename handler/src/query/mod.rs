//! Turns a request's query string into a typed, validated [`Query`] for one dataset, and back into
//! its canonical text (sorted, values normalised the way the filters compare them) for cache keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::QueryLimits;
use crate::datasets::{ColumnType, Dataset, Value, normalise_text, rules};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// Which endpoint the query is for: each accepts a different set of reserved parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    List,
    Export,
    Facets,
    /// `GET /api/{dataset}/count`: filters only.
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Equal to any of the filter's values (for a list column: any element equal to any).
    In,
}

impl FilterOp {
    fn from_suffix(suffix: &str) -> Option<Self> {
        Some(match suffix {
            "in" => FilterOp::In,
            "gt" => FilterOp::Gt,
            "gte" => FilterOp::Gte,
            "lt" => FilterOp::Lt,
            "lte" => FilterOp::Lte,
            _ => return None,
        })
    }

    pub fn suffix(self) -> &'static str {
        match self {
            FilterOp::Eq => "",
            FilterOp::Gt => ".gt",
            FilterOp::Gte => ".gte",
            FilterOp::Lt => ".lt",
            FilterOp::Lte => ".lte",
            FilterOp::In => ".in",
        }
    }

    /// The SQL comparison of one value (`In` is written as a list by the statement builder).
    pub fn sql(self) -> &'static str {
        match self {
            FilterOp::Eq | FilterOp::In => "=",
            FilterOp::Gt => ">",
            FilterOp::Gte => ">=",
            FilterOp::Lt => "<",
            FilterOp::Lte => "<=",
        }
    }
}

/// One condition. `values` holds one value, or for [`FilterOp::In`] one or more, distinct and
/// sorted by their text (so the same list in any order is the same question). Text compared for
/// equality (scalar or list element) is already normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: usize,
    pub op: FilterOp,
    pub values: Vec<Value>,
}

impl Filter {
    fn matches(&self, column: &crate::datasets::Column, cell: &Value) -> bool {
        self.values
            .iter()
            .any(|value| compare(self.op, value, column, cell))
    }
}

/// Whether `cell` passes `op value`: the SQL comparison, where null never matches.
fn compare(op: FilterOp, value: &Value, column: &crate::datasets::Column, cell: &Value) -> bool {
    use std::cmp::Ordering;
    let Value::Text(wanted) = value else {
        // Numbers, dates, timestamps and booleans: SQL comparison, where null never matches.
        let ordering = match (cell, value) {
            (Value::Integer(a), Value::Integer(b)) => a.partial_cmp(b),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Integer(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Integer(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Date(a), Value::Date(b)) => a.partial_cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.partial_cmp(b),
            (Value::Boolean(a), Value::Boolean(b)) => a.partial_cmp(b),
            _ => None,
        };
        return match (ordering, op) {
            (None, _) => false,
            (Some(o), FilterOp::Eq | FilterOp::In) => o == Ordering::Equal,
            (Some(o), FilterOp::Gt) => o == Ordering::Greater,
            (Some(o), FilterOp::Gte) => o != Ordering::Less,
            (Some(o), FilterOp::Lt) => o == Ordering::Less,
            (Some(o), FilterOp::Lte) => o != Ordering::Greater,
        };
    };
    // Text filters are equality on the normalised form (of the value, or of any element).
    match cell {
        Value::Text(text) if !column.is_list() => normalise_text(text) == *wanted,
        Value::List(items) => items.iter().any(|item| normalise_text(item) == *wanted),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub column: usize,
    pub descending: bool,
}

/// Where the previous page ended: the sort value and key of its last row.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub sort_value: Value,
    pub key: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Ndjson,
    Csv,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Json => "application/json",
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    fn name(self) -> &'static str {
        match self {
            ExportFormat::Json => "json",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub kind: QueryKind,
    pub filters: Vec<Filter>,
    pub sort: Sort,
    pub limit: u32,
    pub cursor: Option<Cursor>,
    pub format: ExportFormat,
}

/// A parameter the client got wrong; becomes a 400 naming it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter {parameter:?}: {reason}")]
pub struct QueryError {
    pub parameter: String,
    pub reason: String,
}

fn invalid(parameter: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_owned(),
        reason: reason.into(),
    }
}

impl Query {
    /// The count of every row: no filter.
    pub fn every_row(dataset: &Dataset) -> Query {
        Query {
            kind: QueryKind::Count,
            filters: Vec::new(),
            sort: Sort {
                column: dataset.key.column,
                descending: false,
            },
            limit: DEFAULT_LIMIT,
            cursor: None,
            format: ExportFormat::Json,
        }
    }

    /// Parses a raw (still percent-encoded) query string within the default limits.
    pub fn parse(dataset: &Dataset, kind: QueryKind, raw: &str) -> Result<Query, QueryError> {
        Query::parse_limited(dataset, kind, raw, &QueryLimits::default())
    }

    /// Parses a raw (still percent-encoded) query string; anything over `limits` is refused,
    /// naming the parameter, before it costs a database query or a cache key.
    pub fn parse_limited(
        dataset: &Dataset,
        kind: QueryKind,
        raw: &str,
        limits: &QueryLimits,
    ) -> Result<Query, QueryError> {
        let mut query = Query {
            kind,
            ..Query::every_row(dataset)
        };
        let mut seen: Vec<String> = Vec::new();
        let mut raw_cursor = None;
        for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            if seen.len() == limits.max_parameters {
                return Err(invalid(
                    "query",
                    format!(
                        "at most {} parameters (MAX_QUERY_PARAMETERS)",
                        limits.max_parameters
                    ),
                ));
            }
            let repeats = seen.iter().filter(|s| **s == name).count();
            if repeats > 0 && !is_list_equality(dataset, &name) {
                return Err(invalid(&name, "given more than once"));
            }
            if repeats == limits.max_filter_repeats {
                return Err(invalid(
                    &name,
                    format!(
                        "given more than {} times (MAX_FILTER_REPEATS)",
                        limits.max_filter_repeats
                    ),
                ));
            }
            // An any-of list is bounded per value (in `parse_filter`) and by the URI's length.
            if name != "cursor"
                && !name.ends_with(".in")
                && value.chars().count() > limits.max_value_chars
            {
                return Err(invalid(
                    &name,
                    format!(
                        "value is too long (at most {} characters, MAX_VALUE_CHARS)",
                        limits.max_value_chars
                    ),
                ));
            }
            seen.push(name.to_string());
            match (name.as_ref(), kind) {
                ("limit", QueryKind::List | QueryKind::Facets) => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                        })?;
                }
                ("sort", QueryKind::List | QueryKind::Export) => {
                    query.sort = parse_sort(dataset, &value)?;
                }
                ("cursor", QueryKind::List) => {
                    if value.len() > limits.max_cursor_bytes {
                        return Err(invalid(
                            "cursor",
                            format!(
                                "is longer than {} bytes (MAX_CURSOR_BYTES); use the \
                                 next_cursor of a page",
                                limits.max_cursor_bytes
                            ),
                        ));
                    }
                    raw_cursor = Some(value.into_owned());
                }
                ("format", QueryKind::Export) => {
                    query.format = match value.as_ref() {
                        "json" => ExportFormat::Json,
                        "ndjson" => ExportFormat::Ndjson,
                        "csv" => ExportFormat::Csv,
                        _ => return Err(invalid("format", "must be json, ndjson or csv")),
                    };
                }
                _ => query
                    .filters
                    .push(parse_filter(dataset, &name, &value, limits)?),
            }
        }
        if let Some(raw_cursor) = raw_cursor {
            query.cursor = Some(decode_cursor(dataset, query.sort, &raw_cursor)?);
        }
        Ok(query)
    }

    /// Whether `row` passes every filter: the rule the SQL applies, evaluated in Rust, so a
    /// write can tell exactly which cached answers it could have changed.
    pub fn matches(&self, dataset: &Dataset, row: &[Value]) -> bool {
        self.filters
            .iter()
            .all(|filter| filter.matches(&dataset.columns[filter.column], &row[filter.column]))
    }

    /// The canonical form used in cache keys: parameters sorted, values normalised, so the same
    /// question asked in another order or case gives the same text.
    pub fn canonical(&self, dataset: &Dataset) -> String {
        let mut parts: Vec<String> = self
            .filters
            .iter()
            .map(|f| {
                let column = &dataset.columns[f.column];
                let values: Vec<String> = f.values.iter().map(|v| escape(&v.to_text())).collect();
                format!("{}{}={}", column.name, f.op.suffix(), values.join(","))
            })
            .collect();
        if self.sort
            != (Sort {
                column: dataset.key.column,
                descending: false,
            })
        {
            let sign = if self.sort.descending { "-" } else { "" };
            parts.push(format!(
                "sort={sign}{}",
                dataset.columns[self.sort.column].name
            ));
        }
        match self.kind {
            QueryKind::List => {
                parts.push(format!("limit={}", self.limit));
                if let Some(cursor) = &self.cursor {
                    parts.push(format!(
                        "cursor={}",
                        encode_cursor(dataset, self.sort, cursor)
                    ));
                }
            }
            QueryKind::Facets => parts.push(format!("limit={}", self.limit)),
            QueryKind::Export => parts.push(format!("format={}", self.format.name())),
            QueryKind::Count => {}
        }
        parts.sort();
        parts.join("&")
    }
}

fn is_list_equality(dataset: &Dataset, name: &str) -> bool {
    dataset
        .column(name)
        .is_some_and(|c| c.is_list() && c.filterable)
}

fn parse_sort(dataset: &Dataset, raw: &str) -> Result<Sort, QueryError> {
    let (descending, name) = match raw.strip_prefix('-') {
        Some(name) => (true, name),
        None => (false, raw),
    };
    let column = dataset
        .column_index(name)
        .filter(|&i| dataset.columns[i].sortable)
        .ok_or_else(|| {
            let sortable: Vec<_> = dataset
                .columns
                .iter()
                .filter(|c| c.sortable)
                .map(|c| c.name.as_str())
                .collect();
            invalid(
                "sort",
                format!(
                    "{name:?} is not sortable; use one of {}",
                    sortable.join(", ")
                ),
            )
        })?;
    Ok(Sort { column, descending })
}

fn parse_filter(
    dataset: &Dataset,
    name: &str,
    raw: &str,
    limits: &QueryLimits,
) -> Result<Filter, QueryError> {
    let (column_name, op) = match name.rsplit_once('.') {
        Some((column, suffix)) => match FilterOp::from_suffix(suffix) {
            Some(op) => (column, op),
            None => {
                return Err(invalid(
                    name,
                    "unknown operator; use .in, .gt, .gte, .lt or .lte",
                ));
            }
        },
        None => (name, FilterOp::Eq),
    };
    let Some(column_index) = dataset.column_index(column_name) else {
        return Err(invalid(name, "unknown parameter"));
    };
    let column = &dataset.columns[column_index];
    if !column.filterable {
        return Err(invalid(
            name,
            format!("column {column_name:?} is not filterable"),
        ));
    }
    if !matches!(op, FilterOp::Eq | FilterOp::In) && !column.supports_range() {
        return Err(invalid(
            name,
            format!("column {column_name:?} supports equality only"),
        ));
    }
    let raws = if op == FilterOp::In {
        if raw.is_empty() {
            return Err(invalid(name, "give at least one value"));
        }
        let raws = split_any_of(raw);
        if raws.len() > limits.max_any_of {
            return Err(invalid(
                name,
                format!("at most {} values (MAX_ANY_OF_VALUES)", limits.max_any_of),
            ));
        }
        if raws
            .iter()
            .any(|r| r.chars().count() > limits.max_value_chars)
        {
            return Err(invalid(
                name,
                format!(
                    "a value is too long (at most {} characters, MAX_VALUE_CHARS)",
                    limits.max_value_chars
                ),
            ));
        }
        raws
    } else {
        vec![raw.to_owned()]
    };
    let mut values = Vec::with_capacity(raws.len());
    for raw in &raws {
        values.push(filter_value(column, op, name, raw)?);
    }
    if op == FilterOp::In {
        // The same set asked in any order or spelling is one question (and one cache key).
        values.sort_by_cached_key(Value::to_text);
        values.dedup();
    }
    Ok(Filter {
        column: column_index,
        op,
        values,
    })
}

/// One filter value of `column`, checked and (text compared for equality) normalised.
fn filter_value(
    column: &crate::datasets::Column,
    op: FilterOp,
    name: &str,
    raw: &str,
) -> Result<Value, QueryError> {
    if column
        .max_length
        .is_some_and(|max| raw.chars().count() > max)
    {
        return Err(invalid(name, "value is too long"));
    }
    let value = match column.ty {
        // Text compares normalised: see `normalise_text`.
        ColumnType::Text if matches!(op, FilterOp::Eq | FilterOp::In) => {
            Value::Text(normalise_text(raw))
        }
        ty => rules::request_value(ty, raw).map_err(|reason| invalid(name, reason))?,
    };
    rules::check_scalar(&value).map_err(|reason| invalid(name, reason))?;
    Ok(value)
}

/// The values of an any-of list: separated by commas, `\,` for a comma inside a value and
/// `\\` for a backslash. (An empty parameter is refused before: `x.in=` never means "no
/// condition".)
fn split_any_of(raw: &str) -> Vec<String> {
    let mut values = vec![String::new()];
    let mut chars = raw.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => match chars.next() {
                Some(next) => values.last_mut().unwrap().push(next),
                None => values.last_mut().unwrap().push('\\'),
            },
            ',' => values.push(String::new()),
            ch => values.last_mut().unwrap().push(ch),
        }
    }
    values
}

// ---- cursors ---------------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize)]
struct CursorWire {
    /// The sort it was made for: a cursor from another sort is refused, not misread.
    s: String,
    v: Option<String>,
    k: String,
}

fn sort_spec(dataset: &Dataset, sort: Sort) -> String {
    let sign = if sort.descending { "-" } else { "" };
    format!("{sign}{}", dataset.columns[sort.column].name)
}

pub fn encode_cursor(dataset: &Dataset, sort: Sort, cursor: &Cursor) -> String {
    let wire = CursorWire {
        s: sort_spec(dataset, sort),
        v: (!cursor.sort_value.is_null()).then(|| cursor.sort_value.to_text()),
        k: cursor.key.to_text(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).expect("a cursor always serialises"))
}

fn decode_cursor(dataset: &Dataset, sort: Sort, raw: &str) -> Result<Cursor, QueryError> {
    let bad = || invalid("cursor", "is not a cursor returned by this endpoint");
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .map_err(|_| bad())?;
    let wire: CursorWire = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if wire.s != sort_spec(dataset, sort) {
        return Err(invalid("cursor", "was made for another sort order"));
    }
    let sort_type = dataset.columns[sort.column].ty;
    let sort_value = match wire.v {
        None => Value::Null,
        Some(v) => rules::request_value(sort_type, &v).map_err(|_| bad())?,
    };
    let key = rules::request_value(dataset.key_column().ty, &wire.k).map_err(|_| bad())?;
    Ok(Cursor { sort_value, key })
}

/// Keeps keys readable while making `&`, `=` and `%` in values unambiguous.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '%' | '&' | '=' | ' ' | ',' => out.push_str(&format!("%{:02X}", ch as u32)),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

pub mod order;
#[cfg(test)]
mod tests;
