//! A session's record: plain data, everything the API shows about a session and nothing
//! that lives only while it runs (its browser, its connections).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::Tenant;
pub use crate::values::NetworkStats;
use crate::values::{BrowserKind, BrowserReason, Challenge, Fingerprint, Screen};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The TTL ran out.
    Expired,
    /// `POST .../terminate` or `DELETE`.
    Terminated,
    /// The browser exited: a client sent `Browser.close`, or it crashed.
    BrowserExited,
    /// The broker is shutting down.
    Shutdown,
    /// Found active in the records of an earlier run: it ended with that run.
    Restarted,
    /// Its node stopped beating and another node ended it.
    NodeLost,
    /// Nothing used it (no client, viewer or action) for its idle timeout.
    Idle,
    /// The shared browser holding its context exited without being asked to.
    BrowserCrashed,
}

impl EndReason {
    pub fn status(self) -> Status {
        match self {
            EndReason::Expired | EndReason::Idle => Status::Expired,
            _ => Status::Terminated,
        }
    }

    /// The WebSocket close code and reason sent to every client of the session.
    pub fn close_code(self) -> (u16, &'static str) {
        match self {
            EndReason::Expired => (4001, "session expired"),
            EndReason::Terminated => (4002, "session terminated"),
            EndReason::BrowserExited => (4003, "browser closed"),
            EndReason::Shutdown | EndReason::Restarted => (1001, "broker shutting down"),
            EndReason::NodeLost => (1001, "node lost"),
            EndReason::Idle => (4004, "session idle"),
            EndReason::BrowserCrashed => (4003, "browser crashed"),
        }
    }

    /// The `end_reason` the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "ttl reached",
            EndReason::Terminated => "terminated by request",
            EndReason::BrowserExited => "browser exited",
            EndReason::Shutdown => "broker shut down",
            EndReason::Restarted => "broker restarted",
            EndReason::NodeLost => "node lost",
            EndReason::Idle => "idle",
            EndReason::BrowserCrashed => "browser crashed",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        [
            EndReason::Expired,
            EndReason::Terminated,
            EndReason::BrowserExited,
            EndReason::Shutdown,
            EndReason::Restarted,
            EndReason::NodeLost,
            EndReason::BrowserCrashed,
            EndReason::Idle,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// What became of a persisting session's profile save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveOutcome {
    Saved,
    /// The browser did not close cleanly in time, so its files may be half-written.
    NotClosedInTime,
    Crashed,
    /// Writing the new generation failed (a full disk, say): the old one is kept.
    Failed(String),
    /// Refused by fencing: the session's node lost the profile's writer lease (paused or
    /// cut off) and a later writer took the profile; the later state is kept.
    Superseded,
}

const SUPERSEDED: &str = "not saved: the writer lease was lost and a later session saved the profile";

impl SaveOutcome {
    /// The `profile_saved` text the API shows.
    pub fn describe(&self) -> String {
        match self {
            SaveOutcome::Saved => "saved".into(),
            SaveOutcome::NotClosedInTime => "not saved: the browser did not close cleanly in time".into(),
            SaveOutcome::Crashed => "not saved: the browser crashed".into(),
            SaveOutcome::Superseded => SUPERSEDED.into(),
            SaveOutcome::Failed(e) => format!("not saved: {e}"),
        }
    }

    /// The outcome a `profile_saved` text describes (records written before the enum).
    pub fn parse(text: &str) -> Option<SaveOutcome> {
        match text {
            "saved" => Some(SaveOutcome::Saved),
            "not saved: the browser did not close cleanly in time" => Some(SaveOutcome::NotClosedInTime),
            "not saved: the browser crashed" => Some(SaveOutcome::Crashed),
            SUPERSEDED => Some(SaveOutcome::Superseded),
            other => other
                .strip_prefix("not saved: ")
                .map(|e| SaveOutcome::Failed(e.to_owned())),
        }
    }
}

/// A session's use of a browser profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileLink {
    pub id: String,
    /// Whether the session's changes are saved back into the profile.
    pub persist: bool,
    /// Once the session has ended and the save is done.
    pub saved: Option<SaveOutcome>,
}

