//! Per-tenant quotas: how many sessions one API key may have running at once, so that one
//! key cannot hold every browser slot of a shared service (`max_sessions_per_key`) or make
//! the broker front any number of browsers of its own (`max_byo_sessions_per_key`).
//!
//! A create reserves its place before it takes anything (a slot, a browser, a record) and
//! holds the reservation until its session runs; the count of a tenant's running sessions
//! here and its reservations are read under one lock, so creates racing on one node never
//! pass the limit together. Sessions on other nodes of a cluster are counted from the shared
//! store before that lock: two nodes creating for one key in the same instant may each see
//! the other's session not yet written, so a cluster may pass the limit by at most one
//! session per node creating at that instant, for as long as those sessions run.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::auth::Tenant;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Sessions on the broker's browsers: process and context sessions.
    Managed,
    /// Sessions fronting the user's own browser (`cdp_url`).
    Byo,
}

impl Kind {
    fn setting(self) -> &'static str {
        match self {
            Kind::Managed => "max_sessions_per_key",
            Kind::Byo => "max_byo_sessions_per_key",
        }
    }

    fn sessions(self) -> &'static str {
        match self {
            Kind::Managed => "sessions",
            Kind::Byo => "bring-your-own sessions",
        }
    }
}

/// A create refused because its tenant is at its limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "This API key already has {running} {} running, the most {} allows ({limit}): end one \
     (POST /public/sessions/{{id}}/terminate) before creating another.",
    kind.sessions(),
    kind.setting()
)]
pub struct QuotaExceeded {
    pub kind: Kind,
    pub limit: usize,
    pub running: usize,
}

/// The limits, and the creates under way that hold a place.
pub(crate) struct Quotas {
    managed: usize,
    byo: usize,
    pending: Mutex<HashMap<(Tenant, Kind), usize>>,
}

/// A place held for one create until it is dropped (by then its session runs, or the
/// create failed).
pub(crate) struct Reservation<'a> {
    quotas: &'a Quotas,
    key: Option<(Tenant, Kind)>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut pending = self.quotas.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pending.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&key);
            }
        }
    }
}

impl Quotas {
    /// `managed` and `byo` sessions per tenant at once; 0 is no limit.
    pub(crate) fn new(managed: usize, byo: usize) -> Quotas {
        Quotas {
            managed,
            byo,
            pending: Mutex::default(),
        }
    }

    /// The limit for `kind`, if there is one.
    pub(crate) fn limit(&self, kind: Kind) -> Option<usize> {
        let limit = match kind {
            Kind::Managed => self.managed,
            Kind::Byo => self.byo,
        };
        (limit > 0).then_some(limit)
    }

    /// Holds a place for `tenant` without a check: a named pool's ready browser becoming a
    /// session, whose place it held until now (it is counted here before it leaves the pool,
    /// so no create can take the place in between).
    pub(crate) fn hold(&self, tenant: &Tenant, kind: Kind) -> Reservation<'_> {
        if self.limit(kind).is_none() {
            return Reservation {
                quotas: self,
                key: None,
            };
        }
        let key = (tenant.clone(), kind);
        *self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        Reservation {
            quotas: self,
            key: Some(key),
        }
    }

    /// Holds a place for a create of `tenant`, or refuses it: `elsewhere` of its sessions
    /// of `kind` run on other nodes, and `here()` (read under the lock) on this one.
    pub(crate) fn reserve(
        &self,
        tenant: &Tenant,
        kind: Kind,
        elsewhere: usize,
        here: impl FnOnce() -> usize,
    ) -> Result<Reservation<'_>, QuotaExceeded> {
        let Some(limit) = self.limit(kind) else {
            return Ok(Reservation {
                quotas: self,
                key: None,
            });
        };
        let key = (tenant.clone(), kind);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let running = elsewhere + here() + pending.get(&key).copied().unwrap_or(0);
        if running >= limit {
            return Err(QuotaExceeded { kind, limit, running });
        }
        *pending.entry(key.clone()).or_default() += 1;
        Ok(Reservation {
            quotas: self,
            key: Some(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_until_dropped_and_tenants_are_apart() {
        let quotas = Quotas::new(2, 0);
        let a = Tenant::from_id("t_a");
        let b = Tenant::from_id("t_b");
        let first = quotas.reserve(&a, Kind::Managed, 0, || 0).unwrap();
        let second = quotas.reserve(&a, Kind::Managed, 0, || 0).unwrap();
        let refused = quotas.reserve(&a, Kind::Managed, 0, || 0).err().unwrap();
        assert_eq!((refused.limit, refused.running), (2, 2));
        assert!(
            refused.to_string().contains("max_sessions_per_key allows (2)"),
            "{refused}"
        );
        assert!(quotas.reserve(&b, Kind::Managed, 0, || 0).is_ok());
        drop(first);
        // Its session now runs: counted by `here` instead.
        assert!(quotas.reserve(&a, Kind::Managed, 0, || 1).is_err());
        drop(second);
        assert!(quotas.reserve(&a, Kind::Managed, 1, || 0).is_ok());
        assert!(quotas.reserve(&a, Kind::Managed, 1, || 1).is_err());
        // No limit on bring-your-own here.
        assert!(quotas.reserve(&a, Kind::Byo, 100, || 100).is_ok());
        assert!(quotas.pending.lock().unwrap().is_empty());
    }
}
