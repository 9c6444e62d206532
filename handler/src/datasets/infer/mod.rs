//! `handler datasets init`: a declaration guessed from a CSV's rows. Every cell of the file is
//! seen once and only per-column counts are kept (capped sets of distinct values), so a file of
//! any size is read whole in flat memory and a type decision never rests on a sample: a decimal on
//! the last line still makes its column float. Types are decided by the importer's own
//! conversions ([`Value::parse_scalar`] and [`rules::check_scalar`]), so whatever is declared
//! imports the file without rejections.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::{ColumnType, Value, normalise_text, rules};

mod names;
mod write;

use names::unique;
pub use names::{dataset_name, identifier};

/// Values that mean "missing" in typed columns when the rest of the column is typed. In a text
/// column only the empty field is missing: "NA" is Namibia there.
pub const NULL_MARKERS: &[&str] = &["", "NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "-"];
/// Distinct values counted per text column; beyond, it is not low-cardinality.
const DISTINCT_CAP: usize = 1000;
/// Distinct elements counted per candidate list delimiter.
const LIST_DISTINCT_CAP: usize = 2000;
/// Values remembered per key candidate; beyond, the candidate is given up (memory stays bounded).
pub const KEY_CAP: usize = 5_000_000;
/// The longest text a filtered or sorted column may hold everywhere (SQL Server indexes 450).
const INDEXABLE_CHARS: usize = 450;
/// Delimiters a list column may use, in order of preference.
const LIST_DELIMITERS: &[&str] = &[",", "|", ";"];
/// The typed guesses, most specific first: "1" is an integer before it is a boolean.
const TYPED: [ColumnType; 5] = [
    ColumnType::Integer,
    ColumnType::Float,
    ColumnType::Date,
    ColumnType::Timestamp,
    ColumnType::Boolean,
];

/// What one column's values have shown so far.
struct Stats {
    header: String,
    /// Per entry of [`NULL_MARKERS`]: how often the whole field was that marker.
    markers: [u64; NULL_MARKERS.len()],
    /// Fields that are not a marker.
    typed_values: u64,
    /// Per entry of [`TYPED`]: the values of that type, and the first that was not, with its line.
    fits: [u64; TYPED.len()],
    misfit: [Option<(String, u64)>; TYPED.len()],
    /// Values that are floats but not integers (`12.5`), and the first of them with its line.
    decimals: u64,
    first_decimal: Option<(String, u64)>,
    /// Non-empty fields (text view: markers other than "" are text).
    text_values: u64,
    max_chars: usize,
    blank: bool,
    /// Normalised distinct values, `None` once past [`DISTINCT_CAP`].
    distinct: Option<HashSet<String>>,
    lists: Vec<ListStats>,
    /// Every value seen, while the column may still be the key.
    key: Option<HashSet<KeyOf>>,
}

#[derive(Default)]
struct ListStats {
    values_with: u64,
    elements: u64,
    distinct: Option<HashMap<String, u64>>,
    max_element_chars: usize,
    /// The first values holding the delimiter, as normalised elements: in a list, their elements
    /// are found elsewhere too ("Drama"), in prose or names mostly not ("D.C.").
    delimited: Vec<Vec<String>>,
    /// Elements seen as a whole value, without the delimiter (at most as many as `distinct`).
    alone: HashSet<String>,
}

/// Delimited values remembered per candidate list delimiter.
const LIST_SAMPLE: usize = 1000;

#[derive(Hash, PartialEq, Eq)]
enum KeyOf {
    Integer(i64),
    Text(String),
}

/// Counts a CSV's columns record by record; [`Inferrer::finish`] turns them into a declaration.
pub struct Inferrer {
    columns: Vec<Stats>,
    rows: u64,
    malformed: u64,
    first_malformed: Option<(u64, String)>,
}

impl Inferrer {
    /// `headers` as [`crate::import`] reads them (trimmed, no byte-order mark).
    pub fn new(headers: Vec<String>) -> Inferrer {
        let columns = headers
            .into_iter()
            .map(|header| Stats {
                header,
                markers: [0; NULL_MARKERS.len()],
                typed_values: 0,
                fits: [0; TYPED.len()],
                misfit: Default::default(),
                decimals: 0,
                first_decimal: None,
                text_values: 0,
                max_chars: 0,
                blank: false,
                distinct: Some(HashSet::new()),
                lists: LIST_DELIMITERS
                    .iter()
                    .map(|_| ListStats {
                        distinct: Some(HashMap::new()),
                        ..ListStats::default()
                    })
                    .collect(),
                key: Some(HashSet::new()),
            })
            .collect();
        Inferrer {
            columns,
            rows: 0,
            malformed: 0,
            first_malformed: None,
        }
    }

    /// A record the import would reject whatever the declaration (wrong field count, not UTF-8,
    /// a NUL character).
    pub fn malformed(&mut self, line: u64, reason: String) {
        self.malformed += 1;
        self.first_malformed.get_or_insert((line, reason));
    }

    /// One record of the file; `line` is where it starts, for the comments.
    pub fn observe(&mut self, fields: &[&str], line: u64) {
        if fields.len() != self.columns.len() {
            let reason = format!(
                "expected {} fields, found {}",
                self.columns.len(),
                fields.len()
            );
            return self.malformed(line, reason);
        }
        // No column type holds NUL (rules::check_scalar): the line is rejected, not typed.
        if let Some(at) = fields.iter().position(|f| f.contains('\0')) {
            let reason = format!("a NUL character in field {}", at + 1);
            return self.malformed(line, reason);
        }
        self.rows += 1;
        for (stats, raw) in self.columns.iter_mut().zip(fields) {
            stats.observe(raw, line);
        }
    }

    pub fn finish(self) -> Inference {
        let mut names = Vec::new();
        let mut headers = HashSet::new();
        let mut repeated = Vec::new();
        let mut columns = Vec::new();
        for (position, stats) in self.columns.into_iter().enumerate() {
            // An import reads a header's first column only: a repeat cannot be declared.
            if !headers.insert(stats.header.clone()) {
                repeated.push(format!("{:?} (column {})", stats.header, position + 1));
                continue;
            }
            let name = unique(identifier(&stats.header), &names);
            names.push(name.clone());
            columns.push(stats.decide(name));
        }
        let candidates: Vec<usize> = (0..columns.len())
            .filter(|&i| columns[i].key_candidate)
            .collect();
        let id_like = |c: &Inferred| {
            let name = c.name.as_str();
            if name == "id" {
                0
            } else if name.ends_with("_id") || c.source.ends_with("id") || c.source.ends_with("ID")
            {
                1
            } else {
                2
            }
        };
        let key = candidates
            .iter()
            .copied()
            .min_by_key(|&i| (id_like(&columns[i]), i));
        let key = match key {
            Some(index) => {
                let column = &mut columns[index];
                column.notes.push(format!(
                    "the key: unique and never empty in all {} rows",
                    thousands(self.rows)
                ));
                column.filter = false;
                column.sort = false; // implied by the key
                Key::Column(index)
            }
            None => Key::RowNumber(unique("id".into(), &names)),
        };
        Inference {
            repeated,
            rows: self.rows,
            malformed: self.malformed,
            first_malformed: self.first_malformed,
            columns,
            key,
        }
    }
}

impl Stats {
    fn observe(&mut self, raw: &str, line: u64) {
        if let Some(marker) = NULL_MARKERS.iter().position(|m| *m == raw) {
            self.markers[marker] += 1;
        } else {
            self.typed_values += 1;
            let mut fitted = [false; TYPED.len()];
            for (i, ty) in TYPED.iter().enumerate() {
                // A type one value ruled out cannot be the column's: no need to try it again
                // (integer and float are, for the count of decimals).
                if i > 1 && self.misfit[i].is_some() {
                    continue;
                }
                fitted[i] = Value::parse_scalar(*ty, raw)
                    .ok()
                    .is_some_and(|v| rules::check_scalar(&v).is_ok());
                if fitted[i] {
                    self.fits[i] += 1;
                } else if self.misfit[i].is_none() {
                    self.misfit[i] = Some((raw.to_owned(), line));
                }
            }
            // TYPED[0] is integer, TYPED[1] float.
            if fitted[1] && !fitted[0] {
                self.decimals += 1;
                self.first_decimal.get_or_insert((raw.to_owned(), line));
            }
        }
        if raw.is_empty() {
            self.key = None;
            return;
        }
        self.text_values += 1;
        self.max_chars = self.max_chars.max(raw.chars().count());
        let normal = normalise_text(raw);
        if normal.is_empty() {
            self.blank = true;
            self.key = None;
        }
        if let Some(distinct) = &mut self.distinct
            && !distinct.contains(&normal)
        {
            if distinct.len() == DISTINCT_CAP {
                self.distinct = None;
            } else {
                distinct.insert(normal.clone());
            }
        }
        for (delimiter, list) in LIST_DELIMITERS.iter().zip(&mut self.lists) {
            list.observe(raw, delimiter);
        }
        if let Some(keys) = &mut self.key {
            let key = match Value::parse_scalar(ColumnType::Integer, raw) {
                Ok(Value::Integer(i)) => KeyOf::Integer(i),
                _ => KeyOf::Text(normal),
            };
            if keys.len() >= KEY_CAP || !keys.insert(key) {
                self.key = None;
            }
        }
    }
}

impl ListStats {
    fn observe(&mut self, raw: &str, delimiter: &str) {
        if raw.contains(delimiter) {
            self.values_with += 1;
            if self.delimited.len() < LIST_SAMPLE {
                let elements = raw.split(delimiter).map(normalise_text);
                self.delimited
                    .push(elements.filter(|e| !e.is_empty()).collect());
            }
        } else if self.distinct.is_some() {
            self.alone.insert(normalise_text(raw));
        }
        for element in raw
            .split(delimiter)
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            self.elements += 1;
            self.max_element_chars = self.max_element_chars.max(element.chars().count());
            if let Some(distinct) = &mut self.distinct {
                let normal = normalise_text(element);
                if let Some(count) = distinct.get_mut(&normal) {
                    *count += 1;
                } else if distinct.len() == LIST_DISTINCT_CAP {
                    self.distinct = None;
                } else {
                    distinct.insert(normal, 1);
                }
            }
        }
    }

    /// Whether the column looks like a list of short repeated tokens split by this delimiter:
    /// most values hold it, or the elements of those that do are values of their own elsewhere
    /// ("Asia, Europe" beside "Asia"; not "Washington, D.C."). `values`: the non-empty ones.
    fn is_list(&self, values: u64) -> Option<usize> {
        let distinct = self.distinct.as_ref()?.len() as u64;
        let repeated = distinct > 0 && self.elements >= 3 * distinct;
        let (mut elements, mut alone) = (0, 0);
        for element in self.delimited.iter().flatten() {
            elements += 1;
            alone += usize::from(self.alone.contains(element));
        }
        let most = self.values_with * 2 >= values;
        let elsewhere = elements > 0 && alone * 4 >= elements * 3;
        (self.values_with >= 2 && repeated && (most || elsewhere) && self.max_element_chars <= 64)
            .then_some(distinct as usize)
    }
}

