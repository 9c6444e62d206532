//! The declaration as commented TOML.

use std::fmt::Write as _;

use super::super::ColumnType;
use super::{Inference, Key, thousands, type_word};

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Inference {
    /// The commented declaration. `file_name` is the CSV's name as the comments show it;
    /// `source_file`, when given, is written as the declaration's `source_file`.
    pub fn render(&self, name: &str, file_name: &str, source_file: Option<&str>) -> String {
        // A name with a line break must not end a comment early.
        let file_name = &file_name.replace(char::is_control, "?");
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# Written by `handler datasets init` from {file_name}: all {} rows read.",
            thousands(self.rows)
        );
        let _ = writeln!(
            w,
            "# The comments say why each column is declared as it is; edit freely."
        );
        if let Some((line, reason)) = &self.first_malformed {
            let _ = writeln!(
                w,
                "# {} records the import will reject whatever is declared, the first on line {line}: {reason}",
                thousands(self.malformed)
            );
        }
        if !self.repeated.is_empty() {
            let _ = writeln!(
                w,
                "# Left out, as an import reads only the first column of a header: {}",
                self.repeated.join(", ")
            );
        }
        let title = {
            let spaced = name.replace('_', " ");
            let mut chars = spaced.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        };
        let _ = writeln!(w, "name = {}", quoted(name));
        let _ = writeln!(w, "title = {}", quoted(&title));
        if let Some(file) = source_file {
            let _ = writeln!(w, "source_file = {}", quoted(file));
        }
        let _ = writeln!(
            w,
            "# Only an empty field is missing; a column with other markers lists its own."
        );
        let _ = writeln!(w, "null_values = [\"\"]");
        match &self.key {
            Key::Column(index) => {
                let column = &self.columns[*index];
                if column.ty == ColumnType::Integer {
                    let _ = writeln!(
                        w,
                        "# Add assign = \"next\" to let a create without {} get the next one.",
                        column.name
                    );
                }
                let _ = writeln!(w, "key = {{ column = {} }}", quoted(&column.name));
            }
            Key::RowNumber(key) => {
                let _ = writeln!(
                    w,
                    "# No column is unique and never empty: the key is the row's position in the file."
                );
                let _ = writeln!(
                    w,
                    "key = {{ column = {}, generated = \"row_number\" }}",
                    quoted(key)
                );
                let _ = writeln!(
                    w,
                    "\n[[columns]]\nname = {}\ntype = \"integer\"",
                    quoted(key)
                );
                let description = format!("position of the row in {file_name}");
                let _ = writeln!(w, "description = {}", quoted(&description));
            }
        }
        for column in &self.columns {
            let _ = writeln!(w);
            for note in &column.notes {
                let _ = writeln!(w, "# {note}");
            }
            let _ = writeln!(w, "[[columns]]");
            let _ = writeln!(w, "name = {}", quoted(&column.name));
            let _ = writeln!(w, "type = \"{}\"", type_word(column.ty));
            if column.source != column.name {
                let _ = writeln!(w, "source = {}", quoted(&column.source));
            }
            if !column.nullable {
                let _ = writeln!(w, "nullable = false");
            }
            if !column.null_values.is_empty() {
                let markers: Vec<String> = column.null_values.iter().map(|m| quoted(m)).collect();
                let _ = writeln!(w, "null_values = [{}]", markers.join(", "));
            }
            if let Some(delimiter) = &column.list_delimiter {
                let _ = writeln!(w, "list_delimiter = {}", quoted(delimiter));
            }
            if column.filter {
                let _ = writeln!(w, "filter = true");
            }
            if column.sort {
                let _ = writeln!(w, "sort = true");
            }
            if let Some(max) = column.max_length {
                let _ = writeln!(w, "max_length = {max}");
            }
        }
        out
    }
}