/// Everything known about a session that outlives its browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    #[serde(with = "tenant_id")]
    pub tenant: Tenant,
    pub status: Status,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub expires_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub end_reason: Option<EndReason>,
    pub screen: Screen,
    pub metadata: Map<String, Value>,
    pub profile: Option<ProfileLink>,
    /// The node running the session's browser (empty on a single node).
    #[serde(default)]
    pub node: String,
    /// What the session asked for beyond the basics (proxy, identity, idle timeout).
    #[serde(default)]
    pub options: SessionOptions,
    /// Its browser's network use, as of the record's last write (live on its node).
    #[serde(default)]
    pub network: Option<NetworkStats>,
    /// Known challenges its pages showed (`browser::challenges`), as of the record's last
    /// write (live on its node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<Challenge>,
}

/// How a session is kept apart from others: a browser of its own, or a browser context
/// in a shared browser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Process,
    Context,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Context => "context",
        }
    }

    pub fn parse(s: &str) -> Option<Isolation> {
        match s {
            "process" => Some(Isolation::Process),
            "context" => Some(Isolation::Context),
            _ => None,
        }
    }
}

/// A session's options, as shown back: everything but the proxy's password.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionOptions {
    #[serde(default)]
    pub isolation: Isolation,
    pub proxy: Option<ProxySettings>,
    pub user_agent: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    /// The machine its pages pass for (a fingerprint preset or a device), as picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// Seconds without a client, a viewer or an action before the session ends; 0: never.
    #[serde(default)]
    pub idle_timeout: u64,
    /// Recorded as video.
    #[serde(default)]
    pub record: bool,
    /// Its CDP traffic logged (method names, sizes, timings) among its files.
    #[serde(default)]
    pub log_cdp: bool,
    /// Resource types its pages may not load (`image`, `font`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
    /// URL patterns its pages may not load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_urls: Vec<String>,
    /// Its pages' console kept (`GET …/logs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_console: bool,
    /// Its pages' requests kept as HAR (`GET …/har`), with their bodies if `capture_bodies`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_network: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_bodies: bool,
    /// It fronts the user's own browser (`cdp_url`): counted by `max_byo_sessions_per_key`
    /// rather than `max_sessions_per_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub byo: bool,
    /// Ids of the Chrome extensions its browser loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// The Chrome its pages run on, and why (none: a user's own browser, or a record
    /// written before browsers were chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<BrowserKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_reason: Option<BrowserReason>,
}

/// A session's upstream proxy without its password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxySettings {
    pub server: String,
    pub username: Option<String>,
    pub bypass: Vec<String>,
}

impl SessionRecord {
    /// Ended more than `retention` before `now`.
    pub fn is_stale(&self, now: SystemTime, retention: Duration) -> bool {
        self.ended_at
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() >= retention)
    }

    /// The record of a session that was active when its broker stopped.
    pub fn ended_by_restart(self, now: SystemTime) -> SessionRecord {
        self.ended_elsewhere(EndReason::Restarted, now)
    }

    /// The record of an active session ended for `reason` by someone other than its
    /// running node (its next start, or another node).
    pub fn ended_elsewhere(mut self, reason: EndReason, now: SystemTime) -> SessionRecord {
        if self.status == Status::Active {
            self.status = reason.status();
            self.end_reason = Some(reason);
            self.ended_at = Some(now);
            self.updated_at = now;
        }
        self
    }
}

/// A tenant is kept as its displayed id (a digest of its key, never the key).
mod tenant_id {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::auth::Tenant;

    pub(super) fn serialize<S: Serializer>(tenant: &Tenant, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(tenant)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tenant, D::Error> {
        String::deserialize(d).map(|id| Tenant::from_id(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons_round_trip() {
        for s in [Status::Active, Status::Terminated, Status::Expired] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("ACTIVE"), None);
        assert_eq!(EndReason::Expired.close_code().0, 4001);
        assert_eq!(EndReason::Idle.close_code(), (4004, "session idle"));
        assert_eq!(EndReason::Idle.status(), Status::Expired);
        assert_eq!(EndReason::parse("idle"), Some(EndReason::Idle));
        assert_eq!(EndReason::Terminated.status(), Status::Terminated);
        assert_eq!(EndReason::parse("broker restarted"), Some(EndReason::Restarted));
        for outcome in [
            SaveOutcome::Saved,
            SaveOutcome::NotClosedInTime,
            SaveOutcome::Crashed,
            SaveOutcome::Superseded,
            SaveOutcome::Failed("No space left on device (os error 28)".into()),
        ] {
            assert_eq!(SaveOutcome::parse(&outcome.describe()), Some(outcome));
        }
    }
}
