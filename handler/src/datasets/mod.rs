//! Dataset declarations: what a table looks like, where its CSV columns come from and how it may be
//! queried. Every dataset is a TOML file under `DATASETS_DIR`; adding one needs no Rust code.
//!
//! The declaration is the only source of SQL identifiers: table and column names are checked here
//! (`[a-z][a-z0-9_]*`) so the SQL builders can quote them without ever touching user input.

pub mod infer;
pub mod rules;
pub mod validate;
mod value;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

pub use value::{ColumnType, ConversionError, Value, normalise_text};

/// The values a CSV may use for "missing" when a dataset does not say otherwise.
const DEFAULT_NULL_VALUES: &[&str] = &["", "NA"];

/// One row: a value per column of the dataset, in declaration order.
pub type Row = Vec<Value>;

/// One declared dataset, validated.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub title: String,
    pub description: String,
    pub table: String,
    pub key: KeySpec,
    pub columns: Vec<Column>,
    /// Lifetime of cached answers; `None` uses `CACHE_TTL_SECONDS`.
    pub cache_ttl_seconds: Option<u64>,
    /// The CSV that `handler demo` and the quick start import, relative to the declaration file.
    pub source_file: Option<PathBuf>,
    /// Who may read and change the rows.
    pub access: Access,
    /// CSV exports write text cells as they are, formulas included (`csv_keep_formulas`): only
    /// for consumers that never open them in a spreadsheet. Off by default.
    pub csv_keep_formulas: bool,
    /// How the dataset is imported again, and from where the `SyncDatasets` timer does it.
    pub import: ImportSpec,
}

/// A dataset's `[import]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSpec {
    /// What an import does when it names no mode.
    pub mode: ImportMode,
    /// A blob (CSV or .csv.gz) that the `SyncDatasets` timer imports again whenever it changes.
    /// Read with Shared Key or Entra ID access: a SAS does not belong in a committed file.
    pub blob: Option<String>,
}

/// How an import treats the rows already there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// Every row replaced at once; every cached answer of the dataset ends.
    #[default]
    Replace,
    /// Only the rows that differ (by key) are inserted, updated or deleted, and recorded with the
    /// cache like writes, so only the answers they change end. A first import replaces.
    Sync,
}

impl std::str::FromStr for ImportMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "replace" => Ok(ImportMode::Replace),
            "sync" => Ok(ImportMode::Sync),
            other => Err(format!("{other:?} is not an import mode: replace or sync")),
        }
    }
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Replace => "replace",
            ImportMode::Sync => "sync",
        }
    }
}

/// Who may do something: anyone, any signed-in account, or admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Anonymous,
    User,
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Anonymous => "anonymous",
            Level::User => "user",
            Level::Admin => "admin",
        }
    }
}

/// Who may do what with a dataset's rows, declared in its `[access]` table. Default: anyone
/// reads, admins create, update and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    pub read: Level,
    pub create: Level,
    pub update: Level,
    pub delete: Level,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            read: Level::Anonymous,
            create: Level::Admin,
            update: Level::Admin,
            delete: Level::Admin,
        }
    }
}

/// How rows are identified.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Index into `Dataset::columns`.
    pub column: usize,
    /// When set, the key is not in the CSV: it is the 1-based position of the record in the file,
    /// so re-importing the same file gives every row the same key again. A client never gives it:
    /// a create gets the next one.
    pub generated: bool,
    /// Whether a create that leaves the key out gets the next one (one past the largest, under a
    /// lock): always for a generated key, and for a CSV key declared with `assign = "next"`.
    pub assigned: bool,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// `Some(delimiter)` for a multi-valued column such as "Comedy, Drama".
    pub list_delimiter: Option<String>,
    pub filterable: bool,
    pub sortable: bool,
    /// The CSV header this column is read from (None for a generated key).
    pub source: Option<String>,
    pub null_values: Vec<String>,
    pub max_length: Option<usize>,
    pub description: Option<String>,
}

