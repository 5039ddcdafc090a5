//! What named pools do: defined, changed and deleted for their key, taken from by a
//! create, and refilled by each pool's keeper (one launch at a time, only into a free slot
//! and within the key's quota).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::NodeInfo;
use super::error::{BrokerError, NamedPoolError};
use super::pools::{NamedPool, PoolChange, PoolSpec, PoolTake, PoolView, Ready, ReadyKind, Taken};
use super::request::NewSession;
use crate::auth::{Tenant, random_hex};
use crate::browser::pool::PoolError;
use crate::profile::{cookies, copy as profile_copy};
use crate::quota::Kind;
use crate::session::{Backing, Session, session_span};
use crate::store::Isolation;
use crate::store::nodes::PoolShare;
use crate::store::profiles::{Profile, ProfileError};

/// The longest pause between failed refills of a pool.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a pool that could not refill (no free slot, the key at its quota) looks again.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a replacement waits after a take while other ready ones remain.
const REFILL_QUIET: Duration = Duration::from_millis(500);

impl Broker {
    /// Defines a pool of `tenant` from `spec` (read from `definition`, which is kept for the
    /// next start and, in a cluster, for every node) and starts filling it.
    pub async fn create_pool(
        &self,
        tenant: &Tenant,
        name: &str,
        spec: PoolSpec,
        definition: Map<String, Value>,
    ) -> Result<PoolView, BrokerError> {
        // Its browsers are launched for the key: a loop of pool writes must not launch
        // more than the key's creates may.
        self.charge_create(tenant).await?;
        self.define(tenant, name, spec, definition, true).await
    }

    /// Defines here a pool whose definition is already stored (kept from before this
    /// start, or made on another node of the cluster).
    pub async fn define_pool(
        &self,
        tenant: &Tenant,
        name: &str,
        spec: PoolSpec,
        definition: Map<String, Value>,
    ) -> Result<PoolView, BrokerError> {
        self.define(tenant, name, spec, definition, false).await
    }

