use super::*;
use crate::datasets::parse_declaration;

fn movies() -> Dataset {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/movies.toml");
    parse_declaration(&std::fs::read_to_string(path).unwrap(), None).unwrap()
}

fn err(raw: &str) -> QueryError {
    Query::parse(&movies(), QueryKind::List, raw).unwrap_err()
}

#[test]
fn the_same_question_in_any_order_or_case_has_one_canonical_form() {
    let ds = movies();
    let a = Query::parse(&ds, QueryKind::List, "year.gte=2000&genres=Drama").unwrap();
    let b = Query::parse(
        &ds,
        QueryKind::List,
        "genres=%20drama&limit=100&year.gte=2000.0",
    );
    assert_eq!(a.canonical(&ds), "genres=drama&limit=100&year.gte=2000");
    assert_eq!(a.canonical(&ds), b.unwrap().canonical(&ds));
}

#[test]
fn values_with_separators_cannot_forge_another_key() {
    let ds = movies();
    let q = Query::parse(&ds, QueryKind::List, "title=a%26limit%3D5").unwrap();
    assert_eq!(q.canonical(&ds), "limit=100&title=a%26limit%3D5");
}

#[test]
fn bad_parameters_are_named() {
    assert_eq!(err("nope=1").parameter, "nope");
    assert_eq!(err("year=abc").parameter, "year");
    assert_eq!(err("year.between=1").parameter, "year.between");
    assert_eq!(err("genres.gte=a").parameter, "genres.gte");
    assert_eq!(err("limit=0").parameter, "limit");
    assert_eq!(err("limit=1001").parameter, "limit");
    assert_eq!(err("sort=genres").parameter, "sort");
    assert_eq!(err("cursor=!!!").parameter, "cursor");
    assert_eq!(err("year=1&year=2").parameter, "year");
    assert_eq!(err("format=csv").parameter, "format");
    // What a database would refuse with an error of its own is the client's 400.
    assert_eq!(err("title=a%00b").parameter, "title");
    assert_eq!(err("genres=a%00").parameter, "genres");
}

#[test]
fn matches_applies_the_same_rules_as_the_sql() {
    let ds = movies();
    let mut row: Vec<Value> = vec![Value::Null; ds.columns.len()];
    row[ds.column_index("genres").unwrap()] = Value::List(vec!["Comedy".into(), "Drama".into()]);
    row[ds.column_index("year").unwrap()] = Value::Integer(2001);
    row[ds.column_index("rating").unwrap()] = Value::Text("PG-13".into());
    let q = |raw: &str| Query::parse(&ds, QueryKind::List, raw).unwrap();
    assert!(q("genres=drama&year.gte=2000&rating=pg-13").matches(&ds, &row));
    assert!(q("").matches(&ds, &row));
    assert!(!q("genres=docudrama").matches(&ds, &row));
    assert!(!q("year.gt=2001").matches(&ds, &row));
    assert!(q("year.lte=2001").matches(&ds, &row));
    assert!(
        !q("metacritic.gte=0").matches(&ds, &row),
        "null never matches a comparison"
    );
    assert!(!q("genres=comedy&genres=horror").matches(&ds, &row));
}

