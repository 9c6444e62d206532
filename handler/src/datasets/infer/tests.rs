use super::super::{Column, parse_declaration};
use super::*;

/// The inference of a CSV given as a header and rows of fields.
fn infer(header: &[&str], rows: &[Vec<&str>]) -> Inference {
    let mut inferrer = Inferrer::new(header.iter().map(|h| h.to_string()).collect());
    for (i, row) in rows.iter().enumerate() {
        inferrer.observe(row, i as u64 + 2);
    }
    inferrer.finish()
}

/// One column of values, with a unique `id` beside it.
fn column(values: &[&str]) -> Inferred {
    let rows: Vec<Vec<&str>> = values.iter().map(|v| vec![*v]).collect();
    infer(&["c"], &rows).columns.remove(0)
}

/// What an import does with one field: its null markers, its list, its type, then the rules.
fn imports(column: &Column, is_key: bool, raw: &str) -> Result<(), String> {
    let value = if column.is_null_marker(raw) {
        Value::Null
    } else if let Some(delimiter) = &column.list_delimiter {
        Value::parse_list(raw, delimiter)
    } else {
        Value::parse_scalar(column.ty, raw).map_err(|e| e.to_string())?
    };
    rules::check(column, is_key, &value, rules::EngineRules::default())
}

#[test]
fn a_decimal_on_the_last_line_makes_a_column_float() {
    let mut values = vec!["1"; 5000];
    values.push("12.5");
    let c = column(&values);
    assert_eq!(c.ty, ColumnType::Float);
    assert!(
        c.notes[0].contains("1 like 12.5 (first on line 5002) made this float, not integer"),
        "{:?}",
        c.notes
    );
    // Whole numbers written as floats are integers to the importer.
    assert_eq!(column(&["1", "90.0", "-3"]).ty, ColumnType::Integer);
    assert_eq!(column(&["1", "1e3"]).ty, ColumnType::Float);
    // Too big for an integer.
    assert_eq!(column(&["1", "99999999999999999999"]).ty, ColumnType::Float);
}

#[test]
fn dates_timestamps_and_booleans_are_what_the_importer_reads() {
    assert_eq!(column(&["2024-02-29", "2013-01-01"]).ty, ColumnType::Date);
    assert_eq!(
        column(&["2013-01-01T10:00:00Z", "2013-06-01T12:30:00+02:00"]).ty,
        ColumnType::Timestamp
    );
    // Mixed, or outside the years every engine stores, or not ISO: text.
    assert_eq!(
        column(&["2024-02-29", "2013-01-01T10:00:00Z"]).ty,
        ColumnType::Text
    );
    assert_eq!(column(&["2024-02-30"]).ty, ColumnType::Text);
    assert_eq!(column(&["0000-01-01"]).ty, ColumnType::Text);
    assert_eq!(column(&["01/02/2024"]).ty, ColumnType::Text);
    assert_eq!(
        column(&["true", "False", "yes", "t"]).ty,
        ColumnType::Boolean
    );
    assert_eq!(column(&["0", "1", "1"]).ty, ColumnType::Integer);
    assert_eq!(column(&["Y", "N"]).ty, ColumnType::Text);
}

#[test]
fn null_markers_are_declared_where_the_rest_is_typed() {
    let c = column(&["1", "NA", "-", "", "4"]);
    assert_eq!(c.ty, ColumnType::Integer);
    assert!(c.nullable);
    assert_eq!(c.null_values, ["", "NA", "-"]);
    // Only empty fields: the dataset's null_values do.
    let c = column(&["1.5", "", "4"]);
    assert!(c.nullable && c.null_values.is_empty());
    // In text, "NA" is a value (Namibia) and stays one.
    let c = column(&["NA", "ZA", ""]);
    assert_eq!(c.ty, ColumnType::Text);
    assert!(c.nullable && c.null_values.is_empty());
    assert!(
        c.notes.iter().any(|n| n.contains("kept as text")),
        "{:?}",
        c.notes
    );
    // No value missing: not nullable.
    assert!(!column(&["a", "b"]).nullable);
    // A column of nothing but markers is nullable text.
    let c = column(&["", ""]);
    assert!(c.ty == ColumnType::Text && c.nullable && c.max_length.is_none());
}