    async fn define(
        &self,
        tenant: &Tenant,
        name: &str,
        spec: PoolSpec,
        definition: Map<String, Value>,
        store: bool,
    ) -> Result<PoolView, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        self.check_pool_spec(tenant, &spec).await?;
        let _defining = self.named.defining.lock().await;
        {
            let pools = self.named.lock();
            if pools.contains_key(&(tenant.clone(), name.to_owned())) {
                return Err(NamedPoolError::Exists(name.to_owned()).into());
            }
            let count = pools.keys().filter(|(t, _)| t == tenant).count();
            if count >= self.config.max_pools_per_key {
                return Err(NamedPoolError::TooMany(count).into());
            }
            let sizes: usize = pools
                .values()
                .filter(|p| &p.tenant == tenant)
                .map(|p| p.spec().size)
                .sum();
            self.check_pool_sizes(sizes + spec.size)?;
        }
        // In a cluster the name is the cluster's: the first definition written wins.
        if store
            && !self
                .pool_definitions
                .insert(tenant, name, &Value::Object(definition.clone()))
                .await?
        {
            return Err(NamedPoolError::Exists(name.to_owned()).into());
        }
        let pool = Arc::new(NamedPool {
            name: name.to_owned(),
            tenant: tenant.clone(),
            created_at: SystemTime::now(),
            spec: Mutex::new(spec),
            definition: Mutex::new(definition),
            ready: Mutex::default(),
            last_take: Mutex::default(),
            stats: Mutex::default(),
            wake: Notify::new(),
            stop: self.shutdown.child_token(),
            kept: CancellationToken::new(),
            share: self.named.share.clone(),
        });
        {
            let mut pools = self.named.lock();
            let key = (tenant.clone(), name.to_owned());
            match pools.get(&key) {
                // Defined here meanwhile by the cluster's sync, from the definition just
                // written: this create's own.
                Some(synced) if store => return Ok(synced.view()),
                Some(_) => return Err(NamedPoolError::Exists(name.to_owned()).into()),
                None => pools.insert(key, pool.clone()),
            };
        }
        self.tracker.spawn(keep(self.me.clone(), pool.clone()));
        tracing::info!(tenant = %tenant, pool = %name, size = pool.spec().size, "pool defined");
        Ok(pool.view())
    }

    /// `tenant`'s pools, by name (in a cluster, with the cluster's counts).
    pub async fn pools_of(&self, tenant: &Tenant) -> Vec<PoolView> {
        let mut views: Vec<PoolView> = self.named.of(tenant).iter().map(|p| p.view()).collect();
        self.add_other_nodes(tenant, &mut views).await;
        views
    }

    pub async fn pool_view(&self, tenant: &Tenant, name: &str) -> Result<PoolView, BrokerError> {
        let mut views = vec![self.named.get(tenant, name).ok_or(NamedPoolError::NotFound)?.view()];
        self.add_other_nodes(tenant, &mut views).await;
        Ok(views.remove(0))
    }

    /// Adds the other live nodes' shares (from their heartbeats) to `views`' counts.
    async fn add_other_nodes(&self, tenant: &Tenant, views: &mut [PoolView]) {
        let Some(nodes) = &self.nodes else { return };
        let others = match nodes.all().await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "pool counts of other nodes unavailable");
                Vec::new()
            }
        };
        for view in views {
            let stats = &mut view.stats;
            let mut by_node = vec![(self.node.clone(), stats.ready)];
            let key = format!("{tenant}.{}", view.name);
            for (node, alive) in &others {
                if !alive || node.id == self.node {
                    continue;
                }
                if let Some(share) = node.pools.get(&key) {
                    stats.ready += share.ready;
                    stats.taken += share.taken;
                    stats.missed += share.missed;
                    stats.errors += share.errors;
                    by_node.push((node.id.clone(), share.ready));
                }
            }
            by_node.sort();
            stats.nodes = Some(by_node);
        }
    }

    /// This node's share of each pool, for its heartbeat.
    pub(super) fn pool_shares(&self) -> std::collections::BTreeMap<String, PoolShare> {
        self.named
            .lock()
            .values()
            .map(|p| {
                let stats = p.stats.lock().expect("pool lock").clone();
                let share = PoolShare {
                    ready: p.ready_count(),
                    taken: stats.taken,
                    missed: stats.missed,
                    errors: stats.errors,
                };
                (format!("{}.{}", p.tenant, p.name), share)
            })
            .collect()
    }

    /// Reads this node's place among the live nodes again; every pool's keeper is woken
    /// when it changed (a node came or went: the shares move).
    pub(super) async fn refresh_pool_share(&self) {
        let Some(nodes) = &self.nodes else { return };
        let Ok(all) = nodes.all().await else { return };
        let mut live: Vec<&str> = all
            .iter()
            .filter(|(_, alive)| *alive)
            .map(|(n, _)| n.id.as_str())
            .collect();
        if !live.contains(&self.node.as_str()) {
            live.push(&self.node);
        }
        live.sort_unstable();
        let index = live.iter().position(|id| *id == self.node).unwrap_or_default();
        if self.named.share.set(index, live.len()) {
            tracing::info!(
                nodes = live.len(),
                index,
                "the cluster's nodes changed: pool shares move"
            );
            for pool in self.named.lock().values() {
                pool.wake.notify_one();
            }
        }
    }

    /// Whether a create from `tenant`'s pool `name` would find a ready one here (`404`
    /// for a pool the key does not have).
    pub fn pool_ready_here(&self, tenant: &Tenant, name: &str) -> Result<bool, BrokerError> {
        Ok(self
            .named
            .get(tenant, name)
            .ok_or(NamedPoolError::NotFound)?
            .ready_count()
            > 0)
    }

    /// `tenant`'s pools' browsers ready on the other live nodes, as their heartbeats say:
    /// sessions of its key waiting to be taken there, so they count against its quota here
    /// as this node's own ready ones do. Read only for a key that has pools.
    pub(super) async fn ready_elsewhere(&self, tenant: &Tenant) -> usize {
        let Some(nodes) = &self.nodes else { return 0 };
        if self.named.of(tenant).is_empty() {
            return 0;
        }
        let prefix = format!("{tenant}.");
        nodes
            .all()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|(n, alive)| *alive && n.id != self.node)
            .flat_map(|(n, _)| n.pools.iter())
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, share)| share.ready)
            .sum()
    }

    /// The other live nodes with a ready one of `tenant`'s pool `name`, those with the
    /// most first: where a create from it goes when none is ready here.
    pub async fn pool_holders(&self, tenant: &Tenant, name: &str) -> Vec<NodeInfo> {
        let Some(nodes) = &self.nodes else { return Vec::new() };
        let key = format!("{tenant}.{name}");
        let ready = |n: &NodeInfo| n.pools.get(&key).map_or(0, |s| s.ready);
        let mut holders: Vec<NodeInfo> = nodes
            .all()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, alive)| *alive && n.id != self.node && ready(n) > 0)
            .map(|(n, _)| n)
            .collect();
        holders.sort_by(|a, b| ready(b).cmp(&ready(a)).then_with(|| a.id.cmp(&b.id)));
        holders
    }

    /// Changes a pool's size, TTL or idle timeout (`patch`: the change as the API took
    /// it, merged into the kept definition); ready browsers past a smaller size go.
    pub async fn update_pool(
        &self,
        tenant: &Tenant,
        name: &str,
        change: PoolChange,
        patch: Map<String, Value>,
    ) -> Result<PoolView, BrokerError> {
        // A new size launches (or ends) browsers: a loop of resizes must not launch more
        // than the key's creates may.
        let current = self
            .named
            .get(tenant, name)
            .ok_or(NamedPoolError::NotFound)?
            .spec()
            .size;
        if change.size.is_some_and(|size| size > current) {
            self.charge_create(tenant).await?;
        }
        let pool = {
            let _defining = self.named.defining.lock().await;
            let pool = self.change_pool_here(tenant, name, change)?;
            pool.definition.lock().expect("pool lock").extend(patch);
            let definition = Value::Object(pool.definition.lock().expect("pool lock").clone());
            // Only if it is still defined: a DELETE that came between keeps the pool deleted.
            if !self.pool_definitions.update(tenant, name, &definition).await? {
                return Err(NamedPoolError::NotFound.into());
            }
            pool
        };
        let mut views = vec![pool.view()];
        self.add_other_nodes(tenant, &mut views).await;
        Ok(views.remove(0))
    }

    /// Applies a change to the pool here (`update_pool`'s, or one another node made).
    fn change_pool_here(&self, tenant: &Tenant, name: &str, change: PoolChange) -> Result<Arc<NamedPool>, BrokerError> {
        let pool = self.named.get(tenant, name).ok_or(NamedPoolError::NotFound)?;
        if let Some(size) = change.size {
            let others: usize = self
                .named
                .of(tenant)
                .iter()
                .filter(|p| p.name != name)
                .map(|p| p.spec().size)
                .sum();
            self.check_pool_sizes(others + size)?;
        }
        {
            let mut spec = pool.spec.lock().expect("pool lock");
            if let Some(size) = change.size {
                spec.size = size;
            }
            if let Some(ttl) = change.ttl {
                spec.ttl = ttl;
            }
            if let Some(idle) = change.idle_timeout {
                spec.options.idle_timeout = idle;
            }
        }
        drop(pool.excess());
        pool.wake.notify_one();
        Ok(pool)
    }

    /// Takes another node's change of a pool: its stored definition, `definition`, now
    /// differs from this node's only by `change`.
    pub fn follow_pool_change(
        &self,
        tenant: &Tenant,
        name: &str,
        change: PoolChange,
        definition: Map<String, Value>,
    ) -> Result<(), BrokerError> {
        let pool = self.change_pool_here(tenant, name, change)?;
        *pool.definition.lock().expect("pool lock") = definition;
        Ok(())
    }

    /// The definition of a pool here, as kept.
    pub fn pool_definition(&self, tenant: &Tenant, name: &str) -> Option<Map<String, Value>> {
        let pool = self.named.get(tenant, name)?;
        let definition = pool.definition.lock().expect("pool lock").clone();
        Some(definition)
    }

    /// Every pool defined here: (key, name).
    pub fn pool_names(&self) -> Vec<(Tenant, String)> {
        self.named.lock().keys().cloned().collect()
    }

    /// Deletes a pool: its keeper stops and its ready browsers are killed (answered once
    /// they have exited); sessions already taken from it keep running.
    pub async fn delete_pool(&self, tenant: &Tenant, name: &str) -> Result<(), BrokerError> {
        if self.named.get(tenant, name).is_none() {
            return Err(NamedPoolError::NotFound.into());
        }
        // Gone from the store first: in a cluster, no node defines it again meanwhile.
        self.pool_definitions.remove(tenant, name).await?;
        self.drop_pool_here(tenant, name).await
    }

    /// Stops a pool here and lets go of its ready ones (its definition left as it is).
    pub async fn drop_pool_here(&self, tenant: &Tenant, name: &str) -> Result<(), BrokerError> {
        let pool = self
            .named
            .lock()
            .remove(&(tenant.clone(), name.to_owned()))
            .ok_or(NamedPoolError::NotFound)?;
        pool.stop.cancel();
        // The keeper finishes a launch under way, then kills every browser and waits for them.
        let bound = self.config.launch_timeout() * 2 + Duration::from_secs(5);
        let _ = tokio::time::timeout(bound, pool.kept.cancelled()).await;
        tracing::info!(tenant = %tenant, pool = %name, "pool deleted");
        Ok(())
    }

    /// The stored pools of the keys configured now. On one node, the definitions of keys
    /// no longer configured are removed (their pools are not defined again); in a cluster
    /// they are only skipped (another node may serve that key).
    pub async fn stored_pools(&self) -> Result<Vec<(Tenant, String, Value)>, BrokerError> {
        let keys: Vec<&Tenant> = self.keys.tenants().collect();
        let (kept, revoked): (Vec<_>, Vec<_>) = self
            .pool_definitions
            .all()
            .await?
            .into_iter()
            .partition(|(tenant, _, _)| keys.contains(&tenant));
        if !self.pool_definitions.is_shared() {
            for (tenant, name, _) in revoked {
                tracing::info!(tenant = %tenant, pool = %name, "pool of a key no longer configured: forgotten");
                self.forget_pool_definition(&tenant, &name).await;
            }
        }
        Ok(kept)
    }

    /// Removes a stored definition that can no longer be defined.
    pub async fn forget_pool_definition(&self, tenant: &Tenant, name: &str) {
        if let Err(e) = self.pool_definitions.remove(tenant, name).await {
            tracing::warn!(pool = %name, error = %e, "a pool's definition could not be removed");
        }
    }

    /// A profile was deleted: the ready browsers of pools started from it go (they hold a
    /// copy of it); their next refill fails until the pool is deleted or changed.
    pub(super) fn profile_gone(&self, tenant: &Tenant, profile_id: &str) {
        for pool in self.named.of(tenant) {
            if pool.spec().profile_id.as_deref() == Some(profile_id) {
                drop(pool.drain());
            }
        }
    }

    /// Drops the ready browsers of pools whose profile is gone from the store (deleted
    /// through another node of a cluster): the cluster's pool sync calls it.
    pub async fn drop_pools_of_deleted_profiles(&self) {
        let pools: Vec<_> = self.named.lock().values().cloned().collect();
        for pool in pools {
            let Some(id) = pool.spec().profile_id else { continue };
            if pool.ready_count() == 0 {
                continue;
            }
            if let Err(ProfileError::NotFound) = self.profiles.get(&pool.tenant, &id).await {
                tracing::info!(tenant = %pool.tenant, profile = %id, "a pool's profile was deleted: its ready browsers go");
                drop(pool.drain());
            }
        }
    }

    /// A session from `tenant`'s pool `name`: a ready browser if there is one, else a cold
    /// start with the pool's settings (without `cold`, a refusal: another node sent it
    /// here for a ready one).
    pub async fn create_from_pool(
        &self,
        tenant: Tenant,
        name: &str,
        take: PoolTake,
        cold: bool,
    ) -> Result<Taken, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let pool = self.named.get(&tenant, name).ok_or(NamedPoolError::NotFound)?;
        if !cold && pool.ready_count() == 0 {
            return Err(NamedPoolError::NoneReady.into());
        }
        let mut request = session_of(&pool.spec());
        if let Some(idle) = take.idle_timeout {
            request.options.idle_timeout = idle;
        }
        request.ttl = take.ttl.unwrap_or(request.ttl);
        request.metadata = take.metadata;
        if let Err(wait) = self.take_create(&tenant).await {
            self.metrics.create_rate_limited.inc();
            return Err(BrokerError::RateLimited {
                per_minute: self.config.creates_per_minute,
                retry_after: wait.as_secs() + 1,
            });
        }
        // The ready browser's place in the quota passes to the session without a gap.
        let place = self.quotas.hold(&tenant, Kind::Managed);
        // One copied from a profile deleted since (its refill under way when it went) goes.
        let ready = pool
            .pop()
            .filter(|r| !r.profile.as_ref().is_some_and(|p| p.is_deleted()));
        let Some(ready) = ready else {
            drop(place);
            pool.stats.lock().expect("pool lock").missed += 1;
            self.metrics.named_pool_misses.inc();
            let _place = self.reserve_place(&tenant, Kind::Managed).await.inspect_err(|_| {
                self.metrics.create_quota_refused.inc();
            })?;
            let session = self.create_admitted(tenant, request).await?;
            return Ok(Taken { session, hit: false });
        };
        pool.wake.notify_one();
        pool.stats.lock().expect("pool lock").taken += 1;
        self.metrics.named_pool_hits.inc();
        match self.create_on_ready(tenant.clone(), request, ready).await {
            Ok(session) => Ok(Taken { session, hit: true }),
            Err(e) => {
                if matches!(e, BrokerError::Profile(crate::store::profiles::ProfileError::NotFound)) {
                    drop(pool.drain());
                }
                Err(e)
            }
        }
    }

    /// A session on a ready browser or context: what a create does after it is there.
    async fn create_on_ready(
        &self,
        tenant: Tenant,
        mut request: NewSession,
        ready: Ready,
    ) -> Result<Arc<Session>, BrokerError> {
        if request.options.record && self.artifacts.ffmpeg.is_none() {
            return Err(BrokerError::OptionRefused(
                "record: this node cannot record sessions (ffmpeg is not installed)".into(),
            ));
        }
        request.webhook = self
            .webhooks
            .target_for(&tenant, None, None)
            .await
            .map_err(|e| BrokerError::OptionRefused(e.to_string()))?;
        // The browser the ready one is: chosen as for its refill.
        let (kind, reason) = self.choose_browser(&request)?;
        (request.options.browser, request.options.browser_reason) = (Some(kind), Some(reason));
        // A ready context was bound for its session's id (its traffic is counted for it).
        let (id, backing) = match ready.kind {
            ReadyKind::Browser(lease) => (format!("sess_{}", random_hex(16)), Backing::Managed(lease)),
            ReadyKind::Context { id, lease } => (id, Backing::Context(lease)),
        };
        // The profile as the refill read it: no record is read on the take (a profile
        // deleted since took the pool's ready ones with it).
        let remembered = ready.profile.as_ref().and_then(|p| p.fingerprint.clone());
        let request = self.pick_fingerprint_from(&tenant, request, remembered).await?;
        let binding = match ready.profile {
            Some(profile) => Some(self.profile_binding(self.profiles.begin_use(profile, &id, false).await?)),
            None => None,
        };
        self.register(id, tenant, request, backing, binding).await
    }

    /// A pool's settings as they would run: its profile and extensions the key's own.
    async fn check_pool_spec(&self, tenant: &Tenant, spec: &PoolSpec) -> Result<(), BrokerError> {
        // A context pool runs on the shared browsers' executable, as its sessions would.
        self.choose_browser(&session_of(spec))?;
        if self.pool_definitions.is_shared() && spec.options.proxy.as_ref().is_some_and(|p| p.password.is_some()) {
            return Err(BrokerError::OptionRefused(
                "proxy: a pool of a cluster cannot carry a proxy password: its definition is kept in Redis, where nothing secret is kept".into(),
            ));
        }
        self.check_proxy(&spec.options).await?;
        if let Some(id) = &spec.profile_id {
            self.profiles.get(tenant, id).await?;
        }
        if !spec.options.extensions.is_empty() {
            self.extensions.check(tenant, &spec.options.extensions).await?;
        }
        if spec.options.record && self.artifacts.ffmpeg.is_none() {
            return Err(BrokerError::OptionRefused(
                "record: this node cannot record sessions (ffmpeg is not installed)".into(),
            ));
        }
        Ok(())
    }

    /// Refuses pool sizes of one key totalling more than its quota of sessions.
    fn check_pool_sizes(&self, total: usize) -> Result<(), BrokerError> {
        match self.quotas.limit(Kind::Managed) {
            Some(limit) if total > limit => Err(NamedPoolError::OverQuota { total, limit }.into()),
            _ => Ok(()),
        }
    }

    /// Makes one ready browser for `pool`: `Ok(false)` when there is no room for it now (no
    /// free slot, or its key at its quota).
    async fn refill_one(&self, pool: &NamedPool) -> Result<bool, BrokerError> {
        let Ok(_place) = self.reserve_place(&pool.tenant, Kind::Managed).await else {
            return Ok(false);
        };
        let spec = pool.spec();
        if spec.options.isolation == Isolation::Context {
            return self.refill_context(pool, &spec).await;
        }
        if self.pool.free_slots() == 0 {
            return Ok(false);
        }
        let (kind, _) = self.choose_browser(&session_of(&spec))?;
        let started = Instant::now();
        let extensions = match spec.options.extensions.is_empty() {
            true => None,
            false => Some(self.extensions.hold(&pool.tenant, &spec.options.extensions).await?),
        };
        let profile = match &spec.profile_id {
            Some(id) => Some(self.profiles.get(&pool.tenant, id).await?),
            None => None,
        };
        let launched = match &profile {
            None => self.pool.acquire_spare(spec.screen, kind, None, extensions).await,
            Some(profile) => {
                // Held only while it is copied: a ready browser never writes the profile.
                let hold = self
                    .profiles
                    .begin_use(profile.clone(), &format!("pool_{}", random_hex(8)), false)
                    .await?;
                let dir = self.pool.scratch_dir();
                let copied = self.profiles.copy_into(&hold, &dir).await;
                self.profiles.end_use(hold).await;
                let saved_cookies = match copied {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tokio::fs::remove_dir_all(&dir).await;
                        return Err(BrokerError::ProfileUnreadable(e));
                    }
                };
                match self
                    .pool
                    .acquire_spare(spec.screen, kind, Some(dir.clone()), extensions)
                    .await
                {
                    Ok(lease) => {
                        if let Err(e) = cookies::restore_session_cookies(&lease.browser, &saved_cookies).await {
                            tracing::warn!(error = %e, "pool: could not restore the profile's session cookies");
                        }
                        Ok(lease)
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_dir_all(&dir).await;
                        Err(e)
                    }
                }
            }
        };
        let lease = match launched {
            Ok(lease) => lease,
            Err(PoolError::Busy) => return Ok(false),
            Err(e) => return Err(BrokerError::Capacity(e)),
        };
        self.refilled(pool, started, ReadyKind::Browser(lease), profile);
        Ok(true)
    }

    /// Makes one ready context for `pool`: a context in a shared browser of its key, its
    /// traffic routed (through the pool's proxy) for the session id chosen now, the
    /// profile's storage state (cookies, session cookies too, and localStorage) loaded in.
    /// `Ok(false)` when the shared browsers have no room now.
    async fn refill_context(&self, pool: &NamedPool, spec: &PoolSpec) -> Result<bool, BrokerError> {
        let started = Instant::now();
        // The profile is read in a browser of its own: not without a slot for it.
        if spec.profile_id.is_some() && self.pool.free_slots() == 0 {
            return Ok(false);
        }
        let id = format!("sess_{}", random_hex(16));
        let tenant = &pool.tenant;
        let span = session_span(&id, tenant);
        // The context first: with the shared browsers full, no profile is read (a browser
        // launched for it) only to be thrown away, every second.
        let acquired = self
            .shared
            .acquire(
                &tenant.to_string(),
                spec.screen,
                span,
                spec.options.proxy.clone(),
                false,
            )
            .await;
        let lease = match acquired {
            Ok(lease) => lease,
            Err(PoolError::Busy) => return Ok(false),
            Err(e) => return Err(BrokerError::Capacity(e)),
        };
        let mut profile = None;
        let state = match &spec.profile_id {
            None => None,
            Some(profile_id) => {
                let found = profile.insert(self.profiles.get(&pool.tenant, profile_id).await?);
                // Held only while it is read: a ready context never writes the profile.
                let hold = self
                    .profiles
                    .begin_use(found.clone(), &format!("pool_{}", random_hex(8)), false)
                    .await?;
                let state = self.profile_copies.read_state(&hold).await;
                self.profiles.end_use(hold).await;
                Some(state?)
            }
        };
        if let Some(state) = state {
            let ws_url = lease.shared.browser.ws_url();
            profile_copy::load_context_state(&ws_url, &lease.scope.context, &state)
                .await
                .map_err(BrokerError::ProfileBrowser)?;
        }
        self.refilled(pool, started, ReadyKind::Context { id, lease }, profile);
        Ok(true)
    }

    fn refilled(&self, pool: &NamedPool, started: Instant, kind: ReadyKind, profile: Option<Arc<Profile>>) {
        if profile.as_ref().is_some_and(|p| p.is_deleted()) {
            return; // deleted while it was copied: the copy goes (dropped, its browser killed)
        }
        let ready = Ready { kind, profile };
        let took = started.elapsed();
        self.metrics.named_pool_refill_time.observe(took);
        pool.stats.lock().expect("pool lock").last_refill_ms = Some(took.as_millis() as u64);
        pool.push(ready);
    }

    /// Pools on this node and browsers ready in them, for `/metrics`.
    pub(super) fn pool_totals(&self) -> (usize, usize) {
        self.named.totals()
    }
}

