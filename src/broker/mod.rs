//! The composition root: builds every part from the configuration, holds them, and wires
//! them together. The sessions running on this node are kept here by id (their node-local
//! handles); every session's record is in the session store, read through one lookup path
//! by the API, the proxy, live view and actions.

pub mod bare;
mod cluster;
mod create;
mod error;
mod fork;
mod lifecycle;
mod pool_keeper;
mod pools;
mod profile_state;
mod request;
mod start;
mod usage;

pub use error::{BrokerError, ForkError, NamedPoolError, SessionError, StartError};
pub use pools::{PoolChange, PoolSpec, PoolStats, PoolTake, PoolView, Taken};
pub use request::{Carried, ForkRequest, Forked, NewSession, RequestedOptions};
pub use usage::TenantUsage;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::Actions;
use crate::artifacts::Artifacts;
use crate::auth::{ApiKeys, ClusterKey, Scope, Tenant, Tokens};
use crate::browser::ad_blocker::AdBlocker;
use crate::browser::egress::Egress;
use crate::browser::pool::Pool;
use crate::browser::shared::SharedBrowsers;
use crate::capture::Captures;
use crate::config::Config;
use crate::events::Events;
use crate::limits::CreateLimiter;
use crate::metrics::{Gauges, Metrics};
use crate::profile::copy::ProfileCopies;
use crate::quota::Quotas;
use crate::session::{Recorder, Session};
use crate::store::extensions::Extensions;
pub use crate::store::nodes::NodeInfo;
use crate::store::nodes::Nodes;
use crate::store::profiles::Profiles;
use crate::store::{ListPage, ListQuery, SessionRecord, Status, StoreError};
use crate::webhooks::Webhooks;

/// The URLs handed to clients, from `public_url` (never from a request).
pub struct PublicUrls {
    /// `http(s)://host[:port][/prefix]`
    pub http: String,
    /// `ws(s)://host[:port][/prefix]`
    pub ws: String,
}

impl PublicUrls {
    pub fn new(public_url: &str, bound: SocketAddr, tls: bool) -> Self {
        let http = if public_url.is_empty() {
            let host = if bound.ip().is_unspecified() {
                SocketAddr::new([127, 0, 0, 1].into(), bound.port())
            } else {
                bound
            };
            format!("{}://{host}", if tls { "https" } else { "http" })
        } else {
            public_url.trim_end_matches('/').to_owned()
        };
        let ws = match http.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", http.trim_start_matches("http://")),
        };
        PublicUrls { http, ws }
    }
}

/// The URLs of one session, each with a token valid until it expires.
pub struct SessionUrls {
    pub cdp: String,
    pub live: String,
    pub live_read_only: String,
}

