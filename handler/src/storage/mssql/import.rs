//! Imports into SQL Server: a connection of its own holding the import lock, TDS bulk load
//! (`INSERT BULK`) into the staged tables, then the swap that `sql::staging` writes, as one batch
//! in one transaction.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate};
use tiberius::{ColumnData, IntoSql};

use super::super::sql::{self, Dialect, Placement, Statement, StoredColumn, staging};
use super::super::{ImportSink, Result, Row, StorageError};
use super::{BEGIN, Connection, MssqlDriver, query, run};
use crate::datasets::{ColumnType, Dataset, Value};

/// Locks the dataset for this import, then creates its empty staged tables.
pub(super) async fn begin(driver: &MssqlDriver, dataset: &Dataset) -> Result<Box<dyn ImportSink>> {
    // The lock belongs to this connection's session: two imports of one dataset would share
    // the staging tables, and the lock ends with the session if this process dies.
    let mut conn = driver.dedicated().await?;
    if let Some(session) = staging::session(Dialect::SqlServer) {
        run(&mut conn, session).await?;
    }
    let lock = Statement {
        sql: "DECLARE @granted int; EXEC @granted = sp_getapplock @Resource = @P1, \
              @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; \
              SELECT @granted"
            .to_owned(),
        params: vec![Value::Text(format!("smartcache-import:{}", dataset.table))],
    };
    let granted = query(lock).query(&mut conn).await?.into_row().await?;
    let granted = granted
        .and_then(|row| row.try_get::<i32, _>(0).ok().flatten())
        .unwrap_or(-1);
    if granted < 0 {
        return Err(StorageError::ImportRunning(dataset.name.clone()));
    }
    for statement in staging::create(dataset, Dialect::SqlServer) {
        run(&mut conn, &statement).await?;
    }
    Ok(Box::new(MssqlImport {
        conn,
        dataset: Arc::new(dataset.clone()),
        staging: staging::placement(Dialect::SqlServer),
    }))
}

/// A value for TDS bulk load, which wants the column's exact type even for a NULL.
pub fn bulk_value(value: Value, ty: ColumnType) -> ColumnData<'static> {
    match (value, ty) {
        (Value::Null, ColumnType::Text) => ColumnData::String(None),
        (Value::Null, ColumnType::Integer) => ColumnData::I64(None),
        (Value::Null, ColumnType::Float) => ColumnData::F64(None),
        (Value::Null, ColumnType::Boolean) => ColumnData::Bit(None),
        (Value::Null, ColumnType::Date) => Option::<NaiveDate>::None.into_sql(),
        (Value::Null, ColumnType::Timestamp) => Option::<DateTime<FixedOffset>>::None.into_sql(),
        (Value::Text(s), _) => ColumnData::String(Some(Cow::Owned(s))),
        (Value::Integer(i), _) => ColumnData::I64(Some(i)),
        (Value::Float(f), _) => ColumnData::F64(Some(f)),
        (Value::Boolean(b), _) => ColumnData::Bit(Some(b)),
        (Value::Date(d), _) => d.into_sql(),
        (Value::Timestamp(t), _) => t.fixed_offset().into_sql(),
        (Value::List(items), _) => ColumnData::String(Some(Cow::Owned(items.join(",")))),
    }
}

/// The type a stored column is bulk-loaded as.
fn stored_type(dataset: &Dataset, column: StoredColumn) -> ColumnType {
    match column {
        StoredColumn::Declared(i) if dataset.columns[i].is_list() => ColumnType::Text,
        StoredColumn::Declared(i) => dataset.columns[i].ty,
        StoredColumn::NormalisedKey(_) => ColumnType::Text,
    }
}

struct MssqlImport {
    conn: Connection,
    dataset: Arc<Dataset>,
    staging: Placement,
}

impl MssqlImport {
    /// One bulk load (`INSERT BULK`) of these rows into a staged table.
    async fn bulk_load(&mut self, table: &str, rows: Vec<Vec<ColumnData<'static>>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = self.staging.table(Dialect::SqlServer, table);
        let mut load = self.conn.bulk_insert(&table).await?;
        for row in rows {
            let mut token = tiberius::TokenRow::with_capacity(row.len());
            for value in row {
                token.push(value);
            }
            load.send(token).await?;
        }
        load.finalize().await?;
        Ok(())
    }

