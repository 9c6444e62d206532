//! Every statement shape pinned as text in the dialects this machine cannot run (SQL Server) or
//! whose spelling matters most (MySQL); the unit tests of each part sit beside it.

use super::*;
use crate::datasets::{Catalog, ColumnType, Dataset, Value, parse_declaration};
use crate::query::{Query, QueryKind};

/// The bundled movies declaration, which exercises every column kind.
pub(super) fn movies() -> Dataset {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/movies.toml");
    parse_declaration(&std::fs::read_to_string(path).unwrap(), None).unwrap()
}

/// `row` as `writes::get_for_update` reads it back once stored: its normalised keys after it.
pub(super) fn as_stored(ds: &Dataset, row: &[Value]) -> Vec<Value> {
    let keys = stored_columns(ds)
        .into_iter()
        .filter(|c| matches!(c, StoredColumn::NormalisedKey(_)))
        .map(|c| stored_value(ds, &row.to_vec(), c));
    row.iter().cloned().chain(keys).collect()
}

/// SQL Server has no server here: its statements are pinned as text (reviewed against the
/// T-SQL reference) so that a change to them is a visible change to this test.
#[test]
fn t_sql_statements_for_every_query_shape() {
    let ds = movies();
    let d = Dialect::SqlServer;
    let columns = "t.[id], t.[imdb_id], t.[title], t.[year], t.[rating], t.[runtime], \
        t.[genres], t.[director], t.[languages], t.[countries], t.[metacritic], t.[oscars], \
        t.[meter], t.[reviews], t.[box_office]";
    let q = Query::parse(
        &ds,
        QueryKind::List,
        "genres=Drama&year.gte=2000&title=Up&sort=-year&limit=5",
    )
    .unwrap();
    let st = list(&ds, &q, d);
    assert_eq!(
        st.sql,
        format!(
            "SELECT {columns} FROM [movies] t WHERE t.[id] IN (SELECT e0.[row_id] FROM \
             [movies__genres] e0 WHERE e0.[value_key] = @P1) AND t.[year] >= @P2 AND \
             t.[title__key] = @P3 ORDER BY CASE WHEN t.[year] IS NULL THEN 1 ELSE 0 END, \
             t.[year] DESC, t.[id] ASC OFFSET 0 ROWS FETCH NEXT @P4 ROWS ONLY"
        )
    );
    assert_eq!(
        st.params,
        vec![
            Value::Text("drama".into()),
            Value::Integer(2000),
            Value::Text("up".into()),
            Value::Integer(6)
        ]
    );
    let export_query = Query::parse(&ds, QueryKind::Export, "sort=title").unwrap();
    assert!(export(&ds, &export_query, d).sql.ends_with(
        "FROM [movies] t ORDER BY CASE WHEN t.[title] IS NULL THEN 1 ELSE 0 END, \
         t.[title] ASC, t.[id] ASC"
    ));
    assert_eq!(
        get_for_update(&ds, &Value::Integer(9), d).sql,
        format!(
            "SELECT {columns}, t.[imdb_id__key], t.[title__key], t.[rating__key] \
             FROM [movies] t WITH (UPDLOCK, HOLDLOCK, ROWLOCK) WHERE t.[id] = @P1"
        )
    );
    let by_year = Query::parse(&ds, QueryKind::Facets, "year=2001").unwrap();
    assert_eq!(
        facets(&ds, ds.column_index("genres").unwrap(), &by_year, d).sql,
        "SELECT MIN(l.[value]), COUNT(*) AS n FROM [movies__genres] l WHERE l.[row_id] IN \
         (SELECT t.[id] FROM [movies] t WHERE t.[year] = @P1) GROUP BY l.[value_key] \
         ORDER BY n DESC, MIN(l.[value]) OFFSET 0 ROWS FETCH NEXT @P2 ROWS ONLY"
    );
    assert_eq!(
        delete_list_elements(&ds, ds.column("genres").unwrap(), &Value::Integer(9), d).sql,
        "DELETE FROM [movies__genres] WHERE [row_id] = @P1"
    );
    assert!(lock_for_generated_keys(&ds, d).is_none());
    assert_eq!(
        next_generated_key(&ds, d).sql,
        "SELECT COALESCE(MAX([id]), 0) + 1 FROM [movies] WITH (TABLOCKX, HOLDLOCK)"
    );
    // A long list is inserted 500 elements per statement (at most 1,500 parameters).
    let mut long = vec![Value::Null; ds.columns.len()];
    long[0] = Value::Integer(9);
    let genres = ds.column_index("genres").unwrap();
    long[genres] = Value::List((0..1200).map(|i| format!("g{i}")).collect());
    let inserts = insert_list_elements(&ds, genres, &long, d);
    assert_eq!(inserts.len(), 3);
    assert!(inserts.iter().all(|i| i.params.len() <= 1500));
    assert_eq!(inserts.iter().map(|i| i.params.len()).sum::<usize>(), 3600);
    let mut row = vec![Value::Null; ds.columns.len()];
    row[0] = Value::Integer(9);
    row[ds.column_index("title").unwrap()] = Value::Text("Up".into());
    let insert = insert_row(&ds, &row, d);
    assert!(
        insert.sql.contains(
            "VALUES (CAST(@P1 AS BIGINT), CAST(NULL AS NVARCHAR(16)), CAST(@P2 AS NVARCHAR(300))"
        ),
        "{}",
        insert.sql
    );
    let mut old = row.clone();
    old[ds.column_index("title").unwrap()] = Value::Text("Down".into());
    old[ds.column_index("rating").unwrap()] = Value::Text("R".into());
    assert!(
        update_row(&ds, &as_stored(&ds, &old), &row, d)
            .unwrap()
            .sql
            .ends_with("[title__key] = CAST(@P2 AS NVARCHAR(450)), [rating__key] = CAST(NULL AS NVARCHAR(450)) WHERE [id] = @P3")
    );
    // A migration's filling of a hidden key (run here on the other engines only).
    let title = ds.column_index("title").unwrap();
    assert_eq!(
        unfilled_keys(&ds, title, Some(&Value::Integer(7)), 1000, d).sql,
        "SELECT t.[id], t.[title] FROM [movies] t WITH (UPDLOCK, ROWLOCK) WHERE t.[title__key] IS NULL \
         AND t.[title] IS NOT NULL AND t.[id] > @P1 ORDER BY t.[id] OFFSET 0 ROWS FETCH NEXT @P2 ROWS ONLY"
    );
    assert_eq!(
        fill_key(&ds, title, Value::Integer(7), "up".into(), d).sql,
        "UPDATE [movies] SET [title__key] = CAST(@P1 AS NVARCHAR(450)) WHERE [id] = @P2"
    );
    // Types: indexable text is bounded, dates and times are native, keys compare by bytes.
    let ddl = create_tables(&ds, d, &Placement::default(), true);
    assert!(ddl[0].starts_with(
        "IF OBJECT_ID(N'[movies]', N'U') IS NULL CREATE TABLE [movies] ([id] BIGINT NOT NULL PRIMARY KEY, \
         [imdb_id] NVARCHAR(16), [title] NVARCHAR(300) NOT NULL, [year] BIGINT"
    ));
    assert!(ddl[0].contains("[title__key] NVARCHAR(450) COLLATE Latin1_General_100_BIN2"));
    assert!(ddl[0].contains("[box_office] FLOAT"));
    assert_eq!(
        ddl[1],
        "IF OBJECT_ID(N'[movies__genres]', N'U') IS NULL CREATE TABLE [movies__genres] \
         ([row_id] BIGINT NOT NULL, [value] NVARCHAR(MAX) NOT NULL, \
         [value_key] NVARCHAR(450) COLLATE Latin1_General_100_BIN2 NOT NULL)"
    );
    let index = &indexes(&ds, d)[1];
    assert_eq!(
        create_index(d, index, &Placement::default()),
        "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'movies__title__key__idx' AND \
         object_id = OBJECT_ID(N'[movies]')) CREATE INDEX [movies__title__key__idx] ON [movies] \
         ([title__key], [id])"
    );
    let flights =
        Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets"))
            .unwrap();
    let flights = flights.get("flights").unwrap();
    let timestamp = flights
        .columns
        .iter()
        .find(|c| c.ty == ColumnType::Timestamp);
    if let Some(column) = timestamp {
        assert_eq!(d.declared_type(column), "DATETIMEOFFSET");
    }
}

