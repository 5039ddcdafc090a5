//! How sessions end: on request, at their TTL, when their browser exits, when idle, at shutdown;
//! and the sweeps of what ended sessions leave.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::error::SessionError;
use crate::auth::Tenant;
use crate::events::EventType;
use crate::metrics::Metrics;
use crate::session::{Recorder, Session};
use crate::store::{EndReason, Status};

/// How long terminate and delete wait for a profile save before answering anyway.
const SAVE_WAIT: Duration = Duration::from_secs(30);

impl Broker {
    /// Ends a session on request and waits (bounded) for its profile save; answers its
    /// status if it had already ended.
    pub async fn terminate(&self, session: &Arc<Session>) -> Result<(), Status> {
        session.end_counted(EndReason::Terminated, || {
            self.metrics.sessions_terminated.inc();
        })?;
        // Written before the caller hears it is done, should the broker die next.
        self.records.save(session).await;
        session.span().in_scope(|| tracing::info!("session terminated"));
        // "Terminate the session to save the authentication state": answer once it is saved.
        if tokio::time::timeout(SAVE_WAIT, session.profile_released().cancelled())
            .await
            .is_ok()
        {
            self.records.save(session).await;
        }
        Ok(())
    }

    /// Moves an active session's expiry and merges metadata in.
    pub async fn update(
        &self,
        session: &Session,
        ttl: Option<Duration>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<(), Status> {
        session.update(ttl, metadata)?;
        self.records.save(session).await;
        Ok(())
    }

    /// Ends the session if it runs, and forgets it.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), SessionError> {
        match self.running_session(Some(tenant), id) {
            Some(session) => {
                // Forgotten first, so that no later write of its record brings it back.
                session.forget();
                let _ = self.terminate(&session).await;
                self.running.remove(id);
            }
            None => {
                self.records
                    .store()
                    .get_for(tenant, id)
                    .await?
                    .ok_or(SessionError::NotFound)?;
            }
        }
        self.records.remove(tenant, id).await;
        self.forget_artifacts(id).await;
        Ok(())
    }

    /// Ends every session, waits (bounded) for connections and browsers to wind down.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        if let Some(nodes) = &self.nodes
            && let Err(e) = nodes.leave(&self.node).await
        {
            tracing::warn!(error = %e, "could not leave the cluster cleanly");
        }
        for entry in self.running.iter() {
            let _ = entry.end(EndReason::Shutdown);
        }
        // Ready browsers of named pools are killed; their keepers stop.
        self.named.stop_all();
        // Their contexts are being disposed; the shared browsers go when that is done.
        self.shared.close_all();
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_timeout(), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out with tasks still running");
        }
    }

    /// Removes the files and recordings of sessions whose records are gone (swept by
    /// another node, or while this one was down).
    pub(super) async fn sweep_artifacts(&self) {
        for id in self.artifacts.session_ids() {
            if self.running.contains_key(&id) {
                continue;
            }
            if let Ok(None) = self.records.store().get(&id).await {
                self.forget_artifacts(&id).await;
            }
        }
        let mut ids = self.events.session_ids();
        ids.extend(self.captures.session_ids());
        for id in ids {
            if self.running.contains_key(&id) {
                continue;
            }
            if let Ok(None) = self.records.store().get(&id).await {
                self.forget_artifacts(&id).await;
            }
        }
    }

    /// Removes what a session left on this node: files, recording, events, capture, webhook
    /// log.
    async fn forget_artifacts(&self, id: &str) {
        self.artifacts.remove(id).await;
        self.events.remove(id);
        self.captures.remove(id);
        self.webhooks.remove(id);
    }
}

