//! Forking a live session: N new sessions, each started from the source's state at that
//! moment (`browser::snapshot`: cookies, open tabs with their URLs, scroll positions and
//! storage) and with its options and screen. All or none: the places in the key's quota
//! are taken first, and any failure ends and forgets the forks already made.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::task::TaskTracker;

use super::Broker;
use super::error::ForkError;
use super::request::{Carried, ForkRequest, Forked, NewSession, RequestedOptions};
use crate::auth::Tenant;
use crate::browser::blocking::Blocking;
use crate::browser::cdp::CdpError;
use crate::browser::identity::Identity;
use crate::browser::snapshot::{self, ReadError, Snapshot, TabsReady};
use crate::capture::Wants;
use crate::quota::Kind;
use crate::session::Session;
use crate::store::{Isolation, SessionRecord};
use crate::values::BrowserReason;

impl Broker {
    /// Starts `request.count` sessions of `tenant` from the active session `id`'s state.
    pub async fn fork_session(&self, tenant: &Tenant, id: &str, request: ForkRequest) -> Result<Forked, ForkError> {
        let source = self.active(Some(tenant), id).await?;
        let ws_url = source.upstream.own_ws_url().ok_or(ForkError::External)?;
        // Every place first: a fork past the key's quota makes nothing.
        let mut places = Vec::with_capacity(request.count);
        for _ in 0..request.count {
            let place = self.reserve_place(tenant, Kind::Managed).await.inspect_err(|_| {
                self.metrics.create_quota_refused.inc();
            });
            places.push(place.map_err(|e| ForkError::Create(e.into()))?);
        }
        let record = source.record();
        let context = source.upstream.scope.as_ref().map(|s| s.context.clone());
        // The source is read while the forks' browsers are taken.
        let max_ttl = Duration::from_secs(self.config.max_ttl);
        let creates = (0..request.count)
            .map(|_| self.create_placed(tenant.clone(), fork_of(&source, &record, &request, max_ttl)));
        // Where a fork's time goes (in the log line): the read, the creates, the writes.
        let started = Instant::now();
        let ((state, read_took), (created, create_took)) = tokio::join!(
            async { (snapshot::read(&ws_url, context.as_deref()).await, started.elapsed()) },
            async { (join_all(creates).await, started.elapsed()) }
        );
        drop(places);
        let mut made = Vec::new();
        let (state, mut failure) = match state {
            Ok(state) => (state, None),
            Err(ReadError::Browser(e)) => (Snapshot::default(), Some(ForkError::Read(e))),
            Err(ReadError::TooMuchStorage) => (Snapshot::default(), Some(ForkError::TooMuchStorage)),
        };
        for result in created {
            match result {
                Ok(session) => made.push(session),
                Err(e) => {
                    failure.get_or_insert(ForkError::Create(e));
                }
            }
        }
        let writing = Instant::now();
        if failure.is_none() {
            let writes = made
                .iter()
                .map(|fork| write_into(fork, &state, request.wait_until, &self.tracker));
            for written in join_all(writes).await {
                if let Err(e) = written {
                    failure.get_or_insert(ForkError::Write(e));
                }
            }
        }
        let write_took = writing.elapsed();
        if let Some(e) = failure {
            for fork in &made {
                let _ = self.delete(tenant, &fork.id).await;
            }
            source
                .span()
                .in_scope(|| tracing::warn!(error = %e, "fork refused; the forks made were ended"));
            return Err(e);
        }
        let (local_storage, session_storage) = state.storage_counts();
        source.span().in_scope(|| {
            tracing::info!(
                forks = made.len(),
                tabs = state.tabs.len(),
                read_ms = read_took.as_millis() as u64,
                create_ms = create_took.as_millis() as u64,
                write_ms = write_took.as_millis() as u64,
                wait_until = ?request.wait_until,
                "session forked"
            );
        });
        Ok(Forked {
            sessions: made,
            carried: Carried {
                cookies: state.cookies.len(),
                tabs: state.tabs.iter().map(|t| t.url.clone()).collect(),
                local_storage,
                session_storage,
            },
        })
    }
}

/// A fork's create: the source's screen and options (its proxy with its password, its
/// identity as picked, its capture and extensions), no profile (a fork never writes one), no webhook of its own (the
/// key's default applies); each waits for a browser as a create does.
fn fork_of(source: &Session, record: &SessionRecord, request: &ForkRequest, max_ttl: Duration) -> NewSession {
    let options = &record.options;
    // The source's own TTL, as PATCHes may have moved it, within the broker's limit.
    let ttl = request.ttl.unwrap_or_else(|| {
        record
            .expires_at
            .duration_since(record.created_at)
            .unwrap_or(max_ttl)
            .min(max_ttl)
    });
    let isolation = request.isolation.unwrap_or(options.isolation);
    // A browser the source asked for, its forks get; one the node chose, the node chooses.
    let browser = match (isolation, options.browser_reason) {
        (Isolation::Process, Some(BrowserReason::Asked)) => options.browser,
        _ => None,
    };
    NewSession {
        ttl,
        screen: source.screen,
        metadata: request.metadata.clone().unwrap_or_else(|| record.metadata.clone()),
        external_url: None,
        profile_id: None,
        persist_changes: false,
        queue: true,
        options: RequestedOptions {
            isolation,
            proxy: source.proxy.clone(),
            identity: Identity {
                user_agent: options.user_agent.clone(),
                locale: options.locale.clone(),
                timezone: options.timezone.clone(),
                fingerprint: options.fingerprint.clone(),
            },
            fingerprint: None,
            device: None,
            idle_timeout: options.idle_timeout,
            record: options.record,
            log_cdp: options.log_cdp,
            blocking: Blocking {
                types: options.block.clone(),
                urls: options.block_urls.clone(),
            },
            capture: Wants {
                console: options.capture_console,
                network: options.capture_network,
                bodies: options.capture_bodies,
            },
            extensions: options.extensions.clone(),
            browser,
            browser_reason: None,
        },
        webhook_url: None,
        webhook_events: None,
        webhook: None,
    }
}

async fn write_into(fork: &Session, state: &Snapshot, ready: TabsReady, tracker: &TaskTracker) -> Result<(), CdpError> {
    let ws_url = fork.upstream.own_ws_url().unwrap_or_default();
    let context = fork.upstream.scope.as_ref().map(|s| s.context.as_str());
    snapshot::write(&ws_url, context, state, ready, tracker).await
}