#[test]
fn lists_are_short_repeated_tokens() {
    let genres = [
        "Comedy, Drama",
        "Drama",
        "Action, Comedy",
        "Drama, Romance",
        "Comedy",
    ];
    let values: Vec<&str> = genres.iter().cycle().take(50).copied().collect();
    let c = column(&values);
    assert_eq!(c.list_delimiter.as_deref(), Some(","));
    assert!(c.filter && !c.sort);
    let values: Vec<&str> = ["a|b", "b|c", "a", "c|a", "b"]
        .iter()
        .cycle()
        .take(20)
        .copied()
        .collect();
    let c = column(&values);
    assert_eq!(c.list_delimiter.as_deref(), Some("|"));
    // Names with a comma are not lists: their parts do not repeat.
    let names: Vec<String> = (0..100).map(|i| format!("Smith{i}, John{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(column(&names).list_delimiter, None);
    // A sentence now and then is not a list either.
    let mut prose = vec!["fine"; 100];
    prose.push("one, two");
    assert_eq!(column(&prose).list_delimiter, None);
    // Rare delimited values make a list when their elements are values elsewhere...
    let mut regions = vec!["Europe"; 50];
    regions.extend(["Asia"; 50]);
    regions.extend(["Asia, Europe"; 2]);
    assert_eq!(column(&regions).list_delimiter.as_deref(), Some(","));
    // Even when the column's whole values are too many to count (movies' countries: 1,014).
    let mut countries: Vec<String> = (0..1500).map(|i| format!("t{}", i % 50)).collect();
    countries.extend((0..1100).map(|i| format!("t{}, t{}", i % 50, 49 - i / 50 % 49)));
    let countries: Vec<&str> = countries.iter().map(String::as_str).collect();
    assert_eq!(column(&countries).list_delimiter.as_deref(), Some(","));
    // ... and not when they are not.
    let mut cities = vec!["Boston"; 50];
    cities.extend(["Chicago"; 50]);
    cities.extend(["Washington, D.C."; 2]);
    assert_eq!(column(&cities).list_delimiter, None);
}

#[test]
fn text_lengths_filters_and_sorts() {
    let c = column(&["abc", "de", "abc", "de"]);
    assert_eq!(c.max_length, Some(16));
    assert!(c.filter && !c.sort);
    let long = "x".repeat(300);
    let c = column(&[long.as_str(), "y"]);
    assert_eq!(c.max_length, Some(1024));
    assert!(!c.filter);
    // Numbers filter and sort, unless they never change.
    // (Values that repeat: a unique column would be the key, sorted and looked up as such.)
    let c = column(&["1", "2", "2"]);
    assert!(c.filter && c.sort);
    let c = column(&["2013", "2013"]);
    assert!(!c.filter && !c.sort);
    // A title sorts.
    let rows = vec![vec!["Alien"], vec!["Brazil"], vec!["Alien"]];
    let title = infer(&["Title"], &rows).columns.remove(0);
    assert!(title.sort && title.filter);
}

#[test]
fn the_key_is_a_unique_column_preferably_an_id_else_the_row_number() {
    let rows = vec![
        vec!["a", "10", "x"],
        vec!["b", "11", "x"],
        vec!["c", "12", "y"],
    ];
    let inference = infer(&["name", "movieID", "kind"], &rows);
    assert_eq!(inference.key, Key::Column(1));
    assert_eq!(inference.columns[1].name, "movie_id");
    // Without an id, the first unique column.
    let inference = infer(&["name", "n", "kind"], &rows);
    assert_eq!(inference.key, Key::Column(0));
    // A duplicate, a missing value, or a case-only difference rule a column out.
    let rows = vec![vec!["1", "A", "p"], vec!["1", "a", "q"], vec!["2", "b", ""]];
    let inference = infer(&["id", "code", "other"], &rows);
    assert_eq!(inference.key, Key::RowNumber("id_2".into()));
    let rows = vec![vec!["1.5"], vec!["2.5"]];
    assert_eq!(infer(&["x"], &rows).key, Key::RowNumber("id".into()));
}

#[test]
fn identifiers_are_snake_case_and_unique() {
    let cases = [
        ("imdbID", "imdb_id"),
        ("BoxOffice", "box_office"),
        ("HTTPServer", "http_server"),
        ("Country name", "country_name"),
        ("Größe (cm)", "grosse_cm"),
        ("2nd place", "c_2nd_place"),
        ("__x__y__", "x_y"),
        ("", "column"),
        ("日本", "column"),
        ("dep_delay", "dep_delay"),
    ];
    for (header, name) in cases {
        assert_eq!(identifier(header), name, "{header}");
    }
    assert_eq!(identifier(&"a".repeat(60)).len(), 48);
    let inference = infer(&["Name", "name", "NAME"], &[vec!["a", "b", "c"]]);
    let names: Vec<&str> = inference.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["name", "name_2", "name_3"]);
    assert_eq!(
        dataset_name(None, "Movies 2024.csv.gz").unwrap(),
        "movies_2024"
    );
    assert!(dataset_name(None, "health.csv").is_err());
    assert!(dataset_name(Some("Bad"), "x.csv").is_err());
    assert!(dataset_name(Some("smartcache_x"), "x.csv").is_err());
    assert_eq!(dataset_name(Some("good"), "x.csv").unwrap(), "good");
}

#[test]
fn the_declaration_parses_and_takes_every_row() {
    let header = [
        "ID", "Title", "Genre", "Year", "Score", "When", "Seen", "Note",
    ];
    let base = [
        [
            "Alien \"quoted\"",
            "Horror, Sci-Fi",
            "1979",
            "8.5",
            "2024-01-01",
            "true",
            "",
        ],
        ["8½", "Drama", "1963", "NA", "2024-01-02", "false", "NA"],
        ["Brazil", "Comedy, Sci-Fi", "1985", "7", "", "yes", "-"],
        ["Ran", "Drama, War", "N/A", "8", "2024-01-04", "no", "x"],
    ];
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let rows: Vec<Vec<&str>> = ids
        .iter()
        .zip(base.iter().cycle())
        .map(|(id, rest)| {
            std::iter::once(id.as_str())
                .chain(rest.iter().copied())
                .collect()
        })
        .collect();
    let inference = infer(&header, &rows);
    let text = inference.render("films", "films.csv", Some("films.csv"));
    let dataset = parse_declaration(&text, None).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    assert_eq!(dataset.columns[dataset.key.column].name, "id");
    assert_eq!(
        dataset.column("title").unwrap().source.as_deref(),
        Some("Title")
    );
    assert!(dataset.column("genre").unwrap().is_list());
    assert_eq!(dataset.column("score").unwrap().ty, ColumnType::Float);
    for row in &rows {
        for (i, column) in dataset.columns.iter().enumerate() {
            let result = imports(column, i == dataset.key.column, row[i]);
            assert!(
                result.is_ok(),
                "{}: {:?} {result:?}\n{text}",
                column.name,
                row[i]
            );
        }
    }
    // A generated key is declared first, without a source.
    let rows = vec![vec!["x"], vec!["x"]];
    let text = infer(&["v"], &rows).render("dups", "dups.csv", None);
    let dataset = parse_declaration(&text, None).unwrap();
    assert!(dataset.key.generated && dataset.key_column().source.is_none());
}

#[test]
fn malformed_records_are_counted_and_named() {
    let mut inferrer = Inferrer::new(vec!["a".into(), "b".into()]);
    inferrer.observe(&["1", "2"], 2);
    inferrer.observe(&["1"], 3);
    inferrer.observe(&["3", "a\0b"], 4);
    let inference = inferrer.finish();
    assert_eq!((inference.rows, inference.malformed), (1, 2));
    assert_eq!(inference.columns[1].ty, ColumnType::Integer);
    let text = inference.render("x", "x\n.csv", None);
    assert!(text.contains("2 records the import will reject whatever is declared, the first on line 3: expected 2 fields, found 1"), "{text}");
    assert!(
        text.starts_with("# Written by `handler datasets init` from x?.csv"),
        "{text}"
    );
    parse_declaration(&text, None).unwrap();
}

#[test]
fn a_repeated_header_is_left_out() {
    let rows = vec![vec!["1", "a", "x"], vec!["2", "b", "y"]];
    let inference = infer(&["id", "v", "v"], &rows);
    assert_eq!(inference.columns.len(), 2);
    assert_eq!(inference.repeated, ["\"v\" (column 3)"]);
    let text = inference.render("r", "r.csv", None);
    assert!(
        text.contains(
            "# Left out, as an import reads only the first column of a header: \"v\" (column 3)"
        ),
        "{text}"
    );
    parse_declaration(&text, None).unwrap();
}
