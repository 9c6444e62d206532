//! What an import says about itself: counts, timing, and the rejected lines grouped by column and
//! reason (a file with one systematic problem gives one group, not thousands of lines), each group
//! with its count and first line numbers; and, when asked, every rejected line written to a CSV
//! file with its line number and reason.

use crate::storage::SyncCounts;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// Rejections kept one by one in the report (counts are always exact).
pub const MAX_REPORTED_REJECTIONS: usize = 1000;
/// Groups kept: beyond, rejections count under one "other reasons" group.
pub const MAX_GROUPS: usize = 64;
/// Line numbers kept per group.
pub const FIRST_LINES: usize = 5;

/// One rejected line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based line of the file where the record starts.
    pub line: u64,
    /// The column whose value was refused (`None`: the record as a whole).
    pub column: Option<String>,
    /// Why, in words that do not depend on the line (so that lines group by it).
    pub reason: String,
    /// What is particular to this line (a duplicate key's first line, the CSV error's position).
    pub detail: Option<String>,
}

impl Rejection {
    /// `column "year": must be an integer (detail)`, as one line of text.
    pub fn message(&self) -> String {
        let mut message = match &self.column {
            Some(column) => format!("column {column:?}: {}", self.reason),
            None => self.reason.clone(),
        };
        if let Some(detail) = &self.detail {
            message.push_str(&format!(" ({detail})"));
        }
        message
    }
}

/// Rejections of one (column, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionGroup {
    pub column: Option<String>,
    pub reason: String,
    pub count: u64,
    /// The first [`FIRST_LINES`] lines, in file order.
    pub first_lines: Vec<u64>,
}

/// Counts rejections by (column, reason), within [`MAX_GROUPS`].
#[derive(Debug, Default)]
pub struct Groups {
    groups: Vec<RejectionGroup>,
    index: HashMap<(Option<String>, String), usize>,
}

impl Groups {
    pub fn add(&mut self, rejection: &Rejection) {
        let key = (rejection.column.clone(), rejection.reason.clone());
        let position = match self.index.get(&key) {
            Some(&position) => position,
            None => {
                let (column, reason) = if self.groups.len() < MAX_GROUPS - 1 {
                    key.clone()
                } else {
                    (None, "other reasons".to_owned())
                };
                let other = (column.clone(), reason.clone());
                if let Some(&position) = self.index.get(&other) {
                    position
                } else {
                    self.groups.push(RejectionGroup {
                        column,
                        reason,
                        count: 0,
                        first_lines: Vec::new(),
                    });
                    self.index.insert(other, self.groups.len() - 1);
                    if self.groups.len() < MAX_GROUPS {
                        self.index.insert(key, self.groups.len() - 1);
                    }
                    self.groups.len() - 1
                }
            }
        };
        let group = &mut self.groups[position];
        group.count += 1;
        if group.first_lines.len() < FIRST_LINES {
            group.first_lines.push(rejection.line);
        }
    }

    /// The groups, largest first (ties: the one seen first).
    pub fn into_sorted(self) -> Vec<RejectionGroup> {
        let mut groups = self.groups;
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        groups
    }
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    pub dataset: String,
    pub imported: u64,
    pub rejected: u64,
    /// The first rejections, in file order.
    pub rejections: Vec<Rejection>,
    /// Every rejection, counted by column and reason, largest group first.
    pub groups: Vec<RejectionGroup>,
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent reading, converting and staging rows; the rest built the
    /// indexes and swapped the new rows in (a replace), or compared and applied them (a sync).
    pub staged: Duration,
    /// What a sync changed; `None` for a replace (or a sync that found no rows to compare with).
    pub sync: Option<SyncCounts>,
}