/// Everything a node runs, built by `Broker::start`. Its parts are reached through methods:
/// what a handler may decide for itself it asks for by name.
pub struct Broker {
    config: Config,
    /// This node's name in the session store (empty without Redis: a single node).
    node: String,
    /// Where the other nodes reach this one.
    node_url: String,
    /// The cluster's nodes, with `redis_url`.
    nodes: Option<Nodes>,
    /// The cluster secret, with `redis_url`: signs and checks the requests nodes send each other.
    cluster_key: Option<ClusterKey>,
    urls: PublicUrls,
    keys: ApiKeys,
    /// The operator's key, when `admin_key` is set.
    admin: Option<ApiKeys>,
    /// Present when the broker serves TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    tokens: Tokens,
    /// Where connections to users' own browsers may go.
    egress: Egress,
    /// The policy of managed browsers' pages (their gateways enforce it).
    browser_egress: Arc<Egress>,
    create_limiter: CreateLimiter,
    /// The operator's ad and tracker lists (`block: ["ads"]`), when `adblock_lists` names some.
    ads: Option<Arc<AdBlocker>>,
    /// Sessions per key at once.
    quotas: Quotas,
    /// Every key's named pools on this node, and their ready browsers.
    named: pools::NamedPools,
    /// Their definitions, kept for the next start.
    pool_definitions: crate::store::pool_definitions::PoolDefinitions,
    /// The broker itself, for the tasks a handler starts (a pool's keeper).
    me: Weak<Broker>,
    /// Sessions whose browser runs on this node, until their end is written down.
    running: Arc<DashMap<String, Arc<Session>>>,
    /// Every session's record, written in order.
    records: Arc<Recorder>,
    /// Creates refused because their record could not be written, and when. A write that
    /// timed out may still land once the store answers again: the reconciler removes it.
    refused: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    profiles: Arc<Profiles>,
    /// Every key's Chrome extensions on this node.
    extensions: Arc<Extensions>,
    pool: Arc<Pool>,
    /// Shared browsers, whose browser contexts are context sessions.
    shared: Arc<SharedBrowsers>,
    /// Browsers on profile copies, for work on a profile's state.
    profile_copies: Arc<ProfileCopies>,
    metrics: Arc<Metrics>,
    /// Sessions' files and recordings on this node.
    artifacts: Arc<Artifacts>,
    /// The single-action engine: its cache and model.
    actions: Actions,
    /// What happened in the sessions run here.
    events: Arc<Events>,
    /// What the pages of sessions run here said and fetched (`capture_*`).
    captures: Arc<Captures>,
    /// Their events sent to webhooks.
    webhooks: Arc<Webhooks>,
    /// Every task that must finish before the broker has stopped (proxied connections,
    /// session watchers, browser reapers).
    tracker: TaskTracker,
    /// Cancelled when the broker begins to shut down.
    shutdown: CancellationToken,
}

impl Broker {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's name in the session store (empty on a single node).
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn urls(&self) -> &PublicUrls {
        &self.urls
    }

    /// The tenants' API keys.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// The operator's key, when `admin_key` is set.
    pub fn admin_keys(&self) -> Option<&ApiKeys> {
        self.admin.as_ref()
    }

