//! The accounts table, `smartcache_users`, kept in the same database as the datasets.
//!
//! Emails are unique case-insensitively (a normalised `email_key` with a unique index); the role
//! lives here and only here, so a token's role is a hint and this table has the last word.

use chrono::{DateTime, Utc};

use super::Row;
use super::sql::{Decode, Dialect, Statement};
use crate::datasets::{ColumnType, Value, normalise_text};

/// The table's name; dataset declarations may not use it (see `datasets`).
pub const USERS_TABLE: &str = "smartcache_users";

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: i64,
    pub email: String,
    /// An argon2id PHC string; `None` for accounts that sign in through Firebase.
    pub password_hash: Option<String>,
    pub firebase_uid: Option<String>,
    /// `user` or `admin`.
    pub role: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// What a new account needs; the id and the creation time come from the database.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub password_hash: Option<String>,
    pub firebase_uid: Option<String>,
    pub role: String,
}

/// How an account is looked up.
#[derive(Debug, Clone)]
pub enum UserLookup {
    Id(i64),
    /// Compared case-insensitively.
    Email(String),
    FirebaseUid(String),
}

/// A change to an existing account.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub role: Option<String>,
    pub active: Option<bool>,
}

const COLUMNS: &str =
    "\"id\", \"email\", \"password_hash\", \"firebase_uid\", \"role\", \"active\", \"created_at\"";

