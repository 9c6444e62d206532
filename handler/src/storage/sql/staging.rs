//! An import's statements: its session settings, the staged tables it loads out of readers'
//! sight, and the swap that makes them the dataset's tables at once.
//!
//! Where the staged tables live: PostgreSQL builds them in a schema of its own and moves them
//! over with `SET SCHEMA`; the others build `<table>__import` beside the live table and rename it
//! over it. How the rows get in (COPY, bulk load, multi-row `INSERT`) is each driver's own.

use super::{
    Dialect, Placement, create_index, create_tables, drop_tables, index_columns, indexes, tables,
};
use crate::datasets::Dataset;

/// PostgreSQL's staging schema.
const STAGING_SCHEMA: &str = "smartcache_import";
/// The suffix of a staged table elsewhere.
const STAGING_SUFFIX: &str = "__import";
/// MySQL renames the live tables to this during the swap, then drops them.
const RETIRED_SUFFIX: &str = "__retired";

/// Where an import stages the dataset's tables.
pub fn placement(dialect: Dialect) -> Placement {
    match dialect {
        Dialect::Postgres => Placement {
            schema: Some(STAGING_SCHEMA.to_owned()),
            suffix: "",
        },
        Dialect::Sqlite | Dialect::MySql | Dialect::SqlServer => Placement {
            schema: None,
            suffix: STAGING_SUFFIX,
        },
    }
}

/// Settings of the import's connection, set before it loads anything.
pub fn session(dialect: Dialect) -> Option<&'static str> {
    match dialect {
        // Index builds dominate a large import: sort in memory, on every core.
        Dialect::Sqlite => Some(
            "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536; PRAGMA threads = 4; \
             PRAGMA analysis_limit = 2000",
        ),
        Dialect::Postgres => None,
        // Keys are unique already (the importer checks), so InnoDB need not check them again.
        // The swap waits at most 30 s for readers and writers of the live tables (the default
        // is a year, and every new reader would queue behind it).
        Dialect::MySql => Some("SET SESSION unique_checks = 0, lock_wait_timeout = 30"),
        // The swap waits at most 30 s for readers and writers of the live tables.
        Dialect::SqlServer => Some("SET LOCK_TIMEOUT 30000"),
    }
}

/// Empty staged tables. Tables left by an import that died are stale: they are dropped first.
/// PostgreSQL's have no primary key while loading: keys are unique already and one index build
/// at the end is much faster than maintaining it row by row. The others' keep theirs (InnoDB
/// stores rows in key order) but no other index yet.
pub fn create(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    let staging = placement(dialect);
    let mut statements = Vec::new();
    if dialect == Dialect::Postgres {
        statements.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            dialect.quote(STAGING_SCHEMA)
        ));
    }
    statements.extend(drop_tables(dataset, dialect, &staging));
    let primary_key = dialect != Dialect::Postgres;
    statements.extend(create_tables(dataset, dialect, &staging, primary_key));
    statements
}

/// Drops the staged tables (an import abandoned, or one that failed before its swap).
pub fn discard(dataset: &Dataset, dialect: Dialect) -> Vec<String> {
    drop_tables(dataset, dialect, &placement(dialect))
}

/// What makes the staged tables the dataset's tables, in three steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Swap {
    /// Keys, indexes and statistics of the staged tables, built before the swap (readers are not
    /// affected); independent of each other. A failure discards the import.
    pub build: Vec<String>,
    /// The swap, in this order; readers see the old rows or the new ones.
    pub swap: Vec<String>,
    /// Whether the swap must run in one transaction (MySQL's one `RENAME TABLE` is atomic by
    /// itself, and its DDL would commit a transaction anyway).
    pub transaction: bool,
    /// Afterwards: the replaced tables dropped. A failure is only logged: the new rows are live,
    /// and the next import drops leftovers.
    pub cleanup: Vec<String>,
}

/// The swap of the staged tables. `live_schema` is where PostgreSQL moves them (its import
/// connection's `current_schema()`); the others rename them beside the live tables and take
/// `None`.
pub fn swap(dataset: &Dataset, dialect: Dialect, live_schema: Option<&str>) -> Swap {
    match dialect {
        Dialect::Sqlite => sqlite_swap(dataset),
        Dialect::Postgres => {
            let live_schema = live_schema.expect("PostgreSQL's swap names the live schema");
            postgres_swap(dataset, live_schema)
        }
        Dialect::MySql => mysql_swap(dataset),
        Dialect::SqlServer => sql_server_swap(dataset),
    }
}

/// `ANALYZE` of each of the dataset's tables where `placement` puts them.
fn analyze(dataset: &Dataset, dialect: Dialect, placement: &Placement) -> Vec<String> {
    tables(dataset)
        .iter()
        .map(|t| format!("ANALYZE {}", placement.table(dialect, t)))
        .collect()
}