impl Column {
    /// A nullable column of type `ty`, not filtered, sorted or bounded (tests shape the rest).
    #[cfg(test)]
    pub(crate) fn plain(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.to_owned(),
            ty,
            nullable: true,
            list_delimiter: None,
            filterable: false,
            sortable: false,
            source: None,
            null_values: vec![],
            max_length: None,
            description: None,
        }
    }

    pub fn is_list(&self) -> bool {
        self.list_delimiter.is_some()
    }

    /// Text equality is case-insensitive: a hidden `<name>__key` column holds the normalised value
    /// so the comparison can use a plain index on every SQL backend.
    pub fn has_key_column(&self) -> bool {
        self.filterable && !self.is_list() && self.ty == ColumnType::Text
    }

    /// Range filters (`.gte`, `.lt`, ...) apply to numbers, dates and timestamps. Text compares
    /// case-insensitively for equality, an order that a range over the raw text would not share.
    pub fn supports_range(&self) -> bool {
        self.filterable
            && !self.is_list()
            && matches!(
                self.ty,
                ColumnType::Integer | ColumnType::Float | ColumnType::Date | ColumnType::Timestamp
            )
    }

    pub fn is_null_marker(&self, raw: &str) -> bool {
        self.null_values.iter().any(|marker| marker == raw)
    }
}

impl Dataset {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_column(&self) -> &Column {
        &self.columns[self.key.column]
    }

    /// Name of the side table holding one row per element of a list column.
    pub fn list_table(&self, column: &Column) -> String {
        format!("{}__{}", self.table, column.name)
    }

    pub fn list_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.is_list())
    }
}

/// Every dataset the service knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    datasets: BTreeMap<String, Arc<Dataset>>,
}

/// Path segments under `/api` that a dataset may not be named after.
const RESERVED_NAMES: &[&str] = &["health", "version", "openapi.json", "docs", "auth", "admin"];

impl Catalog {
    /// Loads every `*.toml` file of `dir`.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Self> {
        let entries = std::fs::read_dir(dir).with_context(|| {
            format!(
                "cannot read the datasets directory {} (set DATASETS_DIR)",
                dir.display()
            )
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        let mut catalog = Catalog::default();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let dataset = parse_declaration(&text, path.parent())
                .with_context(|| format!("invalid dataset declaration {}", path.display()))?;
            catalog.insert(dataset)?;
        }
        if catalog.datasets.is_empty() {
            bail!(
                "no dataset declarations (*.toml) found in {}",
                dir.display()
            );
        }
        Ok(catalog)
    }

