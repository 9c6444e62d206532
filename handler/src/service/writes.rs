//! Writes: authorise (the dataset's `[access]` level, admins by default) before anything of the
//! body is read, check it against the declaration (every bad field named), apply it in one
//! transaction that records it with the cache before its commit (old and new row, so
//! exactly the answers it could change end; see `gate`), and acknowledge it once the record is
//! ended. A write the cache cannot record is not made (503).

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::gate::CacheGate;
use super::warm::url_segment;
use super::{Caller, Service, ServiceError, encode};
use crate::datasets::{Dataset, Value, rules, validate};
use crate::storage::{Change, Row, StorageError};

/// What a write does to its dataset's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// A write the caller may make, its body not read yet.
pub struct Write<'a> {
    service: &'a Service,
    dataset: Arc<Dataset>,
}

/// A committed write.
#[derive(Debug)]
pub struct Written {
    /// The row as stored (nothing for a delete), as JSON.
    pub row: Option<Vec<u8>>,
    /// Where a created row is read.
    pub location: Option<String>,
}

impl Service {
    /// Authorises `caller` to act on dataset `name`.
    #[tracing::instrument(level = "debug", name = "service.write", skip_all, fields(dataset = name))]
    pub async fn write(
        &self,
        caller: &Caller,
        name: &str,
        action: Action,
    ) -> Result<Write<'_>, ServiceError> {
        let dataset = self.dataset(name)?;
        let level = match action {
            Action::Create => dataset.access.create,
            Action::Update => dataset.access.update,
            Action::Delete => dataset.access.delete,
        };
        self.authorize(caller, level).await?;
        Ok(Write {
            service: self,
            dataset,
        })
    }
}

impl Write<'_> {
    /// A new row (its key generated when the dataset generates keys).
    pub async fn create(self, fields: &Map<String, Json>) -> Result<Written, ServiceError> {
        let engine = self.service.storage.engine_rules();
        let row = validate::full_row(&self.dataset, fields, None, engine)
            .map_err(ServiceError::Unprocessable)?;
        self.apply(Change::Create(row), None).await
    }

    /// Every column of the row with `id`.
    pub async fn replace(
        self,
        id: &str,
        fields: &Map<String, Json>,
    ) -> Result<Written, ServiceError> {
        let key = self.key(id)?;
        let engine = self.service.storage.engine_rules();
        let row = validate::full_row(&self.dataset, fields, Some(&key), engine)
            .map_err(ServiceError::Unprocessable)?;
        self.apply(Change::Replace(key, row), Some(id)).await
    }

    /// The columns `fields` names, of the row with `id`.
    pub async fn patch(
        self,
        id: &str,
        fields: &Map<String, Json>,
    ) -> Result<Written, ServiceError> {
        let key = self.key(id)?;
        let engine = self.service.storage.engine_rules();
        let changes =
            validate::patch(&self.dataset, fields, engine).map_err(ServiceError::Unprocessable)?;
        self.apply(Change::Patch(key, changes), Some(id)).await
    }

    pub async fn delete(self, id: &str) -> Result<Written, ServiceError> {
        let key = self.key(id)?;
        self.apply(Change::Delete(key), Some(id)).await
    }

    fn key(&self, id: &str) -> Result<Value, ServiceError> {
        rules::request_value(self.dataset.key_column().ty, id).map_err(|_| {
            ServiceError::NotFound(format!("{} has no row with id {id:?}.", self.dataset.name))
        })
    }

    /// Applies the change, then records it with the cache; the caller answers only after both.
    /// Both run in a task of their own, so a client that hangs up after the commit cannot stop
    /// the cache from hearing of it.
    async fn apply(self, change: Change, id: Option<&str>) -> Result<Written, ServiceError> {
        let (service, dataset) = (self.service.clone(), self.dataset);
        let id = id.map(str::to_owned);
        tokio::spawn(async move { apply_now(&service, &dataset, change, id.as_deref()).await })
            .await
            .map_err(|e| ServiceError::Internal(anyhow::anyhow!("the write task failed: {e}")))?
    }
}

async fn apply_now(
    service: &Service,
    dataset: &Dataset,
    change: Change,
    id: Option<&str>,
) -> Result<Written, ServiceError> {
    let create = matches!(change, Change::Create(_));
    service.ensure_tables(dataset).await?;
    let gate = CacheGate::new(&service.cache, dataset);
    let written = service.storage.write(dataset, change, &gate).await;
    let confirmed = gate.finish().await;
    let written = written.map_err(|error| match error {
        StorageError::NotFound => ServiceError::NotFound(format!(
            "{} has no row with id {:?}.",
            dataset.name,
            id.unwrap_or_default()
        )),
        StorageError::Conflict => {
            ServiceError::Conflict(format!("{} already has a row with this id.", dataset.name))
        }
        StorageError::NotCommitted(reason) => ServiceError::NotRecorded(reason),
        other => other.into(),
    })?;
    let Ok(recorded_at) = confirmed else {
        tracing::warn!(dataset = %dataset.name, "a write was committed but the cache could not confirm it; this instance serves none of the dataset's cached answers until it has purged them");
        return Err(ServiceError::Unconfirmed);
    };
    let row = written.new.as_ref().map(|row| {
        let mut body = Vec::with_capacity(512);
        encode::write_row_json(dataset, row, &mut body);
        body
    });
    // The row's next read answers from the cache, where that is sound (`Cache::keep_written`)
    // and the key was asked for as it is stored (else the body would carry another spelling).
    let spelled_as_stored = |new: &Row| {
        written
            .old
            .as_ref()
            .is_none_or(|old| old[dataset.key.column] == new[dataset.key.column])
    };
    if let (Some(stamp), Some(new), Some(body)) = (recorded_at, &written.new, &row)
        && spelled_as_stored(new)
    {
        let key = &new[dataset.key.column];
        service
            .cache
            .keep_written(dataset, key, stamp, body.clone())
            .await;
    }
    let location = match (&written.new, create) {
        (Some(row), true) => Some(format!(
            "/api/{}/{}",
            dataset.name,
            url_segment(&row[dataset.key.column].to_text())
        )),
        _ => None,
    };
    Ok(Written { row, location })
}