/// One write transaction drops the old tables, renames the staged ones and builds the indexes;
/// WAL readers keep seeing the old rows until it commits. Fresh statistics, so the planner picks
/// the filter indexes from the first query on.
fn sqlite_swap(dataset: &Dataset) -> Swap {
    let dialect = Dialect::Sqlite;
    let (staging, live) = (placement(dialect), Placement::default());
    let mut swap = Vec::new();
    for table in tables(dataset) {
        swap.push(format!(
            "DROP TABLE IF EXISTS {}",
            live.table(dialect, &table)
        ));
        swap.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            staging.table(dialect, &table),
            live.table(dialect, &table)
        ));
    }
    swap.extend(
        indexes(dataset, dialect)
            .iter()
            .map(|index| create_index(dialect, index, &live)),
    );
    swap.extend(analyze(dataset, dialect, &live));
    Swap {
        build: Vec::new(),
        swap,
        transaction: true,
        cleanup: Vec::new(),
    }
}

/// Indexes on the staged tables, then the old tables dropped and the staged ones renamed with
/// `sp_rename` (which takes bare names).
fn sql_server_swap(dataset: &Dataset) -> Swap {
    let dialect = Dialect::SqlServer;
    let staging = placement(dialect);
    let build = indexes(dataset, dialect)
        .iter()
        .map(|index| create_index(dialect, index, &staging))
        .collect();
    let mut swap = drop_tables(dataset, dialect, &Placement::default());
    for table in tables(dataset) {
        swap.push(format!(
            "EXEC sp_rename N'{table}{STAGING_SUFFIX}', N'{table}'"
        ));
    }
    Swap {
        build,
        swap,
        transaction: true,
        cleanup: Vec::new(),
    }
}

/// The key (a unique index, made the primary key in the swap), indexes and statistics on the
/// staged tables, each in a transaction of its own that sorts in memory (`SET LOCAL` keeps the
/// setting to that transaction, not the pooled connection); then the live tables dropped and the
/// staged ones moved to the live schema.
fn postgres_swap(dataset: &Dataset, live_schema: &str) -> Swap {
    let dialect = Dialect::Postgres;
    let staging = &placement(dialect);
    let live = Placement {
        schema: Some(live_schema.to_owned()),
        suffix: "",
    };
    let key_index = dialect.quote(&format!("{}_pkey", dataset.table));
    let mut build = vec![format!(
        "CREATE UNIQUE INDEX {key_index} ON {} ({})",
        staging.table(dialect, &dataset.table),
        dialect.quote(&dataset.key_column().name)
    )];
    build.extend(
        indexes(dataset, dialect)
            .iter()
            .map(|index| create_index(dialect, index, staging)),
    );
    build.extend(analyze(dataset, dialect, staging));
    let build = build
        .into_iter()
        .map(|statement| {
            format!("BEGIN; SET LOCAL maintenance_work_mem = '256MB'; {statement}; COMMIT")
        })
        .collect();
    let mut swap = vec![format!(
        "ALTER TABLE {} ADD CONSTRAINT {key_index} PRIMARY KEY USING INDEX {key_index}",
        staging.table(dialect, &dataset.table),
    )];
    swap.extend(drop_tables(dataset, dialect, &live));
    for table in tables(dataset) {
        swap.push(format!(
            "ALTER TABLE {} SET SCHEMA {}",
            staging.table(dialect, &table),
            dialect.quote(live_schema)
        ));
    }
    Swap {
        build,
        swap,
        transaction: true,
        cleanup: Vec::new(),
    }
}