    async fn discard(mut self) -> Result<()> {
        for statement in staging::discard(&self.dataset, Dialect::SqlServer) {
            run(&mut self.conn, &statement).await?;
        }
        self.conn.close().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportSink for MssqlImport {
    async fn write(&mut self, rows: &[Row]) -> Result<()> {
        let dataset = Arc::clone(&self.dataset);
        let stored = sql::stored_columns(&dataset);
        let main = rows
            .iter()
            .map(|row| {
                stored
                    .iter()
                    .map(|&c| {
                        bulk_value(
                            sql::stored_value(&dataset, row, c),
                            stored_type(&dataset, c),
                        )
                    })
                    .collect()
            })
            .collect();
        self.bulk_load(&dataset.table, main).await?;
        for (index, column) in dataset.list_columns() {
            let key_type = dataset.key_column().ty;
            let elements = rows
                .iter()
                .flat_map(|row| sql::list_elements(row, dataset.key.column, index))
                .map(|(key, value, value_key)| {
                    vec![
                        bulk_value(key.clone(), key_type),
                        ColumnData::String(Some(Cow::Owned(value.to_owned()))),
                        ColumnData::String(Some(Cow::Owned(value_key))),
                    ]
                })
                .collect();
            self.bulk_load(&dataset.list_table(column), elements)
                .await?;
        }
        Ok(())
    }

    /// Indexes on the staged tables, then one batch, one transaction, that drops the old tables
    /// and renames the staged ones: readers see the old rows or the new ones.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let plan = staging::swap(&self.dataset, Dialect::SqlServer, None);
        for statement in &plan.build {
            if let Err(error) = run(&mut self.conn, statement).await {
                self.discard().await?;
                return Err(error);
            }
        }
        let mut batch = vec![BEGIN.to_owned()];
        batch.extend(plan.swap);
        batch.push("COMMIT TRANSACTION".to_owned());
        run(&mut self.conn, &batch.join("; ")).await?;
        // The new rows are live; closing also releases the lock.
        let _ = self.conn.close().await;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_value;
    use super::sql::Decode;
    use super::*;
    use chrono::Utc;

    #[test]
    fn cells_decode_whatever_width_the_server_sends() {
        let int = Decode::Scalar(ColumnType::Integer);
        assert_eq!(
            decode_value(&ColumnData::I32(Some(7)), &int),
            Ok(Value::Integer(7))
        );
        assert_eq!(
            decode_value(&ColumnData::I64(Some(-7)), &int),
            Ok(Value::Integer(-7))
        );
        assert_eq!(decode_value(&ColumnData::I64(None), &int), Ok(Value::Null));
        let float = Decode::Scalar(ColumnType::Float);
        assert_eq!(
            decode_value(&ColumnData::F32(Some(0.5)), &float),
            Ok(Value::Float(0.5))
        );
        let list = Decode::List(", ".into());
        assert_eq!(
            decode_value(&ColumnData::String(Some("Drama, Crime".into())), &list),
            Ok(Value::List(vec!["Drama".into(), "Crime".into()]))
        );
        assert!(decode_value(&ColumnData::String(Some("x".into())), &int).is_err());
        // Round trips through the bulk-load form, the types SQL Server stores.
        let date = NaiveDate::from_ymd_opt(2013, 1, 1).unwrap();
        let when = DateTime::parse_from_rfc3339("2013-01-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for (value, ty) in [
            (Value::Date(date), ColumnType::Date),
            (Value::Timestamp(when), ColumnType::Timestamp),
            (Value::Boolean(true), ColumnType::Boolean),
            (Value::Text("Up".into()), ColumnType::Text),
            (Value::Null, ColumnType::Timestamp),
        ] {
            let data = bulk_value(value.clone(), ty);
            assert_eq!(
                decode_value(&data, &Decode::Scalar(ty)),
                Ok(value),
                "{ty:?}"
            );
        }
        assert!(matches!(
            bulk_value(Value::Null, ColumnType::Integer),
            ColumnData::I64(None)
        ));
        assert!(matches!(
            bulk_value(Value::Timestamp(when), ColumnType::Timestamp),
            ColumnData::DateTimeOffset(Some(_))
        ));
    }
}