#[test]
fn every_limit_names_what_was_too_large() {
    let ds = movies();
    let limits = QueryLimits {
        max_parameters: 32,
        ..QueryLimits::default()
    };
    let parse = |raw: &str| Query::parse_limited(&ds, QueryKind::List, raw, &limits);
    // Each list filter within its repeats, all of them together over the parameter count.
    let lists = ["genres", "languages", "countries"]
        .iter()
        .flat_map(|name| (0..limits.max_filter_repeats).map(move |i| format!("{name}=v{i}")));
    let scalars = [
        "year.gte=1",
        "year.lte=2",
        "runtime.gte=1",
        "runtime.lte=2",
        "metacritic.gte=1",
        "metacritic.lte=2",
        "rating=r",
        "imdb_id=i",
        "title=t",
    ]
    .map(str::to_owned);
    let many: Vec<String> = lists.chain(scalars).collect();
    assert!(many.len() > limits.max_parameters);
    let many = many.join("&");
    let repeats = (0..=limits.max_filter_repeats)
        .map(|i| format!("genres=g{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let cases = [
        (many, "query"),
        (repeats, "genres"),
        (
            format!("title={}", "a".repeat(limits.max_value_chars + 1)),
            "title",
        ),
        (
            format!("director={}", "é".repeat(limits.max_value_chars + 1)),
            "director",
        ),
        (
            format!("cursor={}", "a".repeat(limits.max_cursor_bytes + 1)),
            "cursor",
        ),
    ];
    for (raw, parameter) in cases {
        let error = parse(&raw).unwrap_err();
        assert_eq!(error.parameter, parameter, "{}", &raw[..40]);
    }
    let at_the_limit = (0..limits.max_filter_repeats)
        .map(|i| format!("genres=g{i}"))
        .collect::<Vec<_>>()
        .join("&");
    assert!(parse(&at_the_limit).is_ok());
}

#[test]
fn list_filters_may_repeat_to_require_every_element() {
    let ds = movies();
    let q = Query::parse(&ds, QueryKind::List, "genres=Drama&genres=Comedy").unwrap();
    assert_eq!(q.filters.len(), 2);
}

#[test]
fn cursors_round_trip_and_are_bound_to_their_sort() {
    let ds = movies();
    let sort = parse_sort(&ds, "-year").unwrap();
    let cursor = Cursor {
        sort_value: Value::Integer(1999),
        key: Value::Integer(42),
    };
    let raw = encode_cursor(&ds, sort, &cursor);
    let q = Query::parse(&ds, QueryKind::List, &format!("sort=-year&cursor={raw}")).unwrap();
    assert_eq!(q.cursor, Some(cursor));
    let other = Query::parse(&ds, QueryKind::List, &format!("sort=year&cursor={raw}"));
    assert_eq!(other.unwrap_err().parameter, "cursor");
}

#[test]
fn any_of_lists_are_one_question_in_any_order_spelling_or_repetition() {
    let ds = movies();
    let canonical = |raw: &str| {
        Query::parse(&ds, QueryKind::Count, raw)
            .unwrap()
            .canonical(&ds)
    };
    assert_eq!(canonical("rating.in=PG,PG-13"), "rating.in=pg,pg-13");
    assert_eq!(canonical("rating.in=pg-13,%20PG,pg"), "rating.in=pg,pg-13");
    assert_eq!(canonical("year.in=2001,1999,2001.0"), "year.in=1999,2001");
    // A comma inside a value is escaped in the query and in the key alike.
    assert_eq!(
        canonical("title.in=The%20Good%5C,%20the%20Bad,Heat"),
        "title.in=heat,the%20good%2C%20the%20bad"
    );
    assert_ne!(canonical("title.in=a%5C,b"), canonical("title.in=a,b"));
    assert_eq!(canonical(""), "");
}

#[test]
fn any_of_values_split_on_unescaped_commas() {
    assert_eq!(split_any_of("a,b"), ["a", "b"]);
    assert_eq!(split_any_of(r"a\,b,c"), ["a,b", "c"]);
    assert_eq!(split_any_of(r"a\\,b"), [r"a\", "b"]);
    assert_eq!(split_any_of(""), [""]);
    assert_eq!(split_any_of("a,"), ["a", ""]);
    assert_eq!(split_any_of(r"trailing\"), [r"trailing\"]);
}

#[test]
fn an_any_of_filter_matches_a_row_like_its_sql() {
    let ds = movies();
    let query = Query::parse(
        &ds,
        QueryKind::Count,
        "genres.in=western,noir&year.in=1950,1951",
    )
    .unwrap();
    let mut row = vec![Value::Null; ds.columns.len()];
    let (genres, year) = (
        ds.column_index("genres").unwrap(),
        ds.column_index("year").unwrap(),
    );
    row[genres] = Value::List(vec!["Drama".into(), "Western".into()]);
    row[year] = Value::Integer(1951);
    assert!(query.matches(&ds, &row));
    row[year] = Value::Integer(1952);
    assert!(!query.matches(&ds, &row));
    row[year] = Value::Integer(1950);
    row[genres] = Value::List(vec!["Drama".into()]);
    assert!(!query.matches(&ds, &row));
}

#[test]
fn any_of_lists_are_bounded() {
    let ds = movies();
    let many = (0..65).map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let error = Query::parse(&ds, QueryKind::Count, &format!("year.in={many}")).unwrap_err();
    assert!(error.reason.contains("MAX_ANY_OF_VALUES"), "{error}");
    let long = "a".repeat(600);
    let error = Query::parse(&ds, QueryKind::Count, &format!("title.in=b,{long}")).unwrap_err();
    assert!(error.reason.contains("too long"), "{error}");
}
