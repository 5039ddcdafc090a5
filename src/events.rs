//! What happened in a session: a sequence of typed events with ids 1, 2, 3… per session,
//! kept on the node that runs the session (one JSON line per event in
//! `data_dir/events/<session>.jsonl`, swept with the session's record) and announced to
//! whoever listens live (SSE readers, the webhook sender).
//!
//! Cheap when nobody listens: an event is one small append to a file the session holds open
//! and one send on a broadcast channel without receivers. A session keeps at most
//! `max_events_per_session` events; past that they are counted as dropped, except its
//! `ended`, which is always kept (a reader knows the end came).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::auth::Tenant;

/// What an event is about. New kinds (console errors, page errors, a challenge seen) are
/// new variants; readers skip kinds they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Created,
    ClientConnected,
    ClientDisconnected,
    TabOpened,
    TabNavigated,
    TabClosed,
    PageCrashed,
    /// A page opened an alert, confirm, prompt or beforeunload dialog (left for the
    /// client to answer).
    Dialog,
    DownloadStarted,
    DownloadFinished,
    DownloadRefused,
    Upload,
    ProfileSaved,
    /// A page logged a console error (the first ones; with `capture_console`).
    ConsoleError,
    /// A page threw an uncaught exception (the first ones; with `capture_console`).
    PageError,
    /// A frame showed a known challenge (reCAPTCHA, hCaptcha, Turnstile).
    ChallengeSeen,
    /// The session nears its idle timeout: a client may connect to keep it.
    IdleWarning,
    Ended,
}

