//! Holds a session to `max_targets_per_session` tabs, on the broker's own CDP connection.
//!
//! The relay of a process session passes frames without reading them, and a context
//! session's filter should not need to count, so neither can refuse a `Target.createTarget`
//! (nor a page's `window.open`). Instead the broker discovers the session's targets and
//! closes every tab opened while the session already has its number open: a client ends up
//! with at most the limit, whatever it asked for.
//!
//! A process session's browser is all its own: [`start`] gives it a connection of its own.
//! A context session's tabs are followed by its shared browser's one context watch
//! (`context_watch.rs`), which hands each of [`Tabs`] only the events of its context.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cdp::{CdpError, Client};
use crate::events::{EventType, SessionEvents};
use crate::metrics::Metrics;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A process session's tabs to hold: all of its browser's.
pub(crate) struct TabCap {
    /// The browser's DevTools address.
    pub ws_url: String,
    pub tabs: Tabs,
    pub until: CancellationToken,
}

/// One session's tabs: those open, to how many, and where they are told.
pub(crate) struct Tabs {
    /// At most this many open; `usize::MAX`: no limit (the tabs are only followed).
    max: usize,
    metrics: Arc<Metrics>,
    /// Where the session's tabs opened, navigated, closed and crashed are told.
    events: Option<Arc<SessionEvents>>,
    /// The tabs open, oldest first, and their URLs.
    open: Vec<String>,
    urls: HashMap<String, EventUrl>,
}

impl Tabs {
    /// `max` 0: no limit.
    pub(crate) fn new(max: usize, metrics: Arc<Metrics>, events: Option<Arc<SessionEvents>>) -> Tabs {
        Tabs {
            max: if max == 0 { usize::MAX } else { max },
            metrics,
            events,
            open: Vec::new(),
            urls: HashMap::new(),
        }
    }

    fn tell(&self, kind: EventType, data: Value) {
        if let Some(log) = &self.events {
            log.emit(kind, data);
        }
    }

    /// Takes a `Target.*` event about one of the session's targets; answers a tab to close
    /// (one opened while the session has its number open).
    pub(crate) fn on_event(&mut self, event: &Value) -> Option<String> {
        let info = &event["params"]["targetInfo"];
        match event["method"].as_str() {
            Some("Target.targetCreated") if info["type"] == "page" => {
                let id = info["targetId"].as_str()?;
                if self.open.iter().any(|o| o == id) {
                    return None;
                }
                if self.open.len() < self.max {
                    self.open.push(id.to_owned());
                    let url = EventUrl::of(info);
                    self.tell(EventType::TabOpened, json!({ "target_id": id, "url": url.cut }));
                    self.urls.insert(id.to_owned(), url);
                    return None;
                }
                self.metrics.targets_closed.inc();
                tracing::info!(
                    max = self.max,
                    "tab closed: the session has max_targets_per_session open"
                );
                Some(id.to_owned())
            }
            Some("Target.targetInfoChanged") => {
                let id = info["targetId"].as_str().unwrap_or_default();
                let url = EventUrl::of(info);
                if self.urls.get(id).is_some_and(|known| *known != url) {
                    self.tell(EventType::TabNavigated, json!({ "target_id": id, "url": url.cut }));
                    self.urls.insert(id.to_owned(), url);
                }
                None
            }
            Some("Target.targetCrashed") => {
                let params = &event["params"];
                let id = params["targetId"].as_str().unwrap_or_default();
                if let Some(url) = self.urls.get(id) {
                    self.tell(
                        EventType::PageCrashed,
                        json!({ "target_id": id, "url": url.cut, "status": params["status"], "error_code": params["errorCode"] }),
                    );
                }
                None
            }
            Some("Target.targetDestroyed") => {
                let id = event["params"]["targetId"].as_str().unwrap_or_default();
                self.open.retain(|o| o != id);
                if self.urls.remove(id).is_some() {
                    self.tell(EventType::TabClosed, json!({ "target_id": id }));
                }
                None
            }
            _ => None,
        }
    }
}

