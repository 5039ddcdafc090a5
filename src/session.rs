//! A running session's node-local handles: the browser it holds, the token its
//! connections wait on, its connection count and its action queue. What outlives the
//! browser is its [`SessionRecord`], written through a [`Recorder`] at every change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::Either;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Tenant, unix_secs};
use crate::browser::challenges::Challenges;
use crate::browser::forward::{Traffic, UpstreamProxy};
use crate::browser::pool::Lease;
use crate::browser::shared::ContextLease;
use crate::browser::upstream::Upstream;
use crate::events::{EventType, SessionEvents};
use crate::metrics::Metrics;
use crate::profile::copy::ProfileCopies;
use crate::store::profiles::{ProfileUse, Profiles};
use crate::store::{
    EndReason, ProfileLink, SaveOutcome, SessionOptions, SessionRecord, SessionStore, Status, StoreError,
};
use crate::values::Screen;

/// What a session runs on.
pub enum Backing {
    /// A browser from the pool, killed when the session ends.
    Managed(Lease),
    /// A user's own browser, left running when the session ends.
    External(Upstream),
    /// A browser context in a shared browser, disposed when the session ends.
    Context(ContextLease),
}

/// What a new session is made of.
pub struct SessionInit {
    pub id: String,
    pub tenant: Tenant,
    pub ttl: Duration,
    pub screen: Screen,
    pub metadata: Map<String, Value>,
    pub backing: Backing,
    pub profile: Option<ProfileBinding>,
    pub options: SessionOptions,
    /// Its browser's network counters (managed browsers only).
    pub traffic: Option<Arc<Traffic>>,
    /// Its upstream proxy as asked, password included (a fork takes it on).
    pub proxy: Option<UpstreamProxy>,
}

/// A session's hold on a profile, and what is needed to save into it at the end.
pub struct ProfileBinding {
    pub hold: ProfileUse,
    pub store: Arc<Profiles>,
    /// Browsers on profile copies: a context session's state is saved through one.
    pub copies: Arc<ProfileCopies>,
    pub tracker: TaskTracker,
    pub metrics: Arc<Metrics>,
}

pub struct Session {
    pub id: String,
    pub tenant: Tenant,
    pub created_at: SystemTime,
    pub screen: Screen,
    pub upstream: Upstream,
    /// Its upstream proxy as asked, password included: node-local, never in the record.
    pub proxy: Option<UpstreamProxy>,
    state: Mutex<State>,
    profile_released: CancellationToken,
    /// Cancelled when the session ends; every proxied connection listens to it.
    ended: CancellationToken,
    /// Wakes the TTL watcher when `expires_at` moves.
    deadline_moved: Notify,
    /// WebSocket connections open on the session (CDP clients and live viewers).
    connections: AtomicUsize,
    /// Of those, live viewers': at most half the session's connections, so that whoever
    /// holds a (read-only) live link cannot take every place from the session's own clients.
    viewers: AtomicUsize,
    /// Counts every connection opened or closed, so an idle watcher sampling now and then
    /// still sees a client that came and went in between.
    activity: AtomicU64,
    /// Notified when a connection closes (the download watcher sets the session's folder
    /// again: Chrome resets it when the client that changed it leaves).
    pub connection_closed: Arc<Notify>,
    /// The CDP log, for a session created with `log_cdp`.
    pub cdp_log: std::sync::OnceLock<Arc<crate::artifacts::cdp_log::CdpLog>>,
    /// Where its browser writes its downloads: the one directory of the session's that the
    /// confined browser may read, so uploads are placed there for file inputs.
    pub browser_downloads: std::sync::OnceLock<std::path::PathBuf>,
    /// Its event log (`events`), set as it is registered.
    pub events: std::sync::OnceLock<Arc<SessionEvents>>,
    traffic: Option<Arc<Traffic>>,
    /// Known challenges its pages showed, seen by the identity keeper.
    pub challenges: Arc<Challenges>,
    /// Deleted: its record must not be written again.
    forgotten: AtomicBool,
    /// Held by the single action running on the session (a fair lock: actions run in
    /// arrival order); holds the tab the last action left off in.
    pub actions: tokio::sync::Mutex<Option<String>>,
    /// Renders into the session running now (`RENDERS_AT_ONCE` at most): each parses what
    /// its page gives, up to tens of megabytes, so a key's requests cannot pile up.
    pub renders: Arc<tokio::sync::Semaphore>,
}

