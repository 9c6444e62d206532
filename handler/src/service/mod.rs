//! The service: what the API does, whichever front end asks (HTTP, the command line, the
//! `WarmCache` and `SyncDatasets` timers, Lambda). Handlers parse a request, call one function
//! here, and turn its result into a response; everything between (authorisation, cache keys and
//! cache-aside, the database breaker and read slots, tables made on first use, export limits,
//! recording writes and imports with the cache before they commit, warm-up, syncing declared
//! blobs) is here, each function one span.
//!
//! ```text
//!  http / cli / timer ──> Service::{list, item, facets, export}  ──> cache ──(miss)──> storage
//!                         Service::write(..).{create, replace, …} ──> storage ──(gate)──> cache
//!                         Service::import                          ──> import ──(gate)──> cache
//!                         Service::warm                            ──> the reads above
//!                         Service::sync_datasets                   ──> blob (HEAD), then the import above
//! ```

mod accounts;
mod admin;
mod encode;
mod error;
mod export;
mod gate;
mod imports;
mod questions;
mod reads;
mod sync;
mod warm;
mod writes;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

pub use error::ServiceError;
pub use imports::{ImportFrom, ImportJobs, Importer, JobStatus};
pub use reads::Answer;
pub use sync::{SyncAction, SyncOutcome, SyncRunReport};
pub use warm::{WARM_LIMIT, WarmReport};
pub use writes::{Action, Write, Written};

use crate::auth::{Auth, AuthError, Principal};
use crate::breaker::Breaker;
use crate::cache::Cache;
use crate::config::RequestLimits;
use crate::datasets::{Catalog, Dataset, Level};
use crate::storage::Storage;

/// How long reads skip the database after it failed to answer.
const DATABASE_BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// Who asks: what the service needs of a request, whatever front end it came through.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The bearer token, if the request had one.
    pub token: Option<String>,
    /// The client's address (sign-in limits, one export at a time).
    pub address: ClientAddress,
    /// Warm-up's own reads: computed for whoever may read them (not authorised), refreshing
    /// what is near expiry, not counted as accesses.
    pub warming: bool,
}

impl Caller {
    /// A caller known only by its address (and its token, if it sent one).
    pub fn new(token: Option<String>, address: ClientAddress) -> Caller {
        Caller {
            token,
            address,
            warming: false,
        }
    }

    /// Warm-up, reading on behalf of the service itself.
    pub fn warm_up() -> Caller {
        Caller {
            token: None,
            address: ClientAddress::WarmUp,
            warming: true,
        }
    }
}

/// Where a caller is, as the limits count it. Kept as an address and written out only where it
/// is used (most reads never need it as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddress {
    /// An IPv4 address, or the /64 block of an IPv6 address (the block one subscriber usually
    /// holds, so rotating within it gains nothing).
    Ip(IpAddr),
    /// No peer (a request made in process).
    Unknown,
    /// Warm-up's own reads.
    WarmUp,
}

impl ClientAddress {
    pub fn of(address: IpAddr) -> ClientAddress {
        match address {
            IpAddr::V4(_) => ClientAddress::Ip(address),
            IpAddr::V6(v6) => {
                let block = u128::from(v6) & (u128::MAX << 64);
                ClientAddress::Ip(IpAddr::V6(Ipv6Addr::from(block)))
            }
        }
    }
}

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddress::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            ClientAddress::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            ClientAddress::Unknown => f.write_str("unknown"),
            ClientAddress::WarmUp => f.write_str("warm-up"),
        }
    }
}

/// What every request shares. Cloned once per instance into the front ends; its parts are
/// handles.
#[derive(Clone)]
pub struct Service {
    pub catalog: Arc<Catalog>,
    pub storage: Arc<dyn Storage>,
    pub cache: Arc<Cache>,
    /// Accounts and tokens; `None` (no `JWT_SECRET`) makes the API read-only.
    pub auth: Option<Arc<Auth>>,
    /// What one request may make the service read, hold and compute.
    pub limits: Arc<RequestLimits>,
    /// After the database fails to answer, reads skip it for a moment (and serve a stale answer
    /// or a quick 503) instead of each waiting out a connect timeout.
    pub database: Arc<Breaker>,
    /// Imports from Blob Storage started over HTTP, with their progress.
    pub imports: Arc<ImportJobs>,
    /// How imports reach Blob Storage (`AZURE_STORAGE_CONNECTION_STRING`, `AZURE_STORAGE_AUTH`).
    pub blob_access: Arc<BlobAccess>,
    /// Uncached exports being computed (`EXPORT_CONCURRENCY`).
    exports: Arc<tokio::sync::Semaphore>,
    /// Exports refused as too large, by key and write position.
    exports_too_large: Arc<export::TooLarge>,
    /// Clients computing a cold export now (one each).
    exports_by_client: Arc<export::ExportsByClient>,
    /// Database reads under way for cache misses (`MAX_DATABASE_READS`, by default the pool's
    /// size less one): the rest of the pool stays free for logins, writes and health checks.
    reads: Arc<tokio::sync::Semaphore>,
    /// Datasets whose tables this instance has made sure of before a first read or write.
    /// Read on every data request, written once per dataset: a read-write lock.
    tables_ready: Arc<RwLock<HashSet<String>>>,
    /// Held while a dataset's tables are made sure of: concurrent first queries would each run
    /// the migration (and fill the same keys).
    migrating: Arc<tokio::sync::Mutex<()>>,
    /// Questions parsed, with their cache keys, by their raw query strings.
    questions: Arc<questions::Questions>,
}