#[test]
fn mysql_statements_for_every_query_shape() {
    let ds = movies();
    let d = Dialect::MySql;
    let q = Query::parse(
        &ds,
        QueryKind::List,
        "genres=Drama&year.gte=2000&title=Up&sort=-year&limit=5",
    )
    .unwrap();
    let st = list(&ds, &q, d);
    assert!(
        st.sql.ends_with(
            "FROM `movies` t WHERE t.`id` IN (SELECT e0.`row_id` FROM `movies__genres` e0 \
             WHERE e0.`value_key` = ?) AND t.`year` >= ? AND t.`title__key` = ? \
             ORDER BY (t.`year` IS NULL), t.`year` DESC, t.`id` ASC LIMIT ?"
        ),
        "{}",
        st.sql
    );
    assert_eq!(st.params.len(), 4);
    assert!(
        get_for_update(&ds, &Value::Integer(9), d)
            .sql
            .ends_with("WHERE t.`id` = ? FOR UPDATE")
    );
    // Assigned keys: a row lock serialises them (no LOCK TABLES, which would end the
    // transaction; the locking read of the largest key alone takes shared gap locks).
    assert_eq!(
        lock_for_generated_keys(&ds, d).unwrap().params,
        [Value::Text("movies".into())]
    );
    assert_eq!(
        next_generated_key(&ds, d).sql,
        "SELECT COALESCE(MAX(`id`), 0) + 1 FROM `movies` FOR UPDATE"
    );
    // Nulls are keywords, values plain parameters (MySQL types each parameter as it is sent).
    let mut row = vec![Value::Null; ds.columns.len()];
    row[0] = Value::Integer(9);
    row[ds.column_index("title").unwrap()] = Value::Text("Up".into());
    let insert = insert_row(&ds, &row, d);
    assert!(
        insert.sql.contains("VALUES (?, NULL, ?, NULL"),
        "{}",
        insert.sql
    );
    // Types: short text is VARCHAR, long text MEDIUMTEXT, keys compare by bytes; InnoDB in
    // utf8mb4 whatever the server's defaults.
    let ddl = create_tables(&ds, d, &Placement::default(), true);
    assert!(
        ddl[0].starts_with(
            "CREATE TABLE IF NOT EXISTS `movies` (`id` BIGINT NOT NULL PRIMARY KEY, \
             `imdb_id` VARCHAR(16), `title` VARCHAR(300) NOT NULL, `year` BIGINT"
        ),
        "{}",
        ddl[0]
    );
    assert!(ddl[0].contains("`title__key` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"));
    assert!(ddl[0].ends_with(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"));
    assert!(ddl[1].contains("`value` MEDIUMTEXT NOT NULL"), "{}", ddl[1]);
    // No `IF NOT EXISTS` for indexes (the driver takes "duplicate key name" as done); text
    // too long for an index key is indexed by its prefix.
    let all = indexes(&ds, d);
    let title = all.iter().find(|i| i.name == "movies__title__idx").unwrap();
    assert_eq!(
        create_index(d, title, &Placement::default()),
        "CREATE INDEX `movies__title__idx` ON `movies` (`title`, `id`)"
    );
    let mut long = ds.clone();
    let title_index = long.column_index("title").unwrap();
    long.columns[title_index].max_length = None;
    let all = indexes(&long, d);
    let title = all.iter().find(|i| i.name == "movies__title__idx").unwrap();
    assert_eq!(
        create_index(d, title, &Placement::default()),
        "CREATE INDEX `movies__title__idx` ON `movies` (`title`(255), `id`)"
    );
    assert_eq!(d.declared_type(&long.columns[title_index]), "MEDIUMTEXT");
}