/// A pool's keeper: refills it one launch at a time while it is short, until it is
/// deleted or the broker stops; then lets go of its browsers.
async fn keep(broker: Weak<Broker>, pool: Arc<NamedPool>) {
    let mut backoff = Duration::from_millis(250);
    while !pool.stop.is_cancelled() {
        drop(pool.excess());
        let woken = pool.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let Some(b) = broker.upgrade() else { break };
        let mut pause = None;
        // Just taken while others are still ready: the taken session's first commands
        // go first (a launch takes both cores for a moment), as the warm pool does.
        let since_take = pool.last_take.lock().expect("pool lock").map(|at| at.elapsed());
        if let Some(since) = since_take.filter(|s| *s < REFILL_QUIET)
            && pool.missing() > 0
            && pool.ready_count() > 0
        {
            drop(b);
            tokio::select! {
                _ = tokio::time::sleep(REFILL_QUIET - since) => {}
                _ = pool.stop.cancelled() => {}
            }
            continue;
        }
        if pool.missing() > 0 {
            match b.refill_one(&pool).await {
                Ok(true) => {
                    backoff = Duration::from_millis(250);
                    // The others learn of it now, not at the next heartbeat.
                    b.beat().await;
                    continue;
                }
                Ok(false) => pause = Some(RECHECK),
                Err(e) => {
                    b.metrics.named_pool_refill_failures.inc();
                    tracing::warn!(tenant = %pool.tenant, pool = %pool.name, error = %e, "pool refill failed");
                    let mut stats = pool.stats.lock().expect("pool lock");
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    pause = Some(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        drop(b);
        match pause {
            // A failure waits out its backoff; no room waits for a take or a second.
            Some(pause) if pause != RECHECK => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = pool.stop.cancelled() => {}
                }
            }
            Some(pause) => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut woken => {}
                    _ = pool.stop.cancelled() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = pool.stop.cancelled() => {}
                }
            }
        }
    }
    let ready = pool.drain();
    let exits: Vec<_> = ready.iter().map(Ready::gone).collect();
    drop(ready);
    for exited in exits {
        let _ = tokio::time::timeout(Duration::from_secs(10), exited.cancelled()).await;
    }
    pool.kept.cancel();
}

/// A session of `spec`'s settings, as a take from the pool starts it (the take's own TTL,
/// idle timeout and metadata set after).
fn session_of(spec: &PoolSpec) -> NewSession {
    NewSession {
        ttl: spec.ttl,
        screen: spec.screen,
        metadata: Default::default(),
        external_url: None,
        profile_id: spec.profile_id.clone(),
        persist_changes: false,
        queue: true,
        options: spec.options.clone(),
        webhook_url: None,
        webhook_events: None,
        webhook: None,
    }
}
