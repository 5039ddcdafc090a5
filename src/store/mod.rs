//! The store layer: what outlives a browser. Session records behind [`SessionStore`]
//! (kept on this node's disk by [`LocalStore`]; a shared store lets other nodes read them),
//! browser profiles on disk, and Playwright `storageState` documents in and out of them.
//!
//! Nothing here decides an HTTP status: errors say what went wrong and whose fault it is.

pub mod extension_catalog;
pub mod extension_zip;
pub mod extensions;
pub(crate) mod local;
pub mod nodes;
pub mod pool_definitions;
pub mod profile_data;
pub mod profile_locks;
pub mod profiles;
pub(crate) mod record;
pub mod redis;

use std::time::{Duration, SystemTime};

use crate::auth::Tenant;
use crate::error::Origin;

pub use record::{
    EndReason, Isolation, NetworkStats, ProfileLink, ProxySettings, SaveOutcome, SessionOptions, SessionRecord, Status,
};

/// Which records a list asks for, newest first.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub tenant: Tenant,
    pub status: Option<Status>,
    pub offset: usize,
    pub limit: usize,
}

/// One page of a list, and how many records match in all.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub records: Vec<SessionRecord>,
    pub total: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the session store failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A store failure is never the client's doing.
    pub fn origin(&self) -> Origin {
        Origin::Internal
    }
}

/// Where session records are kept. Every implementation passes the suite in
/// `store::contract`.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Newest first (by creation, then id), with the total before paging.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;

    /// Writes the record (created or changed).
    async fn put(&self, record: &SessionRecord) -> Result<(), StoreError>;

    async fn remove(&self, id: &str) -> Result<(), StoreError>;

    /// The records of `ids` that exist, in `ids`' order (one round trip where the store
    /// can: the reaper reads a lost node's sessions this way).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<SessionRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.get(id).await?);
        }
        Ok(found)
    }

    /// Writes each record as [`Self::put`] does (one round trip where the store can).
    async fn put_many(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        for record in records {
            self.put(record).await?;
        }
        Ok(())
    }

    /// Forgets records that ended `retention` or longer before `now`; answers their ids.
    async fn sweep(&self, now: SystemTime, retention: Duration) -> Result<Vec<String>, StoreError>;

    /// Records `node`'s sessions still active as ended with its previous run (their
    /// browsers died with it); answers how many. Called once as a node starts.
    async fn end_left_active(&self, node: &str, now: SystemTime) -> Result<usize, StoreError>;

    /// The ids of the sessions recorded as active on `node`.
    async fn active_on(&self, node: &str) -> Result<Vec<String>, StoreError>;

    /// How many sessions recorded as active use profile `profile_id`, on any node.
    async fn profile_users(&self, profile_id: &str) -> Result<usize, StoreError>;

    /// The record if it is `tenant`'s: another tenant's sessions look unknown.
    async fn get_for(&self, tenant: &Tenant, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.get(id).await?.filter(|r| &r.tenant == tenant))
    }
}

/// Sorts newest first and cuts out one page: how every store answers a list.
pub fn page_of(mut matching: Vec<SessionRecord>, query: &ListQuery) -> ListPage {
    matching.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let total = matching.len();
    let records = matching.into_iter().skip(query.offset).take(query.limit).collect();
    ListPage { records, total }
}

#[cfg(test)]
pub(crate) mod contract;