impl ImportReport {
    pub fn rows_per_second(&self) -> f64 {
        self.imported as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Rows that a sync found as they were.
    pub fn unchanged(&self) -> Option<u64> {
        let sync = self.sync?;
        Some(self.imported.saturating_sub(sync.added + sync.changed))
    }

    /// The one-line summary printed at the end of `handler import`.
    pub fn summary(&self) -> String {
        if let (Some(sync), Some(unchanged)) = (self.sync, self.unchanged()) {
            return format!(
                "synced {} rows into {}: {} added, {} changed, {} removed, {unchanged} unchanged; rejected {}, {:.2} s (staged in {:.2} s, compared and applied in {:.2} s)",
                self.imported,
                self.dataset,
                sync.added,
                sync.changed,
                sync.removed,
                self.rejected,
                self.elapsed.as_secs_f64(),
                self.staged.as_secs_f64(),
                (self.elapsed - self.staged).as_secs_f64(),
            );
        }
        format!(
            "imported {} rows into {}, rejected {}, {:.2} s (staged in {:.2} s, indexed and swapped in {:.2} s), {:.0} rows/s",
            self.imported,
            self.dataset,
            self.rejected,
            self.elapsed.as_secs_f64(),
            self.staged.as_secs_f64(),
            (self.elapsed - self.staged).as_secs_f64(),
            self.rows_per_second()
        )
    }

    /// The rejections, one line per group: `3,117 lines: column "elevation": must be an
    /// integer (first on lines 12, 15, 19, 20, 31)`.
    pub fn grouped(&self) -> Vec<String> {
        self.groups
            .iter()
            .map(|g| {
                let what = match &g.column {
                    Some(column) => format!("column {column:?}: {}", g.reason),
                    None => g.reason.clone(),
                };
                let lines: Vec<String> = g.first_lines.iter().map(u64::to_string).collect();
                let plural = if g.count == 1 { "" } else { "s" };
                format!(
                    "{} line{plural}: {what} (first on line{} {})",
                    g.count,
                    if g.first_lines.len() == 1 { "" } else { "s" },
                    lines.join(", ")
                )
            })
            .collect()
    }
}

/// Every rejected line written as CSV: `line,column,reason,detail`, then the record's own fields
/// under the file's own header (empty where the record could not be read), so the lines can be
/// fixed and imported again.
pub struct RejectsFile {
    writer: csv::Writer<std::fs::File>,
    fields: usize,
}

impl RejectsFile {
    pub fn create(path: &Path) -> anyhow::Result<RejectsFile> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(RejectsFile {
            // Flexible: a record with too many or too few fields is written as it came.
            writer: csv::WriterBuilder::new().flexible(true).from_writer(file),
            fields: 0,
        })
    }

    /// The header: ours, then the source file's.
    pub fn header(&mut self, source: &csv::ByteRecord) -> anyhow::Result<()> {
        self.fields = source.len();
        let mut header = csv::ByteRecord::new();
        for name in ["line", "column", "reason", "detail"] {
            header.push_field(name.as_bytes());
        }
        for field in source {
            header.push_field(field);
        }
        self.writer.write_byte_record(&header)?;
        Ok(())
    }

    pub fn write(
        &mut self,
        rejection: &Rejection,
        record: Option<&csv::ByteRecord>,
    ) -> anyhow::Result<()> {
        let mut out = csv::ByteRecord::new();
        out.push_field(rejection.line.to_string().as_bytes());
        out.push_field(rejection.column.as_deref().unwrap_or("").as_bytes());
        out.push_field(rejection.reason.as_bytes());
        out.push_field(rejection.detail.as_deref().unwrap_or("").as_bytes());
        match record {
            Some(record) => record.iter().for_each(|f| out.push_field(f)),
            None => (0..self.fields).for_each(|_| out.push_field(b"")),
        }
        self.writer.write_byte_record(&out)?;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(line: u64, column: Option<&str>, reason: &str) -> Rejection {
        Rejection {
            line,
            column: column.map(str::to_owned),
            reason: reason.to_owned(),
            detail: None,
        }
    }

    #[test]
    fn rejections_group_by_column_and_reason_largest_first() {
        let mut groups = Groups::default();
        for line in 2..=10 {
            groups.add(&rejection(line, Some("elevation"), "must be an integer"));
        }
        groups.add(&rejection(11, None, "expected 4 fields, found 3"));
        groups.add(&rejection(12, Some("name"), "must be an integer"));
        let sorted = groups.into_sorted();
        assert_eq!(sorted.len(), 3);
        assert_eq!(sorted[0].count, 9);
        assert_eq!(sorted[0].first_lines, [2, 3, 4, 5, 6]);
        assert_eq!(sorted[0].column.as_deref(), Some("elevation"));
    }

    #[test]
    fn groups_are_bounded_and_the_rest_counted_together() {
        let mut groups = Groups::default();
        for n in 0..1000u64 {
            groups.add(&rejection(n + 2, None, &format!("reason {n}")));
        }
        let sorted = groups.into_sorted();
        assert_eq!(sorted.len(), MAX_GROUPS);
        assert_eq!(sorted.iter().map(|g| g.count).sum::<u64>(), 1000);
        let other = sorted.iter().find(|g| g.reason == "other reasons").unwrap();
        assert_eq!(other.count, 1000 - (MAX_GROUPS as u64 - 1));
    }
}