/// The statements below (and `sources`') are written with `"quoted"` identifiers; T-SQL gets
/// `[brackets]`, MySQL `` `backticks` ``.
pub(super) fn in_dialect(dialect: Dialect, sql: String) -> String {
    let (open_quote, close_quote) = match dialect {
        Dialect::SqlServer => ('[', ']'),
        Dialect::MySql => ('`', '`'),
        Dialect::Sqlite | Dialect::Postgres => return sql,
    };
    let mut out = String::with_capacity(sql.len());
    let mut open = false;
    for c in sql.chars() {
        if c == '"' {
            out.push(if open { close_quote } else { open_quote });
            open = !open;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether inserts and updates return the account (`RETURNING`, `OUTPUT INSERTED`). MySQL has
/// neither: there the store reads the account back in the same transaction.
pub fn returns_rows(dialect: Dialect) -> bool {
    dialect != Dialect::MySql
}

pub fn create_table(dialect: Dialect) -> Vec<String> {
    if dialect == Dialect::SqlServer {
        let key = dialect.key_text_type();
        return vec![
            in_dialect(
                dialect,
                format!(
                    "IF OBJECT_ID(N'\"{USERS_TABLE}\"', N'U') IS NULL CREATE TABLE \"{USERS_TABLE}\" (\
                     \"id\" BIGINT IDENTITY(1,1) PRIMARY KEY, \"email\" NVARCHAR(320) NOT NULL, \
                     \"email_key\" {key} NOT NULL, \"password_hash\" NVARCHAR(256), \
                     \"firebase_uid\" NVARCHAR(128), \"role\" NVARCHAR(16) NOT NULL, \
                     \"active\" BIT NOT NULL, \"created_at\" DATETIMEOFFSET NOT NULL)"
                ),
            ),
            in_dialect(
                dialect,
                format!(
                    "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{USERS_TABLE}__email_key__idx') \
                     CREATE UNIQUE INDEX \"{USERS_TABLE}__email_key__idx\" ON \"{USERS_TABLE}\" (\"email_key\")"
                ),
            ),
            // A unique index allows one NULL in SQL Server: filter the local accounts out.
            in_dialect(
                dialect,
                format!(
                    "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{USERS_TABLE}__firebase_uid__idx') \
                     CREATE UNIQUE INDEX \"{USERS_TABLE}__firebase_uid__idx\" ON \"{USERS_TABLE}\" \
                     (\"firebase_uid\") WHERE \"firebase_uid\" IS NOT NULL"
                ),
            ),
        ];
    }
    if dialect == Dialect::MySql {
        let key = dialect.key_text_type();
        let table = super::sql::create_table_if_missing(
            dialect,
            &format!("`{USERS_TABLE}`"),
            &format!(
                "`id` BIGINT AUTO_INCREMENT PRIMARY KEY, `email` VARCHAR(320) NOT NULL, \
                 `email_key` {key} NOT NULL, `password_hash` VARCHAR(256), \
                 `firebase_uid` VARCHAR(128), `role` VARCHAR(16) NOT NULL, \
                 `active` BOOLEAN NOT NULL, `created_at` DATETIME(6) NOT NULL"
            ),
        );
        // No `IF NOT EXISTS` for indexes in MySQL: the driver treats "duplicate key name" as
        // done. A unique index there allows many NULLs, as wanted for `firebase_uid`.
        return vec![
            table,
            format!(
                "CREATE UNIQUE INDEX `{USERS_TABLE}__email_key__idx` ON `{USERS_TABLE}` (`email_key`)"
            ),
            format!(
                "CREATE UNIQUE INDEX `{USERS_TABLE}__firebase_uid__idx` ON `{USERS_TABLE}` (`firebase_uid`)"
            ),
        ];
    }
    let (id, boolean, timestamp) = match dialect {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER", "TEXT"),
        _ => (
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "BOOLEAN",
            "TIMESTAMPTZ",
        ),
    };
    let key = dialect.key_text_type();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS \"{USERS_TABLE}\" (\"id\" {id}, \"email\" TEXT NOT NULL, \
             \"email_key\" {key} NOT NULL, \"password_hash\" TEXT, \"firebase_uid\" TEXT, \
             \"role\" TEXT NOT NULL, \"active\" {boolean} NOT NULL, \"created_at\" {timestamp} NOT NULL)"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{USERS_TABLE}__email_key__idx\" \
             ON \"{USERS_TABLE}\" (\"email_key\")"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{USERS_TABLE}__firebase_uid__idx\" \
             ON \"{USERS_TABLE}\" (\"firebase_uid\")"
        ),
    ]
}

fn placeholders(dialect: Dialect, count: usize) -> Vec<String> {
    (1..=count).map(|n| dialect.placeholder(n)).collect()
}

/// `RETURNING <columns>` at the end, or T-SQL's `OUTPUT INSERTED.<columns>` before `VALUES` /
/// `WHERE`: `(before, after)`.
fn returning(dialect: Dialect) -> (String, String) {
    match dialect {
        Dialect::SqlServer => {
            let inserted: Vec<String> = COLUMNS
                .split(", ")
                .map(|c| format!("INSERTED.{c}"))
                .collect();
            (format!(" OUTPUT {}", inserted.join(", ")), String::new())
        }
        Dialect::MySql => (String::new(), String::new()),
        _ => (String::new(), format!(" RETURNING {COLUMNS}")),
    }
}

pub fn insert(user: &NewUser, now: DateTime<Utc>, dialect: Dialect) -> Statement {
    let p = placeholders(dialect, 7);
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let (output, returning) = returning(dialect);
    Statement {
        sql: in_dialect(
            dialect,
            format!(
                "INSERT INTO \"{USERS_TABLE}\" (\"email\", \"email_key\", \"password_hash\", \
                 \"firebase_uid\", \"role\", \"active\", \"created_at\"){output} \
                 VALUES ({}, {}, {}, {}, {}, {}, {}){returning}",
                p[0], p[1], p[2], p[3], p[4], p[5], p[6]
            ),
        ),
        params: vec![
            Value::Text(user.email.trim().to_owned()),
            Value::Text(normalise_text(&user.email)),
            text(&user.password_hash),
            text(&user.firebase_uid),
            Value::Text(user.role.clone()),
            Value::Boolean(true),
            Value::Timestamp(now),
        ],
    }
}

pub fn find(lookup: &UserLookup, dialect: Dialect) -> Statement {
    let p = &placeholders(dialect, 1)[0];
    let (column, value) = match lookup {
        UserLookup::Id(id) => ("id", Value::Integer(*id)),
        UserLookup::Email(email) => ("email_key", Value::Text(normalise_text(email))),
        UserLookup::FirebaseUid(uid) => ("firebase_uid", Value::Text(uid.clone())),
    };
    Statement {
        sql: in_dialect(
            dialect,
            format!("SELECT {COLUMNS} FROM \"{USERS_TABLE}\" WHERE \"{column}\" = {p}"),
        ),
        params: vec![value],
    }
}

/// `None` when the update changes nothing.
pub fn update(id: i64, change: &UserUpdate, dialect: Dialect) -> Option<Statement> {
    let mut assignments = Vec::new();
    let mut params = Vec::new();
    if let Some(role) = &change.role {
        params.push(Value::Text(role.clone()));
        assignments.push("\"role\"");
    }
    if let Some(active) = change.active {
        params.push(Value::Boolean(active));
        assignments.push("\"active\"");
    }
    if assignments.is_empty() {
        return None;
    }
    params.push(Value::Integer(id));
    let p = placeholders(dialect, params.len());
    let set: Vec<String> = assignments
        .iter()
        .zip(&p)
        .map(|(column, placeholder)| format!("{column} = {placeholder}"))
        .collect();
    let (output, returning) = returning(dialect);
    Some(Statement {
        sql: in_dialect(
            dialect,
            format!(
                "UPDATE \"{USERS_TABLE}\" SET {}{output} WHERE \"id\" = {}{returning}",
                set.join(", "),
                p[p.len() - 1]
            ),
        ),
        params,
    })
}

pub fn delete(id: i64, dialect: Dialect) -> Statement {
    let p = &placeholders(dialect, 1)[0];
    Statement {
        sql: in_dialect(
            dialect,
            format!("DELETE FROM \"{USERS_TABLE}\" WHERE \"id\" = {p}"),
        ),
        params: vec![Value::Integer(id)],
    }
}

pub fn decode() -> Vec<Decode> {
    [
        ColumnType::Integer,
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Text,
        ColumnType::Boolean,
        ColumnType::Timestamp,
    ]
    .into_iter()
    .map(Decode::Scalar)
    .collect()
}

/// A decoded row of [`decode`]'s shape as a record.
pub fn record(row: Row) -> Option<UserRecord> {
    let mut values = row.into_iter();
    let mut next = || values.next().unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::Text(s) => Some(s),
        _ => None,
    };
    let Value::Integer(id) = next() else {
        return None;
    };
    let email = text(next())?;
    let password_hash = text(next());
    let firebase_uid = text(next());
    let role = text(next())?;
    let active = matches!(next(), Value::Boolean(true) | Value::Integer(1));
    let Value::Timestamp(created_at) = next() else {
        return None;
    };
    Some(UserRecord {
        id,
        email,
        password_hash,
        firebase_uid,
        role,
        active,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_looked_up_by_their_normalised_form_as_a_parameter() {
        let st = find(
            &UserLookup::Email("  Ada@Example.COM' --".into()),
            Dialect::Postgres,
        );
        assert_eq!(
            st.sql,
            format!("SELECT {COLUMNS} FROM \"smartcache_users\" WHERE \"email_key\" = $1")
        );
        assert_eq!(st.params, vec![Value::Text("ada@example.com' --".into())]);
    }

    #[test]
    fn t_sql_uses_brackets_output_inserted_and_a_filtered_unique_index() {
        let user = NewUser {
            email: "a@b.c".into(),
            password_hash: None,
            firebase_uid: None,
            role: "user".into(),
        };
        let st = insert(&user, Utc::now(), Dialect::SqlServer);
        assert!(
            st.sql
                .starts_with("INSERT INTO [smartcache_users] ([email], [email_key], "),
            "{}",
            st.sql
        );
        assert!(
            st.sql.contains(") OUTPUT INSERTED.[id], INSERTED.[email],"),
            "{}",
            st.sql
        );
        assert!(
            st.sql
                .ends_with("VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)"),
            "{}",
            st.sql
        );
        assert!(!st.sql.contains('"') && !st.sql.contains("RETURNING"));
        let change = UserUpdate {
            role: Some("admin".into()),
            active: None,
        };
        let st = update(3, &change, Dialect::SqlServer).unwrap();
        assert!(
            st.sql
                .starts_with("UPDATE [smartcache_users] SET [role] = @P1 OUTPUT INSERTED.[id]"),
            "{}",
            st.sql
        );
        assert!(st.sql.ends_with("WHERE [id] = @P2"), "{}", st.sql);
        let ddl = create_table(Dialect::SqlServer).join("\n");
        assert!(ddl.contains("IDENTITY(1,1)"), "{ddl}");
        assert!(ddl.contains("WHERE [firebase_uid] IS NOT NULL"), "{ddl}");
    }

    #[test]
    fn an_update_sets_only_what_changes() {
        assert!(update(1, &UserUpdate::default(), Dialect::Sqlite).is_none());
        let st = update(
            7,
            &UserUpdate {
                role: None,
                active: Some(false),
            },
            Dialect::Postgres,
        )
        .unwrap();
        assert!(
            st.sql
                .starts_with("UPDATE \"smartcache_users\" SET \"active\" = $1 WHERE \"id\" = $2"),
            "{}",
            st.sql
        );
        assert_eq!(st.params, vec![Value::Boolean(false), Value::Integer(7)]);
    }
}