/// The Blob Storage settings of imports.
#[derive(Debug, Default)]
pub struct BlobAccess {
    pub connection_string: Option<crate::config::Secret>,
    pub auth: Option<String>,
}

impl Service {
    /// A read-only service with default limits; see the `with_*` methods for the rest.
    pub fn new(catalog: Arc<Catalog>, storage: Arc<dyn Storage>, cache: Arc<Cache>) -> Self {
        let limits = RequestLimits::default();
        let reads = read_slots(&limits, storage.as_ref());
        Service {
            catalog,
            storage,
            cache,
            auth: None,
            exports: Arc::new(tokio::sync::Semaphore::new(limits.export_concurrency)),
            limits: Arc::new(limits),
            database: Arc::new(Breaker::new(DATABASE_BREAKER_OPEN_FOR)),
            imports: Arc::default(),
            blob_access: Arc::default(),
            exports_too_large: Arc::default(),
            exports_by_client: Arc::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(reads)),
            tables_ready: Arc::default(),
            migrating: Arc::default(),
            questions: Arc::default(),
        }
    }

    pub fn with_auth(mut self, auth: Option<Auth>) -> Self {
        self.auth = auth.map(Arc::new);
        self
    }

    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.exports = Arc::new(tokio::sync::Semaphore::new(limits.export_concurrency));
        let reads = read_slots(&limits, self.storage.as_ref());
        self.reads = Arc::new(tokio::sync::Semaphore::new(reads));
        self.limits = Arc::new(limits);
        // Questions were parsed within the old limits.
        self.questions = Arc::default();
        self
    }

    /// The declared dataset called `name`.
    pub fn dataset(&self, name: &str) -> Result<Arc<Dataset>, ServiceError> {
        self.catalog
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("There is no dataset named {name:?}.")))
    }

    /// The accounts, if this instance has them (`JWT_SECRET`).
    pub fn accounts(&self) -> Result<&Auth, ServiceError> {
        self.auth
            .as_deref()
            .ok_or(ServiceError::Auth(AuthError::NotConfigured))
    }

    /// Checks that `caller` may act at `level`: anyone passes `anonymous` (a token is not even
    /// read); otherwise the token must be valid and the account, as stored now, active and of a
    /// high enough role.
    pub async fn authorize(
        &self,
        caller: &Caller,
        level: Level,
    ) -> Result<Option<Principal>, ServiceError> {
        if level == Level::Anonymous {
            return Ok(None);
        }
        // Boxed: a public read's future would otherwise carry this path's state (~1,200 bytes),
        // moved with it several times on every hit.
        Box::pin(self.authorize_account(caller, level)).await
    }

    /// [`Service::authorize`] above anonymous: the token, then the account as stored now.
    async fn authorize_account(
        &self,
        caller: &Caller,
        level: Level,
    ) -> Result<Option<Principal>, ServiceError> {
        let auth = self.accounts()?;
        let token = caller.token.as_deref().ok_or(AuthError::MissingToken)?;
        let principal = auth.principal(token).await?;
        let allowed = match level {
            Level::Anonymous | Level::User => true,
            Level::Admin => principal.role == crate::auth::Role::Admin,
        };
        if !allowed {
            return Err(AuthError::Forbidden.into());
        }
        Ok(Some(principal))
    }

    /// Creates the dataset's tables (once per instance) so that a never-imported dataset reads
    /// as empty and takes a first write.
    async fn ensure_tables(&self, dataset: &Dataset) -> Result<(), ServiceError> {
        if self.tables_ready.read().contains(&dataset.name) {
            return Ok(());
        }
        let _one_at_a_time = self.migrating.lock().await;
        if self.tables_ready.read().contains(&dataset.name) {
            return Ok(());
        }
        let migrated = self.storage.migrate(dataset).await?;
        // Answers filtering on a column whose keys were just filled may have left rows out.
        if migrated.keys_filled > 0 && self.cache.purge(&dataset.name).await.is_err() {
            tracing::warn!(dataset = %dataset.name, "hidden keys filled; the cache could not be purged");
        }
        self.tables_ready.write().insert(dataset.name.clone());
        Ok(())
    }

    /// [`Service::ensure_tables`] before a query, behind the database breaker like the query.
    async fn tables_for_query(&self, dataset: &Dataset) -> Result<(), ServiceError> {
        if self.database.is_open() {
            return Err(ServiceError::Unavailable);
        }
        let result = self.ensure_tables(dataset).await;
        if matches!(result, Err(ServiceError::Unavailable)) {
            self.database.trip();
        }
        result
    }

    /// A slot for one database read (`MAX_DATABASE_READS` at once): the rest of the pool is kept
    /// for logins, writes and health checks, whatever the misses. Waits a little; then a quick
    /// 503.
    async fn read_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ServiceError> {
        match tokio::time::timeout(READ_SLOT_WAIT, Arc::clone(&self.reads).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(ServiceError::Busy(
                "The database is busy; try again shortly.",
            )),
        }
    }
}

/// How long a cache miss waits for one of the read slots.
const READ_SLOT_WAIT: Duration = Duration::from_secs(5);

/// Concurrent cache-miss reads: `MAX_DATABASE_READS`, else the pool's size less one.
fn read_slots(limits: &RequestLimits, storage: &dyn Storage) -> usize {
    limits
        .database_reads
        .unwrap_or_else(|| storage.pool_size().saturating_sub(1).max(1))
}