impl EventType {
    pub const ALL: [EventType; 18] = [
        EventType::Created,
        EventType::ClientConnected,
        EventType::ClientDisconnected,
        EventType::TabOpened,
        EventType::TabNavigated,
        EventType::TabClosed,
        EventType::PageCrashed,
        EventType::Dialog,
        EventType::DownloadStarted,
        EventType::DownloadFinished,
        EventType::DownloadRefused,
        EventType::Upload,
        EventType::ProfileSaved,
        EventType::ConsoleError,
        EventType::PageError,
        EventType::ChallengeSeen,
        EventType::IdleWarning,
        EventType::Ended,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::ClientConnected => "client_connected",
            EventType::ClientDisconnected => "client_disconnected",
            EventType::TabOpened => "tab_opened",
            EventType::TabNavigated => "tab_navigated",
            EventType::TabClosed => "tab_closed",
            EventType::PageCrashed => "page_crashed",
            EventType::Dialog => "dialog",
            EventType::DownloadStarted => "download_started",
            EventType::DownloadFinished => "download_finished",
            EventType::DownloadRefused => "download_refused",
            EventType::Upload => "upload",
            EventType::ProfileSaved => "profile_saved",
            EventType::ConsoleError => "console_error",
            EventType::PageError => "page_error",
            EventType::ChallengeSeen => "challenge_seen",
            EventType::IdleWarning => "idle_warning",
            EventType::Ended => "ended",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// One event, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339, UTC, to the millisecond.
    pub at: String,
    pub data: Value,
}

/// An event as it is announced live: with the tenant whose session it is.
#[derive(Debug, Clone)]
pub struct Live {
    pub tenant: Tenant,
    pub event: Arc<Event>,
}

/// Every session's events on this node.
pub struct Events {
    dir: PathBuf,
    max_per_session: usize,
    /// Sessions that may still have events, by id.
    open: Mutex<HashMap<String, Arc<SessionEvents>>>,
    live: broadcast::Sender<Live>,
}

/// How many live events a slow reader may fall behind before it is told it lagged (it then
/// reads what it missed from the file).
const LIVE_BUFFER: usize = 1024;
/// Largest event kept, written as a line of JSON: one past it keeps its type and says how
/// large its data was instead (what a page names, a URL, is cut long before this).
pub(crate) const MAX_EVENT_BYTES: usize = 16 * 1024;

impl Events {
    pub fn new(dir: PathBuf, max_per_session: usize) -> std::io::Result<Arc<Events>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Events {
            dir,
            max_per_session: max_per_session.max(1),
            open: Mutex::new(HashMap::new()),
            live: broadcast::channel(LIVE_BUFFER).0,
        }))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Opens the event log of a new session (ids are the broker's own, never a client's).
    pub fn open(self: &Arc<Self>, id: &str, tenant: &Tenant) -> Arc<SessionEvents> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(id))
            .map_err(|e| tracing::warn!(session = %id, error = %e, "the session's events cannot be written"))
            .ok();
        let log = Arc::new(SessionEvents {
            session_id: id.to_owned(),
            tenant: tenant.clone(),
            events: Arc::downgrade(self),
            state: Mutex::new(LogState {
                next_id: 1,
                dropped: 0,
                file,
                closed: false,
            }),
            last: watch::channel(0).0,
        });
        self.lock().insert(id.to_owned(), log.clone());
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionEvents>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log of a session that may still have events here.
    pub fn open_log(&self, id: &str) -> Option<Arc<SessionEvents>> {
        self.lock().get(id).cloned()
    }

    /// Announcements of every event as it is written.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Up to `limit` of session `id`'s events after `after`, oldest first. `None` if this
    /// node has no log of it.
    pub fn read(&self, id: &str, after: u64, limit: usize) -> Option<Vec<Event>> {
        let file = std::fs::File::open(self.path(id)).ok()?;
        let mut out = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            // A line cut short by a crash is skipped.
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if event.id > after {
                out.push(event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Some(out)
    }

    /// Whether session `id`'s events are kept here (not swept or deleted).
    pub fn has(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    /// Events dropped past the per-session bound, while the session runs here.
    pub fn dropped(&self, id: &str) -> u64 {
        self.open_log(id).map_or(0, |l| l.state().dropped)
    }

    /// Forgets a session's events (its record was swept or deleted).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// The sessions whose events are kept here.
    pub fn session_ids(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".jsonl").map(str::to_owned))
            .collect()
    }

    /// Ends the log of a session that ended with a previous run of the broker (it never
    /// wrote its `ended`), so that readers and webhooks hear of the end.
    pub fn close_left_open(self: &Arc<Self>, id: &str, tenant: &Tenant, data: Value) {
        let Some(events) = self.read(id, 0, usize::MAX) else {
            return;
        };
        if events.iter().any(|e| e.kind == EventType::Ended) {
            return;
        }
        let log = self.open(id, tenant);
        log.state().next_id = events.last().map_or(1, |e| e.id + 1);
        log.emit(EventType::Ended, data);
    }
}

struct LogState {
    next_id: u64,
    dropped: u64,
    file: Option<std::fs::File>,
    closed: bool,
}

/// One session's event log, held by its emitters.
pub struct SessionEvents {
    pub session_id: String,
    pub tenant: Tenant,
    events: std::sync::Weak<Events>,
    state: Mutex<LogState>,
    /// The id of the last event written: the webhook sender waits on it.
    last: watch::Sender<u64>,
}

impl SessionEvents {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes an event; `ended` closes the log (nothing is written after it).
    pub fn emit(&self, kind: EventType, data: Value) {
        let Some(events) = self.events.upgrade() else { return };
        let event = {
            let mut s = self.state();
            if s.closed {
                return;
            }
            if kind != EventType::Ended && s.next_id > events.max_per_session as u64 {
                s.dropped += 1;
                return;
            }
            let mut event = Event {
                id: s.next_id,
                session_id: self.session_id.clone(),
                kind,
                at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                data,
            };
            let size = serde_json::to_vec(&event.data).map_or(0, |d| d.len());
            if size > MAX_EVENT_BYTES {
                event.data = serde_json::json!({ "omitted_bytes": size });
            }
            s.next_id += 1;
            if let Some(file) = &mut s.file
                && let Ok(mut line) = serde_json::to_vec(&event)
            {
                line.push(b'\n');
                if let Err(e) = file.write_all(&line) {
                    tracing::warn!(session = %self.session_id, error = %e, "could not write a session event");
                }
            }
            if kind == EventType::Ended {
                s.closed = true;
                s.file = None;
            }
            Arc::new(event)
        };
        let id = event.id;
        let _ = events.live.send(Live {
            tenant: self.tenant.clone(),
            event,
        });
        self.last.send_replace(id);
        if kind == EventType::Ended {
            let mut open = events.lock();
            if open
                .get(&self.session_id)
                .is_some_and(|l| std::ptr::eq(l.as_ref(), self))
            {
                open.remove(&self.session_id);
            }
        }
    }