/// Starts watching a process session's browser; answers once its open tabs are known, so
/// that none opened from then on passes unseen.
pub(crate) async fn start(cap: TabCap, tracker: &TaskTracker) -> Result<(), CdpError> {
    let client = Client::connect(&cap.ws_url).await?;
    let events = client.subscribe();
    // Chrome answers with a `targetCreated` for every target open now, then each new one.
    client
        .call(
            None,
            "Target.setDiscoverTargets",
            json!({ "discover": true }),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| CdpError::Protocol(format!("Target.setDiscoverTargets: {e:?}")))?;
    tracker.spawn(watch(client, events, cap).in_current_span());
    Ok(())
}

async fn watch(client: Client, mut events: tokio::sync::broadcast::Receiver<Arc<Value>>, mut cap: TabCap) {
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "tab watcher fell behind the browser's events");
                    continue;
                }
                Err(_) => return,
            },
            _ = cap.until.cancelled() => return,
            _ = client.closed().cancelled() => return,
        };
        if let Some(extra) = cap.tabs.on_event(&event) {
            let _ = client.send(None, "Target.closeTarget", json!({ "targetId": extra }));
        }
    }
}

/// A target's URL as events carry it: cut at `MAX_EVENT_URL` (a page may navigate to a
/// megabytes-long `data:` URL, and every navigation is an event kept and sent), with a
/// hash of the whole, so that a navigation past the cut is still told apart.
#[derive(PartialEq)]
struct EventUrl {
    cut: String,
    whole: u64,
}

impl EventUrl {
    fn of(info: &Value) -> EventUrl {
        use std::hash::{Hash, Hasher};
        let url = info["url"].as_str().unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        url.hash(&mut hasher);
        EventUrl {
            cut: crate::capture::cut_text(url, MAX_EVENT_URL),
            whole: hasher.finish(),
        }
    }
}

/// Longest URL an event carries, as the watch's dialog and challenge events cut theirs.
const MAX_EVENT_URL: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    fn created(id: &str, kind: &str) -> Value {
        json!({"method": "Target.targetCreated", "params": {"targetInfo": {"type": kind, "targetId": id, "url": "about:blank"}}})
    }

    #[test]
    fn tabs_past_the_limit_are_closed_and_others_are_not_tabs() {
        let mut tabs = Tabs::new(1, Arc::default(), None);
        assert_eq!(tabs.on_event(&created("T1", "page")), None);
        assert_eq!(tabs.on_event(&created("W", "service_worker")), None);
        assert_eq!(tabs.on_event(&created("T2", "page")), Some("T2".into()));
        let destroyed = json!({"method": "Target.targetDestroyed", "params": {"targetId": "T1"}});
        assert_eq!(tabs.on_event(&destroyed), None);
        assert_eq!(tabs.on_event(&created("T3", "page")), None);
    }

    #[test]
    fn a_tabs_urls_reach_its_events_cut_and_a_change_past_the_cut_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let events = crate::events::Events::new(dir.path().to_owned(), 10).unwrap();
        let mut tabs = Tabs::new(
            5,
            Arc::default(),
            Some(events.open("sess_c", &crate::auth::Tenant::from_id("t"))),
        );
        let long = format!("data:text/html,{}", "y".repeat(1 << 20));
        let info = |url: &str| json!({"targetInfo": {"type": "page", "targetId": "T1", "url": url}});
        tabs.on_event(&json!({"method": "Target.targetCreated", "params": info(&long)}));
        tabs.on_event(&json!({"method": "Target.targetInfoChanged", "params": info(&long)}));
        tabs.on_event(&json!({"method": "Target.targetInfoChanged", "params": info(&format!("{long}#2"))}));
        let read = events.read("sess_c", 0, 10).unwrap();
        let kinds: Vec<_> = read.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventType::TabOpened, EventType::TabNavigated]);
        for event in &read {
            let url = event.data["url"].as_str().unwrap();
            assert!(url.len() <= MAX_EVENT_URL + 3 && long.starts_with(url.trim_end_matches('…')));
        }
    }
}
