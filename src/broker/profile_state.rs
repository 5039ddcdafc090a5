//! Work on a profile's state in a browser of its own (storageState export and import), and which
//! sessions use a profile.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::Broker;
use super::error::BrokerError;
use crate::auth::{Tenant, random_hex};
use crate::browser::Browser;
use crate::browser::cdp::{self, CdpError};
use crate::profile::storage_state;
use crate::quota::Kind;
use crate::session::ProfileBinding;
use crate::store::StoreError;
use crate::store::profiles::{Profile, ProfileError, ProfileUse, Profiles};

impl Broker {
    /// A profile's cookies and localStorage as a Playwright `storageState` document.
    pub async fn export_storage_state(&self, tenant: &Tenant, id: &str) -> Result<Value, BrokerError> {
        self.in_profile_browser(tenant, id, false, async |conn, browser| {
            Ok(storage_state::export(conn, &browser.dir, &[], None).await?)
        })
        .await
    }

    /// Writes a (validated) `storageState` document into a profile and saves it.
    pub async fn import_storage_state(&self, tenant: &Tenant, id: &str, state: &Value) -> Result<(), BrokerError> {
        self.in_profile_browser(tenant, id, true, async |conn, _| {
            storage_state::import(conn, state).await.map_err(|e| match e {
                // Chrome's own checks (a cookie it will not take): the document's fault.
                CdpError::Refused { message, .. } => BrokerError::StateRefused(message),
                other => other.into(),
            })
        })
        .await
    }

    /// Runs `work` over CDP in a browser started on a copy of the profile; with `persist`,
    /// holds the profile as its writer and saves the browser's state into it afterwards.
    async fn in_profile_browser<T>(
        &self,
        tenant: &Tenant,
        id: &str,
        persist: bool,
        work: impl AsyncFnOnce(&mut cdp::Connection, &Browser) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let profile = self.profiles.get(tenant, id).await?;
        // A browser of its own: it takes a place in the key's quota, and one of its creates,
        // as a session would (else a key could hold every slot of the node this way).
        let _place = self.reserve_place(tenant, Kind::Managed).await.inspect_err(|_| {
            self.metrics.create_quota_refused.inc();
        })?;
        self.charge_create(tenant).await?;
        let holder = format!("storage-state-{}", random_hex(4));
        let held = Held::new(
            self.profiles.begin_use(profile, &holder, persist).await?,
            &self.profiles,
        );
        let result = self.profile_copies.run(held.hold(), persist, work).await;
        held.release().await;
        result
    }

    pub(super) fn profile_binding(&self, hold: ProfileUse) -> ProfileBinding {
        ProfileBinding {
            hold,
            store: self.profiles.clone(),
            copies: self.profile_copies.clone(),
            tracker: self.tracker.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// How many sessions use `profile` now: on this node, or in a cluster on every node
    /// (from the store's index of active sessions by profile).
    pub async fn profile_users(&self, profile: &Profile) -> Result<usize, StoreError> {
        match self.nodes {
            None => Ok(profile.users()),
            Some(_) => self.records.store().profile_users(&profile.id).await,
        }
    }

    /// Deletes a profile no session uses, on any node.
    pub async fn delete_profile(&self, tenant: &Tenant, id: &str) -> Result<(), BrokerError> {
        let users = self.profile_users(&*self.profiles.get(tenant, id).await?).await?;
        if users > 0 {
            return Err(ProfileError::InUse(users).into());
        }
        self.profiles.delete(tenant, id).await?;
        self.profile_gone(tenant, id);
        Ok(())
    }
}

/// A hold on a profile for work on a copy of it (and the copy's directory, if any),
/// released even if the request doing the work is dropped halfway (its client gone): else
/// the profile would stay in use, or locked to its writer, until the broker restarts, and
/// the copy would stay on disk.
pub(super) struct Held {
    hold: Option<ProfileUse>,
    profiles: Arc<Profiles>,
    copy: Option<PathBuf>,
}

impl Held {
    pub(super) fn new(hold: ProfileUse, profiles: &Arc<Profiles>) -> Held {
        Held {
            hold: Some(hold),
            profiles: profiles.clone(),
            copy: None,
        }
    }

    /// Removes `dir` too when released (unless kept).
    pub(super) fn with_copy(mut self, dir: &Path) -> Held {
        self.copy = Some(dir.to_owned());
        self
    }

    pub(super) fn hold(&self) -> &ProfileUse {
        self.hold.as_ref().expect("held until released or kept")
    }

    /// The hold, handed on to a session (which releases it, and removes its copy).
    pub(super) fn keep(mut self) -> ProfileUse {
        self.copy = None;
        self.hold.take().expect("held until released or kept")
    }

    /// Releases the hold and removes the copy now.
    pub(super) async fn release(mut self) {
        if let Some(dir) = self.copy.take() {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if let Some(hold) = self.hold.take() {
            self.profiles.end_use(hold).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (hold, copy) = (self.hold.take(), self.copy.take());
        if (hold.is_some() || copy.is_some())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let profiles = self.profiles.clone();
            runtime.spawn(async move {
                if let Some(dir) = copy {
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
                if let Some(hold) = hold {
                    profiles.end_use(hold).await;
                }
            });
        }
    }
}