    /// Whether the log is closed (its `ended` written).
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Follows the id of the last event written.
    pub fn last_id(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

/// The events directory under `data_dir`.
pub(crate) fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_increase_the_bound_holds_and_ended_closes() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new(dir.path().to_owned(), 3).unwrap();
        let tenant = Tenant::from_id("t");
        let mut live = events.subscribe();
        let log = events.open("sess_a", &tenant);
        log.emit(EventType::Created, json!({}));
        log.emit(EventType::TabOpened, json!({"url": "about:blank"}));
        log.emit(EventType::TabClosed, json!({}));
        log.emit(EventType::TabOpened, json!({}));
        assert_eq!(events.dropped("sess_a"), 1);
        log.emit(EventType::Ended, json!({"end_reason": "expired"}));
        log.emit(EventType::TabOpened, json!({}));
        let read = events.read("sess_a", 0, 100).unwrap();
        let kinds: Vec<_> = read.iter().map(|e| (e.id, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, EventType::Created),
                (2, EventType::TabOpened),
                (3, EventType::TabClosed),
                (4, EventType::Ended)
            ]
        );
        assert_eq!(events.read("sess_a", 2, 1).unwrap()[0].id, 3);
        assert!(events.open_log("sess_a").is_none());
        assert_eq!(live.try_recv().unwrap().event.id, 1);
        events.remove("sess_a");
        assert!(events.read("sess_a", 0, 10).is_none());
    }

    #[test]
    fn an_event_of_megabytes_keeps_its_type_and_its_size_only() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new(dir.path().to_owned(), 10).unwrap();
        let log = events.open("sess_b", &Tenant::from_id("t"));
        let huge = format!("data:text/html,{}", "x".repeat(3 << 20));
        log.emit(EventType::TabNavigated, json!({"url": huge}));
        log.emit(EventType::TabClosed, json!({"target_id": "T1"}));
        let read = events.read("sess_b", 0, 10).unwrap();
        assert_eq!(read[0].kind, EventType::TabNavigated);
        assert_eq!(read[0].data, json!({"omitted_bytes": huge.len() + 10}));
        assert_eq!(read[1].data, json!({"target_id": "T1"}));
        let on_disk = std::fs::metadata(dir.path().join("sess_b.jsonl")).unwrap().len();
        assert!(on_disk < 1024, "{on_disk} bytes written");
    }

    #[test]
    fn the_config_knows_every_type() {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, crate::config::KNOWN_EVENTS);
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
    }

    #[test]
    fn a_log_left_open_gets_its_end_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new(dir.path().to_owned(), 10).unwrap();
        let tenant = Tenant::from_id("t");
        let log = events.open("sess_b", &tenant);
        log.emit(EventType::Created, json!({}));
        drop(log);
        let again = Events::new(dir.path().to_owned(), 10).unwrap();
        again.close_left_open("sess_b", &tenant, json!({"end_reason": "broker restarted"}));
        again.close_left_open("sess_b", &tenant, json!({"end_reason": "broker restarted"}));
        let read = again.read("sess_b", 0, 10).unwrap();
        assert_eq!(read.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(read[1].kind, EventType::Ended);
    }
}