/// Ends the session at its TTL, or when its browser exits; follows TTL extensions. Once
/// its end (and profile save) is written down, the session no longer runs here.
pub(super) async fn watch_session(
    session: Arc<Session>,
    browser_exited: CancellationToken,
    browser_crashed: CancellationToken,
    metrics: Arc<Metrics>,
    records: Arc<Recorder>,
    running: Arc<DashMap<String, Arc<Session>>>,
    shutdown: CancellationToken,
) {
    end_on_time(&session, browser_exited, browser_crashed, &metrics, shutdown.clone()).await;
    records.save(&session).await;
    // The profile save, if any, finishes later; its outcome belongs in the record too.
    session.profile_released().cancelled().await;
    // The last event: after the profile save, so `profile_saved` comes before it.
    let record = session.record();
    session.event(
        EventType::Ended,
        serde_json::json!({"status": record.status, "end_reason": record.end_reason}),
    );
    // The end must be written down before the session stops running here: a store that
    // does not answer now is tried again (until shutdown).
    while let Err(e) = records.try_save(&session).await {
        tracing::warn!(session = %session.id, error = %e, "the session's end is not recorded yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    running.remove_if(&session.id, |_, s| Arc::ptr_eq(s, &session));
}

/// Returns once the session has ended, having ended it at its TTL, when its browser
/// exited, or at shutdown.
async fn end_on_time(
    session: &Arc<Session>,
    browser_exited: CancellationToken,
    browser_crashed: CancellationToken,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let remaining = session
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + remaining;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if session.expires_at() <= SystemTime::now() {
                    let count = || {
                        metrics.sessions_expired.inc();
                    };
                    if session.end_counted(EndReason::Expired, count).is_ok() {
                        tracing::info!(session = %session.id, "session expired");
                    }
                    return;
                }
            }
            _ = session.deadline_moved().notified() => {}
            _ = browser_exited.cancelled() => {
                let count = || {
                    metrics.sessions_terminated.inc();
                };
                if session.end_counted(EndReason::BrowserExited, count).is_ok() {
                    tracing::info!(session = %session.id, "session ended: its browser exited");
                }
                return;
            }
            _ = browser_crashed.cancelled() => {
                let count = || {
                    metrics.sessions_terminated.inc();
                };
                if session.end_counted(EndReason::BrowserCrashed, count).is_ok() {
                    tracing::warn!(session = %session.id, "session ended: its shared browser crashed");
                }
                return;
            }
            _ = session.ended().cancelled() => return,
            _ = shutdown.cancelled() => {
                let _ = session.end(EndReason::Shutdown);
                return;
            }
        }
    }
}

/// How long before an idle session's end it is told (`idle_warning`), at most.
const IDLE_WARNING: Duration = Duration::from_secs(30);

/// Ends the session once nothing has used it (no CDP client, no live viewer, no action)
/// for `idle`. Sampled twice a second; a connection that opened and closed in between
/// still counts, by the session's activity number.
pub(super) async fn end_when_idle(session: Arc<Session>, idle: Duration, metrics: Arc<Metrics>) {
    // Told once per idle stretch, this long before its end: time for a client to come back.
    let warn_before = (idle / 2).min(IDLE_WARNING);
    let mut since = tokio::time::Instant::now();
    let mut seen = session.in_use().1;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = session.ended().cancelled() => return,
        }
        let (busy, activity) = session.in_use();
        if busy || activity != seen {
            since = tokio::time::Instant::now();
            seen = activity;
            warned = false;
            continue;
        }
        if !warned && since.elapsed() + warn_before >= idle {
            warned = true;
            let left = idle.saturating_sub(since.elapsed());
            session.event(
                EventType::IdleWarning,
                serde_json::json!({"idle_timeout": idle.as_secs(), "ends_in": left.as_secs()}),
            );
        }
        if since.elapsed() >= idle {
            let count = || {
                metrics.sessions_idle.inc();
                metrics.sessions_expired.inc();
            };
            if session.end_counted(EndReason::Idle, count).is_ok() {
                tracing::info!(idle_secs = idle.as_secs(), "session ended: idle");
            }
            return;
        }
    }
}

/// Runs `work` now and then every `period`, until shutdown or until the broker is gone;
/// the broker is held only while `work` runs. The broker's background loops are all this.
pub(super) fn every<F, Fut>(broker: &Arc<Broker>, period: Duration, work: F)
where
    F: Fn(Arc<Broker>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(broker);
    let shutdown = broker.shutdown.clone();
    broker.tracker.spawn(async move {
        loop {
            let Some(b) = weak.upgrade() else { return };
            work(b).await;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

impl Broker {
    /// Forgets ended sessions once they are older than the retention period, with their
    /// files, and the files of sessions whose records are gone.
    pub(super) async fn sweep(&self) {
        let retention = Duration::from_secs(self.config.retention_secs);
        match self.records.store().sweep(SystemTime::now(), retention).await {
            Ok(swept) => {
                for id in &swept {
                    self.forget_artifacts(id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not sweep old session records"),
        }
        self.sweep_artifacts().await;
    }
}
