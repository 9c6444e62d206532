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

pub fn create_table(dialect: Dialect) -> Vec<String> {
    let (id, boolean, timestamp) = match dialect {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER", "TEXT"),
        Dialect::Postgres => (
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
    (1..=count)
        .map(|n| match dialect {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
        })
        .collect()
}

pub fn insert(user: &NewUser, now: DateTime<Utc>, dialect: Dialect) -> Statement {
    let p = placeholders(dialect, 7);
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    Statement {
        sql: format!(
            "INSERT INTO \"{USERS_TABLE}\" (\"email\", \"email_key\", \"password_hash\", \
             \"firebase_uid\", \"role\", \"active\", \"created_at\") \
             VALUES ({}, {}, {}, {}, {}, {}, {}) RETURNING {COLUMNS}",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6]
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
        sql: format!("SELECT {COLUMNS} FROM \"{USERS_TABLE}\" WHERE \"{column}\" = {p}"),
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
    Some(Statement {
        sql: format!(
            "UPDATE \"{USERS_TABLE}\" SET {} WHERE \"id\" = {} RETURNING {COLUMNS}",
            set.join(", "),
            p[p.len() - 1]
        ),
        params,
    })
}

pub fn delete(id: i64, dialect: Dialect) -> Statement {
    let p = &placeholders(dialect, 1)[0];
    Statement {
        sql: format!("DELETE FROM \"{USERS_TABLE}\" WHERE \"id\" = {p}"),
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