    pub fn insert(&mut self, dataset: Dataset) -> anyhow::Result<()> {
        let tables: HashSet<&str> = self.datasets.values().map(|d| d.table.as_str()).collect();
        if tables.contains(dataset.table.as_str()) {
            bail!("two datasets use the table {:?}", dataset.table);
        }
        if self.datasets.contains_key(&dataset.name) {
            bail!("two datasets are named {:?}", dataset.name);
        }
        self.datasets
            .insert(dataset.name.clone(), Arc::new(dataset));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Dataset>> {
        self.datasets.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        self.datasets.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.datasets.keys().map(String::as_str)
    }
}

// ---- the file format -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    name: String,
    title: Option<String>,
    description: Option<String>,
    table: Option<String>,
    cache_ttl_seconds: Option<u64>,
    null_values: Option<Vec<String>>,
    source_file: Option<PathBuf>,
    key: KeyFile,
    columns: Vec<ColumnFile>,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    csv_keep_formulas: bool,
    #[serde(default)]
    import: ImportSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    column: String,
    #[serde(default)]
    generated: Option<GeneratedKey>,
    /// `"next"`: a create without the key gets one past the largest.
    #[serde(default)]
    assign: Option<AssignedKey>,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum AssignedKey {
    Next,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum GeneratedKey {
    RowNumber,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    #[serde(rename = "type")]
    ty: ColumnType,
    #[serde(default = "yes")]
    nullable: bool,
    list_delimiter: Option<String>,
    #[serde(default)]
    filter: bool,
    #[serde(default)]
    sort: bool,
    source: Option<String>,
    null_values: Option<Vec<String>>,
    max_length: Option<usize>,
    description: Option<String>,
}

fn yes() -> bool {
    true
}

/// Parses and validates one declaration. `base` resolves `source_file`.
pub fn parse_declaration(text: &str, base: Option<&Path>) -> anyhow::Result<Dataset> {
    let file: DatasetFile = toml::from_str(text)?;
    check_identifier("dataset name", &file.name)?;
    if RESERVED_NAMES.contains(&file.name.as_str()) {
        bail!(
            "the dataset name {:?} is reserved for the API itself",
            file.name
        );
    }
    let table = file.table.unwrap_or_else(|| file.name.clone());
    check_identifier("table", &table)?;
    if table.starts_with("smartcache_") {
        bail!("table names starting with smartcache_ are reserved for the service's own tables");
    }
    let dataset_nulls = file
        .null_values
        .unwrap_or_else(|| DEFAULT_NULL_VALUES.iter().map(|s| s.to_string()).collect());

    let generated = file.key.generated == Some(GeneratedKey::RowNumber);
    let mut columns = Vec::with_capacity(file.columns.len());
    let mut seen = HashSet::new();
    for c in file.columns {
        check_identifier("column", &c.name)?;
        if c.name.contains("__") {
            bail!(
                "column {:?}: a double underscore is reserved for hidden columns",
                c.name
            );
        }
        if !seen.insert(c.name.clone()) {
            bail!("column {:?} is declared twice", c.name);
        }
        if c.list_delimiter.as_deref() == Some("") {
            bail!("column {:?}: list_delimiter must not be empty", c.name);
        }
        if c.list_delimiter.is_some() && c.ty != ColumnType::Text {
            bail!("column {:?}: only text columns can be lists", c.name);
        }
        if c.list_delimiter.is_some() && c.sort {
            bail!("column {:?}: a list column cannot be sortable", c.name);
        }
        let is_generated_key = generated && c.name == file.key.column;
        let source = match (c.source, is_generated_key) {
            (Some(_), true) => bail!("column {:?}: a generated key has no CSV source", c.name),
            (None, true) => None,
            (Some(s), false) => Some(s),
            (None, false) => Some(c.name.clone()),
        };
        columns.push(Column {
            name: c.name,
            ty: c.ty,
            nullable: c.nullable,
            list_delimiter: c.list_delimiter,
            filterable: c.filter,
            sortable: c.sort,
            source,
            null_values: c.null_values.unwrap_or_else(|| dataset_nulls.clone()),
            max_length: c.max_length,
            description: c.description,
        });
    }
    let Some(key_index) = columns.iter().position(|c| c.name == file.key.column) else {
        bail!(
            "the key column {:?} is not among the columns",
            file.key.column
        );
    };
    let key_col = &mut columns[key_index];
    if key_col.is_list() || !matches!(key_col.ty, ColumnType::Integer | ColumnType::Text) {
        bail!(
            "the key column {:?} must be an integer or text scalar",
            key_col.name
        );
    }
    if generated && key_col.ty != ColumnType::Integer {
        bail!("a generated (row_number) key must be an integer column");
    }
    let assigned = generated || file.key.assign == Some(AssignedKey::Next);
    if assigned && key_col.ty != ColumnType::Integer {
        bail!("an assigned (assign = \"next\") key must be an integer column");
    }
    // The key is never null and always sortable: it breaks ties in keyset pagination.
    key_col.nullable = false;
    key_col.sortable = true;

    Ok(Dataset {
        title: file.title.unwrap_or_else(|| file.name.clone()),
        description: file.description.unwrap_or_default(),
        name: file.name,
        table,
        key: KeySpec {
            column: key_index,
            generated,
            assigned,
        },
        columns,
        cache_ttl_seconds: file.cache_ttl_seconds,
        source_file: file.source_file.map(|f| match base {
            Some(base) if f.is_relative() => base.join(f),
            _ => f,
        }),
        access: file.access,
        csv_keep_formulas: file.csv_keep_formulas,
        import: file.import,
    })
}

fn check_identifier(what: &str, name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48;
    if !ok {
        bail!("{what} {name:?} must match [a-z][a-z0-9_]* and be at most 48 characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "things"
        key = { column = "id" }
        [[columns]]
        name = "id"
        type = "integer"
        [[columns]]
        name = "tags"
        type = "text"
        list_delimiter = ","
        filter = true
    "#;

    #[test]
    fn a_minimal_declaration_gets_defaults() {
        let ds = parse_declaration(MINIMAL, None).unwrap();
        assert_eq!(ds.table, "things");
        assert_eq!(ds.cache_ttl_seconds, None);
        assert!(ds.key_column().sortable && !ds.key_column().nullable);
        assert_eq!(ds.columns[1].source.as_deref(), Some("tags"));
        assert!(ds.columns[1].is_null_marker("NA"));
        assert_eq!(ds.list_table(&ds.columns[1]), "things__tags");
    }

    #[test]
    fn identifiers_that_could_inject_sql_are_refused() {
        let bad = MINIMAL.replace("name = \"tags\"", "name = \"tags\\\"; drop table x\"");
        let err = parse_declaration(&bad, None).unwrap_err().to_string();
        assert!(err.contains("must match"), "{err}");
        let bad = MINIMAL.replace("name = \"things\"", "name = \"Things\"");
        assert!(parse_declaration(&bad, None).is_err());
    }

    #[test]
    fn the_key_must_exist_and_names_must_not_clash() {
        let bad = MINIMAL.replace("column = \"id\"", "column = \"nope\"");
        assert!(
            parse_declaration(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("key column")
        );
        let bad = MINIMAL.replace("name = \"things\"", "name = \"health\"");
        assert!(
            parse_declaration(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        let bad = MINIMAL.replace("\"tags\"", "\"id\"");
        assert!(
            parse_declaration(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn access_defaults_to_public_reads_and_admin_writes_and_can_be_declared() {
        let ds = parse_declaration(MINIMAL, None).unwrap();
        assert_eq!(ds.access, Access::default());
        assert_eq!(ds.access.create, Level::Admin);
        let ratings = format!("{MINIMAL}\n[access]\nread = \"user\"\ncreate = \"user\"\n");
        let ds = parse_declaration(&ratings, None).unwrap();
        assert_eq!(
            (ds.access.read, ds.access.create, ds.access.delete),
            (Level::User, Level::User, Level::Admin)
        );
        assert!(
            parse_declaration(&format!("{MINIMAL}\n[access]\nread = \"everyone\"\n"), None)
                .is_err()
        );
        let reserved = MINIMAL.replace(
            "name = \"things\"",
            "name = \"things\"\ntable = \"smartcache_users\"",
        );
        assert!(parse_declaration(&reserved, None).is_err());
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors_not_silently_ignored() {
        let bad = MINIMAL.replace("filter = true", "filterable = true");
        assert!(parse_declaration(&bad, None).is_err());
    }

    #[test]
    fn the_shipped_declarations_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets");
        let catalog = Catalog::load_dir(&dir).unwrap();
        let names: Vec<_> = catalog.names().collect();
        assert_eq!(names, ["flights", "movies"]);
        let movies = catalog.get("movies").unwrap();
        for required in ["genres", "year", "rating", "languages", "countries"] {
            assert!(movies.column(required).unwrap().filterable, "{required}");
        }
        assert!(movies.key.assigned && !movies.key.generated);
        let flights = catalog.get("flights").unwrap();
        assert!(flights.key.generated && flights.key.assigned);
        for required in ["carrier", "origin", "dest", "month", "day"] {
            assert!(flights.column(required).unwrap().filterable, "{required}");
        }
    }
}