/// Every index of a staged table in one `ALTER TABLE` (InnoDB reads the table once and sorts
/// each index, instead of updating them row by row during the load); then one `RENAME TABLE`
/// that moves the live tables aside and the staged ones in, for every table at once.
fn mysql_swap(dataset: &Dataset) -> Swap {
    let dialect = Dialect::MySql;
    let (staging, live) = (&placement(dialect), &Placement::default());
    let all = indexes(dataset, dialect);
    let mut build = Vec::new();
    for table in tables(dataset) {
        let additions: Vec<String> = all
            .iter()
            .filter(|index| index.table == table)
            .map(|index| {
                format!(
                    "ADD INDEX {} {}",
                    dialect.quote(&index.name),
                    index_columns(dialect, index)
                )
            })
            .collect();
        if !additions.is_empty() {
            build.push(format!(
                "ALTER TABLE {} {}",
                staging.table(dialect, &table),
                additions.join(", ")
            ));
        }
    }
    let retired = Placement {
        schema: None,
        suffix: RETIRED_SUFFIX,
    };
    // RENAME needs a live table to move aside: a first import has none yet.
    let mut swap = create_tables(dataset, dialect, live, true);
    swap.extend(drop_tables(dataset, dialect, &retired));
    let q = |placement: &Placement, table: &str| placement.table(dialect, table);
    let renames: Vec<String> = tables(dataset)
        .iter()
        .flat_map(|table| {
            [
                format!("{} TO {}", q(live, table), q(&retired, table)),
                format!("{} TO {}", q(staging, table), q(live, table)),
            ]
        })
        .collect();
    swap.push(format!("RENAME TABLE {}", renames.join(", ")));
    Swap {
        build,
        swap,
        transaction: false,
        cleanup: drop_tables(dataset, dialect, &retired),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::movies;
    use super::*;

    /// SQL Server's swap cannot run here: pinned as text, like the other statements of `sql`.
    #[test]
    fn sql_server_stages_beside_and_renames_over() {
        let ds = movies();
        let d = Dialect::SqlServer;
        assert_eq!(session(d), Some("SET LOCK_TIMEOUT 30000"));
        let create = create(&ds, d);
        assert_eq!(
            create[0],
            "IF OBJECT_ID(N'[movies__import]', N'U') IS NOT NULL DROP TABLE [movies__import]"
        );
        assert!(create[4].starts_with(
            "IF OBJECT_ID(N'[movies__import]', N'U') IS NULL CREATE TABLE [movies__import] \
             ([id] BIGINT NOT NULL PRIMARY KEY, "
        ));
        assert_eq!(discard(&ds, d), create[..4]);
        let plan = swap(&ds, d, None);
        assert!(plan.build[0].ends_with(
            "CREATE INDEX [movies__imdb_id__key__idx] ON [movies__import] ([imdb_id__key], [id])"
        ));
        assert_eq!(
            plan.swap[..5],
            [
                "IF OBJECT_ID(N'[movies]', N'U') IS NOT NULL DROP TABLE [movies]",
                "IF OBJECT_ID(N'[movies__genres]', N'U') IS NOT NULL DROP TABLE [movies__genres]",
                "IF OBJECT_ID(N'[movies__languages]', N'U') IS NOT NULL DROP TABLE [movies__languages]",
                "IF OBJECT_ID(N'[movies__countries]', N'U') IS NOT NULL DROP TABLE [movies__countries]",
                "EXEC sp_rename N'movies__import', N'movies'",
            ]
        );
        assert!(plan.transaction && plan.cleanup.is_empty());
    }

    #[test]
    fn each_engine_swaps_its_own_way() {
        let ds = movies();
        // SQLite: drop, rename, then indexes and statistics, all in the swap's transaction.
        let sqlite = swap(&ds, Dialect::Sqlite, None);
        assert!(sqlite.build.is_empty() && sqlite.transaction);
        assert_eq!(
            sqlite.swap[..2],
            [
                "DROP TABLE IF EXISTS \"movies\"",
                "ALTER TABLE \"movies__import\" RENAME TO \"movies\"",
            ]
        );
        assert_eq!(sqlite.swap.last().unwrap(), "ANALYZE \"movies__countries\"");
        // PostgreSQL: keyless staged tables in a schema of their own, built in parallel, moved.
        let created = create(&ds, Dialect::Postgres);
        assert_eq!(
            created[0],
            "CREATE SCHEMA IF NOT EXISTS \"smartcache_import\""
        );
        assert!(!created[5].contains("PRIMARY KEY"), "{}", created[5]);
        let pg = swap(&ds, Dialect::Postgres, Some("app"));
        assert_eq!(
            pg.build[0],
            "BEGIN; SET LOCAL maintenance_work_mem = '256MB'; CREATE UNIQUE INDEX \"movies_pkey\" \
             ON \"smartcache_import\".\"movies\" (\"id\"); COMMIT"
        );
        assert_eq!(
            pg.swap[0],
            "ALTER TABLE \"smartcache_import\".\"movies\" ADD CONSTRAINT \"movies_pkey\" \
             PRIMARY KEY USING INDEX \"movies_pkey\""
        );
        assert_eq!(pg.swap[1], "DROP TABLE IF EXISTS \"app\".\"movies\"");
        assert_eq!(
            pg.swap.last().unwrap(),
            "ALTER TABLE \"smartcache_import\".\"movies__countries\" SET SCHEMA \"app\""
        );
        // MySQL: one ALTER TABLE per staged table, one RENAME TABLE, the old tables dropped after.
        let mysql = swap(&ds, Dialect::MySql, None);
        assert_eq!(mysql.build.len(), 4);
        assert!(
            mysql.build[1].starts_with(
                "ALTER TABLE `movies__genres__import` ADD INDEX `movies__genres__value_key__idx` \
                 (`value_key`, `row_id`), ADD INDEX"
            ),
            "{}",
            mysql.build[1]
        );
        assert!(!mysql.transaction);
        assert!(mysql.swap.last().unwrap().starts_with(
            "RENAME TABLE `movies` TO `movies__retired`, `movies__import` TO `movies`, "
        ));
        assert_eq!(mysql.cleanup[0], "DROP TABLE IF EXISTS `movies__retired`");
    }
}