/// A column as declared, with the reasons for each choice.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub name: String,
    pub source: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// Empty: the dataset's `[""]`.
    pub null_values: Vec<String>,
    pub list_delimiter: Option<String>,
    pub max_length: Option<usize>,
    pub filter: bool,
    pub sort: bool,
    /// One comment line each, written above the column.
    pub notes: Vec<String>,
    key_candidate: bool,
}

/// How rows are identified.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// The column at this index is unique and never empty.
    Column(usize),
    /// No column is: a generated `row_number` key of this name.
    RowNumber(String),
}

/// A whole file's declaration.
#[derive(Debug, Clone)]
pub struct Inference {
    /// Headers that repeat an earlier one, left out.
    pub repeated: Vec<String>,
    pub rows: u64,
    pub malformed: u64,
    pub first_malformed: Option<(u64, String)>,
    pub columns: Vec<Inferred>,
    pub key: Key,
}

impl Stats {
    fn decide(self, name: String) -> Inferred {
        let nulls: u64 = self.markers.iter().sum();
        let typed = (self.typed_values > 0)
            .then(|| (0..TYPED.len()).find(|&i| self.fits[i] == self.typed_values))
            .flatten();
        let mut notes = Vec::new();
        let mut column = Inferred {
            source: self.header.clone(),
            name,
            ty: ColumnType::Text,
            nullable: true,
            null_values: Vec::new(),
            list_delimiter: None,
            max_length: None,
            filter: false,
            sort: false,
            notes: Vec::new(),
            key_candidate: false,
        };
        let seen_markers = |skip_empty: bool| -> Vec<String> {
            NULL_MARKERS
                .iter()
                .zip(self.markers)
                .filter(|(m, n)| *n > 0 && !(skip_empty && m.is_empty()))
                .map(|(m, n)| match *m {
                    "" => format!("{} empty", thousands(n)),
                    m => format!("{} {m:?}", thousands(n)),
                })
                .collect()
        };
        if let Some(i) = typed {
            let ty = TYPED[i];
            column.ty = ty;
            column.nullable = nulls > 0;
            let mut why = format!("{}: {} values", type_word(ty), thousands(self.typed_values));
            if ty == ColumnType::Float && self.decimals > 0 {
                let (example, line) = self.first_decimal.clone().unwrap_or_default();
                let _ = write!(
                    why,
                    "; {} like {example} (first on line {line}) made this float, not integer",
                    thousands(self.decimals)
                );
            }
            if ty == ColumnType::Boolean
                && let Some((example, _)) = &self.misfit[0]
            {
                let _ = write!(why, " (like {example:?})");
            }
            notes.push(why);
            if nulls > 0 {
                notes.push(format!("missing: {}", seen_markers(false).join(", ")));
                if NULL_MARKERS
                    .iter()
                    .zip(self.markers)
                    .any(|(m, n)| n > 0 && !m.is_empty())
                {
                    column.null_values = NULL_MARKERS
                        .iter()
                        .zip(self.markers)
                        .filter(|(m, n)| *n > 0 || m.is_empty())
                        .map(|(m, _)| m.to_string())
                        .collect();
                }
            }
            let distinct = self.distinct.as_ref().map_or(usize::MAX, HashSet::len);
            if distinct <= 1 {
                notes.push("a single value: not worth an index".into());
            } else if ty == ColumnType::Boolean {
                column.filter = true;
            } else {
                column.filter = true;
                column.sort = true;
            }
            column.key_candidate = ty == ColumnType::Integer && nulls == 0 && self.key.is_some();
            column.notes = notes;
            return column;
        }
        // Text.
        let empties = self.markers[0];
        column.nullable = empties > 0;
        if self.text_values == 0 {
            notes.push("text: every field is empty".into());
            column.notes = notes;
            return column;
        }
        let mut why = format!("text: {} values", thousands(self.text_values));
        if let Some(best) = (0..TYPED.len())
            .filter(|&i| self.fits[i] * 2 > self.typed_values)
            .max_by_key(|&i| self.fits[i])
            && let Some((example, line)) = &self.misfit[best]
        {
            let _ = write!(
                why,
                "; {example:?} (line {line}) is not {}",
                type_word(TYPED[best])
            );
        }
        notes.push(why);
        if empties > 0 {
            notes.push(format!("missing: {} empty", thousands(empties)));
        }
        let kept = seen_markers(true);
        if !kept.is_empty() {
            notes.push(format!(
                "kept as text, not missing: {} (add them to null_values if they mean missing)",
                kept.join(", ")
            ));
        }
        let list = LIST_DELIMITERS
            .iter()
            .zip(&self.lists)
            .filter_map(|(d, l)| l.is_list(self.text_values).map(|n| (d, l, n)))
            .max_by_key(|(_, l, _)| l.values_with);
        if let Some((delimiter, list, distinct)) = list {
            column.list_delimiter = Some(delimiter.to_string());
            column.filter = true;
            column.max_length = Some(bound(list.max_element_chars));
            notes.push(format!(
                "a list: {} values hold {delimiter:?}, {} elements are {} distinct ones, the longest {} characters (max_length doubled, to a power of two)",
                thousands(list.values_with),
                thousands(list.elements),
                thousands(distinct as u64),
                list.max_element_chars
            ));
            column.notes = notes;
            return column;
        }
        column.max_length = Some(bound(self.max_chars));
        let distinct = self.distinct.as_ref().map(HashSet::len);
        let indexable = self.max_chars <= INDEXABLE_CHARS;
        let mut length = format!(
            "longest value {} characters (max_length doubled, to a power of two)",
            self.max_chars
        );
        if let Some(distinct) = distinct {
            let _ = write!(length, "; {} distinct", thousands(distinct as u64));
            if distinct > 1 && (distinct as u64) * 2 <= self.text_values && indexable {
                column.filter = true;
            }
        }
        if title_like(&column.name) && indexable {
            column.filter = true;
            column.sort = true;
        }
        notes.push(length);
        column.key_candidate = !self.blank && self.key.is_some() && self.max_chars <= 256;
        column.notes = notes;
        column
    }
}

fn type_word(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "text",
        ColumnType::Integer => "integer",
        ColumnType::Float => "float",
        ColumnType::Boolean => "boolean",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamp",
    }
}

fn title_like(name: &str) -> bool {
    matches!(name, "title" | "name" | "label")
        || name.ends_with("_title")
        || name.ends_with("_name")
}

/// A generous max_length: twice the longest value seen, rounded up to a power of two, at least 16.
pub fn bound(longest: usize) -> usize {
    (longest * 2).next_power_of_two().max(16)
}

/// `28298` as `28,298`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
