//! A session: its record, its lifecycle (`active` → `terminated` | `expired`) and the
//! browser it holds while active.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;

use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{Tenant, unix_secs};
use crate::browser::Screen;
use crate::metrics::Metrics;
use crate::pool::Lease;
use crate::profile::{ProfileUse, Profiles};
use crate::upstream::Upstream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Terminated,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Terminated => "terminated",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "terminated" => Some(Status::Terminated),
            "expired" => Some(Status::Expired),
            _ => None,
        }
    }
}

/// Why a session ended; decides its final status and the close frame its clients get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The TTL ran out.
    Expired,
    /// `POST .../terminate` or `DELETE`.
    Terminated,
    /// The browser exited: a client sent `Browser.close`, or it crashed.
    BrowserExited,
    /// The broker is shutting down.
    Shutdown,
}

impl EndReason {
    pub fn status(self) -> Status {
        match self {
            EndReason::Expired => Status::Expired,
            _ => Status::Terminated,
        }
    }

    /// The WebSocket close code and reason sent to every client of the session.
    pub fn close_code(self) -> (u16, &'static str) {
        match self {
            EndReason::Expired => (4001, "session expired"),
            EndReason::Terminated => (4002, "session terminated"),
            EndReason::BrowserExited => (4003, "browser closed"),
            EndReason::Shutdown => (1001, "broker shutting down"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "ttl reached",
            EndReason::Terminated => "terminated by request",
            EndReason::BrowserExited => "browser exited",
            EndReason::Shutdown => "broker shut down",
        }
    }
}

/// What a session runs on.
pub enum Backing {
    /// A browser from the pool, killed when the session ends.
    Managed(Lease),
    /// A user's own browser, left running when the session ends.
    External(Upstream),
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
}

/// A session's hold on a profile, and what is needed to save into it at the end.
pub struct ProfileBinding {
    pub hold: ProfileUse,
    pub store: Arc<Profiles>,
    pub tracker: TaskTracker,
    pub metrics: Arc<Metrics>,
}

pub struct Session {
    pub id: String,
    pub tenant: Tenant,
    pub created_at: SystemTime,
    pub screen: Screen,
    pub upstream: Upstream,
    pub profile_id: Option<String>,
    pub persist_changes: Option<bool>,
    /// What became of the profile save ("saved", or why not), once known.
    profile_outcome: Arc<Mutex<Option<String>>>,
    profile_released: CancellationToken,
    state: Mutex<State>,
    /// Cancelled when the session ends; every proxied connection listens to it.
    ended: CancellationToken,
    /// Wakes the TTL watcher when `expires_at` moves.
    deadline_moved: Notify,
    /// WebSocket connections open on the session (CDP clients and live viewers).
    connections: AtomicUsize,
    /// Deleted: its record must not be written again.
    forgotten: AtomicBool,
    /// Held by the single action running on the session (a fair lock: actions run in
    /// arrival order); holds the tab the last action left off in.
    pub actions: tokio::sync::Mutex<Option<String>>,
}

/// One open connection of a session, counted until dropped.
pub struct ConnectionSlot(Arc<Session>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

struct State {
    status: Status,
    expires_at: SystemTime,
    updated_at: SystemTime,
    metadata: Map<String, Value>,
    end_reason: Option<EndReason>,
    ended_at: Option<SystemTime>,
    /// The browser, held while active; dropping it kills the browser.
    lease: Option<Lease>,
    /// The profile, held while active and handed to the save when the session ends.
    profile: Option<ProfileBinding>,
}

/// The fields of a session that the API shows, taken under one lock.
pub struct Snapshot {
    pub status: Status,
    pub expires_at: SystemTime,
    pub updated_at: SystemTime,
    pub metadata: Map<String, Value>,
    pub end_reason: Option<EndReason>,
}

impl Session {
    pub fn new(init: SessionInit) -> Session {
        let (upstream, lease) = match init.backing {
            Backing::Managed(lease) => (
                Upstream::managed(lease.browser.port, lease.browser.ws_path.clone()),
                Some(lease),
            ),
            Backing::External(upstream) => (upstream, None),
        };
        let now = SystemTime::now();
        let profile_released = CancellationToken::new();
        if init.profile.is_none() {
            profile_released.cancel();
        }
        Session {
            id: init.id,
            tenant: init.tenant,
            created_at: now,
            screen: init.screen,
            upstream,
            profile_id: init.profile.as_ref().map(|p| p.hold.profile.id.clone()),
            persist_changes: init.profile.as_ref().map(|p| p.hold.persist),
            profile_outcome: Arc::new(Mutex::new(None)),
            profile_released,
            state: Mutex::new(State {
                status: Status::Active,
                expires_at: expiry(now, init.ttl),
                updated_at: now,
                metadata: init.metadata,
                end_reason: None,
                ended_at: None,
                lease,
                profile: init.profile,
            }),
            ended: CancellationToken::new(),
            deadline_moved: Notify::new(),
            connections: AtomicUsize::new(0),
            forgotten: AtomicBool::new(false),
            actions: tokio::sync::Mutex::new(None),
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
        self.connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("session lock")
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.state();
        Snapshot {
            status: s.status,
            expires_at: s.expires_at,
            updated_at: s.updated_at,
            metadata: s.metadata.clone(),
            end_reason: s.end_reason,
        }
    }

    pub fn status(&self) -> Status {
        self.state().status
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        self.state().end_reason
    }

    pub fn expires_at(&self) -> SystemTime {
        self.state().expires_at
    }

    pub fn ended_at(&self) -> Option<SystemTime> {
        self.state().ended_at
    }

    /// A token cancelled when the session ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    pub fn deadline_moved(&self) -> &Notify {
        &self.deadline_moved
    }

    /// Ends an active session; answers the status it already had otherwise.
    pub fn end(&self, reason: EndReason) -> Result<(), Status> {
        let (lease, profile) = {
            let mut s = self.state();
            if s.status != Status::Active {
                return Err(s.status);
            }
            let now = SystemTime::now();
            s.status = reason.status();
            s.end_reason = Some(reason);
            s.ended_at = Some(now);
            s.updated_at = now;
            (s.lease.take(), s.profile.take())
        };
        // Clients hear the reason before the browser goes away under them.
        self.ended.cancel();
        match profile {
            // The browser is closed cleanly and saved from, or just released, in a task.
            Some(binding) => {
                let (outcome, released) = (self.profile_outcome.clone(), self.profile_released.clone());
                let tracker = binding.tracker.clone();
                tracker.spawn(finish_profile(binding, lease, outcome, released));
            }
            None => drop(lease),
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
        if s.status != Status::Active {
            return Err(s.status);
        }
        let now = SystemTime::now();
        if let Some(ttl) = ttl {
            s.expires_at = expiry(now, ttl);
            self.deadline_moved.notify_one();
        }
        if let Some(extra) = metadata {
            s.metadata.extend(extra);
        }
        s.updated_at = now;
        Ok(())
    }

    /// What the metadata would be after merging `extra` in (to check its size first).
    pub fn merged_metadata(&self, extra: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = self.state().metadata.clone();
        merged.extend(extra.clone());
        merged
    }
}

/// Saves a persisting session's browser into its profile, then releases the browser, its
/// profile copy and the profile.
async fn finish_profile(
    binding: ProfileBinding,
    lease: Option<Lease>,
    outcome: Arc<Mutex<Option<String>>>,
    released: CancellationToken,
) {
    if let Some(lease) = lease {
        if binding.hold.persist {
            let result = binding.hold.save_from(&lease.browser).await;
            tracing::info!(profile = %binding.hold.profile.id, outcome = %result, "profile save");
            let counter = if result == "saved" {
                &binding.metrics.profile_saves
            } else {
                &binding.metrics.profile_save_failures
            };
            counter.fetch_add(1, Ordering::Relaxed);
            *outcome.lock().expect("session lock") = Some(result);
        }
        let (exited, dir) = (lease.browser.exited(), lease.browser.dir.clone());
        drop(lease);
        exited.cancelled().await;
        crate::browser::remove_dir_with_retries(&dir).await;
    }
    binding.store.end_use(binding.hold);
    released.cancel();
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

/// ISO 8601 UTC to the second with a `Z`, as the wire contract shows.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The session object of the wire contract.
pub fn render(session: &Session, cdp_url: &str) -> Value {
    let snap = session.snapshot();
    let mut body = json!({
        "session_id": session.id,
        "cdp_url": cdp_url,
        "screen_config": { "width": session.screen.width, "height": session.screen.height },
        "status": snap.status.as_str(),
        "expires_at": timestamp(snap.expires_at),
        "metadata": snap.metadata,
        "profile_id": session.profile_id,
        "persist_changes": session.persist_changes,
        "created_at": timestamp(session.created_at),
        "updated_at": timestamp(snap.updated_at),
    });
    if let Some(reason) = snap.end_reason {
        body["end_reason"] = json!(reason.as_str());
    }
    if session.persist_changes == Some(true) && snap.status != Status::Active {
        let outcome = session.profile_outcome.lock().expect("session lock").clone();
        body["profile_saved"] = json!(outcome.as_deref().unwrap_or("saving"));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_to_the_second() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(expiry(base, Duration::from_secs(60)), base + Duration::from_secs(60));
        assert_eq!(
            expiry(base + Duration::from_millis(1), Duration::from_secs(60)),
            base + Duration::from_secs(61)
        );
        assert_eq!(timestamp(base), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn statuses_round_trip() {
        for s in [Status::Active, Status::Terminated, Status::Expired] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("ACTIVE"), None);
        assert_eq!(EndReason::Expired.close_code().0, 4001);
        assert_eq!(EndReason::Terminated.status(), Status::Terminated);
    }
}
