//! Work on a profile's state in a browser of its own (storageState export and import), and which
//! sessions use a profile.

use std::sync::Arc;

use serde_json::Value;

use super::Broker;
use super::error::BrokerError;
use crate::auth::{Tenant, random_hex};
use crate::browser::Browser;
use crate::browser::cdp::{self, CdpError};
use crate::profile::storage_state;
use crate::session::ProfileBinding;
use crate::store::StoreError;
use crate::store::profiles::{Profile, ProfileError, ProfileUse, Profiles};

impl Broker {
    /// A profile's cookies and localStorage as a Playwright `storageState` document.
    pub async fn export_storage_state(&self, tenant: &Tenant, id: &str) -> Result<Value, BrokerError> {
        self.in_profile_browser(tenant, id, false, async |conn, browser| {
            Ok(storage_state::export(conn, &browser.dir, &[]).await?)
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
        let holder = format!("storage-state-{}", random_hex(4));
        let mut held = Held {
            hold: Some(self.profiles.begin_use(profile, &holder, persist).await?),
            profiles: self.profiles.clone(),
        };
        let hold = held.hold.as_ref().expect("just taken");
        let result = self.profile_copies.run(hold, persist, work).await;
        if let Some(hold) = held.hold.take() {
            self.profiles.end_use(hold).await;
        }
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

/// A hold on a profile for work on a copy of it, released even if the request doing the
/// work is dropped halfway (its client gone): else the profile would stay in use, or
/// locked to its writer, until the broker restarts.
struct Held {
    hold: Option<ProfileUse>,
    profiles: Arc<Profiles>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let profiles = self.profiles.clone();
            runtime.spawn(async move { profiles.end_use(hold).await });
        }
    }
}
