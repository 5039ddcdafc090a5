//! A bare context for a one-call render that is not kept: a fresh browser context in a
//! shared browser with what a render needs of a context session, and none of what only a
//! session needs (no live record, no events, webhooks, download watcher, idle or TTL
//! watcher: its record is written once, ended, when the render is done, so that the
//! session list and the dashboard show it as any door's session). Kept, as a create keeps them: the key's place in its quota (held
//! for the whole render, so it counts as one of the key's sessions) and its create rate;
//! the context's own gateway (the egress policy, the upstream proxy, the byte counts); the
//! identity keeper (user agent, locale, time zone, fingerprint, blocking, no automation
//! tells); the tab limit; and the filter on every connection. Dropped, on any path, it
//! disposes the context.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Tenant, random_hex};
use crate::browser::challenges::Challenges;
use crate::browser::shared::ContextLease;
use crate::browser::tab_cap::Tabs;
use crate::browser::upstream::Upstream;
use crate::browser::watch::Watch;
use crate::quota::{Kind, Reservation};
use crate::session::{Recorder, session_span};
use crate::store::{EndReason, Isolation, SessionRecord, Status};

use super::Broker;
use super::error::BrokerError;
use super::request::NewSession;

/// A render's context, disposed when dropped.
pub struct BareContext<'a> {
    /// The id its record is listed under (`X-Session-Id`).
    pub id: String,
    /// The shared browser, seen through the context's filter.
    pub upstream: Upstream,
    lease: ContextLease,
    /// Stops the identity keeper and the tab limit.
    done: CancellationToken,
    shutdown: CancellationToken,
    /// Its record as it began; written ended once (`finish`, or on drop).
    record: Option<SessionRecord>,
    records: Arc<Recorder>,
    _place: Reservation<'a>,
}

impl Drop for BareContext<'_> {
    fn drop(&mut self) {
        self.done.cancel();
        // A caller that hung up: the record is written all the same, a moment later (not
        // when the runtime itself is going away).
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(record) = self.ended_record()
        {
            let records = self.records.clone();
            runtime.spawn(async move { records.put(&record).await });
        }
    }
}

impl BareContext<'_> {
    /// Writes its record, ended, before the render answers.
    pub async fn finish(mut self) {
        if let Some(record) = self.ended_record() {
            self.records.put(&record).await;
        }
    }

    /// The record to write, the first time only: ended now, with the context's network use.
    fn ended_record(&mut self) -> Option<SessionRecord> {
        let mut record = self.record.take()?;
        let now = SystemTime::now();
        record.status = Status::Terminated;
        record.end_reason = Some(EndReason::Terminated);
        record.ended_at = Some(now);
        record.updated_at = now;
        record.network = Some(self.lease.traffic.snapshot());
        Some(record)
    }

    /// Fires when the context can no longer render: its browser exited, a page closed
    /// it, or the broker stops.
    pub async fn lost(&self) -> &'static str {
        let exited = self.lease.shared.browser.exited();
        tokio::select! {
            _ = exited.cancelled() => "its browser exited",
            _ = self.lease.scope.close_requested.cancelled() => "it was closed",
            _ = self.shutdown.cancelled() => "the broker is stopping",
        }
    }
}

impl Broker {
    /// Whether a fresh render of `request` can run in a bare context: a context without a
    /// profile, a recording, a CDP log, capture, webhooks or extensions (each of which is
    /// kept in a session's files or record), on a single node (a cluster counts a key's
    /// sessions from the shared store, where a bare context is not written).
    pub fn renders_bare(&self, request: &NewSession) -> bool {
        let o = &request.options;
        o.isolation == Isolation::Context
            && request.profile_id.is_none()
            && request.external_url.is_none()
            && request.webhook_url.is_none()
            && !o.record
            && !o.log_cdp
            && !o.capture.any()
            && o.extensions.is_empty()
            && self.nodes.is_none()
    }

    /// A bare context for one render of `tenant` (see the module's comment).
    pub async fn bare_context(&self, tenant: &Tenant, request: NewSession) -> Result<BareContext<'_>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let place = self.reserve_place(tenant, Kind::Managed).await.inspect_err(|_| {
            self.metrics.create_quota_refused.inc();
        })?;
        if let Err(wait) = self.take_create(tenant).await {
            self.metrics.create_rate_limited.inc();
            return Err(BrokerError::RateLimited {
                per_minute: self.config.creates_per_minute,
                retry_after: wait.as_secs() + 1,
            });
        }
        self.check_proxy(&request.options).await?;
        self.choose_browser(&request)?;
        let request = self.pick_fingerprint_from(tenant, request, None).await?;
        let began = std::time::Instant::now();
        let id = format!("sess_{}", random_hex(16));
        let span = session_span(&id, tenant);
        let lease = self
            .shared
            .acquire(
                &tenant.to_string(),
                request.screen,
                span.clone(),
                request.options.proxy.clone(),
                request.queue,
            )
            .await
            .map_err(|e| self.capacity_error(e))?;
        let browser = &lease.shared.browser;
        let upstream = Upstream::managed(browser.port, browser.ws_path.clone()).scoped(lease.scope.clone());
        let now = SystemTime::now();
        let record = SessionRecord {
            id: id.clone(),
            tenant: tenant.clone(),
            status: Status::Active,
            created_at: now,
            updated_at: now,
            expires_at: now + request.ttl,
            ended_at: None,
            end_reason: None,
            screen: request.screen,
            metadata: request.metadata.clone(),
            profile: None,
            node: self.node.clone(),
            options: request.options.view(),
            network: None,
            challenges: Vec::new(),
        };
        let bare = BareContext {
            id,
            upstream,
            done: CancellationToken::new(),
            shutdown: self.shutdown.clone(),
            record: Some(record),
            records: self.records.clone(),
            _place: place,
            lease,
        };
        let acquired = began.elapsed();
        // The identity is on the context's pages before the render opens one.
        let watch = Watch {
            blocking: request.options.blocking,
            ads: self.ads.clone(),
            traffic: Some(bare.lease.traffic.clone()),
            challenges: Arc::new(Challenges::default()),
            metrics: self.metrics.clone(),
            events: None,
            capture: None,
        };
        let identity = request.options.identity;
        let context = &bare.lease.scope.context;
        (bare.lease.shared.keeper)
            .register(context, identity, watch, bare.done.clone())
            .instrument(span.clone())
            .await
            .map_err(|e| BrokerError::BrowserSetup("its identity", e))?;
        let identified = began.elapsed();
        if self.config.max_targets_per_session > 0 {
            let tabs = Tabs::new(self.config.max_targets_per_session, self.metrics.clone(), None);
            (bare.lease.shared.watch)
                .watch_tabs(context, tabs, bare.done.clone(), &self.tracker)
                .instrument(span)
                .await
                .map_err(|e| BrokerError::BrowserSetup("its tabs' watch", e))?;
        }
        // Where its time went (docs/benchmarks.md's breakdown of a render).
        tracing::debug!(
            acquire_ms = acquired.as_secs_f64() * 1000.0,
            identity_ms = (identified - acquired).as_secs_f64() * 1000.0,
            tabs_ms = (began.elapsed() - identified).as_secs_f64() * 1000.0,
            "bare context ready"
        );
        self.metrics.renders_bare.inc();
        Ok(bare)
    }
}