    pub fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Where connections to users' own browsers (and the broker's own CDP clients of them) may go.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    pub fn profiles(&self) -> &Arc<Profiles> {
        &self.profiles
    }

    pub fn extensions(&self) -> &Arc<Extensions> {
        &self.extensions
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn shared(&self) -> &Arc<SharedBrowsers> {
        &self.shared
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn artifacts(&self) -> &Arc<Artifacts> {
        &self.artifacts
    }

    pub fn actions(&self) -> &Actions {
        &self.actions
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    pub(crate) fn captures(&self) -> &Arc<Captures> {
        &self.captures
    }

    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// Tasks that must finish before the broker has stopped.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Cancelled when the broker begins to shut down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// What each API key uses: its sessions from the store (every node's, within the
    /// retention), live counters for those running here, files and recordings on this
    /// node. Reads every kept record: an operator's call, not a client's.
    pub async fn tenant_usage(&self) -> Result<Vec<TenantUsage>, StoreError> {
        const PAGE: usize = 500;
        let now = SystemTime::now();
        let mut usage = Vec::new();
        for tenant in self.keys.tenants() {
            let mut line = TenantUsage {
                tenant: tenant.to_string(),
                ..TenantUsage::default()
            };
            let mut offset = 0;
            loop {
                let query = ListQuery {
                    tenant: tenant.clone(),
                    status: None,
                    offset,
                    limit: PAGE,
                };
                let page = self.list(&query).await?;
                for record in &page.records {
                    line.add(record, now, self.artifacts.existing(&record.id).as_deref());
                }
                offset += page.records.len();
                if page.records.is_empty() || offset >= page.total {
                    break;
                }
            }
            usage.push(line);
        }
        Ok(usage)
    }

    /// The session running here under `id`, if it is `tenant`'s (any tenant's for `None`).
    pub fn running_session(&self, tenant: Option<&Tenant>, id: &str) -> Option<Arc<Session>> {
        self.running
            .get(id)
            .map(|s| s.clone())
            .filter(|s| tenant.is_none_or(|t| &s.tenant == t))
    }

    /// The record of a session of `tenant`, freshest from its handle if it runs here.
    pub async fn record(&self, tenant: &Tenant, id: &str) -> Result<SessionRecord, SessionError> {
        if let Some(session) = self.running_session(Some(tenant), id) {
            return Ok(session.record());
        }
        self.records
            .store()
            .get_for(tenant, id)
            .await?
            .ok_or(SessionError::NotFound)
    }

    /// A page of a tenant's sessions, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let mut page = self.records.store().list(query).await?;
        for record in &mut page.records {
            if let Some(session) = self.running_session(None, &record.id) {
                *record = session.record();
            }
        }
        Ok(page)
    }

    /// Why this node should not be sent new sessions now, if it should not: it is
    /// stopping, or it has no warm browser and the browser does not start.
    pub fn not_ready(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            Some("The broker is shutting down".into())
        } else if let Err(reason) = self.pool.confinement() {
            Some(format!(
                "Browsers cannot be confined ({reason}), so none start (allow_unconfined_browsers overrides)"
            ))
        } else if !self.pool.ready() {
            Some("No browser is ready and the browser does not start (see the log)".into())
        } else {
            None
        }
    }

    /// How browsers are confined, for `/ready`.
    pub fn confinement(&self) -> String {
        match self.pool.confinement() {
            Ok(confinement) => confinement.describe(),
            Err(reason) => format!("refused: {reason}"),
        }
    }

    /// The active session `id` (of `tenant`, if given): the one lookup that the API's
    /// changes, the proxy, live view and actions make.
    pub async fn active(&self, tenant: Option<&Tenant>, id: &str) -> Result<Arc<Session>, SessionError> {
        if let Some(session) = self.running_session(tenant, id) {
            return match session.status() {
                Status::Active => Ok(session),
                ended => Err(SessionError::Ended(ended)),
            };
        }
        let record = self.records.store().get(id).await?;
        match record.filter(|r| tenant.is_none_or(|t| &r.tenant == t)) {
            Some(r) if r.status != Status::Active => Err(SessionError::Ended(r.status)),
            _ => Err(SessionError::NotFound),
        }
    }

    /// A session's `cdp_url` and live view links, each with a token valid until it expires.
    pub fn session_urls(&self, record: &SessionRecord) -> SessionUrls {
        let token = |scope| {
            self.tokens
                .mint(&record.id, &record.tenant, scope, record.created_at, record.expires_at)
        };
        let live = |scope| format!("{}/live/{}?token={}", self.urls.http, record.id, token(scope));
        SessionUrls {
            cdp: format!(
                "{}/devtools/browser/{}?token={}",
                self.urls.ws,
                record.id,
                token(Scope::Cdp)
            ),
            live: live(Scope::Live),
            live_read_only: live(Scope::LiveReadOnly),
        }
    }

    pub fn active_sessions(&self) -> usize {
        self.running.iter().filter(|s| s.status() == Status::Active).count()
    }

    pub fn render_metrics(&self) -> String {
        let (pools, ready) = self.pool_totals();
        self.metrics.named_pools.set(pools as u64);
        self.metrics.named_pool_ready.set(ready as u64);
        let sessions_context = self
            .running
            .iter()
            .filter(|s| s.status() == Status::Active && s.upstream.scope.is_some())
            .count();
        let shared = self.shared.browsers();
        self.metrics.render(&Gauges {
            sessions_active: self.active_sessions(),
            pool_idle: self.pool.idle_count(),
            sessions_context,
            kept_contexts: shared.iter().map(|b| (b.id.clone(), b.kept_contexts)).collect(),
            spare_contexts: shared.iter().map(|b| (b.id.clone(), b.spares)).collect(),
            watched_contexts: shared.iter().map(|b| (b.id.clone(), b.watched_contexts)).collect(),
            shared_browsers: shared.into_iter().map(|b| (b.id, b.contexts)).collect(),
            artifacts: self.artifacts.usage(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_come_from_config_or_the_bound_address() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let u = PublicUrls::new("", bound, false);
        assert_eq!(
            (u.http.as_str(), u.ws.as_str()),
            ("http://127.0.0.1:4000", "ws://127.0.0.1:4000")
        );
        let u = PublicUrls::new("https://browsers.example/gate/", bound, false);
        assert_eq!(u.ws, "wss://browsers.example/gate");
        assert_eq!(u.http, "https://browsers.example/gate");
    }
}