/// Renders (`/public/screenshot`, `content`, … with `session_id`) one session runs at once.
pub(crate) const RENDERS_AT_ONCE: usize = 2;

/// One open connection of a session, counted until dropped.
pub struct ConnectionSlot(Arc<Session>, Option<&'static str>, bool);

impl ConnectionSlot {
    /// Names what connected (`cdp`, `live_viewer`, …): its `client_connected` event now,
    /// its `client_disconnected` when the slot is dropped.
    pub fn announce(mut self, kind: &'static str) -> Self {
        self.0
            .event(EventType::ClientConnected, serde_json::json!({ "kind": kind }));
        self.1 = Some(kind);
        self
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(kind) = self.1 {
            self.0
                .event(EventType::ClientDisconnected, serde_json::json!({ "kind": kind }));
        }
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        if self.2 {
            self.0.viewers.fetch_sub(1, Ordering::SeqCst);
        }
        self.0.activity.fetch_add(1, Ordering::SeqCst);
        self.0.connection_closed.notify_one();
    }
}

struct State {
    record: SessionRecord,
    /// The browser, held while active; dropping it kills the browser.
    lease: Option<Lease>,
    /// The browser context of a context session, held while active; dropping it disposes it.
    context: Option<ContextLease>,
    /// The profile, held while active and handed to the save when the session ends.
    profile: Option<ProfileBinding>,
}

/// The span of the session `id` of `tenant`, also for work done before its `Session` exists.
pub(crate) fn session_span(id: &str, tenant: &Tenant) -> tracing::Span {
    tracing::info_span!("session", session = %id, tenant = %tenant)
}

impl Session {
    /// The span every log line about this session is in: its id and tenant.
    pub fn span(&self) -> tracing::Span {
        session_span(&self.id, &self.tenant)
    }

    pub fn new(init: SessionInit, node: &str) -> Session {
        let (upstream, lease, context) = match init.backing {
            Backing::Managed(lease) => {
                let mut upstream = Upstream::managed(lease.browser.port, lease.browser.ws_path.clone());
                upstream.one_context = lease.browser.one_process;
                (upstream, Some(lease), None)
            }
            Backing::External(upstream) => (upstream, None, None),
            Backing::Context(context) => {
                let browser = &context.shared.browser;
                let upstream = Upstream::managed(browser.port, browser.ws_path.clone()).scoped(context.scope.clone());
                (upstream, None, Some(context))
            }
        };
        let now = SystemTime::now();
        let profile_released = CancellationToken::new();
        if init.profile.is_none() {
            profile_released.cancel();
        }
        let record = SessionRecord {
            id: init.id.clone(),
            tenant: init.tenant.clone(),
            status: Status::Active,
            created_at: now,
            updated_at: now,
            expires_at: expiry(now, init.ttl),
            ended_at: None,
            end_reason: None,
            screen: init.screen,
            metadata: init.metadata,
            profile: init.profile.as_ref().map(|p| ProfileLink {
                id: p.hold.profile.id.clone(),
                persist: p.hold.persist,
                saved: None,
            }),
            node: node.to_owned(),
            options: init.options,
            network: init.traffic.as_ref().map(|t| t.snapshot()),
            challenges: Vec::new(),
        };
        Session {
            id: init.id,
            tenant: init.tenant,
            created_at: now,
            screen: init.screen,
            upstream,
            proxy: init.proxy,
            state: Mutex::new(State {
                record,
                lease,
                context,
                profile: init.profile,
            }),
            profile_released,
            ended: CancellationToken::new(),
            deadline_moved: Notify::new(),
            connections: AtomicUsize::new(0),
            viewers: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            connection_closed: Arc::new(Notify::new()),
            cdp_log: std::sync::OnceLock::new(),
            browser_downloads: std::sync::OnceLock::new(),
            events: std::sync::OnceLock::new(),
            traffic: init.traffic,
            challenges: Arc::default(),
            forgotten: AtomicBool::new(false),
            actions: tokio::sync::Mutex::new(None),
            renders: Arc::new(tokio::sync::Semaphore::new(RENDERS_AT_ONCE)),
        }
    }

    /// Writes an event of the session's (nothing before its log is set).
    pub fn event(&self, kind: EventType, data: Value) {
        if let Some(events) = self.events.get() {
            events.emit(kind, data);
        }
    }

    /// Marks the session deleted, so its record is not written again.
    pub fn forget(&self) {
        self.forgotten.store(true, Ordering::SeqCst);
    }

    pub fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::SeqCst)
    }

    /// Counts a new connection if fewer than `max` are open.
    pub fn claim_connection(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let slot = self
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnectionSlot(self.clone(), None, false));
        self.activity.fetch_add(1, Ordering::SeqCst);
        slot
    }

    /// Counts a new live viewer if fewer than half of `max` are viewers and fewer than `max`
    /// connections are open.
    pub fn claim_viewer(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let viewers = (max / 2).max(1);
        self.viewers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < viewers).then_some(n + 1))
            .ok()?;
        match self.claim_connection(max) {
            Some(mut slot) => {
                slot.2 = true;
                Some(slot)
            }
            None => {
                self.viewers.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// Whether anything uses the session now (a connection or an action), and a number
    /// that changes whenever a connection opens or closes.
    pub fn in_use(&self) -> (bool, u64) {
        let busy = self.connections.load(Ordering::SeqCst) > 0 || self.actions.try_lock().is_err();
        (busy, self.activity.load(Ordering::SeqCst))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its browser's network counters (managed browsers and contexts).
    pub fn traffic(&self) -> Option<Arc<Traffic>> {
        self.traffic.clone()
    }

    /// The session's record as it stands, with its browser's network counters as of now.
    pub fn record(&self) -> SessionRecord {
        let mut record = self.state().record.clone();
        if let Some(traffic) = &self.traffic {
            record.network = Some(traffic.snapshot());
        }
        record.challenges = self.challenges.list();
        record
    }

    pub fn status(&self) -> Status {
        self.state().record.status
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.state().record.end_reason
    }

    pub fn expires_at(&self) -> SystemTime {
        self.state().record.expires_at
    }

    /// A token cancelled when the session ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    pub fn deadline_moved(&self) -> &Notify {
        &self.deadline_moved
    }

    /// Ends an active session; answers the status it already had otherwise.
    pub fn end(self: &Arc<Self>, reason: EndReason) -> Result<(), Status> {
        self.end_counted(reason, || {})
    }

    /// `end`, with `count` run once this call has ended the session and before its clients
    /// hear of it: a client told of the end then finds it in the metrics (the browser's
    /// release, after, can take a while).
    pub fn end_counted(self: &Arc<Self>, reason: EndReason, count: impl FnOnce()) -> Result<(), Status> {
        let (lease, context, profile) = {
            let mut s = self.state();
            if s.record.status != Status::Active {
                return Err(s.record.status);
            }
            let now = SystemTime::now();
            s.record.status = reason.status();
            s.record.end_reason = Some(reason);
            s.record.ended_at = Some(now);
            s.record.updated_at = now;
            (s.lease.take(), s.context.take(), s.profile.take())
        };
        count();
        // Clients hear the reason before the browser goes away under them.
        self.ended.cancel();
        match profile {
            // The browser (or the context) is saved from, or just released, in a task.
            Some(binding) => {
                let tracker = binding.tracker.clone();
                let span = self.span();
                let finish = match context {
                    Some(context) => Either::Left(finish_context_profile(self.clone(), binding, context)),
                    None => Either::Right(finish_profile(self.clone(), binding, lease)),
                };
                tracker.spawn(finish.instrument(span));
            }
            None => {
                drop(context);
                drop(lease);
            }
        }
        Ok(())
    }

    /// Cancelled once the session's profile (if any) is saved and released.
    pub fn profile_released(&self) -> &CancellationToken {
        &self.profile_released
    }

    /// Moves the expiry to `now + ttl` and merges `metadata` in; only while active.
    pub fn update(&self, ttl: Option<Duration>, metadata: Option<Map<String, Value>>) -> Result<(), Status> {
        let mut s = self.state();
        if s.record.status != Status::Active {
            return Err(s.record.status);
        }
        let now = SystemTime::now();
        if let Some(ttl) = ttl {
            s.record.expires_at = expiry(now, ttl);
            self.deadline_moved.notify_one();
        }
        if let Some(extra) = metadata {
            s.record.metadata.extend(extra);
        }
        s.record.updated_at = now;
        Ok(())
    }

    /// What the metadata would be after merging `extra` in (to check its size first).
    pub fn merged_metadata(&self, extra: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = self.state().record.metadata.clone();
        merged.extend(extra.clone());
        merged
    }
}

/// Saves a persisting session's browser into its profile, then releases the browser, its
/// profile copy and the profile.
async fn finish_profile(session: Arc<Session>, binding: ProfileBinding, lease: Option<Lease>) {
    if let Some(lease) = lease {
        if binding.hold.persist {
            let outcome = crate::profile::cookies::save_from(&binding.store, &binding.hold, &lease.browser).await;
            note_save(&session, &binding, outcome);
        }
        let (exited, dir) = (lease.browser.exited(), lease.browser.dir.clone());
        drop(lease);
        exited.cancelled().await;
        crate::browser::remove_dir_with_retries(&dir).await;
    }
    binding.store.end_use(binding.hold).await;
    session.profile_released.cancel();
}

/// Saves a persisting context session into its profile: its storage state is read from
/// the context, the context disposed, and the state written into the profile through a
/// browser on a copy of it.
async fn finish_context_profile(session: Arc<Session>, binding: ProfileBinding, context: ContextLease) {
    if binding.hold.persist {
        let ws_url = context.shared.browser.ws_url();
        let reached = context.traffic.origins();
        let deadline = binding.copies.deadline;
        let read = crate::profile::copy::context_state(&ws_url, &context.scope.context, &reached, deadline).await;
        drop(context);
        let outcome = match read {
            Ok(state) => match binding.copies.write_state(&binding.hold, &state).await {
                Ok(()) => SaveOutcome::Saved,
                Err(e) => e.outcome(),
            },
            Err(e) => SaveOutcome::Failed(format!("the context's state could not be read: {e}")),
        };
        note_save(&session, &binding, outcome);
    }
    binding.store.end_use(binding.hold).await;
    session.profile_released.cancel();
}

/// Logs, counts and records how a profile save went.
fn note_save(session: &Session, binding: &ProfileBinding, outcome: SaveOutcome) {
    tracing::info!(profile = %binding.hold.profile.id, outcome = %outcome.describe(), "profile save");
    let counter = match outcome {
        SaveOutcome::Saved => &binding.metrics.profile_saves,
        SaveOutcome::Superseded => &binding.metrics.profile_saves_superseded,
        _ => &binding.metrics.profile_save_failures,
    };
    counter.inc();
    session.event(
        EventType::ProfileSaved,
        serde_json::json!({"profile_id": binding.hold.profile.id, "outcome": outcome.describe()}),
    );
    if let Some(link) = &mut session.state().record.profile {
        link.saved = Some(outcome);
    }
}

/// Writes sessions' records to the store in order: the last write of a session is always
/// of its latest state (an earlier save cannot land after a later one).
pub(crate) struct Recorder {
    store: Arc<dyn SessionStore>,
    writing: tokio::sync::Mutex<()>,
}

impl Recorder {
    pub(crate) fn new(store: Arc<dyn SessionStore>) -> Recorder {
        Recorder {
            store,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn store(&self) -> &dyn SessionStore {
        self.store.as_ref()
    }

    /// Writes the session's current record, unless it has been deleted.
    pub(crate) async fn try_save(&self, session: &Session) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        if session.is_forgotten() {
            return Ok(());
        }
        self.store.put(&session.record()).await
    }

    /// [`Recorder::try_save`], a failure logged: the session goes on, and its next change
    /// writes the whole record again.
    pub(crate) async fn save(&self, session: &Session) {
        if let Err(e) = self.try_save(session).await {
            session
                .span()
                .in_scope(|| tracing::warn!(error = %e, "could not write the session record"));
        }
    }

    /// Writes a record no running session holds (a bare render's), a failure logged.
    pub(crate) async fn put(&self, record: &SessionRecord) {
        let _writing = self.writing.lock().await;
        if let Err(e) = self.store.put(record).await {
            tracing::warn!(session = %record.id, error = %e, "could not write the session record");
        }
    }

    pub(crate) async fn remove(&self, tenant: &Tenant, id: &str) {
        let _writing = self.writing.lock().await;
        if let Err(e) = self.store.remove(id).await {
            tracing::warn!(session = %id, tenant = %tenant, error = %e, "could not remove the session record");
        }
    }
}

/// `now + ttl`, rounded up to a whole second: `expires_at` is shown to the second and the
/// session must end exactly then, never before the TTL asked for.
fn expiry(now: SystemTime, ttl: Duration) -> SystemTime {
    let at = now + ttl;
    let secs = unix_secs(at);
    let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    if whole < at {
        whole + Duration::from_secs(1)
    } else {
        whole
    }
}

/// A session fronting a browser that is never reached (nothing here connects), for tests.
#[cfg(test)]
pub(crate) fn external_session() -> Arc<Session> {
    let url = url::Url::parse("ws://127.0.0.1:9/devtools/browser/none").unwrap();
    let init = SessionInit {
        id: "sess_test".into(),
        tenant: Tenant::from_id("t"),
        ttl: Duration::from_secs(60),
        screen: Screen {
            width: 1280,
            height: 720,
        },
        metadata: Map::new(),
        backing: Backing::External(Upstream::external(&url).unwrap()),
        profile: None,
        options: SessionOptions::default(),
        traffic: None,
        proxy: None,
    };
    Arc::new(Session::new(init, "node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count runs once the session has ended and before its clients are told, so a
    /// client that heard of the end finds it counted; a second end counts nothing.
    #[test]
    fn an_end_is_counted_before_clients_hear_of_it() {
        let session = external_session();
        let mut seen = None;
        let ended = session.end_counted(EndReason::Expired, || {
            seen = Some((session.record().status, session.ended().is_cancelled()));
        });
        assert!(ended.is_ok());
        assert_eq!(seen, Some((Status::Expired, false)));
        assert!(session.ended().is_cancelled());
        let mut counted = false;
        let again = session.end_counted(EndReason::Terminated, || counted = true);
        assert_eq!(again, Err(Status::Expired));
        assert!(!counted);
    }

    #[test]
    fn expiry_rounds_up_to_the_second() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(expiry(base, Duration::from_secs(60)), base + Duration::from_secs(60));
        assert_eq!(
            expiry(base + Duration::from_millis(1), Duration::from_secs(60)),
            base + Duration::from_secs(61)
        );
    }
}
